/*
 * tests/unit/scheduler/test-kv-cache.c — the paged-KV block manager (scheduler/kv-cache.h):
 * parameter checks, allocation accounting, exhaustion (the documented status, nothing changed),
 * reference counts and copy-on-write, truncation/rollback, and a long randomized run against a
 * model of the expected state with a fake backend that stores, for every KV slot, a digest of
 * the prefix that produced it (so a missing copy, a write into a shared block or a wrong
 * prefix-cache hit shows up as a wrong digest).
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

/* ---- helpers ---- */

static ql_kv_t *new_kv(int32_t n_blocks, int32_t bs, int32_t n_seq, int32_t n_tokens_max,
                       int prefix, ql_prefix_hash_fn hash) {
    ql_kv_params_t p = ql_kv_params_default();
    p.n_blocks = n_blocks;
    p.block_size = bs;
    p.n_seq_max = n_seq;
    p.n_tokens_max = n_tokens_max;
    p.prefix_cache = prefix;
    p.hash = hash;
    ql_kv_t *kv = NULL;
    assert_int_equal(ql_kv_init(&p, &kv), 0);
    assert_non_null(kv);
    return kv;
}

static ql_kv_stats_t stats(const ql_kv_t *kv) {
    ql_kv_stats_t s;
    ql_kv_get_stats(kv, &s);
    return s;
}

/* free + used + cached = total, and the manager's own deep check */
static void assert_accounting(const ql_kv_t *kv) {
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_free + s.n_blocks_used + s.n_blocks_cached, s.n_blocks);
    assert_int_equal(ql_kv_n_blocks_available(kv), s.n_blocks_free + s.n_blocks_cached);
    assert_int_equal(ql_kv_check(kv), 0);
}

static int32_t open_empty(ql_kv_t *kv) {
    int32_t seq = -1;
    assert_int_equal(ql_kv_seq_open(kv, NULL, 0, &seq), 0);
    return seq;
}

/* appends tokens first, first+1, ... and expects no copy */
static void append_seq(ql_kv_t *kv, int32_t seq, int32_t first, int32_t n) {
    int32_t t[256];
    assert_true(n <= 256);
    for (int32_t i = 0; i < n; i++) t[i] = first + i;
    ql_kv_copy_t c;
    assert_int_equal(ql_kv_seq_append(kv, seq, t, n, &c), 0);
    assert_int_equal(c.src, -1);
    assert_int_equal(c.dst, -1);
}

static int32_t table_at(const ql_kv_t *kv, int32_t seq, int32_t i) {
    int32_t nb = 0;
    const int32_t *t = ql_kv_seq_block_table(kv, seq, &nb);
    assert_non_null(t);
    assert_true(i < nb);
    return t[i];
}

/* ---- parameters ---- */

static void test_init_params(void **state) {
    (void)state;
    ql_kv_t *kv = (ql_kv_t *)1;
    ql_kv_params_t p = ql_kv_params_default();
    assert_int_equal(p.block_size, 16);
    assert_int_equal(p.prefix_cache, 1);
    assert_int_equal(ql_kv_init(&p, &kv), QL_EINVAL); /* n_blocks = 0 */
    assert_null(kv);
    p.n_blocks = 8;
    assert_int_equal(ql_kv_init(NULL, &kv), QL_EINVAL);
    assert_int_equal(ql_kv_init(&p, NULL), QL_EINVAL);
    p.block_size = 0;
    assert_int_equal(ql_kv_init(&p, &kv), QL_EINVAL);
    p.block_size = 16;
    p.n_seq_max = 0;
    assert_int_equal(ql_kv_init(&p, &kv), QL_EINVAL);
    p.n_seq_max = 4;
    p.n_tokens_max = -1;
    assert_int_equal(ql_kv_init(&p, &kv), QL_EINVAL);
    p.n_tokens_max = 100;
    p.prefix_cache = 2;
    assert_int_equal(ql_kv_init(&p, &kv), QL_EINVAL);
    p.prefix_cache = 1;
    assert_int_equal(ql_kv_init(&p, &kv), 0);
    assert_int_equal(ql_kv_block_size(kv), 16);
    assert_int_equal(ql_kv_max_blocks_per_seq(kv), 7); /* ceil(100 / 16) */
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks, 8);
    assert_int_equal(s.n_blocks_free, 8);
    assert_int_equal(s.n_seqs, 0);
    assert_accounting(kv);
    ql_kv_free(kv);
    ql_kv_free(NULL);
}

