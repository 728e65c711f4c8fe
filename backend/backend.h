/*
 * backend/backend.h — the interface the scheduler drives compute through, implemented by
 * the CPU backend (cpu/) and the CUDA backend (cuda/), and the registry that picks one.
 *
 * One call, forward(), runs one engine step: a flat batch of tokens from many sequences,
 * mixing prefill chunks (many consecutive positions of one sequence) and decode tokens (one
 * position), each sequence reading and writing its keys and values through its own block
 * table into one paged KV pool. It returns logits only for the rows the scheduler asks for
 * (the last token of a prefill, every token of a speculative verify).
 *
 * Threads: a backend object is used by one thread at a time (the engine thread); every
 * call blocks until its work is done. Implementations may run worker threads inside a
 * call. Nothing here calls back into the caller.
 */
#ifndef QL_BACKEND_H
#define QL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "model/gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__CUDACC__)
#define QL_HOST_DEVICE __host__ __device__
#else
#define QL_HOST_DEVICE
#endif

/* ---- paged KV cache layout (shared by both backends and their tests) ---- */

/* The pool holds, per layer, a K pool and a V pool of
 *   [n_blocks][n_kv_head][block_size][head_dim]  elements (f16 on both backends),
 * so a block is a contiguous (n_kv_head × block_size × head_dim) tile in each.
 * Token at position p of a sequence lives in block table[p / block_size], slot
 * p % block_size. Blocks are the scheduler's to hand out; block ids index this pool. */
typedef struct ql_kv_layout_s {
    int32_t n_layer;
    int32_t n_kv_head;
    int32_t head_dim;
    int32_t block_size; /* tokens per block */
    int32_t n_blocks;   /* blocks in the pool */
} ql_kv_layout_t;

/** Element offset of (block, kv_head, slot, dim 0) inside one layer's K (or V) pool. */
static inline QL_HOST_DEVICE int64_t ql_kv_offset(const ql_kv_layout_t *l, int32_t block,
                                                  int32_t kv_head, int32_t slot) {
    return (((int64_t)block * l->n_kv_head + kv_head) * l->block_size + slot) * l->head_dim;
}
/** Elements of one layer's K (or V) pool. */
static inline QL_HOST_DEVICE int64_t ql_kv_layer_elems(const ql_kv_layout_t *l) {
    return (int64_t)l->n_blocks * l->n_kv_head * l->block_size * l->head_dim;
}
/** Bytes one block takes across all layers, K and V, for elements of elem_bytes:
 *  what the scheduler divides its memory budget by. */
static inline QL_HOST_DEVICE uint64_t ql_kv_block_bytes(const ql_kv_layout_t *l,
                                                        uint32_t elem_bytes) {
    return (uint64_t)l->n_layer * 2u * (uint64_t)l->n_kv_head * (uint64_t)l->block_size *
           (uint64_t)l->head_dim * elem_bytes;
}

/* ---- one step ---- */

/* A batch, all arrays borrowed for the duration of the call.
 * Contract (checked: QL_EINVAL, nothing written):
 *   - 0 < n_tokens <= info.n_batch_tokens_max, 0 < n_seqs <= info.n_seqs_max;
 *   - each token's sequence s = seq_of_token[t] is in [0, n_seqs), its position
 *     0 <= pos[t] < seq_len[s] <= min(n_blocks[s] · block_size, info.n_ctx_max);
 *   - block ids in block_tables[s][0 .. n_blocks[s]) are in [0, kv.n_blocks);
 *   - logits_rows are token indices in [0, n_tokens), n_logits <= info.n_logits_max;
 *   - 0 <= n_layers <= kv.n_layer.
 * Contract (the caller's, not checked): K/V of every position below a token's own that
 * is not itself in this batch were written by an earlier step into the same blocks; no two
 * tokens of a batch share (sequence, position); two live sequences write the same block
 * only if the scheduler means it (copy-on-write happens before, via copy_blocks).
 * Each token writes its K/V at its position, then attends to positions 0..pos[t] of its
 * sequence (causal), including earlier tokens of the same step. */
