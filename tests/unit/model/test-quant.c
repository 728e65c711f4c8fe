/*
 * tests/unit/model/test-quant.c — model/quant.h: type names and block geometry, row sizes
 * and their errors, fp16/bf16 conversions at every edge (subnormals, ties, overflow, NaN),
 * hand-built blocks of every dequantized type with hand-computed values, quantize ->
 * dequantize error bounds, and a cross-check against the Python `gguf` package's
 * dequantization of tensors of the real default model (tests/fixtures/smollm2/dequant.txt,
 * written by tools/reference/dump-dequant.py).
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test-model.h"

#include "model/gguf.h"
#include "model/quant.h"

/* ---- small helpers ---- */

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* A deterministic, roughly normal (sum of 4 uniforms) test signal. */
static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_normalish(uint64_t *s) {
    float acc = 0;
    for (int i = 0; i < 4; i++) acc += (float)(rng_next(s) >> 40) / (float)(1 << 24) - 0.5f;
    return acc * 1.7320508f; /* sum of 4 U(-0.5,0.5) has variance 1/3 */
}

/* ---- names and geometry ---- */

static void test_names_and_sizes(void **state) {
    (void)state;
    static const struct {
        int t;
        const char *name;
        int64_t elems;
        size_t bytes;
    } k[] = {
        {QL_DTYPE_F32, "f32", 1, 4},       {QL_DTYPE_F16, "f16", 1, 2},
        {QL_DTYPE_Q4_0, "q4_0", 32, 18},   {QL_DTYPE_Q4_1, "q4_1", 32, 20},
        {QL_DTYPE_Q5_0, "q5_0", 32, 22},   {QL_DTYPE_Q5_1, "q5_1", 32, 24},
        {QL_DTYPE_Q8_0, "q8_0", 32, 34},   {QL_DTYPE_Q8_1, "q8_1", 32, 36},
        {QL_DTYPE_Q2_K, "q2_K", 256, 84},  {QL_DTYPE_Q3_K, "q3_K", 256, 110},
        {QL_DTYPE_Q4_K, "q4_K", 256, 144}, {QL_DTYPE_Q5_K, "q5_K", 256, 176},
        {QL_DTYPE_Q6_K, "q6_K", 256, 210}, {QL_DTYPE_Q8_K, "q8_K", 256, 292},
        {QL_DTYPE_I8, "i8", 1, 1},         {QL_DTYPE_I16, "i16", 1, 2},
        {QL_DTYPE_I32, "i32", 1, 4},       {QL_DTYPE_I64, "i64", 1, 8},
        {QL_DTYPE_F64, "f64", 1, 8},       {QL_DTYPE_BF16, "bf16", 1, 2},
        {QL_DTYPE_IQ4_NL, "iq4_nl", 32, 18}, {QL_DTYPE_IQ4_XS, "iq4_xs", 256, 136},
    };
    int known = 0;
    for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++) {
        assert_string_equal(ql_dtype_name(k[i].t), k[i].name);
        assert_int_equal(ql_dtype_block_elems(k[i].t), k[i].elems);
        assert_int_equal(ql_dtype_block_bytes(k[i].t), k[i].bytes);
        ql_dtype_t t = QL_DTYPE_COUNT;
        assert_int_equal(ql_dtype_parse(k[i].name, &t), 0);
        assert_int_equal(t, k[i].t);
    }
    /* every other id below QL_DTYPE_COUNT is unknown: 4, 5, 16..19, 21, 22, 29, 31..39 */
    for (int t = -1; t <= QL_DTYPE_COUNT; t++) {
        if (ql_dtype_name(t)) {
            known++;
            continue;
        }
        assert_int_equal(ql_dtype_block_elems(t), 0);
        assert_int_equal(ql_dtype_block_bytes(t), 0);
    }
    assert_int_equal(known, (int)(sizeof(k) / sizeof(k[0])));
    assert_null(ql_dtype_name(4));
    assert_null(ql_dtype_name(QL_DTYPE_COUNT));

    ql_dtype_t t = QL_DTYPE_F32;
    assert_int_equal(ql_dtype_parse("Q4_K", &t), 0); /* case-insensitive */
    assert_int_equal(t, QL_DTYPE_Q4_K);
    assert_int_equal(ql_dtype_parse("BF16", &t), 0);
    assert_int_equal(t, QL_DTYPE_BF16);
    assert_int_equal(ql_dtype_parse("q4_2", &t), QL_EINVAL);
    assert_int_equal(ql_dtype_parse("q4", &t), QL_EINVAL);  /* prefix of q4_0 */
    assert_int_equal(ql_dtype_parse("f162", &t), QL_EINVAL); /* f16 is a prefix */
    assert_int_equal(ql_dtype_parse("", &t), QL_EINVAL);
    assert_int_equal(ql_dtype_parse(NULL, &t), QL_EINVAL);
    assert_int_equal(t, QL_DTYPE_BF16); /* untouched on error */
}

