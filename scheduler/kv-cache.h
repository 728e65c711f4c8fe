/*
 * scheduler/kv-cache.h — the paged-KV block manager and the prefix cache.
 *
 * Pure bookkeeping: the KV memory itself ([n_blocks][n_kv_heads][block_size][head_dim] per
 * layer, K and V) belongs to the backend. This module hands out physical block ids from a pool
 * of `n_blocks` fixed at start-up, keeps one block table per sequence, reference-counts blocks
 * shared between sequences (forks for `n` > 1 choices, prefix-cache hits), and tells the caller
 * which block copies the backend must perform before a shared block is written
 * (copy-on-write; ql_backend_copy_blocks()). Allocation and release are O(1) (a free list and an
 * intrusive LRU list); nothing is allocated after ql_kv_init.
 *
 * Life of a sequence, as the engine drives it each step:
 *   ql_kv_seq_open(prompt)       reuse the longest cached prefix of the prompt (the sequence
 *                                starts with those tokens already computed)
 *   ql_kv_seq_append(tokens)     reserve KV slots for the tokens of this step (prefill chunk,
 *                                decode token, speculative drafts); perform the returned copy
 *   backend forward              writes the KV of positions [n_computed, n_tokens)
 *   ql_kv_seq_set_computed(n)    those positions now hold KV: full blocks become cacheable
 *   ql_kv_seq_truncate(n)        roll back rejected speculative positions (before or after
 *                                set_computed: a cached block of rejected drafts is valid KV)
 *   ql_kv_seq_close()            release everything (finish, cancellation, preemption)
 *
 * Block states: every block is exactly one of
 *   used    referenced by >= 1 sequence table
 *   cached  referenced by none but registered in the prefix cache: reusable by a later prompt
 *           with that prefix, reclaimed (least recently released first) only when an
 *           allocation finds no free block
 *   free    neither
 * so n_free + n_used + n_cached = n_blocks at all times (ql_kv_get_stats, ql_kv_check).
 *
 * Prefix cache (on by default; ql_kv_params_t.prefix_cache = 0 or ql_kv_set_prefix_cache()):
 * - A block is registered when it is full and its KV is computed (ql_kv_seq_set_computed),
 *   under the chained key of prefix-cache.h: hash(parent block's key, its block_size tokens).
 * - A hit must match the key, the block's stored token ids, and the parent: the candidate's
 *   recorded parent must be the very block that matched the previous position (the same
 *   physical block, in the same registration: a block evicted and registered again for other
 *   tokens is a new generation). By induction a hit's whole prefix equals the prompt's, so a hash
 *   collision can never serve another prompt's KV; it only costs a comparison.
 * - At most one block per (tokens, parent): when a sequence computes a block that an equal
 *   cached block already holds (two prompts with one prefix admitted in the same step), its
 *   table switches to the cached block and its own copy is freed.
 * - NOTE(last-block): a prompt reuses at most floor((n_prompt - 1) / block_size) blocks, so at
 *   least one token is computed and yields logits. A prompt whose length is a multiple of
 *   block_size therefore recomputes its last block in full rather than reusing it (recomputing
 *   <= block_size tokens costs about what a block copy would, and needs no copy-on-write at
 *   admission); the recomputed block is then deduplicated against the cached one as above.
 * - Releasing a sequence puts its registered blocks at the young end of the LRU list, last
 *   block first, so a prefix outlives its continuations.
 *
 * Statuses: functions return 0 or a negative QL_E*; QL_KV_NO_BLOCKS (positive) means "not
 * enough free blocks now" and leaves every state unchanged, so the scheduler can preempt and
 * retry. Sequence and block ids are small integers: sequences in [0, n_seq_max), blocks in
 * [0, n_blocks).
 *
 * Thread: every function is for the engine thread only (no locking); ql_prefix_* helpers
 * aside.
 */
