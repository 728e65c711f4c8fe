/*
 * cuda/device-stub.c — cuda/cuda.h for builds without nvcc: no device, ever, and a backend
 * that is never available (its init says why), so server/ registers it unconditionally.
 */
#include "cuda/cuda.h"

int ql_cuda_compiled(void) {
    return 0;
}
int ql_cuda_device_count(void) {
    return 0;
}
int ql_cuda_device_describe(int idx, char *buf, size_t len) {
    (void)idx;
    (void)buf;
    (void)len;
    return QL_EUNSUPPORTED;
}
int ql_cuda_device_info(int idx, ql_cuda_device_info_t *out) {
    (void)idx;
    (void)out;
    return QL_EUNSUPPORTED;
}

int ql_cuda_backend_init(const ql_gguf_t *gguf, const ql_backend_params_t *p, ql_backend_t **out,
                         char *err, size_t errlen) {
    (void)gguf;
    (void)p;
    if (out) *out = NULL;
    ql_errf(err, errlen, "this build has no CUDA support (built without nvcc)");
    return QL_EUNSUPPORTED;
}

static int cuda_available(void) {
    return 0;
}

const ql_backend_desc_t ql_cuda_backend_desc = {
    .name = "cuda", .available = cuda_available, .init = ql_cuda_backend_init};
