/*
 * tests/unit/scheduler/test-prefix-cache.c — the prefix cache: the chained block hash and the
 * key -> block index (scheduler/prefix-cache.h), and the policy through the block manager
 * (scheduler/kv-cache.h): hits at block granularity, the last-block rule, deduplication,
 * forced hash collisions (a constant hash) that never serve the wrong block, LRU reclamation
 * order, cached-prompt-token counts and statistics, and turning the cache off.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"
#include "scheduler/kv-cache.h"
#include "scheduler/prefix-cache.h"

/* ---- helpers ---- */

#define BS 4

static ql_kv_t *new_kv(int32_t n_blocks, int32_t n_seq, int prefix, ql_prefix_hash_fn hash) {
    ql_kv_params_t p = ql_kv_params_default();
    p.n_blocks = n_blocks;
    p.block_size = BS;
    p.n_seq_max = n_seq;
    p.n_tokens_max = 64;
    p.prefix_cache = prefix;
    p.hash = hash;
    ql_kv_t *kv = NULL;
    assert_int_equal(ql_kv_init(&p, &kv), 0);
    return kv;
}

static ql_kv_stats_t stats(const ql_kv_t *kv) {
    ql_kv_stats_t s;
    ql_kv_get_stats(kv, &s);
    return s;
}

static void assert_accounting(const ql_kv_t *kv) {
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_free + s.n_blocks_used + s.n_blocks_cached, s.n_blocks);
    assert_int_equal(ql_kv_check(kv), 0);
}

/* What the engine does with a prompt: open, append the uncached rest, "forward", mark
 * computed. @return the sequence. */
static int32_t run_prompt(ql_kv_t *kv, const int32_t *prompt, int32_t n) {
    int32_t seq = -1;
    assert_int_equal(ql_kv_seq_open(kv, prompt, n, &seq), 0);
    int32_t nc = ql_kv_seq_n_cached_prompt(kv, seq);
    ql_kv_copy_t c;
    assert_int_equal(ql_kv_seq_append(kv, seq, prompt + nc, n - nc, &c), 0);
    assert_int_equal(c.src, -1);
    assert_int_equal(ql_kv_seq_set_computed(kv, seq, n), 0);
    assert_accounting(kv);
    return seq;
}

static int32_t cached_tokens(const ql_kv_t *kv, const int32_t *prompt, int32_t n) {
    ql_kv_probe_t pr;
    assert_int_equal(ql_kv_prefix_probe(kv, prompt, n, &pr), 0);
    return pr.n_tokens_cached;
}

static int32_t table_at(const ql_kv_t *kv, int32_t seq, int32_t i) {
    int32_t nb = 0;
    const int32_t *t = ql_kv_seq_block_table(kv, seq, &nb);
    assert_true(i < nb);
    return t[i];
}

static void fill(int32_t *t, int32_t n, int32_t first) {
    for (int32_t i = 0; i < n; i++) t[i] = first + i;
}

static uint64_t constant_hash(uint64_t parent, const int32_t *tokens, int32_t n) {
    (void)parent;
    (void)tokens;
    (void)n;
    return 42;
}

/* ---- hash ---- */

static void test_hash(void **state) {
    (void)state;
    int32_t a[8] = {1, 2, 3, 4, 5, 6, 7, 8}, b[8];
    uint64_t root = ql_prefix_root_key(0);
    assert_true(root != ql_prefix_root_key(1));
    uint64_t h = ql_prefix_hash(root, a, 8);
    assert_true(h == ql_prefix_hash(root, a, 8)); /* pure */
    assert_true(h != ql_prefix_hash(root ^ 1, a, 8)); /* chained on the parent */
    assert_true(h != ql_prefix_hash(root, a, 7)); /* the length counts */
    int32_t z1[1] = {5}, z2[2] = {5, 0};
    /* padding is not a token */
    assert_true(ql_prefix_hash(root, z1, 1) != ql_prefix_hash(root, z2, 2));
    for (int32_t i = 0; i < 8; i++) { /* every token counts, and the order */
        memcpy(b, a, sizeof(a));
        b[i] ^= 1 << (i * 3);
        assert_true(h != ql_prefix_hash(root, b, 8));
    }
    memcpy(b, a, sizeof(a));
    b[0] = a[1];
    b[1] = a[0];
    assert_true(h != ql_prefix_hash(root, b, 8));
    /* avalanche, roughly: one flipped input bit flips about half the output bits */
    int32_t total = 0;
    for (int32_t bit = 0; bit < 32; bit++) {
        memcpy(b, a, sizeof(a));
        b[3] ^= (int32_t)(1u << bit);
        total += __builtin_popcountll(h ^ ql_prefix_hash(root, b, 8));
    }
    assert_true(total > 32 * 24 && total < 32 * 40);
}