static void test_row_bytes(void **state) {
    (void)state;
    size_t n = 0;
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q4_0, 64, &n), 0);
    assert_int_equal(n, 36);
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q4_K, 2048, &n), 0);
    assert_int_equal(n, 8 * 144);
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q6_K, 256, &n), 0);
    assert_int_equal(n, 210);
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_F16, 3, &n), 0);
    assert_int_equal(n, 6);
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q8_0, 0, &n), 0);
    assert_int_equal(n, 0);
    n = 7;
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q4_0, 33, &n), QL_EINVAL); /* not a multiple */
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q4_K, 32, &n), QL_EINVAL);
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_F32, -4, &n), QL_EINVAL);
    assert_int_equal(ql_dtype_row_bytes(4, 32, &n), QL_EINVAL); /* unknown id */
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_F32, 4, NULL), QL_EINVAL);
    assert_int_equal(n, 7);
    /* INT64_MAX * 4 and * 8 do not fit 64 bits */
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_F32, INT64_MAX, &n), QL_EOVERFLOW);
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_F64, INT64_MAX / 2, &n), QL_EOVERFLOW);
    /* the largest q8_0 row: (INT64_MAX rounded down to 32) / 32 * 34 = 9.8e18 still fits */
    assert_int_equal(ql_dtype_row_bytes(QL_DTYPE_Q8_0, INT64_MAX - 31, &n), 0);
    assert_int_equal(n, (size_t)((INT64_MAX - 31) / 32) * 34);
}

/* ---- fp16 ---- */

static void test_fp16_to_fp32(void **state) {
    (void)state;
    assert_true(ql_fp16_to_fp32(0x0000) == 0.0f && !signbit(ql_fp16_to_fp32(0x0000)));
    assert_true(ql_fp16_to_fp32(0x8000) == 0.0f && signbit(ql_fp16_to_fp32(0x8000)));
    assert_true(ql_fp16_to_fp32(0x3c00) == 1.0f);
    assert_true(ql_fp16_to_fp32(0xc000) == -2.0f);
    assert_true(ql_fp16_to_fp32(0x3555) == 0x1.554p-2f);  /* 0.333252 */
    assert_true(ql_fp16_to_fp32(0x7bff) == 65504.0f);     /* largest finite */
    assert_true(ql_fp16_to_fp32(0x0400) == 0x1p-14f);     /* smallest normal */
    assert_true(ql_fp16_to_fp32(0x03ff) == 0x3ffp-24f);   /* largest subnormal */
    assert_true(ql_fp16_to_fp32(0x0001) == 0x1p-24f);     /* smallest subnormal */
    assert_true(ql_fp16_to_fp32(0x8001) == -0x1p-24f);
    assert_true(isinf(ql_fp16_to_fp32(0x7c00)) && ql_fp16_to_fp32(0x7c00) > 0);
    assert_true(isinf(ql_fp16_to_fp32(0xfc00)) && ql_fp16_to_fp32(0xfc00) < 0);
    assert_true(isnan(ql_fp16_to_fp32(0x7e00)));
    assert_true(isnan(ql_fp16_to_fp32(0x7c01))); /* signalling NaN stays NaN, not inf */
    assert_true(isnan(ql_fp16_to_fp32(0xfe00)));
    uint8_t unaligned[3] = {0xff, 0x00, 0x3c}; /* 1.0 at an odd address */
    assert_true(ql_fp16_load(unaligned + 1) == 1.0f);
}

static void test_fp32_to_fp16(void **state) {
    (void)state;
    assert_int_equal(ql_fp32_to_fp16(0.0f), 0x0000);
    assert_int_equal(ql_fp32_to_fp16(-0.0f), 0x8000);
    assert_int_equal(ql_fp32_to_fp16(1.0f), 0x3c00);
    assert_int_equal(ql_fp32_to_fp16(-2.0f), 0xc000);
    assert_int_equal(ql_fp32_to_fp16(65504.0f), 0x7bff);
    /* ties to even: 1 + 2^-11 is halfway between 0x3c00 and 0x3c01 -> 0x3c00 (even);
     * 1 + 3*2^-11 is halfway between 0x3c01 and 0x3c02 -> 0x3c02 */
    assert_int_equal(ql_fp32_to_fp16(1.0f + 0x1p-11f), 0x3c00);
    assert_int_equal(ql_fp32_to_fp16(1.0f + 3 * 0x1p-11f), 0x3c02);
    assert_int_equal(ql_fp32_to_fp16(nextafterf(1.0f + 0x1p-11f, 2.0f)), 0x3c01); /* just above */
    assert_int_equal(ql_fp32_to_fp16(nextafterf(1.0f + 3 * 0x1p-11f, 0.0f)), 0x3c01); /* just below */
    /* overflow: 65520 = 65504 + half an ulp ties to even = 2^16 -> inf; just below stays finite */
    assert_int_equal(ql_fp32_to_fp16(65520.0f), 0x7c00);
    assert_int_equal(ql_fp32_to_fp16(nextafterf(65520.0f, 0.0f)), 0x7bff);
    assert_int_equal(ql_fp32_to_fp16(-1e10f), 0xfc00);
    assert_int_equal(ql_fp32_to_fp16(INFINITY), 0x7c00);
    assert_int_equal(ql_fp32_to_fp16(-INFINITY), 0xfc00);
    uint16_t h = ql_fp32_to_fp16(NAN);
    assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    h = ql_fp32_to_fp16(from_bits(0x7f800001u)); /* NaN whose payload is all in the low bits */
    assert_true((h & 0x7c00) == 0x7c00 && (h & 0x3ff) != 0);
    /* subnormals: 2^-24 is 0x0001; 2^-25 is a tie between 0 and 0x0001 -> 0; a hair more
     * rounds up; 3 * 2^-25 = 1.5 * 2^-24 ties to 2; 1023.5 * 2^-24 ties to 1024 = 0x0400 */
    assert_int_equal(ql_fp32_to_fp16(0x1p-24f), 0x0001);
    assert_int_equal(ql_fp32_to_fp16(0x1p-25f), 0x0000);
    assert_int_equal(ql_fp32_to_fp16(-0x1p-25f), 0x8000);
    assert_int_equal(ql_fp32_to_fp16(nextafterf(0x1p-25f, 1.0f)), 0x0001);
    assert_int_equal(ql_fp32_to_fp16(3 * 0x1p-25f), 0x0002);
    assert_int_equal(ql_fp32_to_fp16(1023.5f * 0x1p-24f), 0x0400);
    assert_int_equal(ql_fp32_to_fp16(1022.5f * 0x1p-24f), 0x03fe);
    assert_int_equal(ql_fp32_to_fp16(1e-30f), 0x0000);
    assert_int_equal(ql_fp32_to_fp16(from_bits(1)), 0x0000); /* f32 subnormal */
    /* every fp16 survives fp16 -> fp32 -> fp16 exactly (NaNs stay NaN) */
    for (uint32_t i = 0; i < 65536; i++) {
        float f = ql_fp16_to_fp32((uint16_t)i);
        uint16_t back = ql_fp32_to_fp16(f);
        if (isnan(f))
            assert_true((back & 0x7c00) == 0x7c00 && (back & 0x3ff) != 0 && (back & 0x8000) == (i & 0x8000));
        else
            assert_int_equal(back, i);
    }
    /* every midpoint between neighbouring positive finite fp16 values ties to the even one */
    for (uint32_t i = 0; i < 0x7bff; i++) {
        double lo = ql_fp16_to_fp32((uint16_t)i), hi = ql_fp16_to_fp32((uint16_t)(i + 1));
        float mid = (float)((lo + hi) / 2); /* exact: fp16 midpoints fit in f32 */
        assert_true((double)mid == (lo + hi) / 2);
        assert_int_equal(ql_fp32_to_fp16(mid), (i & 1) ? i + 1 : i);
    }
}

