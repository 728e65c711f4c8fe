/*
 * cuda/k-act.cu — elementwise and row kernels: SwiGLU (f32 gate, up → f16 for the down
 * GEMM), f32 → f16, and a row softmax. References: ql_cpu_swiglu, ql_cpu_f32_to_f16,
 * ql_cpu_softmax (cpu/ops.c).
 */
#include "cuda/k-common.cuh"

/* grid: 1-D grid-stride over n_tok · n_ff; block: 256. */
static __global__ void swiglu_kernel(uint16_t *__restrict__ out, const float *__restrict__ gate,
                                     const float *__restrict__ up, int64_t ld, int64_t n_tok,
                                     int64_t n_ff) {
    const int64_t n = n_tok * n_ff;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int64_t t = e / n_ff, i = e - t * n_ff;
        const float g = gate[t * ld + i];
        out[e] = ql_k_f2h((g / (1.0f + expf(-g))) * up[t * ld + i]);
    }
}

extern "C" int ql_cuda_swiglu(uint16_t *out, const float *gate, const float *up, int64_t ld,
                              int64_t n_tok, int64_t n_ff, void *stream) {
    if (n_tok < 0 || n_ff < 1 || ld < n_ff) return QL_EINVAL;
    if (n_tok == 0) return 0;
    if (!out || !gate || !up) return QL_EINVAL;
    const int threads = 256;
    const int64_t blocks = QL_MIN(ql_k_ceil_div(n_tok * n_ff, threads), (int64_t)65536);
    swiglu_kernel<<<(unsigned)blocks, threads, 0, QL_K_STREAM(stream)>>>(out, gate, up, ld, n_tok,
                                                                         n_ff);
    QL_K_LAUNCH_CHECK();
    return 0;
}

static __global__ void f32_to_f16_kernel(uint16_t *__restrict__ y, const float *__restrict__ x,
                                         int64_t n) {
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x)
        y[e] = ql_k_f2h(x[e]);
}

extern "C" int ql_cuda_f32_to_f16(uint16_t *y, const float *x, int64_t n, void *stream) {
    if (n < 0) return QL_EINVAL;
    if (n == 0) return 0;
    if (!y || !x) return QL_EINVAL;
    const int threads = 256;
    const int64_t blocks = QL_MIN(ql_k_ceil_div(n, threads), (int64_t)65536);
    f32_to_f16_kernel<<<(unsigned)blocks, threads, 0, QL_K_STREAM(stream)>>>(y, x, n);
    QL_K_LAUNCH_CHECK();
    return 0;
}

#define SOFTMAX_THREADS 256

/* grid: one block per row; block: SOFTMAX_THREADS threads striding over the row. */
static __global__ void softmax_rows_kernel(float *__restrict__ x, int64_t n) {
    __shared__ float red[32];
    float *xr = x + (int64_t)blockIdx.x * n;
    float m = -INFINITY;
    float bad = 0.0f; /* > 0 when the row holds NaN or +inf */
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i];
        if (isnan(v) || v == INFINITY) bad = 1.0f;
        m = fmaxf(m, v);
    }
    m = ql_k_block_max(m, red);
    bad = ql_k_block_max(bad, red);
    if (bad > 0.0f || m == -INFINITY) {
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xr[i] = NAN;
        return;
    }
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float e = expf(xr[i] - m);
        xr[i] = e;
        s += e;
    }
    s = ql_k_block_sum(s, red);
    const float inv = 1.0f / s;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) xr[i] *= inv;
}

extern "C" int ql_cuda_softmax_rows(float *x, int64_t n_rows, int64_t n, void *stream) {
    if (n_rows < 0 || n < 1) return QL_EINVAL;
    if (n_rows == 0) return 0;
    if (!x || n_rows > QL_K_GRID_X_MAX) return QL_EINVAL;
    softmax_rows_kernel<<<(unsigned)n_rows, SOFTMAX_THREADS, 0, QL_K_STREAM(stream)>>>(x, n);
    QL_K_LAUNCH_CHECK();
    return 0;
}