/* ---- index ---- */

static void test_index_multimap(void **state) {
    (void)state;
    ql_prefix_index_t ix;
    assert_int_equal(ql_prefix_index_init(&ix, 0), QL_EINVAL);
    assert_int_equal(ql_prefix_index_init(&ix, 8), 0);
    uint64_t cur = 0;
    assert_int_equal(ql_prefix_index_next(&ix, 7, &cur), -1);
    for (int32_t b = 0; b < 5; b++) ql_prefix_index_insert(&ix, 7, b);
    ql_prefix_index_insert(&ix, 9, 5);
    assert_int_equal(ql_prefix_index_size(&ix), 6);
    int32_t seen = 0, x;
    cur = 0;
    while ((x = ql_prefix_index_next(&ix, 7, &cur)) >= 0) seen |= 1 << x;
    assert_int_equal(seen, 0x1f);
    assert_int_equal(ql_prefix_index_remove(&ix, 7, 2), 0);
    assert_int_equal(ql_prefix_index_remove(&ix, 7, 2), QL_ENOENT);
    assert_int_equal(ql_prefix_index_remove(&ix, 9, 0), QL_ENOENT);
    seen = 0;
    cur = 0;
    while ((x = ql_prefix_index_next(&ix, 7, &cur)) >= 0) seen |= 1 << x;
    assert_int_equal(seen, 0x1b);
    cur = 0;
    assert_int_equal(ql_prefix_index_next(&ix, 9, &cur), 5);
    assert_int_equal(ql_prefix_index_next(&ix, 9, &cur), -1);
    ql_prefix_index_free(&ix);
    ql_prefix_index_free(&ix); /* twice is fine */
}

/* random inserts and removes, full to the allowed size, against a brute-force list: exercises
 * wrap-around and backward-shift deletion */
static void test_index_random(void **state) {
    (void)state;
    enum { N = 64, OPS = 20000 };
    ql_prefix_index_t ix;
    assert_int_equal(ql_prefix_index_init(&ix, N), 0);
    uint64_t keys[N];
    int present[N] = {0};
    uint64_t s = 88172645463325252ull;
    for (int32_t b = 0; b < N; b++) keys[b] = 0;
    for (int op = 0; op < OPS; op++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        int32_t b = (int32_t)(s % N);
        if (present[b]) {
            assert_int_equal(ql_prefix_index_remove(&ix, keys[b], b), 0);
            present[b] = 0;
        } else {
            keys[b] = (s >> 8) % 24; /* few distinct keys: long shared runs */
            ql_prefix_index_insert(&ix, keys[b], b);
            present[b] = 1;
        }
        if (op % 97 != 0) continue;
        int32_t n = 0;
        for (int32_t k = 0; k < N; k++) {
            n += present[k];
            int32_t found = 0;
            uint64_t cur = 0;
            for (int32_t y; (y = ql_prefix_index_next(&ix, keys[k], &cur)) >= 0;) found += y == k;
            assert_int_equal(found, present[k]);
        }
        assert_int_equal(ql_prefix_index_size(&ix), n);
    }
    ql_prefix_index_free(&ix);
}

/* ---- hits ---- */

