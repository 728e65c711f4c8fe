/*
 * cpu/matmul.c — weights prepared for the kernels (panel repacking, conversions),
 * quantized activations, and the ISA dispatch of the matmul and vector helpers.
 *
 * NOTE(repack): for a SIMD path each weight is repacked once at init into panels of 8 rows
 * (16 for the 512-bit AVX512 kernels; layout in cpu/cpu-internal.h), so the kernel reads
 * every row's quants for one group of 4 inputs with one load and gets the panel's dot
 * products in one register. The quants and
 * fp16 scales are copied bit for bit, so the panel computes on the GGUF type as stored;
 * the cost is one copy of the weights in anonymous memory (the mapping's pages are then
 * never touched again and the kernel can drop them). llama.cpp does the same for Q4_0.
 *
 * NOTE(kquant): K-quant weights (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and IQ4_NL / IQ4_XS are
 * dequantized at init with the reference ql_dequantize_row() and requantized to Q8_0 (per 32 values d = max|x|/127, fp16) so the
 * Q8_0 kernel serves them: the extra error per weight is at most d/2 ≈ 0.4% of its block's
 * largest magnitude. BF16 is widened to F32 exactly.
 */
#define QL_LOG_MODULE "cpu"
#include <stdlib.h>

#include "cpu/cpu-internal.h"

/* ---- dispatch ---- */

#ifdef QL_CPU_HAVE_X86
#define DISPATCH(isa, fn, ...)                                                                     \
    switch (isa) {                                                                                 \
    case QL_CPU_ISA_AVX2: fn##_avx2(__VA_ARGS__); break;                                           \
    case QL_CPU_ISA_AVXVNNI: fn##_avxvnni(__VA_ARGS__); break;                                     \
    case QL_CPU_ISA_AVX512VNNI:                                                                    \
    case QL_CPU_ISA_AMX: fn##_avx512vnni(__VA_ARGS__); break;                                      \
    default: fn##_portable(__VA_ARGS__); break;                                                    \
    }
#define DISPATCH_RET(isa, fn, ...)                                                                 \
    switch (isa) {                                                                                 \
    case QL_CPU_ISA_AVX2: return fn##_avx2(__VA_ARGS__);                                           \
    case QL_CPU_ISA_AVXVNNI: return fn##_avxvnni(__VA_ARGS__);                                     \
    case QL_CPU_ISA_AVX512VNNI:                                                                    \
    case QL_CPU_ISA_AMX: return fn##_avx512vnni(__VA_ARGS__);                                      \
    default: return fn##_portable(__VA_ARGS__);                                                    \
    }
#else
#define DISPATCH(isa, fn, ...) fn##_portable(__VA_ARGS__)
#define DISPATCH_RET(isa, fn, ...) return fn##_portable(__VA_ARGS__)
#endif

float ql_cpu_dot_f32(ql_cpu_isa_t isa, const float *a, const float *b, int64_t n) {
    DISPATCH_RET(isa, ql__cpu_dot_f32, a, b, n)
}

float ql_cpu_dot_f16_f32(ql_cpu_isa_t isa, const uint16_t *a, const float *b, int64_t n) {
    DISPATCH_RET(isa, ql__cpu_dot_f16_f32, a, b, n)
}

void ql_cpu_axpy_f16(ql_cpu_isa_t isa, float *y, float a, const uint16_t *x, int64_t n) {
    DISPATCH(isa, ql__cpu_axpy_f16, y, a, x, n)
}

void ql_cpu_f32_to_f16(ql_cpu_isa_t isa, const float *x, uint16_t *y, int64_t n) {
    DISPATCH(isa, ql__cpu_f32_to_f16, x, y, n)
}

void ql__cpu_swiglu(ql_cpu_isa_t isa, float *out, const float *gate, const float *up, int64_t n) {
    DISPATCH(isa, ql__cpu_swiglu, out, gate, up, n)
}

/* ---- activations ---- */

static size_t round64(size_t n) {
    return (n + 63) & ~(size_t)63;
}

size_t ql_cpu_act_bytes(int64_t n_tok, int64_t n_in) {
    if (n_tok <= 0 || n_in <= 0 || n_in % QL_CPU_QK) return 0;
    const size_t nb = (size_t)(n_in / QL_CPU_QK), ng = ((size_t)n_tok + 15) / 16;
    return round64((size_t)n_tok * (size_t)n_in) + 3 * round64((size_t)n_tok * nb * 4) +
           round64(ng * 3 * nb * 16 * 4);
}

