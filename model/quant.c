/*
 * model/quant.c — ggml's tensor element types: names, block geometry, fp16/bf16 scalar
 * conversions, and the reference (scalar, obviously-correct) row dequantizers and
 * quantizers. The CPU kernels, the CUDA dequantizers and `quill mkmodel` build on these;
 * speed is not a goal here, bit-exactness with ggml's reference code is.
 *
 * Block layouts are those of model/quant.h. Blocks inside a GGUF mapping are only 2-byte
 * aligned at best, so rows are walked as bytes and fp16 fields are read with
 * ql_fp16_load() / written with memcpy.
 */
#define QL_LOG_MODULE "quant"
#include "model/quant.h"

#include <ctype.h>
#include <float.h>
#include <math.h>
#include <string.h>

_Static_assert(sizeof(ql_block_q4_0_t) == 18, "q4_0 block is 18 bytes");
_Static_assert(sizeof(ql_block_q4_1_t) == 20, "q4_1 block is 20 bytes");
_Static_assert(sizeof(ql_block_q5_0_t) == 22, "q5_0 block is 22 bytes");
_Static_assert(sizeof(ql_block_q5_1_t) == 24, "q5_1 block is 24 bytes");
_Static_assert(sizeof(ql_block_q8_0_t) == 34, "q8_0 block is 34 bytes");
_Static_assert(sizeof(ql_block_q4_k_t) == 144, "q4_K block is 144 bytes");
_Static_assert(sizeof(ql_block_q6_k_t) == 210, "q6_K block is 210 bytes");

/* ---- type table ---- */

typedef struct dtype_info_s {
    const char *name;
    int64_t block_elems;
    size_t block_bytes;
} dtype_info_t;

/* Indexed by ggml type id; ids 4, 5 (the removed q4_2/q4_3), 16..19, 21, 22 (the IQ formats
 * on lattice grids) and 29, 31.. are not known to quill and have a NULL name. */
static const dtype_info_t k_dtypes[QL_DTYPE_COUNT] = {
    [QL_DTYPE_F32] = {"f32", 1, 4},
    [QL_DTYPE_F16] = {"f16", 1, 2},
    [QL_DTYPE_Q4_0] = {"q4_0", QL_QK4_0, 2 + QL_QK4_0 / 2},
    [QL_DTYPE_Q4_1] = {"q4_1", QL_QK4_1, 4 + QL_QK4_1 / 2},
    [QL_DTYPE_Q5_0] = {"q5_0", QL_QK5_0, 2 + 4 + QL_QK5_0 / 2},
    [QL_DTYPE_Q5_1] = {"q5_1", QL_QK5_1, 4 + 4 + QL_QK5_1 / 2},
    [QL_DTYPE_Q8_0] = {"q8_0", QL_QK8_0, 2 + QL_QK8_0},
    [QL_DTYPE_Q8_1] = {"q8_1", 32, 4 + 32},                                  /* d, s, qs[32] */
    [QL_DTYPE_Q2_K] = {"q2_K", QL_QK_K, QL_QK_K / 16 + QL_QK_K / 4 + 4},     /* 84 */
    [QL_DTYPE_Q3_K] = {"q3_K", QL_QK_K, QL_QK_K / 8 + QL_QK_K / 4 + 12 + 2}, /* 110 */
    [QL_DTYPE_Q4_K] = {"q4_K", QL_QK_K, 4 + QL_K_SCALE_SIZE + QL_QK_K / 2},  /* 144 */
    [QL_DTYPE_Q5_K] = {"q5_K", QL_QK_K, 4 + QL_K_SCALE_SIZE + QL_QK_K / 8 + QL_QK_K / 2}, /* 176 */
    [QL_DTYPE_Q6_K] = {"q6_K", QL_QK_K, QL_QK_K / 2 + QL_QK_K / 4 + QL_QK_K / 16 + 2},   /* 210 */
    [QL_DTYPE_Q8_K] = {"q8_K", QL_QK_K, 4 + QL_QK_K + QL_QK_K / 16 * 2},                 /* 292 */
    [QL_DTYPE_IQ4_NL] = {"iq4_nl", 32, 2 + 16},                                     /* 18 */
    [QL_DTYPE_IQ4_XS] = {"iq4_xs", QL_QK_K, 2 + 2 + QL_QK_K / 64 + QL_QK_K / 2}, /* 136 */
    [QL_DTYPE_I8] = {"i8", 1, 1},
    [QL_DTYPE_I16] = {"i16", 1, 2},
    [QL_DTYPE_I32] = {"i32", 1, 4},
    [QL_DTYPE_I64] = {"i64", 1, 8},
    [QL_DTYPE_F64] = {"f64", 1, 8},
    [QL_DTYPE_BF16] = {"bf16", 1, 2},
};

