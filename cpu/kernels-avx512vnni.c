/*
 * cpu/kernels-avx512vnni.c — the kernels for AVX512 F/BW/VL/VNNI CPUs (Ice Lake, Sapphire
 * Rapids, Zen 4): everything in cpu/kernels-x86.inc on 256-bit vectors (EVEX vpdpbusd),
 * except the matmul, which is here on 512-bit vectors over panels of 16 rows: half the
 * instructions per row of the 8-row kernels, and 32 registers for tiles of up to 8 tokens.
 * Lane r of an accumulator is output row r; the per-lane float operations are those of
 * NOTE(bitwise) in cpu/cpu-internal.h, so the results are the portable path's bits.
 */
#if defined(__x86_64__) || defined(__i386__)
#define QL_K_TARGET "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
#define QL_K_VNNI 2
#define QL_K_SFX avx512vnni
#define QL_K_NO_MATMUL 1
#include "kernels-x86.inc"

#define ZATTR __attribute__((target(QL_K_TARGET)))
#define ZINL static inline __attribute__((always_inline)) ZATTR

#define ZROWS 16        /* rows per panel: ql__cpu_panel_rows(QL_CPU_ISA_AVX512VNNI) */
#define ZNT_MAX 8       /* tokens per tile, quantized weights */
#define ZNT_MAX_F 4     /* tokens per tile, f16/f32 weights (4 accumulators each) */
#define ZTOKEN_CHUNK 64 /* tokens whose activations stay in cache while panels stream by */

typedef struct ztok_s {
    const int8_t *q;    /* [n_in] */
    const float *d, *s; /* [nb] */
    const int32_t *sum; /* [nb] */
} ztok_t;

ZINL __m512i zbcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof(v));
    return _mm512_set1_epi32(v);
}

/* One 16-row panel against nt tokens, quantized weights; see tile_q in kernels-x86.inc
 * (same layout with 64-byte vectors, same chains, same float steps). */
ZINL void ztile_q(const uint8_t *pb, int64_t nb, const int pack, const int off, const int has_min,
                  const ztok_t *tk, const int nt, __m512 *out) {
    enum { NC_MAX = 4 };
    const int nc = nt == 1 ? 4 : nt <= 4 ? 2 : 1; /* integer chains per token */
    __m512 facc[ZNT_MAX], macc[ZNT_MAX];
    for (int t = 0; t < nt; t++) facc[t] = macc[t] = _mm512_setzero_ps();
    const int64_t qbytes = pack == QL_CPU_PACK_P4 ? 256 : 512;
    const int64_t bbytes = qbytes + 32 + (has_min ? 32 : 0);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const int corr = off + (pack == QL_CPU_PACK_P8S ? 128 : 0);
    for (int64_t b = 0; b < nb; b++, pb += bbytes) {
        for (int64_t o = 0; o < bbytes; o += 64)
            _mm_prefetch((const char *)((uintptr_t)pb + QL__CPU_PREFETCH + (uintptr_t)o),
                         _MM_HINT_T1);
        __m512i ia[ZNT_MAX][NC_MAX];
        for (int t = 0; t < nt; t++)
            for (int c = 0; c < nc; c++) ia[t][c] = _mm512_setzero_si512();
        if (pack == QL_CPU_PACK_P4) {
            for (int v = 0; v < 4; v++) {
                const __m512i wv = _mm512_loadu_si512((const void *)(pb + 64 * v));
                const __m512i lo = _mm512_and_si512(wv, m4);
                const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(wv, 4), m4);
                for (int t = 0; t < nt; t++) {
                    const int8_t *q = tk[t].q + b * QL_CPU_QK;
                    const int c0 = (2 * v) % nc, c1 = (2 * v + 1) % nc;
                    ia[t][c0] = _mm512_dpbusd_epi32(ia[t][c0], lo, zbcast4(q + 4 * v));
                    ia[t][c1] = _mm512_dpbusd_epi32(ia[t][c1], hi, zbcast4(q + 16 + 4 * v));
                }
            }
        } else {
            for (int g = 0; g < 8; g++) {
                __m512i wv = _mm512_loadu_si512((const void *)(pb + 64 * g));
                /* P8S: u = w + 128 in [0, 255] (vpdpbusd does not saturate) */
                if (pack == QL_CPU_PACK_P8S)
                    wv = _mm512_xor_si512(wv, _mm512_set1_epi8((char)0x80));
                for (int t = 0; t < nt; t++)
                    ia[t][g % nc] = _mm512_dpbusd_epi32(ia[t][g % nc], wv,
                                                        zbcast4(tk[t].q + b * QL_CPU_QK + 4 * g));
            }
        }
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + qbytes)));
        __m512 mv = _mm512_setzero_ps();
        if (has_min) mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pb + qbytes + 32)));
        for (int t = 0; t < nt; t++) {
            __m512i isum = ia[t][0];
            for (int c = 1; c < nc; c++) isum = _mm512_add_epi32(isum, ia[t][c]);
            if (corr) isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(corr * tk[t].sum[b]));
            const __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(tk[t].d[b]));
            facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), scale, facc[t]);
            if (has_min) macc[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(tk[t].s[b]), macc[t]);
        }
    }
    for (int t = 0; t < nt; t++) out[t] = _mm512_add_ps(facc[t], macc[t]);
}

