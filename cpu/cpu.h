/*
 * cpu/cpu.h — the CPU backend: run-time ISA selection, a persistent thread pool, quantized
 * matmul kernels, the plain-C reference ops every CUDA kernel is tested against, and the
 * Llama-family forward pass over a paged KV cache (ql_cpu_backend_init, behind the
 * backend/backend.h vtable).
 *
 * Layout conventions: activations are row-major [n_tok][dim] f32; a weight matrix W has
 * n_out rows of n_in elements in its GGUF type (GGUF ne[0] = n_in, ne[1] = n_out) and a
 * matmul computes Y[n_tok][n_out] = X[n_tok][n_in] · Wᵀ.
 */
#ifndef QL_CPU_H
#define QL_CPU_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "core/core.h"
#include "model/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- CPU features and ISA paths ---- */

/* CPU features the kernels dispatch on (bits). */
typedef enum ql_cpu_feature_e {
    QL_CPU_FEATURE_AVX2 = 1 << 0,
    QL_CPU_FEATURE_FMA = 1 << 1,
    QL_CPU_FEATURE_F16C = 1 << 2,
    QL_CPU_FEATURE_AVX512F = 1 << 3,
    QL_CPU_FEATURE_AVXVNNI = 1 << 4,    /* VEX-encoded 256-bit VNNI (Alder Lake, Sapphire Rapids) */
    QL_CPU_FEATURE_AVX512VNNI = 1 << 5, /* with AVX512VL and AVX512BW: EVEX 256-bit VNNI */
    QL_CPU_FEATURE_AMXINT8 = 1 << 6,    /* AMX-TILE + AMX-INT8, tile state granted by the OS */
} ql_cpu_feature_t;

/** The features of the CPU this process runs on, detected once. Thread: any. */
QL_API unsigned ql_cpu_features(void);
/** Writes "avx2 fma f16c" (or "portable") into buf. */
QL_API void ql_cpu_features_str(unsigned features, char *buf, size_t len);
/** Online CPU cores (at least 1). */
QL_API int ql_cpu_count(void);

/* Kernel families. One binary carries all of them (functions compiled with
 * __attribute__((target(...)))); a weight or backend picks one at init. */
typedef enum ql_cpu_isa_e {
    QL_CPU_ISA_PORTABLE = 0,   /* plain C */
    QL_CPU_ISA_AVX2 = 1,       /* avx2 fma f16c */
    QL_CPU_ISA_AVXVNNI = 2,    /* + avxvnni */
    QL_CPU_ISA_AVX512VNNI = 3, /* + avx512f/bw/vl/vnni: 512-bit matmul on 16-row panels */
    QL_CPU_ISA_AMX = 4,        /* + amx-int8: 16-token groups of the quantized matmul on tiles */
    QL_CPU_ISA_COUNT = 5,
} ql_cpu_isa_t;

/** The best ISA path the CPU supports, lowered by the environment variable QL_CPU_ISA
 *  ("portable", "avx2", "avxvnni", "avx512vnni", "amx") when set: that is how tests and users
 *  force the portable path. An ISA the CPU lacks is never returned. Thread: any. */
QL_API ql_cpu_isa_t ql_cpu_isa_default(void);
/** 1 when this CPU can run `isa`. */
QL_API int ql_cpu_isa_supported(ql_cpu_isa_t isa);
QL_API const char *ql_cpu_isa_name(ql_cpu_isa_t isa);

/* ---- thread pool ---- */

/* A persistent pool of n_threads - 1 workers plus the calling thread. ql_cpu_pool_run()
 * runs fn(ctx, ith, nth) once on each of the nth threads (ith = 0 on the caller) and
 * returns when all have returned. No allocation per run. Between runs, workers spin for a
 * short while (a decode step follows the previous one within microseconds), then sleep on
 * a condition variable so an idle server burns no CPU. */
typedef struct ql_cpu_pool_s ql_cpu_pool_t;
typedef void (*ql_cpu_task_fn)(void *ctx, int ith, int nth);

/** n_threads <= 0 means all online cores. @return 0, QL_EINVAL, QL_ENOMEM (thread or
 *  memory creation failed). On success *out is owned by the caller: ql_cpu_pool_free(). */
QL_API int ql_cpu_pool_init(int n_threads, ql_cpu_pool_t **out);
/** Joins the workers. NULL is a no-op. Not while a run is in progress. */
QL_API void ql_cpu_pool_free(ql_cpu_pool_t *p);
QL_API int ql_cpu_pool_n_threads(const ql_cpu_pool_t *p);
/** Runs fn on every thread of the pool. Thread: one caller at a time (the pool's owner). */
QL_API void ql_cpu_pool_run(ql_cpu_pool_t *p, ql_cpu_task_fn fn, void *ctx);
/** Inside fn: waits until every thread of the run has reached the barrier. Must be called
 *  by all nth threads the same number of times. Memory written before it is visible to
 *  every thread after it. */