static const dtype_info_t *dtype_info(int t) {
    if (t < 0 || t >= QL_DTYPE_COUNT || !k_dtypes[t].name) return NULL;
    return &k_dtypes[t];
}

const char *ql_dtype_name(int t) {
    const dtype_info_t *d = dtype_info(t);
    return d ? d->name : NULL;
}

int ql_dtype_parse(const char *name, ql_dtype_t *out) {
    if (!name || !out) return QL_EINVAL;
    for (int t = 0; t < QL_DTYPE_COUNT; t++) {
        const char *n = k_dtypes[t].name;
        if (!n) continue;
        size_t i = 0;
        while (n[i] && name[i] && tolower((unsigned char)n[i]) == tolower((unsigned char)name[i])) i++;
        if (n[i] == '\0' && name[i] == '\0') {
            *out = (ql_dtype_t)t;
            return 0;
        }
    }
    return QL_EINVAL;
}

int64_t ql_dtype_block_elems(int t) {
    const dtype_info_t *d = dtype_info(t);
    return d ? d->block_elems : 0;
}

size_t ql_dtype_block_bytes(int t) {
    const dtype_info_t *d = dtype_info(t);
    return d ? d->block_bytes : 0;
}

int ql_dtype_row_bytes(int t, int64_t n, size_t *out) {
    const dtype_info_t *d = dtype_info(t);
    if (!d || !out || n < 0 || n % d->block_elems != 0) return QL_EINVAL;
    /* NOTE(row-bytes-overflow): n fits int64 but n / block * bytes may not fit size_t on
     * 32-bit hosts, or at all for a hostile dimension; ql_size_mul says so. */
    uint64_t n_blocks = (uint64_t)(n / d->block_elems);
    if (n_blocks > SIZE_MAX) return QL_EOVERFLOW;
    return ql_size_mul((size_t)n_blocks, d->block_bytes, out);
}

/* ---- scalar conversions ---- */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    return u;
}

static inline float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof(f));
    return f;
}

float ql_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 (mant < 2^10) */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) return bits_f32(sign | 0x7f800000u | (mant << 13)); /* inf, NaN keeps payload */
    return bits_f32(sign | ((exp + (127 - 15)) << 23) | (mant << 13));
}

/* Shifts m right by s (1..31) rounding to nearest, ties to even. */
static inline uint32_t shift_rne(uint32_t m, unsigned s) {
    uint32_t q = m >> s;
    uint32_t rem = m & ((1u << s) - 1u);
    uint32_t half = 1u << (s - 1);
    if (rem > half || (rem == half && (q & 1u))) q++;
    return q;
}

