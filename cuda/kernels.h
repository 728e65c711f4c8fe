/*
 * cuda/kernels.h — the C ABI of the CUDA backend's kernels (everything but the cuBLAS GEMMs,
 * which the backend object issues itself). No CUDA types appear here: the backend and the
 * tests include it whether or not CUDA is compiled in; without CUDA every wrapper returns
 * QL_EUNSUPPORTED (cuda/kernels-stub.c).
 *
 * Conventions shared by every wrapper:
 *   - pointers named in a shape comment are DEVICE pointers; structs passed by pointer
 *     (ql_kv_layout_t, the *_args_t) live on the host and are read during the call only;
 *   - `void *stream` (a cudaStream_t; NULL = the legacy default stream) comes last; the work
 *     is queued on it and the call returns without waiting;
 *   - return 0, QL_EINVAL (bad sizes or NULL pointers: nothing queued), QL_EUNSUPPORTED (a
 *     head size or shape no kernel is compiled for, or no CUDA in this build) or QL_ECUDA
 *     (the launch failed; the CUDA error is logged). Errors found on the device (a token id
 *     out of range, NaN logits) cannot return a status: each wrapper says what it writes then.
 *     A call with no work (0 rows) returns 0 and queues nothing;
 *   - the residual stream is f32 [n_tok][n_embd]; weights and GEMM inputs are f16 (stored as
 *     uint16_t, IEEE binary16 bits); GEMM outputs are f32; norm weights are f32.
 *
 * One layer's forward with these and cuBLAS:
 *   embed_get_rows → x;  per layer: rmsnorm_residual(x, delta = previous o-proj or down
 *   output) → h16;  GEMM qkv(h16) → q, k, v (f32);  rope(q, k);  kv_write(k, v);
 *   attn_paged → a16;  GEMM o(a16) → delta;  rmsnorm_residual(x, delta) → h16;
 *   GEMM gate/up(h16) → g, u;  swiglu(g, u) → s16;  GEMM down(s16) → delta;
 *   finally rmsnorm_residual(x, delta, output_norm) → h16;  GEMM lm_head(h16) → logits (f32),
 *   then sample_rows (or download the logits).
 */
#ifndef QL_CUDA_KERNELS_H
#define QL_CUDA_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- device memory helpers (what the kernel tests need; the backend may use them too) ---- */

/** cudaMalloc of `bytes` (0 gives NULL and returns 0). @return 0, QL_ENOMEM, QL_EUNSUPPORTED. */
QL_API int ql_cuda_mem_alloc(void **dptr, size_t bytes);
/** cudaFree; NULL is a no-op. */
QL_API void ql_cuda_mem_free(void *dptr);
/** Synchronous copies host → device and device → host. @return 0, QL_EINVAL, QL_ECUDA. */
QL_API int ql_cuda_mem_upload(void *dst_dev, const void *src_host, size_t bytes);
QL_API int ql_cuda_mem_download(void *dst_host, const void *src_dev, size_t bytes);
/** Waits for all work queued on `stream` and reports any error of it. @return 0 or QL_ECUDA. */
QL_API int ql_cuda_stream_sync(void *stream);

/* ---- embedding gather ---- */

/** out[t] = row ids[t] of an f16 table, widened to f32.
 *    out   [n_ids][dim] f32        table [n_rows][dim] f16        ids [n_ids] int32
 *  An id outside [0, n_rows) writes a row of NaN (the backend checks token ids on the host
 *  first; the NaN makes a missed check visible instead of reading out of bounds). */
QL_API int ql_cuda_embed_get_rows(float *out, const uint16_t *table, int64_t n_rows, int64_t dim,
                                  const int32_t *ids, int64_t n_ids, void *stream);

/* ---- RMSNorm fused with the residual add ---- */