static void test_hits_at_block_granularity(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(32, 4, 1, NULL);
    int32_t p[20], q[20];
    fill(p, 20, 100);
    int32_t a = run_prompt(kv, p, 11); /* blocks [100..103] [104..107] cached; 3 tokens partial */
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, a), 0);
    assert_int_equal(stats(kv).n_blocks_cached, 0); /* in use, not yet "cached" */

    memcpy(q, p, sizeof(p));
    assert_int_equal(cached_tokens(kv, q, 20), 8);
    assert_int_equal(cached_tokens(kv, q, 9), 8);
    assert_int_equal(cached_tokens(kv, q, 8), 4); /* NOTE(last-block): one token must be computed */
    assert_int_equal(cached_tokens(kv, q, 5), 4);
    assert_int_equal(cached_tokens(kv, q, 4), 0);
    assert_int_equal(cached_tokens(kv, q, 1), 0);
    assert_int_equal(cached_tokens(kv, q, 0), 0);
    q[6] = -1; /* differs inside block 1 */
    assert_int_equal(cached_tokens(kv, q, 20), 4);
    q[0] = -1; /* and block 0 */
    assert_int_equal(cached_tokens(kv, q, 20), 0);
    /* the partial block 2 is never a hit, even for an equal prompt */
    assert_int_equal(cached_tokens(kv, p, 12), 8);
    assert_int_equal(cached_tokens(kv, p, 13), 8);

    /* a hit shares the running sequence's blocks */
    memcpy(q, p, sizeof(p));
    q[9] = 7;
    int32_t b = run_prompt(kv, q, 12);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, b), 8);
    assert_int_equal(table_at(kv, b, 0), table_at(kv, a, 0));
    assert_int_equal(table_at(kv, b, 1), table_at(kv, a, 1));
    assert_int_not_equal(table_at(kv, b, 2), table_at(kv, a, 2));
    assert_int_equal(ql_kv_block_ref(kv, table_at(kv, a, 0)), 2);
    assert_int_equal(ql_kv_block_ref(kv, table_at(kv, a, 2)), 1);
    assert_int_equal(stats(kv).n_blocks_used, 4);

    /* decoded tokens are cached too, once their block is full and computed */
    int32_t r[17] = {100, 101, 102, 103, 104, 105, 106, 107, 108,
                     7,   110, 111, 555, 556, 557, 558, 9};
    assert_int_equal(cached_tokens(kv, r, 17), 12);
    ql_kv_copy_t c;
    assert_int_equal(ql_kv_seq_append(kv, b, r + 12, 4, &c), 0);
    assert_int_equal(cached_tokens(kv, r, 17), 12); /* full but not computed */
    assert_int_equal(ql_kv_seq_set_computed(kv, b, 15), 0);
    assert_int_equal(cached_tokens(kv, r, 17), 12);
    assert_int_equal(ql_kv_seq_set_computed(kv, b, 16), 0);
    assert_int_equal(cached_tokens(kv, r, 17), 16);

    /* the cached blocks outlive their sequences */
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_used, 0);
    assert_int_equal(s.n_blocks_cached, 4); /* p's two, q's third and fourth; not p's partial one */
    assert_int_equal(cached_tokens(kv, p, 20), 8);
    ql_kv_probe_t pr;
    assert_int_equal(ql_kv_prefix_probe(kv, p, 20, &pr), 0);
    assert_int_equal(pr.n_blocks_reclaimed, 2);
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* A prompt of exactly k blocks reuses k - 1 and recomputes the last, which is then
 * deduplicated against the cached copy. */