QL_API void ql_cpu_pool_barrier(ql_cpu_pool_t *p);

/* ---- quantized activations ---- */

/* Activations X [n_tok][n_in] as the matmul reads them: f32 rows (for f16/f32 weights) and,
 * for quantized weights, 8-bit blocks of 32 like ggml's Q8_1 but structure-of-arrays and
 * with f32 scales: x[i] ≈ qs[i]·d[b], qs in [-127, 127], d = max|x_b| / 127,
 * sum[b] = Σ qs (exact), s[b] = d·sum (for the min term of Q4_1/Q5_1 weights).
 * NOTE(act-f32-scale): ggml stores d and s as fp16; f32 keeps the only error the rounding
 * of x/d to an integer (|x − q·d| <= d/2), which is the bound the tests check. */
typedef struct ql_cpu_act_s {
    int64_t n_tok, n_in;
    const float *f32; /* [n_tok][ld_f32], borrowed */
    int64_t ld_f32;
    int8_t *qs;   /* [n_tok][n_in] */
    float *d;     /* [n_tok][n_in / 32] */
    float *s;     /* [n_tok][n_in / 32] */
    int32_t *sum; /* [n_tok][n_in / 32] */
    /* NOTE(act-groups): d, s and sum again, per group of 16 tokens and transposed:
     * [n_tok / 16 rounded up][3][n_in / 32][16] (sum as int32 bits), the layout the AMX
     * matmul reads. NULL in a view whose first token is not a group's first. */
    float *g;
} ql_cpu_act_t;

/** Bytes ql_cpu_act_bind() needs for up to n_tok rows of n_in (n_in a multiple of 32 for
 *  the quantized part; otherwise only the f32 view is usable and 0 is returned). */
QL_API size_t ql_cpu_act_bytes(int64_t n_tok, int64_t n_in);
/** Points the quantized arrays of `a` into `mem` (ql_cpu_act_bytes() bytes, 64-aligned)
 *  and sets its shape and f32 view. Borrows both. */
QL_API void ql_cpu_act_bind(ql_cpu_act_t *a, void *mem, int64_t n_tok, int64_t n_in, const float *x,
                            int64_t ld_x);
/** *v := the tokens [t0, t1) of x (borrowed; the group copy only when t0 is a multiple of 16,
 *  NOTE(act-groups)). */
QL_API void ql_cpu_act_view(ql_cpu_act_t *v, const ql_cpu_act_t *x, int64_t t0, int64_t t1);
/** Quantizes rows [t0, t1) of a->f32 into a's blocks. */
QL_API void ql_cpu_act_quantize(ql_cpu_isa_t isa, ql_cpu_act_t *a, int64_t t0, int64_t t1);

/* ---- weights and matmul ---- */

/* A weight matrix ready for the kernels. `data` (the file's rows, usually in the mmap) is
 * borrowed. For a SIMD ISA the rows are repacked at init into panels of 8 rows with the
 * block layout the kernels read (cpu/cpu-internal.h); the quants and scales are the
 * file's, bit for bit. K-quants are requantized to Q8_0 and BF16 widened to F32 at init
 * (NOTE(kquant) in cpu/matmul.c). */
typedef struct ql_cpu_weight_s {
    int type;         /* ql_dtype_t as stored */
    int64_t n_in;     /* elements per row (GGUF ne[0]) */
    int64_t n_out;    /* rows (GGUF ne[1]) */
    const void *data; /* [n_out] rows of row_bytes; borrowed */
    size_t row_bytes;
    int isa; /* ql_cpu_isa_t the weight was prepared for */
    /* private */
    int _ktype;          /* type the kernels compute on */
    const void *_rows;   /* rows in _ktype: data, or _conv */
    size_t _row_bytes;   /* of _rows */
    int _pack;           /* ql_cpu_pack_t */
    int _panel_rows;     /* rows per panel: 8, or 16 for the 512-bit kernels */
    void *_conv;         /* owned converted rows, or NULL */
    void *_packed;       /* owned panels, or NULL */
    size_t _panel_bytes; /* bytes per panel */
    int64_t _n_panels;
} ql_cpu_weight_t;

/** 1 when the matmul can compute on weights of type `t`. */
QL_API int ql_cpu_weight_type_supported(int t);
/** Prepares `w` for `isa`. @return 0, QL_EINVAL (shape/type mismatch), QL_EUNSUPPORTED
 *  (type), QL_ENOMEM. On success release with ql_cpu_weight_free(). */
