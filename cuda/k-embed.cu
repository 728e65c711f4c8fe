/*
 * cuda/k-embed.cu — embedding gather: rows of an f16 table, by token id, widened to f32
 * (the reference is ql_cpu_get_rows on an F16 table).
 */
#include "cuda/k-common.cuh"

/* grid: 1-D grid-stride over n_ids · dim elements; block: 256 threads. */
static __global__ void embed_get_rows_kernel(float *__restrict__ out,
                                             const uint16_t *__restrict__ table, int64_t n_rows,
                                             int64_t dim, const int32_t *__restrict__ ids,
                                             int64_t n_ids) {
    const int64_t n = n_ids * dim;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = e / dim, i = e - t * dim;
        const int32_t id = ids[t];
        /* NOTE(bad-id): an id out of range writes NaN rather than reading out of bounds */
        out[e] = (id >= 0 && id < n_rows) ? ql_k_h2f(table[(int64_t)id * dim + i]) : NAN;
    }
}

extern "C" int ql_cuda_embed_get_rows(float *out, const uint16_t *table, int64_t n_rows,
                                      int64_t dim, const int32_t *ids, int64_t n_ids,
                                      void *stream) {
    if (n_ids < 0 || dim < 1 || n_rows < 1) return QL_EINVAL;
    if (n_ids == 0) return 0;
    if (out == NULL || table == NULL || ids == NULL) return QL_EINVAL;
    const int threads = 256;
    const int64_t blocks = QL_MIN(ql_k_ceil_div(n_ids * dim, threads), (int64_t)65536);
    embed_get_rows_kernel<<<(unsigned)blocks, threads, 0, QL_K_STREAM(stream)>>>(
        out, table, n_rows, dim, ids, n_ids);
    QL_K_LAUNCH_CHECK();
    return 0;
}
