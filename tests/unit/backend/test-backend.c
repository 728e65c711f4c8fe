/*
 * tests/unit/backend/test-backend.c — the backend interface without a model: the registry
 * (add, find, auto choice by availability, errors), the wrappers' argument checks and
 * optional entries, every clause of the batch contract (ql_batch_validate), and the KV
 * layout helpers, through a fake backend that counts its calls.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "backend/backend.h"

/* ---- a fake backend ---- */

typedef struct fake_s {
    ql_backend_t base;
    int n_forward, n_copy, n_free;
} fake_t;

static int fake_forward(ql_backend_t *be, const ql_batch_t *b, float *logits) {
    (void)logits;
    fake_t *f = (fake_t *)be;
    int rc = ql_batch_validate(b, &be->info, NULL, 0);
    if (rc) return rc;
    f->n_forward++;
    return 0;
}
static int fake_copy(ql_backend_t *be, const int32_t *src, const int32_t *dst, int32_t n) {
    (void)src, (void)dst, (void)n;
    ((fake_t *)be)->n_copy++;
    return 0;
}
static void fake_free(ql_backend_t *be) {
    ((fake_t *)be)->n_free++;
}
static const ql_backend_ops_t fake_ops = {
    .forward = fake_forward, .copy_blocks = fake_copy, .free = fake_free};

static fake_t g_fake; /* what fake_init hands out */
static int init_calls;

static void fake_reset(void) {
    memset(&g_fake, 0, sizeof(g_fake));
    g_fake.base.ops = &fake_ops;
    g_fake.base.info = (ql_backend_info_t){
        .name = "fake",
        .n_vocab = 100,
        .n_ctx_max = 64,
        .n_batch_tokens_max = 8,
        .n_seqs_max = 2,
        .n_logits_max = 4,
        .kv = {.n_layer = 2, .n_kv_head = 2, .head_dim = 8, .block_size = 4, .n_blocks = 10}};
}

static int fake_init(const ql_gguf_t *g, const ql_backend_params_t *p, ql_backend_t **out,
                     char *err, size_t n) {
    (void)g, (void)p, (void)err, (void)n;
    init_calls++;
    fake_reset();
    *out = &g_fake.base;
    return 0;
}
static int never(void) {
    return 0;
}

/* ---- registry ---- */

static void test_registry(void **state) {
    (void)state;
    const ql_backend_desc_t a = {.name = "gpu", .available = never, .init = fake_init};
    const ql_backend_desc_t b = {.name = "fake", .available = NULL, .init = fake_init};
    const ql_backend_desc_t dup = {.name = "fake", .init = fake_init};
    const ql_backend_desc_t noinit = {.name = "x"};
    ql_backend_reg_t r = {0};
    assert_int_equal(ql_backend_reg_add(&r, &a), 0);
    assert_int_equal(ql_backend_reg_add(&r, &b), 0);
    assert_int_equal(ql_backend_reg_add(&r, &dup), QL_EINVAL);
    assert_int_equal(ql_backend_reg_add(&r, &noinit), QL_EINVAL);
    assert_int_equal(ql_backend_reg_add(&r, NULL), QL_EINVAL);
    assert_ptr_equal(ql_backend_reg_find(&r, "fake"), &b);
    assert_null(ql_backend_reg_find(&r, "nope"));

    /* a registry is a value the program owns: it fills up */
    ql_backend_reg_t full = {0};
    ql_backend_desc_t many[QL_BACKEND_REG_MAX + 1];
    char names[QL_BACKEND_REG_MAX + 1][8];
    for (int i = 0; i <= QL_BACKEND_REG_MAX; i++) {
        snprintf(names[i], sizeof(names[i]), "b%d", i);
        many[i] = (ql_backend_desc_t){.name = names[i], .init = fake_init};
        assert_int_equal(ql_backend_reg_add(&full, &many[i]),
                         i < QL_BACKEND_REG_MAX ? 0 : QL_ENOSPC);
    }

    const ql_gguf_t *g = (const ql_gguf_t *)&r; /* the fake never reads it */
    ql_backend_params_t p = {0};
    ql_backend_t *be = NULL;
    char err[128];
    init_calls = 0;
    /* auto: the first available one, skipping "gpu" */
    assert_int_equal(ql_backend_init(&r, NULL, g, &p, &be, err, sizeof(err)), 0);
    assert_ptr_equal(be, &g_fake.base);
    assert_int_equal(init_calls, 1);
    assert_string_equal(ql_backend_info(be)->name, "fake");
    ql_backend_free(be);
    assert_int_equal(g_fake.n_free, 1);
    assert_int_equal(ql_backend_init(&r, "auto", g, &p, &be, err, sizeof(err)), 0);
    /* by name: unknown, or known but unavailable */
    assert_int_equal(ql_backend_init(&r, "cuda", g, &p, &be, err, sizeof(err)), QL_ENOENT);
    assert_non_null(strstr(err, "cuda"));
    assert_null(be);
    assert_int_equal(ql_backend_init(&r, "gpu", g, &p, &be, err, sizeof(err)), QL_ENOENT);
    assert_non_null(strstr(err, "cannot run"));
    ql_backend_reg_t only_gpu = {0};
    assert_int_equal(ql_backend_reg_add(&only_gpu, &a), 0);
    assert_int_equal(ql_backend_init(&only_gpu, NULL, g, &p, &be, err, sizeof(err)), QL_ENOENT);
    assert_int_equal(init_calls, 2);
    assert_int_equal(ql_backend_init(NULL, NULL, g, &p, &be, err, sizeof(err)), QL_EINVAL);
    ql_backend_free(NULL);
}

