/*
 * cpu/kernels-avxvnni.c — the SIMD kernels of cpu/kernels-x86.inc for AVX-VNNI (VEX vpdpbusd):
 * Alder Lake, Sapphire Rapids and later.
 */
#if defined(__x86_64__) || defined(__i386__)
#define QL_K_TARGET "avx2,fma,f16c,avxvnni"
#define QL_K_VNNI 1
#define QL_K_SFX avxvnni
#include "kernels-x86.inc"
#else
typedef int ql__cpu_kernels_avxvnni_empty; /* ISO C forbids an empty translation unit */
#endif
