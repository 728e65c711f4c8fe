/*
 * tests/unit/cuda/test-kernels.c — every kernel of cuda/kernels.h against its reference:
 * the CPU backend's ops (cpu/cpu.h) and the host sampler (scheduler/sampling.h), on random
 * inputs with fixed seeds over odd shapes (block sizes 1..32, context lengths 1..1000, GQA
 * ratios 1..20, batches 1..64, padded row strides), with unused KV slots full of NaN so that
 * any read of them shows. Sampling: greedy exact, the processed distributions against
 * ql_sampler_probs, seeded draws replayed on the host, chi-square tests of the draws;
 * speculative accept/reject: exact at temperature 0 and a chi-square test that the output
 * follows p.
 *
 * Without CUDA compiled in, or without a device, the device tests skip and say why; the
 * launch arithmetic (kernels-plan.c) and the wrappers' argument checks run everywhere.
 *
 * Tolerances: pass when |got − ref| <= atol + rtol·|ref| (STYLE.md §9), each pair stated
 * and explained next to its check; the max difference is printed.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cpu/cpu.h"
#include "cuda/cuda.h"
#include "cuda/kernels.h"
#include "model/quant.h"
#include "scheduler/sampling.h"

/* f16 has 11 significant bits: rounding to it costs at most 2^-11 relative. */
#define F16_HALF_ULP (1.0 / 2048.0)

/* ---- helpers ---- */

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_f(uint64_t *s, float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_next(s) >> 40) * (1.0 / 16777216.0));
}
static int32_t rng_i(uint64_t *s, int32_t n) { return (int32_t)(rng_next(s) % (uint64_t)n); }

static int have_device(void) {
    if (!ql_cuda_compiled()) {
        printf("SKIP: CUDA is not compiled into this build (QL_CUDA=OFF)\n");
        return 0;
    }
    if (ql_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device present: the kernel tests need one\n");
        return 0;
    }
    return 1;
}
#define NEED_DEVICE()                                                                        \
    do {                                                                                     \
        if (!have_device()) skip();                                                          \
    } while (0)

static void *xmalloc_test(size_t n) {
    void *p = malloc(n ? n : 1);
    assert_non_null(p);
    return p;
}

/* Allocates `bytes` on the device and, when h is not NULL, uploads h into it. */
static void *dev_new(const void *h, size_t bytes) {
    void *d = NULL;
    assert_int_equal(ql_cuda_mem_alloc(&d, bytes), 0);
    assert_non_null(d);
    if (h) assert_int_equal(ql_cuda_mem_upload(d, h, bytes), 0);
    return d;
}
static void dev_get(void *h, const void *d, size_t bytes) {
    assert_int_equal(ql_cuda_stream_sync(NULL), 0);
    assert_int_equal(ql_cuda_mem_download(h, d, bytes), 0);
}

/* Fails at the first element outside atol + rtol·|ref| (a NaN fails; a non-finite
 * reference is skipped) and prints the max difference. */
static double check_close_p(const char *what, const float *got, const float *ref, int64_t n,
                            double atol, double rtol, int print) {
    double max_d = 0.0;
    int64_t first_bad = -1;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(ref[i])) continue;
        const double d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) || d > atol + rtol * fabs((double)ref[i])) {
            if (first_bad < 0) first_bad = i;
        }
        if (d > max_d) max_d = d;
    }
    if (print) printf("    %-40s max |diff| %.3g over %lld values\n", what, max_d, (long long)n);
    if (first_bad >= 0)
        fail_msg("%s: element %lld: got %.9g, want %.9g (atol %g, rtol %g)", what,
                 (long long)first_bad, (double)got[first_bad], (double)ref[first_bad], atol, rtol);
    return max_d;
}
static void check_close(const char *what, const float *got, const float *ref, int64_t n,
                        double atol, double rtol) {
    (void)check_close_p(what, got, ref, n, atol, rtol, 1);
}

static void f16_to_f32_n(float *y, const uint16_t *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = ql_fp16_to_fp32(x[i]);
}

/* ---- launch arithmetic (no device) ---- */

static void test_attn_plan(void **state) {
    (void)state;
    ql_cuda_attn_plan_t p;
    /* bad arguments */
    assert_int_equal(ql_cuda_attn_plan(0, 8, 2, 10, 132, &p), QL_EINVAL);
    assert_int_equal(ql_cuda_attn_plan(1, 9, 2, 10, 132, &p), QL_EINVAL); /* 9 % 2 */
    assert_int_equal(ql_cuda_attn_plan(1, 8, 2, -1, 132, &p), QL_EINVAL);
    assert_int_equal(ql_cuda_attn_plan(1, 8, 2, 10, 0, &p), QL_EINVAL);
    assert_int_equal(ql_cuda_attn_plan(1, 8, 2, 10, 132, NULL), QL_EINVAL);
    assert_int_equal(ql_cuda_attn_plan_runs(1, 8, 2, 10, 0, 132, &p), QL_EINVAL);
    /* a run of a prefill chunk: SmolLM2's group of 3 takes 5 tokens a block (15 rows) */
    assert_int_equal(ql_cuda_attn_plan_runs(512, 9, 3, 511, 512, 132, &p), 0);
    assert_int_equal(p.heads_per_cta, 3);
    assert_int_equal(p.tokens_per_cta, 5);
    /* a group of 16 fills a block alone */
    assert_int_equal(ql_cuda_attn_plan_runs(512, 32, 2, 511, 512, 132, &p), 0);
    assert_int_equal(p.tokens_per_cta, 1);

    /* a prefill-sized grid fills the device alone: no split */
    assert_int_equal(ql_cuda_attn_plan(512, 9, 3, 999, 132, &p), 0);
    assert_int_equal(p.n_splits, 1);
    assert_true(p.keys_per_split >= 1000);
    /* one decode token over a long context: split, every split >= 256 keys */
    assert_int_equal(ql_cuda_attn_plan(1, 32, 8, 32767, 132, &p), 0);
    assert_true(p.n_splits > 1);
    assert_true(p.keys_per_split >= 256);
    /* a short context never splits (the combine would cost more) */
    assert_int_equal(ql_cuda_attn_plan(1, 32, 8, 200, 132, &p), 0);
    assert_int_equal(p.n_splits, 1);

    /* the invariants the kernel relies on, over a sweep of shapes */
    const int32_t heads[][2] = {{1, 1}, {9, 3}, {32, 8}, {32, 1}, {40, 2}, {64, 64}, {48, 1}};
    for (size_t h = 0; h < QL_ARRAY_LEN(heads); h++) {
        const int32_t n_head = heads[h][0], n_kv = heads[h][1], group = n_head / n_kv;
        for (int64_t n_tok = 1; n_tok <= 300; n_tok += 37) {
            for (int32_t max_pos = 0; max_pos < 40000; max_pos = max_pos * 3 + 7) {
                assert_int_equal(ql_cuda_attn_plan(n_tok, n_head, n_kv, max_pos, 132, &p), 0);
                /* rows of a block fit, cover the group, and no chunk is empty */
                assert_true(p.heads_per_cta >= 1 && p.heads_per_cta <= QL_CUDA_ATTN_MAX_ROWS);
                assert_true((int64_t)p.heads_per_cta * p.n_head_chunks >= group);
                assert_true((int64_t)p.heads_per_cta * (p.n_head_chunks - 1) < group);
                /* whole tiles; the splits cover every key and none is wholly past the end */
                assert_int_equal(p.keys_per_split % QL_CUDA_ATTN_TILE_KEYS, 0);
                assert_true((int64_t)p.n_splits * p.keys_per_split >= (int64_t)max_pos + 1);
                assert_true((int64_t)(p.n_splits - 1) * p.keys_per_split < (int64_t)max_pos + 1);
                assert_true(p.n_splits >= 1 && p.n_splits <= 65535);
                assert_int_equal(p.tokens_per_cta, 1);
                const size_t wb = ql_cuda_attn_work_bytes(&p, n_tok, n_head, 128);
                assert_true((p.n_splits == 1) == (wb == 0));
                /* the backend's one allocation covers every call up to its limits */
                const size_t wb_max =
                    ql_cuda_attn_work_bytes_max(300, n_head, n_kv, 128, 40000, 132);
                assert_true(wb <= wb_max);
                /* runs of tokens: a block's rows still fit, and the scratch bound holds */
                const int32_t runs[] = {1, 2, 7, 64};
                for (size_t ri = 0; ri < QL_ARRAY_LEN(runs); ri++) {
                    ql_cuda_attn_plan_t pr;
                    assert_int_equal(ql_cuda_attn_plan_runs(n_tok, n_head, n_kv, max_pos, runs[ri],
                                                            132, &pr),
                                     0);
                    assert_true(pr.tokens_per_cta >= 1 && pr.tokens_per_cta <= runs[ri]);
                    assert_true(pr.tokens_per_cta * pr.heads_per_cta <= QL_CUDA_ATTN_MAX_ROWS);
                    assert_int_equal(pr.heads_per_cta, p.heads_per_cta);
                    assert_int_equal(pr.keys_per_split % QL_CUDA_ATTN_TILE_KEYS, 0);
                    assert_true((int64_t)pr.n_splits * pr.keys_per_split >= (int64_t)max_pos + 1);
                    assert_true(ql_cuda_attn_work_bytes(&pr, n_tok, n_head, 128) <= wb_max);
                }
            }
        }
    }
    assert_int_equal(ql_cuda_attn_work_bytes_max(0, 8, 2, 64, 100, 132), 0);
    assert_int_equal(ql_cuda_attn_work_bytes_max(4, 9, 2, 64, 100, 132), 0);

    assert_true(ql_cuda_attn_head_dim_supported(64));
    assert_true(ql_cuda_attn_head_dim_supported(128));
    assert_false(ql_cuda_attn_head_dim_supported(80));
    assert_false(ql_cuda_attn_head_dim_supported(0));
}

/* The device generator is splitmix64 and its uniforms are 53-bit, in [0, 1): the host can
 * replay every draw of a kernel from the state it gave it. */
static void test_rng_replay(void **state) {
    (void)state;
    uint64_t st = 0, mine = 0;
    /* splitmix64's published first outputs for seed 0 */
    assert_true(ql_cuda_rng_next(&st) == 0xe220a8397b1dcdafull);
    assert_true(ql_cuda_rng_next(&st) == 0x6e789e6aa1b965f4ull);
    assert_true(st == 2 * 0x9e3779b97f4a7c15ull);
    st = 12345, mine = 12345;
    double lo = 1.0, hi = 0.0, sum = 0.0;
    const int n = 100000;
    for (int i = 0; i < n; i++) {
        const double u = ql_cuda_rng_uniform(&st);
        assert_true(u == (double)(rng_next(&mine) >> 11) * (1.0 / 9007199254740992.0));
        assert_true(u >= 0.0 && u < 1.0);
        lo = fmin(lo, u), hi = fmax(hi, u), sum += u;
    }
    assert_true(lo < 1e-3 && hi > 1.0 - 1e-3);
    assert_true(fabs(sum / n - 0.5) < 0.005); /* sd of the mean 0.0009 */
    assert_true(QL_CUDA_SAMPLE_NONE < 0 && QL_CUDA_SAMPLE_NAN < 0);
    assert_true(QL_CUDA_SAMPLE_NONE != QL_CUDA_SAMPLE_NAN);
}

/* Every wrapper refuses bad sizes before it touches a device (QL_EINVAL), accepts zero
 * work (0, nothing queued), and without CUDA says so (QL_EUNSUPPORTED). */