/** For each token t: x[t] += delta[t] (when delta is not NULL), then
 *  out[t][i] = f16( x[t][i] / sqrt(mean_i(x[t]²) + eps) · w[i] ), the mean accumulated in f32
 *  over a block reduction.
 *    x [n_tok][dim] f32 in/out    delta [n_tok][dim] f32 or NULL    w [dim] f32
 *    out [n_tok][dim] f16 (the next GEMM's input)
 *  out_f32 (may be NULL) receives the same values before f16 rounding (tests, logits head
 *  variants). */
QL_API int ql_cuda_rmsnorm_residual(float *x, const float *delta, const float *w, uint16_t *out,
                                    float *out_f32, int64_t n_tok, int64_t dim, float eps,
                                    void *stream);

/* ---- RoPE ---- */

/* As ql_rope_params_t in cpu/cpu.h (the reference): mode 0 = QL_ROPE_MODE_NORM (adjacent
 * pairs, GGUF `llama`), 1 = QL_ROPE_MODE_NEOX (halves, GGUF `qwen2`). */
typedef struct ql_cuda_rope_params_s {
    int mode;
    int n_rot;                 /* rotated dims, even, <= head_dim */
    float freq_base;
    float freq_scale;          /* positions are multiplied by it (1 = none) */
    const float *freq_factors; /* DEVICE [n_rot/2] or NULL: θ_i divided by it */
} ql_cuda_rope_params_t;

/** Rotates in place q and k of n_tok tokens, token t at position pos[t]:
 *    q [n_tok] rows of ldq floats, row t = [n_head][head_dim]
 *    k [n_tok] rows of ldk floats, row t = [n_kv_head][head_dim]   (k may be NULL, n_kv_head 0)
 *    pos [n_tok] int32
 *  The angles are formed as the CPU reference forms them (NOTE(rope-theta) in cpu/cpu.h). */
QL_API int ql_cuda_rope(const ql_cuda_rope_params_t *p, float *q, int64_t ldq, int n_head,
                        float *k, int64_t ldk, int n_kv_head, int head_dim, const int32_t *pos,
                        int64_t n_tok, void *stream);

/* ---- paged KV write ---- */

/** Writes f32 k and v of n_tok tokens, as f16, into one layer's pools at their slots:
 *  token t goes to block slot_mapping[t] / block_size, slot slot_mapping[t] % block_size
 *  (ql_kv_offset() in backend/backend.h); a negative slot skips the token (padding).
 *    k_pool, v_pool  one layer: [n_blocks][n_kv_head][block_size][head_dim] f16
 *    k [n_tok] rows of ldk floats, row t = [n_kv_head][head_dim]; v likewise with ldv
 *    slot_mapping [n_tok] int32
 *  A slot at or beyond n_blocks · block_size is skipped (never written out of bounds). */
QL_API int ql_cuda_kv_write(const ql_kv_layout_t *kv, uint16_t *k_pool, uint16_t *v_pool,
                            const float *k, int64_t ldk, const float *v, int64_t ldv,
                            const int32_t *slot_mapping, int64_t n_tok, void *stream);

/* ---- paged attention (decode, speculative verify and prefill chunks) ---- */

/* Query token t of sequence s = seq_of[t] at position pos[t] attends causally to the keys at
 * positions 0..pos[t] of s, read through row s of block_tables; the K/V of the token itself
 * and of every earlier token of the step were written (ql_cuda_kv_write) before. Slots past
 * pos[t] never contribute, and slots past the last position of s in the call are never
 * read. Query head h reads KV head h / (n_head / n_kv_head) (GQA). Softmax
 * in f32 with `scale`. Work is split over the context (split-K, "flash decoding") when
 * there are few query tokens and long contexts, with a combine step; the split plan is
 * ql_cuda_attn_plan(). */
/* How ql_cuda_attn_paged() splits its work: plain C, computed on the host. */
typedef struct ql_cuda_attn_plan_s {
    int32_t n_splits;       /* splits of the context per (token, head group) */
    int32_t keys_per_split; /* a multiple of QL_CUDA_ATTN_TILE_KEYS */
    int32_t heads_per_cta;  /* query heads of one KV group handled by one thread block */
    int32_t n_head_chunks;  /* ceil(group / heads_per_cta) blocks per KV head */
    int32_t tokens_per_cta; /* consecutive query tokens one block takes; the block loads each
                               K/V tile once for those of them in one sequence (a run) */
} ql_cuda_attn_plan_t;