/* ---- bf16 ---- */

static void test_bf16(void **state) {
    (void)state;
    assert_int_equal(ql_fp32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(ql_fp32_to_bf16(-0.0f), 0x8000);
    assert_true(ql_bf16_to_fp32(0x3f80) == 1.0f);
    assert_true(ql_bf16_to_fp32(0xc040) == -3.0f);
    /* 1 + 2^-8 is halfway between 0x3f80 and 0x3f81 -> 0x3f80; 1 + 3*2^-8 -> 0x3f82 */
    assert_int_equal(ql_fp32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    assert_int_equal(ql_fp32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
    assert_int_equal(ql_fp32_to_bf16(nextafterf(1.0f + 0x1p-8f, 2.0f)), 0x3f81);
    assert_int_equal(ql_fp32_to_bf16(INFINITY), 0x7f80);
    assert_int_equal(ql_fp32_to_bf16(-INFINITY), 0xff80);
    assert_int_equal(ql_fp32_to_bf16(FLT_MAX), 0x7f80); /* rounds past the largest bf16 */
    assert_int_equal(ql_fp32_to_bf16(from_bits(0x7f7f0000u)), 0x7f7f); /* largest bf16 exact */
    assert_int_equal(ql_fp32_to_bf16(from_bits(0x00010000u)), 0x0001); /* subnormal kept */
    assert_int_equal(ql_fp32_to_bf16(from_bits(0x00008000u)), 0x0000); /* tie to even 0 */
    assert_int_equal(ql_fp32_to_bf16(from_bits(0x00018000u)), 0x0002); /* tie to even 2 */
    /* NaN stays NaN even when its payload is only in the bits rounding would drop */
    assert_int_equal(ql_fp32_to_bf16(from_bits(0x7f800001u)), 0x7fc0);
    assert_int_equal(ql_fp32_to_bf16(from_bits(0xffc00000u)), 0xffc0);
    assert_true(isnan(ql_bf16_to_fp32(0x7fc0)));
    for (uint32_t i = 0; i < 65536; i++) {
        float f = ql_bf16_to_fp32((uint16_t)i);
        assert_int_equal(bits(f), i << 16);
        if (!isnan(f)) assert_int_equal(ql_fp32_to_bf16(f), i);
    }
}

/* ---- hand-built blocks ---- */

static void test_dequant_plain(void **state) {
    (void)state;
    float out[4];
    const float f32[4] = {1.5f, -0.0f, INFINITY, 3e38f};
    assert_int_equal(ql_dequantize_row(QL_DTYPE_F32, f32, out, 4), 0);
    assert_memory_equal(out, f32, sizeof(f32));
    const uint16_t f16[4] = {0x3c00, 0xbc00, 0x0001, 0x7bff}; /* 1, -1, 2^-24, 65504 */
    assert_int_equal(ql_dequantize_row(QL_DTYPE_F16, f16, out, 4), 0);
    assert_true(out[0] == 1.0f && out[1] == -1.0f && out[2] == 0x1p-24f && out[3] == 65504.0f);
    const uint16_t bf[4] = {0x3f80, 0xc040, 0x4049, 0x0000}; /* 1, -3, 3.140625, 0 */
    assert_int_equal(ql_dequantize_row(QL_DTYPE_BF16, bf, out, 4), 0);
    assert_true(out[0] == 1.0f && out[1] == -3.0f && out[2] == 3.140625f && out[3] == 0.0f);
}

static void test_dequant_q8_0(void **state) {
    (void)state;
    uint8_t b[2 * 34];
    memset(b, 0, sizeof(b));
    /* block 0: d = 0x3800 = 0.5; qs[j] = j - 16 for j < 31, qs[31] = -128: x = q / 2 */
    put16(b, 0x3800);
    for (int j = 0; j < 31; j++) b[2 + j] = (uint8_t)(int8_t)(j - 16);
    b[2 + 31] = 0x80;
    /* block 1: d = 0xc000 = -2; qs[0] = 127 -> -254, qs[1] = -1 -> 2, the rest 0 */
    put16(b + 34, 0xc000);
    b[36] = 127;
    b[37] = 0xff;
    float y[64];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q8_0, b, y, 64), 0);
    for (int j = 0; j < 31; j++) assert_true(y[j] == (float)(j - 16) * 0.5f);
    assert_true(y[31] == -64.0f);
    assert_true(y[32] == -254.0f && y[33] == 2.0f);
    for (int j = 34; j < 64; j++) assert_true(y[j] == 0.0f);
}

static void test_dequant_q4_0(void **state) {
    (void)state;
    uint8_t b[18];
    /* d = 0x4000 = 2; qs[0] = 0x1f: element 0 = (0xf - 8) * 2 = 14, element 16 = (1 - 8) * 2
     * = -14; qs[1] = 0x80: element 1 = (0 - 8) * 2 = -16, element 17 = 0; the rest 0x88 -> 0 */
    put16(b, 0x4000);
    memset(b + 2, 0x88, 16);
    b[2] = 0x1f;
    b[3] = 0x80;
    float y[32];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q4_0, b, y, 32), 0);
    assert_true(y[0] == 14.0f && y[16] == -14.0f && y[1] == -16.0f && y[17] == 0.0f);
    for (int j = 2; j < 16; j++) assert_true(y[j] == 0.0f && y[j + 16] == 0.0f);
}

