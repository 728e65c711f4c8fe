/*
 * cpu/cpu-internal.h — what the CPU backend's files share and tests may look at: fp16
 * helpers, the packed ("panel") weight layout the SIMD matmul reads, and the per-ISA
 * kernel entry points. Not part of the public API (cpu/cpu.h is).
 *
 * NOTE(bitwise): every matmul output element (row r, token t) is computed by the same
 * sequence of float operations whatever the tile, the batch composition, the thread count
 * or the ISA path (portable C included):
 *
 *   quantized weights:  acc = macc = 0
 *                       for each 32-block b:  isum = Σ w_q·a_q              (exact integer)
 *                                             acc  = fma((float)isum, d_w·d_a, acc)
 *                                             macc = fma(m_w, s_a, macc)    (Q4_1, Q5_1 only)
 *                       y = acc + macc
 *   f16/f32 weights:    s[j] = Σ_{k ≡ j mod 4} fma chain over k of w[k]·x[k], j = 0..3
 *                       y = (s[0] + s[1]) + (s[2] + s[3])
 *
 * Integer sums are exact, so SIMD kernels may split them any way they like; the float
 * steps are the same operations in the same order everywhere. That is what makes a
 * sequence's logits bit-identical alone or inside any batch, and the SIMD paths
 * bit-identical to the portable one (tests assert both with memcmp).
 */
#ifndef QL_CPU_INTERNAL_H
#define QL_CPU_INTERNAL_H

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

#include "cpu/cpu.h"

/* ---- fp16 (exact, portable; the F16C instructions give the same bits) ---- */

static inline float ql__cpu_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    uint32_t bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf / nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
        bits = sign;
    } else { /* subnormal: normalise */
        int e = -1;
        do {
            e++;
            man <<= 1;
        } while (!(man & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ffu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof(f));
    return f;
}

/* Round to nearest even, like vcvtps2ph with imm 0 (overflow -> inf, nan stays nan). */
static inline uint16_t ql__cpu_fp32_to_fp16(float f) {
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t ax = x & 0x7fffffffu;
    if (ax >= 0x7f800000u)
        return (uint16_t)(sign | 0x7c00u | (ax > 0x7f800000u ? 0x200u | ((ax >> 13) & 0x3ffu) : 0));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* rounds to >= 65520: inf */
    if (ax < 0x38800000u) {                                   /* below 2^-14: subnormal or 0 */
        if (ax < 0x33000000u) return (uint16_t)sign;          /* < 2^-25: rounds to 0 */
        uint32_t e = ax >> 23;
        uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        uint32_t shift = 126u - e; /* 14..24 */
        uint32_t r = m >> shift;
        uint32_t rem = m & ((1u << shift) - 1u);
        uint32_t half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (r & 1u))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ax - 0x38000000u; /* rebias exponent 127 -> 15 */
    uint32_t rem = r & 0x1fffu;
    r >>= 13;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) r++;
    return (uint16_t)(sign | r);
}

static inline float ql__cpu_fp16_load(const void *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return ql__cpu_fp16_to_fp32(h);
}

/* ---- quantized activations ---- */

#define QL_CPU_QK 32 /* elements per activation block (all 32-blocks weights match it) */

/* ---- packed weights ---- */

/* Rows per panel: one vector lane per row, 8 for the 256-bit kernels, 16 for the 512-bit
 * ones (QL_CPU_ISA_AVX512VNNI, and QL_CPU_ISA_AMX, which shares them). */
#define QL_CPU_PANEL_ROWS 8
#define QL_CPU_PANEL_ROWS_MAX 16
static inline int ql__cpu_panel_rows(ql_cpu_isa_t isa) {
    return isa == QL_CPU_ISA_AVX512VNNI || isa == QL_CPU_ISA_AMX ? 16 : QL_CPU_PANEL_ROWS;
}

/* How a panel block of R rows stores its quants (see ql_cpu_weight_t in cpu.h):
 *   P4  (Q4_0, Q4_1):  4 vectors of 4R bytes; byte (lane r, j) of vector v holds in its
 *                      low nibble u[r][4v+j] and in its high nibble u[r][16+4v+j]
 *   P8U (Q5_0, Q5_1):  8 vectors; byte (r, j) of vector g is u[r][4g+j] (0..31)
 *   P8S (Q8_0, and K-quants requantized to Q8_0): as P8U with signed q[r][4g+j]
 *   then d[R] fp16, and for Q4_1/Q5_1 m[R] fp16.
 * F16 / F32 panels store, for each k, the R rows' values.
 * Rows past n_out are zero (d = 0). */
typedef enum ql_cpu_pack_e {
    QL_CPU_PACK_NONE = 0,
    QL_CPU_PACK_P4 = 1,
    QL_CPU_PACK_P8U = 2,
    QL_CPU_PACK_P8S = 3,
    QL_CPU_PACK_F16 = 4,
    QL_CPU_PACK_F32 = 5,
} ql_cpu_pack_t;