void ql_cpu_act_bind(ql_cpu_act_t *a, void *mem, int64_t n_tok, int64_t n_in, const float *x,
                     int64_t ld_x) {
    memset(a, 0, sizeof(*a));
    a->n_tok = n_tok;
    a->n_in = n_in;
    a->f32 = x;
    a->ld_f32 = ld_x;
    if (!mem || n_in % QL_CPU_QK) return;
    const size_t nb = (size_t)(n_in / QL_CPU_QK);
    uint8_t *p = mem;
    a->qs = (int8_t *)p;
    p += round64((size_t)n_tok * (size_t)n_in);
    a->d = (float *)p;
    p += round64((size_t)n_tok * nb * 4);
    a->s = (float *)p;
    p += round64((size_t)n_tok * nb * 4);
    a->sum = (int32_t *)p;
    p += round64((size_t)n_tok * nb * 4);
    a->g = (float *)p;
}

void ql_cpu_act_view(ql_cpu_act_t *v, const ql_cpu_act_t *x, int64_t t0, int64_t t1) {
    QL_ASSERT(0 <= t0 && t0 <= t1 && t1 <= x->n_tok);
    *v = *x;
    v->n_tok = t1 - t0;
    if (v->f32) v->f32 += t0 * x->ld_f32;
    if (!v->qs) return;
    const int64_t nb = x->n_in / QL_CPU_QK;
    v->qs += t0 * x->n_in;
    v->d += t0 * nb;
    v->s += t0 * nb;
    v->sum += t0 * nb;
    v->g = v->g && t0 % 16 == 0 ? v->g + t0 / 16 * 3 * nb * 16 : NULL;
}

void ql_cpu_act_quantize(ql_cpu_isa_t isa, ql_cpu_act_t *a, int64_t t0, int64_t t1) {
    QL_ASSERT(a->qs && a->n_in % QL_CPU_QK == 0);
    const int64_t nb = a->n_in / QL_CPU_QK;
    for (int64_t t = t0; t < t1; t++) {
        DISPATCH(isa, ql__cpu_quantize_act, a->f32 + t * a->ld_f32, a->n_in, a->qs + t * a->n_in,
                 a->d + t * nb, a->s + t * nb, a->sum + t * nb)
        if (!a->g) continue;
        float *gd = a->g + t / 16 * 3 * nb * 16 + t % 16, *gs = gd + nb * 16;
        int32_t *gsum = (int32_t *)(void *)(gs + nb * 16);
        for (int64_t b = 0; b < nb; b++) {
            gd[b * 16] = a->d[t * nb + b];
            gs[b * 16] = a->s[t * nb + b];
            gsum[b * 16] = a->sum[t * nb + b];
        }
    }
}

/* ---- weights ---- */

int ql_cpu_weight_type_supported(int t) {
    switch (t) {
    case QL_DTYPE_F32:
    case QL_DTYPE_F16:
    case QL_DTYPE_BF16:
    case QL_DTYPE_Q4_0:
    case QL_DTYPE_Q4_1:
    case QL_DTYPE_Q5_0:
    case QL_DTYPE_Q5_1:
    case QL_DTYPE_Q8_0:
    case QL_DTYPE_Q2_K: /* the K-quants, which model/quant.c dequantizes (NOTE(kquant)) */
    case QL_DTYPE_Q3_K:
    case QL_DTYPE_Q4_K:
    case QL_DTYPE_Q5_K:
    case QL_DTYPE_Q6_K:
    case QL_DTYPE_IQ4_NL: /* and the IQ4 pair, the same way */
    case QL_DTYPE_IQ4_XS: return 1;
    default: return 0;
    }
}

int ql_cpu_weight_needs_q8(const ql_cpu_weight_t *w) {
    return w->_ktype != QL_DTYPE_F32 && w->_ktype != QL_DTYPE_F16;
}

/* The types requantized to Q8_0 at init (NOTE(kquant)). */
static int needs_requant(int t) {
    return t == QL_DTYPE_Q2_K || t == QL_DTYPE_Q3_K || t == QL_DTYPE_Q4_K || t == QL_DTYPE_Q5_K ||
           t == QL_DTYPE_Q6_K || t == QL_DTYPE_IQ4_NL || t == QL_DTYPE_IQ4_XS;
}

