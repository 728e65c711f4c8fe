/*
 * scheduler/kv-cache.c — the paged-KV block manager and the prefix-cache policy (see
 * kv-cache.h). Block ids index parallel arrays sized at init; the free list and the LRU list
 * of cached blocks are threaded through next[]/prev[], so no operation allocates.
 */
#define QL_LOG_MODULE "kv"
#include "scheduler/kv-cache.h"

#include <stdlib.h>
#include <string.h>

#include "scheduler/prefix-cache.h"

typedef struct kv_seq_s {
    int32_t open;            /* 0: the slot is on the free stack */
    int32_t n_tokens;        /* tokens with a reserved slot */
    int32_t n_computed;      /* tokens whose KV is written; <= n_tokens */
    int32_t n_committed;     /* table[0, n_committed) went through the prefix cache (registered
                                or replaced by an equal cached block); <= n_computed / bs */
    int32_t n_cached_prompt; /* prompt tokens served from the cache at open */
} kv_seq_t;

struct ql_kv_s {
    int32_t n_blocks;
    int32_t bs;              /* block_size */
    int32_t n_seq_max;
    int32_t n_tokens_max;
    int32_t n_bps;           /* max blocks per sequence = ceil(n_tokens_max / bs) */
    int32_t prefix_on;
    ql_prefix_hash_fn hash;
    uint64_t root_key;

    /* per block, [n_blocks] */
    int32_t *ref;            /* sequences whose table holds the block */
    int32_t *next, *prev;    /* free list (next only) or LRU list links; -1 ends */
    uint8_t *reg;            /* 1: registered in the prefix cache (in the index) */
    uint64_t *key;           /* chained key, valid while reg */
    int32_t *parent;         /* the block that preceded it when registered; -1: first block */
    uint64_t *parent_gen;    /* gen[parent] at registration */
    uint64_t *gen;           /* bumped each time the block is unregistered */
    int32_t *tokens;         /* [n_blocks][bs] token ids written into each slot */

    int32_t free_head;       /* singly linked stack of free blocks */
    int32_t lru_head;        /* oldest cached block: reclaimed first */
    int32_t lru_tail;        /* most recently released */
    int32_t n_free, n_cached, n_used;

    ql_prefix_index_t index;

    kv_seq_t *seqs;          /* [n_seq_max] */
    int32_t *tables;         /* [n_seq_max][n_bps] */
    int32_t *seq_free;       /* [n_seq_max] stack of closed ids */
    int32_t n_seq_free;

    uint64_t stat_queries, stat_hits, stat_evicted, stat_copies;
};

static inline int32_t ceil_div(int32_t a, int32_t b) { return (int32_t)(((int64_t)a + b - 1) / b); }
static inline int32_t *block_tokens(const ql_kv_t *kv, int32_t b) {
    return kv->tokens + (size_t)b * (size_t)kv->bs;
}
static inline int32_t *seq_table(const ql_kv_t *kv, int32_t seq) {
    return kv->tables + (size_t)seq * (size_t)kv->n_bps;
}
static inline int seq_ok(const ql_kv_t *kv, int32_t seq) {
    return kv && seq >= 0 && seq < kv->n_seq_max && kv->seqs[seq].open;
}

/* ---- the free list and the LRU list ---- */

static void free_push(ql_kv_t *kv, int32_t b) {
    kv->next[b] = kv->free_head;
    kv->prev[b] = -1;
    kv->free_head = b;
    kv->n_free++;
}

static int32_t free_pop(ql_kv_t *kv) {
    int32_t b = kv->free_head;
    kv->free_head = kv->next[b];
    kv->next[b] = -1;
    kv->n_free--;
    return b;
}

static void lru_push_tail(ql_kv_t *kv, int32_t b) {
    kv->prev[b] = kv->lru_tail;
    kv->next[b] = -1;
    if (kv->lru_tail >= 0) kv->next[kv->lru_tail] = b;
    else kv->lru_head = b;
    kv->lru_tail = b;
    kv->n_cached++;
}

