/*
 * cuda/step.c — the host half of a CUDA forward(): the step record (token ids, positions, KV
 * slots, logits rows, block tables) filled from a ql_batch_t, decode batches padded to their
 * graph bucket, the attention's context bound. Plain C, compiled into every build:
 * tests/unit/cuda/test-step.c checks it without a GPU. cuda/backend.cu copies the record to
 * the device in one transfer and launches the step (NOTE(graphs) there).
 */
#include "cuda/cuda-internal.h"

int ql__cuda_ctx_bucket(int32_t max_pos, int32_t n_ctx, int32_t *bound) {
    int k = QL_CUDA_CTX_MIN_LOG2;
    while (k < QL_CUDA_N_CTX_BUCKETS - 1 && ((int64_t)1 << k) < (int64_t)max_pos + 1) k++;
    int64_t b = ((int64_t)1 << k) - 1;
    if (b > (int64_t)n_ctx - 1) b = (int64_t)n_ctx - 1;
    if (b < max_pos) b = max_pos;
    *bound = (int32_t)b;
    return k;
}

int ql__cuda_step_fill(const ql_batch_t *b, int32_t n_vocab, int32_t n_layer, int n_buckets,
                       int32_t n_ctx, int32_t max_blocks, int32_t block_size,
                       const ql__cuda_step_rec_t *rec, size_t tables_offset,
                       ql__cuda_step_shape_t *sh) {
    const int32_t n = b->n_tokens;
    sh->n_layers = b->n_layers > 0 && b->n_layers < n_layer ? b->n_layers : n_layer;
    int decode = b->n_seqs == n && b->n_logits <= n && sh->n_layers == n_layer;
    int32_t max_pos = 0, max_run = 1;
    for (int32_t t = 0, run = 1; t < n; t++) {
        if (b->tokens[t] < 0 || b->tokens[t] >= n_vocab) return QL_EINVAL;
        if (t > 0) {
            const int cont =
                b->seq_of_token[t] == b->seq_of_token[t - 1] && b->pos[t] == b->pos[t - 1] + 1;
            run = cont ? run + 1 : 1;
            max_run = QL_MAX(max_run, run);
        }
        if (b->seq_of_token[t] != t) decode = 0;
        max_pos = QL_MAX(max_pos, b->pos[t]);
    }
    /* the padded decode bucket (NOTE(graphs) in backend.cu) */
    sh->bucket = -1;
    int32_t B = n;
    if (decode)
        for (int i = 0; i < n_buckets && i < QL_CUDA_N_BUCKETS; i++)
            if ((1 << i) >= n) {
                sh->bucket = i;
                B = 1 << i;
                break;
            }
    int32_t bound = max_pos;
    sh->cbucket = ql__cuda_ctx_bucket(max_pos, n_ctx, &bound);
    if (sh->bucket < 0) sh->cbucket = -1;

    for (int32_t t = 0; t < B; t++) {
        if (t < n) {
            const int32_t s = b->seq_of_token[t], p = b->pos[t];
            rec->tokens[t] = b->tokens[t];
            rec->pos[t] = p;
            rec->seq_of[t] = s;
            rec->slot[t] = b->block_tables[s][p / block_size] * block_size + p % block_size;
        } else {
            rec->tokens[t] = 0;
            rec->pos[t] = 0;
            rec->seq_of[t] = 0;
            rec->slot[t] = -1;
        }
    }
    const int32_t n_rows = sh->bucket >= 0 ? B : b->n_logits;
    for (int32_t i = 0; i < n_rows; i++) rec->rows[i] = i < b->n_logits ? b->logits_rows[i] : 0;
    /* NOTE(step-record): table rows of `stride` entries, the blocks that cover the context
     * bound, so a step copies only what its attention can read; the stride is a function of
     * the bound, fixed for each graph */
    const int32_t stride = (int32_t)(((int64_t)bound + block_size) / block_size);
    QL_ASSERT(stride >= 1 && stride <= max_blocks);
    const int32_t n_seq_rows = sh->bucket >= 0 ? B : b->n_seqs;
    for (int32_t s = 0; s < n_seq_rows; s++) {
        int32_t *row = rec->block_tables + (int64_t)s * stride;
        const int32_t nb = s < b->n_seqs ? QL_MIN(b->n_blocks[s], stride) : 0;
        for (int32_t i = 0; i < nb; i++) row[i] = b->block_tables[s][i];
        for (int32_t i = nb; i < stride; i++) row[i] = 0;
    }
    sh->n_tok = B;
    sh->n_seqs = n_seq_rows;
    sh->n_rows = n_rows;
    sh->max_pos = bound; /* every step: the plans the scratch was sized for */
    sh->stride = stride;
    sh->max_run = sh->bucket >= 0 ? 1 : max_run;
    sh->bytes = tables_offset + (size_t)n_seq_rows * (size_t)stride * sizeof(int32_t);
    return 0;
}
