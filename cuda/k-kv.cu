/*
 * cuda/k-kv.cu — the paged KV write: f32 k and v rows of this step's tokens into one
 * layer's f16 pools at the slots the block tables give (layout: ql_kv_offset in
 * backend/backend.h).
 */
#include "cuda/k-common.cuh"

/* grid: 1-D grid-stride over n_tok · n_kv_head · head_dim elements; each thread writes one
 * element of k and the same element of v. */
static __global__ void kv_write_kernel(ql_kv_layout_t kv, uint16_t *__restrict__ k_pool,
                                       uint16_t *__restrict__ v_pool, const float *__restrict__ k,
                                       int64_t ldk, const float *__restrict__ v, int64_t ldv,
                                       const int32_t *__restrict__ slot_mapping, int64_t n_tok) {
    const int64_t row = (int64_t)kv.n_kv_head * kv.head_dim;
    const int64_t n = n_tok * row;
    const int64_t n_slots = (int64_t)kv.n_blocks * kv.block_size;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = e / row, r = e - t * row;
        const int64_t slot = slot_mapping[t];
        if (slot < 0 || slot >= n_slots) continue; /* padding, or a bad slot: never written */
        const int32_t block = (int32_t)(slot / kv.block_size);
        const int32_t off = (int32_t)(slot % kv.block_size);
        const int32_t h = (int32_t)(r / kv.head_dim), d = (int32_t)(r % kv.head_dim);
        const int64_t dst = ql_kv_offset(&kv, block, h, off) + d;
        k_pool[dst] = ql_k_f2h(k[t * ldk + r]);
        v_pool[dst] = ql_k_f2h(v[t * ldv + r]);
    }
}

extern "C" int ql_cuda_kv_write(const ql_kv_layout_t *kv, uint16_t *k_pool, uint16_t *v_pool,
                                const float *k, int64_t ldk, const float *v, int64_t ldv,
                                const int32_t *slot_mapping, int64_t n_tok, void *stream) {
    if (kv == NULL || n_tok < 0) return QL_EINVAL;
    if (kv->n_kv_head < 1 || kv->head_dim < 1 || kv->block_size < 1 || kv->n_blocks < 1)
        return QL_EINVAL;
    const int64_t row = (int64_t)kv->n_kv_head * kv->head_dim;
    if (ldk < row || ldv < row) return QL_EINVAL;
    if (n_tok == 0) return 0;
    if (!k_pool || !v_pool || !k || !v || !slot_mapping) return QL_EINVAL;
    const int threads = 256;
    const int64_t blocks = QL_MIN(ql_k_ceil_div(n_tok * row, threads), (int64_t)65536);
    kv_write_kernel<<<(unsigned)blocks, threads, 0, QL_K_STREAM(stream)>>>(
        *kv, k_pool, v_pool, k, ldk, v, ldv, slot_mapping, n_tok);
    QL_K_LAUNCH_CHECK();
    return 0;
}