static void lru_unlink(ql_kv_t *kv, int32_t b) {
    if (kv->prev[b] >= 0) kv->next[kv->prev[b]] = kv->next[b];
    else kv->lru_head = kv->next[b];
    if (kv->next[b] >= 0) kv->prev[kv->next[b]] = kv->prev[b];
    else kv->lru_tail = kv->prev[b];
    kv->next[b] = kv->prev[b] = -1;
    kv->n_cached--;
}

/* ---- registration ---- */

static void block_register(ql_kv_t *kv, int32_t b, uint64_t key, int32_t parent) {
    kv->reg[b] = 1;
    kv->key[b] = key;
    kv->parent[b] = parent;
    kv->parent_gen[b] = parent >= 0 ? kv->gen[parent] : 0;
    ql_prefix_index_insert(&kv->index, key, b); /* one entry per block: never over capacity */
}

/* NOTE(generation): bumping gen makes every registered block that names `b` as its parent
 * unreachable: b may now be rewritten with other tokens, and a child recorded under the old
 * contents must never follow the new ones. The stale children stay cached until the LRU
 * reclaims them. */
static void block_unregister(ql_kv_t *kv, int32_t b) {
    int rc = ql_prefix_index_remove(&kv->index, kv->key[b], b);
    QL_ASSERT(rc == 0);
    kv->reg[b] = 0;
    kv->gen[b]++;
}

/* ---- references ---- */

/* note: call only if a block is available (the caller checked ql_kv_n_blocks_available) */
static int32_t block_alloc(ql_kv_t *kv) {
    int32_t b;
    if (kv->free_head >= 0) {
        b = free_pop(kv);
    } else {
        QL_ASSERT(kv->lru_head >= 0);
        b = kv->lru_head;
        lru_unlink(kv, b);
        block_unregister(kv, b);
        kv->stat_evicted++;
    }
    kv->ref[b] = 1;
    kv->n_used++;
    return b;
}

/* Takes a reference on a block that may be cached (a prefix hit, a dedup) or used. */
static void block_ref(ql_kv_t *kv, int32_t b) {
    if (kv->ref[b] == 0) {
        QL_ASSERT(kv->reg[b]); /* unreferenced and reachable: only a cached block */
        lru_unlink(kv, b);
        kv->n_used++;
    }
    kv->ref[b]++;
}

static void block_unref(ql_kv_t *kv, int32_t b) {
    QL_ASSERT(kv->ref[b] > 0);
    if (--kv->ref[b] > 0) return;
    kv->n_used--;
    if (kv->reg[b]) lru_push_tail(kv, b);
    else free_push(kv, b);
}

/* ---- prefix matching ---- */

/* The registered block holding `toks` [bs] under `key` whose parent is `parent` in its current
 * generation, or -1. This is the check that makes a hash collision harmless. */
static int32_t find_exact(const ql_kv_t *kv, uint64_t key, const int32_t *toks, int32_t parent) {
    uint64_t cursor = 0;
    size_t nbytes = (size_t)kv->bs * sizeof(int32_t);
    for (int32_t b; (b = ql_prefix_index_next(&kv->index, key, &cursor)) >= 0;) {
        if (kv->parent[b] != parent) continue;
        if (parent >= 0 && kv->parent_gen[b] != kv->gen[parent]) continue;
        if (memcmp(block_tokens(kv, b), toks, nbytes) != 0) continue;
        return b;
    }
    return -1;
}

/* Matches prompt blocks against the cache, at most floor((n_prompt - 1) / bs) of them
 * (NOTE(last-block) in kv-cache.h). Stores the hits in out[] when not NULL; counts those that
 * are unreferenced now in *n_reclaimed. @return the number of blocks matched. */