QL_API int ql_cpu_weight_init(ql_cpu_weight_t *w, ql_cpu_isa_t isa, int type, int64_t n_in,
                              int64_t n_out, const void *data);
QL_API void ql_cpu_weight_free(ql_cpu_weight_t *w); /* zeroed or freed: no-op */
/** 1 when the weight's type reads quantized activations (so x must be quantized). */
QL_API int ql_cpu_weight_needs_q8(const ql_cpu_weight_t *w);

/** Y[t][r] for all tokens of x and rows [r0, r1) of w, r0 and r1 multiples of the weight's
 *  panel height (8, or 16 on the AVX512 path; r1 may be n_out). y is [x->n_tok][ldy]. x must
 *  be quantized when ql_cpu_weight_needs_q8(w). */
QL_API void ql_cpu_matmul_rows(const ql_cpu_weight_t *w, const ql_cpu_act_t *x, float *y,
                               int64_t ldy, int64_t r0, int64_t r1);
/** The rows [*r0, *r1) thread ith of nth computes in ql_cpu_matmul_part(). */
QL_API void ql_cpu_matmul_part_rows(const ql_cpu_weight_t *w, int ith, int nth, int64_t *r0,
                                    int64_t *r1);
/** Thread ith of nth takes its share of the rows (in panels): call from a pool task. */
QL_API void ql_cpu_matmul_part(const ql_cpu_weight_t *w, const ql_cpu_act_t *x, float *y,
                               int64_t ldy, int ith, int nth);
/** Convenience: quantizes (when needed) and runs the matmul on the pool. `qmem` holds
 *  ql_cpu_act_bytes(n_tok, n_in) bytes (64-aligned). */
QL_API void ql_cpu_matmul(ql_cpu_pool_t *pool, const ql_cpu_weight_t *w, const float *x,
                          int64_t n_tok, void *qmem, float *y);

/* ---- vector helpers (dispatch on isa; same bits on every path, see cpu-internal.h) ---- */

/** Σ a[i]·b[i] as 8 fma lanes (i mod 8) reduced ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)). */
QL_API float ql_cpu_dot_f32(ql_cpu_isa_t isa, const float *a, const float *b, int64_t n);
QL_API float ql_cpu_dot_f16_f32(ql_cpu_isa_t isa, const uint16_t *a, const float *b, int64_t n);
/** y[i] = fma(a, x[i], y[i]). */
QL_API void ql_cpu_axpy_f16(ql_cpu_isa_t isa, float *y, float a, const uint16_t *x, int64_t n);
/** Round-to-nearest-even f32 → f16. */
QL_API void ql_cpu_f32_to_f16(ql_cpu_isa_t isa, const float *x, uint16_t *y, int64_t n);

/* ---- reference ops (plain C; what the CUDA kernels are tested against) ---- */

/** out[t][i] = x[t][i] / sqrt(mean_i(x[t]²) + eps) · w[i]; the mean accumulates in 8 double
 *  lanes (NOTE(rmsnorm-lanes) in ops.c).
 *  out may equal x. w may be NULL (no gain). */
QL_API void ql_cpu_rmsnorm(float *out, const float *x, const float *w, int64_t n_tok, int64_t dim,
                           float eps);

typedef enum ql_rope_mode_e {
    QL_ROPE_MODE_NORM = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): GGUF `llama` */
    QL_ROPE_MODE_NEOX = 1, /* rotate halves (x[i], x[i + n_rot/2]): GGUF `qwen2` */
} ql_rope_mode_t;

typedef struct ql_rope_params_s {
    int mode;                  /* ql_rope_mode_t */
    int n_rot;                 /* rotated dimensions (even, <= head_dim) */
    float freq_base;           /* θ base, e.g. 10000 */
    float freq_scale;          /* linear scaling: positions are multiplied by it (1 = none) */
    const float *freq_factors; /* [n_rot/2] or NULL: θ_i is divided by it (llama3 scaling) */
    /* NOTE(yarn): YaRN (ext_factor 1) blends, per pair i, the scaled angle freq_scale·θ_i with
     * the unscaled θ_i by a ramp that is 1 (all unscaled) for i <= corr_dims[0] and 0 for
     * i >= corr_dims[1], and multiplies cos and sin by mscale·(1 + 0.1·ln(1/freq_scale)).
     * ext_factor 0 (none, linear, llama3): the scaled angle alone, times mscale. A zeroed
     * mscale means 1. ql_rope_yarn_corr_dims() gives corr_dims as ggml forms them. */
    float ext_factor;
    float mscale;
    float corr_dims[2];
} ql_rope_params_t;

