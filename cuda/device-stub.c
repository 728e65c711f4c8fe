/*
 * cuda/device-stub.c — cuda/cuda.h for builds without nvcc: no device, ever.
 */
#include "cuda/cuda.h"

int ql_cuda_compiled(void) { return 0; }
int ql_cuda_device_count(void) { return 0; }
int ql_cuda_device_describe(int idx, char *buf, size_t len) {
    (void)idx;
    (void)buf;
    (void)len;
    return QL_EUNSUPPORTED;
}