static int32_t match_prefix(const ql_kv_t *kv, const int32_t *prompt, int32_t n_prompt,
                            int32_t *out, int32_t *n_reclaimed) {
    *n_reclaimed = 0;
    if (!kv->prefix_on || n_prompt < 1) return 0;
    int32_t n_max = (n_prompt - 1) / kv->bs, i = 0, parent = -1;
    uint64_t pkey = kv->root_key;
    for (; i < n_max; i++) {
        const int32_t *toks = prompt + (size_t)i * (size_t)kv->bs;
        uint64_t k = kv->hash(pkey, toks, kv->bs);
        int32_t b = find_exact(kv, k, toks, parent);
        if (b < 0) break;
        if (kv->ref[b] == 0) (*n_reclaimed)++;
        if (out) out[i] = b;
        parent = b;
        pkey = k;
    }
    return i;
}

/* Registers table[n_committed, n_computed / bs) in order, or swaps each for an equal cached
 * block (see "At most one block per (tokens, parent)" in kv-cache.h). */
static void commit_blocks(ql_kv_t *kv, kv_seq_t *s, int32_t *table) {
    int32_t n_full = s->n_computed / kv->bs;
    while (s->n_committed < n_full) {
        int32_t i = s->n_committed, p = table[i];
        int32_t parent = i > 0 ? table[i - 1] : -1;
        uint64_t pkey = i > 0 ? kv->key[parent] : kv->root_key;
        QL_DEBUG_ASSERT(parent < 0 || kv->reg[parent]);
        const int32_t *toks = block_tokens(kv, p);
        uint64_t k = kv->hash(pkey, toks, kv->bs);
        int32_t d = find_exact(kv, k, toks, parent);
        if (d >= 0 && d != p) {
            block_ref(kv, d);
            table[i] = d;
            block_unref(kv, p);
        } else if (d < 0) {
            if (kv->reg[p]) {
                /* NOTE(unreachable-chain): p is registered under another parent. The argument in
                 * kv-cache.h says a held block's parent chain is canonical, so this does not
                 * happen; if it ever did, stop registering this sequence rather than index one
                 * block twice. */
                QL_DEBUG_ASSERT(!"registered block under another parent");
                return;
            }
            block_register(kv, p, k, parent);
        }
        s->n_committed++;
    }
}

/* ---- init / free ---- */

ql_kv_params_t ql_kv_params_default(void) {
    ql_kv_params_t p;
    memset(&p, 0, sizeof(p));
    p.n_blocks = 0;
    p.block_size = 16;
    p.n_seq_max = 256;
    p.n_tokens_max = 8192;
    p.prefix_cache = 1;
    p.hash_seed = 0;
    p.hash = NULL;
    return p;
}

/* malloc(n * size) with an overflow check; NULL on either failure */
static void *alloc_array(size_t n, size_t size) {
    size_t bytes;
    if (ql_size_mul(n, size, &bytes) != 0) return NULL;
    return malloc(bytes ? bytes : 1);
}