static void test_dequant_q4_1(void **state) {
    (void)state;
    uint8_t b[20];
    /* d = 0x3c00 = 1, m = 0xbc00 = -1; qs[0] = 0x2f: element 0 = 15 - 1 = 14, element 16 =
     * 2 - 1 = 1; the rest 0x00 -> -1 */
    put16(b, 0x3c00);
    put16(b + 2, 0xbc00);
    memset(b + 4, 0, 16);
    b[4] = 0x2f;
    float y[32];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q4_1, b, y, 32), 0);
    assert_true(y[0] == 14.0f && y[16] == 1.0f);
    for (int j = 1; j < 16; j++) assert_true(y[j] == -1.0f && y[j + 16] == -1.0f);
}

static void test_dequant_q5_0(void **state) {
    (void)state;
    uint8_t b[22];
    /* d = 1; qh = 0x00010001 (little-endian u32): bit 0 -> element 0, bit 16 -> element 16
     * get their 5th bit. qs[0] = 0x21: element 0 = (1 | 16) - 16 = 1, element 16 = (2 | 16)
     * - 16 = 2. qs[1] = 0x00 without 5th bits: elements 1 and 17 = -16. Others 0x88, no 5th
     * bit: 8 - 16 = -8. */
    put16(b, 0x3c00);
    b[2] = 0x01, b[3] = 0x00, b[4] = 0x01, b[5] = 0x00;
    memset(b + 6, 0x88, 16);
    b[6] = 0x21;
    b[7] = 0x00;
    float y[32];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q5_0, b, y, 32), 0);
    assert_true(y[0] == 1.0f && y[16] == 2.0f && y[1] == -16.0f && y[17] == -16.0f);
    for (int j = 2; j < 16; j++) assert_true(y[j] == -8.0f && y[j + 16] == -8.0f);
}

static void test_dequant_q5_1(void **state) {
    (void)state;
    uint8_t b[24];
    /* d = 0x3800 = 0.5, m = 0x4000 = 2; qh = 0x80000000: only element 31 has its 5th bit.
     * qs[15] = 0xf0: element 15 = 0 * 0.5 + 2 = 2, element 31 = (15 | 16) * 0.5 + 2 = 17.5;
     * qs[0] = 0x13: element 0 = 3 * 0.5 + 2 = 3.5, element 16 = 1 * 0.5 + 2 = 2.5; others 0 -> 2 */
    put16(b, 0x3800);
    put16(b + 2, 0x4000);
    b[4] = 0, b[5] = 0, b[6] = 0, b[7] = 0x80;
    memset(b + 8, 0, 16);
    b[8 + 15] = 0xf0;
    b[8] = 0x13;
    float y[32];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q5_1, b, y, 32), 0);
    assert_true(y[15] == 2.0f && y[31] == 17.5f && y[0] == 3.5f && y[16] == 2.5f);
    for (int j = 1; j < 15; j++) assert_true(y[j] == 2.0f && y[j + 16] == 2.0f);
}

