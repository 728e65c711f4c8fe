/*
 * tests/unit/cpu/test-ops.c — the reference ops of cpu/ops.c (what the CUDA kernels will be
 * tested against) against double-precision references written independently here:
 * RMSNorm, RoPE in both layouts with linear and per-frequency (llama3) scaling, softmax,
 * SwiGLU, embedding gather, and attention over the paged KV cache with scattered block
 * tables, GQA, odd shapes and unused slots full of NaN (never read).
 * u = 2^-24; each bound is derived next to its check.
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

#include "cpu/cpu-internal.h"
#include "cpu/cpu.h"
#include "model/quant.h"

#define U (1.0 / 16777216.0)

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_f(uint64_t *s, float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_next(s) >> 40) * (1.0 / 16777216.0));
}

/* ---- RMSNorm ---- */

static void test_rmsnorm(void **state) {
    (void)state;
    uint64_t rng = 1;
    const int64_t n_tok = 5, dim = 77;
    const float eps = 1e-5f;
    float x[5 * 77], w[77], y[5 * 77];
    for (int i = 0; i < n_tok * dim; i++) x[i] = rng_f(&rng, -3.0f, 3.0f);
    for (int i = 0; i < dim; i++) w[i] = rng_f(&rng, 0.5f, 1.5f);
    for (int i = 0; i < dim; i++) x[2 * dim + i] = 0.0f; /* an all-zero row: eps keeps it finite */
    ql_cpu_rmsnorm(y, x, w, n_tok, dim, eps);
    for (int64_t t = 0; t < n_tok; t++) {
        double ss = 0.0;
        for (int64_t i = 0; i < dim; i++) ss += (double)x[t * dim + i] * x[t * dim + i];
        const double scale = 1.0 / sqrt(ss / dim + (double)eps);
        for (int64_t i = 0; i < dim; i++) {
            const double ref = x[t * dim + i] * scale * w[i];
            /* x² (u each, all terms positive: u on the sum), the f32 mean (u), + eps (u),
             * sqrt (u/2 of a quantity whose error halves), 1/ (u), ·scale (u), ·w (u):
             * at most 6u relative; 8u leaves room for the O(u²) terms */
            assert_true(fabs(y[t * dim + i] - ref) <= 8.0 * U * fabs(ref));
        }
    }
    /* in place, and without a gain */
    float z[5 * 77];
    memcpy(z, x, sizeof(z));
    ql_cpu_rmsnorm(z, z, w, n_tok, dim, eps);
    assert_memory_equal(z, y, sizeof(z));
    ql_cpu_rmsnorm(z, x, NULL, 1, dim, eps);
    for (int i = 0; i < dim; i++)
        assert_true(fabsf(z[i] * w[i] - y[i]) <= 2.0f * (float)U * fabsf(y[i]) + 1e-30f);
}

/* ---- RoPE ---- */

/* Angle of pair i at pos, in double: pos · scale · base^(−2i/n_rot) / ff[i]; with YaRN
 * (NOTE(yarn) in cpu/cpu.h) blended with the unscaled angle by the ramp over corr_dims. */
static double angle(const ql_rope_params_t *p, int32_t pos, int i) {
    const double ff = p->freq_factors ? p->freq_factors[i] : 1.0;
    const double extrap = (double)pos * pow(p->freq_base, -2.0 * i / p->n_rot) / ff;
    const double interp = p->freq_scale * extrap;
    if (p->ext_factor == 0.0f) return interp;
    const double y = (i - p->corr_dims[0]) / fmax(0.001, p->corr_dims[1] - p->corr_dims[0]);
    const double ramp = (1.0 - fmin(1.0, fmax(0.0, y))) * p->ext_factor;
    return interp * (1.0 - ramp) + extrap * ramp;
}

/* The factor cos and sin are multiplied by. */
static double magnitude(const ql_rope_params_t *p) {
    const double m = p->mscale != 0.0f ? p->mscale : 1.0;
    return p->ext_factor != 0.0f ? m * (1.0 + 0.1 * log(1.0 / p->freq_scale)) : m;
}