uint16_t ql_fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) {
        /* NaN: keep the top payload bits and force the quiet bit so it cannot become inf */
        return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    }
    /* NOTE(fp16-overflow): 65520 = 65504 + half an ulp is the first value that rounds
     * (to even) up to 2^16, which fp16 cannot hold: it and everything above become inf. */
    if (x >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u);
    if (x < 0x38800000u) {
        /* below 2^-14: an fp16 subnormal, value = q * 2^-24 with q = round(f * 2^24). f32
         * value = m * 2^(e-150) so q = m >> (126 - e); 2^-25 and below round to 0. */
        if (x <= 0x33000000u) return sign;
        uint32_t e = x >> 23;
        uint32_t m = (x & 0x7fffffu) | 0x800000u;
        /* q may round up to 0x400, which is exactly the smallest normal's encoding */
        return (uint16_t)(sign | shift_rne(m, 126 - e));
    }
    uint32_t e16 = (x >> 23) - (127 - 15);
    uint32_t m = x & 0x7fffffu;
    /* mantissa round-up may carry into the exponent, which is the correct next value */
    uint32_t q = ((e16 << 10) | (m >> 13));
    uint32_t rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) q++;
    return (uint16_t)(sign | q);
}

float ql_bf16_to_fp32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t ql_fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet NaN */
    /* round to nearest even; a carry out of the mantissa correctly bumps the exponent, and
     * values past the largest bf16 become inf */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

float ql_fp16_load(const void *p) {
    uint16_t h;
    memcpy(&h, p, sizeof(h));
    return ql_fp16_to_fp32(h);
}

static inline void fp16_store(void *p, float f) {
    uint16_t h = ql_fp32_to_fp16(f);
    memcpy(p, &h, sizeof(h));
}

/* Truncates v into [0, hi]. ggml casts straight to int8; for finite inputs the value is
 * already in range and the result is the same, but a NaN or inf would make the cast
 * undefined behaviour, so it is clamped first (NaN -> 0). */
static inline int trunc_clamp(float v, int hi) {
    if (!(v > 0.0f)) return 0;
    if (v >= (float)hi) return hi;
    return (int)v;
}

/* Round half to even, as ggml's nearest_int (which is only defined for |v| < 2^22). */
static inline int nearest_int(float v) { return (int)lrintf(v); }

/* ---- dequantization ---- */

static void dequant_q4_0(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
        float d = ql_fp16_load(b);
        const uint8_t *qs = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((qs[j] & 0x0f) - 8) * d;
            y[j + 16] = (float)((qs[j] >> 4) - 8) * d;
        }
    }
}

static void dequant_q4_1(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 20, y += 32) {
        float d = ql_fp16_load(b), m = ql_fp16_load(b + 2);
        const uint8_t *qs = b + 4;
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(qs[j] & 0x0f) * d + m;
            y[j + 16] = (float)(qs[j] >> 4) * d + m;
        }
    }
}

/* q5 blocks: qh is a little-endian u32 whose bit j is the 5th bit of element j. */
static inline uint32_t load_u32le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void dequant_q5_0(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 22, y += 32) {
        float d = ql_fp16_load(b);
        uint32_t qh = load_u32le(b + 2);
        const uint8_t *qs = b + 6;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            y[j] = (float)(lo - 16) * d;
            y[j + 16] = (float)(hi - 16) * d;
        }
    }
}

static void dequant_q5_1(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 24, y += 32) {
        float d = ql_fp16_load(b), m = ql_fp16_load(b + 2);
        uint32_t qh = load_u32le(b + 4);
        const uint8_t *qs = b + 8;
        for (int j = 0; j < 16; j++) {
            int lo = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
            int hi = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            y[j] = (float)lo * d + m;
            y[j + 16] = (float)hi * d + m;
        }
    }
}

static void dequant_q8_0(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 34, y += 32) {
        float d = ql_fp16_load(b);
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < 32; j++) y[j] = (float)qs[j] * d;
    }
}

/* Q4_K packs 8 (scale, min) pairs of 6 bits into 12 bytes: pairs 0..3 use the low 6 bits
 * of bytes 0..3 (scales) and 4..7 (mins); pairs 4..7 use the nibbles of bytes 8..11 plus
 * the top 2 bits of bytes 0..3 (scales) and 4..7 (mins). */
