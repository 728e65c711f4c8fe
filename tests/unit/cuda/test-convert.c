/*
 * tests/unit/cuda/test-convert.c — the host half of the CUDA backend's weight upload
 * (cuda/convert.c): GGUF rows of any dequantizable type to f16, on threads, with the range
 * check. Runs everywhere: no device needed.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cuda/cuda-internal.h"
#include "model/quant.h"

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float uniform(uint64_t *s) {
    return (float)((rng_next(s) >> 40) * (1.0 / 16777216.0)) * 2 - 1;
}

/* A matrix of n_rows × n_in random values in type t (quantized from f32 with the reference
 * quantizer), and the f16 rows the conversion must give: reference dequantization, then
 * round to nearest even. */
static void make(int t, int64_t n_rows, int64_t n_in, uint64_t seed, void **data,
                 uint16_t **expect) {
    size_t rb;
    assert_int_equal(ql_dtype_row_bytes(t, n_in, &rb), 0);
    uint8_t *d = malloc(rb * (size_t)n_rows);
    uint16_t *e = malloc(sizeof(uint16_t) * (size_t)(n_rows * n_in));
    float *row = malloc(sizeof(float) * (size_t)n_in);
    assert_non_null(d);
    assert_non_null(e);
    assert_non_null(row);
    for (int64_t r = 0; r < n_rows; r++) {
        for (int64_t i = 0; i < n_in; i++) row[i] = uniform(&seed) * 3.0f;
        assert_int_equal(ql_quantize_row(t, row, d + rb * (size_t)r, n_in), 0);
        assert_int_equal(ql_dequantize_row(t, d + rb * (size_t)r, row, n_in), 0);
        for (int64_t i = 0; i < n_in; i++) e[r * n_in + i] = ql_fp32_to_fp16(row[i]);
    }
    free(row);
    *data = d;
    *expect = e;
}

static void test_types_and_threads(void **state) {
    (void)state;
    static const int types[] = {QL_DTYPE_F32,  QL_DTYPE_F16,  QL_DTYPE_BF16, QL_DTYPE_Q4_0,
                                QL_DTYPE_Q4_1, QL_DTYPE_Q5_0, QL_DTYPE_Q5_1, QL_DTYPE_Q8_0,
                                QL_DTYPE_Q4_K, QL_DTYPE_Q6_K};
    const int64_t n_rows = 13, n_in = 512;
    for (size_t k = 0; k < sizeof(types) / sizeof(types[0]); k++) {
        void *data;
        uint16_t *expect;
        make(types[k], n_rows, n_in, 100 + k, &data, &expect);
        uint16_t *out = malloc(sizeof(uint16_t) * (size_t)(n_rows * n_in));
        assert_non_null(out);
        /* one thread, then more threads than a fair split gives work to, then a sub-range */
        const int threads[] = {1, 4, 64};
        for (int j = 0; j < 3; j++) {
            memset(out, 0xff, sizeof(uint16_t) * (size_t)(n_rows * n_in));
            int64_t bad = 0;
            assert_int_equal(
                ql__cuda_rows_to_f16(types[k], data, n_in, 0, n_rows, out, threads[j], &bad), 0);
            assert_int_equal(bad, -1);
            if (memcmp(out, expect, sizeof(uint16_t) * (size_t)(n_rows * n_in)) != 0)
                fail_msg("%s on %d threads: rows differ from the reference",
                         ql_dtype_name(types[k]), threads[j]);
        }
        /* rows [5, 9) land at the start of dst */
        memset(out, 0, sizeof(uint16_t) * (size_t)(n_rows * n_in));
        assert_int_equal(ql__cuda_rows_to_f16(types[k], data, n_in, 5, 9, out, 3, NULL), 0);
        assert_memory_equal(out, expect + 5 * n_in, sizeof(uint16_t) * (size_t)(4 * n_in));
        assert_int_equal(out[4 * n_in], 0); /* nothing past them */
        free(out);
        free(data);
        free(expect);
    }
}

static void test_range_and_errors(void **state) {
    (void)state;
    enum { R = 6, N = 64 };
    static float w[R][N];
    for (int r = 0; r < R; r++)
        for (int i = 0; i < N; i++) w[r][i] = 0.5f;
    uint16_t out[R * N];
    int64_t bad = 0;
    /* 65504 is f16's largest; 65520 rounds to inf */
    w[3][7] = 65504.0f;
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_F32, w, N, 0, R, out, 2, &bad), 0);
    assert_int_equal(out[3 * N + 7], 0x7bff);
    w[3][7] = -65520.0f;
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_F32, w, N, 0, R, out, 2, &bad), QL_ERANGE);
    assert_int_equal(bad, 3);
    w[3][7] = 0;
    w[5][0] = NAN;
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_F32, w, N, 0, R, out, 4, &bad), QL_ERANGE);
    assert_int_equal(bad, 5);
    w[5][0] = INFINITY;
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_F32, w, N, 0, R, out, 1, &bad), QL_ERANGE);
    assert_int_equal(bad, 5);
    /* a type without a reference dequantization; rows that are not whole blocks */
    static uint8_t blob[4096];
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_Q8_K, blob, 256, 0, 1, out, 1, NULL),
                     QL_EUNSUPPORTED);
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_Q5_K, blob, 256, 0, 1, out, 1, NULL), 0);
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_Q4_0, blob, 33, 0, 1, out, 1, NULL), QL_EINVAL);
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_F32, NULL, N, 0, 1, out, 1, NULL), QL_EINVAL);
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_F32, w, N, 2, 1, out, 1, NULL), QL_EINVAL);
    assert_int_equal(ql__cuda_rows_to_f16(QL_DTYPE_F32, w, N, 2, 2, out, 1, NULL), 0);
    assert_true(ql__cuda_convert_threads() >= 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types_and_threads),
        cmocka_unit_test(test_range_and_errors),
    };
    return cmocka_run_group_tests_name("cuda-convert", tests, NULL, NULL);
}