static void test_wrapper_args(void **state) {
    (void)state;
    const int cuda = ql_cuda_compiled();
    const int bad = cuda ? QL_EINVAL : QL_EUNSUPPORTED;
    const int none = cuda ? 0 : QL_EUNSUPPORTED;
    float f = 0.0f;
    uint16_t h = 0;
    int32_t id = 0;
    assert_int_equal(ql_cuda_embed_get_rows(&f, &h, 1, 0, &id, 1, NULL), bad);
    assert_int_equal(ql_cuda_embed_get_rows(&f, &h, 1, 4, &id, -1, NULL), bad);
    assert_int_equal(ql_cuda_embed_get_rows(NULL, NULL, 1, 4, NULL, 0, NULL), none);
    assert_int_equal(ql_cuda_rmsnorm_residual(&f, NULL, &f, &h, NULL, 1, 0, 1e-5f, NULL), bad);
    assert_int_equal(ql_cuda_rmsnorm_residual(NULL, NULL, &f, &h, NULL, 1, 8, 1e-5f, NULL), bad);
    assert_int_equal(ql_cuda_rmsnorm_residual(&f, NULL, &f, &h, NULL, 1, 8, NAN, NULL), bad);
    assert_int_equal(ql_cuda_rmsnorm_residual(NULL, NULL, NULL, NULL, NULL, 0, 8, 1e-5f, NULL),
                     none);
    ql_cuda_rope_params_t rp = {.mode = 0, .n_rot = 64, .freq_base = 10000.0f, .freq_scale = 1.0f};
    /* n_rot > head_dim */
    assert_int_equal(ql_cuda_rope(&rp, &f, 64, 1, NULL, 0, 0, 32, &id, 1, NULL), bad);
    rp.n_rot = 63;
    assert_int_equal(ql_cuda_rope(&rp, &f, 64, 1, NULL, 0, 0, 64, &id, 1, NULL), bad); /* odd */
    rp.n_rot = 64;
    rp.mode = 2;
    assert_int_equal(ql_cuda_rope(&rp, &f, 64, 1, NULL, 0, 0, 64, &id, 1, NULL), bad);
    rp.mode = 1;
    assert_int_equal(ql_cuda_rope(&rp, &f, 63, 1, NULL, 0, 0, 64, &id, 1, NULL), bad); /* ldq */
    assert_int_equal(ql_cuda_rope(&rp, &f, 64, 1, NULL, 0, 1, 64, &id, 1, NULL), bad); /* k */
    assert_int_equal(ql_cuda_rope(NULL, &f, 64, 1, NULL, 0, 0, 64, &id, 1, NULL), bad);
    assert_int_equal(ql_cuda_rope(&rp, &f, 64, 1, NULL, 0, 0, 64, &id, 0, NULL), none);
    ql_kv_layout_t kv = {.n_layer = 1, .n_kv_head = 2, .head_dim = 64, .block_size = 16,
                         .n_blocks = 4};
    assert_int_equal(ql_cuda_kv_write(&kv, &h, &h, &f, 127, &f, 128, &id, 1, NULL), bad);
    assert_int_equal(ql_cuda_kv_write(NULL, &h, &h, &f, 128, &f, 128, &id, 1, NULL), bad);
    assert_int_equal(ql_cuda_kv_write(&kv, &h, &h, &f, 128, &f, 128, &id, 0, NULL), none);
    static _Alignas(16) uint16_t pool[16]; /* the kernel reads 16-byte vectors */
    ql_cuda_attn_args_t a = {.kv = &kv, .k_pool = pool, .v_pool = pool, .q = &f, .ldq = 4 * 64,
                             .out = &h, .ldo = 4 * 64, .n_tok = 1, .n_head = 4, .scale = 0.125f,
                             .pos = &id, .seq_of = &id, .block_tables = &id, .max_blocks = 1,
                             .n_seqs = 1, .max_pos = 0};
    a.n_head = 3; /* not a multiple of n_kv_head */
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    a.n_head = 4;
    a.ldo = 4 * 64 - 1;
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    a.ldo = 4 * 64;
    a.max_pos = -1;
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    a.max_pos = 0;
    a.pos = NULL;
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    a.pos = &id;
    const ql_cuda_attn_plan_t rows_plan = {.n_splits = 1, .keys_per_split = 32,
                                           .heads_per_cta = 2, .n_head_chunks = 1,
                                           .tokens_per_cta = 9}; /* 18 rows > 16 */
    a.plan = &rows_plan;
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    const ql_cuda_attn_plan_t short_plan = {.n_splits = 1, .keys_per_split = 32,
                                            .heads_per_cta = 2, .n_head_chunks = 1,
                                            .tokens_per_cta = 1};
    a.plan = &short_plan;
    a.max_pos = 40; /* the plan covers 32 keys only */
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    a.max_pos = 0;
    const ql_cuda_attn_plan_t split_plan = {.n_splits = 2, .keys_per_split = 32,
                                            .heads_per_cta = 2, .n_head_chunks = 1,
                                            .tokens_per_cta = 1};
    a.plan = &split_plan; /* splits need scratch, and none is given */
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    a.plan = NULL;
    a.v_pool = pool + 1; /* not 16-byte aligned */
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), bad);
    a.v_pool = pool;
    kv.head_dim = 80; /* not compiled */
    a.ldq = a.ldo = 4 * 80;
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), QL_EUNSUPPORTED);
    kv.head_dim = 64;
    a.n_tok = 0;
    assert_int_equal(ql_cuda_attn_paged(&a, NULL), none);
    assert_int_equal(ql_cuda_swiglu(&h, &f, &f, 7, 1, 8, NULL), bad); /* ld < n_ff */
    assert_int_equal(ql_cuda_swiglu(&h, &f, &f, 8, 0, 8, NULL), none);
    assert_int_equal(ql_cuda_f32_to_f16(&h, &f, -1, NULL), bad);
    assert_int_equal(ql_cuda_softmax_rows(&f, 1, 0, NULL), bad);
    size_t wb = 1;
    assert_int_equal(ql_cuda_sample_work_bytes(0, 100, &wb), bad);
    assert_int_equal(wb, 0);
    assert_int_equal(ql_cuda_sample_work_bytes(1 << 20, 1 << 20, &wb), bad); /* > INT32_MAX */
    ql_cuda_sample_args_t sa = {.logits = &f, .n_rows = 1, .n_vocab = 0};
    assert_int_equal(ql_cuda_sample_rows(&sa, &id, NULL), bad);
    sa.n_rows = 0;
    assert_int_equal(ql_cuda_sample_rows(&sa, &id, NULL), none);
    assert_int_equal(ql_cuda_sample_probs(&sa, NULL, NULL), bad);
    ql_cuda_spec_args_t sp = {.n_seqs = 1, .k_max = 2, .n_vocab = 0};
    assert_int_equal(ql_cuda_spec_verify(&sp, &id, &id, NULL), bad);
    sp.n_vocab = 8;
    sp.n_seqs = 0;
    assert_int_equal(ql_cuda_spec_verify(&sp, &id, &id, NULL), none);
    if (!cuda) {
        void *d = &f;
        assert_int_equal(ql_cuda_mem_alloc(&d, 16), QL_EUNSUPPORTED);
        assert_null(d);
    }
}

/* ---- embedding gather ---- */

static void test_embed(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 11;
    const int64_t shapes[][3] = {{1, 1, 1}, {7, 13, 5}, {1000, 576, 64}, {300, 1003, 77}};
    for (size_t c = 0; c < QL_ARRAY_LEN(shapes); c++) {
        const int64_t n_rows = shapes[c][0], dim = shapes[c][1], n_ids = shapes[c][2];
        uint16_t *table = xmalloc_test((size_t)(n_rows * dim) * 2);
        int32_t *ids = xmalloc_test((size_t)n_ids * 4);
        float *ref = xmalloc_test((size_t)(n_ids * dim) * 4);
        float *got = xmalloc_test((size_t)(n_ids * dim) * 4);
        for (int64_t i = 0; i < n_rows * dim; i++) table[i] = ql_fp32_to_fp16(rng_f(&rng, -4, 4));
        for (int64_t t = 0; t < n_ids; t++) ids[t] = rng_i(&rng, (int32_t)n_rows);
        ids[n_ids - 1] = (int32_t)n_rows - 1; /* the last row too */
        assert_int_equal(ql_cpu_get_rows(ref, table, QL_DTYPE_F16, n_rows, dim, ids, n_ids), 0);
        void *d_table = dev_new(table, (size_t)(n_rows * dim) * 2);
        void *d_ids = dev_new(ids, (size_t)n_ids * 4);
        float *d_out = dev_new(NULL, (size_t)(n_ids * dim) * 4);
        assert_int_equal(
            ql_cuda_embed_get_rows(d_out, d_table, n_rows, dim, d_ids, n_ids, NULL), 0);
        dev_get(got, d_out, (size_t)(n_ids * dim) * 4);
        /* f16 → f32 is exact on both sides */
        check_close("embed_get_rows", got, ref, n_ids * dim, 0.0, 0.0);
        /* an id out of range: a NaN row, nothing read out of bounds */
        ids[0] = (int32_t)n_rows;
        assert_int_equal(ql_cuda_mem_upload(d_ids, ids, 4), 0);
        assert_int_equal(ql_cuda_embed_get_rows(d_out, d_table, n_rows, dim, d_ids, 1, NULL), 0);
        dev_get(got, d_out, (size_t)dim * 4);
        for (int64_t i = 0; i < dim; i++) assert_true(isnan(got[i]));
        ql_cuda_mem_free(d_table);
        ql_cuda_mem_free(d_ids);
        ql_cuda_mem_free(d_out);
        free(table), free(ids), free(ref), free(got);
    }
}

/* ---- RMSNorm + residual ---- */

static void test_rmsnorm_residual(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 12;
    const int64_t shapes[][2] = {{1, 1}, {3, 31}, {64, 576}, {77, 1000}, {5, 4099}};
    for (size_t c = 0; c < QL_ARRAY_LEN(shapes); c++) {
        for (int with_delta = 0; with_delta <= 1; with_delta++) {
            const int64_t n_tok = shapes[c][0], dim = shapes[c][1], n = n_tok * dim;
            const float eps = 1e-5f;
            float *x = xmalloc_test((size_t)n * 4), *delta = xmalloc_test((size_t)n * 4);
            float *w = xmalloc_test((size_t)dim * 4), *ref = xmalloc_test((size_t)n * 4);
            float *got = xmalloc_test((size_t)n * 4), *got32 = xmalloc_test((size_t)n * 4);
            float *ref16 = xmalloc_test((size_t)n * 4), *got16f = xmalloc_test((size_t)n * 4);
            uint16_t *got16 = xmalloc_test((size_t)n * 2);
            for (int64_t i = 0; i < n; i++) x[i] = rng_f(&rng, -3, 3);
            for (int64_t i = 0; i < n; i++) delta[i] = rng_f(&rng, -1, 1);
            for (int64_t i = 0; i < dim; i++) w[i] = rng_f(&rng, 0.5f, 1.5f);
            float *d_x = dev_new(x, (size_t)n * 4);
            float *d_delta = dev_new(delta, (size_t)n * 4);
            float *d_w = dev_new(w, (size_t)dim * 4);
            uint16_t *d_out = dev_new(NULL, (size_t)n * 2);
            float *d_out32 = dev_new(NULL, (size_t)n * 4);
            assert_int_equal(ql_cuda_rmsnorm_residual(d_x, with_delta ? d_delta : NULL, d_w, d_out,
                                                      d_out32, n_tok, dim, eps, NULL),
                             0);
            if (with_delta)
                for (int64_t i = 0; i < n; i++) x[i] += delta[i];
            ql_cpu_rmsnorm(ref, x, w, n_tok, dim, eps);
            dev_get(got, d_x, (size_t)n * 4);
            /* the residual sum is one f32 addition on both sides: exact */
            check_close("rmsnorm: x += delta", got, x, n, 0.0, 0.0);
            dev_get(got32, d_out32, (size_t)n * 4);
            /* the mean of squares in f32 (block tree) vs double: ~1e-7 relative on the
             * scale, plus 3 roundings (·scale, ·w, 1/sqrt); 1e-5 relative is ample, atol
             * covers values near 0 */
            check_close("rmsnorm: out f32", got32, ref, n, 1e-6, 1e-5);
            dev_get(got16, d_out, (size_t)n * 2);
            f16_to_f32_n(got16f, got16, n);
            for (int64_t i = 0; i < n; i++) ref16[i] = ql_fp16_to_fp32(ql_fp32_to_fp16(ref[i]));
            /* f16 storage: the f32 values above rounded once more, so the same f16 as the
             * rounded reference or its neighbour (one ulp: at most 2^-10 relative); 1.5 ulp
             * for margin, atol for f16 subnormals (ulp 6e-8) */
            check_close("rmsnorm: out f16", got16f, ref16, n, 1e-7, 3.0 * F16_HALF_ULP);
            ql_cuda_mem_free(d_x), ql_cuda_mem_free(d_delta), ql_cuda_mem_free(d_w);
            ql_cuda_mem_free(d_out), ql_cuda_mem_free(d_out32);
            free(x), free(delta), free(w), free(ref), free(got), free(got32), free(ref16);
            free(got16f), free(got16);
        }
    }
}

