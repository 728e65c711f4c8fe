/*
 * cpu/ops.c — the plain-C reference ops of the forward pass (RMSNorm, RoPE, softmax,
 * SwiGLU, embedding gather, attention over the paged KV cache). The forward pass runs
 * these very functions (or, for attention, the same per-head routine with the ISA's
 * vector helpers, which give the same bits), and the CUDA kernels are tested against them.
 *
 * Numerics follow ggml where llama.cpp is the golden reference: RMSNorm's mean of squares
 * accumulates in double, RoPE angles are formed by repeated f32 multiplication, silu is
 * x / (1 + e^−x). e^x is ql__cpu_expf (NOTE(expf) in cpu/cpu-internal.h, < 1 ulp), softmax
 * sums in 8 partial sums (ql__cpu_softmax_num).
 */
#define QL_LOG_MODULE "cpu"
#include <stdlib.h>

#include "cpu/cpu-internal.h"

/* ---- RMSNorm ---- */

void ql_cpu_rmsnorm(float *out, const float *x, const float *w, int64_t n_tok, int64_t dim,
                    float eps) {
    for (int64_t t = 0; t < n_tok; t++) {
        const float *xt = x + t * dim;
        float *ot = out + t * dim;
        /* NOTE(rmsnorm-lanes): x_i² (a float) adds into double lane i mod 8, and the lanes
         * reduce as ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)). One running sum was a chain of dim
         * dependent adds (3% of a decode step at batch 32); the lanes run side by side. */
        double l[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        int64_t k = 0;
        for (; k + 8 <= dim; k += 8)
            for (int j = 0; j < 8; j++) l[j] += (double)(xt[k + j] * xt[k + j]);
        for (; k < dim; k++) l[k & 7] += (double)(xt[k] * xt[k]);
        const double sum = ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
        const float mean = (float)(sum / (double)dim);
        const float scale = 1.0f / sqrtf(mean + eps);
        if (w) {
            for (int64_t i = 0; i < dim; i++) ot[i] = (xt[i] * scale) * w[i];
        } else {
            for (int64_t i = 0; i < dim; i++) ot[i] = xt[i] * scale;
        }
    }
}

/* ---- RoPE ---- */

void ql_rope_yarn_corr_dims(int n_rot, int n_ctx_orig, float freq_base, float beta_fast,
                            float beta_slow, float dims[2]) {
    const float pi2 = 2.0f * 3.14159265358979323846f;
    const float start = floorf((float)n_rot * logf((float)n_ctx_orig / (beta_fast * pi2)) /
                               (2.0f * logf(freq_base)));
    const float end = ceilf((float)n_rot * logf((float)n_ctx_orig / (beta_slow * pi2)) /
                            (2.0f * logf(freq_base)));
    dims[0] = start > 0.0f ? start : 0.0f;
    dims[1] = end < (float)(n_rot - 1) ? end : (float)(n_rot - 1);
}

void ql_cpu_rope_cache(const ql_rope_params_t *p, int32_t pos, float *cs) {
    const float theta_scale = powf(p->freq_base, -2.0f / (float)p->n_rot);
    float mscale = p->mscale != 0.0f ? p->mscale : 1.0f;
    if (p->ext_factor != 0.0f) mscale *= 1.0f + 0.1f * logf(1.0f / p->freq_scale);
    const float lo = p->corr_dims[0], span = fmaxf(0.001f, p->corr_dims[1] - p->corr_dims[0]);
    float theta = (float)pos;
    for (int i = 0; i < p->n_rot / 2; i++) {
        const float ff = p->freq_factors ? p->freq_factors[i] : 1.0f;
        const float extrap = theta / ff, interp = p->freq_scale * extrap;
        float th = interp;
        if (p->ext_factor != 0.0f) { /* NOTE(yarn) */
            const float y = ((float)i - lo) / span;
            const float ramp = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * p->ext_factor;
            th = interp * (1.0f - ramp) + extrap * ramp;
        }
        cs[2 * i] = cosf(th) * mscale;
        cs[2 * i + 1] = sinf(th) * mscale;
        theta *= theta_scale;
    }
}

void ql_cpu_rope_apply(const ql_rope_params_t *p, const float *cs, float *x, int n_head,
                       int head_dim) {
    const int half = p->n_rot / 2;
    for (int h = 0; h < n_head; h++) {
        float *xh = x + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const float c = cs[2 * i], s = cs[2 * i + 1];
            float *a, *b;
            if (p->mode == QL_ROPE_MODE_NEOX) {
                a = xh + i;
                b = xh + i + half;
            } else {
                a = xh + 2 * i;
                b = xh + 2 * i + 1;
            }
            const float x0 = *a, x1 = *b;
            *a = x0 * c - x1 * s;
            *b = x0 * s + x1 * c;
        }
    }
}

