/*
 * tests/unit/cpu/test-kernels.c — the CPU backend's kernels against straightforward
 * double-precision references built from model/quant.c's ql_dequantize_row(): fp16
 * conversion, activation quantization, the matmul for every weight type on every ISA path
 * this CPU runs (odd shapes, token counts across tile and chunk edges, 1..3 threads), and
 * the vector helpers attention uses.
 *
 * Two kinds of check:
 *   - bitwise: every SIMD path gives the portable path's bits (NOTE(bitwise) in
 *     cpu/cpu-internal.h), and threading changes nothing;
 *   - bounded: |fast − reference| within an error bound derived below for each kernel,
 *     never a tuned tolerance.
 * u = 2^-24 is the unit roundoff of f32; γ_n = n·u/(1 − n·u) bounds the relative error of a
 * recursive sum (or fma chain) of n terms [Higham, Accuracy and Stability, §3.1].
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

#define U (1.0 / 16777216.0) /* 2^-24 */

static double gamma_n(double n) {
    return n * U / (1.0 - n * U);
}

/* ---- helpers ---- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_f(uint64_t *s, float lo, float hi) {
    return lo + (hi - lo) * (float)((rng_next(s) >> 40) * (1.0 / 16777216.0));
}

static int isa_list(ql_cpu_isa_t *out) {
    int n = 0;
    for (int i = 0; i < QL_CPU_ISA_COUNT; i++)
        if (ql_cpu_isa_supported((ql_cpu_isa_t)i)) out[n++] = (ql_cpu_isa_t)i;
    return n;
}

static int same_bits(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

/* Activations: uniform in [-1, 1], some blocks scaled up 10x, one block all zeros. */
static void fill_act(uint64_t *rng, float *x, int64_t n_tok, int64_t n_in) {
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t i = 0; i < n_in; i++) x[t * n_in + i] = rng_f(rng, -1.0f, 1.0f);
        if (n_in >= 64 && (t % 3) == 1)
            for (int i = 32; i < 64; i++) x[t * n_in + i] *= 10.0f;
        if (n_in >= 32 && (t % 4) == 2)
            for (int i = 0; i < 32; i++) x[t * n_in + i] = 0.0f;
    }
}

/* ---- fp16 ---- */

static void test_fp16_conversions(void **state) {
    (void)state;
    /* all 65536 halves decode exactly as model/quant.c's reference does */
    for (uint32_t h = 0; h < 65536; h++) {
        float a = ql__cpu_fp16_to_fp32((uint16_t)h), b = ql_fp16_to_fp32((uint16_t)h);
        if (isnan(a) || isnan(b)) {
            assert_true(isnan(a) && isnan(b));
            continue;
        }
        assert_memory_equal(&a, &b, sizeof(float));
    }
    /* encoding: round to nearest even, the same bits on every path and as the reference */
    uint64_t rng = 7;
    enum { N = 4099 };
    float *x = malloc(N * sizeof(float));
    uint16_t *ref = malloc(N * sizeof(uint16_t)), *got = malloc(N * sizeof(uint16_t));
    for (int i = 0; i < N; i++) {
        uint32_t bits = (uint32_t)rng_next(&rng);
        if (i % 3 == 0)
            bits = (bits & 0x807fffffu) | ((uint32_t)(100 + i % 60) << 23); /* fp16-ish range */
        memcpy(&x[i], &bits, 4);
        if (isnan(x[i])) x[i] = 1.0f;
    }
    const float specials[] = {0.0f,           -0.0f,          65504.0f,       65519.99f,
                              65520.0f,       6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f,
                              2.9802326e-08f, 1.0009765625f,  INFINITY,       -INFINITY};
    memcpy(x, specials, sizeof(specials));
    for (int i = 0; i < N; i++) {
        ref[i] = ql_fp32_to_fp16(x[i]);
        assert_int_equal(ql__cpu_fp32_to_fp16(x[i]), ref[i]);
    }
    ql_cpu_isa_t isas[QL_CPU_ISA_COUNT];
    for (int k = 0, n = isa_list(isas); k < n; k++) {
        ql_cpu_f32_to_f16(isas[k], x, got, N);
        assert_memory_equal(got, ref, N * sizeof(uint16_t));
    }
    free(x);
    free(ref);
    free(got);
}