/* ---- RoPE ---- */

static void test_rope(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 13;
    typedef struct {
        int mode, n_head, n_kv, hd, n_rot, n_tok, pad;
        float base, scale;
        int factors;
    } rope_case_t;
    const rope_case_t cases[] = {
        {0, 9, 3, 64, 64, 7, 0, 100000.0f, 1.0f, 0},   /* SmolLM2 */
        {1, 14, 2, 64, 64, 33, 5, 1000000.0f, 1.0f, 0}, /* qwen2 layout */
        {0, 32, 8, 128, 128, 64, 3, 500000.0f, 1.0f, 1}, /* llama3 frequency factors */
        {1, 4, 4, 96, 32, 5, 1, 10000.0f, 0.25f, 0},   /* partial rotation, linear scaling */
        {0, 3, 1, 80, 48, 1, 0, 10000.0f, 1.0f, 0},
    };
    for (size_t c = 0; c < QL_ARRAY_LEN(cases); c++) {
        const rope_case_t *rc = &cases[c];
        const int qd = rc->n_head * rc->hd, kd = rc->n_kv * rc->hd;
        /* q and k inside one fused row [q | k | v-ish | pad], as a QKV GEMM writes them */
        const int64_t ld = qd + 2 * kd + rc->pad;
        const int64_t n = rc->n_tok * ld;
        float *row = xmalloc_test((size_t)n * 4), *got = xmalloc_test((size_t)n * 4);
        float *q = xmalloc_test((size_t)rc->n_tok * qd * 4);
        float *k = xmalloc_test((size_t)rc->n_tok * kd * 4);
        float *ff = xmalloc_test((size_t)rc->n_rot / 2 * 4);
        int32_t *pos = xmalloc_test((size_t)rc->n_tok * 4);
        for (int64_t i = 0; i < n; i++) row[i] = rng_f(&rng, -2, 2);
        for (int t = 0; t < rc->n_tok; t++) pos[t] = t == 0 ? 0 : rng_i(&rng, 4096);
        for (int i = 0; i < rc->n_rot / 2; i++) ff[i] = rng_f(&rng, 1.0f, 8.0f);
        for (int t = 0; t < rc->n_tok; t++) {
            memcpy(q + (int64_t)t * qd, row + t * ld, (size_t)qd * 4);
            memcpy(k + (int64_t)t * kd, row + t * ld + qd, (size_t)kd * 4);
        }
        ql_rope_params_t cp = {.mode = rc->mode, .n_rot = rc->n_rot, .freq_base = rc->base,
                               .freq_scale = rc->scale, .freq_factors = rc->factors ? ff : NULL};
        ql_cpu_rope(&cp, q, pos, rc->n_tok, rc->n_head, rc->hd);
        ql_cpu_rope(&cp, k, pos, rc->n_tok, rc->n_kv, rc->hd);
        float *d_row = dev_new(row, (size_t)n * 4);
        int32_t *d_pos = dev_new(pos, (size_t)rc->n_tok * 4);
        float *d_ff = dev_new(ff, (size_t)rc->n_rot / 2 * 4);
        ql_cuda_rope_params_t gp = {.mode = rc->mode, .n_rot = rc->n_rot, .freq_base = rc->base,
                                    .freq_scale = rc->scale,
                                    .freq_factors = rc->factors ? d_ff : NULL};
        assert_int_equal(ql_cuda_rope(&gp, d_row, ld, rc->n_head, d_row + qd, ld, rc->n_kv, rc->hd,
                                      d_pos, rc->n_tok, NULL),
                         0);
        dev_get(got, d_row, (size_t)n * 4);
        /* the angles are bit-identical and the rotation rounded alike (NOTE(rope-theta) in
         * cuda/k-rope.cu); sincosf is within 2 ulp of the host's cosf/sinf: a few 1e-7 on
         * values of size 2 */
        float *gq = xmalloc_test((size_t)rc->n_tok * qd * 4);
        float *gk = xmalloc_test((size_t)rc->n_tok * kd * 4);
        for (int t = 0; t < rc->n_tok; t++) {
            memcpy(gq + (int64_t)t * qd, got + t * ld, (size_t)qd * 4);
            memcpy(gk + (int64_t)t * kd, got + t * ld + qd, (size_t)kd * 4);
            /* the rest of the row is untouched, bit for bit */
            assert_memory_equal(got + t * ld + qd + kd, row + t * ld + qd + kd,
                                (size_t)(ld - qd - kd) * 4);
        }
        char what[64];
        snprintf(what, sizeof(what), "rope case %zu: q", c);
        check_close(what, gq, q, (int64_t)rc->n_tok * qd, 2e-6, 2e-6);
        snprintf(what, sizeof(what), "rope case %zu: k", c);
        check_close(what, gk, k, (int64_t)rc->n_tok * kd, 2e-6, 2e-6);
        ql_cuda_mem_free(d_row), ql_cuda_mem_free(d_pos), ql_cuda_mem_free(d_ff);
        free(row), free(got), free(q), free(k), free(ff), free(pos), free(gq), free(gk);
    }
}

/* ---- paged KV write ---- */

#define F16_NAN 0x7e00u

static void test_kv_write(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 14;
    const int shapes[][4] = {{1, 64, 16, 8}, {3, 64, 16, 40}, {2, 128, 1, 9}, {5, 32, 7, 11}};
    for (size_t c = 0; c < QL_ARRAY_LEN(shapes); c++) {
        ql_kv_layout_t kv = {.n_layer = 1, .n_kv_head = shapes[c][0], .head_dim = shapes[c][1],
                             .block_size = shapes[c][2], .n_blocks = shapes[c][3]};
        const int64_t row = (int64_t)kv.n_kv_head * kv.head_dim, ld = row + 3;
        const int64_t pool_n = ql_kv_layer_elems(&kv);
        const int64_t n_slots = (int64_t)kv.n_blocks * kv.block_size;
        const int64_t n_tok = QL_MIN(n_slots, (int64_t)50);
        uint16_t *kp = xmalloc_test((size_t)pool_n * 2), *vp = xmalloc_test((size_t)pool_n * 2);
        uint16_t *gk = xmalloc_test((size_t)pool_n * 2), *gv = xmalloc_test((size_t)pool_n * 2);
        float *k = xmalloc_test((size_t)(n_tok * ld) * 4);
        float *v = xmalloc_test((size_t)(n_tok * ld) * 4);
        int32_t *slots = xmalloc_test((size_t)n_tok * 4), *perm = xmalloc_test((size_t)n_slots * 4);
        for (int64_t i = 0; i < pool_n; i++) kp[i] = vp[i] = F16_NAN;
        for (int64_t i = 0; i < n_tok * ld; i++)
            k[i] = rng_f(&rng, -8, 8), v[i] = rng_f(&rng, -8, 8);
        for (int64_t i = 0; i < n_slots; i++) perm[i] = (int32_t)i;
        for (int64_t i = n_slots - 1; i > 0; i--) { /* distinct slots in random order */
            const int32_t j = rng_i(&rng, (int32_t)i + 1), tmp = perm[i];
            perm[i] = perm[j], perm[j] = tmp;
        }
        for (int64_t t = 0; t < n_tok; t++) slots[t] = perm[t];
        if (n_tok > 2) slots[1] = -1; /* padding: skipped */
        if (n_tok > 3) slots[2] = (int32_t)n_slots; /* past the pool: skipped, not written */
        uint16_t *d_k = dev_new(kp, (size_t)pool_n * 2), *d_v = dev_new(vp, (size_t)pool_n * 2);
        float *d_kin = dev_new(k, (size_t)(n_tok * ld) * 4);
        float *d_vin = dev_new(v, (size_t)(n_tok * ld) * 4);
        int32_t *d_slots = dev_new(slots, (size_t)n_tok * 4);
        assert_int_equal(
            ql_cuda_kv_write(&kv, d_k, d_v, d_kin, ld, d_vin, ld, d_slots, n_tok, NULL), 0);
        dev_get(gk, d_k, (size_t)pool_n * 2);
        dev_get(gv, d_v, (size_t)pool_n * 2);
        for (int64_t t = 0; t < n_tok; t++) {
            const int32_t s = slots[t];
            if (s < 0 || s >= n_slots) continue;
            for (int32_t h = 0; h < kv.n_kv_head; h++) {
                const int64_t off = ql_kv_offset(&kv, s / kv.block_size, h, s % kv.block_size);
                for (int32_t d = 0; d < kv.head_dim; d++) {
                    const int64_t src = t * ld + (int64_t)h * kv.head_dim + d;
                    /* both sides round f32 → f16 to nearest even: bit-identical */
                    kp[off + d] = ql_fp32_to_fp16(k[src]);
                    vp[off + d] = ql_fp32_to_fp16(v[src]);
                }
            }
        }
        /* every written slot is right and every other one still holds its NaN */
        assert_memory_equal(gk, kp, (size_t)pool_n * 2);
        assert_memory_equal(gv, vp, (size_t)pool_n * 2);
        printf("    kv_write %d heads x %d, block %d: %lld tokens exact\n", kv.n_kv_head,
               kv.head_dim, kv.block_size, (long long)n_tok);
        ql_cuda_mem_free(d_k), ql_cuda_mem_free(d_v), ql_cuda_mem_free(d_kin);
        ql_cuda_mem_free(d_vin), ql_cuda_mem_free(d_slots);
        free(kp), free(vp), free(gk), free(gv), free(k), free(v), free(slots), free(perm);
    }
}

/* ---- paged attention ---- */

typedef struct attn_case_s {
    int head_dim, block_size, n_kv_head, group;
    int n_seqs;
    const int32_t *lens; /* [n_seqs], or NULL: random in 1..1000 */
    int chunk;           /* query tokens of odd sequences (a prefill chunk); even: 1 (decode) */
} attn_case_t;

/* Builds a pool full of NaN, scatters each sequence's K/V over random blocks, runs the
 * kernel (automatic plan, then the most split plan) and the CPU reference, compares. */
