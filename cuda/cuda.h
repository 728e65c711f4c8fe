/*
 * cuda/cuda.h — the CUDA backend's C interface. No CUDA types appear here: the rest of
 * quill includes this header whether or not CUDA is compiled in (QL_HAVE_CUDA). Without
 * nvcc, cuda/device-stub.c implements it: no device, and a backend that is never available.
 */
#ifndef QL_CUDA_H
#define QL_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
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

/* What the benchmark and the logs need to know about a device. */
typedef struct ql_cuda_device_info_s {
    char name[256];
    int sm_major, sm_minor; /* compute capability */
    int n_sm;               /* multiprocessors */
    uint64_t mem_total_bytes;
    uint64_t mem_free_bytes; /* at the time of the call */
    /* Peak DRAM bandwidth from the device attributes: 2 (double data rate) × memory clock ×
     * bus width / 8, bytes per second. 0 when the driver does not report them. */
    double mem_bandwidth_bytes_s;
} ql_cuda_device_info_t;

/** Fills *out for device idx. @return 0, QL_EINVAL (no such device, NULL out) or
 *  QL_EUNSUPPORTED (no CUDA in this build). Thread: any. */
QL_API int ql_cuda_device_info(int idx, ql_cuda_device_info_t *out);

/* ---- the backend (backend/backend.h) ---- */

/** The CUDA backend on device 0 (see ql_backend_init_fn): the model's linear layers and
 *  embeddings dequantized on the host to f16 and uploaded once (norms and biases f32), a
 *  paged f16 KV pool of what p->gpu_memory_utilization (default 0.9) of the device's memory
 *  leaves (p->kv_cache_bytes is the CPU's budget and is ignored here), capped at what
 *  n_seqs_max full contexts can use, cuBLAS GEMMs with f32 accumulation,
 *  decode steps replayed from CUDA graphs (QL_CUDA_GRAPHS=0 in the environment: eager).
 *  Errors: QL_EUNSUPPORTED (no CUDA in this build, no device, a model shape the kernels do
 *  not run), QL_ENOMEM (the model or one KV block does not fit: err says how much is needed
 *  and how much there is), QL_ECUDA, and those of ql_hparams_read / ql_weights_init.
 *  After a device error every later forward() fails with QL_ECUDA (the device context is
 *  lost); the engine then fails its requests and reports itself unhealthy. */
QL_API int ql_cuda_backend_init(const ql_gguf_t *gguf, const ql_backend_params_t *p,
                                ql_backend_t **out, char *err, size_t errlen);
/** Its registry entry ("cuda", available when a device is present). */
QL_API extern const ql_backend_desc_t ql_cuda_backend_desc;

#ifdef __cplusplus
}
#endif

#endif /* QL_CUDA_H */