int ql_kv_init(const ql_kv_params_t *p, ql_kv_t **out) {
    if (!p || !out) return QL_EINVAL;
    *out = NULL;
    if (p->n_blocks < 1 || p->block_size < 1 || p->n_seq_max < 1 || p->n_tokens_max < 1)
        return QL_EINVAL;
    if (p->prefix_cache != 0 && p->prefix_cache != 1) return QL_EINVAL;

    ql_kv_t *kv = calloc(1, sizeof(*kv));
    if (!kv) return QL_ENOMEM;
    kv->n_blocks = p->n_blocks;
    kv->bs = p->block_size;
    kv->n_seq_max = p->n_seq_max;
    kv->n_tokens_max = p->n_tokens_max;
    kv->n_bps = ceil_div(p->n_tokens_max, p->block_size);
    kv->prefix_on = p->prefix_cache;
    kv->hash = p->hash ? p->hash : ql_prefix_hash;
    kv->root_key = ql_prefix_root_key(p->hash_seed);

    size_t nb = (size_t)p->n_blocks, ns = (size_t)p->n_seq_max, n_table, n_slots;
    if (ql_size_mul(ns, (size_t)kv->n_bps, &n_table) != 0 ||
        ql_size_mul(nb, (size_t)kv->bs, &n_slots) != 0)
        goto fail;
    kv->ref = alloc_array(nb, sizeof(int32_t));
    kv->next = alloc_array(nb, sizeof(int32_t));
    kv->prev = alloc_array(nb, sizeof(int32_t));
    kv->reg = alloc_array(nb, sizeof(uint8_t));
    kv->key = alloc_array(nb, sizeof(uint64_t));
    kv->parent = alloc_array(nb, sizeof(int32_t));
    kv->parent_gen = alloc_array(nb, sizeof(uint64_t));
    kv->gen = alloc_array(nb, sizeof(uint64_t));
    kv->tokens = alloc_array(n_slots, sizeof(int32_t));
    kv->seqs = alloc_array(ns, sizeof(kv_seq_t));
    kv->tables = alloc_array(n_table, sizeof(int32_t));
    kv->seq_free = alloc_array(ns, sizeof(int32_t));
    if (!kv->ref || !kv->next || !kv->prev || !kv->reg || !kv->key || !kv->parent ||
        !kv->parent_gen || !kv->gen || !kv->tokens || !kv->seqs || !kv->tables || !kv->seq_free)
        goto fail;
    if (ql_prefix_index_init(&kv->index, p->n_blocks) != 0) goto fail;

    kv->free_head = kv->lru_head = kv->lru_tail = -1;
    for (int32_t b = p->n_blocks - 1; b >= 0; b--) { /* block 0 is handed out first */
        kv->ref[b] = 0;
        kv->reg[b] = 0;
        kv->key[b] = 0;
        kv->parent[b] = -1;
        kv->parent_gen[b] = 0;
        kv->gen[b] = 0;
        free_push(kv, b);
    }
    memset(kv->tokens, 0, n_slots * sizeof(int32_t));
    memset(kv->seqs, 0, ns * sizeof(kv_seq_t));
    memset(kv->tables, 0xff, n_table * sizeof(int32_t)); /* -1: unused table entries */
    for (int32_t i = 0; i < p->n_seq_max; i++) kv->seq_free[i] = p->n_seq_max - 1 - i; /* 0 first */
    kv->n_seq_free = p->n_seq_max;
    *out = kv;
    return 0;

fail:
    ql_kv_free(kv);
    return QL_ENOMEM;
}

void ql_kv_free(ql_kv_t *kv) {
    if (!kv) return;
    ql_prefix_index_free(&kv->index);
    free(kv->ref);
    free(kv->next);
    free(kv->prev);
    free(kv->reg);
    free(kv->key);
    free(kv->parent);
    free(kv->parent_gen);
    free(kv->gen);
    free(kv->tokens);
    free(kv->seqs);
    free(kv->tables);
    free(kv->seq_free);
    free(kv);
}

/* ---- sequences ---- */

static int32_t seq_take(ql_kv_t *kv) {
    int32_t seq = kv->seq_free[--kv->n_seq_free];
    kv_seq_t *s = &kv->seqs[seq];
    memset(s, 0, sizeof(*s));
    s->open = 1;
    return seq;
}