/* ---- activation quantization ---- */

/* NOTE(q8-bound): with d = fl(amax/127), id = fl(1/d), q = rint(fl(x·id)):
 *   |x·id − q| <= 1/2 + |x·id|·u <= 1/2 + 127u(1+u),  and d·id = 1 + δ, |δ| <= 2u + u²,
 *   so |x/d − q| <= |x·id − q| + |x·id|·|δ|/(1−|δ|) <= 1/2 + 127u + 254u + O(u²),
 *   |x − q·d| <= d·(1/2 + 382u) (< d·(0.5 + 2.3e-5)). The test uses d·(1/2 + 400u). */
#define Q8_ERR_FACTOR (0.5 + 400.0 * U)

static void test_quantize_act(void **state) {
    (void)state;
    uint64_t rng = 11;
    const int64_t n_tok = 7, n_in = 320;
    float *x = malloc(sizeof(float) * n_tok * n_in);
    fill_act(&rng, x, n_tok, n_in);
    x[5] = 127.0f; /* exact multiples and ties */
    x[6] = -63.5f;
    const size_t bytes = ql_cpu_act_bytes(n_tok, n_in);
    void *m0 = aligned_alloc(64, bytes), *m1 = aligned_alloc(64, bytes);
    ql_cpu_act_t a0, a1;
    ql_cpu_act_bind(&a0, m0, n_tok, n_in, x, n_in);
    ql_cpu_act_quantize(QL_CPU_ISA_PORTABLE, &a0, 0, n_tok);
    const int64_t nb = n_in / 32;
    for (int64_t t = 0; t < n_tok; t++) {
        for (int64_t b = 0; b < nb; b++) {
            float amax = 0.0f;
            int32_t sum = 0;
            for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[t * n_in + b * 32 + i]));
            assert_true(a0.d[t * nb + b] == amax / 127.0f);
            for (int i = 0; i < 32; i++) {
                const int8_t q = a0.qs[t * n_in + b * 32 + i];
                assert_true(q != -128);
                sum += q;
                const double err =
                    fabs((double)x[t * n_in + b * 32 + i] - (double)q * a0.d[t * nb + b]);
                assert_true(err <= a0.d[t * nb + b] * Q8_ERR_FACTOR);
            }
            assert_int_equal(a0.sum[t * nb + b], sum);
            assert_true(a0.s[t * nb + b] == a0.d[t * nb + b] * (float)sum);
        }
    }
    ql_cpu_isa_t isas[QL_CPU_ISA_COUNT];
    for (int k = 1, n = isa_list(isas); k < n; k++) {
        memset(m1, 0x5a, bytes);
        ql_cpu_act_bind(&a1, m1, n_tok, n_in, x, n_in);
        ql_cpu_act_quantize(isas[k], &a1, 0, n_tok);
        assert_memory_equal(a1.qs, a0.qs, (size_t)(n_tok * n_in));
        assert_memory_equal(a1.d, a0.d, (size_t)(n_tok * nb) * 4);
        assert_memory_equal(a1.s, a0.s, (size_t)(n_tok * nb) * 4);
        assert_memory_equal(a1.sum, a0.sum, (size_t)(n_tok * nb) * 4);
    }
    free(x);
    free(m0);
    free(m1);
}

/* ---- matmul ---- */

typedef struct mm_case_s {
    int type;
    int64_t n_in, n_out, n_tok;
} mm_case_t;

static int is_quant32(int t) {
    return t == QL_DTYPE_Q4_0 || t == QL_DTYPE_Q4_1 || t == QL_DTYPE_Q5_0 || t == QL_DTYPE_Q5_1 ||
           t == QL_DTYPE_Q8_0 || t == QL_DTYPE_IQ4_NL;
}

/* Types the backend requantizes to Q8_0 at init (NOTE(kquant)). */
static int is_requant(int t) {
    return ql_dtype_block_elems(t) == 256 || t == QL_DTYPE_IQ4_NL;
}

