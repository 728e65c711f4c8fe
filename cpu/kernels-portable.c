/*
 * cpu/kernels-portable.c — the plain-C kernels: what runs on a CPU without AVX2, what
 * QL_CPU_ISA=portable forces, and the definition of the bits every SIMD path must
 * reproduce (NOTE(bitwise) in cpu/cpu-internal.h). They read weights in the file's own
 * row layout, block by block.
 *
 * NOTE(fmaf): the float steps use fmaf() so that they round exactly like the SIMD fused
 * multiply-adds; on a CPU without FMA, libm computes it exactly in software (slow but
 * this path is a fall-back). The module is built with -ffp-contract=off so the compiler
 * never fuses anything else.
 */
#include "cpu/cpu-internal.h"

/* ---- activation quantization ---- */

void ql__cpu_quantize_act_portable(const float *x, int64_t n, int8_t *qs, float *d, float *s,
                                   int32_t *sum) {
    for (int64_t b = 0; b < n / QL_CPU_QK; b++) {
        const float *xb = x + b * QL_CPU_QK;
        float amax = 0.0f;
        for (int i = 0; i < QL_CPU_QK; i++) {
            float a = fabsf(xb[i]);
            if (a > amax) amax = a;
        }
        const float dd = amax / 127.0f;
        const float id = dd != 0.0f ? 1.0f / dd : 0.0f;
        int32_t isum = 0;
        for (int i = 0; i < QL_CPU_QK; i++) {
            int32_t q = (int32_t)nearbyintf(xb[i] * id);
            qs[b * QL_CPU_QK + i] = (int8_t)q;
            isum += q;
        }
        d[b] = dd;
        sum[b] = isum;
        s[b] = dd * (float)isum;
    }
}

/* ---- weight blocks ---- */

static uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof(v));
    return v;
}

void ql__cpu_block_unpack(int type, const void *blk, int8_t w[QL_CPU_QK], float *d, float *m) {
    const uint8_t *p = blk;
    *m = 0.0f;
    switch (type) {
    case QL_DTYPE_Q4_0:
        *d = ql__cpu_fp16_load(p);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)((p[2 + j] & 0x0f) - 8);
            w[j + 16] = (int8_t)((p[2 + j] >> 4) - 8);
        }
        break;
    case QL_DTYPE_Q4_1:
        *d = ql__cpu_fp16_load(p);
        *m = ql__cpu_fp16_load(p + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)(p[4 + j] & 0x0f);
            w[j + 16] = (int8_t)(p[4 + j] >> 4);
        }
        break;
    case QL_DTYPE_Q5_0: {
        *d = ql__cpu_fp16_load(p);
        const uint32_t qh = load_u32(p + 2);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)(((p[6 + j] & 0x0f) | (((qh >> j) & 1u) << 4)) - 16);
            w[j + 16] = (int8_t)(((p[6 + j] >> 4) | (((qh >> (j + 16)) & 1u) << 4)) - 16);
        }
        break;
    }
    case QL_DTYPE_Q5_1: {
        *d = ql__cpu_fp16_load(p);
        *m = ql__cpu_fp16_load(p + 2);
        const uint32_t qh = load_u32(p + 4);
        for (int j = 0; j < 16; j++) {
            w[j] = (int8_t)((p[8 + j] & 0x0f) | (((qh >> j) & 1u) << 4));
            w[j + 16] = (int8_t)((p[8 + j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
        }
        break;
    }
    case QL_DTYPE_Q8_0:
        *d = ql__cpu_fp16_load(p);
        memcpy(w, p + 2, QL_CPU_QK);
        break;
    default: QL_ASSERT(!"block type without a kernel");
    }
}

/* ---- matmul ---- */

static float row_value_f(int type, const void *row, int64_t k) {
    if (type == QL_DTYPE_F16) return ql__cpu_fp16_load((const uint8_t *)row + 2 * k);
    return ((const float *)row)[k];
}

void ql__cpu_mm_rows_portable(const ql_cpu_weight_t *w, const ql_cpu_act_t *x, float *y,
                              int64_t ldy, int64_t r0, int64_t r1) {
    const int kt = w->_ktype;
    const int64_t n_in = w->n_in;
    if (kt == QL_DTYPE_F32 || kt == QL_DTYPE_F16) {
        for (int64_t r = r0; r < r1; r++) {
            const void *row = (const uint8_t *)w->_rows + (size_t)r * w->_row_bytes;
            for (int64_t t = 0; t < x->n_tok; t++) {
                const float *xt = x->f32 + t * x->ld_f32;
                float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
                for (int64_t k = 0; k < n_in; k++)
                    s[k & 3] = fmaf(row_value_f(kt, row, k), xt[k], s[k & 3]);
                y[t * ldy + r] = (s[0] + s[1]) + (s[2] + s[3]);
            }
        }
        return;
    }
    const int64_t nb = n_in / QL_CPU_QK;
    const size_t bbytes = ql_dtype_block_bytes(kt);
    const int has_min = ql__cpu_type_has_min(kt);
    for (int64_t r = r0; r < r1; r++) {
        const uint8_t *row = (const uint8_t *)w->_rows + (size_t)r * w->_row_bytes;
        for (int64_t t = 0; t < x->n_tok; t++) {
            const int8_t *aq = x->qs + t * n_in;
            const float *ad = x->d + t * nb, *as = x->s + t * nb;
            float acc = 0.0f, macc = 0.0f;
            for (int64_t b = 0; b < nb; b++) {
                int8_t wq[QL_CPU_QK];
                float dw, mw;
                ql__cpu_block_unpack(kt, row + (size_t)b * bbytes, wq, &dw, &mw);
                int32_t isum = 0;
                for (int i = 0; i < QL_CPU_QK; i++) isum += (int32_t)wq[i] * aq[b * QL_CPU_QK + i];
                acc = fmaf((float)isum, dw * ad[b], acc);
                if (has_min) macc = fmaf(mw, as[b], macc);
            }
            y[t * ldy + r] = acc + macc;
        }
    }
}

/* ---- vector helpers ---- */

static float reduce8(const float l[8]) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

float ql__cpu_dot_f32_portable(const float *a, const float *b, int64_t n) {
    float l[8] = {0};
    for (int64_t i = 0; i < n; i++) l[i & 7] = fmaf(a[i], b[i], l[i & 7]);
    return reduce8(l);
}

float ql__cpu_dot_f16_f32_portable(const uint16_t *a, const float *b, int64_t n) {
    float l[8] = {0};
    for (int64_t i = 0; i < n; i++) l[i & 7] = fmaf(ql__cpu_fp16_to_fp32(a[i]), b[i], l[i & 7]);
    return reduce8(l);
}

void ql__cpu_axpy_f16_portable(float *y, float a, const uint16_t *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = fmaf(a, ql__cpu_fp16_to_fp32(x[i]), y[i]);
}

void ql__cpu_f32_to_f16_portable(const float *x, uint16_t *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] = ql__cpu_fp32_to_fp16(x[i]);
}

void ql__cpu_swiglu_portable(float *out, const float *gate, const float *up, int64_t n) {
    ql_cpu_swiglu(out, gate, up, 1, n);
}