int ql_kv_seq_open(ql_kv_t *kv, const int32_t *prompt, int32_t n_prompt, int32_t *seq_out) {
    if (!kv || !seq_out || n_prompt < 0 || (n_prompt > 0 && !prompt)) return QL_EINVAL;
    if (n_prompt > kv->n_tokens_max) return QL_ERANGE;
    if (kv->n_seq_free == 0) return QL_ENOSPC;
    int32_t seq = seq_take(kv), n_reclaimed;
    kv_seq_t *s = &kv->seqs[seq];
    int32_t *table = seq_table(kv, seq);
    int32_t n_hit = match_prefix(kv, prompt, n_prompt, table, &n_reclaimed);
    for (int32_t i = 0; i < n_hit; i++) block_ref(kv, table[i]);
    s->n_tokens = s->n_computed = s->n_cached_prompt = n_hit * kv->bs;
    s->n_committed = n_hit;
    if (kv->prefix_on) {
        kv->stat_queries += (uint64_t)n_prompt;
        kv->stat_hits += (uint64_t)s->n_cached_prompt;
    }
    *seq_out = seq;
    return 0;
}

int ql_kv_seq_fork(ql_kv_t *kv, int32_t src, int32_t *dst_out) {
    if (!seq_ok(kv, src) || !dst_out) return QL_EINVAL;
    if (kv->seqs[src].n_computed != kv->seqs[src].n_tokens) return QL_ESTATE;
    if (kv->n_seq_free == 0) return QL_ENOSPC;
    int32_t dst = seq_take(kv);
    kv->seqs[dst] = kv->seqs[src];
    const int32_t *ts = seq_table(kv, src);
    int32_t *td = seq_table(kv, dst), nb = ceil_div(kv->seqs[src].n_tokens, kv->bs);
    for (int32_t i = 0; i < nb; i++) {
        td[i] = ts[i];
        block_ref(kv, ts[i]);
    }
    *dst_out = dst;
    return 0;
}

/* Releases table[ceil(n_tokens / bs), old end), last block first (so a prefix outlives its
 * continuations in the LRU list), and updates the counts. */
static void seq_shrink(ql_kv_t *kv, int32_t seq, int32_t n_tokens) {
    kv_seq_t *s = &kv->seqs[seq];
    int32_t *table = seq_table(kv, seq);
    int32_t nb_old = ceil_div(s->n_tokens, kv->bs), nb_new = ceil_div(n_tokens, kv->bs);
    for (int32_t i = nb_old - 1; i >= nb_new; i--) {
        block_unref(kv, table[i]);
        table[i] = -1;
    }
    s->n_tokens = n_tokens;
    s->n_computed = QL_MIN(s->n_computed, n_tokens);
    s->n_committed = QL_MIN(s->n_committed, n_tokens / kv->bs);
}

int ql_kv_seq_close(ql_kv_t *kv, int32_t seq) {
    if (!seq_ok(kv, seq)) return QL_EINVAL;
    seq_shrink(kv, seq, 0);
    kv->seqs[seq].open = 0;
    kv->seq_free[kv->n_seq_free++] = seq;
    return 0;
}

int ql_kv_seq_truncate(ql_kv_t *kv, int32_t seq, int32_t n_tokens) {
    if (!seq_ok(kv, seq) || n_tokens < 0 || n_tokens > kv->seqs[seq].n_tokens) return QL_EINVAL;
    seq_shrink(kv, seq, n_tokens);
    return 0;
}

/* Blocks an append of n tokens takes; the caller validated seq and the range. */
static int32_t blocks_needed(const ql_kv_t *kv, int32_t seq, int32_t n) {
    const kv_seq_t *s = &kv->seqs[seq];
    if (n == 0) return 0;
    int32_t need = ceil_div(s->n_tokens + n, kv->bs) - ceil_div(s->n_tokens, kv->bs);
    if (s->n_tokens % kv->bs != 0 && kv->ref[seq_table(kv, seq)[s->n_tokens / kv->bs]] > 1) need++;
    return need;
}

int32_t ql_kv_seq_blocks_needed(const ql_kv_t *kv, int32_t seq, int32_t n_tokens) {
    if (!seq_ok(kv, seq) || n_tokens < 0) return QL_EINVAL;
    if ((int64_t)kv->seqs[seq].n_tokens + n_tokens > kv->n_tokens_max) return QL_ERANGE;
    return blocks_needed(kv, seq, n_tokens);
}