/** corr_dims for YaRN: the pair indices where the ramp starts (beta_fast rotations over the
 *  original context) and ends (beta_slow), floor/ceil of n_rot·ln(n_ctx_orig / (2π·β)) /
 *  (2·ln base), clamped to [0, n_rot − 1], in f32 as ggml computes them. */
QL_API void ql_rope_yarn_corr_dims(int n_rot, int n_ctx_orig, float freq_base, float beta_fast,
                                   float beta_slow, float dims[2]);

/** Fills cs[2·i], cs[2·i+1] = cos, sin of the angle of pair i at position pos, i < n_rot/2.
 *  NOTE(rope-theta): θ_i = pos·base^(−2i/n_rot) is formed like ggml does, by repeated f32
 *  multiplication, so quill and llama.cpp rotate by the same angles. */
QL_API void ql_cpu_rope_cache(const ql_rope_params_t *p, int32_t pos, float *cs);
/** Rotates, in place, n_head heads of head_dim at x (head h at x + h·head_dim) by cs. */
QL_API void ql_cpu_rope_apply(const ql_rope_params_t *p, const float *cs, float *x, int n_head,
                              int head_dim);
/** Reference: rotates x [n_tok][n_head][head_dim] in place, token t at position pos[t]. */
QL_API void ql_cpu_rope(const ql_rope_params_t *p, float *x, const int32_t *pos, int64_t n_tok,
                        int n_head, int head_dim);

/** In place, each row of x [n_rows][n]: x = exp(x − max) / Σ (exp: < 1 ulp; Σ in 8 partial
 *  sums by index mod 8). */
QL_API void ql_cpu_softmax(float *x, int64_t n_rows, int64_t n);
/** out[t][i] = silu(gate[t][i]) · up[t][i], silu(g) = g / (1 + exp(−g)). out may alias. */
QL_API void ql_cpu_swiglu(float *out, const float *gate, const float *up, int64_t n_tok,
                          int64_t n_ff);
/** out[t] = row ids[t] of table (type `type`, n_rows × dim) dequantized to f32.
 *  @return 0, QL_EINVAL (id out of range: out is left partly written), QL_EUNSUPPORTED. */
QL_API int ql_cpu_get_rows(float *out, const void *table, int type, int64_t n_rows, int64_t dim,
                           const int32_t *ids, int64_t n_ids);

/* Attention over the paged KV cache for a batch of query tokens (see ql_kv_layout_t in
 * backend/backend.h for the pool layout; K and V are f16). Query token t of sequence
 * seq_of[t] at position pos[t] attends causally to keys 0..pos[t] of its sequence, read
 * through that sequence's block table; slots past pos[t] are never read.
 *   q   [n_tok][n_head][head_dim] f32, already rotated
 *   out [n_tok][n_head][head_dim] f32
 * Softmax in f32 with scale `scale` (usually 1/sqrt(head_dim)); query head h reads KV head
 * h / (n_head / n_kv_head). @return 0 or QL_EINVAL (bad shapes, pos outside its table). */
typedef struct ql_cpu_attn_args_s {
    const ql_kv_layout_t *kv;
    const uint16_t *k_pool, *v_pool; /* one layer's pools */
    const float *q;
    float *out;
    int64_t n_tok;
    int n_head;
    const int32_t *pos;                 /* [n_tok] */
    const int32_t *seq_of;              /* [n_tok] */
    const int32_t *const *block_tables; /* [n_seqs] */
    const int32_t *n_blocks;            /* [n_seqs] entries in each table */
    int32_t n_seqs;
    float scale;
} ql_cpu_attn_args_t;
QL_API int ql_cpu_attention_ref(const ql_cpu_attn_args_t *a);

/* ---- the backend ---- */

/** The CPU backend (see ql_backend_init_fn in backend/backend.h): the model in `gguf`
 *  (borrowed; weights are read from its mapping and repacked, norms used in place),
 *  p->n_threads threads, a KV pool of p->kv_cache_bytes (f16 K and V), buffers for
 *  p->n_batch_tokens_max tokens. The ISA path is ql_cpu_isa_default() (QL_CPU_ISA). */
QL_API int ql_cpu_backend_init(const ql_gguf_t *gguf, const ql_backend_params_t *p,
                               ql_backend_t **out, char *err, size_t errlen);
/** Its registry entry ("cpu", always available). */
QL_API extern const ql_backend_desc_t ql_cpu_backend_desc;

#ifdef __cplusplus
}
#endif

#endif /* QL_CPU_H */