static inline void k4_scale_min(int j, const uint8_t *q, uint8_t *sc, uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

static void dequant_q4_k(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 144) {
        float d = ql_fp16_load(b), dmin = ql_fp16_load(b + 2);
        const uint8_t *scales = b + 4;
        const uint8_t *q = b + 4 + QL_K_SCALE_SIZE;
        /* each 64 elements: 32 low nibbles (sub-block 2k), then 32 high nibbles (2k+1) */
        for (int k = 0; k < QL_QK_K / 64; k++, q += 32) {
            uint8_t sc, m;
            k4_scale_min(2 * k, scales, &sc, &m);
            float d1 = d * sc, m1 = dmin * m;
            k4_scale_min(2 * k + 1, scales, &sc, &m);
            float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; l++) *y++ = d1 * (float)(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; l++) *y++ = d2 * (float)(q[l] >> 4) - m2;
        }
    }
}

static void dequant_q6_k(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 210) {
        const uint8_t *ql = b;
        const uint8_t *qh = b + QL_QK_K / 2;
        const int8_t *sc = (const int8_t *)(b + QL_QK_K / 2 + QL_QK_K / 4);
        float d = ql_fp16_load(b + 208);
        /* each 128 elements: 4 runs of 32; run r takes a nibble of ql[0..63] and 2 bits
         * of qh[0..31]; the scale changes every 16 elements */
        for (int n = 0; n < QL_QK_K; n += 128, ql += 64, qh += 32, sc += 8, y += 128) {
            for (int l = 0; l < 32; l++) {
                int is = l / 16;
                int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
                int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
                int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * (float)sc[is] * (float)q1;
                y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                y[l + 96] = d * (float)sc[is + 6] * (float)q4;
            }
        }
    }
}

/* Q2_K (84 bytes): 16 bytes of 4-bit (scale, min) pairs, one per 16 elements (low nibble
 * scale, high nibble min), 64 bytes of 2-bit quants, then fp16 d and dmin. Each 128 elements
 * read 32 quant bytes four times, at shifts 0, 2, 4, 6; each shift covers two 16-element
 * sub-blocks (bytes 0..15, then 16..31). */