#ifndef QL_SCHEDULER_KV_CACHE_H
#define QL_SCHEDULER_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "scheduler/prefix-cache.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Non-fatal: not enough free or reclaimable blocks for the request; nothing was changed. */
#define QL_KV_NO_BLOCKS 1

typedef struct ql_kv_s ql_kv_t; /* opaque */

typedef struct ql_kv_params_s {
    int32_t n_blocks;       /* physical blocks in the pool, >= 1: the caller divides the KV
                               memory by the backend's bytes per block */
    int32_t block_size;     /* tokens per block, >= 1. Default 16 */
    int32_t n_seq_max;      /* sequences open at once (running, plus forks), >= 1. Default 256 */
    int32_t n_tokens_max;   /* tokens in one sequence at most (the model's context), >= 1;
                               sizes each block table. Default 8192 */
    int32_t prefix_cache;   /* 1: prefix caching on (default), 0: off */
    uint64_t hash_seed;     /* seeds the block hash (prefix-cache.h). Default 0 */
    ql_prefix_hash_fn hash; /* NULL: ql_prefix_hash. Tests inject a weak one to force collisions */
} ql_kv_params_t;

/* A copy the backend must perform (all layers, K and V, the whole block) before the next
 * forward: the KV of block `src` into block `dst`. */
typedef struct ql_kv_copy_s {
    int32_t src; /* -1: no copy */
    int32_t dst;
} ql_kv_copy_t;

typedef struct ql_kv_stats_s {
    int32_t n_blocks;              /* the pool */
    int32_t n_blocks_free;         /* unused, not cached */
    int32_t n_blocks_used;         /* referenced by a sequence */
    int32_t n_blocks_cached;       /* unreferenced, in the prefix cache (reclaimable) */
    int32_t n_seqs;                /* sequences open */
    uint64_t prefix_queries_tokens; /* prompt tokens looked up (ql_kv_seq_open with the cache on) */
    uint64_t prefix_hits_tokens;    /* of those, tokens served from the cache */
    uint64_t n_evicted;            /* cached blocks reclaimed for an allocation */
    uint64_t n_copies;             /* copy-on-write copies requested */
} ql_kv_stats_t;

/* What ql_kv_seq_open would reuse for a prompt (ql_kv_prefix_probe). */
typedef struct ql_kv_probe_s {
    int32_t n_tokens_cached;    /* a multiple of block_size, < n_prompt (0 for an empty prompt) */
    int32_t n_blocks_reclaimed; /* hit blocks that are now `cached` (unreferenced): opening the
                                   sequence takes them out of the available pool */
} ql_kv_probe_t;

/** The defaults documented in ql_kv_params_t, with n_blocks = 0 (the caller must set it).
 *  Thread: any. */
QL_API ql_kv_params_t ql_kv_params_default(void);

/** Creates a block manager: every block free, no sequence open. Allocates all its memory here:
 *  about n_blocks * (4 * block_size + 90) + 4 * n_seq_max * ceil(n_tokens_max / block_size)
 *  bytes (token ids, links, keys, the index; the tables).
 *  On success *out is owned by the caller: release it with ql_kv_free().
 *  @return 0, QL_EINVAL (a NULL argument or a value out of range) or QL_ENOMEM. */
QL_API int ql_kv_init(const ql_kv_params_t *p, ql_kv_t **out);
QL_API void ql_kv_free(ql_kv_t *kv); /* NULL is a no-op; open sequences need not be closed */

/* ---- sequences ---- */

/** Opens a sequence for a prompt of n_prompt tokens (`prompt` may be NULL when n_prompt = 0)
 *  and, with the prefix cache on, gives it the longest run of cached blocks that equals the
 *  prompt's start, at most floor((n_prompt - 1) / block_size) blocks (NOTE(last-block)). The
 *  sequence then holds n_tokens = n_computed = its cached prompt tokens; the caller appends the
 *  rest of the prompt. Never allocates a block (ql_kv_prefix_probe says what it would reuse),
 *  counts the prompt in the hit/query statistics. `prompt` is borrowed for the call.
 *  @return 0 with *seq_out set; QL_EINVAL; QL_ERANGE (n_prompt > n_tokens_max); QL_ENOSPC (all
 *  n_seq_max sequences open). */