/* Q2_K, Q3_K, Q5_K, IQ4_NL and IQ4_XS have no quantizer in quill (only files bring them):
 * their rows are random blocks, every quant and sub-scale byte random and the fp16 (super-)
 * block scales (d, dmin) set to about rs / 16 (IQ4_NL's, whose quants reach 127, rs / 128),
 * so the weights span a few times ±rs. Returns -1 for the other types (the caller quantizes). */
static int random_kquant_row(int t, uint64_t *rng, float rs, uint8_t *dst, int64_t n_in) {
    int d_at, m_at, bytes;
    switch (t) {
    case QL_DTYPE_Q2_K: bytes = 84, d_at = 80, m_at = 82; break;
    case QL_DTYPE_Q3_K: bytes = 110, d_at = 108, m_at = -1; break;
    case QL_DTYPE_Q5_K: bytes = 176, d_at = 0, m_at = 2; break;
    case QL_DTYPE_IQ4_NL: bytes = 18, d_at = 0, m_at = -1, rs /= 8.0f; break;
    case QL_DTYPE_IQ4_XS: bytes = 136, d_at = 0, m_at = -1; break;
    default: return -1;
    }
    for (int64_t b = 0; b < n_in / ql_dtype_block_elems(t); b++, dst += bytes) {
        for (int i = 0; i < bytes; i++) dst[i] = (uint8_t)rng_next(rng);
        const uint16_t d = ql_fp32_to_fp16(rng_f(rng, 0.5f, 1.0f) * rs / 16.0f);
        memcpy(dst + d_at, &d, 2);
        if (m_at >= 0) {
            const uint16_t m = ql_fp32_to_fp16(rng_f(rng, -1.0f, 1.0f) * rs / 16.0f);
            memcpy(dst + m_at, &m, 2);
        }
    }
    return 0;
}

static double max_err_seen; /* largest |err| / bound over the run, printed at the end */