static void check_rope(const ql_rope_params_t *p, int head_dim, int n_head, const int32_t *pos,
                       int n_tok) {
    uint64_t rng = 3;
    const int n = n_tok * n_head * head_dim;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (int i = 0; i < n; i++) x[i] = rng_f(&rng, -2.0f, 2.0f);
    memcpy(y, x, sizeof(float) * n);
    ql_cpu_rope(p, y, pos, n_tok, n_head, head_dim);
    for (int t = 0; t < n_tok; t++) {
        for (int h = 0; h < n_head; h++) {
            const float *xh = x + ((int64_t)t * n_head + h) * head_dim,
                        *yh = y + ((int64_t)t * n_head + h) * head_dim;
            for (int i = 0; i < p->n_rot / 2; i++) {
                const int a = p->mode == QL_ROPE_MODE_NEOX ? i : 2 * i;
                const int b = p->mode == QL_ROPE_MODE_NEOX ? i + p->n_rot / 2 : 2 * i + 1;
                const double th = angle(p, pos[t], i), g = magnitude(p);
                const double r0 = g * (xh[a] * cos(th) - xh[b] * sin(th)),
                             r1 = g * (xh[a] * sin(th) + xh[b] * cos(th));
                /* NOTE(rope-theta): the angle is pos·s^i by i f32 multiplications after a
                 * powf (<= 1 ulp) and a divide and scale (2u): |Δθ| <= θ·(i + 4)·u. cosf and
                 * sinf add u each, the products and sum 2u·(|x0| + |x1|):
                 * |Δy| <= (|x0| + |x1|)·(|Δθ| + 4u). YaRN's blend adds 3u of θ, its
                 * magnitude (a logf, an add, a multiply) 4u more of the result. */
                const double m = fabs(xh[a]) + fabs(xh[b]);
                const double bound = g * m * (fabs(th) * (i + 7) * U + 8.0 * U) + 1e-30;
                if (fabs(yh[a] - r0) > bound || fabs(yh[b] - r1) > bound)
                    fail_msg("rope mode %d pos %d pair %d: (%g, %g) vs (%g, %g), bound %g", p->mode,
                             pos[t], i, yh[a], yh[b], r0, r1, bound);
            }
            for (int i = p->n_rot; i < head_dim; i++)
                assert_memory_equal(&yh[i], &xh[i], 4); /* not rotated */
        }
    }
    free(x);
    free(y);
}

static void test_rope(void **state) {
    (void)state;
    const int32_t pos[] = {0, 1, 2, 17, 100, 1023, 4095, 32767};
    const int n_tok = (int)QL_ARRAY_LEN(pos);
    float ff[32];
    for (int i = 0; i < 32; i++)
        ff[i] = i < 8 ? 1.0f : i < 20 ? 1.0f + (float)(i - 8) * 0.5f : 8.0f;
    for (int mode = 0; mode <= 1; mode++) {
        ql_rope_params_t p = {.mode = mode, .n_rot = 64, .freq_base = 10000.0f, .freq_scale = 1.0f};
        check_rope(&p, 64, 3, pos, n_tok);
        p.freq_base = 100000.0f; /* SmolLM2 */
        check_rope(&p, 64, 2, pos, n_tok);
        p.freq_scale = 0.25f; /* linear scaling */
        check_rope(&p, 64, 2, pos, n_tok);
        p.freq_scale = 1.0f;
        p.freq_base = 500000.0f;
        p.freq_factors = ff; /* llama3 */
        check_rope(&p, 64, 2, pos, n_tok);
        ql_rope_params_t partial = {
            .mode = mode, .n_rot = 32, .freq_base = 10000.0f, .freq_scale = 1.0f};
        check_rope(&partial, 48, 2, pos, n_tok); /* rotary on part of the head */
        /* YaRN, factor 4 over an original context of 4096 (ramp over pairs 10..23), and a
         * rope attn_factor */
        ql_rope_params_t y = {.mode = mode, .n_rot = 64, .freq_base = 10000.0f, .freq_scale = 0.25f,
                              .ext_factor = 1.0f};
        ql_rope_yarn_corr_dims(64, 4096, 10000.0f, 32.0f, 1.0f, y.corr_dims);
        check_rope(&y, 64, 2, pos, n_tok);
        y.mscale = 0.5f;
        check_rope(&y, 64, 2, pos, n_tok);
    }
    /* YaRN's correction range, against values worked out by hand from
     * n_rot·ln(n_ctx_orig / (2π·β)) / (2·ln base): 32 dims, 64 positions, base 1e4:
     * β 32 → −1.98 → 0, β 1 → 4.03 → 5; 128 dims, 32768 positions, base 1e6 (a Qwen
     * long-context config): 23.60 → 23, 39.65 → 40; 64 dims, 4096, 1e4: 10.47 → 10,
     * 22.51 → 23; 16 dims, 2^30, 1e4: 16.47 → 17, clamped to 15 */
    float cd[2];
    ql_rope_yarn_corr_dims(32, 64, 10000.0f, 32.0f, 1.0f, cd);
    assert_true(cd[0] == 0.0f && cd[1] == 5.0f);
    ql_rope_yarn_corr_dims(128, 32768, 1000000.0f, 32.0f, 1.0f, cd);
    assert_true(cd[0] == 23.0f && cd[1] == 40.0f);
    ql_rope_yarn_corr_dims(64, 4096, 10000.0f, 32.0f, 1.0f, cd);
    assert_true(cd[0] == 10.0f && cd[1] == 23.0f);
    ql_rope_yarn_corr_dims(16, 1 << 30, 10000.0f, 32.0f, 1.0f, cd);
    assert_true(cd[1] == 15.0f);
    /* the two layouts are one rotation under a permutation of the head, to the bit */
    const int hd = 64, nh = 2;
    float a[128], b[128], c[128];
    uint64_t rng = 9;
    for (int i = 0; i < hd * nh; i++) a[i] = rng_f(&rng, -1.0f, 1.0f);
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < hd / 2; i++) {
            b[h * hd + i] = a[h * hd + 2 * i];
            b[h * hd + i + hd / 2] = a[h * hd + 2 * i + 1];
        }
    ql_rope_params_t pn = {
        .mode = QL_ROPE_MODE_NORM, .n_rot = hd, .freq_base = 10000.0f, .freq_scale = 1.0f};
    ql_rope_params_t px = pn;
    px.mode = QL_ROPE_MODE_NEOX;
    const int32_t p77 = 77;
    ql_cpu_rope(&pn, a, &p77, 1, nh, hd);
    ql_cpu_rope(&px, b, &p77, 1, nh, hd);
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < hd / 2; i++) {
            c[h * hd + i] = a[h * hd + 2 * i];
            c[h * hd + i + hd / 2] = a[h * hd + 2 * i + 1];
        }
    assert_memory_equal(b, c, sizeof(float) * hd * nh);
}