QL_API int ql_kv_seq_open(ql_kv_t *kv, const int32_t *prompt, int32_t n_prompt, int32_t *seq_out);

/** Opens a sequence that shares every block of `src` (for `n` > 1 choices, beam search): same
 *  tokens, same computed count, same cached-prompt count. A shared block is copied only when one
 *  side writes into it (ql_kv_seq_append). Allocates no block.
 *  @return 0 with *dst_out set; QL_EINVAL (bad `src`); QL_ESTATE (src has tokens whose KV is not
 *  computed yet: fork after the forward pass, so that no two sequences ever compute one slot);
 *  QL_ENOSPC (all sequences open). */
QL_API int ql_kv_seq_fork(ql_kv_t *kv, int32_t src, int32_t *dst_out);

/** Closes a sequence: its blocks lose a reference and those left unreferenced become cached
 *  (when registered in the prefix cache) or free. The id may be reused by the next open.
 *  @return 0 or QL_EINVAL (not an open sequence). */
QL_API int ql_kv_seq_close(ql_kv_t *kv, int32_t seq);

/** Reserves KV slots for n_tokens more tokens at positions [n_tokens_old, n_tokens_old +
 *  n_tokens), storing their ids (the prefix cache keys blocks by them), allocating blocks as
 *  positions cross block boundaries. When the first slot falls in the middle of a block the
 *  sequence shares with another (a fork, a rolled-back cached block), that block is first
 *  replaced by a private copy: *copy then names (src, dst) and the backend must copy src into
 *  dst before the forward pass; otherwise copy->src = copy->dst = -1. At most one copy per call.
 *  `tokens` is borrowed for the call. n_tokens = 0 is a no-op.
 *  @return 0; QL_KV_NO_BLOCKS (ql_kv_seq_blocks_needed() exceeds ql_kv_n_blocks_available():
 *  nothing changed, *copy = {-1, -1}); QL_EINVAL; QL_ERANGE (past n_tokens_max; nothing
 *  changed). */
QL_API int ql_kv_seq_append(ql_kv_t *kv, int32_t seq, const int32_t *tokens, int32_t n_tokens,
                            ql_kv_copy_t *copy);

/** Records that the KV of positions [0, n_computed) is written: call it once the forward pass
 *  that wrote them is complete or ordered before any later one (same stream). With the
 *  prefix cache on, every block that is now full and computed is registered in it, or, when an
 *  equal block is already cached, replaced by that block in the table (the sequence's own copy
 *  is released): the table's contents can change. Never allocates.
 *  @return 0; QL_EINVAL (n_computed outside [current n_computed, n_tokens], or a bad seq). */
QL_API int ql_kv_seq_set_computed(ql_kv_t *kv, int32_t seq, int32_t n_computed);

/** Shrinks a sequence to its first n_tokens tokens (speculative rollback, or trimming): blocks
 *  past the new end are released, n_computed is clamped to n_tokens. A block left partly used
 *  keeps its other owners and its cache registration: the next append copies it or, when this
 *  sequence is its only owner, unregisters it and writes in place. Never allocates.
 *  @return 0 or QL_EINVAL (n_tokens outside [0, current n_tokens], or a bad seq). */
QL_API int ql_kv_seq_truncate(ql_kv_t *kv, int32_t seq, int32_t n_tokens);

/* ---- queries (read-only) ---- */

/** Tokens held (n_tokens), tokens with computed KV, and prompt tokens served from the prefix
 *  cache at open (to report as usage.prompt_tokens_details.cached_tokens).
 *  @return the count, or QL_EINVAL for a sequence that is not open. */
QL_API int32_t ql_kv_seq_n_tokens(const ql_kv_t *kv, int32_t seq);
QL_API int32_t ql_kv_seq_n_computed(const ql_kv_t *kv, int32_t seq);
QL_API int32_t ql_kv_seq_n_cached_prompt(const ql_kv_t *kv, int32_t seq);

