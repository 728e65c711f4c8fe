/*
 * cuda/k-common.cuh — what the kernel files (cuda/k-*.cu) share: the status macros, the
 * launch check, warp and block reductions, f16 conversion. Included by .cu files only.
 */
#ifndef QL_CUDA_K_COMMON_CUH
#define QL_CUDA_K_COMMON_CUH

#define QL_LOG_MODULE "cuda"

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "core/core.h"
#include "cuda/kernels.h"

/* Logs `#x`, file, line and CUDA's error string, then returns QL_ECUDA from the caller. */
#ifndef QL_CUDA_TRY
#define QL_CUDA_TRY(x)                                                                     \
    do {                                                                                   \
        cudaError_t ql_err_ = (x);                                                         \
        if (ql_err_ != cudaSuccess) {                                                      \
            QL_LOG_ERROR("%s failed at %s:%d: %s", #x, __FILE__, __LINE__,                 \
                         cudaGetErrorString(ql_err_));                                     \
            return QL_ECUDA;                                                               \
        }                                                                                  \
    } while (0)
#endif

/* After every launch: a bad configuration shows up here, not at the next sync. */
#define QL_K_LAUNCH_CHECK() QL_CUDA_TRY(cudaGetLastError())

#define QL_K_STREAM(s) ((cudaStream_t)(s))

/* Grid dimension y and z are limited to 65535; x to 2^31 − 1. */
#define QL_K_GRID_YZ_MAX 65535
#define QL_K_GRID_X_MAX 2147483647LL

static __device__ __forceinline__ float ql_k_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float ql_k_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets
 * the result. `red` is 32 floats of shared memory. Must be reached by all threads. */
static __device__ __forceinline__ float ql_k_block_sum(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (int)(blockDim.x >> 5);
    v = ql_k_warp_sum(v);
    __syncthreads(); /* red may still be read by a previous reduction */
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < n_warps ? red[lane] : 0.0f;
    return ql_k_warp_sum(v);
}
static __device__ __forceinline__ float ql_k_block_max(float v, float *red) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (int)(blockDim.x >> 5);
    v = ql_k_warp_max(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < n_warps ? red[lane] : -INFINITY;
    return ql_k_warp_max(v);
}

static __device__ __forceinline__ float ql_k_h2f(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}
static __device__ __forceinline__ uint16_t ql_k_f2h(float f) {
    return __half_as_ushort(__float2half_rn(f));
}

static inline int64_t ql_k_ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

#endif /* QL_CUDA_K_COMMON_CUH */