/* Keys staged in shared memory per step of the attention kernel. */
#define QL_CUDA_ATTN_TILE_KEYS 32
/* Query heads (rows) one thread block of the attention kernel carries. */
#define QL_CUDA_ATTN_MAX_ROWS 16

typedef struct ql_cuda_attn_args_s {
    const ql_kv_layout_t *kv;        /* host; the pool geometry (n_layer unused) */
    const uint16_t *k_pool, *v_pool; /* one layer's pools, f16, 16-byte aligned */
    const float *q;                  /* [n_tok] rows of ldq floats, row = [n_head][head_dim],
                                        already rotated */
    int64_t ldq;
    uint16_t *out;                   /* [n_tok] rows of ldo f16, row = [n_head][head_dim] */
    int64_t ldo;
    int64_t n_tok;
    int32_t n_head;
    float scale;                     /* usually 1/sqrt(head_dim) */
    const int32_t *pos;              /* [n_tok] */
    const int32_t *seq_of;           /* [n_tok] in [0, n_seqs) */
    const int32_t *block_tables;     /* [n_seqs][max_blocks] int32, flattened row-major */
    int32_t max_blocks;
    int32_t n_seqs;
    int32_t max_pos;                 /* host: >= every pos[t] (sizes the split plan) */
    const ql_cuda_attn_plan_t *plan; /* host; NULL: ql_cuda_attn_plan() for this call (one
                                        token per block, the device's SM count) */
    void *work;                      /* scratch of ql_cuda_attn_work_bytes(plan) bytes (NULL
                                        when that is 0); ql_cuda_attn_work_bytes_max() bounds
                                        it for every call of a backend */
    size_t work_bytes;
} ql_cuda_attn_args_t;

/** The split plan for n_tok query tokens with contexts up to max_pos + 1 keys on a device of
 *  n_sm multiprocessors. Splits only when the grid without splitting would leave the device
 *  mostly idle. @return 0 or QL_EINVAL. Thread: any; no device needed. */
QL_API int ql_cuda_attn_plan(int64_t n_tok, int32_t n_head, int32_t n_kv_head, int32_t max_pos,
                             int32_t n_sm, ql_cuda_attn_plan_t *out);
/** The same for a batch whose longest run of consecutive query tokens of one sequence (at
 *  consecutive positions: a prefill chunk, a speculative verify) is max_run tokens: a block
 *  then takes up to that many tokens (tokens_per_cta), so their keys are read once.
 *  max_run 1 (decode only) is ql_cuda_attn_plan(). @return 0 or QL_EINVAL. */
QL_API int ql_cuda_attn_plan_runs(int64_t n_tok, int32_t n_head, int32_t n_kv_head,
                                  int32_t max_pos, int32_t max_run, int32_t n_sm,
                                  ql_cuda_attn_plan_t *out);
/** Scratch bytes ql_cuda_attn_paged() needs for `plan` (0 when it does not split). */
QL_API size_t ql_cuda_attn_work_bytes(const ql_cuda_attn_plan_t *plan, int64_t n_tok,
                                      int32_t n_head, int32_t head_dim);
/** The most ql_cuda_attn_work_bytes() over every plan for 1..n_tok_max tokens and
 *  contexts up to n_ctx_max on a device of n_sm multiprocessors: what a backend allocates
 *  once. 0 on bad sizes. */
QL_API size_t ql_cuda_attn_work_bytes_max(int64_t n_tok_max, int32_t n_head, int32_t n_kv_head,
                                          int32_t head_dim, int32_t n_ctx_max, int32_t n_sm);
/** Head sizes the attention kernel is compiled for: 1 or 0. */
QL_API int ql_cuda_attn_head_dim_supported(int32_t head_dim);

