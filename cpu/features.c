/*
 * cpu/features.c — run-time CPU feature detection, so one binary carries both the
 * AVX2/FMA (and VNNI) kernels and the portable ones and picks at start-up, and the
 * QL_CPU_ISA override that forces a lower path (tests, debugging).
 */
#include "cpu/cpu.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/syscall.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>

static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* NOTE(amx-perm): Linux enables the 8 KiB tile state per process on request; until then the
 * first tile instruction faults. The permission covers every thread of the process. The
 * environment variable QL_CPU_AMX=0 leaves it off (as if the CPU had no AMX). */
static int amx_permit(void) {
#if defined(__linux__) && defined(__x86_64__)
    const char *env = getenv("QL_CPU_AMX");
    if (env && strcmp(env, "0") == 0) return 0;
    enum { ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18 };
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}

static unsigned detect(void) {
    unsigned f = 0, a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave) return 0;
    const uint64_t xcr0 = xgetbv0();
    const int ymm_os = (xcr0 & 0x6) == 0x6;   /* SSE and AVX state */
    const int zmm_os = (xcr0 & 0xe6) == 0xe6; /* + opmask, ZMM_Hi256, Hi16_ZMM */
    if (!ymm_os) return 0;
    if (fma) f |= QL_CPU_FEATURE_FMA;
    if (f16c) f |= QL_CPU_FEATURE_F16C;
    if (__get_cpuid_max(0, NULL) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    if ((b >> 5) & 1) f |= QL_CPU_FEATURE_AVX2;
    const int avx512f = (b >> 16) & 1, avx512bw = (b >> 30) & 1, avx512vl = (b >> 31) & 1;
    const int avx512vnni = (c >> 11) & 1;
    if (zmm_os && avx512f) f |= QL_CPU_FEATURE_AVX512F;
    if (zmm_os && avx512f && avx512bw && avx512vl && avx512vnni) f |= QL_CPU_FEATURE_AVX512VNNI;
    const int amx = ((d >> 24) & 1) && ((d >> 25) & 1); /* AMX-TILE, AMX-INT8 */
    __cpuid_count(7, 1, a, b, c, d);
    if ((a >> 4) & 1) f |= QL_CPU_FEATURE_AVXVNNI;
    if (amx && (f & QL_CPU_FEATURE_AVX512VNNI) && (xcr0 & 0x60000) == 0x60000 && amx_permit())
        f |= QL_CPU_FEATURE_AMXINT8;
    return f;
}
#else
static unsigned detect(void) {
    return 0;
}
#endif

unsigned ql_cpu_features(void) {
    /* NOTE(features-cache): computed once; a benign race writes the same value twice. */
    static volatile int done = 0;
    static volatile unsigned cached = 0;
    if (!done) {
        cached = detect();
        done = 1;
    }
    return cached;
}

void ql_cpu_features_str(unsigned features, char *buf, size_t len) {
    static const char *const names[] = {"avx2",    "fma",        "f16c",    "avx512f",
                                        "avxvnni", "avx512vnni", "amx-int8"};
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

/* ---- ISA paths ---- */

static const char *const isa_names[QL_CPU_ISA_COUNT] = {"portable", "avx2", "avxvnni",
                                                        "avx512vnni", "amx"};

const char *ql_cpu_isa_name(ql_cpu_isa_t isa) {
    return (unsigned)isa < QL_CPU_ISA_COUNT ? isa_names[isa] : "unknown";
}

int ql_cpu_isa_supported(ql_cpu_isa_t isa) {
    const unsigned base = QL_CPU_FEATURE_AVX2 | QL_CPU_FEATURE_FMA | QL_CPU_FEATURE_F16C;
    const unsigned f = ql_cpu_features();
    switch (isa) {
    case QL_CPU_ISA_PORTABLE: return 1;
#if defined(__x86_64__) || defined(__i386__)
    case QL_CPU_ISA_AVX2: return (f & base) == base;
    case QL_CPU_ISA_AVXVNNI: return (f & base) == base && (f & QL_CPU_FEATURE_AVXVNNI);
    case QL_CPU_ISA_AVX512VNNI: return (f & base) == base && (f & QL_CPU_FEATURE_AVX512VNNI);
#ifdef __x86_64__
    case QL_CPU_ISA_AMX:
        return (f & base) == base && (f & QL_CPU_FEATURE_AVX512VNNI) &&
               (f & QL_CPU_FEATURE_AMXINT8);
#endif
#endif
    default: return 0;
    }
}

ql_cpu_isa_t ql_cpu_isa_default(void) {
    ql_cpu_isa_t best = QL_CPU_ISA_PORTABLE;
    /* NOTE(isa-order): every path computes the same bits; the fastest wins. The 512-bit
     * AVX512-VNNI matmul (16-row panels) beats the 256-bit VNNI one by 1.3x at one token
     * and 1.75x at eight on Sapphire Rapids (docs/BENCHMARKS.md). */
    if (ql_cpu_isa_supported(QL_CPU_ISA_AVX2)) best = QL_CPU_ISA_AVX2;
    if (ql_cpu_isa_supported(QL_CPU_ISA_AVXVNNI)) best = QL_CPU_ISA_AVXVNNI;
    if (ql_cpu_isa_supported(QL_CPU_ISA_AVX512VNNI)) best = QL_CPU_ISA_AVX512VNNI;
    if (ql_cpu_isa_supported(QL_CPU_ISA_AMX)) best = QL_CPU_ISA_AMX;
    const char *env = getenv("QL_CPU_ISA");
    if (env && *env) {
        for (int i = 0; i < QL_CPU_ISA_COUNT; i++) {
            if (strcasecmp(env, isa_names[i]) == 0) {
                if (ql_cpu_isa_supported((ql_cpu_isa_t)i)) return (ql_cpu_isa_t)i;
                break;
            }
        }
    }
    return best;
}
