/*
 * cuda/k-mem.cu — device memory helpers of cuda/kernels.h: allocation, synchronous copies,
 * stream synchronisation. Used by the kernel tests; the backend may use them too.
 */
#include "cuda/k-common.cuh"

extern "C" int ql_cuda_mem_alloc(void **dptr, size_t bytes) {
    if (dptr == NULL) return QL_EINVAL;
    *dptr = NULL;
    if (bytes == 0) return 0;
    cudaError_t err = cudaMalloc(dptr, bytes);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        *dptr = NULL;
        QL_LOG_ERROR("cudaMalloc(%zu bytes): %s", bytes, cudaGetErrorString(err));
        return err == cudaErrorMemoryAllocation ? QL_ENOMEM : QL_ECUDA;
    }
    return 0;
}

extern "C" void ql_cuda_mem_free(void *dptr) {
    if (dptr != NULL) (void)cudaFree(dptr);
}

extern "C" int ql_cuda_mem_upload(void *dst_dev, const void *src_host, size_t bytes) {
    if (bytes == 0) return 0;
    if (dst_dev == NULL || src_host == NULL) return QL_EINVAL;
    QL_CUDA_TRY(cudaMemcpy(dst_dev, src_host, bytes, cudaMemcpyHostToDevice));
    return 0;
}

extern "C" int ql_cuda_mem_download(void *dst_host, const void *src_dev, size_t bytes) {
    if (bytes == 0) return 0;
    if (dst_host == NULL || src_dev == NULL) return QL_EINVAL;
    QL_CUDA_TRY(cudaMemcpy(dst_host, src_dev, bytes, cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ql_cuda_stream_sync(void *stream) {
    QL_CUDA_TRY(cudaStreamSynchronize(QL_K_STREAM(stream)));
    QL_CUDA_TRY(cudaGetLastError());
    return 0;
}