/** The sequence's block table: physical block ids [ceil(n_tokens / block_size)], position p in
 *  block table[p / block_size], slot p % block_size. Borrowed: the pointer stays valid while the
 *  sequence is open (the table is a fixed row of max_blocks_per_seq entries, directly usable as
 *  one row of ql_batch.block_table); its contents change with append, set_computed and
 *  truncate. NULL (and *n_blocks = 0) for a sequence that is not open. `n_blocks` may be NULL. */
QL_API const int32_t *ql_kv_seq_block_table(const ql_kv_t *kv, int32_t seq, int32_t *n_blocks);

/** Blocks an append of n_tokens would take from the available pool: new blocks past the last
 *  one, plus one when the append starts inside a shared block (copy-on-write). Exact for one
 *  sequence; for several sequences sharing one block and growing in the same step, the sum is
 *  an upper bound (only the first writer copies).
 *  @return the count (>= 0), QL_EINVAL, or QL_ERANGE (past n_tokens_max). */
QL_API int32_t ql_kv_seq_blocks_needed(const ql_kv_t *kv, int32_t seq, int32_t n_tokens);

/** 1 when ql_kv_seq_append(seq, n_tokens) would succeed now, else 0 (also for bad arguments). */
QL_API int ql_kv_seq_can_append(const ql_kv_t *kv, int32_t seq, int32_t n_tokens);

/** Blocks an allocation can draw on: free plus cached. */
QL_API int32_t ql_kv_n_blocks_available(const ql_kv_t *kv);

/** What ql_kv_seq_open(prompt) would reuse, without changing anything or counting statistics.
 *  Admitting the prompt with its first c uncached tokens takes
 *      ceil((n_tokens_cached + c) / block_size) - n_tokens_cached / block_size + n_blocks_reclaimed
 *  blocks from ql_kv_n_blocks_available(). All zero when the cache is off.
 *  @return 0, QL_EINVAL or QL_ERANGE (n_prompt > n_tokens_max). */
QL_API int ql_kv_prefix_probe(const ql_kv_t *kv, const int32_t *prompt, int32_t n_prompt,
                              ql_kv_probe_t *out);

/** Turns the prefix cache on or off. Turning it off unregisters every block: cached blocks
 *  become free, open sequences keep theirs. Turning it on registers blocks as they are computed
 *  from then on (and already-computed blocks of open sequences at their next set_computed). */
QL_API void ql_kv_set_prefix_cache(ql_kv_t *kv, int enabled);
QL_API int ql_kv_prefix_cache_enabled(const ql_kv_t *kv);

QL_API void ql_kv_get_stats(const ql_kv_t *kv, ql_kv_stats_t *out);
QL_API int32_t ql_kv_block_size(const ql_kv_t *kv);
QL_API int32_t ql_kv_max_blocks_per_seq(const ql_kv_t *kv); /* ceil(n_tokens_max / block_size) */

/** A block's reference count (sequences whose table holds it), or QL_EINVAL for a bad id. */
QL_API int32_t ql_kv_block_ref(const ql_kv_t *kv, int32_t block);
/** The token ids stored in a block: [block_size], borrowed until the next mutating call; slots
 *  past an owner's length are stale. NULL for a bad id. For tests and debugging. */
QL_API const int32_t *ql_kv_block_tokens(const ql_kv_t *kv, int32_t block);

/** Verifies every invariant in O(n_blocks + tables): reference counts equal table occurrences,
 *  the free and LRU lists hold exactly the free and cached blocks, the index holds exactly the
 *  registered blocks, each open sequence's table and counts agree. Logs the first violation.
 *  @return 0 or QL_EINTERNAL. For tests (the scheduler's "no leaked block" checks). */
QL_API int ql_kv_check(const ql_kv_t *kv);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_KV_CACHE_H */