/* One 16-row panel against nt tokens, f16/f32 weights: 4 accumulators per token by k mod 4. */
ZINL void ztile_f(const uint8_t *pb, int64_t n_in, const int is16, const float *const *xt,
                  const int nt, __m512 *out) {
    __m512 acc[ZNT_MAX_F][4];
    for (int t = 0; t < nt; t++)
        for (int j = 0; j < 4; j++) acc[t][j] = _mm512_setzero_ps();
    const int64_t kstride = is16 ? 32 : 64;
    int64_t k = 0;
    for (; k + 4 <= n_in; k += 4) {
        for (int j = 0; j < 4; j++) {
            const uint8_t *p = pb + (k + j) * kstride;
            const __m512 w =
                is16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)) : _mm512_loadu_ps(p);
            for (int t = 0; t < nt; t++)
                acc[t][j] = _mm512_fmadd_ps(w, _mm512_set1_ps(xt[t][k + j]), acc[t][j]);
        }
    }
    for (; k < n_in; k++) {
        const uint8_t *p = pb + k * kstride;
        const __m512 w =
            is16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)) : _mm512_loadu_ps(p);
        for (int t = 0; t < nt; t++)
            acc[t][k & 3] = _mm512_fmadd_ps(w, _mm512_set1_ps(xt[t][k]), acc[t][k & 3]);
    }
    for (int t = 0; t < nt; t++)
        out[t] =
            _mm512_add_ps(_mm512_add_ps(acc[t][0], acc[t][1]), _mm512_add_ps(acc[t][2], acc[t][3]));
}

#define ZTILE_Q_NT(pack, off, hm)                                                                  \
    switch (nt) {                                                                                  \
    case 1: ztile_q(pb, nb, pack, off, hm, tk, 1, out); break;                                     \
    case 2: ztile_q(pb, nb, pack, off, hm, tk, 2, out); break;                                     \
    case 3: ztile_q(pb, nb, pack, off, hm, tk, 3, out); break;                                     \
    case 4: ztile_q(pb, nb, pack, off, hm, tk, 4, out); break;                                     \
    case 5: ztile_q(pb, nb, pack, off, hm, tk, 5, out); break;                                     \
    case 6: ztile_q(pb, nb, pack, off, hm, tk, 6, out); break;                                     \
    case 7: ztile_q(pb, nb, pack, off, hm, tk, 7, out); break;                                     \
    default: ztile_q(pb, nb, pack, off, hm, tk, 8, out); break;                                    \
    }

#define ZTILE_F_NT(is16)                                                                           \
    switch (nt) {                                                                                  \
    case 1: ztile_f(pb, n_in, is16, xt, 1, out); break;                                            \
    case 2: ztile_f(pb, n_in, is16, xt, 2, out); break;                                            \
    case 3: ztile_f(pb, n_in, is16, xt, 3, out); break;                                            \
    default: ztile_f(pb, n_in, is16, xt, 4, out); break;                                           \
    }

ZATTR void ql__cpu_mm_panels_avx512vnni(const ql__cpu_mm_args_t *a) {
    const ql_cpu_weight_t *w = a->w;
    const ql_cpu_act_t *x = a->x;
    const int kt = w->_ktype;
    const int isf = kt == QL_DTYPE_F32 || kt == QL_DTYPE_F16;
    const int nt_max = isf ? ZNT_MAX_F : ZNT_MAX;
    const int64_t n_in = w->n_in, nb = n_in / QL_CPU_QK;
    QL_ASSERT(w->_panel_rows == ZROWS);
    for (int64_t tc = 0; tc < x->n_tok; tc += ZTOKEN_CHUNK) {
        const int64_t tce = QL_MIN(x->n_tok, tc + ZTOKEN_CHUNK);
        for (int64_t p = a->p0; p < a->p1; p++) {
            const uint8_t *pb = (const uint8_t *)w->_packed + (size_t)p * w->_panel_bytes;
            const int64_t row0 = p * ZROWS;
            const int64_t nvalid = QL_MIN((int64_t)ZROWS, w->n_out - row0);
            const __mmask16 mask = (__mmask16)((1u << nvalid) - 1u);
            for (int64_t t0 = tc; t0 < tce; t0 += nt_max) {
                const int nt = (int)QL_MIN((int64_t)nt_max, tce - t0);
                __m512 out[ZNT_MAX];
                if (isf) {
                    const float *xt[ZNT_MAX_F];
                    for (int t = 0; t < nt; t++) xt[t] = x->f32 + (t0 + t) * x->ld_f32;
                    if (kt == QL_DTYPE_F16) {
                        ZTILE_F_NT(1)
                    } else {
                        ZTILE_F_NT(0)
                    }
                } else {
                    ztok_t tk[ZNT_MAX];
                    for (int t = 0; t < nt; t++) {
                        tk[t].q = x->qs + (t0 + t) * n_in;
                        tk[t].d = x->d + (t0 + t) * nb;
                        tk[t].s = x->s + (t0 + t) * nb;
                        tk[t].sum = x->sum + (t0 + t) * nb;
                    }
                    switch (kt) {
                    case QL_DTYPE_Q4_0: ZTILE_Q_NT(QL_CPU_PACK_P4, 8, 0); break;
                    case QL_DTYPE_Q4_1: ZTILE_Q_NT(QL_CPU_PACK_P4, 0, 1); break;
                    case QL_DTYPE_Q5_0: ZTILE_Q_NT(QL_CPU_PACK_P8U, 16, 0); break;
                    case QL_DTYPE_Q5_1: ZTILE_Q_NT(QL_CPU_PACK_P8U, 0, 1); break;
                    default: ZTILE_Q_NT(QL_CPU_PACK_P8S, 0, 0); break;
                    }
                }
                for (int t = 0; t < nt; t++) {
                    float *yr = a->y + (t0 + t) * a->ldy + row0;
                    if (nvalid == ZROWS)
                        _mm512_storeu_ps(yr, out[t]);
                    else
                        _mm512_mask_storeu_ps(yr, mask, out[t]);
                }
            }
        }
    }
}

#else
typedef int ql__cpu_kernels_avx512vnni_empty; /* ISO C forbids an empty translation unit */
#endif
