/*
 * cpu/kernels-avx2.c — the SIMD kernels of cpu/kernels-x86.inc for AVX2 with FMA and F16C;
 * products by maddubs + madd.
 */
#if defined(__x86_64__) || defined(__i386__)
#define QL_K_TARGET "avx2,fma,f16c"
#define QL_K_VNNI 0
#define QL_K_SFX avx2
#include "kernels-x86.inc"
#else
typedef int ql__cpu_kernels_avx2_empty; /* ISO C forbids an empty translation unit */
#endif
