/*
 * cuda/kernels-plan.c — the host-side arithmetic of the kernel launches (attention split
 * plan, scratch sizes), plain C so that it builds and is unit-tested without CUDA.
 */
#include "cuda/kernels.h"

/* NOTE(split-k): a thread block carries a run of query tokens (NOTE(attn-runs)) and up to
 * QL_CUDA_ATTN_MAX_ROWS query rows of one KV group and streams those tokens' keys. With many
 * tokens (prefill, big decode batches) the grid fills the device by itself; with few tokens
 * and long contexts a block would stream thousands of keys while most multiprocessors idle,
 * so the context is split into chunks of at least SPLIT_KEYS_MIN keys (below that the
 * combine step costs more than it saves), enough of them for about SPLIT_WAVES blocks per
 * multiprocessor. */
#define SPLIT_KEYS_MIN 256
#define SPLIT_WAVES 2
/* Grid y and z are limited to 65535 blocks. */
#define GRID_YZ_MAX 65535

int ql_cuda_attn_head_dim_supported(int32_t head_dim) {
    return head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128;
}

/* The splits asked for before rounding to whole tiles: non-decreasing in n_keys, and never
 * below the n_splits of the final plan, so it bounds the scratch of every shorter context. */
static int64_t splits_wanted(int64_t ctas, int64_t n_keys, int32_t n_sm) {
    const int64_t want = (int64_t)SPLIT_WAVES * n_sm;
    if (ctas >= want) return 1;
    int64_t n_splits = (want + ctas - 1) / ctas;
    const int64_t by_keys = n_keys / SPLIT_KEYS_MIN; /* each split >= SPLIT_KEYS_MIN keys */
    if (n_splits > by_keys) n_splits = by_keys;
    if (n_splits < 1) n_splits = 1;
    if (n_splits > GRID_YZ_MAX) n_splits = GRID_YZ_MAX;
    return n_splits;
}

static int head_chunks(int32_t n_head, int32_t n_kv_head, int32_t *chunks, int32_t *per_cta) {
    if (n_head < 1 || n_kv_head < 1 || n_head % n_kv_head != 0) return QL_EINVAL;
    const int32_t group = n_head / n_kv_head;
    const int32_t c = (group + QL_CUDA_ATTN_MAX_ROWS - 1) / QL_CUDA_ATTN_MAX_ROWS;
    if ((int64_t)n_kv_head * c > GRID_YZ_MAX) return QL_EINVAL;
    *chunks = c;
    *per_cta = (group + c - 1) / c; /* balanced: the chunks of a group differ by <= 1 head */
    return 0;
}

/* NOTE(attn-runs): consecutive query tokens of one sequence (a prefill chunk, a verify) read
 * the same keys, so a thread block may take a run of up to QL_CUDA_ATTN_MAX_ROWS /
 * heads_per_cta of them and load each K/V tile once for all their rows. Decode tokens are
 * runs of one: more tokens per block would only serialise them. */
int ql_cuda_attn_plan_runs(int64_t n_tok, int32_t n_head, int32_t n_kv_head, int32_t max_pos,
                           int32_t max_run, int32_t n_sm, ql_cuda_attn_plan_t *out) {
    if (out == NULL || n_tok < 1 || max_pos < 0 || n_sm < 1 || max_run < 1) return QL_EINVAL;
    int32_t chunks, per_cta;
    if (head_chunks(n_head, n_kv_head, &chunks, &per_cta) != 0) return QL_EINVAL;
    out->n_head_chunks = chunks;
    out->heads_per_cta = per_cta;
    int32_t qt = QL_CUDA_ATTN_MAX_ROWS / per_cta;
    if (qt > max_run) qt = max_run;
    if (qt < 1) qt = 1;
    out->tokens_per_cta = qt;
    const int64_t n_keys = (int64_t)max_pos + 1;
    const int64_t ctas = (n_tok + qt - 1) / qt * n_kv_head * chunks;
    int64_t n_splits = splits_wanted(ctas, n_keys, n_sm);
    /* keys per split rounded up to whole tiles; the last split may be shorter */
    const int64_t tk = QL_CUDA_ATTN_TILE_KEYS;
    int64_t kps = (n_keys + n_splits - 1) / n_splits;
    kps = (kps + tk - 1) / tk * tk;
    n_splits = (n_keys + kps - 1) / kps;
    out->n_splits = (int32_t)n_splits;
    out->keys_per_split = (int32_t)kps;
    return 0;
}

int ql_cuda_attn_plan(int64_t n_tok, int32_t n_head, int32_t n_kv_head, int32_t max_pos,
                      int32_t n_sm, ql_cuda_attn_plan_t *out) {
    return ql_cuda_attn_plan_runs(n_tok, n_head, n_kv_head, max_pos, 1, n_sm, out);
}

size_t ql_cuda_attn_work_bytes(const ql_cuda_attn_plan_t *plan, int64_t n_tok, int32_t n_head,
                               int32_t head_dim) {
    if (plan == NULL || plan->n_splits <= 1 || n_tok < 1 || n_head < 1 || head_dim < 1) return 0;
    /* per (token, head, split): m, l, acc[head_dim], f32 */
    return (size_t)n_tok * (size_t)n_head * (size_t)plan->n_splits * ((size_t)head_dim + 2) *
           sizeof(float);
}

size_t ql_cuda_attn_work_bytes_max(int64_t n_tok_max, int32_t n_head, int32_t n_kv_head,
                                   int32_t head_dim, int32_t n_ctx_max, int32_t n_sm) {
    if (n_tok_max < 1 || n_ctx_max < 1 || head_dim < 1 || n_sm < 1) return 0;
    int32_t chunks, per_cta;
    if (head_chunks(n_head, n_kv_head, &chunks, &per_cta) != 0) return 0;
    size_t most = 0;
    /* splits happen only below SPLIT_WAVES · n_sm blocks, so token counts beyond that many
     * blocks of the longest runs add nothing; the fewest blocks (runs of the most tokens a
     * block takes) ask for the most splits, which bounds every plan */
    const int64_t qt_max = QL_MAX(1, QL_CUDA_ATTN_MAX_ROWS / per_cta);
    const int64_t n_last = QL_MIN(n_tok_max, (int64_t)SPLIT_WAVES * n_sm * qt_max);
    for (int64_t n = 1; n <= n_last; n++) {
        const int64_t ctas = (n + qt_max - 1) / qt_max * n_kv_head * chunks;
        const ql_cuda_attn_plan_t p = {
            .n_splits = (int32_t)splits_wanted(ctas, n_ctx_max, n_sm),
            .keys_per_split = QL_CUDA_ATTN_TILE_KEYS,
            .heads_per_cta = per_cta,
            .n_head_chunks = chunks,
            .tokens_per_cta = 1,
        };
        const size_t b = ql_cuda_attn_work_bytes(&p, n, n_head, head_dim);
        if (b > most) most = b;
    }
    return most;
}