void ql_cpu_rope(const ql_rope_params_t *p, float *x, const int32_t *pos, int64_t n_tok, int n_head,
                 int head_dim) {
    float *cs = malloc(sizeof(float) * (size_t)(p->n_rot > 0 ? p->n_rot : 1));
    QL_ASSERT(cs);
    for (int64_t t = 0; t < n_tok; t++) {
        ql_cpu_rope_cache(p, pos[t], cs);
        ql_cpu_rope_apply(p, cs, x + t * (int64_t)n_head * head_dim, n_head, head_dim);
    }
    free(cs);
}

/* ---- softmax, SwiGLU ---- */

void ql_cpu_softmax(float *x, int64_t n_rows, int64_t n) {
    for (int64_t r = 0; r < n_rows; r++) {
        float *xr = x + r * n;
        QL_ASSERT(n <= INT32_MAX);
        const float inv = ql__cpu_softmax_num(xr, (int32_t)n);
        for (int64_t i = 0; i < n; i++) xr[i] *= inv;
    }
}

void ql_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n_tok, int64_t n_ff) {
    for (int64_t i = 0; i < n_tok * n_ff; i++) {
        const float g = gate[i];
        out[i] = (g / (1.0f + ql__cpu_expf(-g))) * up[i];
    }
}

/* ---- embedding gather ---- */

int ql_cpu_get_rows(float *out, const void *table, int type, int64_t n_rows, int64_t dim,
                    const int32_t *ids, int64_t n_ids) {
    size_t row_bytes;
    int rc = ql_dtype_row_bytes(type, dim, &row_bytes);
    if (rc) return rc == QL_EINVAL ? QL_EINVAL : rc;
    for (int64_t t = 0; t < n_ids; t++) {
        if (ids[t] < 0 || ids[t] >= n_rows) return QL_EINVAL;
        const uint8_t *row = (const uint8_t *)table + (size_t)ids[t] * row_bytes;
        if (type == QL_DTYPE_F32) {
            memcpy(out + t * dim, row, (size_t)dim * sizeof(float));
        } else if ((rc = ql_dequantize_row(type, row, out + t * dim, dim))) {
            return rc;
        }
    }
    return 0;
}

/* ---- attention over the paged KV cache ---- */

/* The reference semantics, with the ISA's dot and axpy helpers (which give the same bits on
 * every path); any head_dim, any group size. */
static void attn_group_generic(ql_cpu_isa_t isa, const ql_kv_layout_t *kv, const uint16_t *k_pool,
                               const uint16_t *v_pool, int kv_head, const int32_t *table,
                               int32_t n_pos, const float *q, float *out, int n_group, float scale,
                               float *scratch) {
    const int hd = kv->head_dim, bs = kv->block_size;
    /* scores[g][j] = (q_g · k_j) · scale */
    for (int32_t j0 = 0; j0 < n_pos; j0 += bs) {
        const int32_t n = QL_MIN(bs, n_pos - j0);
        const uint16_t *kb = k_pool + ql_kv_offset(kv, table[j0 / bs], kv_head, 0);
        for (int32_t j = 0; j < n; j++)
            for (int g = 0; g < n_group; g++)
                scratch[(int64_t)g * n_pos + j0 + j] =
                    ql_cpu_dot_f16_f32(isa, kb + (int64_t)j * hd, q + (int64_t)g * hd, hd) * scale;
    }
    /* softmax numerators in place; out = Σ_j e_j v_j / Σ_j e_j */
    float inv[QL__CPU_ATTN_GROUP_MAX];
    for (int g = 0; g < n_group; g++) {
        inv[g] = ql__cpu_softmax_num(scratch + (int64_t)g * n_pos, n_pos);
        memset(out + (int64_t)g * hd, 0, sizeof(float) * (size_t)hd);
    }
    for (int32_t j0 = 0; j0 < n_pos; j0 += bs) {
        const int32_t n = QL_MIN(bs, n_pos - j0);
        const uint16_t *vb = v_pool + ql_kv_offset(kv, table[j0 / bs], kv_head, 0);
        for (int32_t j = 0; j < n; j++)
            for (int g = 0; g < n_group; g++)
                ql_cpu_axpy_f16(isa, out + (int64_t)g * hd, scratch[(int64_t)g * n_pos + j0 + j],
                                vb + (int64_t)j * hd, hd);
    }
    for (int g = 0; g < n_group; g++)
        for (int i = 0; i < hd; i++) out[(int64_t)g * hd + i] *= inv[g];
}