static void run_attn_case(const attn_case_t *ac, uint64_t seed) {
    uint64_t rng = seed;
    const int D = ac->head_dim, n_kv = ac->n_kv_head, n_head = n_kv * ac->group;
    const int bs = ac->block_size, n_seqs = ac->n_seqs;
    int32_t *lens = xmalloc_test((size_t)n_seqs * 4), *nb = xmalloc_test((size_t)n_seqs * 4);
    int32_t max_blocks = 1, total_blocks = 0;
    for (int s = 0; s < n_seqs; s++) {
        lens[s] = ac->lens ? ac->lens[s] : 1 + rng_i(&rng, 1000);
        nb[s] = (lens[s] + bs - 1) / bs;
        max_blocks = QL_MAX(max_blocks, nb[s] + 1); /* one table entry more than needed */
        total_blocks += nb[s];
    }
    ql_kv_layout_t kv = {.n_layer = 1, .n_kv_head = n_kv, .head_dim = D, .block_size = bs,
                         .n_blocks = total_blocks + 5};
    /* random distinct physical blocks for every sequence */
    int32_t *perm = xmalloc_test((size_t)kv.n_blocks * 4);
    for (int32_t i = 0; i < kv.n_blocks; i++) perm[i] = i;
    for (int32_t i = kv.n_blocks - 1; i > 0; i--) {
        const int32_t j = rng_i(&rng, i + 1), tmp = perm[i];
        perm[i] = perm[j], perm[j] = tmp;
    }
    int32_t *tables = xmalloc_test((size_t)n_seqs * max_blocks * 4);
    const int32_t **tab_ptr = xmalloc_test((size_t)n_seqs * sizeof(*tab_ptr));
    int32_t next = 0;
    for (int s = 0; s < n_seqs; s++) {
        for (int32_t b = 0; b < max_blocks; b++)
            /* entries past the sequence's blocks are garbage: never read */
            tables[(int64_t)s * max_blocks + b] = b < nb[s] ? perm[next++] : -7 - b;
        tab_ptr[s] = tables + (int64_t)s * max_blocks;
    }
    const int64_t pool_n = ql_kv_layer_elems(&kv);
    uint16_t *kp = xmalloc_test((size_t)pool_n * 2), *vp = xmalloc_test((size_t)pool_n * 2);
    for (int64_t i = 0; i < pool_n; i++) kp[i] = vp[i] = F16_NAN; /* unused slots: NaN */
    for (int s = 0; s < n_seqs; s++)
        for (int32_t p = 0; p < lens[s]; p++)
            for (int h = 0; h < n_kv; h++) {
                const int64_t off = ql_kv_offset(&kv, tab_ptr[s][p / bs], h, p % bs);
                for (int d = 0; d < D; d++) {
                    kp[off + d] = ql_fp32_to_fp16(rng_f(&rng, -1, 1));
                    vp[off + d] = ql_fp32_to_fp16(rng_f(&rng, -1, 1));
                }
            }
    /* query tokens: even sequences decode (their last position), odd ones a prefill chunk
     * (their last `chunk` positions), interleaved in an order unrelated to the sequences */
    int64_t n_tok = 0;
    for (int s = 0; s < n_seqs; s++) n_tok += (s & 1) ? QL_MIN(ac->chunk, lens[s]) : 1;
    int32_t *pos = xmalloc_test((size_t)n_tok * 4), *seq_of = xmalloc_test((size_t)n_tok * 4);
    {
        int64_t t = 0;
        for (int s = n_seqs - 1; s >= 0; s--) {
            const int32_t nq = (s & 1) ? QL_MIN(ac->chunk, lens[s]) : 1;
            for (int32_t i = 0; i < nq; i++, t++) {
                seq_of[t] = s;
                pos[t] = lens[s] - nq + i;
            }
        }
    }
    int32_t max_pos = 0;
    for (int64_t t = 0; t < n_tok; t++) max_pos = QL_MAX(max_pos, pos[t]);
    const int64_t qd = (int64_t)n_head * D, ldq = qd + 3, ldo = qd + 5;
    float *q = xmalloc_test((size_t)(n_tok * qd) * 4);
    float *qpad = xmalloc_test((size_t)(n_tok * ldq) * 4);
    for (int64_t i = 0; i < n_tok * ldq; i++) qpad[i] = rng_f(&rng, -1, 1);
    for (int64_t t = 0; t < n_tok; t++) memcpy(q + t * qd, qpad + t * ldq, (size_t)qd * 4);
    float *ref = xmalloc_test((size_t)(n_tok * qd) * 4);
    const float scale = 1.0f / sqrtf((float)D);
    ql_cpu_attn_args_t ca = {.kv = &kv, .k_pool = kp, .v_pool = vp, .q = q, .out = ref,
                             .n_tok = n_tok, .n_head = n_head, .pos = pos, .seq_of = seq_of,
                             .block_tables = tab_ptr, .n_blocks = nb, .n_seqs = n_seqs,
                             .scale = scale};
    assert_int_equal(ql_cpu_attention_ref(&ca), 0);

    uint16_t *d_k = dev_new(kp, (size_t)pool_n * 2), *d_v = dev_new(vp, (size_t)pool_n * 2);
    float *d_q = dev_new(qpad, (size_t)(n_tok * ldq) * 4);
    uint16_t *outpad = xmalloc_test((size_t)(n_tok * ldo) * 2);
    for (int64_t i = 0; i < n_tok * ldo; i++) outpad[i] = 0x1234; /* sentinel in the padding */
    uint16_t *d_out = dev_new(outpad, (size_t)(n_tok * ldo) * 2);
    int32_t *d_pos = dev_new(pos, (size_t)n_tok * 4), *d_seq = dev_new(seq_of, (size_t)n_tok * 4);
    int32_t *d_tab = dev_new(tables, (size_t)n_seqs * max_blocks * 4);
    float *got = xmalloc_test((size_t)(n_tok * qd) * 4);
    uint16_t *got16 = xmalloc_test((size_t)(n_tok * ldo) * 2);

    static const char *const variant_name[] = {"auto", "runs", "runs+split/32", "split/32"};
    for (int variant = 0; variant < 4; variant++) {
        ql_cuda_attn_plan_t plan;
        /* 0: the plan the wrapper makes for this device (a token per block); 1: runs of the
         * prefill chunks' tokens per block; 2: runs, and a split every 32 keys (the most
         * splits, many empty for the short tokens and for the early rows of a run: the
         * combine's edge cases); 3: a token per block, split every 32 keys */
        assert_int_equal(ql_cuda_attn_plan_runs(n_tok, n_head, n_kv, max_pos,
                                                variant == 1 || variant == 2 ? ac->chunk : 1, 132,
                                                &plan),
                         0);
        if (variant >= 2) {
            plan.keys_per_split = QL_CUDA_ATTN_TILE_KEYS;
            plan.n_splits = (max_pos + 1 + QL_CUDA_ATTN_TILE_KEYS - 1) / QL_CUDA_ATTN_TILE_KEYS;
        }
        const size_t wb = variant == 0 ? ql_cuda_attn_work_bytes_max(n_tok, n_head, n_kv, D,
                                                                     max_pos + 1, 1024)
                                       : ql_cuda_attn_work_bytes(&plan, n_tok, n_head, D);
        void *d_work = wb ? dev_new(NULL, wb) : NULL;
        ql_cuda_attn_args_t a = {.kv = &kv, .k_pool = d_k, .v_pool = d_v, .q = d_q, .ldq = ldq,
                                 .out = d_out, .ldo = ldo, .n_tok = n_tok, .n_head = n_head,
                                 .scale = scale, .pos = d_pos, .seq_of = d_seq,
                                 .block_tables = d_tab, .max_blocks = max_blocks,
                                 .n_seqs = n_seqs, .max_pos = max_pos,
                                 .plan = variant == 0 ? NULL : &plan, .work = d_work,
                                 .work_bytes = wb};
        assert_int_equal(ql_cuda_attn_paged(&a, NULL), 0);
        dev_get(got16, d_out, (size_t)(n_tok * ldo) * 2);
        for (int64_t t = 0; t < n_tok; t++) {
            f16_to_f32_n(got + t * qd, got16 + t * ldo, qd);
            for (int64_t i = qd; i < ldo; i++) assert_int_equal(got16[t * ldo + i], 0x1234);
        }
        char what[96];
        snprintf(what, sizeof(what), "attn D%d bs%d kv%d g%d %s (%lld tok, %d/cta)", D, bs, n_kv,
                 ac->group, variant_name[variant], (long long)n_tok,
                 variant == 0 ? 1 : (int)plan.tokens_per_cta);
        /* outputs are convex combinations of f16 values in [-1, 1]; the f16 output costs
         * 2^-11 relative (4.9e-4 at |out| = 1), the f32 softmax and sums in another order
         * ~1e-6: FlashInfer's f16 tolerance, atol = rtol = 1e-3 */
        check_close(what, got, ref, n_tok * qd, 1e-3, 1e-3);
        ql_cuda_mem_free(d_work);
    }
    /* a token whose position is beyond its table: NaN out, no read out of bounds */
    {
        const int32_t bad_pos = max_blocks * bs;
        assert_int_equal(ql_cuda_mem_upload(d_pos, &bad_pos, 4), 0);
        ql_cuda_attn_args_t a = {.kv = &kv, .k_pool = d_k, .v_pool = d_v, .q = d_q, .ldq = ldq,
                                 .out = d_out, .ldo = ldo, .n_tok = 1, .n_head = n_head,
                                 .scale = scale, .pos = d_pos, .seq_of = d_seq,
                                 .block_tables = d_tab, .max_blocks = max_blocks,
                                 .n_seqs = n_seqs, .max_pos = 0};
        assert_int_equal(ql_cuda_attn_paged(&a, NULL), 0);
        dev_get(got16, d_out, (size_t)qd * 2);
        for (int64_t i = 0; i < qd; i++) assert_true(isnan(ql_fp16_to_fp32(got16[i])));
    }
    ql_cuda_mem_free(d_k), ql_cuda_mem_free(d_v), ql_cuda_mem_free(d_q), ql_cuda_mem_free(d_out);
    ql_cuda_mem_free(d_pos), ql_cuda_mem_free(d_seq), ql_cuda_mem_free(d_tab);
    free(lens), free(nb), free(perm), free(tables), free(tab_ptr), free(kp), free(vp);
    free(pos), free(seq_of), free(q), free(qpad), free(ref), free(outpad), free(got), free(got16);
}

static void test_attention(void **state) {
    (void)state;
    NEED_DEVICE();
    static const int32_t lens_a[] = {1, 17, 100, 1000, 33};
    static const int32_t lens_b[] = {1, 2, 3, 64};
    static const int32_t lens_c[] = {300, 5, 1};
    static const int32_t lens_d[] = {1000};
    static const int32_t lens_e[] = {1, 999}; /* odd sequences prefill */
    const attn_case_t cases[] = {
        {64, 16, 3, 3, 5, lens_a, 40},  /* SmolLM2's heads, mixed decode and prefill */
        {128, 1, 2, 4, 4, lens_b, 64},  /* block size 1 */
        {32, 7, 1, 20, 3, lens_c, 300}, /* MQA, a group of 20 rows: two head chunks */
        {96, 3, 4, 1, 1, lens_d, 1},    /* no GQA, one decode token over 1000 keys: splits */
        {128, 32, 8, 4, 2, lens_e, 999}, /* a whole 999-token prefill chunk */
        {64, 16, 2, 8, 64, NULL, 1},    /* a decode batch of 64, lengths 1..1000 */
        {64, 5, 1, 16, 37, NULL, 3},    /* 37 sequences, odd ones verify 3 tokens */
    };
    for (size_t c = 0; c < QL_ARRAY_LEN(cases); c++) run_attn_case(&cases[c], 100 + c);
}

