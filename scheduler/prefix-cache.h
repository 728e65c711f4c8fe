/*
 * scheduler/prefix-cache.h — the two pieces of the prefix cache that stand on their own: the
 * chained block hash and the index that maps a hash key to the physical KV blocks holding it.
 *
 * The policy (which blocks are indexed, verification of a hit, LRU reclamation) lives in the
 * block manager (scheduler/kv-cache.h), which owns one index; this header exists so that the
 * hash can be injected by tests and the index tested directly.
 *
 * A full block of `block_size` token ids at block position i of a sequence has the key
 *     key_0 = hash(root, tokens[0 .. bs)),  key_i = hash(key_{i-1}, tokens[i*bs .. (i+1)*bs))
 * with root = ql_prefix_root_key(seed), so a key names a block together with everything before
 * it. Equal prefixes give equal keys; the converse is what a hash cannot promise.
 *
 * NOTE(collisions): ql_prefix_hash is a fast 64-bit mix, not a cryptographic hash. Two
 * different prefixes collide with probability ~2^-64 per pair by chance, and a client who knows
 * the seed could craft collisions on purpose. Neither can serve wrong KV: the block manager
 * confirms every candidate by comparing its stored token ids and its parent block (see
 * kv-cache.h). A collision costs a comparison and, when both blocks are cached, one more entry
 * in a probe run. Seed the hash from a random source to make crafted collisions impractical.
 */
#ifndef QL_SCHEDULER_PREFIX_CACHE_H
#define QL_SCHEDULER_PREFIX_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the chained block hash ---- */

/* A block hash: the key of a block whose parent (previous block) has key `parent_key` and
 * whose token ids are tokens[0, n_tokens). Must be a pure function. */
typedef uint64_t (*ql_prefix_hash_fn)(uint64_t parent_key, const int32_t *tokens, int32_t n_tokens);

/** The key that stands for "no parent" (the parent of a sequence's first block), derived from
 *  `seed`. Thread: any. */
QL_API uint64_t ql_prefix_root_key(uint64_t seed);

/** The default ql_prefix_hash_fn: every token and n_tokens go through a 64-bit multiply-xorshift
 *  mix chained on `parent_key`. Changing one token, the order, the length or the parent changes
 *  the key (with probability 1 - 2^-64). Thread: any. */
QL_API uint64_t ql_prefix_hash(uint64_t parent_key, const int32_t *tokens, int32_t n_tokens);

/* ---- the index: key -> blocks (a multimap) ---- */

/* Open addressing with linear probing and backward-shift deletion (no tombstones), sized at
 * init for a fixed number of entries at a load factor <= 1/2, so inserting never allocates and
 * never fails. Several entries may share one key (a collision, or a caller's duplicate); lookups
 * walk them with a cursor. Fields are private. */
typedef struct ql_prefix_index_s {
    uint64_t *_keys;    /* [_mask + 1] */
    int32_t *_blocks;   /* [_mask + 1]; -1 = empty slot */
    uint64_t _mask;     /* capacity - 1; capacity is a power of two >= 2 * n_entries_max */
    int32_t _n;         /* entries in use */
    int32_t _n_max;     /* entries allowed */
} ql_prefix_index_t;

/** Sizes `ix` for up to `n_entries_max` (>= 1) entries, all empty. On success release it with
 *  ql_prefix_index_free(). @return 0, QL_EINVAL or QL_ENOMEM (then `ix` needs no free).
 *  Thread: any; the index is then used by one thread at a time. */
QL_API int ql_prefix_index_init(ql_prefix_index_t *ix, int32_t n_entries_max);
/** Frees the index's arrays; `ix` may be zeroed or freed twice. */
QL_API void ql_prefix_index_free(ql_prefix_index_t *ix);

/** Adds the entry (key, block), block >= 0. The caller keeps the number of entries within
 *  n_entries_max (an invariant: asserted) and decides whether a duplicate entry is wanted.
 *  O(1) expected. */
QL_API void ql_prefix_index_insert(ql_prefix_index_t *ix, uint64_t key, int32_t block);

/** Removes the entry (key, block). @return 0, or QL_ENOENT when there is no such entry.
 *  Invalidates cursors. O(1) expected. */
QL_API int ql_prefix_index_remove(ql_prefix_index_t *ix, uint64_t key, int32_t block);

/** Iterates the blocks filed under `key`: start with *cursor = 0 and call until it returns -1.
 *  Read-only; the order is unspecified. Inserting or removing invalidates the cursor. */
QL_API int32_t ql_prefix_index_next(const ql_prefix_index_t *ix, uint64_t key, uint64_t *cursor);

/** Entries in use. */
QL_API int32_t ql_prefix_index_size(const ql_prefix_index_t *ix);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_PREFIX_CACHE_H */