typedef struct ql_batch_s {
    int32_t n_tokens;
    const int32_t *tokens;       /* [n_tokens] token ids */
    const int32_t *pos;          /* [n_tokens] position in its sequence */
    const int32_t *seq_of_token; /* [n_tokens] index into the per-sequence arrays */
    int32_t n_seqs;
    const int32_t *const *block_tables; /* [n_seqs] -> [n_blocks[s]] physical block ids */
    const int32_t *n_blocks;            /* [n_seqs] entries in each block table */
    const int32_t *seq_len;             /* [n_seqs] tokens in the KV cache after this step */
    const int32_t *logits_rows;         /* [n_logits] token rows that need logits */
    int32_t n_logits;
    int32_t n_layers; /* layers to run, 0 = all. With 0 < n_layers < kv.n_layer the forward
                         runs the first n_layers layers, then the final norm and the output head
                         on the logits rows (self-speculative drafting, "layerskip"); K/V are
                         written for those layers only. A backend that ignores it stays correct
                         for the scheduler (a verify recomputes every layer) but drafts worse */
} ql_batch_t;

/* What a backend is, fixed at init. The scheduler sizes itself from it. */
typedef struct ql_backend_info_s {
    const char *name;           /* "cpu", "cuda" */
    int32_t n_vocab;            /* logits per row */
    int32_t n_ctx_max;          /* longest sequence (positions) */
    int32_t n_batch_tokens_max; /* tokens per forward() */
    int32_t n_seqs_max;         /* sequences per forward() */
    int32_t n_logits_max;       /* logits rows per forward() */
    ql_kv_layout_t kv;          /* block size and pool size (n_blocks) */
    uint64_t kv_block_bytes;    /* one block, all layers, K and V */
    uint64_t kv_bytes;          /* whole pool */
    uint64_t weight_bytes;      /* weights as the backend holds them */
} ql_backend_info_t;

/* Optional device sampling, one entry per logits row (NULL on the CPU: the scheduler's
 * host sampler is the reference). Arrays are [n_logits]. */
typedef struct ql_backend_sampling_s {
    const float *temperature; /* 0 = greedy */
    const int32_t *top_k;     /* 0 = off */
    const float *top_p;       /* 1 = off */
    const float *min_p;       /* 0 = off */
    const uint64_t *seed;     /* per-row generator seed of this call's draw; not written back:
                                 a caller sampling again passes a new value (e.g. the next state
                                 of its own generator), or the draw repeats */
} ql_backend_sampling_t;

typedef struct ql_backend_s ql_backend_t;

/* The table each implementation fills. Entries marked optional may be NULL. */
typedef struct ql_backend_ops_s {
    /** Runs one step (see ql_batch_t). logits is [n_logits][n_vocab] f32, owned by the
     *  caller; row i belongs to token logits_rows[i]. @return 0, QL_EINVAL (batch breaks
     *  the contract above; nothing computed), QL_ENOMEM, QL_ECUDA. */
    int (*forward)(ql_backend_t *be, const ql_batch_t *b, float *logits);
    /** Copies whole KV blocks src[i] -> dst[i] in every layer (copy-on-write of a shared
     *  block before it is appended to). @return 0 or QL_EINVAL (id out of range, or a dst
     *  that is also a src). */
    int (*copy_blocks)(ql_backend_t *be, const int32_t *src, const int32_t *dst, int32_t n);
    /** Optional: forward() then sampling on the device; tokens_out is [n_logits]. */
    int (*forward_sample)(ql_backend_t *be, const ql_batch_t *b, const ql_backend_sampling_t *s,
                          int32_t *tokens_out);
    /** Releases everything the backend owns. */
    void (*free)(ql_backend_t *be);
} ql_backend_ops_t;