/* ---- softmax, SwiGLU ---- */

static void test_softmax_swiglu(void **state) {
    (void)state;
    uint64_t rng = 4;
    enum { R = 3, N = 257 };
    float x[R * N], y[R * N];
    for (int i = 0; i < R * N; i++) x[i] = rng_f(&rng, -20.0f, 20.0f);
    memcpy(y, x, sizeof(x));
    ql_cpu_softmax(y, R, N);
    for (int r = 0; r < R; r++) {
        double mx = -INFINITY, sum = 0.0;
        for (int i = 0; i < N; i++) mx = fmax(mx, x[r * N + i]);
        for (int i = 0; i < N; i++) sum += exp((double)x[r * N + i] - mx);
        for (int i = 0; i < N; i++) {
            const double ref = exp((double)x[r * N + i] - mx) / sum;
            /* x − max (u·|x − max| absolute in the exponent), exp (< 1 ulp <= 2u, see
             * test_expf), the sum of N positive terms (γ_N bounds the 8 partial sums too),
             * 1/sum and the product (2u) */
            const double rel = fabs((double)x[r * N + i] - mx) * U + (N + 5) * U;
            assert_true(fabs(y[r * N + i] - ref) <= rel * ref + 1e-45);
        }
    }
    float g[N], up[N], o[N];
    for (int i = 0; i < N; i++) {
        g[i] = rng_f(&rng, -30.0f, 30.0f);
        up[i] = rng_f(&rng, -2.0f, 2.0f);
    }
    ql_cpu_swiglu(o, g, up, 1, N);
    for (int i = 0; i < N; i++) {
        const double ref = g[i] / (1.0 + exp(-(double)g[i])) * up[i];
        /* exp (2u), 1 + e (u), the divide (u), the product (u); e's error reaches the result
         * scaled by e/(1+e) <= 1 */
        assert_true(fabs(o[i] - ref) <= 6.0 * U * fabs(ref) + 1e-45);
    }
}

/* NOTE(expf) in cpu/cpu-internal.h: within 1 ulp of the correctly rounded e^x on
 * [-87, 88] (checked exhaustively once: 0.94 ulp at most; here a dense sample), 0 below,
 * +inf above, NaN stays NaN. */
