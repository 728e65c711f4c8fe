/*
 * cpu/cpu.h — the CPU backend: reference implementation of every kernel and the forward
 * pass quill runs without a GPU. For now: the CPU features selected at run time.
 */
#ifndef QL_CPU_H
#define QL_CPU_H

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* CPU features the kernels dispatch on (bits). */
typedef enum ql_cpu_feature_e {
    QL_CPU_FEATURE_AVX2 = 1 << 0,
    QL_CPU_FEATURE_FMA = 1 << 1,
    QL_CPU_FEATURE_F16C = 1 << 2,
    QL_CPU_FEATURE_AVX512F = 1 << 3,
} ql_cpu_feature_t;

/** The features of the CPU this process runs on, detected once. Thread: any. */
QL_API unsigned ql_cpu_features(void);
/** Writes "avx2 fma f16c" (or "portable") into buf. */
QL_API void ql_cpu_features_str(unsigned features, char *buf, size_t len);
/** Online CPU cores (at least 1). */
QL_API int ql_cpu_count(void);

#ifdef __cplusplus
}
#endif

#endif /* QL_CPU_H */