/* NOTE(prefetch): the matmul kernels prefetch panel bytes this far ahead into L2. Weights
 * larger than the last-level cache stream from DRAM, and the hardware prefetcher alone left
 * the kernel waiting: 4 KiB ahead made a 144 MB Q4_1 weight 15% faster at one token and 22%
 * at eight (Sapphire Rapids guest, docs/BENCHMARKS.md); it costs nothing when the weight
 * sits in cache. */
#define QL__CPU_PREFETCH 4096

/* Per-type integer offset: the stored u is w + off, so Σ w·a = Σ u·a − off·Σ a. */
static inline int ql__cpu_type_offset(int type) {
    switch (type) {
    case QL_DTYPE_Q4_0: return 8;
    case QL_DTYPE_Q5_0: return 16;
    default: return 0;
    }
}
static inline int ql__cpu_type_has_min(int type) {
    return type == QL_DTYPE_Q4_1 || type == QL_DTYPE_Q5_1;
}

/* Arguments of one matmul tile job: weight panels [p0, p1) against tokens [0, n_tok). */
typedef struct ql__cpu_mm_args_s {
    const ql_cpu_weight_t *w;
    const ql_cpu_act_t *x;
    float *y; /* [n_tok][ldy] */
    int64_t ldy;
    int64_t p0, p1; /* panel range */
} ql__cpu_mm_args_t;

/* ---- per-ISA kernels (cpu/kernels-x86.inc instantiated by cpu/kernels-*.c) ---- */

#define QL__CPU_DECLARE_ISA(sfx)                                                                   \
    void ql__cpu_quantize_act_##sfx(const float *x, int64_t n, int8_t *qs, float *d, float *s,     \
                                    int32_t *sum);                                                 \
    void ql__cpu_mm_panels_##sfx(const ql__cpu_mm_args_t *a);                                      \
    float ql__cpu_dot_f32_##sfx(const float *a, const float *b, int64_t n);                        \
    float ql__cpu_dot_f16_f32_##sfx(const uint16_t *a, const float *b, int64_t n);                 \
    void ql__cpu_axpy_f16_##sfx(float *y, float a, const uint16_t *x, int64_t n);                  \
    void ql__cpu_f32_to_f16_##sfx(const float *x, uint16_t *y, int64_t n);                         \
    void ql__cpu_swiglu_##sfx(float *out, const float *gate, const float *up, int64_t n);          \
    void ql__cpu_attn_tile_##sfx(                                                                  \
        const ql_kv_layout_t *kv, const uint16_t *k_pool, const uint16_t *v_pool, int kv_head,     \
        const int32_t *table, int n_q, const int32_t *n_pos, const float *const *q,                \
        float *const *out, int n_group, float scale, float *scratch, int64_t scratch_stride);

#if defined(__x86_64__) || defined(__i386__)
#define QL_CPU_HAVE_X86 1
QL__CPU_DECLARE_ISA(avx2)
QL__CPU_DECLARE_ISA(avxvnni)
QL__CPU_DECLARE_ISA(avx512vnni)
/* QL_CPU_ISA_AMX: the avx512vnni kernels, but this matmul (cpu/kernels-amx.c) */
void ql__cpu_mm_panels_amx(const ql__cpu_mm_args_t *a);
#endif

/* Portable versions (cpu/kernels-portable.c). */
void ql__cpu_quantize_act_portable(const float *x, int64_t n, int8_t *qs, float *d, float *s,
                                   int32_t *sum);
void ql__cpu_mm_rows_portable(const ql_cpu_weight_t *w, const ql_cpu_act_t *x, float *y,
                              int64_t ldy, int64_t r0, int64_t r1);
float ql__cpu_dot_f32_portable(const float *a, const float *b, int64_t n);
float ql__cpu_dot_f16_f32_portable(const uint16_t *a, const float *b, int64_t n);
void ql__cpu_axpy_f16_portable(float *y, float a, const uint16_t *x, int64_t n);
void ql__cpu_f32_to_f16_portable(const float *x, uint16_t *y, int64_t n);
void ql__cpu_swiglu_portable(float *out, const float *gate, const float *up, int64_t n);
/** SwiGLU on the ISA's path (the same bits as ql_cpu_swiglu). */
void ql__cpu_swiglu(ql_cpu_isa_t isa, float *out, const float *gate, const float *up, int64_t n);

/** Loads row-local quants of a 32-block of `type` at `blk` as signed integers w[32] with
 *  x = d·w + m (m = 0 unless the type has a min). */
void ql__cpu_block_unpack(int type, const void *blk, int8_t w[QL_CPU_QK], float *d, float *m);