/* ---- SwiGLU, f32 → f16, softmax ---- */

static void test_swiglu_convert_softmax(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 15;
    /* SwiGLU: gate and up as the two halves of one [n_tok][2·n_ff] GEMM output */
    const int64_t shapes[][2] = {{1, 1}, {3, 1536}, {64, 1000}, {17, 8191}};
    for (size_t c = 0; c < QL_ARRAY_LEN(shapes); c++) {
        const int64_t n_tok = shapes[c][0], n_ff = shapes[c][1], ld = 2 * n_ff, n = n_tok * n_ff;
        float *gu = xmalloc_test((size_t)(n_tok * ld) * 4), *g = xmalloc_test((size_t)n * 4);
        float *u = xmalloc_test((size_t)n * 4), *ref = xmalloc_test((size_t)n * 4);
        float *got = xmalloc_test((size_t)n * 4);
        uint16_t *got16 = xmalloc_test((size_t)n * 2);
        for (int64_t i = 0; i < n_tok * ld; i++) gu[i] = rng_f(&rng, -12, 12);
        for (int64_t t = 0; t < n_tok; t++) {
            memcpy(g + t * n_ff, gu + t * ld, (size_t)n_ff * 4);
            memcpy(u + t * n_ff, gu + t * ld + n_ff, (size_t)n_ff * 4);
        }
        ql_cpu_swiglu(ref, g, u, n_tok, n_ff);
        for (int64_t i = 0; i < n; i++) ref[i] = ql_fp16_to_fp32(ql_fp32_to_fp16(ref[i]));
        float *d_gu = dev_new(gu, (size_t)(n_tok * ld) * 4);
        uint16_t *d_out = dev_new(NULL, (size_t)n * 2);
        assert_int_equal(ql_cuda_swiglu(d_out, d_gu, d_gu + n_ff, ld, n_tok, n_ff, NULL), 0);
        dev_get(got16, d_out, (size_t)n * 2);
        f16_to_f32_n(got, got16, n);
        /* expf within 2 ulp on the device, < 1 on the host, then one f16 rounding: the
         * same f16 or neighbours (one ulp, at most 2^-10 relative; 1.5 ulp for margin);
         * atol for f16 subnormals (ulp 6e-8) */
        check_close("swiglu (f16 out)", got, ref, n, 1e-7, 3.0 * F16_HALF_ULP);
        ql_cuda_mem_free(d_gu), ql_cuda_mem_free(d_out);
        free(gu), free(g), free(u), free(ref), free(got), free(got16);
    }
    /* f32 → f16: round to nearest even on both sides, specials included: bit-identical */
    {
        const int64_t n = 100003;
        float *x = xmalloc_test((size_t)n * 4);
        uint16_t *ref = xmalloc_test((size_t)n * 2), *got = xmalloc_test((size_t)n * 2);
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)rng_next(&rng);
            if (i % 3 == 0) bits = (bits & 0x8fffffffu) | 0x30000000u; /* near f16's range */
            memcpy(&x[i], &bits, 4);
            if (isnan(x[i])) x[i] = 1.0f; /* NaN payloads may differ; specials below */
        }
        x[0] = INFINITY, x[1] = -INFINITY, x[2] = 65520.0f, x[3] = 65519.0f, x[4] = 5.9604645e-8f;
        x[5] = 2.9802322e-8f, x[6] = -0.0f, x[7] = 1e-10f;
        for (int64_t i = 0; i < n; i++) ref[i] = ql_fp32_to_fp16(x[i]);
        float *d_x = dev_new(x, (size_t)n * 4);
        uint16_t *d_y = dev_new(NULL, (size_t)n * 2);
        assert_int_equal(ql_cuda_f32_to_f16(d_y, d_x, n, NULL), 0);
        dev_get(got, d_y, (size_t)n * 2);
        assert_memory_equal(got, ref, (size_t)n * 2);
        printf("    f32_to_f16: %lld values bit-identical\n", (long long)n);
        ql_cuda_mem_free(d_x), ql_cuda_mem_free(d_y);
        free(x), free(ref), free(got);
    }
    /* softmax rows */
    {
        const int64_t n_rows = 6, n = 49157;
        float *x = xmalloc_test((size_t)(n_rows * n) * 4);
        float *ref = xmalloc_test((size_t)(n_rows * n) * 4);
        float *got = xmalloc_test((size_t)(n_rows * n) * 4);
        for (int64_t i = 0; i < n_rows * n; i++) x[i] = rng_f(&rng, -20, 20);
        x[2 * n + 5] = -INFINITY;            /* a masked entry */
        x[4 * n + 77] = NAN;                 /* a broken row */
        for (int64_t i = 0; i < n; i++) x[5 * n + i] = -INFINITY; /* nothing left */
        memcpy(ref, x, (size_t)(4 * n) * 4);
        ql_cpu_softmax(ref, 4, n);
        float *d_x = dev_new(x, (size_t)(n_rows * n) * 4);
        assert_int_equal(ql_cuda_softmax_rows(d_x, n_rows, n, NULL), 0);
        dev_get(got, d_x, (size_t)(n_rows * n) * 4);
        /* exp within 2 ulp; both sides sum 49k positive terms in f32 in different orders
         * (the reference in 8 sequential lanes of ~6000 terms: ~1e-5 relative typical, the
         * device a block tree: ~1e-6): rtol 1e-4; probabilities go down to ~1e-17, hence
         * atol 1e-9 */
        check_close("softmax rows", got, ref, 4 * n, 1e-9, 1e-4);
        assert_true(got[2 * n + 5] == 0.0f);
        for (int64_t i = 4 * n; i < 6 * n; i++) assert_true(isnan(got[i]));
        ql_cuda_mem_free(d_x);
        free(x), free(ref), free(got);
    }
}

/* ---- sampling ---- */

/* One row's request, as the host sampler takes it and as dense device arrays. */
typedef struct samp_row_s {
    ql_sampling_params_t p;
    int32_t hist[64];
    int32_t n_hist, n_prompt;
    ql_logit_bias_t bias[4];
} samp_row_t;

static ql_cuda_sample_params_t to_dev_params(const ql_sampling_params_t *p) {
    ql_cuda_sample_params_t d = {.temperature = p->temperature, .top_k = p->top_k,
                                 .top_p = p->top_p, .min_p = p->min_p,
                                 .repetition_penalty = p->repetition_penalty,
                                 .presence_penalty = p->presence_penalty,
                                 .frequency_penalty = p->frequency_penalty};
    return d;
}

/* Dense penalty and bias inputs of row r (ql_cuda_sample_args_t's contract). */
static void densify(const samp_row_t *sr, int32_t V, uint8_t *in_prompt, int32_t *counts,
                    float *bias) {
    memset(in_prompt, 0, (size_t)V);
    memset(counts, 0, (size_t)V * 4);
    for (int32_t i = 0; i < V; i++) bias[i] = 0.0f;
    for (int32_t i = 0; i < sr->n_hist; i++) {
        if (i < sr->n_prompt) in_prompt[sr->hist[i]] = 1;
        else counts[sr->hist[i]]++;
    }
    for (int32_t i = 0; i < sr->p.n_logit_bias; i++) {
        const ql_logit_bias_t *b = &sr->p.logit_bias[i];
        if (b->bias <= QL_SAMPLING_BIAS_MIN) bias[b->token] = -INFINITY;
        else if (bias[b->token] != -INFINITY) bias[b->token] += b->bias;
    }
}

/* The host's walk (step 8) over a processed distribution: candidates in key order (prob
 * descending, id ascending) when top-k or top-p sorted them, else in id order. */
static int32_t host_walk(const float *probs, int32_t V, int sorted, double u, int32_t *order) {
    int32_t n = 0;
    for (int32_t i = 0; i < V; i++)
        if (probs[i] > 0.0f) order[n++] = i;
    if (sorted) { /* insertion sort is fine for the kept set of a test */
        for (int32_t i = 1; i < n; i++) {
            const int32_t x = order[i];
            int32_t j = i;
            while (j > 0 && probs[order[j - 1]] < probs[x]) order[j] = order[j - 1], j--;
            order[j] = x;
        }
    }
    double cum = 0.0;
    for (int32_t i = 0; i < n; i++) {
        cum += probs[order[i]];
        if (u < cum) return order[i];
    }
    return n ? order[n - 1] : -1;
}

/* Random rows over the whole parameter space, with the host's probs and greedy token. */
static void make_sampling_rows(samp_row_t *rows, int n_rows, int32_t V, uint64_t *rng) {
    for (int r = 0; r < n_rows; r++) {
        samp_row_t *sr = &rows[r];
        memset(sr, 0, sizeof(*sr));
        sr->p = ql_sampling_params_default();
        const int kind = r % 8;
        sr->p.temperature = kind == 0 ? 0.0f : rng_f(rng, 0.3f, 1.5f);
        if (kind == 1 || kind == 5 || kind == 7) sr->p.top_k = 1 + rng_i(rng, 50);
        if (kind == 2 || kind == 5 || kind == 6) sr->p.top_p = rng_f(rng, 0.3f, 0.97f);
        if (kind == 3 || kind == 6 || kind == 7) sr->p.min_p = rng_f(rng, 0.01f, 0.3f);
        if (kind == 4 || kind == 0 || kind == 7) {
            sr->p.repetition_penalty = rng_f(rng, 0.8f, 1.6f);
            sr->p.presence_penalty = rng_f(rng, -1.0f, 1.0f);
            sr->p.frequency_penalty = rng_f(rng, -0.5f, 1.0f);
            sr->n_hist = 1 + rng_i(rng, 64);
            sr->n_prompt = rng_i(rng, sr->n_hist + 1);
            for (int i = 0; i < sr->n_hist; i++) /* repeats: the counts matter */
                sr->hist[i] = rng_i(rng, 40) * (V / 40);
        }
        if (r % 3 == 0 && V > 1) { /* never ban a one-token vocabulary's only token */
            sr->bias[0] = (ql_logit_bias_t){rng_i(rng, V), rng_f(rng, -5, 5)};
            sr->bias[1] = (ql_logit_bias_t){rng_i(rng, V), -100.0f}; /* a ban */
            sr->bias[2] = (ql_logit_bias_t){rng_i(rng, V), rng_f(rng, 0, 3)};
            sr->p.logit_bias = sr->bias;
            sr->p.n_logit_bias = 3;
        }
        sr->p.seed = 1000 + (uint64_t)r;
    }
}

typedef struct samp_dev_s {
    int n_rows;
    int32_t V;
    float *logits;
    ql_cuda_sample_params_t *params;
    uint8_t *in_prompt;
    int32_t *counts;
    float *bias;
    uint64_t *rng;
    void *work;
    size_t work_bytes;
} samp_dev_t;

static void samp_dev_init(samp_dev_t *d, const samp_row_t *rows, int n_rows, int32_t V,
                          const float *logits, const uint64_t *rng_state) {
    d->n_rows = n_rows;
    d->V = V;
    const size_t nv = (size_t)n_rows * V;
    ql_cuda_sample_params_t *hp = xmalloc_test((size_t)n_rows * sizeof(*hp));
    uint8_t *ip = xmalloc_test(nv);
    int32_t *cn = xmalloc_test(nv * 4);
    float *bi = xmalloc_test(nv * 4);
    for (int r = 0; r < n_rows; r++) {
        hp[r] = to_dev_params(&rows[r].p);
        densify(&rows[r], V, ip + (size_t)r * V, cn + (size_t)r * V, bi + (size_t)r * V);
    }
    d->logits = dev_new(logits, nv * 4);
    d->params = dev_new(hp, (size_t)n_rows * sizeof(*hp));
    d->in_prompt = dev_new(ip, nv);
    d->counts = dev_new(cn, nv * 4);
    d->bias = dev_new(bi, nv * 4);
    d->rng = dev_new(rng_state, (size_t)n_rows * 8);
    assert_int_equal(ql_cuda_sample_work_bytes(n_rows, V, &d->work_bytes), 0);
    d->work = dev_new(NULL, d->work_bytes);
    free(hp), free(ip), free(cn), free(bi);
}

