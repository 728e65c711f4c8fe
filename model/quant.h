/*
 * model/quant.h — tensor element types as GGUF/ggml number them, their block layouts, and
 * the reference (scalar) conversions to and from f32. The CPU backend's fast kernels and the
 * CUDA dequantizers are tested against these.
 */
#ifndef QL_MODEL_QUANT_H
#define QL_MODEL_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ggml's type ids, as stored in GGUF tensor infos (on the wire: never renumber). */
typedef enum ql_dtype_e {
    QL_DTYPE_F32 = 0,
    QL_DTYPE_F16 = 1,
    QL_DTYPE_Q4_0 = 2,
    QL_DTYPE_Q4_1 = 3,
    QL_DTYPE_Q5_0 = 6,
    QL_DTYPE_Q5_1 = 7,
    QL_DTYPE_Q8_0 = 8,
    QL_DTYPE_Q8_1 = 9,
    QL_DTYPE_Q2_K = 10,
    QL_DTYPE_Q3_K = 11,
    QL_DTYPE_Q4_K = 12,
    QL_DTYPE_Q5_K = 13,
    QL_DTYPE_Q6_K = 14,
    QL_DTYPE_Q8_K = 15,
    QL_DTYPE_IQ4_NL = 20, /* 32 non-linear 4-bit values (a fixed 16-entry grid) and an fp16 d */
    QL_DTYPE_IQ4_XS = 23, /* IQ4_NL's grid in 256-element blocks with 6-bit sub-block scales */
    QL_DTYPE_I8 = 24,
    QL_DTYPE_I16 = 25,
    QL_DTYPE_I32 = 26,
    QL_DTYPE_I64 = 27,
    QL_DTYPE_F64 = 28,
    QL_DTYPE_BF16 = 30,
    QL_DTYPE_COUNT = 40, /* ids >= this are unknown */
} ql_dtype_t;

/* ---- block layouts (ggml's, byte for byte) ---- */

/* NOTE(unaligned-scales): fp16 scales sit at 2-byte offsets inside packed blocks in the
 * mmapped file; code reads them through ql_fp16_load() (memcpy), never by casting. */
#define QL_QK4_0 32
#define QL_QK4_1 32
#define QL_QK5_0 32
#define QL_QK5_1 32
#define QL_QK8_0 32
#define QL_QK_K 256
#define QL_K_SCALE_SIZE 12

typedef struct ql_block_q4_0_s {
    uint16_t d;                /* fp16 scale */
    uint8_t qs[QL_QK4_0 / 2];  /* nibbles: low = elements 0..15, high = 16..31; x = (q - 8) * d */
} ql_block_q4_0_t;
typedef struct ql_block_q4_1_s {
    uint16_t d, m;             /* fp16 scale and min: x = q * d + m */
    uint8_t qs[QL_QK4_1 / 2];
} ql_block_q4_1_t;
typedef struct ql_block_q5_0_s {
    uint16_t d;
    uint8_t qh[4];             /* 5th bit of each of the 32 quants */
    uint8_t qs[QL_QK5_0 / 2];  /* x = (q - 16) * d */
} ql_block_q5_0_t;
typedef struct ql_block_q5_1_s {
    uint16_t d, m;
    uint8_t qh[4];
    uint8_t qs[QL_QK5_1 / 2];  /* x = q * d + m */
} ql_block_q5_1_t;
typedef struct ql_block_q8_0_s {
    uint16_t d;
    int8_t qs[QL_QK8_0];       /* x = q * d */
} ql_block_q8_0_t;
typedef struct ql_block_q4_k_s {
    uint16_t d, dmin;                 /* super-block scale for scales and for mins */
    uint8_t scales[QL_K_SCALE_SIZE];  /* 8 x (6-bit scale, 6-bit min) */
    uint8_t qs[QL_QK_K / 2];
} ql_block_q4_k_t;
typedef struct ql_block_q6_k_s {
    uint8_t ql[QL_QK_K / 2];   /* low 4 bits */
    uint8_t qh[QL_QK_K / 4];   /* high 2 bits */
    int8_t scales[QL_QK_K / 16];
    uint16_t d;                /* fp16 super-block scale */
} ql_block_q6_k_t;

/* ---- type facts ---- */

/** Name as llama.cpp prints it ("f32", "q4_1", "bf16"), or NULL for an unknown id. */
QL_API const char *ql_dtype_name(int t);
/** Parses a name (case-insensitive). @return 0 or QL_EINVAL. */
QL_API int ql_dtype_parse(const char *name, ql_dtype_t *out);
/** Elements per block (1 for plain types); 0 for an unknown id. */
QL_API int64_t ql_dtype_block_elems(int t);
/** Bytes per block; 0 for an unknown id. */
QL_API size_t ql_dtype_block_bytes(int t);
/** Bytes of a row of `n` elements: QL_EINVAL if n is not a multiple of the block size,
 *  QL_EOVERFLOW if it does not fit. */
QL_API int ql_dtype_row_bytes(int t, int64_t n, size_t *out);

/* ---- scalar conversions ---- */

QL_API float ql_fp16_to_fp32(uint16_t h);
QL_API uint16_t ql_fp32_to_fp16(float f);   /* round to nearest even */
QL_API float ql_bf16_to_fp32(uint16_t h);
QL_API uint16_t ql_fp32_to_bf16(float f);   /* round to nearest even, NaN kept NaN */
/** Reads an fp16 at any address. */
QL_API float ql_fp16_load(const void *p);

/* ---- rows ---- */

/** Reference dequantization of `n` elements (a multiple of the block size) of type `t`:
 *  F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS.
 *  @return 0, QL_EINVAL (unknown id, NULL pointer or bad n) or QL_EUNSUPPORTED (a known
 *  type without a reference). Thread: any. */
QL_API int ql_dequantize_row(int t, const void *src, float *dst, int64_t n);
/** Reference quantization with ggml's formulas (the tests check the bytes against ggml's
 *  quantize_row_*_ref and gguf-py), for writing models and for tests: F32, F16, BF16, Q4_0,
 *  Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q6_K. Non-finite inputs give unspecified (but defined) quants.
 *  @return 0, QL_EINVAL or QL_EUNSUPPORTED. Thread: any. */
QL_API int ql_quantize_row(int t, const float *src, void *dst, int64_t n);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_QUANT_H */
