/*
 * cuda/device.cu — device discovery for the CUDA backend (cuda/cuda.h).
 */
#include "cuda/cuda.h"

#include <cuda_runtime.h>
#include <stdio.h>

extern "C" int ql_cuda_compiled(void) { return 1; }

extern "C" int ql_cuda_device_count(void) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

extern "C" int ql_cuda_device_describe(int idx, char *buf, size_t len) {
    if (idx < 0 || idx >= ql_cuda_device_count() || !buf || len == 0) return QL_EINVAL;
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, idx) != cudaSuccess) {
        (void)cudaGetLastError();
        return QL_EINVAL;
    }
    snprintf(buf, len, "%s, sm_%d%d, %.1f GiB", prop.name, prop.major, prop.minor,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0));
    return 0;
}