int ql_kv_seq_can_append(const ql_kv_t *kv, int32_t seq, int32_t n_tokens) {
    int32_t need = ql_kv_seq_blocks_needed(kv, seq, n_tokens);
    return need >= 0 && need <= ql_kv_n_blocks_available(kv);
}

int ql_kv_seq_append(ql_kv_t *kv, int32_t seq, const int32_t *tokens, int32_t n_tokens,
                     ql_kv_copy_t *copy) {
    if (copy) copy->src = copy->dst = -1;
    if (!seq_ok(kv, seq) || !copy || n_tokens < 0 || (n_tokens > 0 && !tokens)) return QL_EINVAL;
    kv_seq_t *s = &kv->seqs[seq];
    if ((int64_t)s->n_tokens + n_tokens > kv->n_tokens_max) return QL_ERANGE;
    if (blocks_needed(kv, seq, n_tokens) > ql_kv_n_blocks_available(kv)) return QL_KV_NO_BLOCKS;
    if (n_tokens == 0) return 0;

    int32_t *table = seq_table(kv, seq), pos = s->n_tokens, bs = kv->bs;
    if (pos % bs != 0) {
        int32_t b = table[pos / bs];
        if (kv->ref[b] > 1) {
            /* copy-on-write: the slots [0, pos % bs) are this sequence's; the rest are stale */
            int32_t d = block_alloc(kv);
            memcpy(block_tokens(kv, d), block_tokens(kv, b), (size_t)(pos % bs) * sizeof(int32_t));
            table[pos / bs] = d;
            block_unref(kv, b);
            copy->src = b;
            copy->dst = d;
            kv->stat_copies++;
        } else if (kv->reg[b]) {
            /* sole owner of a cached block it rolled back into: its later slots change, so it
             * leaves the cache (kv-cache.h, ql_kv_seq_truncate) */
            block_unregister(kv, b);
        }
    }
    for (int32_t i = 0; i < n_tokens; i++, pos++) {
        if (pos % bs == 0) table[pos / bs] = block_alloc(kv);
        block_tokens(kv, table[pos / bs])[pos % bs] = tokens[i];
    }
    s->n_tokens = pos;
    return 0;
}

int ql_kv_seq_set_computed(ql_kv_t *kv, int32_t seq, int32_t n_computed) {
    if (!seq_ok(kv, seq)) return QL_EINVAL;
    kv_seq_t *s = &kv->seqs[seq];
    if (n_computed < s->n_computed || n_computed > s->n_tokens) return QL_EINVAL;
    s->n_computed = n_computed;
    if (kv->prefix_on) commit_blocks(kv, s, seq_table(kv, seq));
    return 0;
}

/* ---- queries ---- */

int32_t ql_kv_seq_n_tokens(const ql_kv_t *kv, int32_t seq) {
    return seq_ok(kv, seq) ? kv->seqs[seq].n_tokens : QL_EINVAL;
}
int32_t ql_kv_seq_n_computed(const ql_kv_t *kv, int32_t seq) {
    return seq_ok(kv, seq) ? kv->seqs[seq].n_computed : QL_EINVAL;
}
int32_t ql_kv_seq_n_cached_prompt(const ql_kv_t *kv, int32_t seq) {
    return seq_ok(kv, seq) ? kv->seqs[seq].n_cached_prompt : QL_EINVAL;
}

const int32_t *ql_kv_seq_block_table(const ql_kv_t *kv, int32_t seq, int32_t *n_blocks) {
    if (!seq_ok(kv, seq)) {
        if (n_blocks) *n_blocks = 0;
        return NULL;
    }
    if (n_blocks) *n_blocks = ceil_div(kv->seqs[seq].n_tokens, kv->bs);
    return seq_table(kv, seq);
}