static void check_matmul_case(const mm_case_t *c, uint64_t seed) {
    uint64_t rng = seed;
    const int t = c->type;
    const int64_t n_in = c->n_in, n_out = c->n_out, n_tok = c->n_tok;
    size_t row_bytes;
    assert_int_equal(ql_dtype_row_bytes(t, n_in, &row_bytes), 0);
    uint8_t *wq = malloc(row_bytes * (size_t)n_out);
    float *wf = malloc(sizeof(float) * (size_t)(n_in * n_out));
    for (int64_t r = 0; r < n_out; r++) {
        const float rs = 0.02f * (float)(1 + r % 5); /* rows of different scales */
        for (int64_t i = 0; i < n_in; i++)
            wf[r * n_in + i] = rng_f(&rng, -rs, rs) + (i % 7 == 0 ? rs : 0.0f);
        if (random_kquant_row(t, &rng, rs, wq + (size_t)r * row_bytes, n_in) != 0)
            assert_int_equal(ql_quantize_row(t, wf + r * n_in, wq + (size_t)r * row_bytes, n_in), 0);
        /* the reference weights: what the file holds, dequantized by model/quant.c */
        assert_int_equal(ql_dequantize_row(t, wq + (size_t)r * row_bytes, wf + r * n_in, n_in), 0);
    }
    float *x = malloc(sizeof(float) * (size_t)(n_tok * n_in));
    fill_act(&rng, x, n_tok, n_in);

    ql_cpu_isa_t isas[QL_CPU_ISA_COUNT];
    const int n_isa = isa_list(isas);
    float *y0 = malloc(sizeof(float) * (size_t)(n_tok * n_out));
    float *y1 = malloc(sizeof(float) * (size_t)(n_tok * n_out));
    const size_t qbytes = ql_cpu_act_bytes(n_tok, n_in);
    void *qmem = qbytes ? aligned_alloc(64, (qbytes + 63) / 64 * 64) : NULL;
    ql_cpu_act_t act;

    for (int k = 0; k < n_isa; k++) {
        ql_cpu_weight_t w;
        assert_int_equal(ql_cpu_weight_init(&w, isas[k], t, n_in, n_out, wq), 0);
        ql_cpu_act_bind(&act, ql_cpu_weight_needs_q8(&w) ? qmem : NULL, n_tok, n_in, x, n_in);
        if (ql_cpu_weight_needs_q8(&w)) ql_cpu_act_quantize(isas[k], &act, 0, n_tok);
        float *y = k == 0 ? y0 : y1;
        for (int64_t i = 0; i < n_tok * n_out; i++) y[i] = NAN;
        ql_cpu_matmul_rows(&w, &act, y, n_out, 0, n_out);
        if (k > 0) {
            if (!same_bits(y0, y1, (size_t)(n_tok * n_out)))
                fail_msg("%s: type %s n_in %lld n_out %lld n_tok %lld differs from portable",
                         ql_cpu_isa_name(isas[k]), ql_dtype_name(t), (long long)n_in,
                         (long long)n_out, (long long)n_tok);
            ql_cpu_weight_free(&w);
            continue;
        }
        /* the portable result against double references */
        const int quant = ql_cpu_weight_needs_q8(&w);
        const int64_t nb = n_in / 32;
        /* weights the kernel really multiplies: the file's, or for K-quants the Q8_0
         * requantization (white-box: w._rows) */
        float *wk = malloc(sizeof(float) * (size_t)(n_in * n_out));
        for (int64_t r = 0; r < n_out; r++)
            assert_int_equal(ql_dequantize_row(w._ktype,
                                               (const uint8_t *)w._rows + (size_t)r * w._row_bytes,
                                               wk + r * n_in, n_in),
                             0);
        for (int64_t tt = 0; tt < n_tok; tt++) {
            for (int64_t r = 0; r < n_out; r++) {
                const float *wr = wf + r * n_in, *wkr = wk + r * n_in, *xt = x + tt * n_in;
                const double got = y0[tt * n_out + r];
                assert_false(isnan(got));
                double ref_f = 0.0, abs_wx = 0.0;
                for (int64_t i = 0; i < n_in; i++) {
                    ref_f += (double)wr[i] * xt[i];
                    abs_wx += fabs((double)wr[i] * xt[i]);
                }
                double bound;
                if (!quant) {
                    /* f16/f32/bf16: exact weights; 4 fma chains of n/4 terms, then 2 adds:
                     * |err| <= γ_{n/4+3} Σ|w x| */
                    bound = gamma_n((double)(n_in / 4 + 3)) * abs_wx;
                } else {
                    /* (1) float steps. Per block b the kernel adds isum·fl(dw·da) and
                     * m·fl(da·sum) with fmas: 2·nb terms in a chain, each with one extra
                     * relative rounding in its scale: |err1| <= γ_{2nb+2} Σ_b T_b,
                     * T_b = |isum_b·dw_b·da_b| + |m_b·da_b·sum_b|. The reference weights
                     * d·q + m are formed by ql_dequantize_row in f32 (<= 2 roundings):
                     * another 2u Σ|w·x̂| against the exact quants. */
                    const uint8_t *row = (const uint8_t *)w._rows + (size_t)r * w._row_bytes;
                    const size_t bb = ql_dtype_block_bytes(w._ktype);
                    double tsum = 0.0, ref_q = 0.0, abs_wxq = 0.0, qerr = 0.0;
                    for (int64_t b = 0; b < nb; b++) {
                        int8_t wb[32];
                        float dw, mw;
                        ql__cpu_block_unpack(w._ktype, row + b * bb, wb, &dw, &mw);
                        const double da = act.d[tt * nb + b];
                        int64_t isum = 0, asum = 0;
                        double wabs = 0.0;
                        for (int i = 0; i < 32; i++) {
                            const int8_t qa = act.qs[tt * n_in + b * 32 + i];
                            isum += (int64_t)wb[i] * qa;
                            asum += qa;
                            ref_q += (double)wkr[b * 32 + i] * qa * da;
                            abs_wxq += fabs((double)wkr[b * 32 + i] * qa * da);
                            wabs += fabs((double)wkr[b * 32 + i]);
                        }
                        tsum += fabs((double)isum * dw * da) + fabs((double)mw * da * (double)asum);
                        /* (2) NOTE(q8-bound): |x − x̂| <= da·(1/2 + 400u) per element */
                        qerr += wabs * da * Q8_ERR_FACTOR;
                    }
                    const double err1 = gamma_n((double)(2 * nb + 2)) * tsum + 2.0 * U * abs_wxq;
                    const double e_exact = fabs(got - ref_q);
                    if (e_exact > err1 + 1e-30)
                        fail_msg("%s n_in %lld row %lld tok %lld: |y - ref(x̂)| = %g > %g",
                                 ql_dtype_name(t), (long long)n_in, (long long)r, (long long)tt,
                                 e_exact, err1);
                    bound = err1 + qerr;
                    if (is_requant(t)) {
                        /* (3) NOTE(kquant): requantizing to Q8_0 moves each weight by at most
                         * d8·(1/2 + 127·2^-11) (rounding to the grid, plus the fp16 scale's
                         * relative rounding times |q| <= 127), d8 = max|w_b|/127 (+ slack
                         * for the 2^-11 of d8 itself) */
                        double kq = 0.0;
                        for (int64_t b = 0; b < nb; b++) {
                            double kmax = 0.0, xs = 0.0;
                            for (int i = 0; i < 32; i++) {
                                kmax = fmax(kmax, fabs((double)wr[b * 32 + i]));
                                xs += fabs((double)xt[b * 32 + i]);
                            }
                            kq += xs * (kmax / 127.0) * (0.5 + 127.0 / 2048.0 + 1e-3);
                        }
                        bound += kq;
                    }
                }
                const double err = fabs(got - ref_f);
                if (err > bound + 1e-30)
                    fail_msg("%s n_in %lld n_out %lld row %lld tok %lld: |y - ref| = %g > bound %g "
                             "(y %g ref %g)",
                             ql_dtype_name(t), (long long)n_in, (long long)n_out, (long long)r,
                             (long long)tt, err, bound, got, ref_f);
                if (bound > 0) max_err_seen = fmax(max_err_seen, err / bound);
            }
        }
        free(wk);
        ql_cpu_weight_free(&w);
    }
    free(qmem);
    free(wq);
    free(wf);
    free(x);
    free(y0);
    free(y1);
}