/* Every backend object starts with this header (implementations embed it first). */
struct ql_backend_s {
    const ql_backend_ops_t *ops;
    ql_backend_info_t info;
};

/* How to build a backend. Zero fields take the documented default. */
typedef struct ql_backend_params_s {
    int32_t n_threads;       /* CPU threads; <= 0: all online cores */
    uint64_t kv_cache_bytes; /* CPU: KV pool budget; 0: room for n_seqs_max full contexts, capped at
                                1 GiB */
    double gpu_memory_utilization; /* CUDA: fraction of device memory for weights + KV */
    int32_t block_size;            /* tokens per KV block; 0: 16 */
    int32_t n_batch_tokens_max;    /* 0: 512 */
    int32_t n_seqs_max;            /* 0: 64 */
    int32_t n_logits_max;          /* 0: n_batch_tokens_max */
    int32_t n_ctx_max;             /* 0: the model's context length */
} ql_backend_params_t;

/** Builds a backend for the model in `gguf`, which is borrowed and must outlive the
 *  backend (weights may be used straight from its mapping). On error writes one line into
 *  err. @return 0, QL_EINVAL, QL_EFORMAT (model lacks a tensor or key), QL_EUNSUPPORTED,
 *  QL_ENOMEM, QL_ECUDA. On success *out is owned by the caller: ql_backend_free(). */
typedef int (*ql_backend_init_fn)(const ql_gguf_t *gguf, const ql_backend_params_t *p,
                                  ql_backend_t **out, char *err, size_t errlen);

/* A backend kind, as registered. */
typedef struct ql_backend_desc_s {
    const char *name;       /* "cpu", "cuda" */
    int (*available)(void); /* 1 when it can run here (a device exists); NULL = always */
    ql_backend_init_fn init;
} ql_backend_desc_t;

/* ---- calling a backend (thin wrappers over the ops table) ---- */

QL_API int ql_backend_forward(ql_backend_t *be, const ql_batch_t *b, float *logits);
QL_API int ql_backend_copy_blocks(ql_backend_t *be, const int32_t *src, const int32_t *dst,
                                  int32_t n);
/** QL_EUNSUPPORTED when the backend has no device sampling. */
QL_API int ql_backend_forward_sample(ql_backend_t *be, const ql_batch_t *b,
                                     const ql_backend_sampling_t *s, int32_t *tokens_out);
QL_API const ql_backend_info_t *ql_backend_info(const ql_backend_t *be);
QL_API void ql_backend_free(ql_backend_t *be); /* NULL is a no-op */

/** Checks b against the contract above and info. @return 0 or QL_EINVAL, with the reason
 *  in err. Backends call it first; tests and the scheduler may too. */
QL_API int ql_batch_validate(const ql_batch_t *b, const ql_backend_info_t *info, char *err,
                             size_t errlen);

/* ---- registry ---- */

#define QL_BACKEND_REG_MAX 8

/* The backends a program was built with, in order of preference. The program owns it
 * (server/ registers cuda then cpu at start-up); no global state. */
typedef struct ql_backend_reg_s {
    const ql_backend_desc_t *descs[QL_BACKEND_REG_MAX];
    int n;
} ql_backend_reg_t;

/** @return 0, QL_EINVAL (NULL, no name or init, or a name already there), QL_ENOSPC. */
QL_API int ql_backend_reg_add(ql_backend_reg_t *r, const ql_backend_desc_t *d);
/** The descriptor named `name`, or NULL. */
QL_API const ql_backend_desc_t *ql_backend_reg_find(const ql_backend_reg_t *r, const char *name);
/** Builds the backend named `name`, or with name NULL or "auto" the first available one in
 *  registration order. @return as ql_backend_init_fn, or QL_ENOENT (no such / none
 *  available). */
QL_API int ql_backend_init(const ql_backend_reg_t *r, const char *name, const ql_gguf_t *gguf,
                           const ql_backend_params_t *p, ql_backend_t **out, char *err,
                           size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* QL_BACKEND_H */