static void test_dequant_q4_k(void **state) {
    (void)state;
    uint8_t b[144];
    memset(b, 0, sizeof(b));
    /* d = 1, dmin = 0.5. 6-bit (scale, min) pairs: pair j < 4 is (s[j] & 63, s[j+4] & 63);
     * pair j >= 4 is (s[j+4] & 15 | (s[j-4] >> 6) << 4, s[j+4] >> 4 | (s[j] >> 6) << 4).
     *   s[0] = 0x41: pair 0 scale = 1, and its top bits 01 give pair 4's scale +16
     *   s[4] = 0x82: pair 0 min = 2, and its top bits 10 give pair 4's min +32
     *   s[8] = 0x53: pair 4 scale = 3 + 16 = 19, min = 5 + 32 = 37
     * Every other pair is (0, 0). Elements: 64-element chunk k holds sub-block 2k in the low
     * nibbles and 2k+1 in the high nibbles of qs[32k .. 32k+31]; x = d*scale*q - dmin*min.
     *   sub-block 0 (elements 0..31):    x = 1*q - 1;     qs[0] low = 5 -> x[0] = 4, else -1
     *   sub-block 1 (elements 32..63):   x = 0            (qs[0] high = 0xf is ignored)
     *   sub-block 4 (elements 128..159): x = 19*q - 18.5; qs[64] low = 2 -> x[128] = 19.5,
     *                                    qs[65] low = 15 -> x[129] = 266.5, else -18.5
     *   sub-block 5 (elements 160..191): 0               (qs[64] high = 0x3 is ignored) */
    put16(b, 0x3c00);
    put16(b + 2, 0x3800);
    uint8_t *s = b + 4, *qs = b + 16;
    s[0] = 0x41, s[4] = 0x82, s[8] = 0x53;
    qs[0] = 0xf5;
    qs[64] = 0x32;
    qs[65] = 0x0f;
    float y[256];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q4_K, b, y, 256), 0);
    assert_true(y[0] == 4.0f);
    for (int j = 1; j < 32; j++) assert_true(y[j] == -1.0f);
    assert_true(y[128] == 19.5f && y[129] == 266.5f);
    for (int j = 130; j < 160; j++) assert_true(y[j] == -18.5f);
    for (int j = 32; j < 128; j++) assert_true(y[j] == 0.0f);
    for (int j = 160; j < 256; j++) assert_true(y[j] == 0.0f);
}

static void test_dequant_q6_k(void **state) {
    (void)state;
    uint8_t b[210];
    memset(b, 0, sizeof(b));
    /* Layout: ql[128] (low nibbles), qh[64] (2-bit pairs), scales[16] (int8), d (fp16).
     * For each 128-element half h and l < 32, with ql, qh advanced by 64, 32 per half:
     *   x[l]      = d * sc[8h + l/16]     * ((ql[l]    & 15 | (qh[l]      & 3) << 4) - 32)
     *   x[l + 32] = d * sc[8h + l/16 + 2] * ((ql[l+32] & 15 | (qh[l] >> 2 & 3) << 4) - 32)
     *   x[l + 64] = d * sc[8h + l/16 + 4] * ((ql[l]    >> 4 | (qh[l] >> 4 & 3) << 4) - 32)
     *   x[l + 96] = d * sc[8h + l/16 + 6] * ((ql[l+32] >> 4 | (qh[l] >> 6)     << 4) - 32)
     * d = 0x3400 = 0.25; sc[0] = 2, sc[2] = -1, sc[4] = 3, sc[6] = 1, sc[8] = 1, others 0.
     * ql[0] = 0x3a, ql[32] = 0x7f, qh[0] = 0xe4 (pairs 0, 1, 2, 3 from the low bits):
     *   x[0]  = 0.25 *  2 * ((10 | 0 << 4) - 32) = 0.5 * -22 = -11
     *   x[32] = 0.25 * -1 * ((15 | 1 << 4) - 32) = -0.25 * -1 = 0.25
     *   x[64] = 0.25 *  3 * (( 3 | 2 << 4) - 32) = 0.75 * 3 = 2.25
     *   x[96] = 0.25 *  1 * (( 7 | 3 << 4) - 32) = 0.25 * 23 = 5.75
     *   x[1..15] = 0.25 * 2 * -32 = -16; x[16..31] (sc[1] = 0) = 0
     * Second half: ql[64] = 0x21, qh[32] = 0x03:
     *   x[128] = 0.25 * 1 * ((1 | 3 << 4) - 32) = 0.25 * 17 = 4.25; x[129..143] = -8 */
    uint8_t *ql = b, *qh = b + 128;
    int8_t *sc = (int8_t *)(b + 192);
    put16(b + 208, 0x3400);
    sc[0] = 2, sc[2] = -1, sc[4] = 3, sc[6] = 1, sc[8] = 1;
    ql[0] = 0x3a, ql[32] = 0x7f, qh[0] = 0xe4;
    ql[64] = 0x21, qh[32] = 0x03;
    float y[256];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q6_K, b, y, 256), 0);
    assert_true(y[0] == -11.0f && y[32] == 0.25f && y[64] == 2.25f && y[96] == 5.75f);
    for (int j = 1; j < 16; j++) assert_true(y[j] == -16.0f);
    for (int j = 16; j < 32; j++) assert_true(y[j] == 0.0f);
    for (int j = 33; j < 48; j++) assert_true(y[j] == 8.0f);   /* -0.25 * -32 */
    for (int j = 65; j < 80; j++) assert_true(y[j] == -24.0f); /* 0.75 * -32 */
    for (int j = 97; j < 112; j++) assert_true(y[j] == -8.0f); /* 0.25 * -32 */
    assert_true(y[128] == 4.25f);
    for (int j = 129; j < 144; j++) assert_true(y[j] == -8.0f);
    for (int j = 144; j < 256; j++) assert_true(y[j] == 0.0f);
}

static void test_dequant_errors(void **state) {
    (void)state;
    uint8_t b[64] = {0};
    float y[64];
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q8_0, b, y, 31), QL_EINVAL);
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q8_0, b, y, -32), QL_EINVAL);
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q8_0, NULL, y, 32), QL_EINVAL);
    assert_int_equal(ql_dequantize_row(4, b, y, 32), QL_EINVAL); /* unknown id */
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q8_K, b, y, 0), QL_EUNSUPPORTED);
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q8_1, b, y, 0), QL_EUNSUPPORTED);
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q2_K, b, y, 32), QL_EINVAL); /* not 256 */
    assert_int_equal(ql_dequantize_row(QL_DTYPE_I32, b, y, 4), QL_EUNSUPPORTED);
    assert_int_equal(ql_quantize_row(QL_DTYPE_Q5_K, y, b, 0), QL_EUNSUPPORTED);
    assert_int_equal(ql_quantize_row(QL_DTYPE_Q4_0, y, b, 16), QL_EINVAL);
    assert_int_equal(ql_dequantize_row(QL_DTYPE_Q8_0, b, y, 0), 0); /* nothing to do */
}