/** Runs attention (see above) with the plan for a->n_tok, a->max_pos on this device.
 *  @return 0, QL_EINVAL (sizes, n_head not a multiple of n_kv_head, work too small, a pool
 *  not 16-byte aligned),
 *  QL_EUNSUPPORTED (head_dim not compiled), QL_ECUDA. A query whose pos or block table
 *  entries are out of range writes NaN in its output row instead of reading out of bounds. */
QL_API int ql_cuda_attn_paged(const ql_cuda_attn_args_t *a, void *stream);

/* ---- SwiGLU ---- */

/** out[t][i] = f16( silu(gate[t][i]) · up[t][i] ), silu(g) = g / (1 + exp(−g)).
 *    gate, up [n_tok] rows of ld floats (ld >= n_ff; gate and up may be halves of one GEMM
 *    output)    out [n_tok][n_ff] f16 */
QL_API int ql_cuda_swiglu(uint16_t *out, const float *gate, const float *up, int64_t ld,
                          int64_t n_tok, int64_t n_ff, void *stream);

/* ---- f32 ↔ f16 ---- */

/** y[i] = f16(x[i]) (round to nearest even), n elements. */
QL_API int ql_cuda_f32_to_f16(uint16_t *y, const float *x, int64_t n, void *stream);

/* ---- softmax ---- */

/** In place, each row of x [n_rows][n]: x = exp(x − max) / Σ. A row holding NaN or +inf, or
 *  all -inf, becomes all NaN. */
QL_API int ql_cuda_softmax_rows(float *x, int64_t n_rows, int64_t n, void *stream);

/* ---- sampling on the device ---- */

/* The generator of device sampling: one 64-bit state per row (ql_backend_sampling_t.seed),
 * splitmix64 (Steele, Lea, Flood 2014): state += golden gamma, the output is a mix of it.
 * Each draw advances the state by one step; ql_cuda_rng_uniform() gives 53 random bits in
 * [0, 1) as ql_sampler_uniform() does. Host and device compute the same numbers, so a test
 * replays a kernel's draws. */