/* ---- attention ---- */

#define QL__CPU_ATTN_GROUP_MAX 32 /* query heads per KV head, at most */
#define QL__CPU_ATTN_HD_FAST 256  /* head_dim the SIMD attention handles (multiples of 8) */
#define QL__CPU_ATTN_TILE 8       /* query tokens of one sequence per attention call: they
                                   * share the K/V rows while those are in L1 */

/* NOTE(expf): e^x as a fixed sequence of IEEE operations, so the scalar code here and the
 * 8-lane version in cpu/kernels-x86.inc give the same bits (libm's expf differs between
 * builds and cannot be vectorized): n = rint(x·log2 e), r = x − n·ln2 (two-part ln2, the high
 * part exact in 16 bits so n·ln2_hi is exact), e^r by its Taylor polynomial of degree 7
 * (truncation < 5e-9 relative for |r| <= ln2/2) in Horner form with fmas, times 2^n built
 * in the exponent bits. Checked exhaustively over every float in [-87, 88]: at most 0.94 ulp
 * from the correctly rounded e^x. Below −87 it returns 0 (e^x < 2^-125), above 88 +inf. */
#define QL__CPU_EXP_LO (-87.0f)
#define QL__CPU_EXP_HI 88.0f
#define QL__CPU_LOG2E 1.44269504088896341f
#define QL__CPU_LN2_HI 0.693145751953125f
#define QL__CPU_LN2_LO 1.42860682030941723e-06f
static inline float ql__cpu_expf(float x) {
    if (x != x) return x;
    if (x < QL__CPU_EXP_LO) return 0.0f;
    if (x > QL__CPU_EXP_HI) return INFINITY;
    const float n = nearbyintf(x * QL__CPU_LOG2E);
    float r = fmaf(n, -QL__CPU_LN2_HI, x);
    r = fmaf(n, -QL__CPU_LN2_LO, r);
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    const int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof(scale));
    return p * scale;
}

/* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): how 8 partial sums are combined everywhere. */
static inline float ql__cpu_reduce8(const float l[8]) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

/** Softmax numerators in place over s[0..n): s[j] = e^(s[j] − max) (ql__cpu_expf); returns
 *  1 / Σ s[j], the sum in 8 partial sums by j mod 8 combined by ql__cpu_reduce8. The SIMD
 *  attention computes the same bits with vectors. */
static inline float ql__cpu_softmax_num(float *s, int32_t n) {
    float mx = -INFINITY;
    for (int32_t j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
    float l[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
    for (int32_t j = 0; j < n; j++) {
        s[j] = ql__cpu_expf(s[j] - mx);
        l[j & 7] += s[j];
    }
    return 1.0f / ql__cpu_reduce8(l);
}

/** Attention of the n_group query heads sharing KV head `kv_head` (q, out: [n_group][head_dim])
 *  over positions 0..n_pos-1 read through `table`. scratch holds n_group · n_pos floats.
 *  The same bits on every ISA (dot and axpy helpers are exact replicas). */
void ql__cpu_attn_group(ql_cpu_isa_t isa, const ql_kv_layout_t *kv, const uint16_t *k_pool,
                        const uint16_t *v_pool, int kv_head, const int32_t *table, int32_t n_pos,
                        const float *q, float *out, int n_group, float scale, float *scratch);
/** The same for n_q <= QL__CPU_ATTN_TILE query tokens of one sequence (token u: n_pos[u]
 *  positions, q[u] and out[u] as above): each token's result has exactly the bits
 *  ql__cpu_attn_group gives it alone. scratch holds n_q · n_group · scratch_stride floats,
 *  scratch_stride >= every n_pos[u]. */
void ql__cpu_attn_tile(ql_cpu_isa_t isa, const ql_kv_layout_t *kv, const uint16_t *k_pool,
                       const uint16_t *v_pool, int kv_head, const int32_t *table, int n_q,
                       const int32_t *n_pos, const float *const *q, float *const *out, int n_group,
                       float scale, float *scratch, int64_t scratch_stride);

/* ---- waiting (cpu/threadpool.c) ---- */

/** Sleeps while *word == val (Linux futex; elsewhere yields once). May return spuriously. */
void ql__cpu_futex_wait(atomic_uint *word, unsigned val);
/** Wakes every thread sleeping on word. */
void ql__cpu_futex_wake(atomic_uint *word);
/** One spin-wait pause. */
void ql__cpu_relax(void);

/* ---- white-box hooks of the backend (tests) ---- */

/** Sets every element of every K and V page to `bits` (NaN: proves unused slots are never
 *  read). */
void ql__cpu_backend_kv_fill(ql_backend_t *be, uint16_t bits);
ql_cpu_isa_t ql__cpu_backend_isa(const ql_backend_t *be);

#endif /* QL_CPU_INTERNAL_H */
