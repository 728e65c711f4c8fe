/*
 * cpu/features.c — run-time CPU feature detection, so one binary carries both the
 * AVX2/FMA kernels and the portable ones and picks at start-up.
 */
#include "cpu/cpu.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

unsigned ql_cpu_features(void) {
    unsigned f = 0;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) f |= QL_CPU_FEATURE_AVX2;
    if (__builtin_cpu_supports("fma")) f |= QL_CPU_FEATURE_FMA;
    if (__builtin_cpu_supports("avx512f")) f |= QL_CPU_FEATURE_AVX512F;
    /* f16c has no __builtin_cpu_supports name in older GCC; every AVX2 CPU has it */
    if (f & QL_CPU_FEATURE_AVX2) f |= QL_CPU_FEATURE_F16C;
#endif
    return f;
}

void ql_cpu_features_str(unsigned features, char *buf, size_t len) {
    static const char *const names[] = {"avx2", "fma", "f16c", "avx512f"};
    size_t n = 0;
    if (len == 0) return;
    buf[0] = '\0';
    for (size_t i = 0; i < QL_ARRAY_LEN(names); i++) {
        if (!(features & (1u << i))) continue;
        int w = snprintf(buf + n, len - n, "%s%s", n ? " " : "", names[i]);
        if (w < 0 || (size_t)w >= len - n) return;
        n += (size_t)w;
    }
    if (n == 0) snprintf(buf, len, "portable");
}

int ql_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