static inline QL_HOST_DEVICE uint64_t ql_cuda_rng_next(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline QL_HOST_DEVICE double ql_cuda_rng_uniform(uint64_t *state) {
    return (double)(ql_cuda_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
}

/* Per-row sampling parameters, as ql_sampling_params_t in scheduler/sampling.h (the host
 * sampler is the reference: same order of steps, same tie rules). */
typedef struct ql_cuda_sample_params_s {
    float temperature;        /* 0 = greedy */
    int32_t top_k;            /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float repetition_penalty; /* 1 = off */
    float presence_penalty;   /* 0 = off */
    float frequency_penalty;  /* 0 = off */
    int32_t _pad;
} ql_cuda_sample_params_t;

/* One call samples (or gives the distribution of) n_rows rows of logits. */
typedef struct ql_cuda_sample_args_s {
    const float *logits;                   /* [n_rows][n_vocab] f32, not modified */
    int64_t n_rows;
    int32_t n_vocab;
    const ql_cuda_sample_params_t *params; /* DEVICE [n_rows] */
    /* penalty inputs, each NULL when no row of the call uses them: */
    const uint8_t *in_prompt;  /* [n_rows][n_vocab]: 1 when the token is in the prompt */
    const int32_t *out_counts; /* [n_rows][n_vocab]: times the token was generated so far */
    const float *bias;         /* [n_rows][n_vocab] the row's logit_bias entries summed per
                                  token, -inf where one of them is <= -100 (a ban) */
    uint64_t *rng;             /* [n_rows] generator state (ql_cuda_rng_*), advanced by one
                                  draw per row sampled at temperature > 0 */
    void *work;                /* scratch of ql_cuda_sample_work_bytes() bytes */
    size_t work_bytes;
} ql_cuda_sample_args_t;

/* tokens_out values that are not token ids (the backend maps them to a status): */
#define QL_CUDA_SAMPLE_NONE (-1) /* every token is -inf or banned: QL_ERANGE */
#define QL_CUDA_SAMPLE_NAN (-2)  /* the row holds NaN or +inf: QL_EINTERNAL */

/** Scratch bytes ql_cuda_sample_rows/probs need for n_rows rows of n_vocab (the rows are
 *  sorted by key with CUB, whose scratch size is asked of the current device).
 *  @return 0, QL_EINVAL (bad sizes, n_rows · n_vocab > INT32_MAX), QL_ECUDA,
 *  QL_EUNSUPPORTED (no CUDA in this build). */
QL_API int ql_cuda_sample_work_bytes(int64_t n_rows, int32_t n_vocab, size_t *out);

/** Steps 1-8 of scheduler/sampling.h per row: tokens_out [n_rows] int32 (DEVICE) gets the
 *  sampled token, or QL_CUDA_SAMPLE_NONE / QL_CUDA_SAMPLE_NAN. A row at temperature 0 is the
 *  argmax after penalties and bias (ties: lowest id) and draws nothing. */
QL_API int ql_cuda_sample_rows(const ql_cuda_sample_args_t *a, int32_t *tokens_out, void *stream);

/** Steps 1-7 per row: probs [n_rows][n_vocab] (DEVICE) gets the distribution step 8 draws
 *  from (0 for every cut token, the kept ones summing to 1; one-hot at temperature 0), as
 *  ql_sampler_probs() does. A row with no sampleable token, or NaN / +inf, is all NaN. Draws
 *  nothing. For speculative decoding's p and q. */
QL_API int ql_cuda_sample_probs(const ql_cuda_sample_args_t *a, float *probs, void *stream);

/* ---- speculative decoding: accept / reject ---- */

/* For each sequence s with k = n_draft[s] <= k_max drafted tokens d_0..d_{k-1}:
 *   p [n_seqs][k_max + 1][n_vocab]  the target's processed distributions at the k drafted
 *                                   positions and the one after (ql_cuda_sample_probs);
 *   q [n_seqs][k_max][n_vocab]      the drafter's, or NULL for a deterministic drafter
 *                                   (n-gram): q is then one-hot at each d_i.
 * The host reference is ql_spec_verify (scheduler/spec.c): the same tests and draws in the
 * same order (from this generator), but for the bonus token, walked here in id order over
 * p_k (the host samples it from the logits).
 * For i = 0..k-1: draw u; accept d_i when u < min(1, p_i(d_i) / q_i(d_i)) (never when
 * q_i(d_i) = 0); on the first rejection draw once more and sample the correction from
 * normalize(max(0, p_i − q_i)) (p_i when that is all zero), and stop. When all k are
 * accepted draw once more and sample the bonus token from p_k.
 * greedy[s] != 0 (temperature 0): accept d_i iff it is argmax p_i (ties: lowest id); the
 * correction or bonus is that argmax; nothing is drawn.
 * Output: n_accepted[s] = accepted drafts, tokens_out[s][0 .. n_accepted[s]] the accepted
 * drafts then the correction or bonus token (n_accepted[s] + 1 tokens; the rest of the row
 * is -1). A row whose distributions cannot be sampled (sum 0, NaN) gets n_accepted = -1. */
typedef struct ql_cuda_spec_args_s {
    const float *p;         /* see above */
    const float *q;         /* see above, or NULL */
    const int32_t *draft;   /* [n_seqs][k_max] */
    const int32_t *n_draft; /* [n_seqs] in [0, k_max] */
    const int32_t *greedy;  /* [n_seqs] */
    uint64_t *rng;          /* [n_seqs] generator state, advanced by the draws above */
    int32_t n_seqs;
    int32_t k_max;
    int32_t n_vocab;
} ql_cuda_spec_args_t;

QL_API int ql_cuda_spec_verify(const ql_cuda_spec_args_t *a, int32_t *n_accepted,
                               int32_t *tokens_out /* [n_seqs][k_max + 1] */, void *stream);

#ifdef __cplusplus
}
#endif

#endif /* QL_CUDA_KERNELS_H */