static void test_expf(void **state) {
    (void)state;
    double worst = 0.0;
    for (int64_t k = 0; k <= 2000000; k++) {
        const float x = -87.0f + 175.0f * (float)k / 2000000.0f;
        const double ref = exp((double)x);
        const float rf = (float)ref, ulp = nextafterf(rf, INFINITY) - rf;
        worst = fmax(worst, fabs(ql__cpu_expf(x) - ref) / ulp);
    }
    for (float x = -1e-6f; x <= 1e-6f; x += 1e-9f) {
        const double ref = exp((double)x);
        const float rf = (float)ref, ulp = nextafterf(rf, INFINITY) - rf;
        worst = fmax(worst, fabs(ql__cpu_expf(x) - ref) / ulp);
    }
    print_message("exp: worst error %.3f ulp\n", worst);
    assert_true(worst <= 1.0);
    assert_true(ql__cpu_expf(0.0f) == 1.0f);
    assert_true(ql__cpu_expf(-88.0f) == 0.0f);
    assert_true(ql__cpu_expf(-INFINITY) == 0.0f);
    assert_true(isinf(ql__cpu_expf(89.0f)) && isinf(ql__cpu_expf(INFINITY)));
    assert_true(isnan(ql__cpu_expf(NAN)));
}

/* ---- embedding gather ---- */

static void test_get_rows(void **state) {
    (void)state;
    uint64_t rng = 8;
    const int64_t n_rows = 11, dim = 64;
    float src[11 * 64], out[3 * 64], ref[64];
    for (int i = 0; i < n_rows * dim; i++) src[i] = rng_f(&rng, -1.0f, 1.0f);
    const int types[] = {QL_DTYPE_F32,  QL_DTYPE_F16,  QL_DTYPE_BF16,
                         QL_DTYPE_Q8_0, QL_DTYPE_Q4_1, QL_DTYPE_Q4_0};
    const int32_t ids[] = {10, 0, 10};
    for (size_t k = 0; k < QL_ARRAY_LEN(types); k++) {
        size_t rb;
        assert_int_equal(ql_dtype_row_bytes(types[k], dim, &rb), 0);
        uint8_t *tab = malloc(rb * n_rows);
        for (int64_t r = 0; r < n_rows; r++)
            assert_int_equal(ql_quantize_row(types[k], src + r * dim, tab + r * rb, dim), 0);
        assert_int_equal(ql_cpu_get_rows(out, tab, types[k], n_rows, dim, ids, 3), 0);
        for (int t = 0; t < 3; t++) {
            assert_int_equal(ql_dequantize_row(types[k], tab + ids[t] * rb, ref, dim), 0);
            assert_memory_equal(out + t * dim, ref, sizeof(ref));
        }
        const int32_t bad[] = {0, 11};
        assert_int_equal(ql_cpu_get_rows(out, tab, types[k], n_rows, dim, bad, 2), QL_EINVAL);
        const int32_t neg[] = {-1};
        assert_int_equal(ql_cpu_get_rows(out, tab, types[k], n_rows, dim, neg, 1), QL_EINVAL);
        free(tab);
    }
}

/* ---- attention over the paged KV cache ---- */

typedef struct attn_case_s {
    int n_head, n_kv_head, head_dim, block_size;
    int n_seqs;
    int seq_len[4]; /* tokens in the cache per sequence */
    int n_query[4]; /* the last n_query positions of each sequence are queries */
} attn_case_t;