int32_t ql_kv_n_blocks_available(const ql_kv_t *kv) { return kv->n_free + kv->n_cached; }

int ql_kv_prefix_probe(const ql_kv_t *kv, const int32_t *prompt, int32_t n_prompt,
                       ql_kv_probe_t *out) {
    if (!kv || !out || n_prompt < 0 || (n_prompt > 0 && !prompt)) return QL_EINVAL;
    if (n_prompt > kv->n_tokens_max) return QL_ERANGE;
    int32_t n_reclaimed;
    int32_t n_hit = match_prefix(kv, prompt, n_prompt, NULL, &n_reclaimed);
    out->n_tokens_cached = n_hit * kv->bs;
    out->n_blocks_reclaimed = n_reclaimed;
    return 0;
}

void ql_kv_set_prefix_cache(ql_kv_t *kv, int enabled) {
    enabled = enabled != 0;
    if (enabled == kv->prefix_on) return;
    kv->prefix_on = enabled;
    if (enabled) return;
    for (int32_t b = 0; b < kv->n_blocks; b++) {
        if (!kv->reg[b]) continue;
        block_unregister(kv, b);
        if (kv->ref[b] == 0) {
            lru_unlink(kv, b);
            free_push(kv, b);
        }
    }
    for (int32_t i = 0; i < kv->n_seq_max; i++) kv->seqs[i].n_committed = 0;
}

int ql_kv_prefix_cache_enabled(const ql_kv_t *kv) { return kv->prefix_on; }

void ql_kv_get_stats(const ql_kv_t *kv, ql_kv_stats_t *out) {
    memset(out, 0, sizeof(*out));
    out->n_blocks = kv->n_blocks;
    out->n_blocks_free = kv->n_free;
    out->n_blocks_used = kv->n_used;
    out->n_blocks_cached = kv->n_cached;
    out->n_seqs = kv->n_seq_max - kv->n_seq_free;
    out->prefix_queries_tokens = kv->stat_queries;
    out->prefix_hits_tokens = kv->stat_hits;
    out->n_evicted = kv->stat_evicted;
    out->n_copies = kv->stat_copies;
}

int32_t ql_kv_block_size(const ql_kv_t *kv) { return kv->bs; }
int32_t ql_kv_max_blocks_per_seq(const ql_kv_t *kv) { return kv->n_bps; }

int32_t ql_kv_block_ref(const ql_kv_t *kv, int32_t block) {
    return kv && block >= 0 && block < kv->n_blocks ? kv->ref[block] : QL_EINVAL;
}

const int32_t *ql_kv_block_tokens(const ql_kv_t *kv, int32_t block) {
    return kv && block >= 0 && block < kv->n_blocks ? block_tokens(kv, block) : NULL;
}

/* ---- invariants ---- */

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            QL_LOG_ERROR("kv invariant: " __VA_ARGS__);                                    \
            rc = QL_EINTERNAL;                                                             \
            goto done;                                                                     \
        }                                                                                  \
    } while (0)