static ql_cuda_sample_args_t samp_args(const samp_dev_t *d) {
    ql_cuda_sample_args_t a = {.logits = d->logits, .n_rows = d->n_rows, .n_vocab = d->V,
                               .params = d->params, .in_prompt = d->in_prompt,
                               .out_counts = d->counts, .bias = d->bias, .rng = d->rng,
                               .work = d->work, .work_bytes = d->work_bytes};
    return a;
}

static void samp_dev_free(samp_dev_t *d) {
    ql_cuda_mem_free(d->logits), ql_cuda_mem_free(d->params), ql_cuda_mem_free(d->in_prompt);
    ql_cuda_mem_free(d->counts), ql_cuda_mem_free(d->bias), ql_cuda_mem_free(d->rng);
    ql_cuda_mem_free(d->work);
}

/* Device probs against ql_sampler_probs; device draws against the host's walk with the
 * same uniform; greedy rows exact; the generator advanced once per sampled row. */
static void test_sampling_vs_host(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 16;
    const int32_t vocabs[] = {1, 7, 1000, 49152};
    for (size_t vi = 0; vi < QL_ARRAY_LEN(vocabs); vi++) {
        const int32_t V = vocabs[vi];
        const int n_rows = V == 1 ? 3 : 64;
        const size_t nv = (size_t)n_rows * V;
        samp_row_t *rows = xmalloc_test((size_t)n_rows * sizeof(*rows));
        make_sampling_rows(rows, n_rows, V, &rng);
        float *logits = xmalloc_test(nv * 4);
        for (size_t i = 0; i < nv; i++) logits[i] = rng_f(&rng, -8, 8);
        /* ties at the max (greedy takes the lowest id) and a masked token */
        if (V > 10) {
            for (int r = 0; r < n_rows; r += 4) {
                logits[(size_t)r * V + 3] = 9.0f;
                logits[(size_t)r * V + 7] = 9.0f;
                logits[(size_t)r * V + 9] = -INFINITY;
            }
        }
        uint64_t *rs = xmalloc_test((size_t)n_rows * 8);
        for (int r = 0; r < n_rows; r++) rs[r] = rows[r].p.seed;
        samp_dev_t d;
        samp_dev_init(&d, rows, n_rows, V, logits, rs);
        ql_cuda_sample_args_t a = samp_args(&d);

        /* the distributions */
        float *probs = dev_new(NULL, nv * 4);
        float *got = xmalloc_test(nv * 4), *ref = xmalloc_test(nv * 4);
        assert_int_equal(ql_cuda_sample_probs(&a, probs, NULL), 0);
        dev_get(got, probs, nv * 4);
        ql_sampler_ws_t *ws = NULL;
        assert_int_equal(ql_sampler_ws_init(V, &ws), 0);
        float *pre = xmalloc_test((size_t)V * 4);
        int32_t *ord = xmalloc_test((size_t)V * 4);
        int n_near = 0;
        int *near_row = xmalloc_test((size_t)n_rows * sizeof(int));
        double max_d = 0.0;
        char what[64];
        snprintf(what, sizeof(what), "sample_probs V=%d", (int)V);
        for (int r = 0; r < n_rows; r++) {
            const float *lr = logits + (size_t)r * V;
            float *rr = ref + (size_t)r * V, *gr = got + (size_t)r * V;
            ql_sampling_history_t h = {rows[r].hist, rows[r].n_hist, rows[r].n_prompt};
            ql_sampler_t s;
            assert_int_equal(ql_sampler_init(&s, &rows[r].p, V), 0);
            assert_int_equal(ql_sampler_probs(&s, ws, lr, &h, rr), 0);
            /* NOTE(walk-f32) in cuda/k-sample.cu: a cut (top-p's mass, min-p's ratio) may
             * fall on the other side of a token only when that token sits within f32
             * rounding of the threshold. Such rows are found from the host's distributions
             * before the cut and left out (a few at most); every other row must keep the
             * same tokens with the same probabilities. */
            int near = 0;
            const ql_sampling_params_t *p = &rows[r].p;
            if (p->temperature > 0.0f && p->top_p < 1.0f) {
                ql_sampling_params_t q = *p;
                q.top_p = 1.0f, q.min_p = 0.0f;
                assert_int_equal(ql_sampler_init(&s, &q, V), 0);
                assert_int_equal(ql_sampler_probs(&s, ws, lr, &h, pre), 0);
                int32_t n = 0;
                for (int32_t i = 0; i < V; i++)
                    if (pre[i] > 0.0f) ord[n++] = i;
                for (int32_t i = 1; i < n; i++) { /* by probability, descending */
                    const int32_t x = ord[i];
                    int32_t j = i;
                    while (j > 0 && pre[ord[j - 1]] < pre[x]) ord[j] = ord[j - 1], j--;
                    ord[j] = x;
                }
                double cum = 0.0;
                for (int32_t i = 0; i < n; i++) {
                    const double before = cum;
                    cum += pre[ord[i]];
                    if (fabs(cum - p->top_p) < 1e-5 || fabs(before - p->top_p) < 1e-5) near = 1;
                    if (cum >= p->top_p) break;
                }
            }
            if (p->temperature > 0.0f && p->min_p > 0.0f) {
                ql_sampling_params_t q = *p;
                q.min_p = 0.0f;
                assert_int_equal(ql_sampler_init(&s, &q, V), 0);
                assert_int_equal(ql_sampler_probs(&s, ws, lr, &h, pre), 0);
                float pmax = 0.0f;
                for (int32_t i = 0; i < V; i++) pmax = fmaxf(pmax, pre[i]);
                for (int32_t i = 0; i < V; i++)
                    if (pre[i] > 0.0f && fabs(pre[i] / pmax / p->min_p - 1.0) < 1e-5) near = 1;
            }
            near_row[r] = near;
            if (near) {
                n_near++;
                continue;
            }
            for (int32_t i = 0; i < V; i++)
                if ((gr[i] > 0.0f) != (rr[i] > 0.0f))
                    fail_msg("%s row %d: token %d kept on one side only (device %g, host %g)",
                             what, r, (int)i, (double)gr[i], (double)rr[i]);
            /* expf 2 ulp vs < 1 ulp and f32 vs double sums over up to 49k weights: ~1e-6
             * relative; 1e-4 leaves room, atol 1e-7 for the tail */
            max_d = fmax(max_d, check_close_p(what, gr, rr, V, 1e-7, 1e-4, 0));
        }
        printf("    %-40s max |diff| %.3g; %d of %d rows within rounding of a cut, left out\n",
               what, max_d, n_near, n_rows);
        assert_true(n_near <= 2);
        free(pre), free(ord);

        /* draws: replay each row's uniform on the host and walk the host's distribution */
        int32_t *d_tok = dev_new(NULL, (size_t)n_rows * 4);
        int32_t *tok = xmalloc_test((size_t)n_rows * 4), *order = xmalloc_test((size_t)V * 4);
        uint64_t *rs_after = xmalloc_test((size_t)n_rows * 8);
        assert_int_equal(ql_cuda_sample_rows(&a, d_tok, NULL), 0);
        dev_get(tok, d_tok, (size_t)n_rows * 4);
        dev_get(rs_after, d.rng, (size_t)n_rows * 8);
        for (int r = 0; r < n_rows; r++) {
            const ql_sampling_params_t *p = &rows[r].p;
            const float *pr = ref + (size_t)r * V;
            uint64_t st = rs[r];
            if (p->temperature == 0.0f) {
                /* greedy: exactly the host sampler's token, and no draw */
                ql_sampler_t s;
                assert_int_equal(ql_sampler_init(&s, p, V), 0);
                ql_sampling_history_t h = {rows[r].hist, rows[r].n_hist, rows[r].n_prompt};
                ql_sample_result_t res;
                assert_int_equal(ql_sampler_sample(&s, ws, logits + (size_t)r * V, &h, &res), 0);
                assert_int_equal(tok[r], res.token);
                assert_true(rs_after[r] == rs[r]);
                continue;
            }
            const double u = ql_cuda_rng_uniform(&st);
            assert_true(rs_after[r] == st); /* one draw */
            assert_true(tok[r] >= 0 && tok[r] < V);
            if (near_row[r]) continue; /* the host's kept set is not the device's */
            const int sorted = (p->top_k > 0 && p->top_k < V) || p->top_p < 1.0f;
            const int32_t want = host_walk(pr, V, sorted, u, order);
            /* the same token unless u lies within f32 rounding of a boundary */
            if (tok[r] != want) {
                const int32_t lo = host_walk(pr, V, sorted, fmax(0.0, u - 1e-5), order);
                const int32_t hi = host_walk(pr, V, sorted, fmin(1.0 - 1e-12, u + 1e-5), order);
                if (tok[r] != lo && tok[r] != hi)
                    fail_msg("V=%d row %d: device drew %d, the host's walk %d (u %.9f)", (int)V, r,
                             (int)tok[r], (int)want, u);
            }
            assert_true(tok[r] >= 0 && tok[r] < V && pr[tok[r]] > 0.0f);
        }
        ql_sampler_ws_free(ws);
        ql_cuda_mem_free(probs), ql_cuda_mem_free(d_tok);
        samp_dev_free(&d);
        free(rows), free(logits), free(rs), free(got), free(ref), free(tok), free(order);
        free(rs_after);
        free(near_row);
    }
}