static void test_exact_multiple_and_dedup(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(16, 4, 1, NULL);
    int32_t p[8];
    fill(p, 8, 1);
    int32_t a = run_prompt(kv, p, 8);
    int32_t a0 = table_at(kv, a, 0), a1 = table_at(kv, a, 1);
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(stats(kv).n_blocks_cached, 2);

    int32_t b = -1;
    assert_int_equal(ql_kv_seq_open(kv, p, 8, &b), 0);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, b), 4);
    assert_int_equal(ql_kv_seq_n_tokens(kv, b), 4);
    assert_int_equal(ql_kv_seq_n_computed(kv, b), 4);
    assert_int_equal(table_at(kv, b, 0), a0);
    ql_kv_copy_t c;
    assert_int_equal(ql_kv_seq_append(kv, b, p + 4, 4, &c), 0);
    int32_t mine = table_at(kv, b, 1);
    assert_int_not_equal(mine, a1); /* computed into a fresh block... */
    assert_int_equal(stats(kv).n_blocks_used, 2);
    assert_int_equal(ql_kv_seq_set_computed(kv, b, 8), 0);
    assert_int_equal(table_at(kv, b, 1), a1); /* ...then swapped for the cached equal one */
    assert_int_equal(ql_kv_block_ref(kv, a1), 1);
    assert_int_equal(ql_kv_block_ref(kv, mine), 0);
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_used, 2);
    assert_int_equal(s.n_blocks_cached, 0);
    assert_int_equal(s.n_blocks_free, 14);
    assert_accounting(kv);

    /* two equal prompts admitted in one step: both compute, the second is deduplicated */
    ql_kv_set_prefix_cache(kv, 0);
    ql_kv_set_prefix_cache(kv, 1);
    int32_t x = -1, y = -1, q[9];
    fill(q, 9, 50);
    assert_int_equal(ql_kv_seq_open(kv, q, 9, &x), 0);
    assert_int_equal(ql_kv_seq_open(kv, q, 9, &y), 0);
    assert_int_equal(ql_kv_seq_append(kv, x, q, 9, &c), 0);
    assert_int_equal(ql_kv_seq_append(kv, y, q, 9, &c), 0);
    int32_t used = stats(kv).n_blocks_used;
    assert_int_equal(ql_kv_seq_set_computed(kv, x, 9), 0);
    assert_int_equal(ql_kv_seq_set_computed(kv, y, 9), 0);
    assert_int_equal(table_at(kv, y, 0), table_at(kv, x, 0));
    assert_int_equal(table_at(kv, y, 1), table_at(kv, x, 1));
    assert_int_not_equal(table_at(kv, y, 2), table_at(kv, x, 2)); /* partial: private */
    assert_int_equal(stats(kv).n_blocks_used, used - 2);
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* ---- collisions ---- */

/* With a hash that maps everything to one key, every lookup meets every cached block, and
 * only the token and parent comparison decides. */
static void test_forced_collision(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(32, 8, 1, constant_hash);
    int32_t p[9], q[9];
    fill(p, 9, 0);
    fill(q, 9, 100);
    int32_t a = run_prompt(kv, p, 9);
    int32_t b = run_prompt(kv, q, 9);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, b), 0); /* p's blocks share q's key */
    /* equal prompts still hit, each its own chain */
    assert_int_equal(cached_tokens(kv, p, 9), 8);
    assert_int_equal(cached_tokens(kv, q, 9), 8);
    int32_t pa[9];
    memcpy(pa, p, sizeof(p));
    pa[7] = 100 + 7; /* block 1 differs */
    assert_int_equal(cached_tokens(kv, pa, 9), 4);

    /* same tokens under another parent: [0..3 | 104..107] must not take q's block 1 */
    int32_t mix[9];
    memcpy(mix, p, 4 * sizeof(int32_t));
    memcpy(mix + 4, q + 4, 5 * sizeof(int32_t));
    int32_t c = run_prompt(kv, mix, 9);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, c), 4);
    assert_int_equal(table_at(kv, c, 0), table_at(kv, a, 0));
    assert_int_not_equal(table_at(kv, c, 1), table_at(kv, b, 1));
    const int32_t *bt = ql_kv_block_tokens(kv, table_at(kv, c, 1));
    assert_memory_equal(bt, q + 4, 4 * sizeof(int32_t));
    assert_int_equal(ql_kv_block_ref(kv, table_at(kv, b, 1)), 1);

    /* every served block holds the prompt's own tokens */
    for (int32_t seq = 0; seq < 8; seq++) {
        if (ql_kv_seq_n_tokens(kv, seq) < 0) continue;
        int32_t nb;
        const int32_t *t = ql_kv_seq_block_table(kv, seq, &nb);
        const int32_t *want = seq == a ? p : seq == b ? q : mix;
        for (int32_t i = 0; i < 9; i++)
            assert_int_equal(ql_kv_block_tokens(kv, t[i / BS])[i % BS], want[i]);
    }
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* A parent rewritten in place after a rollback is a new generation: a child registered under
 * its old contents is not reachable through the new ones (with a constant hash, only the
 * generation tells them apart). */