static void dequant_q2_k(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 84) {
        const uint8_t *sc = b, *q = b + 16;
        const float d = ql_fp16_load(b + 80), dmin = ql_fp16_load(b + 82);
        for (int n = 0; n < QL_QK_K; n += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int half = 0; half < 2; half++, sc++) {
                    const float dl = d * (float)(*sc & 0x0f), ml = dmin * (float)(*sc >> 4);
                    for (int l = 0; l < 16; l++)
                        *y++ = dl * (float)((q[16 * half + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

/* Q3_K (110 bytes): 32 bytes of high bits (hmask), 64 bytes of low 2-bit quants, 12 bytes
 * of sixteen 6-bit scales, fp16 d. Scale j: its low 4 bits are the low (j < 8) or high
 * (j >= 8) nibble of byte j mod 8, its top 2 bits are bits 2·(j / 4) .. +1 of byte
 * 8 + j mod 4; the value is that minus 32. A quant is its 2 low bits, minus 4 when its
 * hmask bit is clear. The walk over 128-element halves is Q2_K's; the hmask bit moves one
 * place per shift. */
static void dequant_q3_k(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 110) {
        const uint8_t *hm = b, *q = b + 32, *s = b + 96;
        const float d = ql_fp16_load(b + 108);
        int8_t scales[16];
        for (int j = 0; j < 16; j++) {
            const int lo = j < 8 ? (s[j] & 0x0f) : (s[j - 8] >> 4);
            const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            scales[j] = (int8_t)((lo | (hi << 4)) - 32);
        }
        int is = 0;
        uint8_t m = 1;
        for (int n = 0; n < QL_QK_K; n += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m = (uint8_t)(m << 1)) {
                for (int half = 0; half < 2; half++) {
                    const float dl = d * (float)scales[is++];
                    for (int l = 0; l < 16; l++) {
                        const int k = 16 * half + l;
                        const int v = ((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4);
                        *y++ = dl * (float)v;
                    }
                }
            }
        }
    }
}

/* Q5_K (176 bytes): fp16 d and dmin, Q4_K's 12 bytes of 6-bit (scale, min) pairs, 32 bytes
 * of high bits, 128 bytes of low nibbles. Each 64 elements: 32 low nibbles (sub-block 2k,
 * high bit 2k of qh[l]), then 32 high nibbles (sub-block 2k + 1, high bit 2k + 1). */
static void dequant_q5_k(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 176) {
        const float d = ql_fp16_load(b), dmin = ql_fp16_load(b + 2);
        const uint8_t *scales = b + 4, *qh = b + 4 + QL_K_SCALE_SIZE;
        const uint8_t *q = qh + QL_QK_K / 8;
        for (int k = 0; k < QL_QK_K / 64; k++, q += 32) {
            uint8_t sc, m;
            k4_scale_min(2 * k, scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            k4_scale_min(2 * k + 1, scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            const uint8_t u1 = (uint8_t)(1u << (2 * k)), u2 = (uint8_t)(2u << (2 * k));
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (float)((q[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (float)((q[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
        }
    }
}

/* NOTE(iq4-grid): the 16 values a 4-bit IQ4 quant indexes, part of the format's definition
 * (ggml's kvalues_iq4nl): non-uniform, denser near zero, where trained weights cluster. */
static const int8_t k_iq4_grid[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                      1,    13,   25,  38,  53,  69,  89,  113};

/* IQ4_NL (18 bytes): fp16 d, then 16 bytes whose low nibbles are elements 0..15 and high
 * nibbles 16..31, each an index into the grid. */
static void dequant_iq4_nl(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 18, y += 32) {
        const float d = ql_fp16_load(b);
        const uint8_t *q = b + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)k_iq4_grid[q[j] & 0x0f];
            y[j + 16] = d * (float)k_iq4_grid[q[j] >> 4];
        }
    }
}

/* IQ4_XS (136 bytes): fp16 d, a 16-bit word with the top 2 bits of eight 6-bit sub-block
 * scales (bits 2·ib..), 4 bytes with their low 4 bits (nibble ib % 2 of byte ib / 2), then per
 * 32-element sub-block IQ4_NL's 16 nibble bytes. Scale ib is d · (ls − 32). */
static void dequant_iq4_xs(const uint8_t *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, b += 136) {
        const float d = ql_fp16_load(b);
        const unsigned sh = (unsigned)b[2] | ((unsigned)b[3] << 8);
        const uint8_t *sl = b + 4, *q = b + 8;
        for (int ib = 0; ib < QL_QK_K / 32; ib++, q += 16, y += 32) {
            const int ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0x0f) | (((sh >> (2 * ib)) & 3) << 4);
            const float dl = d * (float)(ls - 32);
            for (int j = 0; j < 16; j++) {
                y[j] = dl * (float)k_iq4_grid[q[j] & 0x0f];
                y[j + 16] = dl * (float)k_iq4_grid[q[j] >> 4];
            }
        }
    }
}

int ql_dequantize_row(int t, const void *src, float *dst, int64_t n) {
    const dtype_info_t *info = dtype_info(t);
    if (!info || !src || !dst || n < 0 || n % info->block_elems != 0) return QL_EINVAL;
    const uint8_t *b = src;
    int64_t nb = n / info->block_elems;
    switch (t) {
    case QL_DTYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return 0;
    case QL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = ql_fp16_load(b + 2 * i);
        return 0;
    case QL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, b + 2 * i, sizeof(h));
            dst[i] = ql_bf16_to_fp32(h);
        }
        return 0;
    case QL_DTYPE_Q4_0: dequant_q4_0(b, dst, nb); return 0;
    case QL_DTYPE_Q4_1: dequant_q4_1(b, dst, nb); return 0;
    case QL_DTYPE_Q5_0: dequant_q5_0(b, dst, nb); return 0;
    case QL_DTYPE_Q5_1: dequant_q5_1(b, dst, nb); return 0;
    case QL_DTYPE_Q8_0: dequant_q8_0(b, dst, nb); return 0;
    case QL_DTYPE_Q2_K: dequant_q2_k(b, dst, nb); return 0;
    case QL_DTYPE_Q3_K: dequant_q3_k(b, dst, nb); return 0;
    case QL_DTYPE_Q4_K: dequant_q4_k(b, dst, nb); return 0;
    case QL_DTYPE_Q5_K: dequant_q5_k(b, dst, nb); return 0;
    case QL_DTYPE_Q6_K: dequant_q6_k(b, dst, nb); return 0;
    case QL_DTYPE_IQ4_NL: dequant_iq4_nl(b, dst, nb); return 0;
    case QL_DTYPE_IQ4_XS: dequant_iq4_xs(b, dst, nb); return 0;
    default: return QL_EUNSUPPORTED;
    }
}

/* ---- quantization (ggml's reference formulas) ---- */

/* NOTE(quant-formulas): the inverse scale is computed from the f32 scale, before it is
 * rounded to fp16 for storage, exactly as ggml's *_ref quantizers do, so quill writes the
 * same bytes as llama.cpp's quantize for the same floats. The rounding of the quant is
 * "add 0.5 (plus the zero point) and truncate", which for the non-negative argument is
 * round-half-up. */

static void quant_q4_0(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32, b += 18) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        /* the largest magnitude maps to -8, the one end of [-8, 7] that is reachable */
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        fp16_store(b, d);
        for (int j = 0; j < 16; j++) {
            int q0 = trunc_clamp(x[j] * id + 8.5f, 15);
            int q1 = trunc_clamp(x[j + 16] * id + 8.5f, 15);
            b[2 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quant_q4_1(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32, b += 20) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        float d = (max - min) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        fp16_store(b, d);
        fp16_store(b + 2, min);
        for (int j = 0; j < 16; j++) {
            int q0 = trunc_clamp((x[j] - min) * id + 0.5f, 15);
            int q1 = trunc_clamp((x[j + 16] - min) * id + 0.5f, 15);
            b[4 + j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static inline void store_u32le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void quant_q5_0(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32, b += 22) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -16.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        fp16_store(b, d);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = trunc_clamp(x[j] * id + 16.5f, 31);
            int q1 = trunc_clamp(x[j + 16] * id + 16.5f, 31);
            b[6 + j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        store_u32le(b + 2, qh);
    }
}

static void quant_q5_1(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32, b += 24) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < 32; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        float d = (max - min) / 31.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        fp16_store(b, d);
        fp16_store(b + 2, min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            int q0 = trunc_clamp((x[j] - min) * id + 0.5f, 31);
            int q1 = trunc_clamp((x[j + 16] - min) * id + 0.5f, 31);
            b[8 + j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            qh |= (uint32_t)((q0 >> 4) & 1) << j;
            qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        store_u32le(b + 4, qh);
    }
}

static void quant_q8_0(const float *x, uint8_t *b, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, x += 32, b += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = QL_MAX(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        fp16_store(b, d);
        for (int j = 0; j < 32; j++) {
            /* |x * id| <= 127 for finite input; roundf rounds half away from zero (ggml) */
            float v = roundf(x[j] * id);
            int q = v != v ? 0 : (int)QL_MAX(-127.0f, QL_MIN(127.0f, v));
            b[2 + j] = (uint8_t)(int8_t)q;
        }
    }
}

/* ---- K-quants ---- */

#define GROUP_MAX_EPS 1e-15f

/* Fits x[0..n) ≈ scale * L - min with L in [0, nmax] by weighted least squares: a first
 * guess from the range, then nstep+1 nudged inverse scales, keeping the best. Returns the
 * scale and stores the (non-negative) min offset in *the_min. ggml's make_qkx2_quants with
 * squared error. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L,
                           float *the_min, uint8_t *Laux, float rmin, float rdelta, int nstep) {
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = w[0] * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.0f;
    }
    float iscale = (float)nmax / (max - min);
    float scale = 1.0f / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = QL_MAX(0, QL_MIN(nmax, nearest_int(iscale * (x[i] - min))));
        L[i] = (uint8_t)l;
        float diff = scale * (float)l + min - x[i];
        best_error += w[i] * diff * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = QL_MAX(0, QL_MIN(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * (float)l;
            sum_l2 += w[i] * (float)l * (float)l;
            sum_xl += w[i] * (float)l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D <= 0) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float cur_error = 0;
        for (int i = 0; i < n; i++) {
            float diff = this_scale * (float)Laux[i] + this_min - x[i];
            cur_error += w[i] * diff * diff;
        }
        if (cur_error < best_error) {
            memcpy(L, Laux, (size_t)n);
            best_error = cur_error;
            scale = this_scale;
            min = this_min;
        }
    }
    *the_min = -min;
    return scale;
}

static void quant_q4_k(const float *x, uint8_t *b, int64_t nb) {
    uint8_t L[QL_QK_K], Laux[32];
    float weights[32], mins[QL_QK_K / 32], scales[QL_QK_K / 32];
    for (int64_t i = 0; i < nb; i++, x += QL_QK_K, b += 144) {
        float max_scale = 0, max_min = 0;
        for (int j = 0; j < QL_QK_K / 32; j++) {
            /* weight each element by the sub-block's rms plus its own magnitude */
            float sum_x2 = 0;
            for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
            float av_x = sqrtf(sum_x2 / 32);
            for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
            scales[j] = fit_scale_min(32, 15, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20);
            if (scales[j] > max_scale) max_scale = scales[j];
            if (mins[j] > max_min) max_min = mins[j];
        }
        float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
        float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
        uint8_t *sc = b + 4;
        memset(sc, 0, QL_K_SCALE_SIZE);
        for (int j = 0; j < QL_QK_K / 32; j++) {
            int ls = QL_MIN(63, nearest_int(inv_scale * scales[j]));
            int lm = QL_MIN(63, nearest_int(inv_min * mins[j]));
            if (j < 4) {
                sc[j] = (uint8_t)ls;
                sc[j + 4] = (uint8_t)lm;
            } else {
                sc[j + 4] = (uint8_t)((ls & 0x0f) | ((lm & 0x0f) << 4));
                sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
                sc[j] |= (uint8_t)((lm >> 4) << 6);
            }
        }
        fp16_store(b, max_scale / 63.0f);
        fp16_store(b + 2, max_min / 63.0f);
        /* re-quantize against the scales as stored (6-bit, fp16 super-scales) */
        float d_all = ql_fp16_load(b), dmin_all = ql_fp16_load(b + 2);
        for (int j = 0; j < QL_QK_K / 32; j++) {
            uint8_t s, m;
            k4_scale_min(j, sc, &s, &m);
            float d = d_all * s;
            if (d == 0.0f) continue;
            float dm = dmin_all * m;
            for (int l = 0; l < 32; l++)
                L[32 * j + l] = (uint8_t)QL_MAX(0, QL_MIN(15, nearest_int((x[32 * j + l] + dm) / d)));
        }
        uint8_t *q = b + 4 + QL_K_SCALE_SIZE;
        for (int j = 0; j < QL_QK_K; j += 64, q += 32)
            for (int l = 0; l < 32; l++) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
    }
}

/* Fits x[0..n) ≈ scale * (L - nmax) with L - nmax in [-nmax, nmax-1], weighting each
 * element by x^2, trying 18 nudged inverse scales around -nmax/max. ggml's
 * make_qx_quants with rmse_type 1 and no importance weights. */
static float fit_scale_sym(int n, int nmax, const float *x, uint8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.0f;
    }
    float iscale = -(float)nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = QL_MAX(-nmax, QL_MIN(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (uint8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * (float)l;
        suml2 += w * (float)l * (float)l;
    }
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -((float)nmax + 0.1f * (float)is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = QL_MAX(-nmax, QL_MIN(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * (float)l;
            suml2 += w * (float)l * (float)l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (uint8_t)(nmax + QL_MAX(-nmax, QL_MIN(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

static void quant_q6_k(const float *x, uint8_t *b, int64_t nb) {
    uint8_t L[QL_QK_K];
    float scales[QL_QK_K / 16];
    for (int64_t i = 0; i < nb; i++, x += QL_QK_K, b += 210) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < QL_QK_K / 16; ib++) {
            scales[ib] = fit_scale_sym(16, 32, x + 16 * ib, L + 16 * ib);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        uint8_t *ql = b, *qh = b + QL_QK_K / 2;
        int8_t *sc = (int8_t *)(b + QL_QK_K / 2 + QL_QK_K / 4);
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(b, 0, 210); /* all zero, d = +0 */
            continue;
        }
        float iscale = -128.0f / max_scale;
        fp16_store(b + 208, 1.0f / iscale);
        for (int ib = 0; ib < QL_QK_K / 16; ib++) sc[ib] = (int8_t)QL_MIN(127, nearest_int(iscale * scales[ib]));
        float d_all = ql_fp16_load(b + 208);
        for (int j = 0; j < QL_QK_K / 16; j++) {
            float d = d_all * (float)sc[j];
            if (d == 0.0f) continue;
            for (int l = 0; l < 16; l++)
                L[16 * j + l] = (uint8_t)(QL_MAX(-32, QL_MIN(31, nearest_int(x[16 * j + l] / d))) + 32);
        }
        for (int j = 0; j < QL_QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const uint8_t *Lj = L + j + l;
                ql[l] = (uint8_t)((Lj[0] & 0x0f) | ((Lj[64] & 0x0f) << 4));
                ql[l + 32] = (uint8_t)((Lj[32] & 0x0f) | ((Lj[96] & 0x0f) << 4));
                qh[l] = (uint8_t)((Lj[0] >> 4) | ((Lj[32] >> 4) << 2) | ((Lj[64] >> 4) << 4) | ((Lj[96] >> 4) << 6));
            }
        }
    }
}

int ql_quantize_row(int t, const float *src, void *dst, int64_t n) {
    const dtype_info_t *info = dtype_info(t);
    if (!info || !src || !dst || n < 0 || n % info->block_elems != 0) return QL_EINVAL;
    uint8_t *b = dst;
    int64_t nb = n / info->block_elems;
    switch (t) {
    case QL_DTYPE_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return 0;
    case QL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) fp16_store(b + 2 * i, src[i]);
        return 0;
    case QL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = ql_fp32_to_bf16(src[i]);
            memcpy(b + 2 * i, &h, sizeof(h));
        }
        return 0;
    case QL_DTYPE_Q4_0: quant_q4_0(src, b, nb); return 0;
    case QL_DTYPE_Q4_1: quant_q4_1(src, b, nb); return 0;
    case QL_DTYPE_Q5_0: quant_q5_0(src, b, nb); return 0;
    case QL_DTYPE_Q5_1: quant_q5_1(src, b, nb); return 0;
    case QL_DTYPE_Q8_0: quant_q8_0(src, b, nb); return 0;
    case QL_DTYPE_Q4_K: quant_q4_k(src, b, nb); return 0;
    case QL_DTYPE_Q6_K: quant_q6_k(src, b, nb); return 0;
    default: return QL_EUNSUPPORTED;
    }
}