static void test_bad_ids(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(8, 4, 2, 32, 1, NULL);
    ql_kv_copy_t c;
    int32_t t = 1, seq, nb = 5;
    assert_int_equal(ql_kv_seq_append(kv, 0, &t, 1, &c), QL_EINVAL); /* not open */
    assert_int_equal(c.src, -1);
    assert_int_equal(ql_kv_seq_append(kv, -1, &t, 1, &c), QL_EINVAL);
    assert_int_equal(ql_kv_seq_close(kv, 0), QL_EINVAL);
    assert_int_equal(ql_kv_seq_truncate(kv, 2, 0), QL_EINVAL);
    assert_int_equal(ql_kv_seq_n_tokens(kv, 0), QL_EINVAL);
    assert_int_equal(ql_kv_seq_n_cached_prompt(kv, 7), QL_EINVAL);
    assert_null(ql_kv_seq_block_table(kv, 0, &nb));
    assert_int_equal(nb, 0);
    assert_int_equal(ql_kv_block_ref(kv, 8), QL_EINVAL);
    assert_null(ql_kv_block_tokens(kv, -1));
    assert_int_equal(ql_kv_seq_open(kv, NULL, 3, &seq), QL_EINVAL);
    assert_int_equal(ql_kv_seq_open(kv, &t, -1, &seq), QL_EINVAL);
    seq = open_empty(kv);
    assert_int_equal(ql_kv_seq_append(kv, seq, NULL, 1, &c), QL_EINVAL);
    assert_int_equal(ql_kv_seq_append(kv, seq, &t, 1, NULL), QL_EINVAL);
    assert_int_equal(ql_kv_seq_append(kv, seq, &t, -1, &c), QL_EINVAL);
    assert_int_equal(ql_kv_seq_append(kv, seq, NULL, 0, &c), 0); /* no-op */
    assert_int_equal(ql_kv_seq_truncate(kv, seq, 1), QL_EINVAL); /* longer than it is */
    assert_int_equal(ql_kv_seq_set_computed(kv, seq, 1), QL_EINVAL);
    assert_int_equal(ql_kv_seq_close(kv, seq), 0);
    assert_int_equal(ql_kv_seq_close(kv, seq), QL_EINVAL); /* twice */
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* ---- allocation ---- */

static void test_append_allocates_at_block_boundaries(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(10, 4, 4, 64, 0, NULL);
    int32_t seq = open_empty(kv), nb;
    assert_int_equal(ql_kv_seq_blocks_needed(kv, seq, 1), 1);
    append_seq(kv, seq, 100, 1);
    assert_int_equal(stats(kv).n_blocks_used, 1);
    assert_int_equal(ql_kv_seq_blocks_needed(kv, seq, 3), 0);
    append_seq(kv, seq, 101, 3); /* fills block 0 */
    assert_int_equal(stats(kv).n_blocks_used, 1);
    assert_int_equal(ql_kv_seq_blocks_needed(kv, seq, 5), 2);
    append_seq(kv, seq, 104, 5); /* 9 tokens: 3 blocks */
    assert_int_equal(ql_kv_seq_n_tokens(kv, seq), 9);
    assert_int_equal(ql_kv_seq_n_computed(kv, seq), 0);
    const int32_t *t = ql_kv_seq_block_table(kv, seq, &nb);
    assert_int_equal(nb, 3);
    for (int32_t p = 0; p < 9; p++)
        assert_int_equal(ql_kv_block_tokens(kv, t[p / 4])[p % 4], 100 + p);
    for (int32_t i = 0; i < 3; i++) {
        assert_int_equal(ql_kv_block_ref(kv, t[i]), 1);
        for (int32_t j = 0; j < i; j++) assert_int_not_equal(t[i], t[j]);
    }
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_used, 3);
    assert_int_equal(s.n_blocks_free, 7);
    assert_int_equal(s.n_blocks_cached, 0);
    assert_int_equal(s.n_seqs, 1);
    assert_accounting(kv);
    assert_int_equal(ql_kv_seq_close(kv, seq), 0);
    s = stats(kv);
    assert_int_equal(s.n_blocks_free, 10);
    assert_int_equal(s.n_seqs, 0);
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* Running out is a status and changes nothing. */
static void test_exhaustion(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(3, 4, 2, 40, 0, NULL);
    int32_t a = open_empty(kv), b = open_empty(kv), c = -7;
    assert_int_equal(ql_kv_seq_open(kv, NULL, 0, &c), QL_ENOSPC); /* n_seq_max = 2 */
    assert_int_equal(c, -7);
    append_seq(kv, a, 0, 10); /* 3 blocks: the pool */
    assert_int_equal(ql_kv_n_blocks_available(kv), 0);

    int32_t nb_before;
    int32_t table_before[16];
    memcpy(table_before, ql_kv_seq_block_table(kv, a, &nb_before), sizeof(int32_t) * 3);
    ql_kv_stats_t before = stats(kv);

    int32_t t[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    ql_kv_copy_t cp;
    assert_int_equal(ql_kv_seq_blocks_needed(kv, a, 2), 0); /* block 2 has 2 free slots */
    assert_int_equal(ql_kv_seq_can_append(kv, a, 2), 1);
    assert_int_equal(ql_kv_seq_blocks_needed(kv, a, 3), 1);
    assert_int_equal(ql_kv_seq_can_append(kv, a, 3), 0);
    assert_int_equal(ql_kv_seq_append(kv, a, t, 3, &cp), QL_KV_NO_BLOCKS);
    assert_int_equal(cp.src, -1);
    assert_int_equal(ql_kv_seq_append(kv, b, t, 1, &cp), QL_KV_NO_BLOCKS);
    /* nothing changed */
    int32_t nb_after;
    const int32_t *ta = ql_kv_seq_block_table(kv, a, &nb_after);
    assert_int_equal(nb_after, nb_before);
    assert_memory_equal(ta, table_before, sizeof(int32_t) * 3);
    assert_int_equal(ql_kv_seq_n_tokens(kv, a), 10);
    assert_int_equal(ql_kv_seq_n_tokens(kv, b), 0);
    ql_kv_stats_t after = stats(kv);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_accounting(kv);

    /* past n_tokens_max is a range error, also without blocks */
    assert_int_equal(ql_kv_seq_blocks_needed(kv, b, 41), QL_ERANGE);
    assert_int_equal(ql_kv_seq_append(kv, b, t, 8, &cp), QL_KV_NO_BLOCKS);
    ql_kv_seq_truncate(kv, a, 0);
    int32_t big[41] = {0};
    assert_int_equal(ql_kv_seq_append(kv, b, big, 41, &cp), QL_ERANGE);
    assert_int_equal(ql_kv_seq_n_tokens(kv, b), 0);
    assert_int_equal(ql_kv_seq_can_append(kv, b, 41), 0);
    assert_accounting(kv);

    /* exhaustion on the copy-on-write block: a shared partial block and an empty pool */
    append_seq(kv, a, 0, 6); /* 2 blocks, the second half full */
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 6), 0);
    int32_t f = -1;
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    assert_int_equal(ql_kv_seq_fork(kv, a, &f), 0);
    int32_t x = 0;
    ql_kv_copy_t c2;
    assert_int_equal(ql_kv_seq_append(kv, f, t, 2, &c2), 0); /* takes the last free block */
    assert_int_equal(c2.src, table_at(kv, a, 1));
    assert_int_equal(ql_kv_n_blocks_available(kv), 0);
    assert_int_equal(ql_kv_seq_set_computed(kv, f, 8), 0);
    int32_t g = -1;
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(ql_kv_seq_fork(kv, f, &g), 0); /* f and g share a full block 0 and block 1 */
    assert_int_equal(ql_kv_seq_truncate(kv, g, 7), 0); /* now g writes into a shared block */
    assert_int_equal(ql_kv_n_blocks_available(kv), 1);
    append_seq(kv, f, 50, 1); /* f takes the last block (no copy: block 1 of f is full) */
    before = stats(kv);
    assert_int_equal(ql_kv_seq_blocks_needed(kv, g, 1), 1); /* the copy */
    assert_int_equal(ql_kv_seq_append(kv, g, &x, 1, &cp), QL_KV_NO_BLOCKS);
    assert_int_equal(cp.src, -1);
    assert_int_equal(cp.dst, -1);
    after = stats(kv);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_int_equal(ql_kv_seq_n_tokens(kv, g), 7);
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* ---- sharing ---- */

static void test_fork_and_copy_on_write(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(16, 4, 4, 64, 0, NULL);
    int32_t a = open_empty(kv), b = -1;
    append_seq(kv, a, 10, 6); /* block 0 full, block 1 half */
    assert_int_equal(ql_kv_seq_fork(kv, a, &b), QL_ESTATE); /* KV not computed yet */
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 6), 0);
    assert_int_equal(ql_kv_seq_fork(kv, a, &b), 0);
    assert_int_not_equal(a, b);
    int32_t a0 = table_at(kv, a, 0), a1 = table_at(kv, a, 1);
    assert_int_equal(table_at(kv, b, 0), a0);
    assert_int_equal(table_at(kv, b, 1), a1);
    assert_int_equal(ql_kv_block_ref(kv, a0), 2);
    assert_int_equal(ql_kv_block_ref(kv, a1), 2);
    assert_int_equal(ql_kv_seq_n_tokens(kv, b), 6);
    assert_int_equal(ql_kv_seq_n_computed(kv, b), 6);
    assert_int_equal(stats(kv).n_blocks_used, 2);
    assert_accounting(kv);

    /* b writes into the shared partial block: exactly one copy */
    assert_int_equal(ql_kv_seq_blocks_needed(kv, b, 1), 1);
    int32_t t = 99;
    ql_kv_copy_t c;
    assert_int_equal(ql_kv_seq_append(kv, b, &t, 1, &c), 0);
    assert_int_equal(c.src, a1);
    assert_true(c.dst >= 0 && c.dst != a1 && c.dst != a0);
    assert_int_equal(table_at(kv, b, 1), c.dst);
    assert_int_equal(table_at(kv, a, 1), a1);
    assert_int_equal(ql_kv_block_ref(kv, a1), 1);
    assert_int_equal(ql_kv_block_ref(kv, c.dst), 1);
    assert_int_equal(ql_kv_block_ref(kv, a0), 2); /* the full block stays shared */
    const int32_t *bt = ql_kv_block_tokens(kv, c.dst);
    assert_int_equal(bt[0], 14);
    assert_int_equal(bt[1], 15);
    assert_int_equal(bt[2], 99);
    assert_int_equal(stats(kv).n_copies, 1);

    /* a is now the only owner of a1: writes in place */
    assert_int_equal(ql_kv_seq_blocks_needed(kv, a, 2), 0);
    append_seq(kv, a, 16, 2);
    assert_int_equal(table_at(kv, a, 1), a1);
    assert_int_equal(ql_kv_block_tokens(kv, a1)[2], 16);
    assert_int_equal(ql_kv_block_tokens(kv, c.dst)[2], 99); /* b's copy untouched */
    assert_int_equal(stats(kv).n_copies, 1);
    assert_accounting(kv);

    /* fork at a block boundary: the next write opens a new block, no copy */
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 8), 0);
    int32_t d = -1;
    assert_int_equal(ql_kv_seq_fork(kv, a, &d), 0);
    assert_int_equal(ql_kv_seq_blocks_needed(kv, d, 1), 1);
    append_seq(kv, d, 70, 1);
    append_seq(kv, a, 80, 1);
    assert_int_not_equal(table_at(kv, d, 2), table_at(kv, a, 2));
    assert_int_equal(ql_kv_block_ref(kv, a1), 2);
    assert_int_equal(ql_kv_block_ref(kv, a0), 3);
    assert_int_equal(stats(kv).n_copies, 1);
    assert_accounting(kv);

    /* closing releases one reference each */
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(ql_kv_block_ref(kv, a0), 2);
    assert_int_equal(ql_kv_block_ref(kv, a1), 1);
    assert_int_equal(ql_kv_seq_close(kv, d), 0);
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    assert_int_equal(stats(kv).n_blocks_free, 16);
    assert_accounting(kv);
    ql_kv_free(kv);
}

