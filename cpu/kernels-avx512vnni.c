/*
 * cpu/kernels-avx512vnni.c — the SIMD kernels of cpu/kernels-x86.inc for AVX512-VNNI on 256-bit vectors (EVEX vpdpbusd): Ice Lake, Zen 4.
 */
#if defined(__x86_64__) || defined(__i386__)
#define QL_K_TARGET "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni"
#define QL_K_VNNI 2
#define QL_K_SFX avx512vnni
#include "kernels-x86.inc"
#else
typedef int ql__cpu_kernels_avx512vnni_empty; /* ISO C forbids an empty translation unit */
#endif