/* ---- wrappers ---- */

static void test_wrappers(void **state) {
    (void)state;
    fake_reset();
    ql_backend_t *be = &g_fake.base;
    const int32_t src[] = {1}, dst[] = {2};
    assert_int_equal(ql_backend_copy_blocks(be, src, dst, 1), 0);
    assert_int_equal(ql_backend_copy_blocks(be, src, dst, 0), 0); /* nothing to do: no call */
    assert_int_equal(ql_backend_copy_blocks(be, NULL, dst, 1), QL_EINVAL);
    assert_int_equal(ql_backend_copy_blocks(be, src, dst, -1), QL_EINVAL);
    assert_int_equal(g_fake.n_copy, 1);
    ql_batch_t b = {0};
    ql_backend_sampling_t smp = {0};
    int32_t tok[1];
    assert_int_equal(ql_backend_forward_sample(be, &b, &smp, tok),
                     QL_EUNSUPPORTED); /* optional, NULL */
    assert_int_equal(ql_backend_forward(NULL, &b, NULL), QL_EINVAL);
    assert_null(ql_backend_info(NULL));
}

/* ---- the batch contract ---- */

static void test_batch_contract(void **state) {
    (void)state;
    fake_reset();
    const ql_backend_info_t *info = &g_fake.base.info;
    /* two sequences: a 3-token prefill chunk at 4..6 and a decode at 9 */
    int32_t tok[] = {1, 2, 3, 4}, pos[] = {4, 5, 6, 9}, seq[] = {0, 0, 0, 1};
    int32_t t0[] = {3, 7}, t1[] = {0, 5, 9}, nb[] = {2, 3}, len[] = {7, 10}, rows[] = {2, 3};
    const int32_t *tabs[] = {t0, t1};
    ql_batch_t b = {.n_tokens = 4,
                    .tokens = tok,
                    .pos = pos,
                    .seq_of_token = seq,
                    .n_seqs = 2,
                    .block_tables = tabs,
                    .n_blocks = nb,
                    .seq_len = len,
                    .logits_rows = rows,
                    .n_logits = 2};
    char err[160];
    float logits[2 * 100];
    assert_int_equal(ql_batch_validate(&b, info, err, sizeof(err)), 0);
    assert_string_equal(err, "");
    assert_int_equal(ql_backend_forward(&g_fake.base, &b, logits), 0);
    assert_int_equal(g_fake.n_forward, 1);
    assert_int_equal(ql_backend_forward(&g_fake.base, &b, NULL), QL_EINVAL); /* logits wanted */

#define EXPECT_BAD(mutate, restore, needle)                                                        \
    do {                                                                                           \
        mutate;                                                                                    \
        assert_int_equal(ql_batch_validate(&b, info, err, sizeof(err)), QL_EINVAL);                \
        if (!strstr(err, needle)) fail_msg("expected '%s' in '%s'", needle, err);                  \
        restore;                                                                                   \
        assert_int_equal(ql_batch_validate(&b, info, err, sizeof(err)), 0);                        \
    } while (0)

    EXPECT_BAD(b.n_tokens = 0, b.n_tokens = 4, "n_tokens");
    EXPECT_BAD(b.n_tokens = 9, b.n_tokens = 4, "n_tokens");
    EXPECT_BAD(b.n_seqs = 3, b.n_seqs = 2, "n_seqs");
    EXPECT_BAD(b.n_logits = 5, b.n_logits = 2, "n_logits");
    EXPECT_BAD(b.pos = NULL, b.pos = pos, "NULL");
    EXPECT_BAD(seq[3] = 2, seq[3] = 1, "sequence 2");
    EXPECT_BAD(seq[3] = -1, seq[3] = 1, "sequence -1");
    EXPECT_BAD(pos[2] = 7, pos[2] = 6, "position 7");
    EXPECT_BAD(pos[0] = -1, pos[0] = 4, "position -1");
    EXPECT_BAD(tok[1] = 100, tok[1] = 2, "vocabulary");
    EXPECT_BAD(len[0] = 9, len[0] = 7, "needs more than"); /* 9 tokens in 2 blocks of 4 */
    EXPECT_BAD(len[1] = 65, len[1] = 10, "seq_len 65");    /* beyond n_ctx_max */
    EXPECT_BAD(t1[2] = 10, t1[2] = 9, "block 2 is 10");    /* outside the pool */
    EXPECT_BAD(t0[0] = -1, t0[0] = 3, "block 0 is -1");
    EXPECT_BAD(nb[0] = -1, nb[0] = 2, "block table");
    EXPECT_BAD(rows[1] = 4, rows[1] = 3, "logits row 1 is 4");
    EXPECT_BAD(rows[0] = -1, rows[0] = 2, "logits row 0 is -1");
#undef EXPECT_BAD
    assert_int_equal(ql_batch_validate(NULL, info, err, sizeof(err)), QL_EINVAL);
    /* no logits at all is a valid step (a prefill chunk that does not end its prompt) */
    b.n_logits = 0;
    b.logits_rows = NULL;
    assert_int_equal(ql_batch_validate(&b, info, NULL, 0), 0);
    assert_int_equal(ql_backend_forward(&g_fake.base, &b, NULL), 0);
}

/* ---- KV layout ---- */

static void test_kv_layout(void **state) {
    (void)state;
    const ql_kv_layout_t l = {
        .n_layer = 30, .n_kv_head = 3, .head_dim = 64, .block_size = 16, .n_blocks = 100};
    assert_int_equal(ql_kv_offset(&l, 0, 0, 0), 0);
    assert_int_equal(ql_kv_offset(&l, 0, 0, 1), 64);
    assert_int_equal(ql_kv_offset(&l, 0, 1, 0), 16 * 64);
    assert_int_equal(ql_kv_offset(&l, 1, 0, 0), 3 * 16 * 64);
    assert_int_equal(ql_kv_offset(&l, 99, 2, 15), ql_kv_layer_elems(&l) - 64);
    /* SmolLM2-135M, f16: 30 layers × K,V × 3 heads × 16 tokens × 64 × 2 bytes */
    assert_int_equal(ql_kv_block_bytes(&l, 2), 368640);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_registry),
        cmocka_unit_test(test_wrappers),
        cmocka_unit_test(test_batch_contract),
        cmocka_unit_test(test_kv_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