int ql_kv_check(const ql_kv_t *kv) {
    int rc = 0;
    int32_t *refs = calloc((size_t)kv->n_blocks, sizeof(int32_t));
    uint8_t *seen = calloc((size_t)kv->n_blocks, 1); /* 1: on the free list, 2: on the LRU list */
    if (!refs || !seen) {
        free(refs);
        free(seen);
        return QL_ENOMEM;
    }
    CHECK(kv->n_free + kv->n_cached + kv->n_used == kv->n_blocks,
          "free %d + cached %d + used %d != %d", kv->n_free, kv->n_cached, kv->n_used,
          kv->n_blocks);

    int32_t n_open = 0;
    for (int32_t q = 0; q < kv->n_seq_max; q++) {
        const kv_seq_t *s = &kv->seqs[q];
        if (!s->open) continue;
        n_open++;
        const int32_t *t = seq_table(kv, q);
        int32_t nb = ceil_div(s->n_tokens, kv->bs);
        CHECK(0 <= s->n_computed && s->n_computed <= s->n_tokens && s->n_tokens <= kv->n_tokens_max,
              "seq %d counts %d/%d", q, s->n_computed, s->n_tokens);
        CHECK(0 <= s->n_committed && s->n_committed <= s->n_computed / kv->bs,
              "seq %d committed %d", q, s->n_committed);
        for (int32_t i = 0; i < kv->n_bps; i++) {
            if (i >= nb) {
                CHECK(t[i] == -1, "seq %d table[%d] = %d past its end", q, i, t[i]);
                continue;
            }
            CHECK(t[i] >= 0 && t[i] < kv->n_blocks, "seq %d table[%d] = %d", q, i, t[i]);
            refs[t[i]]++;
            if (kv->prefix_on && i < s->n_committed)
                CHECK(kv->reg[t[i]], "seq %d committed block %d unregistered", q, t[i]);
        }
    }
    CHECK(n_open + kv->n_seq_free == kv->n_seq_max, "open %d + free ids %d != %d", n_open,
          kv->n_seq_free, kv->n_seq_max);
    for (int32_t i = 0; i < kv->n_seq_free; i++) {
        int32_t q = kv->seq_free[i];
        CHECK(q >= 0 && q < kv->n_seq_max && !kv->seqs[q].open, "free seq id %d", q);
    }

    int32_t n = 0;
    for (int32_t b = kv->free_head; b >= 0; b = kv->next[b]) {
        CHECK(n++ < kv->n_free && !seen[b], "free list cycle or overrun at %d", b);
        CHECK(kv->ref[b] == 0 && !kv->reg[b], "free block %d ref %d reg %d", b, kv->ref[b],
              kv->reg[b]);
        seen[b] = 1;
    }
    CHECK(n == kv->n_free, "free list holds %d, count %d", n, kv->n_free);
    n = 0;
    for (int32_t b = kv->lru_head, prev = -1; b >= 0; prev = b, b = kv->next[b]) {
        CHECK(n++ < kv->n_cached && !seen[b], "LRU cycle or overrun at %d", b);
        CHECK(kv->prev[b] == prev, "LRU prev link of %d", b);
        CHECK(kv->ref[b] == 0 && kv->reg[b], "cached block %d ref %d reg %d", b, kv->ref[b],
              kv->reg[b]);
        if (kv->next[b] < 0) CHECK(kv->lru_tail == b, "LRU tail %d != %d", kv->lru_tail, b);
        seen[b] = 2;
    }
    CHECK(n == kv->n_cached, "LRU holds %d, count %d", n, kv->n_cached);

    int32_t n_used = 0, n_reg = 0;
    for (int32_t b = 0; b < kv->n_blocks; b++) {
        CHECK(refs[b] == kv->ref[b], "block %d ref %d, tables hold it %d times", b, kv->ref[b],
              refs[b]);
        CHECK((kv->ref[b] > 0) == !seen[b], "block %d ref %d on list %d", b, kv->ref[b], seen[b]);
        n_used += kv->ref[b] > 0;
        if (!kv->reg[b]) continue;
        n_reg++;
        CHECK(kv->prefix_on, "block %d registered with the cache off", b);
        uint64_t cursor = 0;
        int32_t found = 0;
        for (int32_t x; (x = ql_prefix_index_next(&kv->index, kv->key[b], &cursor)) >= 0;)
            found += x == b;
        CHECK(found == 1, "block %d in the index %d times", b, found);
    }
    CHECK(n_used == kv->n_used, "used %d, count %d", n_used, kv->n_used);
    CHECK(n_reg == ql_prefix_index_size(&kv->index), "registered %d, index %d", n_reg,
          ql_prefix_index_size(&kv->index));
done:
    free(refs);
    free(seen);
    return rc;
}