/* ---- quantize -> dequantize ---- */

/* Quantizes then dequantizes n values and checks each error against the block's own step:
 * round to nearest is off by at most half a step. The extras come from storing the scale d
 * and the min m as fp16 after the quants were computed with the f32 ones (ggml's formula):
 * fp16 rounding moves a value v by at most e(v) = max(|v| * 2^-11, 2^-25) (relative for
 * normals, absolute 2^-25 for subnormals, where a tiny block's scale may even flush to 0),
 * so the bound is (d + 2^-25) / 2 + qmax * e(d) + e(m). The symmetric types (q4_0, q5_0)
 * map the largest magnitude to -qmax, so the other side reaches only qmax - 1: a value of
 * the opposite sign beyond (qmax - 0.5) * d is clipped, and the bound grows by the excess. */
static void check_roundtrip(int t, const float *x, int64_t n, int qmax, int has_min) {
    size_t bytes = 0;
    assert_int_equal(ql_dtype_row_bytes(t, n, &bytes), 0);
    uint8_t *q = malloc(bytes);
    float *y = malloc((size_t)n * sizeof(float));
    assert_non_null(q);
    assert_non_null(y);
    assert_int_equal(ql_quantize_row(t, x, q, n), 0);
    assert_int_equal(ql_dequantize_row(t, q, y, n), 0);
    int64_t be = ql_dtype_block_elems(t);
    size_t bb = ql_dtype_block_bytes(t);
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *blk = q + (size_t)(i / be) * bb;
        float d = fabsf(ql_fp16_load(blk));
        float m = has_min ? fabsf(ql_fp16_load(blk + 2)) : 0.0f;
        float bound = (d + 0x1p-25f) * 0.5f + (float)qmax * fmaxf(d * 0x1p-11f, 0x1p-25f) +
                      fmaxf(m * 0x1p-11f, 0x1p-25f) + 1e-6f * fabsf(x[i]);
        if (t == QL_DTYPE_Q4_0 || t == QL_DTYPE_Q5_0) bound += fmaxf(0.0f, fabsf(x[i]) - ((float)qmax - 0.5f) * d);
        if (!(fabsf(y[i] - x[i]) <= bound))
            fail_msg("%s element %lld: x=%g y=%g d=%g bound=%g", ql_dtype_name(t), (long long)i, x[i], y[i], d, bound);
    }
    free(q);
    free(y);
}

static void test_quant_roundtrip(void **state) {
    (void)state;
    enum { N = 32 * 64 };
    float *x = malloc(N * sizeof(float));
    assert_non_null(x);
    uint64_t s = 42;
    for (int i = 0; i < N; i++) x[i] = rng_normalish(&s) * 0.05f;
    /* a few special blocks: all zero, constant, one outlier, all negative, tiny values */
    for (int i = 0; i < 32; i++) x[i] = 0.0f;
    for (int i = 32; i < 64; i++) x[i] = 0.75f;
    x[64 + 7] = 40.0f;
    for (int i = 96; i < 128; i++) x[i] = -fabsf(x[i]) - 1.0f;
    for (int i = 128; i < 160; i++) x[i] *= 1e-6f;
    check_roundtrip(QL_DTYPE_Q8_0, x, N, 127, 0);
    check_roundtrip(QL_DTYPE_Q4_0, x, N, 8, 0);
    check_roundtrip(QL_DTYPE_Q4_1, x, N, 15, 1);
    check_roundtrip(QL_DTYPE_Q5_0, x, N, 16, 0);
    check_roundtrip(QL_DTYPE_Q5_1, x, N, 31, 1);

    /* plain types: f32 exact; f16/bf16 within half an ulp of their format */
    float *y = malloc(N * sizeof(float));
    uint16_t *h = malloc(N * sizeof(uint16_t));
    assert_non_null(y);
    assert_non_null(h);
    assert_int_equal(ql_quantize_row(QL_DTYPE_F32, x, y, N), 0);
    assert_memory_equal(x, y, N * sizeof(float));
    assert_int_equal(ql_quantize_row(QL_DTYPE_F16, x, h, N), 0);
    assert_int_equal(ql_dequantize_row(QL_DTYPE_F16, h, y, N), 0);
    for (int i = 0; i < N; i++) {
        assert_int_equal(h[i], ql_fp32_to_fp16(x[i]));
        assert_true(fabsf(y[i] - x[i]) <= fabsf(x[i]) * 0x1p-11f + 0x1p-25f);
    }
    assert_int_equal(ql_quantize_row(QL_DTYPE_BF16, x, h, N), 0);
    assert_int_equal(ql_dequantize_row(QL_DTYPE_BF16, h, y, N), 0);
    for (int i = 0; i < N; i++) assert_true(fabsf(y[i] - x[i]) <= fabsf(x[i]) * 0x1p-8f);
    free(h);
    free(y);
    free(x);
}

/* Known bytes: the ggml formulas on a hand-picked block. x[j] = j - 8 for j < 32 (-8..23).
 * q8_0: amax = 23, d = 23/127; q = round(x * 127/23); x = 23 -> 127, x = -8 -> -44.17 ->
 * -44, x = 0 -> 0. q4_0: the largest magnitude is 23 (positive), d = 23 / -8 = -2.875,
 * q = trunc(x / d + 8.5): x = 23 -> 0, x = -8 -> trunc(2.7826 + 8.5) = 11, x = 0 -> 8.
 * q4_1: min = -8, max = 23, d = 31/15, q = trunc((x + 8) * 15/31 + 0.5): x = -8 -> 0,
 * x = 23 -> 15, x = 0 -> trunc(3.871 + 0.5) = 4. */