static void test_parent_generation(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(16, 2, 1, constant_hash);
    int32_t p[9] = {1, 1, 1, 1, 2, 2, 2, 2, 9};
    int32_t a = run_prompt(kv, p, 9);
    int32_t a0 = table_at(kv, a, 0), a1 = table_at(kv, a, 1);
    /* roll back into block 0 and write other tokens there */
    assert_int_equal(ql_kv_seq_truncate(kv, a, 2), 0);
    assert_int_equal(ql_kv_block_ref(kv, a1), 0); /* a1 is cached, child of a0's old contents */
    assert_int_equal(stats(kv).n_blocks_cached, 1);
    ql_kv_copy_t c;
    int32_t t2[2] = {3, 3};
    assert_int_equal(ql_kv_seq_append(kv, a, t2, 2, &c), 0);
    assert_int_equal(c.src, -1); /* sole owner: in place */
    assert_int_equal(table_at(kv, a, 0), a0);
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 4), 0); /* a0 registered again: [1 1 3 3] */
    int32_t q[9] = {1, 1, 3, 3, 2, 2, 2, 2, 9};
    assert_int_equal(cached_tokens(kv, q, 9), 4); /* a0 yes, a1 no */
    assert_int_equal(cached_tokens(kv, p, 9), 0); /* the old [1 1 1 1] is gone */
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* ---- LRU ---- */

static void test_lru_reclamation_order(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(8, 4, 1, NULL);
    int32_t p1[9], p2[9], big[64];
    fill(p1, 9, 100);
    fill(p2, 9, 200);
    fill(big, 64, 1000);
    int32_t a = run_prompt(kv, p1, 9); /* 2 cacheable blocks + 1 partial */
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    int32_t b = run_prompt(kv, p2, 9);
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_cached, 4);
    assert_int_equal(s.n_blocks_free, 4);

    /* free blocks go first: no eviction while one is free */
    int32_t g = -1;
    ql_kv_copy_t c;
    assert_int_equal(ql_kv_seq_open(kv, big, 0, &g), 0);
    assert_int_equal(ql_kv_seq_append(kv, g, big, 16, &c), 0); /* 4 blocks */
    s = stats(kv);
    assert_int_equal(s.n_evicted, 0);
    assert_int_equal(s.n_blocks_free, 0);
    assert_int_equal(cached_tokens(kv, p1, 9), 8);
    assert_int_equal(cached_tokens(kv, p2, 9), 8);

    /* then the least recently released, and within a sequence its last block first */
    int32_t expect_p1[] = {4, 0, 0, 0}, expect_p2[] = {8, 8, 4, 0};
    for (int32_t i = 0; i < 4; i++) {
        assert_int_equal(ql_kv_seq_append(kv, g, big + 16 + 4 * i, 4, &c), 0);
        assert_int_equal(stats(kv).n_evicted, (uint64_t)i + 1);
        assert_int_equal(cached_tokens(kv, p1, 9), expect_p1[i]);
        assert_int_equal(cached_tokens(kv, p2, 9), expect_p2[i]);
        assert_accounting(kv);
    }
    assert_int_equal(ql_kv_seq_append(kv, g, big + 32, 1, &c), QL_KV_NO_BLOCKS);
    assert_int_equal(ql_kv_seq_close(kv, g), 0);

    /* a hit refreshes: p1 used again after p2 makes p2 the older one */
    ql_kv_free(kv);
    kv = new_kv(6, 4, 1, NULL);
    a = run_prompt(kv, p1, 9);
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    b = run_prompt(kv, p2, 9);
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    a = run_prompt(kv, p1, 9); /* hits p1's 2 blocks, 1 partial */
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, a), 8);
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(stats(kv).n_blocks_cached, 4);
    assert_int_equal(ql_kv_seq_open(kv, big, 0, &g), 0);
    assert_int_equal(ql_kv_seq_append(kv, g, big, 12, &c), 0); /* 2 free + 1 evicted */
    assert_int_equal(cached_tokens(kv, p1, 9), 8);
    assert_int_equal(cached_tokens(kv, p2, 9), 4);
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* ---- statistics ---- */