static void test_truncate_and_rollback(void **state) {
    (void)state;
    ql_kv_t *kv = new_kv(16, 4, 4, 64, 0, NULL);
    int32_t a = open_empty(kv), nb;
    append_seq(kv, a, 0, 10);
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 8), 0);
    /* speculative step: 3 drafts appended and verified, 1 accepted */
    append_seq(kv, a, 10, 3); /* 13 tokens: 4 blocks */
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 13), 0);
    assert_int_equal(stats(kv).n_blocks_used, 4);
    assert_int_equal(ql_kv_seq_truncate(kv, a, 11), 0);
    assert_int_equal(ql_kv_seq_n_tokens(kv, a), 11);
    assert_int_equal(ql_kv_seq_n_computed(kv, a), 11);
    ql_kv_seq_block_table(kv, a, &nb);
    assert_int_equal(nb, 3);
    assert_int_equal(stats(kv).n_blocks_used, 3);
    assert_accounting(kv);
    /* the freed table entry is unused again, and a later append reuses the slot */
    append_seq(kv, a, 111, 2);
    assert_int_equal(ql_kv_block_tokens(kv, table_at(kv, a, 2))[3], 111);
    assert_int_equal(ql_kv_block_tokens(kv, table_at(kv, a, 3))[0], 112);
    assert_int_equal(ql_kv_seq_n_computed(kv, a), 11);
    /* computed never goes backwards through set_computed */
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 10), QL_EINVAL);
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 14), QL_EINVAL);
    assert_int_equal(ql_kv_seq_set_computed(kv, a, 13), 0);

    /* roll back into a shared block, then write: one copy, the sibling keeps its tokens */
    int32_t b = -1;
    assert_int_equal(ql_kv_seq_fork(kv, a, &b), 0);
    int32_t shared = table_at(kv, a, 2);
    assert_int_equal(ql_kv_seq_truncate(kv, b, 9), 0);
    assert_int_equal(ql_kv_block_ref(kv, table_at(kv, a, 3)), 1);
    assert_int_equal(ql_kv_block_ref(kv, shared), 2);
    int32_t t = -5;
    ql_kv_copy_t c;
    assert_int_equal(ql_kv_seq_append(kv, b, &t, 1, &c), 0);
    assert_int_equal(c.src, shared);
    assert_int_equal(ql_kv_block_tokens(kv, c.dst)[0], 8);
    assert_int_equal(ql_kv_block_tokens(kv, c.dst)[1], -5);
    assert_int_equal(ql_kv_block_tokens(kv, shared)[1], 9);
    assert_accounting(kv);

    /* truncate to zero keeps the sequence open and empty */
    assert_int_equal(ql_kv_seq_truncate(kv, a, 0), 0);
    assert_int_equal(ql_kv_seq_n_tokens(kv, a), 0);
    assert_non_null(ql_kv_seq_block_table(kv, a, &nb)); /* open: a valid, empty row */
    assert_int_equal(nb, 0);
    assert_int_equal(ql_kv_seq_close(kv, a), 0);
    assert_int_equal(ql_kv_seq_close(kv, b), 0);
    assert_int_equal(stats(kv).n_blocks_free, 16);
    assert_accounting(kv);
    ql_kv_free(kv);
}