/* Seeded draws are reproducible; NaN and all-banned rows are reported per row. */
static void test_sampling_seeded_and_errors(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 17;
    const int32_t V = 5000;
    const int n_rows = 16;
    samp_row_t *rows = xmalloc_test((size_t)n_rows * sizeof(*rows));
    make_sampling_rows(rows, n_rows, V, &rng);
    for (int r = 0; r < n_rows; r++) rows[r].p.temperature = r == 0 ? 0.0f : 1.0f;
    float *logits = xmalloc_test((size_t)n_rows * V * 4);
    for (int64_t i = 0; i < (int64_t)n_rows * V; i++) logits[i] = rng_f(&rng, -3, 3);
    logits[(size_t)14 * V + 17] = NAN;      /* row 14: a backend bug */
    logits[(size_t)13 * V + 18] = INFINITY; /* row 13 too */
    for (int32_t i = 0; i < V; i++) logits[(size_t)15 * V + i] = -INFINITY; /* nothing left */
    uint64_t rs[16];
    for (int r = 0; r < n_rows; r++) rs[r] = 77 + (uint64_t)r;
    samp_dev_t d;
    samp_dev_init(&d, rows, n_rows, V, logits, rs);
    ql_cuda_sample_args_t a = samp_args(&d);
    int32_t *d_tok = dev_new(NULL, (size_t)n_rows * 4);
    int32_t first[16][8], again[16][8];
    for (int k = 0; k < 8; k++) {
        assert_int_equal(ql_cuda_sample_rows(&a, d_tok, NULL), 0);
        int32_t tok[16];
        dev_get(tok, d_tok, sizeof(tok));
        for (int r = 0; r < n_rows; r++) first[r][k] = tok[r];
    }
    assert_int_equal(ql_cuda_mem_upload(d.rng, rs, sizeof(rs)), 0); /* the same seeds */
    for (int k = 0; k < 8; k++) {
        assert_int_equal(ql_cuda_sample_rows(&a, d_tok, NULL), 0);
        int32_t tok[16];
        dev_get(tok, d_tok, sizeof(tok));
        for (int r = 0; r < n_rows; r++) again[r][k] = tok[r];
    }
    assert_memory_equal(first, again, sizeof(first));
    /* 8 draws of a 5000-token distribution at temperature 1 do not all agree by chance */
    int varied = 0;
    for (int k = 1; k < 8; k++) varied |= first[3][k] != first[3][0];
    assert_true(varied);
    for (int k = 0; k < 8; k++) {
        assert_int_equal(first[14][k], QL_CUDA_SAMPLE_NAN);
        assert_int_equal(first[13][k], QL_CUDA_SAMPLE_NAN);
        assert_int_equal(first[15][k], QL_CUDA_SAMPLE_NONE);
        for (int r = 0; r < 13; r++) assert_true(first[r][k] >= 0 && first[r][k] < V);
    }
    /* the probs of those rows are NaN */
    float *probs = dev_new(NULL, (size_t)n_rows * V * 4);
    float *got = xmalloc_test((size_t)n_rows * V * 4);
    assert_int_equal(ql_cuda_sample_probs(&a, probs, NULL), 0);
    dev_get(got, probs, (size_t)n_rows * V * 4);
    for (int r = 13; r < 16; r++)
        for (int32_t i = 0; i < V; i++) assert_true(isnan(got[(size_t)r * V + i]));
    /* scratch too small */
    a.work_bytes = d.work_bytes - 1;
    assert_int_equal(ql_cuda_sample_rows(&a, d_tok, NULL), QL_EINVAL);
    ql_cuda_mem_free(d_tok), ql_cuda_mem_free(probs);
    samp_dev_free(&d);
    free(rows), free(logits), free(got);
}

/* Chi-square statistic's critical value at upper tail 1e-4 (z = 3.719), Wilson-Hilferty:
 * within 1% of the exact quantile for df >= 1. */
static double chi2_crit(int df) {
    const double z = 3.719, a = 2.0 / (9.0 * df);
    const double c = 1.0 - a + z * sqrt(a);
    return df * c * c * c;
}

/* Counts of n draws against probabilities p[V]: tokens with p = 0 must never appear. */
static void chi2_check(const char *what, const int64_t *counts, const float *p, int32_t V,
                       int64_t n) {
    double chi = 0.0;
    int df = -1;
    for (int32_t i = 0; i < V; i++) {
        if (p[i] <= 0.0f) {
            if (counts[i] != 0) fail_msg("%s: token %d has p = 0 but was drawn %lld times", what,
                                         (int)i, (long long)counts[i]);
            continue;
        }
        const double e = (double)n * p[i];
        chi += ((double)counts[i] - e) * ((double)counts[i] - e) / e;
        df++;
    }
    if (df < 1) return; /* one possible token: nothing to test beyond the zeros */
    const double crit = chi2_crit(df);
    printf("    %-40s chi2 %.2f, df %d, crit(1e-4) %.2f, n %lld\n", what, chi, df, crit,
           (long long)n);
    assert_true(chi < crit);
}

/* The draws follow the host's distribution: temperature, top-k, top-p, min-p, penalties on
 * a small vocabulary, 64 seeds × 200 draws each. */
static void test_sampling_chi2(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 18;
    const int32_t V = 10;
    const int n_rows = 64, n_calls = 200;
    const float base[10] = {2.0f, 1.5f, 1.4f, 1.0f, 0.7f, 0.5f, 0.2f, 0.0f, -0.3f, -0.5f};
    const struct {
        const char *name;
        float t, top_p, min_p;
        int32_t top_k;
        float rep;
    } cfgs[] = {
        {"temperature 0.7", 0.7f, 1.0f, 0.0f, 0, 1.0f},
        {"temperature 1.3, top-k 4", 1.3f, 1.0f, 0.0f, 4, 1.0f},
        {"top-p 0.8", 1.0f, 0.8f, 0.0f, 0, 1.0f},
        {"min-p 0.3, top-k 7", 1.0f, 1.0f, 0.3f, 7, 1.0f},
        {"top-p 0.9, repetition 1.3", 0.9f, 0.9f, 0.0f, 0, 1.3f},
    };
    for (size_t c = 0; c < QL_ARRAY_LEN(cfgs); c++) {
        samp_row_t *rows = xmalloc_test((size_t)n_rows * sizeof(*rows));
        float *logits = xmalloc_test((size_t)n_rows * V * 4);
        uint64_t *rs = xmalloc_test((size_t)n_rows * 8);
        for (int r = 0; r < n_rows; r++) {
            memset(&rows[r], 0, sizeof(rows[r]));
            rows[r].p = ql_sampling_params_default();
            rows[r].p.temperature = cfgs[c].t;
            rows[r].p.top_p = cfgs[c].top_p;
            rows[r].p.min_p = cfgs[c].min_p;
            rows[r].p.top_k = cfgs[c].top_k;
            rows[r].p.repetition_penalty = cfgs[c].rep;
            if (cfgs[c].rep != 1.0f) { /* tokens 0 and 4 in the prompt, 4 generated twice */
                rows[r].hist[0] = 0, rows[r].hist[1] = 4, rows[r].hist[2] = 4, rows[r].hist[3] = 4;
                rows[r].n_hist = 4, rows[r].n_prompt = 2;
            }
            memcpy(logits + (size_t)r * V, base, sizeof(base));
            rs[r] = rng_next(&rng);
        }
        float p[10];
        ql_sampler_ws_t *ws = NULL;
        assert_int_equal(ql_sampler_ws_init(V, &ws), 0);
        ql_sampler_t s;
        assert_int_equal(ql_sampler_init(&s, &rows[0].p, V), 0);
        ql_sampling_history_t h = {rows[0].hist, rows[0].n_hist, rows[0].n_prompt};
        assert_int_equal(ql_sampler_probs(&s, ws, base, &h, p), 0);
        ql_sampler_ws_free(ws);
        samp_dev_t d;
        samp_dev_init(&d, rows, n_rows, V, logits, rs);
        ql_cuda_sample_args_t a = samp_args(&d);
        int32_t *d_tok = dev_new(NULL, (size_t)n_rows * 4);
        int64_t counts[10] = {0};
        for (int k = 0; k < n_calls; k++) {
            int32_t tok[64];
            assert_int_equal(ql_cuda_sample_rows(&a, d_tok, NULL), 0);
            dev_get(tok, d_tok, sizeof(tok));
            for (int r = 0; r < n_rows; r++) {
                assert_true(tok[r] >= 0 && tok[r] < V);
                counts[tok[r]]++;
            }
        }
        chi2_check(cfgs[c].name, counts, p, V, (int64_t)n_rows * n_calls);
        ql_cuda_mem_free(d_tok);
        samp_dev_free(&d);
        free(rows), free(logits), free(rs);
    }
}

/* ---- speculative accept / reject ---- */

static void random_dist(float *p, int32_t V, uint64_t *rng, float floor_p) {
    double z = 0.0;
    for (int32_t i = 0; i < V; i++) z += (p[i] = floor_p + rng_f(rng, 0.0f, 1.0f));
    for (int32_t i = 0; i < V; i++) p[i] = (float)(p[i] / z);
}

static int32_t host_argmax(const float *p, int32_t V) {
    int32_t a = 0;
    for (int32_t i = 1; i < V; i++)
        if (p[i] > p[a]) a = i;
    return a;
}

