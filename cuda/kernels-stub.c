/*
 * cuda/kernels-stub.c — cuda/kernels.h for builds without nvcc: every wrapper reports
 * QL_EUNSUPPORTED (the plan helpers in kernels-plan.c are real in both builds).
 */
#include "cuda/kernels.h"

int ql_cuda_mem_alloc(void **dptr, size_t bytes) {
    (void)bytes;
    if (dptr) *dptr = NULL;
    return QL_EUNSUPPORTED;
}
void ql_cuda_mem_free(void *dptr) { (void)dptr; }
int ql_cuda_mem_upload(void *dst_dev, const void *src_host, size_t bytes) {
    (void)dst_dev, (void)src_host, (void)bytes;
    return QL_EUNSUPPORTED;
}
int ql_cuda_mem_download(void *dst_host, const void *src_dev, size_t bytes) {
    (void)dst_host, (void)src_dev, (void)bytes;
    return QL_EUNSUPPORTED;
}
int ql_cuda_stream_sync(void *stream) {
    (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_embed_get_rows(float *out, const uint16_t *table, int64_t n_rows, int64_t dim,
                           const int32_t *ids, int64_t n_ids, void *stream) {
    (void)out, (void)table, (void)n_rows, (void)dim, (void)ids, (void)n_ids, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_rmsnorm_residual(float *x, const float *delta, const float *w, uint16_t *out,
                             float *out_f32, int64_t n_tok, int64_t dim, float eps, void *stream) {
    (void)x, (void)delta, (void)w, (void)out, (void)out_f32, (void)n_tok, (void)dim, (void)eps;
    (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_rope(const ql_cuda_rope_params_t *p, float *q, int64_t ldq, int n_head, float *k,
                 int64_t ldk, int n_kv_head, int head_dim, const int32_t *pos, int64_t n_tok,
                 void *stream) {
    (void)p, (void)q, (void)ldq, (void)n_head, (void)k, (void)ldk, (void)n_kv_head;
    (void)head_dim, (void)pos, (void)n_tok, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_kv_write(const ql_kv_layout_t *kv, uint16_t *k_pool, uint16_t *v_pool, const float *k,
                     int64_t ldk, const float *v, int64_t ldv, const int32_t *slot_mapping,
                     int64_t n_tok, void *stream) {
    (void)kv, (void)k_pool, (void)v_pool, (void)k, (void)ldk, (void)v, (void)ldv;
    (void)slot_mapping, (void)n_tok, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_attn_paged(const ql_cuda_attn_args_t *a, void *stream) {
    (void)a, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_swiglu(uint16_t *out, const float *gate, const float *up, int64_t ld, int64_t n_tok,
                   int64_t n_ff, void *stream) {
    (void)out, (void)gate, (void)up, (void)ld, (void)n_tok, (void)n_ff, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_f32_to_f16(uint16_t *y, const float *x, int64_t n, void *stream) {
    (void)y, (void)x, (void)n, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_softmax_rows(float *x, int64_t n_rows, int64_t n, void *stream) {
    (void)x, (void)n_rows, (void)n, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_sample_work_bytes(int64_t n_rows, int32_t n_vocab, size_t *out) {
    (void)n_rows, (void)n_vocab;
    if (out) *out = 0;
    return QL_EUNSUPPORTED;
}
int ql_cuda_sample_rows(const ql_cuda_sample_args_t *a, int32_t *tokens_out, void *stream) {
    (void)a, (void)tokens_out, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_sample_probs(const ql_cuda_sample_args_t *a, float *probs, void *stream) {
    (void)a, (void)probs, (void)stream;
    return QL_EUNSUPPORTED;
}
int ql_cuda_spec_verify(const ql_cuda_spec_args_t *a, int32_t *n_accepted, int32_t *tokens_out,
                        void *stream) {
    (void)a, (void)n_accepted, (void)tokens_out, (void)stream;
    return QL_EUNSUPPORTED;
}