/* Q8_0 block from 32 floats, ggml's rule with a round-to-nearest-even fp16 scale. */
static void requant_q8_0(const float *x, uint8_t *blk) {
    float amax = 0.0f;
    for (int i = 0; i < QL_CPU_QK; i++) amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = ql__cpu_fp32_to_fp16(d);
    memcpy(blk, &dh, 2);
    for (int i = 0; i < QL_CPU_QK; i++) {
        long q = lrintf(x[i] * id);
        blk[2 + i] = (uint8_t)(int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
    }
}

/* The unsigned quants u (as the panel stores them) and raw fp16 scale bits of a block. */
static void block_raw(int type, const uint8_t *p, uint8_t u[QL_CPU_QK], uint16_t *d, uint16_t *m) {
    uint32_t qh;
    *m = 0;
    memcpy(d, p, 2);
    switch (type) {
    case QL_DTYPE_Q4_0:
    case QL_DTYPE_Q4_1: {
        const uint8_t *qs = p + (type == QL_DTYPE_Q4_1 ? 4 : 2);
        if (type == QL_DTYPE_Q4_1) memcpy(m, p + 2, 2);
        for (int j = 0; j < 16; j++) {
            u[j] = qs[j] & 0x0f;
            u[j + 16] = qs[j] >> 4;
        }
        break;
    }
    case QL_DTYPE_Q5_0:
    case QL_DTYPE_Q5_1: {
        const int has_m = type == QL_DTYPE_Q5_1;
        if (has_m) memcpy(m, p + 2, 2);
        memcpy(&qh, p + (has_m ? 4 : 2), 4);
        const uint8_t *qs = p + (has_m ? 8 : 6);
        for (int j = 0; j < 16; j++) {
            u[j] = (uint8_t)((qs[j] & 0x0f) | (((qh >> j) & 1u) << 4));
            u[j + 16] = (uint8_t)((qs[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
        }
        break;
    }
    default: /* Q8_0 */ memcpy(u, p + 2, QL_CPU_QK); break;
    }
}

static int pack_of(int ktype) {
    switch (ktype) {
    case QL_DTYPE_Q4_0:
    case QL_DTYPE_Q4_1: return QL_CPU_PACK_P4;
    case QL_DTYPE_Q5_0:
    case QL_DTYPE_Q5_1: return QL_CPU_PACK_P8U;
    case QL_DTYPE_Q8_0: return QL_CPU_PACK_P8S;
    case QL_DTYPE_F16: return QL_CPU_PACK_F16;
    default: return QL_CPU_PACK_F32;
    }
}

/* Panel p of w (R = w->_panel_rows rows), as cpu/cpu-internal.h describes it: for quants,
 * byte (lane r, j) of vector v sits at offset 4R·v + 4r + j of the block, then R fp16 d
 * and (with a min) R fp16 m; for f16/f32, R values per k. */
static void pack_panel(const ql_cpu_weight_t *w, int64_t p, uint8_t *dst) {
    const int kt = w->_ktype, R = w->_panel_rows;
    const int64_t n_in = w->n_in;
    if (w->_pack == QL_CPU_PACK_F16 || w->_pack == QL_CPU_PACK_F32) {
        const size_t es = w->_pack == QL_CPU_PACK_F16 ? 2 : 4;
        for (int r = 0; r < R; r++) {
            const int64_t row = p * R + r;
            if (row >= w->n_out) continue; /* stays zero */
            const uint8_t *src = (const uint8_t *)w->_rows + (size_t)row * w->_row_bytes;
            for (int64_t k = 0; k < n_in; k++)
                memcpy(dst + (size_t)k * es * R + r * es, src + k * es, es);
        }
        return;
    }
    const int64_t nb = n_in / QL_CPU_QK;
    const size_t bbytes = ql_dtype_block_bytes(kt);
    const int p4 = w->_pack == QL_CPU_PACK_P4;
    const size_t qbytes = (size_t)(p4 ? 16 : 32) * R;
    const int has_min = ql__cpu_type_has_min(kt);
    const size_t pbb = qbytes + 2 * R + (has_min ? 2 * R : 0);
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *pb = dst + (size_t)b * pbb;
        for (int r = 0; r < R; r++) {
            const int64_t row = p * R + r;
            if (row >= w->n_out) continue;
            uint8_t u[QL_CPU_QK];
            uint16_t d, m;
            block_raw(kt,
                      (const uint8_t *)w->_rows + (size_t)row * w->_row_bytes + (size_t)b * bbytes,
                      u, &d, &m);
            if (p4) {
                for (int v = 0; v < 4; v++)
                    for (int j = 0; j < 4; j++)
                        pb[4 * R * v + 4 * r + j] =
                            (uint8_t)(u[4 * v + j] | (u[16 + 4 * v + j] << 4));
            } else {
                for (int g = 0; g < 8; g++)
                    for (int j = 0; j < 4; j++) pb[4 * R * g + 4 * r + j] = u[4 * g + j];
            }
            memcpy(pb + qbytes + 2 * r, &d, 2);
            if (has_min) memcpy(pb + qbytes + 2 * R + 2 * r, &m, 2);
        }
    }
}

int ql_cpu_weight_init(ql_cpu_weight_t *w, ql_cpu_isa_t isa, int type, int64_t n_in, int64_t n_out,
                       const void *data) {
    if (!w) return QL_EINVAL;
    memset(w, 0, sizeof(*w));
    if (!data || n_in <= 0 || n_out <= 0 || (unsigned)isa >= QL_CPU_ISA_COUNT) return QL_EINVAL;
    if (!ql_cpu_weight_type_supported(type)) return QL_EUNSUPPORTED;
    if (!ql_cpu_isa_supported(isa)) return QL_EUNSUPPORTED;
    size_t row_bytes;
    int rc = ql_dtype_row_bytes(type, n_in, &row_bytes);
    if (rc) return rc;
    if (n_in > (int64_t)1 << 30 || n_out > (int64_t)1 << 30) return QL_EINVAL;
    w->type = type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->data = data;
    w->row_bytes = row_bytes;
    w->isa = isa;
    w->_ktype = type;
    w->_rows = data;
    w->_row_bytes = row_bytes;

    float *tmp = NULL;
    if (type == QL_DTYPE_BF16 || needs_requant(type)) {
        const int kt = type == QL_DTYPE_BF16 ? QL_DTYPE_F32 : QL_DTYPE_Q8_0;
        size_t conv_row;
        if ((rc = ql_dtype_row_bytes(kt, n_in, &conv_row))) return rc;
        size_t total;
        if (ql_size_mul(conv_row, (size_t)n_out, &total)) return QL_EOVERFLOW;
        w->_conv = malloc(total ? total : 1);
        tmp = malloc((size_t)n_in * sizeof(float));
        if (!w->_conv || !tmp) {
            free(tmp);
            ql_cpu_weight_free(w);
            return QL_ENOMEM;
        }
        for (int64_t r = 0; r < n_out; r++) {
            const uint8_t *src = (const uint8_t *)data + (size_t)r * row_bytes;
            uint8_t *dst = (uint8_t *)w->_conv + (size_t)r * conv_row;
            if (type == QL_DTYPE_BF16) {
                for (int64_t k = 0; k < n_in; k++) {
                    uint16_t h;
                    memcpy(&h, src + 2 * k, 2);
                    uint32_t bits = (uint32_t)h << 16;
                    memcpy(dst + 4 * k, &bits, 4);
                }
            } else {
                rc = ql_dequantize_row(type, src, tmp, n_in);
                if (rc) {
                    free(tmp);
                    ql_cpu_weight_free(w);
                    return rc;
                }
                for (int64_t b = 0; b < n_in / QL_CPU_QK; b++)
                    requant_q8_0(tmp + b * QL_CPU_QK, dst + (size_t)b * 34);
            }
        }
        free(tmp);
        w->_ktype = kt;
        w->_rows = w->_conv;
        w->_row_bytes = conv_row;
    }
    if (w->_ktype != QL_DTYPE_F32 && w->_ktype != QL_DTYPE_F16 && n_in % QL_CPU_QK) {
        ql_cpu_weight_free(w);
        return QL_EINVAL;
    }

    const int R = ql__cpu_panel_rows(isa);
    w->_panel_rows = R;
    w->_n_panels = (n_out + R - 1) / R;
    if (isa == QL_CPU_ISA_PORTABLE) return 0;
    w->_pack = pack_of(w->_ktype);
    switch (w->_pack) {
    case QL_CPU_PACK_F16: w->_panel_bytes = (size_t)n_in * 2 * R; break;
    case QL_CPU_PACK_F32: w->_panel_bytes = (size_t)n_in * 4 * R; break;
    default: {
        const size_t q = (size_t)(w->_pack == QL_CPU_PACK_P4 ? 16 : 32) * R;
        w->_panel_bytes = (size_t)(n_in / QL_CPU_QK) *
                          (q + 2 * R + (ql__cpu_type_has_min(w->_ktype) ? 2 * R : 0));
    }
    }
    size_t total;
    if (ql_size_mul(w->_panel_bytes, (size_t)w->_n_panels, &total)) {
        ql_cpu_weight_free(w);
        return QL_EOVERFLOW;
    }
    total = round64(total);
    if (posix_memalign(&w->_packed, 64, total) != 0) {
        w->_packed = NULL;
        ql_cpu_weight_free(w);
        return QL_ENOMEM;
    }
    memset(w->_packed, 0, total);
    for (int64_t p = 0; p < w->_n_panels; p++)
        pack_panel(w, p, (uint8_t *)w->_packed + (size_t)p * w->_panel_bytes);
    return 0;
}

void ql_cpu_weight_free(ql_cpu_weight_t *w) {
    if (!w) return;
    free(w->_conv);
    free(w->_packed);
    memset(w, 0, sizeof(*w));
}

/* ---- matmul ---- */

void ql_cpu_matmul_rows(const ql_cpu_weight_t *w, const ql_cpu_act_t *x, float *y, int64_t ldy,
                        int64_t r0, int64_t r1) {
    QL_ASSERT(x->n_in == w->n_in);
    const int R = w->_panel_rows;
    QL_ASSERT(r0 >= 0 && r0 <= r1 && r1 <= w->n_out && r0 % R == 0);
    QL_ASSERT(r1 % R == 0 || r1 == w->n_out);
    if (r0 == r1 || x->n_tok == 0) return;
    if (w->isa == QL_CPU_ISA_PORTABLE) {
        ql__cpu_mm_rows_portable(w, x, y, ldy, r0, r1);
        return;
    }
    ql__cpu_mm_args_t a = {
        .w = w,
        .x = x,
        .y = y,
        .ldy = ldy,
        .p0 = r0 / R,
        .p1 = (r1 + R - 1) / R,
    };
    switch (w->isa) {
#ifdef QL_CPU_HAVE_X86
    case QL_CPU_ISA_AVX2: ql__cpu_mm_panels_avx2(&a); break;
    case QL_CPU_ISA_AVXVNNI: ql__cpu_mm_panels_avxvnni(&a); break;
    case QL_CPU_ISA_AVX512VNNI: ql__cpu_mm_panels_avx512vnni(&a); break;
    case QL_CPU_ISA_AMX: ql__cpu_mm_panels_amx(&a); break;
#endif
    default: QL_ASSERT(!"weight prepared for an ISA this build lacks");
    }
}

void ql_cpu_matmul_part_rows(const ql_cpu_weight_t *w, int ith, int nth, int64_t *r0, int64_t *r1) {
    const int64_t np = w->_n_panels;
    const int64_t p0 = np * ith / nth, p1 = np * (ith + 1) / nth;
    *r0 = p0 * w->_panel_rows;
    *r1 = QL_MIN(p1 * w->_panel_rows, w->n_out);
}

void ql_cpu_matmul_part(const ql_cpu_weight_t *w, const ql_cpu_act_t *x, float *y, int64_t ldy,
                        int ith, int nth) {
    int64_t r0, r1;
    ql_cpu_matmul_part_rows(w, ith, nth, &r0, &r1);
    ql_cpu_matmul_rows(w, x, y, ldy, r0, r1);
}

typedef struct mm_job_s {
    ql_cpu_pool_t *pool;
    const ql_cpu_weight_t *w;
    ql_cpu_act_t x;
    float *y;
} mm_job_t;

static void mm_task(void *ctx, int ith, int nth) {
    mm_job_t *j = ctx;
    if (ql_cpu_weight_needs_q8(j->w)) {
        const int64_t n = j->x.n_tok;
        ql_cpu_act_quantize((ql_cpu_isa_t)j->w->isa, &j->x, n * ith / nth, n * (ith + 1) / nth);
        ql_cpu_pool_barrier(j->pool);
    }
    ql_cpu_matmul_part(j->w, &j->x, j->y, j->w->n_out, ith, nth);
}

void ql_cpu_matmul(ql_cpu_pool_t *pool, const ql_cpu_weight_t *w, const float *x, int64_t n_tok,
                   void *qmem, float *y) {
    mm_job_t j = {.pool = pool, .w = w, .y = y};
    ql_cpu_act_bind(&j.x, ql_cpu_weight_needs_q8(w) ? qmem : NULL, n_tok, w->n_in, x, w->n_in);
    ql_cpu_pool_run(pool, mm_task, &j);
}
