/*
 * cuda/cuda.h — the CUDA backend's C interface. No CUDA types appear here: the rest of
 * quill includes this header whether or not CUDA is compiled in (QL_HAVE_CUDA).
 */
#ifndef QL_CUDA_H
#define QL_CUDA_H

#include <stddef.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** 1 when this build has the CUDA backend compiled in, else 0. */
QL_API int ql_cuda_compiled(void);

/** Number of usable CUDA devices: 0 when none is present, the driver is missing, or CUDA is
 *  not compiled in. Never fails. Thread: any. */
QL_API int ql_cuda_device_count(void);

/** Writes device `idx`'s name and memory into buf ("NVIDIA H100 80GB HBM3, 79.1 GiB").
 *  @return 0, QL_EINVAL (no such device) or QL_EUNSUPPORTED (no CUDA in this build). */
QL_API int ql_cuda_device_describe(int idx, char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* QL_CUDA_H */