static int attn_fast(const ql_kv_layout_t *kv, int n_group) {
    return kv->head_dim % 8 == 0 && kv->head_dim <= QL__CPU_ATTN_HD_FAST &&
           n_group <= QL__CPU_ATTN_GROUP_MAX;
}

void ql__cpu_attn_tile(ql_cpu_isa_t isa, const ql_kv_layout_t *kv, const uint16_t *k_pool,
                       const uint16_t *v_pool, int kv_head, const int32_t *table, int n_q,
                       const int32_t *n_pos, const float *const *q, float *const *out, int n_group,
                       float scale, float *scratch, int64_t scratch_stride) {
    QL_ASSERT(n_q >= 1 && n_q <= QL__CPU_ATTN_TILE);
#ifdef QL_CPU_HAVE_X86
    if (attn_fast(kv, n_group)) {
        switch (isa) {
        case QL_CPU_ISA_AVX2:
            ql__cpu_attn_tile_avx2(kv, k_pool, v_pool, kv_head, table, n_q, n_pos, q, out, n_group,
                                   scale, scratch, scratch_stride);
            return;
        case QL_CPU_ISA_AVXVNNI:
            ql__cpu_attn_tile_avxvnni(kv, k_pool, v_pool, kv_head, table, n_q, n_pos, q, out,
                                      n_group, scale, scratch, scratch_stride);
            return;
        case QL_CPU_ISA_AVX512VNNI:
        case QL_CPU_ISA_AMX:
            ql__cpu_attn_tile_avx512vnni(kv, k_pool, v_pool, kv_head, table, n_q, n_pos, q, out,
                                         n_group, scale, scratch, scratch_stride);
            return;
        default: break;
        }
    }
#endif
    for (int u = 0; u < n_q; u++)
        attn_group_generic(isa, kv, k_pool, v_pool, kv_head, table, n_pos[u], q[u], out[u], n_group,
                           scale, scratch);
}

void ql__cpu_attn_group(ql_cpu_isa_t isa, const ql_kv_layout_t *kv, const uint16_t *k_pool,
                        const uint16_t *v_pool, int kv_head, const int32_t *table, int32_t n_pos,
                        const float *q, float *out, int n_group, float scale, float *scratch) {
    ql__cpu_attn_tile(isa, kv, k_pool, v_pool, kv_head, table, 1, &n_pos, &q, &out, n_group, scale,
                      scratch, n_pos);
}

int ql_cpu_attention_ref(const ql_cpu_attn_args_t *a) {
    if (!a || !a->kv || !a->k_pool || !a->v_pool || !a->q || !a->out || a->n_tok < 0)
        return QL_EINVAL;
    const ql_kv_layout_t *kv = a->kv;
    if (kv->n_kv_head <= 0 || a->n_head <= 0 || a->n_head % kv->n_kv_head || kv->head_dim <= 0 ||
        kv->block_size <= 0)
        return QL_EINVAL;
    const int n_group = a->n_head / kv->n_kv_head;
    if (n_group > QL__CPU_ATTN_GROUP_MAX) return QL_EINVAL;
    int32_t max_pos = 0;
    for (int64_t t = 0; t < a->n_tok; t++) {
        const int32_t s = a->seq_of[t];
        if (s < 0 || s >= a->n_seqs || a->pos[t] < 0) return QL_EINVAL;
        if (a->pos[t] / kv->block_size >= a->n_blocks[s]) return QL_EINVAL;
        for (int32_t i = 0; i <= a->pos[t] / kv->block_size; i++)
            if (a->block_tables[s][i] < 0 || a->block_tables[s][i] >= kv->n_blocks)
                return QL_EINVAL;
        max_pos = QL_MAX(max_pos, a->pos[t]);
    }
    float *scratch = malloc(sizeof(float) * (size_t)n_group * (size_t)(max_pos + 1));
    if (!scratch) return QL_ENOMEM;
    const int64_t hd = kv->head_dim;
    for (int64_t t = 0; t < a->n_tok; t++) {
        const int32_t s = a->seq_of[t];
        for (int h = 0; h < kv->n_kv_head; h++) {
            const int64_t off = (t * a->n_head + (int64_t)h * n_group) * hd;
            ql__cpu_attn_group(QL_CPU_ISA_PORTABLE, kv, a->k_pool, a->v_pool, h, a->block_tables[s],
                               a->pos[t] + 1, a->q + off, a->out + off, n_group, a->scale, scratch);
        }
    }
    free(scratch);
    return 0;
}