static void test_matmul_types(void **state) {
    (void)state;
    static const int types[] = {QL_DTYPE_F32,  QL_DTYPE_F16,  QL_DTYPE_BF16, QL_DTYPE_Q4_0,
                                QL_DTYPE_Q4_1, QL_DTYPE_Q5_0, QL_DTYPE_Q5_1, QL_DTYPE_Q8_0,
                                QL_DTYPE_Q2_K, QL_DTYPE_Q3_K, QL_DTYPE_Q4_K, QL_DTYPE_Q5_K,
                                QL_DTYPE_Q6_K, QL_DTYPE_IQ4_NL, QL_DTYPE_IQ4_XS};
    static const int64_t n_outs[] = {1, 7, 8, 17, 40};
    static const int64_t n_toks[] = {1, 2, 3, 4, 5, 9, 67};
    uint64_t seed = 1;
    for (size_t ti = 0; ti < QL_ARRAY_LEN(types); ti++) {
        const int t = types[ti];
        int64_t n_ins[3];
        int n_n = 0;
        if (ql_dtype_block_elems(t) == 256) { /* K-quants */
            n_ins[n_n++] = 256;
            n_ins[n_n++] = 512;
        } else if (is_quant32(t)) {
            n_ins[n_n++] = 32;
            n_ins[n_n++] = 96;
            n_ins[n_n++] = 544;
        } else {
            n_ins[n_n++] = 5; /* not a multiple of 4 or 8 */
            n_ins[n_n++] = 37;
            n_ins[n_n++] = 96;
        }
        for (int i = 0; i < n_n; i++)
            for (size_t o = 0; o < QL_ARRAY_LEN(n_outs); o++)
                for (size_t k = 0; k < QL_ARRAY_LEN(n_toks); k++) {
                    if (n_ins[i] > 256 && n_toks[k] > 9 && n_outs[o] > 17)
                        continue; /* keep it quick */
                    mm_case_t c = {t, n_ins[i], n_outs[o], n_toks[k]};
                    check_matmul_case(&c, seed++);
                }
    }
    /* rows longer than the AMX kernel's stack scratch (128 blocks): its heap path, 4-bit types */
    const mm_case_t wide[] = {{QL_DTYPE_Q4_0, 4160, 17, 20}, {QL_DTYPE_Q4_1, 4160, 9, 33}};
    for (size_t i = 0; i < QL_ARRAY_LEN(wide); i++) check_matmul_case(&wide[i], seed++);
    print_message("matmul: largest |error| / bound = %.3f\n", max_err_seen);
}

