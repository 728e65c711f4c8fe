/*
 * cuda/k-norm.cu — RMSNorm fused with the residual add: x += delta, then
 * out = f16(x / sqrt(mean(x²) + eps) · w). The reference is ql_cpu_rmsnorm (cpu/ops.c),
 * which accumulates the mean in double; here it is f32 over a block reduction (relative
 * error ~1e-7 for the rows of a model, far below the f16 rounding of the output).
 */
#include "cuda/k-common.cuh"

#define NORM_THREADS 256

/* grid: one block per token (x); block: NORM_THREADS threads striding over dim. */
static __global__ void rmsnorm_residual_kernel(float *__restrict__ x,
                                               const float *__restrict__ delta,
                                               const float *__restrict__ w,
                                               uint16_t *__restrict__ out,
                                               float *__restrict__ out_f32, int64_t dim,
                                               float eps) {
    __shared__ float red[32];
    const int64_t t = blockIdx.x;
    float *xt = x + t * dim;
    const float *dt = delta ? delta + t * dim : NULL;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = xt[i];
        if (dt) {
            v += dt[i];
            xt[i] = v; /* each element is read back below by the thread that wrote it */
        }
        ss += v * v;
    }
    ss = ql_k_block_sum(ss, red);
    const float mean = ss / (float)dim;
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        const float y = (xt[i] * scale) * (w ? w[i] : 1.0f);
        out[t * dim + i] = ql_k_f2h(y);
        if (out_f32) out_f32[t * dim + i] = y;
    }
}

extern "C" int ql_cuda_rmsnorm_residual(float *x, const float *delta, const float *w,
                                        uint16_t *out, float *out_f32, int64_t n_tok,
                                        int64_t dim, float eps, void *stream) {
    if (n_tok < 0 || dim < 1 || !(eps >= 0.0f)) return QL_EINVAL;
    if (n_tok == 0) return 0;
    if (x == NULL || w == NULL || out == NULL) return QL_EINVAL;
    if (n_tok > QL_K_GRID_X_MAX) return QL_EINVAL;
    rmsnorm_residual_kernel<<<(unsigned)n_tok, NORM_THREADS, 0, QL_K_STREAM(stream)>>>(
        x, delta, w, out, out_f32, dim, eps);
    QL_K_LAUNCH_CHECK();
    return 0;
}