/* ---- randomized run against a model ---- */

#define R_SEQ_MAX 6
#define R_TOKENS_MAX 40
#define R_BS 4
#define R_BLOCKS 24
#define R_BPS ((R_TOKENS_MAX + R_BS - 1) / R_BS)

typedef struct rmodel_s {
    int open[R_SEQ_MAX];
    int32_t toks[R_SEQ_MAX][R_TOKENS_MAX];
    int32_t n[R_SEQ_MAX], nc[R_SEQ_MAX];
    int32_t table[R_SEQ_MAX][R_BPS]; /* the tables as last verified */
    uint64_t fake[R_BLOCKS][R_BS];   /* the fake backend's KV: a digest per slot */
    uint64_t rng;
    int32_t n_ops_ok, n_no_blocks, n_copies, n_hits;
} rmodel_t;

static uint32_t rnd(rmodel_t *m, uint32_t n) {
    m->rng ^= m->rng << 13;
    m->rng ^= m->rng >> 7;
    m->rng ^= m->rng << 17;
    return (uint32_t)(m->rng % n);
}

/* the digest of tokens[0..p] inclusive: what the KV of position p depends on (FNV-1a, the
 * test's own; independent of the hash under test) */
static uint64_t digest(const int32_t *toks, int32_t p) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (int32_t i = 0; i <= p; i++) {
        h ^= (uint64_t)(uint32_t)toks[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static int32_t model_refs(const rmodel_t *m, int32_t block) {
    int32_t r = 0;
    for (int32_t q = 0; q < R_SEQ_MAX; q++) {
        if (!m->open[q]) continue;
        for (int32_t i = 0; i < (m->n[q] + R_BS - 1) / R_BS; i++) r += m->table[q][i] == block;
    }
    return r;
}

/* everything the model knows, compared with the manager */
static void model_check(const rmodel_t *m, const ql_kv_t *kv) {
    assert_accounting(kv);
    int32_t n_used = 0;
    for (int32_t b = 0; b < R_BLOCKS; b++) {
        int32_t r = model_refs(m, b);
        assert_int_equal(ql_kv_block_ref(kv, b), r);
        n_used += r > 0;
    }
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_used, n_used);
    assert_int_equal(s.n_blocks_free + s.n_blocks_cached, R_BLOCKS - n_used);
    if (!ql_kv_prefix_cache_enabled(kv)) assert_int_equal(s.n_blocks_cached, 0);
    int32_t n_open = 0;
    for (int32_t q = 0; q < R_SEQ_MAX; q++) {
        if (!m->open[q]) {
            assert_int_equal(ql_kv_seq_n_tokens(kv, q), QL_EINVAL);
            continue;
        }
        n_open++;
        int32_t nb;
        const int32_t *t = ql_kv_seq_block_table(kv, q, &nb);
        assert_int_equal(nb, (m->n[q] + R_BS - 1) / R_BS);
        assert_memory_equal(t, m->table[q], sizeof(int32_t) * (size_t)nb);
        assert_int_equal(ql_kv_seq_n_tokens(kv, q), m->n[q]);
        assert_int_equal(ql_kv_seq_n_computed(kv, q), m->nc[q]);
        for (int32_t p = 0; p < m->n[q]; p++) {
            assert_int_equal(ql_kv_block_tokens(kv, t[p / R_BS])[p % R_BS], m->toks[q][p]);
            if (p < m->nc[q]) assert_true(m->fake[t[p / R_BS]][p % R_BS] == digest(m->toks[q], p));
        }
    }
    assert_int_equal(s.n_seqs, n_open);
}

/* tokens from a tiny vocabulary so that prompts share prefixes by chance too */
static int32_t rand_token(rmodel_t *m) { return (int32_t)rnd(m, 3); }

/* @return the new sequence (its whole prompt stored in m->toks, *n_prompt long), or -1 */
static int32_t rop_open(rmodel_t *m, ql_kv_t *kv, int32_t *n_prompt) {
    int32_t prompt[R_TOKENS_MAX];
    int32_t n = 1 + (int32_t)rnd(m, R_TOKENS_MAX);
    /* half the prompts copy an open sequence's start to make prefix hits likely */
    int32_t src = (int32_t)rnd(m, R_SEQ_MAX), n_copy = 0;
    if (m->open[src] && rnd(m, 2)) n_copy = QL_MIN(n, m->nc[src]);
    for (int32_t i = 0; i < n; i++) prompt[i] = i < n_copy ? m->toks[src][i] : rand_token(m);

    ql_kv_probe_t pr;
    assert_int_equal(ql_kv_prefix_probe(kv, prompt, n, &pr), 0);
    int32_t avail = ql_kv_n_blocks_available(kv), seq = -1;
    int rc = ql_kv_seq_open(kv, prompt, n, &seq);
    if (rc == QL_ENOSPC) {
        int32_t n_open = 0;
        for (int32_t q = 0; q < R_SEQ_MAX; q++) n_open += m->open[q];
        assert_int_equal(n_open, R_SEQ_MAX);
        return -1;
    }
    assert_int_equal(rc, 0);
    assert_false(m->open[seq]);
    int32_t nc = ql_kv_seq_n_cached_prompt(kv, seq);
    assert_int_equal(nc, pr.n_tokens_cached);
    assert_int_equal(nc % R_BS, 0);
    assert_true(nc < n);
    if (!ql_kv_prefix_cache_enabled(kv)) assert_int_equal(nc, 0);
    assert_int_equal(ql_kv_n_blocks_available(kv), avail - pr.n_blocks_reclaimed);
    m->n_hits += nc > 0;
    m->open[seq] = 1;
    memcpy(m->toks[seq], prompt, sizeof(int32_t) * (size_t)n);
    m->n[seq] = m->nc[seq] = nc;
    int32_t nb;
    const int32_t *t = ql_kv_seq_block_table(kv, seq, &nb);
    memcpy(m->table[seq], t, sizeof(int32_t) * (size_t)nb);
    /* the rest of the prompt is appended by later rop_append calls, in chunks (chunked
     * prefill); it waits in m->toks past m->n */
    *n_prompt = n;
    m->n_ops_ok++;
    return seq;
}

/* appends k tokens: random ones, or the rest of the prompt stored in m->toks */
static void rop_append(rmodel_t *m, ql_kv_t *kv, int32_t q, int32_t prompt_len) {
    int32_t n = m->n[q], k = 1 + (int32_t)rnd(m, 2 * R_BS);
    int32_t toks[3 * R_BS];
    for (int32_t i = 0; i < k; i++)
        toks[i] = n + i < prompt_len ? m->toks[q][n + i] : rand_token(m);
    int32_t nb_old = (n + R_BS - 1) / R_BS, nb_new = (n + k + R_BS - 1) / R_BS;
    int cow = n % R_BS != 0 && model_refs(m, m->table[q][n / R_BS]) > 1;
    int32_t need = nb_new - nb_old + cow;
    int32_t avail = ql_kv_n_blocks_available(kv);
    ql_kv_stats_t before = stats(kv);

    if (n + k > R_TOKENS_MAX) {
        assert_int_equal(ql_kv_seq_blocks_needed(kv, q, k), QL_ERANGE);
        ql_kv_copy_t c;
        assert_int_equal(ql_kv_seq_append(kv, q, toks, k, &c), QL_ERANGE);
        return;
    }
    assert_int_equal(ql_kv_seq_blocks_needed(kv, q, k), need);
    assert_int_equal(ql_kv_seq_can_append(kv, q, k), need <= avail);
    ql_kv_copy_t c;
    int rc = ql_kv_seq_append(kv, q, toks, k, &c);
    if (need > avail) {
        assert_int_equal(rc, QL_KV_NO_BLOCKS);
        assert_int_equal(c.src, -1);
        ql_kv_stats_t after = stats(kv);
        assert_memory_equal(&before, &after, sizeof(before)); /* and model_check: tables too */
        m->n_no_blocks++;
        return;
    }
    assert_int_equal(rc, 0);
    int32_t nb;
    const int32_t *t = ql_kv_seq_block_table(kv, q, &nb);
    assert_int_equal(nb, nb_new);
    /* kept blocks unchanged, except the copied one */
    for (int32_t i = 0; i < nb_old; i++) {
        if (cow && i == n / R_BS) continue;
        assert_int_equal(t[i], m->table[q][i]);
    }
    /* every new block (and the copy's destination) was unowned before */
    for (int32_t i = cow ? n / R_BS : nb_old; i < nb_new; i++) {
        assert_int_equal(model_refs(m, t[i]), 0);
        for (int32_t j = 0; j < i; j++) assert_int_not_equal(t[i], t[j]);
    }
    if (cow) {
        assert_int_equal(c.src, m->table[q][n / R_BS]);
        assert_int_equal(c.dst, t[n / R_BS]);
        memcpy(m->fake[c.dst], m->fake[c.src], sizeof(m->fake[0])); /* the fake backend copies */
        m->n_copies++;
    } else {
        assert_int_equal(c.src, -1);
        assert_int_equal(c.dst, -1);
    }
    assert_int_equal(ql_kv_n_blocks_available(kv), avail - need);
    memcpy(m->table[q], t, sizeof(int32_t) * (size_t)nb);
    memcpy(m->toks[q] + n, toks, sizeof(int32_t) * (size_t)k);
    m->n[q] = n + k;
    m->n_ops_ok++;
}

/* the fake forward pass over [nc, upto), then set_computed */
static void rop_compute(rmodel_t *m, ql_kv_t *kv, int32_t q) {
    int32_t upto = m->nc[q] + (int32_t)rnd(m, (uint32_t)(m->n[q] - m->nc[q] + 1));
    for (int32_t p = m->nc[q]; p < upto; p++) {
        int32_t b = m->table[q][p / R_BS];
        assert_int_equal(ql_kv_block_ref(kv, b), 1); /* no slot is computed by two owners */
        m->fake[b][p % R_BS] = digest(m->toks[q], p);
    }
    int32_t old_nb = (m->n[q] + R_BS - 1) / R_BS;
    assert_int_equal(ql_kv_seq_set_computed(kv, q, upto), 0);
    m->nc[q] = upto;
    int32_t nb;
    const int32_t *t = ql_kv_seq_block_table(kv, q, &nb);
    assert_int_equal(nb, old_nb);
    /* only full computed blocks may have been swapped for equal cached ones */
    for (int32_t i = upto / R_BS; i < nb; i++) assert_int_equal(t[i], m->table[q][i]);
    memcpy(m->table[q], t, sizeof(int32_t) * (size_t)nb);
    m->n_ops_ok++;
}

static void random_run(uint64_t seed, int prefix, ql_prefix_hash_fn hash, int n_ops, int toggle) {
    ql_kv_t *kv = new_kv(R_BLOCKS, R_BS, R_SEQ_MAX, R_TOKENS_MAX, prefix, hash);
    rmodel_t *m = calloc(1, sizeof(*m));
    assert_non_null(m);
    m->rng = seed;
    int32_t prompt_len[R_SEQ_MAX] = {0};
    for (int op = 0; op < n_ops; op++) {
        int32_t q = (int32_t)rnd(m, R_SEQ_MAX);
        uint32_t what = rnd(m, 100);
        if (!m->open[q] || what < 8) {
            int32_t n_prompt = 0, seq = rop_open(m, kv, &n_prompt);
            if (seq >= 0) prompt_len[seq] = n_prompt;
        } else if (what < 50) {
            rop_append(m, kv, q, prompt_len[q]);
        } else if (what < 75) {
            rop_compute(m, kv, q);
        } else if (what < 83) {
            int32_t n = (int32_t)rnd(m, (uint32_t)m->n[q] + 1);
            assert_int_equal(ql_kv_seq_truncate(kv, q, n), 0);
            m->n[q] = n;
            m->nc[q] = QL_MIN(m->nc[q], n);
            for (int32_t i = (n + R_BS - 1) / R_BS; i < R_BPS; i++) m->table[q][i] = -1;
            m->n_ops_ok++;
        } else if (what < 91) {
            int32_t d = -1;
            int rc = ql_kv_seq_fork(kv, q, &d);
            if (m->nc[q] != m->n[q]) {
                assert_int_equal(rc, QL_ESTATE);
            } else if (rc == QL_ENOSPC) {
                int32_t n_open = 0;
                for (int32_t i = 0; i < R_SEQ_MAX; i++) n_open += m->open[i];
                assert_int_equal(n_open, R_SEQ_MAX);
            } else {
                assert_int_equal(rc, 0);
                assert_false(m->open[d]);
                m->open[d] = 1;
                memcpy(m->toks[d], m->toks[q], sizeof(m->toks[0]));
                memcpy(m->table[d], m->table[q], sizeof(m->table[0]));
                m->n[d] = m->n[q];
                m->nc[d] = m->nc[q];
                prompt_len[d] = prompt_len[q];
                m->n_ops_ok++;
            }
        } else if (what < 99 || !toggle) {
            assert_int_equal(ql_kv_seq_close(kv, q), 0);
            m->open[q] = 0;
            prompt_len[q] = 0;
            m->n_ops_ok++;
        } else {
            ql_kv_set_prefix_cache(kv, !ql_kv_prefix_cache_enabled(kv));
        }
        model_check(m, kv);
    }
    /* the run must have exercised what it claims to */
    assert_true(m->n_ops_ok > n_ops / 2);
    assert_true(m->n_no_blocks > 0);
    assert_true(m->n_copies > 0);
    if (prefix) assert_true(m->n_hits > 0);
    assert_int_equal((int32_t)stats(kv).n_copies, m->n_copies);
    for (int32_t q = 0; q < R_SEQ_MAX; q++)
        if (m->open[q]) assert_int_equal(ql_kv_seq_close(kv, q), 0);
    ql_kv_stats_t s = stats(kv);
    assert_int_equal(s.n_blocks_used, 0);
    assert_int_equal(s.n_blocks_free + s.n_blocks_cached, R_BLOCKS);
    for (int32_t b = 0; b < R_BLOCKS; b++) assert_int_equal(ql_kv_block_ref(kv, b), 0);
    assert_accounting(kv);
    free(m);
    ql_kv_free(kv);
}

/* a hash with 2 bits: nearly every lookup meets a colliding candidate */
static uint64_t weak_hash(uint64_t parent, const int32_t *tokens, int32_t n) {
    return ql_prefix_hash(parent, tokens, n) & 3u;
}

static void test_random_no_cache(void **state) {
    (void)state;
    random_run(0x1234567u, 0, NULL, 6000, 0);
}

static void test_random_prefix_cache(void **state) {
    (void)state;
    random_run(0x89abcdefu, 1, NULL, 6000, 0);
    random_run(0x2468aceu, 1, NULL, 6000, 1); /* toggled on and off now and then */
}

static void test_random_prefix_cache_collisions(void **state) {
    (void)state;
    random_run(0x13579bdu, 1, weak_hash, 6000, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_params),
        cmocka_unit_test(test_bad_ids),
        cmocka_unit_test(test_append_allocates_at_block_boundaries),
        cmocka_unit_test(test_exhaustion),
        cmocka_unit_test(test_fork_and_copy_on_write),
        cmocka_unit_test(test_truncate_and_rollback),
        cmocka_unit_test(test_random_no_cache),
        cmocka_unit_test(test_random_prefix_cache),
        cmocka_unit_test(test_random_prefix_cache_collisions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