/* Threading changes nothing: the pool's matmul equals one call over all rows, bitwise. */
static void test_matmul_threads(void **state) {
    (void)state;
    const int64_t n_in = 256, n_out = 203, n_tok = 13;
    uint64_t rng = 99;
    size_t rb;
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q4_1, n_in, &rb), 0);
    uint8_t *wq = malloc(rb * n_out);
    float *wf = malloc(sizeof(float) * n_in);
    for (int64_t r = 0; r < n_out; r++) {
        for (int64_t i = 0; i < n_in; i++) wf[i] = rng_f(&rng, -0.1f, 0.1f);
        assert_int_equal(ql_quantize_row(QL_DTYPE_Q4_1, wf, wq + r * rb, n_in), 0);
    }
    float *x = malloc(sizeof(float) * n_tok * n_in);
    fill_act(&rng, x, n_tok, n_in);
    const size_t qb = ql_cpu_act_bytes(n_tok, n_in);
    void *qmem = aligned_alloc(64, qb);
    float *ref = malloc(sizeof(float) * n_tok * n_out),
          *got = malloc(sizeof(float) * n_tok * n_out);
    ql_cpu_weight_t w;
    assert_int_equal(ql_cpu_weight_init(&w, ql_cpu_isa_default(), QL_DTYPE_Q4_1, n_in, n_out, wq),
                     0);
    ql_cpu_act_t a;
    ql_cpu_act_bind(&a, qmem, n_tok, n_in, x, n_in);
    ql_cpu_act_quantize(w.isa, &a, 0, n_tok);
    ql_cpu_matmul_rows(&w, &a, ref, n_out, 0, n_out);
    for (int nth = 1; nth <= 3; nth++) {
        ql_cpu_pool_t *pool;
        assert_int_equal(ql_cpu_pool_init(nth, &pool), 0);
        assert_int_equal(ql_cpu_pool_n_threads(pool), nth);
        for (int rep = 0; rep < 3; rep++) {
            memset(got, 0xff, sizeof(float) * n_tok * n_out);
            ql_cpu_matmul(pool, &w, x, n_tok, qmem, got);
            assert_memory_equal(got, ref, sizeof(float) * n_tok * n_out);
        }
        ql_cpu_pool_free(pool);
    }
    ql_cpu_weight_free(&w);
    free(wq);
    free(wf);
    free(x);
    free(qmem);
    free(ref);
    free(got);
}

static void test_weight_errors(void **state) {
    (void)state;
    ql_cpu_weight_t w;
    uint8_t buf[64] = {0};
    assert_int_equal(ql_cpu_weight_init(&w, QL_CPU_ISA_PORTABLE, QL_DTYPE_Q4_0, 33, 1, buf),
                     QL_EINVAL);
    assert_int_equal(ql_cpu_weight_init(&w, QL_CPU_ISA_PORTABLE, QL_DTYPE_Q4_0, 32, 0, buf),
                     QL_EINVAL);
    assert_int_equal(ql_cpu_weight_init(&w, QL_CPU_ISA_PORTABLE, QL_DTYPE_Q4_0, 32, 1, NULL),
                     QL_EINVAL);
    assert_int_equal(ql_cpu_weight_init(&w, QL_CPU_ISA_PORTABLE, QL_DTYPE_I32, 32, 1, buf),
                     QL_EUNSUPPORTED);
    assert_int_equal(ql_cpu_weight_init(&w, QL_CPU_ISA_PORTABLE, QL_DTYPE_Q8_K, 256, 1, buf),
                     QL_EUNSUPPORTED);
    assert_int_equal(ql_cpu_weight_init(&w, QL_CPU_ISA_PORTABLE, QL_DTYPE_Q2_K, 128, 1, buf),
                     QL_EINVAL); /* not a whole 256-element block */
    assert_int_equal(ql_cpu_weight_init(&w, QL_CPU_ISA_COUNT, QL_DTYPE_F32, 4, 1, buf), QL_EINVAL);
    ql_cpu_weight_free(&w); /* zeroed by the failed init: a no-op */
    assert_int_equal(ql_cpu_act_bytes(3, 33), 0);
}