static int32_t draw(const float *p, int32_t V, uint64_t *rng) {
    const double u = (double)(rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
    double cum = 0.0;
    for (int32_t i = 0; i < V; i++)
        if (u < (cum += p[i])) return i;
    return V - 1;
}

/* Temperature 0: accept exactly the drafts that are the target's argmax, then its argmax. */
static void test_spec_greedy(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 19;
    const int32_t V = 3001, K = 4, S = 40;
    float *p = xmalloc_test((size_t)S * (K + 1) * V * 4);
    int32_t draft[40 * 4], n_draft[40], greedy[40], want_n[40], want_tok[40][5];
    uint64_t rs[40];
    for (int s = 0; s < S; s++) {
        for (int i = 0; i <= K; i++) random_dist(p + ((size_t)s * (K + 1) + i) * V, V, &rng, 0.0f);
        n_draft[s] = s % (K + 1);
        greedy[s] = 1;
        rs[s] = (uint64_t)s;
        const int agree = rng_i(&rng, K + 1); /* drafts agreeing with the argmax first */
        int n_acc = 0, stop = 0;
        for (int i = 0; i <= K; i++) want_tok[s][i] = -1;
        for (int i = 0; i < K; i++) {
            const int32_t am = host_argmax(p + ((size_t)s * (K + 1) + i) * V, V);
            draft[s * K + i] = i < agree ? am : (am + 1 + rng_i(&rng, V - 1)) % V;
            if (i >= n_draft[s] || stop) continue;
            if (draft[s * K + i] == am) {
                want_tok[s][n_acc++] = am;
            } else {
                want_tok[s][n_acc] = am;
                stop = 1;
            }
        }
        if (!stop) want_tok[s][n_acc] = host_argmax(p + ((size_t)s * (K + 1) + n_acc) * V, V);
        want_n[s] = n_acc;
    }
    n_draft[S - 1] = K + 1; /* more drafts than k_max: refused per row */
    float *d_p = dev_new(p, (size_t)S * (K + 1) * V * 4);
    int32_t *d_draft = dev_new(draft, sizeof(draft)), *d_nd = dev_new(n_draft, sizeof(n_draft));
    int32_t *d_gr = dev_new(greedy, sizeof(greedy));
    uint64_t *d_rng = dev_new(rs, sizeof(rs));
    int32_t *d_nacc = dev_new(NULL, S * 4), *d_tok = dev_new(NULL, (size_t)S * (K + 1) * 4);
    ql_cuda_spec_args_t a = {.p = d_p, .q = NULL, .draft = d_draft, .n_draft = d_nd,
                             .greedy = d_gr, .rng = d_rng, .n_seqs = S, .k_max = K, .n_vocab = V};
    assert_int_equal(ql_cuda_spec_verify(&a, d_nacc, d_tok, NULL), 0);
    int32_t nacc[40], tok[40][5];
    uint64_t rs_after[40];
    dev_get(nacc, d_nacc, sizeof(nacc));
    dev_get(tok, d_tok, sizeof(tok));
    dev_get(rs_after, d_rng, sizeof(rs_after));
    for (int s = 0; s < S - 1; s++) {
        assert_int_equal(nacc[s], want_n[s]);
        for (int i = 0; i <= K; i++) assert_int_equal(tok[s][i], want_tok[s][i]);
        assert_true(rs_after[s] == rs[s]); /* greedy draws nothing */
    }
    assert_int_equal(nacc[S - 1], -1);
    printf("    spec greedy: %d sequences exact\n", S - 1);
    ql_cuda_mem_free(d_p), ql_cuda_mem_free(d_draft), ql_cuda_mem_free(d_nd);
    ql_cuda_mem_free(d_gr);
    ql_cuda_mem_free(d_rng), ql_cuda_mem_free(d_nacc), ql_cuda_mem_free(d_tok);
    free(p);
}

/* The walk of scheduler/spec.c: the first token of non-zero weight whose cumulative weight
 * passes target, else the last of non-zero weight. */
static int32_t walk_ids(const float *w, int32_t n, double target) {
    double cum = 0.0;
    int32_t tok = -1;
    for (int32_t t = 0; t < n; t++) {
        if (w[t] <= 0.0f) continue;
        cum += w[t];
        tok = t;
        if (target < cum) break;
    }
    return tok;
}

/* Sampled accept/reject replayed on the host from the same generator states: the same
 * decisions, draws and tokens (the correction's walk up to f32 rounding of its target). */
static void test_spec_replay(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 21;
    const int32_t V = 50, K = 3, S = 256;
    const size_t np = (size_t)S * (K + 1) * V, nq = (size_t)S * K * V;
    float *p = xmalloc_test(np * 4), *q = xmalloc_test(nq * 4), *r = xmalloc_test((size_t)V * 4);
    int32_t *draft = xmalloc_test((size_t)S * K * 4), *n_draft = xmalloc_test((size_t)S * 4);
    int32_t *greedy = xmalloc_test((size_t)S * 4), *nacc = xmalloc_test((size_t)S * 4);
    int32_t *tok = xmalloc_test((size_t)S * (K + 1) * 4);
    uint64_t *rs = xmalloc_test((size_t)S * 8), *rs_after = xmalloc_test((size_t)S * 8);
    for (int s = 0; s < S; s++) {
        for (int i = 0; i <= K; i++) random_dist(p + ((size_t)s * (K + 1) + i) * V, V, &rng, 0.0f);
        for (int i = 0; i < K; i++) {
            float *qi = q + ((size_t)s * K + i) * V;
            random_dist(qi, V, &rng, 0.0f);
            draft[s * K + i] = draw(qi, V, &rng);
        }
        /* p close to q on some sequences, so that both accepts and rejects are common */
        if (s % 2)
            for (int i = 0; i < K; i++)
                memcpy(p + ((size_t)s * (K + 1) + i) * V, q + ((size_t)s * K + i) * V,
                       (size_t)V * 4);
        n_draft[s] = rng_i(&rng, K + 1);
        greedy[s] = 0;
        rs[s] = rng_next(&rng);
    }
    float *d_p = dev_new(p, np * 4), *d_q = dev_new(q, nq * 4);
    int32_t *d_draft = dev_new(draft, (size_t)S * K * 4), *d_nd = dev_new(n_draft, (size_t)S * 4);
    int32_t *d_gr = dev_new(greedy, (size_t)S * 4);
    uint64_t *d_rng = dev_new(rs, (size_t)S * 8);
    int32_t *d_nacc = dev_new(NULL, (size_t)S * 4), *d_tok = dev_new(NULL, (size_t)S * (K + 1) * 4);
    ql_cuda_spec_args_t a = {.p = d_p, .q = d_q, .draft = d_draft, .n_draft = d_nd, .greedy = d_gr,
                             .rng = d_rng, .n_seqs = S, .k_max = K, .n_vocab = V};
    assert_int_equal(ql_cuda_spec_verify(&a, d_nacc, d_tok, NULL), 0);
    dev_get(nacc, d_nacc, (size_t)S * 4);
    dev_get(tok, d_tok, (size_t)S * (K + 1) * 4);
    dev_get(rs_after, d_rng, (size_t)S * 8);
    int n_rejected = 0, n_all = 0;
    for (int s = 0; s < S; s++) {
        uint64_t st = rs[s];
        int32_t i = 0, last = -1;
        double target = 0.0, z = 0.0;
        const float *w = NULL;
        for (; i < n_draft[s]; i++) {
            const float *pi = p + ((size_t)s * (K + 1) + i) * V, *qi = q + ((size_t)s * K + i) * V;
            const int32_t x = draft[s * K + i];
            const double u = ql_cuda_rng_uniform(&st);
            if (qi[x] > 0.0f && u * (double)qi[x] < (double)pi[x]) continue;
            z = 0.0;
            for (int32_t t = 0; t < V; t++) z += (r[t] = fmaxf(0.0f, pi[t] - qi[t]));
            w = r;
            if (!(z > 0.0)) {
                w = pi, z = 0.0;
                for (int32_t t = 0; t < V; t++) z += pi[t];
            }
            target = ql_cuda_rng_uniform(&st) * z;
            last = walk_ids(w, V, target);
            n_rejected++;
            break;
        }
        if (i == n_draft[s]) { /* the bonus token from p_k */
            w = p + ((size_t)s * (K + 1) + i) * V;
            z = 0.0;
            for (int32_t t = 0; t < V; t++) z += w[t];
            target = ql_cuda_rng_uniform(&st) * z;
            last = walk_ids(w, V, target);
            n_all++;
        }
        assert_int_equal(nacc[s], i);
        assert_true(rs_after[s] == st); /* the same number of draws */
        for (int32_t j = 0; j < i; j++) assert_int_equal(tok[s * (K + 1) + j], draft[s * K + j]);
        const int32_t got = tok[s * (K + 1) + i];
        if (got != last && got != walk_ids(w, V, target - 1e-5 * z) &&
            got != walk_ids(w, V, target + 1e-5 * z))
            fail_msg("seq %d: device emitted %d at %d, the replay %d", s, (int)got, (int)i,
                     (int)last);
        for (int32_t j = i + 1; j <= K; j++) assert_int_equal(tok[s * (K + 1) + j], -1);
    }
    printf("    spec replay: %d sequences, %d with a rejection, %d all accepted\n", S, n_rejected,
           n_all);
    assert_true(n_rejected > 20 && n_all > 20); /* both paths taken */
    ql_cuda_mem_free(d_p), ql_cuda_mem_free(d_q), ql_cuda_mem_free(d_draft), ql_cuda_mem_free(d_nd);
    ql_cuda_mem_free(d_gr), ql_cuda_mem_free(d_rng), ql_cuda_mem_free(d_nacc);
    ql_cuda_mem_free(d_tok);
    free(p), free(q), free(r), free(draft), free(n_draft), free(greedy), free(nacc), free(tok);
    free(rs), free(rs_after);
}

/* Sampled: the first emitted token follows p_0, and the second, given the first draft was
 * accepted, follows p_1; with a drafter's q and with a deterministic drafter (q NULL). */
static void test_spec_distribution(void **state) {
    (void)state;
    NEED_DEVICE();
    uint64_t rng = 20;
    const int32_t V = 6, K = 2, S = 4096, rounds = 4;
    float pt[3][6], qt[2][6];
    for (int i = 0; i <= K; i++) random_dist(pt[i], V, &rng, 0.1f);
    for (int i = 0; i < K; i++) random_dist(qt[i], V, &rng, 0.1f);
    pt[0][5] = 0.0f; /* a token the target never emits (renormalised below) */
    {
        double z = 0.0;
        for (int j = 0; j < V; j++) z += pt[0][j];
        for (int j = 0; j < V; j++) pt[0][j] = (float)(pt[0][j] / z);
    }
    float *p = xmalloc_test((size_t)S * (K + 1) * V * 4), *q = xmalloc_test((size_t)S * K * V * 4);
    for (int s = 0; s < S; s++) {
        memcpy(p + (size_t)s * (K + 1) * V, pt, sizeof(pt));
        memcpy(q + (size_t)s * K * V, qt, sizeof(qt));
    }
    int32_t *draft = xmalloc_test((size_t)S * K * 4), *n_draft = xmalloc_test((size_t)S * 4);
    int32_t *greedy = xmalloc_test((size_t)S * 4), *nacc = xmalloc_test((size_t)S * 4);
    int32_t *tok = xmalloc_test((size_t)S * (K + 1) * 4);
    uint64_t *rs = xmalloc_test((size_t)S * 8);
    for (int s = 0; s < S; s++) n_draft[s] = K, greedy[s] = 0, rs[s] = rng_next(&rng);
    float *d_p = dev_new(p, (size_t)S * (K + 1) * V * 4), *d_q = dev_new(q, (size_t)S * K * V * 4);
    int32_t *d_draft = dev_new(NULL, (size_t)S * K * 4), *d_nd = dev_new(n_draft, (size_t)S * 4);
    int32_t *d_gr = dev_new(greedy, (size_t)S * 4);
    uint64_t *d_rng = dev_new(rs, (size_t)S * 8);
    int32_t *d_nacc = dev_new(NULL, (size_t)S * 4), *d_tok = dev_new(NULL, (size_t)S * (K + 1) * 4);
    for (int with_q = 1; with_q >= 0; with_q--) {
        int64_t c0[6] = {0}, c1[6] = {0}, n1 = 0;
        for (int round = 0; round < rounds; round++) {
            for (int s = 0; s < S; s++)
                for (int i = 0; i < K; i++)
                    /* a drafter samples from q; a deterministic one always proposes 0 then 5 */
                    draft[s * K + i] = with_q ? draw(qt[i], V, &rng) : (i == 0 ? 0 : 5);
            assert_int_equal(ql_cuda_mem_upload(d_draft, draft, (size_t)S * K * 4), 0);
            ql_cuda_spec_args_t a = {.p = d_p, .q = with_q ? d_q : NULL, .draft = d_draft,
                                     .n_draft = d_nd, .greedy = d_gr, .rng = d_rng, .n_seqs = S,
                                     .k_max = K, .n_vocab = V};
            assert_int_equal(ql_cuda_spec_verify(&a, d_nacc, d_tok, NULL), 0);
            dev_get(nacc, d_nacc, (size_t)S * 4);
            dev_get(tok, d_tok, (size_t)S * (K + 1) * 4);
            for (int s = 0; s < S; s++) {
                assert_true(nacc[s] >= 0 && nacc[s] <= K);
                for (int i = 0; i <= K; i++) {
                    if (i <= nacc[s]) assert_true(tok[s * (K + 1) + i] >= 0);
                    else assert_int_equal(tok[s * (K + 1) + i], -1);
                }
                for (int i = 0; i < nacc[s]; i++)
                    assert_int_equal(tok[s * (K + 1) + i], draft[s * K + i]);
                c0[tok[s * (K + 1)]]++;
                if (nacc[s] >= 1) {
                    c1[tok[s * (K + 1) + 1]]++;
                    n1++;
                }
            }
        }
        chi2_check(with_q ? "spec: 1st token ~ p0 (drafter q)" : "spec: 1st token ~ p0 (q NULL)",
                   c0, pt[0], V, (int64_t)S * rounds);
        /* given the first draft accepted, the second emitted token follows p1 too */
        chi2_check(with_q ? "spec: 2nd token ~ p1 (drafter q)" : "spec: 2nd token ~ p1 (q NULL)",
                   c1, pt[1], V, n1);
    }
    ql_cuda_mem_free(d_p), ql_cuda_mem_free(d_q), ql_cuda_mem_free(d_draft), ql_cuda_mem_free(d_nd);
    ql_cuda_mem_free(d_gr), ql_cuda_mem_free(d_rng), ql_cuda_mem_free(d_nacc);
    ql_cuda_mem_free(d_tok);
    free(p), free(q), free(draft), free(n_draft), free(greedy), free(nacc), free(tok), free(rs);
}

int main(void) {
    if (ql_cuda_compiled() && ql_cuda_device_count() > 0) {
        char buf[256];
        if (ql_cuda_device_describe(0, buf, sizeof(buf)) == 0) printf("device 0: %s\n", buf);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attn_plan),
        cmocka_unit_test(test_rng_replay),
        cmocka_unit_test(test_wrapper_args),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm_residual),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_kv_write),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_swiglu_convert_softmax),
        cmocka_unit_test(test_sampling_vs_host),
        cmocka_unit_test(test_sampling_seeded_and_errors),
        cmocka_unit_test(test_sampling_chi2),
        cmocka_unit_test(test_spec_greedy),
        cmocka_unit_test(test_spec_replay),
        cmocka_unit_test(test_spec_distribution),
    };
    return cmocka_run_group_tests_name("cuda-kernels", tests, NULL, NULL);
}
