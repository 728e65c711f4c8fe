/*
 * cuda/cuda-internal.h — what the CUDA backend's files share, and the white-box hooks its
 * tests use. Plain C (no CUDA types): convert.c and step.c are compiled into every build, so
 * their tests run on machines without a GPU.
 */
#ifndef QL_CUDA_INTERNAL_H
#define QL_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the step record (step.c): what a forward() copies to the device ---- */

#define QL_CUDA_N_BUCKETS 9      /* decode batch buckets 1, 2, 4, ... 256 */
#define QL_CUDA_N_CTX_BUCKETS 32 /* context bounds 2^k − 1, k < 32 */
/* NOTE(ctx-min): the smallest context bound is 2^8 − 1: a bound above the real positions
 * costs nothing while the attention does not split (it never loads keys past a run's last
 * position), and it splits only past 256 keys per split, so contexts up to 256 keys share one
 * graph. */
#define QL_CUDA_CTX_MIN_LOG2 8

/* Host views of the step record (pinned memory in the backend), each array as long as the
 * backend's limits: T tokens, L logits rows, S block table rows of up to MB entries. */
typedef struct ql__cuda_step_rec_s {
    int32_t *tokens;       /* [T] */
    int32_t *pos;          /* [T] */
    int32_t *seq_of;       /* [T] */
    int32_t *slot;         /* [T] block · block_size + slot; −1 for a pad token */
    int32_t *rows;         /* [L] logits rows */
    int32_t *block_tables; /* [S][stride], stride = the step's, not MB */
} ql__cuda_step_rec_t;

/* The launch shape of a step (a CUDA graph is captured per (bucket, cbucket)). */
typedef struct ql__cuda_step_shape_s {
    int32_t n_tok;    /* token rows computed: n_tokens, or the decode bucket B */
    int32_t n_seqs;   /* block table rows */
    int32_t n_rows;   /* logits rows computed: n_logits, or B */
    int32_t max_pos;  /* context bound: >= every position, 2^k − 1 or n_ctx − 1 */
    int32_t stride;   /* block table row length: the blocks covering positions 0..max_pos */
    int32_t max_run;  /* longest run of consecutive positions of one sequence; 1 for decode */
    int32_t n_layers; /* layers to run: b->n_layers when 0 < it < n_layer, else n_layer */
    int bucket;       /* decode bucket (B = 1 << bucket), or −1: an eager step at its size */
    int cbucket;      /* the bound's k, or −1 with bucket −1 */
    size_t bytes;     /* bytes of the record to copy: up to the end of the used table rows */
} ql__cuda_step_shape_t;

/** The context bound for positions up to max_pos (< n_ctx): 2^k − 1 for the smallest k >=
 *  QL_CUDA_CTX_MIN_LOG2 that covers it, capped at n_ctx − 1. @return k. */
QL_API int ql__cuda_ctx_bucket(int32_t max_pos, int32_t n_ctx, int32_t *bound);

/** Fills the record for batch b (already checked with ql_batch_validate) and picks its
 *  shape. A decode-only batch (n_seqs == n_tokens, token t of sequence t, n_logits <=
 *  n_tokens) is padded to the smallest of the first n_buckets buckets that holds it: pad
 *  tokens are token 0 at position 0 of sequence 0 with slot −1, pad logits rows are row 0,
 *  pad table rows are zeros. Table rows hold min(n_blocks[s], stride) entries, the rest 0.
 *  A batch that runs only its first layers (b->n_layers, a layerskip draft) is never padded
 *  (no graph: it runs eagerly). `tables_offset` is the byte offset of rec->block_tables in
 *  the record.
 *  @return 0 or QL_EINVAL (a token id outside [0, n_vocab)). */
QL_API int ql__cuda_step_fill(const ql_batch_t *b, int32_t n_vocab, int32_t n_layer, int n_buckets,
                              int32_t n_ctx, int32_t max_blocks, int32_t block_size,
                              const ql__cuda_step_rec_t *rec, size_t tables_offset,
                              ql__cuda_step_shape_t *sh);

/* ---- host-side weight conversion (convert.c) ---- */

/** Converts rows [r0, r1) of a GGUF matrix (type `type`, rows of n_in elements, `data` the
 *  tensor's first row) to f16 (round to nearest even) into dst [r1 - r0][n_in], through the
 *  reference dequantization of model/quant.c, on n_threads threads (<= 1: the caller's).
 *  @return 0, QL_EUNSUPPORTED (a type model/quant.c cannot dequantize), QL_ERANGE (a value
 *  that is not finite in f16: |x| >= 65520, inf or NaN; *bad_row names the row), QL_EINVAL
 *  (bad arguments: n_in not a multiple of the type's block) or QL_ENOMEM. */
QL_API int ql__cuda_rows_to_f16(int type, const void *data, int64_t n_in, int64_t r0, int64_t r1,
                                uint16_t *dst, int n_threads, int64_t *bad_row);

/** Threads the host conversion uses here: online cores, at most 32. */
QL_API int ql__cuda_convert_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* QL_CUDA_INTERNAL_H */