/* ---- vector helpers ---- */

static void test_vector_helpers(void **state) {
    (void)state;
    uint64_t rng = 5;
    ql_cpu_isa_t isas[QL_CPU_ISA_COUNT];
    const int n_isa = isa_list(isas);
    float a[80], b[80], y0[80], y1[80];
    uint16_t h[80];
    for (int n = 0; n <= 75; n++) {
        for (int i = 0; i < n; i++) {
            a[i] = rng_f(&rng, -2.0f, 2.0f);
            b[i] = rng_f(&rng, -2.0f, 2.0f);
            h[i] = ql_fp32_to_fp16(rng_f(&rng, -2.0f, 2.0f));
        }
        double ref = 0.0, ref16 = 0.0, abs = 0.0, abs16 = 0.0;
        for (int i = 0; i < n; i++) {
            ref += (double)a[i] * b[i];
            abs += fabs((double)a[i] * b[i]);
            ref16 += (double)ql_fp16_to_fp32(h[i]) * b[i];
            abs16 += fabs((double)ql_fp16_to_fp32(h[i]) * b[i]);
        }
        /* 8 fma chains of ceil(n/8) terms, then 3 adds: γ_{n/8+4} Σ|a b| */
        const double g = gamma_n((double)(n / 8 + 4));
        const float d0 = ql_cpu_dot_f32(QL_CPU_ISA_PORTABLE, a, b, n);
        const float e0 = ql_cpu_dot_f16_f32(QL_CPU_ISA_PORTABLE, h, b, n);
        assert_true(fabs(d0 - ref) <= g * abs);
        assert_true(fabs(e0 - ref16) <= g * abs16);
        for (int i = 0; i < n; i++) y0[i] = b[i];
        ql_cpu_axpy_f16(QL_CPU_ISA_PORTABLE, y0, 0.37f, h, n);
        for (int i = 0; i < n; i++) { /* one correctly rounded fma per element */
            const float want = fmaf(0.37f, ql_fp16_to_fp32(h[i]), b[i]);
            assert_memory_equal(&y0[i], &want, 4);
        }
        for (int k = 1; k < n_isa; k++) {
            const float d1 = ql_cpu_dot_f32(isas[k], a, b, n),
                        e1 = ql_cpu_dot_f16_f32(isas[k], h, b, n);
            assert_memory_equal(&d1, &d0, 4);
            assert_memory_equal(&e1, &e0, 4);
            for (int i = 0; i < n; i++) y1[i] = b[i];
            ql_cpu_axpy_f16(isas[k], y1, 0.37f, h, n);
            assert_memory_equal(y1, y0, sizeof(float) * (size_t)n);
        }
    }
}

static void test_isa_choice(void **state) {
    (void)state;
    assert_true(ql_cpu_isa_supported(QL_CPU_ISA_PORTABLE));
    assert_true(ql_cpu_isa_supported(ql_cpu_isa_default()));
    setenv("QL_CPU_ISA", "portable", 1);
    assert_int_equal(ql_cpu_isa_default(), QL_CPU_ISA_PORTABLE);
    setenv("QL_CPU_ISA", "no-such-isa", 1);
    assert_true(ql_cpu_isa_supported(ql_cpu_isa_default()));
    unsetenv("QL_CPU_ISA");
    char buf[128];
    ql_cpu_features_str(ql_cpu_features(), buf, sizeof(buf));
    print_message("cpu features: %s; default path %s\n", buf,
                  ql_cpu_isa_name(ql_cpu_isa_default()));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_isa_choice),     cmocka_unit_test(test_fp16_conversions),
        cmocka_unit_test(test_quantize_act),   cmocka_unit_test(test_vector_helpers),
        cmocka_unit_test(test_weight_errors),  cmocka_unit_test(test_matmul_types),
        cmocka_unit_test(test_matmul_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
