/*
 * cuda/cuda-internal.h — what the CUDA backend's files share, and the white-box hooks its
 * tests use. Plain C (no CUDA types): convert.c is compiled into every build, so its tests
 * run on machines without a GPU.
 */
#ifndef QL_CUDA_INTERNAL_H
#define QL_CUDA_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- host-side weight conversion (convert.c) ---- */

/** Converts rows [r0, r1) of a GGUF matrix (type `type`, rows of n_in elements, `data` the
 *  tensor's first row) to f16 (round to nearest even) into dst [r1 - r0][n_in], through the
 *  reference dequantization of model/quant.c, on n_threads threads (<= 1: the caller's).
 *  @return 0, QL_EUNSUPPORTED (a type model/quant.c cannot dequantize), QL_ERANGE (a value
 *  that is not finite in f16: |x| >= 65520, inf or NaN; *bad_row names the row), QL_EINVAL
 *  (bad arguments: n_in not a multiple of the type's block) or QL_ENOMEM. */
QL_API int ql__cuda_rows_to_f16(int type, const void *data, int64_t n_in, int64_t r0, int64_t r1,
                                uint16_t *dst, int n_threads, int64_t *bad_row);

/** Threads the host conversion uses here: online cores, at most 32. */
QL_API int ql__cuda_convert_threads(void);

#ifdef __cplusplus
}
#endif

#endif /* QL_CUDA_INTERNAL_H */