static void test_stats_and_cached_prompt_tokens(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(32, 8, 1, NULL);
    int32_t p[30];
    fill(p, 30, 7);
    int32_t a = run_prompt(kv, p, 30); /* miss: 30 queried, 0 hit */
    int32_t b = run_prompt(kv, p, 17); /* 16 of 17 */
    int32_t c = run_prompt(kv, p, 12); /* 8 of 12 */
    int32_t d = run_prompt(kv, p, 3);  /* 0 of 3 */
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, a), 0);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, b), 16);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, c), 8);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, d), 0);
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.prefix_queries_tokens, 30 + 17 + 12 + 3);
    assert_int_equal(s.prefix_hits_tokens, 16 + 8);
    /* a fork reports its source's count; probes count nothing */
    int32_t e = -1;
    assert_int_equal(ql_kv_seq_fork(kv, b, &e), 0);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, e), 16);
    assert_int_equal(cached_tokens(kv, p, 30), 28);
    s = stats(kv);
    assert_int_equal(s.prefix_queries_tokens, 62);
    assert_int_equal(s.n_seqs, 5);
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* ---- off ---- */

static void test_disabled(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(16, 4, 0, NULL);
    assert_int_equal(ql_kv_prefix_cache_enabled(kv), 0);
    int32_t p[12];
    fill(p, 12, 3);
    int32_t a = run_prompt(kv, p, 12);
    int32_t b = run_prompt(kv, p, 12);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, b), 0);
    assert_int_not_equal(table_at(kv, a, 0), table_at(kv, b, 0)); /* no dedup either */
    assert_int_equal(cached_tokens(kv, p, 12), 0);
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_cached, 0);
    assert_int_equal(s.n_blocks_free, 16);
    assert_int_equal(s.prefix_queries_tokens, 0);
    assert_int_equal(s.prefix_hits_tokens, 0);
    assert_accounting(kv);

    /* on at run time: caches from then on */
    ql_kv_set_prefix_cache(kv, 1);
    a = run_prompt(kv, p, 12);
    assert_int_equal(cached_tokens(kv, p, 12), 8);
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(stats(kv).n_blocks_cached, 3);
    /* off at run time: cached blocks become free, in-use ones stay with their owners */
    b = run_prompt(kv, p, 12);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, b), 8);
    ql_kv_set_prefix_cache(kv, 0);
    s = stats(kv);
    assert_int_equal(s.n_blocks_cached, 0);
    assert_int_equal(s.n_blocks_used, 3);
    assert_int_equal(s.n_blocks_free, 13);
    assert_int_equal(cached_tokens(kv, p, 12), 0);
    assert_accounting(kv);
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    assert_int_equal(stats(kv).n_blocks_free, 16);
    /* on again: a sequence open across the toggle registers its blocks at its next step */
    ql_kv_set_prefix_cache(kv, 1);
    a = run_prompt(kv, p, 12);
    ql_kv_set_prefix_cache(kv, 0);
    ql_kv_set_prefix_cache(kv, 1);
    assert_int_equal(cached_tokens(kv, p, 12), 0);
    ql_kv_copy_t c;
    int32_t t = 1;
    assert_int_equal(ql_kv_seq_append(kv, a, &t, 1, &c), 0);
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 13), 0);
    assert_int_equal(cached_tokens(kv, p, 12), 8);
    assert_accounting(kv);
    ql_kv_free(kv);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_index_multimap),
        cmocka_unit_test(test_index_random),
        cmocka_unit_test(test_hits_at_block_granularity),
        cmocka_unit_test(test_exact_multiple_and_dedup),
        cmocka_unit_test(test_forced_collision),
        cmocka_unit_test(test_parent_generation),
        cmocka_unit_test(test_lru_reclamation_order),
        cmocka_unit_test(test_stats_and_cached_prompt_tokens),
        cmocka_unit_test(test_disabled),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