static void test_quant_known_bytes(void **state) {
    (void)state;
    float x[32];
    for (int j = 0; j < 32; j++) x[j] = (float)(j - 8);
    uint8_t b[34];
    assert_int_equal(ql_quantize_row(QL_DTYPE_Q8_0, x, b, 32), 0);
    uint16_t d;
    memcpy(&d, b, 2);
    assert_int_equal(d, ql_fp32_to_fp16(23.0f / 127.0f));
    assert_int_equal((int8_t)b[2 + 31], 127);
    assert_int_equal((int8_t)b[2 + 0], -44);
    assert_int_equal((int8_t)b[2 + 8], 0);
    assert_int_equal(ql_quantize_row(QL_DTYPE_Q4_0, x, b, 32), 0);
    memcpy(&d, b, 2);
    assert_int_equal(d, ql_fp32_to_fp16(-2.875f));
    assert_int_equal(b[2 + 15] >> 4, 0);   /* element 31 (x = 23) */
    assert_int_equal(b[2 + 0] & 15, 11);   /* element 0 (x = -8) */
    assert_int_equal(b[2 + 8] & 15, 8);    /* element 8 (x = 0) */
    assert_int_equal(ql_quantize_row(QL_DTYPE_Q4_1, x, b, 32), 0);
    uint16_t m;
    memcpy(&d, b, 2);
    memcpy(&m, b + 2, 2);
    assert_int_equal(d, ql_fp32_to_fp16(31.0f / 15.0f));
    assert_int_equal(m, 0xc800); /* -8 */
    assert_int_equal(b[4 + 0] & 15, 0);
    assert_int_equal(b[4 + 15] >> 4, 15);
    assert_int_equal(b[4 + 8] & 15, 4);
}

/* K-quants fit their scales by least squares, so the bound is statistical: for a roughly
 * normal signal the RMS error stays well under the spacing of the levels. Measured: q4_K
 * ~0.07 sigma, q6_K ~0.02 sigma; the bounds leave margin without hiding a broken layout
 * (which gives errors of order sigma). */
static void test_quant_k_roundtrip(void **state) {
    (void)state;
    enum { N = 256 * 16 };
    float *x = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float));
    uint8_t *q = malloc(N); /* more than enough for 4.5 or 6.6 bits per element */
    assert_non_null(x);
    assert_non_null(y);
    assert_non_null(q);
    uint64_t s = 7;
    for (int i = 0; i < N; i++) x[i] = rng_normalish(&s);
    for (int i = 0; i < 256; i++) x[i] = 0.0f; /* an all-zero super-block */
    static const struct { int t; double rms_max, abs_max; } k[] = {
        {QL_DTYPE_Q4_K, 0.10, 0.6},
        {QL_DTYPE_Q6_K, 0.03, 0.15},
    };
    for (size_t c = 0; c < sizeof(k) / sizeof(k[0]); c++) {
        assert_int_equal(ql_quantize_row(k[c].t, x, q, N), 0);
        assert_int_equal(ql_dequantize_row(k[c].t, q, y, N), 0);
        double se = 0, amax = 0;
        for (int i = 0; i < N; i++) {
            double e = fabs((double)y[i] - (double)x[i]);
            se += e * e;
            amax = e > amax ? e : amax;
        }
        double rms = sqrt(se / N);
        print_message("%s: rms error %.4f, max %.4f (signal sigma ~1)\n", ql_dtype_name(k[c].t), rms, amax);
        assert_true(rms < k[c].rms_max);
        assert_true(amax < k[c].abs_max);
        for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f);
    }
    free(x);
    free(y);
    free(q);
}

/* ---- cross-checks against the Python gguf package ---- */

/* tests/fixtures/quant/quantize.txt (tools/reference/dump-quant.py): the bytes gguf-py's
 * numpy quantizers, which follow ggml's reference ones, make from one fixed row. */
static void test_quant_vs_gguf_py(void **state) {
    (void)state;
    float x[256];
    for (int i = 0; i < 256; i++)
        x[i] = (float)((i * 7919) % 2001 - 1000) / 1024.0f * ldexpf(1.0f, (i / 32) % 5 - 2);
    FILE *fx = fopen("tests/fixtures/quant/quantize.txt", "r");
    assert_non_null(fx);
    char tname[32];
    int n_bytes, n_types = 0;
    while (fscanf(fx, "%31s %d", tname, &n_bytes) == 2) {
        ql_dtype_t t;
        assert_int_equal(ql_dtype_parse(tname, &t), 0);
        size_t bytes;
        assert_int_equal(ql_dtype_row_bytes(t, 256, &bytes), 0);
        assert_int_equal((size_t)n_bytes, bytes);
        uint8_t want[1024], got[1024];
        for (int i = 0; i < n_bytes; i++) {
            unsigned v;
            assert_int_equal(fscanf(fx, "%2x", &v), 1);
            want[i] = (uint8_t)v;
        }
        assert_int_equal(ql_quantize_row(t, x, got, 256), 0);
        for (int i = 0; i < n_bytes; i++)
            if (got[i] != want[i]) fail_msg("%s byte %d: quill %02x, gguf-py %02x", tname, i, got[i], want[i]);
        n_types++;
    }
    assert_true(feof(fx));
    assert_int_equal(n_types, 9);
    fclose(fx);
}