static void check_attention(const attn_case_t *c, uint64_t seed) {
    uint64_t rng = seed;
    const int hd = c->head_dim, bs = c->block_size;
    int32_t max_blocks = 0, n_tok = 0;
    for (int s = 0; s < c->n_seqs; s++) {
        max_blocks += (c->seq_len[s] + bs - 1) / bs;
        n_tok += c->n_query[s];
    }
    ql_kv_layout_t kv = {.n_layer = 1,
                         .n_kv_head = c->n_kv_head,
                         .head_dim = hd,
                         .block_size = bs,
                         .n_blocks = max_blocks * 2 + 3};
    const int64_t elems = ql_kv_layer_elems(&kv);
    uint16_t *kp = malloc(sizeof(uint16_t) * elems), *vp = malloc(sizeof(uint16_t) * elems);
    const uint16_t nan16 = 0x7e00;
    for (int64_t i = 0; i < elems; i++) kp[i] = vp[i] = nan16; /* every slot NaN until written */
    /* block tables: a random permutation of the pool, so sequences interleave */
    int32_t *perm = malloc(sizeof(int32_t) * kv.n_blocks);
    for (int i = 0; i < kv.n_blocks; i++) perm[i] = i;
    for (int i = kv.n_blocks - 1; i > 0; i--) {
        int j = (int)(rng_next(&rng) % (uint64_t)(i + 1)), tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
    int32_t *tables[4], n_blocks[4];
    int used = 0;
    /* dense copies for the reference: [seq][pos][kv_head][hd] */
    float *kd[4], *vd[4];
    for (int s = 0; s < c->n_seqs; s++) {
        n_blocks[s] = (c->seq_len[s] + bs - 1) / bs;
        tables[s] = perm + used;
        used += n_blocks[s];
        kd[s] = malloc(sizeof(float) * (size_t)c->seq_len[s] * c->n_kv_head * hd + 4);
        vd[s] = malloc(sizeof(float) * (size_t)c->seq_len[s] * c->n_kv_head * hd + 4);
        for (int p = 0; p < c->seq_len[s]; p++)
            for (int h = 0; h < c->n_kv_head; h++)
                for (int i = 0; i < hd; i++) {
                    const uint16_t k16 = ql_fp32_to_fp16(rng_f(&rng, -1.0f, 1.0f));
                    const uint16_t v16 = ql_fp32_to_fp16(rng_f(&rng, -1.0f, 1.0f));
                    const int64_t off = ql_kv_offset(&kv, tables[s][p / bs], h, p % bs) + i;
                    kp[off] = k16;
                    vp[off] = v16;
                    kd[s][((int64_t)p * c->n_kv_head + h) * hd + i] = ql_fp16_to_fp32(k16);
                    vd[s][((int64_t)p * c->n_kv_head + h) * hd + i] = ql_fp16_to_fp32(v16);
                }
    }
    int32_t *pos = malloc(sizeof(int32_t) * n_tok), *seq_of = malloc(sizeof(int32_t) * n_tok);
    for (int s = 0, t = 0; s < c->n_seqs; s++)
        for (int j = 0; j < c->n_query[s]; j++, t++) {
            seq_of[t] = s;
            pos[t] = c->seq_len[s] - c->n_query[s] + j;
        }
    const int64_t qn = (int64_t)n_tok * c->n_head * hd;
    float *q = malloc(sizeof(float) * qn), *out = malloc(sizeof(float) * qn);
    for (int64_t i = 0; i < qn; i++) q[i] = rng_f(&rng, -2.0f, 2.0f);
    const float scale = 1.0f / sqrtf((float)hd);
    ql_cpu_attn_args_t a = {.kv = &kv,
                            .k_pool = kp,
                            .v_pool = vp,
                            .q = q,
                            .out = out,
                            .n_tok = n_tok,
                            .n_head = c->n_head,
                            .pos = pos,
                            .seq_of = seq_of,
                            .block_tables = (const int32_t *const *)tables,
                            .n_blocks = n_blocks,
                            .n_seqs = c->n_seqs,
                            .scale = scale};
    assert_int_equal(ql_cpu_attention_ref(&a), 0);

    const int group = c->n_head / c->n_kv_head;
    for (int t = 0; t < n_tok; t++) {
        const int s = seq_of[t], np = pos[t] + 1;
        for (int h = 0; h < c->n_head; h++) {
            const int kvh = h / group;
            const float *qh = q + ((int64_t)t * c->n_head + h) * hd;
            double *sc = malloc(sizeof(double) * np), mx = -INFINITY, sum = 0.0, eps_s = 0.0,
                   rng_s = 0.0;
            for (int j = 0; j < np; j++) {
                double dot = 0.0, adot = 0.0;
                for (int i = 0; i < hd; i++) {
                    const double kv_ = kd[s][((int64_t)j * c->n_kv_head + kvh) * hd + i];
                    dot += qh[i] * kv_;
                    adot += fabs(qh[i] * kv_);
                }
                sc[j] = dot * scale;
                /* score error: 8 fma chains of hd/8 and 3 adds (γ_{hd/8+3}), ·scale (u) */
                eps_s = fmax(eps_s, ((hd / 8 + 4) * U) * adot * scale);
                mx = fmax(mx, sc[j]);
            }
            for (int j = 0; j < np; j++) {
                sum += exp(sc[j] - mx);
                rng_s = fmax(rng_s, mx - sc[j]);
            }
            const float *oh = out + ((int64_t)t * c->n_head + h) * hd;
            for (int i = 0; i < hd; i++) {
                double ref = 0.0, pv = 0.0;
                for (int j = 0; j < np; j++) {
                    const double p = exp(sc[j] - mx) / sum;
                    const double v = vd[s][((int64_t)j * c->n_kv_head + kvh) * hd + i];
                    ref += p * v;
                    pv += p * fabs(v);
                }
                /* Perturbing scores by <= ε moves each probability by a factor e^(±2ε);
                 * s − max loses u·|s − max|, expf u, the sum of np terms γ_np, the
                 * unnormalized Σ e_j v_j fma chain γ_np, ·(1/sum) 2u:
                 * |Δout| <= Σ p|v|·(2.01ε + (R + 2np + 6)u), R = max|s − max| (+1 for
                 * |Δmax|) */
                const double bound =
                    pv * (2.01 * eps_s + (rng_s + 1.0 + 2.0 * np + 6.0) * U) + 1e-30;
                assert_false(isnan(oh[i]));
                if (fabs(oh[i] - ref) > bound)
                    fail_msg("attention tok %d head %d dim %d: %g vs %g (bound %g)", t, h, i, oh[i],
                             ref, bound);
            }
            free(sc);
        }
    }
    /* every SIMD path reproduces the reference's bits (white-box) */
    float *scratch =
        malloc(sizeof(float) * group *
               (size_t)(c->seq_len[0] + c->seq_len[1] + c->seq_len[2] + c->seq_len[3] + 1));
    float *o2 = malloc(sizeof(float) * hd * group);
    for (int isa = 1; isa < QL_CPU_ISA_COUNT; isa++) {
        if (!ql_cpu_isa_supported((ql_cpu_isa_t)isa)) continue;
        for (int t = 0; t < n_tok; t++)
            for (int h = 0; h < c->n_kv_head; h++) {
                const int64_t off = ((int64_t)t * c->n_head + (int64_t)h * group) * hd;
                ql__cpu_attn_group((ql_cpu_isa_t)isa, &kv, kp, vp, h, tables[seq_of[t]], pos[t] + 1,
                                   q + off, o2, group, scale, scratch);
                assert_memory_equal(o2, out + off, sizeof(float) * hd * group);
            }
    }
    free(scratch);
    free(o2);
    for (int s = 0; s < c->n_seqs; s++) {
        free(kd[s]);
        free(vd[s]);
    }
    free(perm);
    free(kp);
    free(vp);
    free(pos);
    free(seq_of);
    free(q);
    free(out);
}

static void test_attention_paged(void **state) {
    (void)state;
    const attn_case_t cases[] = {
        /* heads, kv heads, head_dim, block: a decode, a prefill chunk, a verify */
        {9, 3, 64, 16, 3, {1, 37, 70, 0}, {1, 37, 4, 0}},
        {4, 4, 32, 1, 2, {5, 9, 0, 0}, {5, 1, 0, 0}},
        {8, 2, 40, 3, 4, {17, 1, 7, 33}, {2, 1, 7, 1}},
        {6, 1, 8, 7, 1, {50, 0, 0, 0}, {13, 0, 0, 0}},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(cases); i++) check_attention(&cases[i], 100 + i);
}

/* The SIMD attention (NOTE(attn-simd) in cpu/kernels-x86.inc) against the plain reference
 * (cpu/ops.c, the portable path) on random inputs over odd shapes: GQA ratios 1..32, head
 * sizes on and off the SIMD path (multiples of 8 up to 256; others fall back), block sizes
 * 1..64, contexts 1..1000 that end anywhere in a block, tiles of 1..8 consecutive query
 * tokens. Bit-identical per token: every path performs the reference's float operations in
 * its order. Every slot past the tile's last position and every scratch float starts as
 * NaN, so reading one would show. */
typedef struct attn_sweep_s {
    int group, n_kv_head, head_dim, block_size, len, n_q;
} attn_sweep_t;

static void check_attention_simd(const attn_sweep_t *c, uint64_t seed) {
    uint64_t rng = seed;
    const int hd = c->head_dim, bs = c->block_size, n_head = c->group * c->n_kv_head;
    const int n_used = (c->len + bs - 1) / bs;
    ql_kv_layout_t kv = {.n_layer = 1,
                         .n_kv_head = c->n_kv_head,
                         .head_dim = hd,
                         .block_size = bs,
                         .n_blocks = n_used + 5};
    const int64_t elems = ql_kv_layer_elems(&kv);
    uint16_t *kp = malloc(sizeof(uint16_t) * elems), *vp = malloc(sizeof(uint16_t) * elems);
    int32_t *table = malloc(sizeof(int32_t) * kv.n_blocks);
    assert_non_null(kp);
    assert_non_null(vp);
    assert_non_null(table);
    for (int64_t i = 0; i < elems; i++) kp[i] = vp[i] = 0x7e00; /* NaN */
    for (int i = 0; i < kv.n_blocks; i++) table[i] = i;
    for (int i = kv.n_blocks - 1; i > 0; i--) {
        const int j = (int)(rng_next(&rng) % (uint64_t)(i + 1)), t = table[i];
        table[i] = table[j];
        table[j] = t;
    }
    for (int p = 0; p < c->len; p++)
        for (int h = 0; h < c->n_kv_head; h++)
            for (int i = 0; i < hd; i++) {
                const int64_t off = ql_kv_offset(&kv, table[p / bs], h, p % bs) + i;
                kp[off] = ql_fp32_to_fp16(rng_f(&rng, -1.0f, 1.0f));
                vp[off] = ql_fp32_to_fp16(rng_f(&rng, -1.0f, 1.0f));
            }
    const int64_t qn = (int64_t)c->n_q * n_head * hd, stride = c->len + 3;
    float *q = malloc(sizeof(float) * qn), *ref = malloc(sizeof(float) * qn),
          *got = malloc(sizeof(float) * qn);
    float *scratch = malloc(sizeof(float) * QL__CPU_ATTN_TILE * c->group * stride);
    assert_non_null(q);
    assert_non_null(ref);
    assert_non_null(got);
    assert_non_null(scratch);
    /* wide queries: scores spread over several units, so the softmax is not flat */
    for (int64_t i = 0; i < qn; i++) q[i] = rng_f(&rng, -3.0f, 3.0f);
    const float scale = 1.0f / sqrtf((float)hd);
    int32_t n_pos[QL__CPU_ATTN_TILE];
    for (int u = 0; u < c->n_q; u++) n_pos[u] = c->len - c->n_q + 1 + u;
    for (int h = 0; h < c->n_kv_head; h++)
        for (int u = 0; u < c->n_q; u++) {
            const int64_t off = ((int64_t)u * n_head + (int64_t)h * c->group) * hd;
            for (int64_t i = 0; i < c->group * stride; i++) scratch[i] = NAN;
            ql__cpu_attn_group(QL_CPU_ISA_PORTABLE, &kv, kp, vp, h, table, n_pos[u], q + off,
                               ref + off, c->group, scale, scratch);
            for (int i = 0; i < c->group * hd; i++) assert_false(isnan(ref[off + i]));
        }
    for (int isa = 0; isa < QL_CPU_ISA_COUNT; isa++) {
        if (!ql_cpu_isa_supported((ql_cpu_isa_t)isa)) continue;
        for (int64_t i = 0; i < qn; i++) got[i] = NAN;
        for (int h = 0; h < c->n_kv_head; h++) {
            const float *qs[QL__CPU_ATTN_TILE];
            float *os[QL__CPU_ATTN_TILE];
            for (int u = 0; u < c->n_q; u++) {
                const int64_t off = ((int64_t)u * n_head + (int64_t)h * c->group) * hd;
                qs[u] = q + off;
                os[u] = got + off;
            }
            for (int64_t i = 0; i < QL__CPU_ATTN_TILE * c->group * stride; i++) scratch[i] = NAN;
            ql__cpu_attn_tile((ql_cpu_isa_t)isa, &kv, kp, vp, h, table, c->n_q, n_pos, qs, os,
                              c->group, scale, scratch, stride);
        }
        if (memcmp(got, ref, sizeof(float) * qn) != 0) {
            for (int64_t i = 0; i < qn; i++)
                if (memcmp(&got[i], &ref[i], sizeof(float)))
                    fail_msg("%s: group %d, %d KV heads of %d, block %d, len %d, %d queries: "
                             "element %lld is %.9g, the reference %.9g",
                             ql_cpu_isa_name((ql_cpu_isa_t)isa), c->group, c->n_kv_head, hd, bs,
                             c->len, c->n_q, (long long)i, got[i], ref[i]);
        }
    }
    free(kp);
    free(vp);
    free(table);
    free(q);
    free(ref);
    free(got);
    free(scratch);
}

static void test_attention_simd(void **state) {
    (void)state;
    const attn_sweep_t fixed[] = {
        /* SmolLM2-135M: decode, a full tile, a long context ending mid-block */
        {3, 3, 64, 16, 1, 1},
        {3, 3, 64, 16, 256, 1},
        {3, 3, 64, 16, 1000, 8},
        {3, 1, 64, 16, 999, 3},
        /* one key per block; blocks longer than the context; the widest head */
        {3, 2, 64, 1, 70, 8},
        {4, 2, 32, 64, 33, 5},
        {2, 1, 256, 7, 129, 2},
        /* group sizes around the kernel's 3-head row groups, and the largest */
        {1, 4, 64, 16, 100, 4},
        {2, 2, 64, 16, 41, 1},
        {4, 2, 64, 16, 64, 8},
        {5, 1, 48, 16, 65, 7},
        {7, 2, 64, 3, 200, 1},
        {8, 1, 128, 16, 300, 2},
        {32, 1, 64, 16, 120, 8},
        /* head sizes the SIMD path does not take: the fallback is the reference */
        {3, 1, 12, 5, 40, 3},
        {2, 1, 264, 16, 20, 1},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(fixed); i++) check_attention_simd(&fixed[i], 500 + i);
    /* and random shapes */
    uint64_t rng = 77;
    const int groups[] = {1, 2, 3, 4, 6, 8}, hds[] = {8, 16, 40, 64, 72, 128, 136};
    const int bss[] = {1, 2, 3, 7, 16, 17, 32};
    for (int i = 0; i < 40; i++) {
        attn_sweep_t c = {
            .group = groups[rng_next(&rng) % QL_ARRAY_LEN(groups)],
            .n_kv_head = 1 + (int)(rng_next(&rng) % 3),
            .head_dim = hds[rng_next(&rng) % QL_ARRAY_LEN(hds)],
            .block_size = bss[rng_next(&rng) % QL_ARRAY_LEN(bss)],
            .len = 1 + (int)(rng_next(&rng) % 1000),
            .n_q = 1 + (int)(rng_next(&rng) % QL__CPU_ATTN_TILE),
        };
        if (c.n_q > c.len) c.n_q = c.len;
        check_attention_simd(&c, 1000 + (uint64_t)i);
    }
}

static void test_attention_errors(void **state) {
    (void)state;
    ql_kv_layout_t kv = {
        .n_layer = 1, .n_kv_head = 2, .head_dim = 8, .block_size = 4, .n_blocks = 2};
    uint16_t pool[2 * 2 * 4 * 8] = {0};
    float q[4 * 8], out[4 * 8];
    int32_t tab[] = {1}, nb[] = {1}, pos[] = {4}, seq[] = {0};
    const int32_t *tabs[] = {tab};
    ql_cpu_attn_args_t a = {.kv = &kv,
                            .k_pool = pool,
                            .v_pool = pool,
                            .q = q,
                            .out = out,
                            .n_tok = 1,
                            .n_head = 4,
                            .pos = pos,
                            .seq_of = seq,
                            .block_tables = tabs,
                            .n_blocks = nb,
                            .n_seqs = 1,
                            .scale = 1.0f};
    assert_int_equal(ql_cpu_attention_ref(&a), QL_EINVAL); /* position 4 needs a second block */
    pos[0] = 3;
    memset(q, 0, sizeof(q));
    assert_int_equal(ql_cpu_attention_ref(&a), 0);
    tab[0] = 2;
    assert_int_equal(ql_cpu_attention_ref(&a), QL_EINVAL); /* block id outside the pool */
    tab[0] = 0;
    a.n_head = 3;
    assert_int_equal(ql_cpu_attention_ref(&a), QL_EINVAL); /* heads not a multiple of kv heads */
    a.n_head = 4;
    seq[0] = 1;
    assert_int_equal(ql_cpu_attention_ref(&a), QL_EINVAL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_expf),
        cmocka_unit_test(test_softmax_swiglu),
        cmocka_unit_test(test_get_rows),
        cmocka_unit_test(test_attention_paged),
        cmocka_unit_test(test_attention_simd),
        cmocka_unit_test(test_attention_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