/* tests/fixtures/smollm2/dequant.txt, one tensor per line:
 *   <name> <type> <absolute file offset of the tensor's data> <count> <v0> <v1> ...
 * The values are what gguf.quants.dequantize gives for the first `count` elements. The
 * tensor is found with quill's GGUF reader, whose offset must match gguf-py's. */
static void test_dequant_real_model(void **state) {
    (void)state;
    const char *path = ql_test_default_model();
    char err[512];
    ql_gguf_t *g = NULL;
    int rc = ql_gguf_open(path, &g, err, sizeof(err));
    if (rc == QL_ENOENT) {
        print_message("skipped: default model %s not found (%s); `make test` fetches it\n", path, err);
        skip();
    }
    if (rc != 0) fail_msg("ql_gguf_open: %s", err);
    FILE *fx = fopen("tests/fixtures/smollm2/dequant.txt", "r");
    assert_non_null(fx);
    char name[256], tname[32];
    long long off;
    int count, n_tensors = 0;
    while (fscanf(fx, "%255s %31s %lld %d", name, tname, &off, &count) == 4) {
        ql_dtype_t t;
        assert_int_equal(ql_dtype_parse(tname, &t), 0);
        assert_true(count > 0 && count <= 256 && count % ql_dtype_block_elems(t) == 0);
        float want[256], got[256];
        for (int i = 0; i < count; i++) assert_int_equal(fscanf(fx, "%a", &want[i]), 1);
        const ql_gguf_tensor_t *tensor = ql_gguf_find_tensor(g, name);
        if (!tensor) fail_msg("%s: no such tensor in %s", name, path);
        assert_int_equal(tensor->type, t);
        assert_int_equal(ql_gguf_data_offset(g) + tensor->offset, (uint64_t)off);
        assert_int_equal(ql_dequantize_row(t, tensor->data, got, count), 0);
        for (int i = 0; i < count; i++)
            if (bits(got[i]) != bits(want[i]) && !(got[i] == want[i]))
                fail_msg("%s[%d]: quill %a, gguf-py %a", name, i, got[i], want[i]);
        n_tensors++;
    }
    assert_true(feof(fx));
    assert_int_equal(n_tensors, 3);
    fclose(fx);
    ql_gguf_free(g);
}

/* tests/fixtures/quant/dequant-k.txt (tools/reference/dump-kdequant.py): rows of 256
 * elements of every K-quant and of IQ4_NL / IQ4_XS with random quants and scales, as ggml's
 * own dequantize_row_* (and gguf-py, which the script checks agrees) turns them into floats. */
static void test_dequant_vs_ggml(void **state) {
    (void)state;
    FILE *fx = fopen("tests/fixtures/quant/dequant-k.txt", "r");
    assert_non_null(fx);
    char tname[32];
    int n_blocks = 0, seen[QL_DTYPE_COUNT] = {0};
    while (fscanf(fx, "%31s", tname) == 1) {
        ql_dtype_t t;
        assert_int_equal(ql_dtype_parse(tname, &t), 0);
        const size_t nbytes = ql_dtype_block_bytes(t) * (size_t)(256 / ql_dtype_block_elems(t));
        uint8_t blk[256];
        assert_true(nbytes <= sizeof(blk));
        for (size_t i = 0; i < nbytes; i++) {
            unsigned v;
            assert_int_equal(fscanf(fx, "%2x", &v), 1);
            blk[i] = (uint8_t)v;
        }
        float got[256];
        assert_int_equal(ql_dequantize_row(t, blk, got, 256), 0);
        for (int i = 0; i < 256; i++) {
            unsigned want;
            assert_int_equal(fscanf(fx, "%8x", &want), 1);
            uint32_t bits;
            memcpy(&bits, &got[i], 4);
            if (bits != want)
                fail_msg("%s block %d element %d: quill %08x, ggml %08x", tname, seen[t], i,
                         (unsigned)bits, want);
        }
        seen[t]++;
        n_blocks++;
    }
    assert_true(feof(fx));
    fclose(fx);
    const ql_dtype_t kq[] = {QL_DTYPE_Q2_K, QL_DTYPE_Q3_K,   QL_DTYPE_Q4_K,  QL_DTYPE_Q5_K,
                             QL_DTYPE_Q6_K, QL_DTYPE_IQ4_NL, QL_DTYPE_IQ4_XS};
    for (size_t i = 0; i < QL_ARRAY_LEN(kq); i++) assert_true(seen[kq[i]] >= 1);
    assert_int_equal(n_blocks, 21);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_sizes),
        cmocka_unit_test(test_row_bytes),
        cmocka_unit_test(test_fp16_to_fp32),
        cmocka_unit_test(test_fp32_to_fp16),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_dequant_plain),
        cmocka_unit_test(test_dequant_q8_0),
        cmocka_unit_test(test_dequant_q4_0),
        cmocka_unit_test(test_dequant_q4_1),
        cmocka_unit_test(test_dequant_q5_0),
        cmocka_unit_test(test_dequant_q5_1),
        cmocka_unit_test(test_dequant_q4_k),
        cmocka_unit_test(test_dequant_q6_k),
        cmocka_unit_test(test_dequant_errors),
        cmocka_unit_test(test_quant_roundtrip),
        cmocka_unit_test(test_quant_known_bytes),
        cmocka_unit_test(test_quant_k_roundtrip),
        cmocka_unit_test(test_quant_vs_gguf_py),
        cmocka_unit_test(test_dequant_vs_ggml),
        cmocka_unit_test(test_dequant_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
