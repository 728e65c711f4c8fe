/*
 * tests/unit/model/test-gguf.c — the GGUF reader and writer (model/gguf.c, gguf-write.c):
 * writer -> reader round trips of every value type, nested arrays and tensor data; the
 * alignment and data offsets; every documented error of both, with its message; every
 * prefix of a valid file; the vocab fixtures and the default model (skipped when absent).
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test-model.h"

#include "model/gguf.h"

/* ---- helpers ---- */

static char g_dir[256]; /* a fresh temporary folder per test */

static int setup_dir(void **state) {
    (void)state;
    snprintf(g_dir, sizeof(g_dir), "/tmp/ql-test-gguf-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}

static int teardown_dir(void **state) {
    (void)state;
    DIR *d = opendir(g_dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char p[600];
            snprintf(p, sizeof(p), "%s/%s", g_dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(g_dir);
    return 0;
}

static const char *tmp_path(const char *name) {
    static char p[512];
    snprintf(p, sizeof(p), "%s/%s", g_dir, name);
    return p;
}

static int count_files(const char *dir) {
    int n = 0;
    DIR *d = opendir(dir);
    if (!d) return -1;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *p = malloc((size_t)sz + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return p;
}

/* A byte builder for hand-made (mostly broken) files. */
typedef struct bb_s {
    uint8_t p[4096];
    size_t n;
} bb_t;

static void bb_put(bb_t *b, const void *p, size_t n) {
    assert_true(b->n + n <= sizeof(b->p));
    memcpy(b->p + b->n, p, n);
    b->n += n;
}
static void bb_u8(bb_t *b, uint8_t v) { bb_put(b, &v, 1); }
static void bb_u32(bb_t *b, uint32_t v) { bb_put(b, &v, 4); }
static void bb_u64(bb_t *b, uint64_t v) { bb_put(b, &v, 8); }
static void bb_str(bb_t *b, const char *s) {
    bb_u64(b, strlen(s));
    bb_put(b, s, strlen(s));
}
static void bb_header(bb_t *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv) {
    b->n = 0;
    bb_put(b, "GGUF", 4);
    bb_u32(b, version);
    bb_u64(b, n_tensors);
    bb_u64(b, n_kv);
}
static void bb_tensor(bb_t *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off) {
    bb_str(b, name);
    bb_u32(b, n_dims);
    for (uint32_t d = 0; d < n_dims; d++) bb_u64(b, ne[d]);
    bb_u32(b, type);
    bb_u64(b, off);
}
static void bb_pad(bb_t *b, size_t align) {
    while (b->n % align) bb_u8(b, 0);
}

/* Opens b's bytes, expects rc and (when non-NULL) a substring of the one-line error. */
static void expect_open(const bb_t *b, int rc, const char *msg) {
    char err[512] = "";
    ql_gguf_t *g = (ql_gguf_t *)0x1;
    int got = ql_gguf_open_mem(b->p, b->n, &g, err, sizeof(err));
    if (got != rc || (msg && !strstr(err, msg))) {
        print_error("expected %d '%s', got %d '%s'\n", rc, msg ? msg : "", got, err);
        fail();
    }
    assert_null(strchr(err, '\n'));
    if (rc == 0) {
        assert_non_null(g);
        ql_gguf_free(g);
    } else {
        assert_null(g);
        assert_true(strlen(err) > 0);
    }
}

static int fill_pattern(void *ud, int64_t index, void *buf, size_t size) {
    int *calls = ud;
    (*calls)++;
    for (size_t i = 0; i < size; i++) ((uint8_t *)buf)[i] = (uint8_t)(index * 31 + (int64_t)i * 7);
    return 0;
}

static int fill_fail(void *ud, int64_t index, void *buf, size_t size) {
    (void)ud, (void)buf, (void)size;
    return index == 1 ? QL_ENOMEM : 0;
}

/* ---- round trip ---- */

static void test_roundtrip_every_type(void **state) {
    (void)state;
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    uint8_t u8 = 200;
    int8_t i8 = -100;
    uint16_t u16 = 60000;
    int16_t i16 = -30000;
    int64_t i64 = -(INT64_C(1) << 40);
    double f64 = 3.25e-3;
    assert_int_equal(ql_gguf_writer_set_scalar(w, "t.u8", QL_GGUF_TYPE_UINT8, &u8), 0);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "t.i8", QL_GGUF_TYPE_INT8, &i8), 0);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "t.u16", QL_GGUF_TYPE_UINT16, &u16), 0);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "t.i16", QL_GGUF_TYPE_INT16, &i16), 0);
    assert_int_equal(ql_gguf_writer_set_u32(w, "t.u32", 4000000000u), 0);
    assert_int_equal(ql_gguf_writer_set_i32(w, "t.i32", -2000000000), 0);
    assert_int_equal(ql_gguf_writer_set_f32(w, "t.f32", 1.5f), 0);
    assert_int_equal(ql_gguf_writer_set_bool(w, "t.bool", 7), 0);
    assert_int_equal(ql_gguf_writer_set_str(w, "t.str", "héllo\nworld"), 0);
    assert_int_equal(ql_gguf_writer_set_u64(w, "t.u64", UINT64_MAX), 0);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "t.i64", QL_GGUF_TYPE_INT64, &i64), 0);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "t.f64", QL_GGUF_TYPE_FLOAT64, &f64), 0);
    assert_int_equal(ql_gguf_writer_set_str(w, "t.empty", ""), 0);
    int32_t ai[5] = {1, -2, 3, -4, 5};
    float af[3] = {0.5f, -1.25f, 8.0f};
    uint8_t ab[4] = {1, 0, 0, 1};
    uint64_t au[2] = {7, UINT64_MAX};
    assert_int_equal(ql_gguf_writer_set_arr(w, "a.i32", QL_GGUF_TYPE_INT32, ai, 5), 0);
    assert_int_equal(ql_gguf_writer_set_arr(w, "a.f32", QL_GGUF_TYPE_FLOAT32, af, 3), 0);
    assert_int_equal(ql_gguf_writer_set_arr(w, "a.bool", QL_GGUF_TYPE_BOOL, ab, 4), 0);
    assert_int_equal(ql_gguf_writer_set_arr(w, "a.u64", QL_GGUF_TYPE_UINT64, au, 2), 0);
    assert_int_equal(ql_gguf_writer_set_arr(w, "a.empty", QL_GGUF_TYPE_UINT8, NULL, 0), 0);
    const char *strs[] = {"a", "", "ccc", "<|endoftext|>"};
    assert_int_equal(ql_gguf_writer_set_arr_str(w, "a.str", strs, 4), 0);
    /* nested: [[1, 2, 3], [], [4]] and [["x"], [[5]]] (arrays of different element types) */
    uint32_t n1[3] = {1, 2, 3}, n3[1] = {4}, n5[1] = {5};
    ql_gguf_arr_desc_t inner[3] = {{QL_GGUF_TYPE_UINT32, n1, 3}, {QL_GGUF_TYPE_UINT32, NULL, 0},
                                   {QL_GGUF_TYPE_UINT32, n3, 1}};
    ql_gguf_arr_desc_t nested = {QL_GGUF_TYPE_ARRAY, inner, 3};
    assert_int_equal(ql_gguf_writer_set_arr_desc(w, "a.nested", &nested), 0);
    const char *xs[] = {"x"};
    ql_gguf_arr_desc_t deep_in = {QL_GGUF_TYPE_UINT32, n5, 1};
    ql_gguf_arr_desc_t mixed_in[2] = {{QL_GGUF_TYPE_STRING, xs, 1}, {QL_GGUF_TYPE_ARRAY, &deep_in, 1}};
    ql_gguf_arr_desc_t mixed = {QL_GGUF_TYPE_ARRAY, mixed_in, 2};
    assert_int_equal(ql_gguf_writer_set_arr_desc(w, "a.mixed", &mixed), 0);

    int calls = 0;
    int64_t ne_a[2] = {5, 3}, ne_b[2] = {64, 2}, ne_c[1] = {7}, ne_d[3] = {32, 1, 2};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "a", QL_DTYPE_F32, 2, ne_a, fill_pattern, &calls), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "b", QL_DTYPE_Q8_0, 2, ne_b, fill_pattern, &calls), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "c", QL_DTYPE_F16, 1, ne_c, fill_pattern, &calls), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "d.zeros", QL_DTYPE_Q4_1, 3, ne_d, NULL, NULL), 0);
    char err[512];
    const char *path = tmp_path("rt.gguf");
    assert_int_equal(ql_gguf_writer_write(w, path, err, sizeof(err)), 0);
    assert_int_equal(calls, 3);
    ql_gguf_writer_free(w);
    assert_int_equal(count_files(g_dir), 1); /* no temporary file left */

    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(path, &g, err, sizeof(err)), 0);
    assert_int_equal(ql_gguf_version(g), 3);
    assert_int_equal(ql_gguf_alignment(g), 32);
    assert_int_equal(ql_gguf_n_kv(g), 21);
    assert_true(ql_gguf_str_eq(ql_gguf_key(g, 0), "t.u8"));
    assert_true(ql_gguf_str_eq(ql_gguf_key(g, 20), "a.mixed"));

    /* every scalar through the typed getters */
    uint32_t u32;
    int64_t iv;
    float fv;
    int bv;
    ql_gguf_str_t s;
    assert_int_equal(ql_gguf_get_u32(g, "t.u8", &u32), 0);
    assert_int_equal(u32, 200);
    assert_int_equal(ql_gguf_get_i64(g, "t.i8", &iv), 0);
    assert_int_equal(iv, -100);
    assert_int_equal(ql_gguf_get_u32(g, "t.u16", &u32), 0);
    assert_int_equal(u32, 60000);
    assert_int_equal(ql_gguf_get_i64(g, "t.i16", &iv), 0);
    assert_int_equal(iv, -30000);
    assert_int_equal(ql_gguf_get_u32(g, "t.u32", &u32), 0);
    assert_int_equal(u32, 4000000000u);
    assert_int_equal(ql_gguf_get_i64(g, "t.i32", &iv), 0);
    assert_int_equal(iv, -2000000000);
    assert_int_equal(ql_gguf_get_f32(g, "t.f32", &fv), 0);
    assert_true(fv == 1.5f);
    assert_int_equal(ql_gguf_get_bool(g, "t.bool", &bv), 0);
    assert_int_equal(bv, 1);
    assert_int_equal(ql_gguf_get_str(g, "t.str", &s), 0);
    assert_true(ql_gguf_str_eq(s, "héllo\nworld"));
    assert_int_equal(ql_gguf_get_i64(g, "t.i64", &iv), 0);
    assert_true(iv == -(INT64_C(1) << 40));
    assert_int_equal(ql_gguf_get_f32(g, "t.f64", &fv), 0);
    assert_true(fv == (float)3.25e-3);
    assert_int_equal(ql_gguf_get_str(g, "t.empty", &s), 0);
    assert_int_equal(s.len, 0);
    /* u64 above INT64_MAX: through the value API only */
    ql_gguf_value_t v, e, e2;
    int64_t ki = ql_gguf_find_key(g, "t.u64");
    assert_int_equal(ki, 9);
    assert_int_equal(ql_gguf_kv_value(g, ki, &v), 0);
    assert_int_equal(v.type, QL_GGUF_TYPE_UINT64);
    uint64_t uraw;
    memcpy(&uraw, v.data, 8);
    assert_true(uraw == UINT64_MAX);
    assert_int_equal(ql_gguf_value_i64(&v, &iv), QL_ERANGE);
    assert_int_equal(ql_gguf_get_i64(g, "t.u64", &iv), QL_EFORMAT);
    double d;
    assert_int_equal(ql_gguf_value_f64(&v, &d), 0);
    assert_true(d == 18446744073709551615.0);

    /* fixed-size arrays */
    int64_t ia = ql_gguf_find_key(g, "a.i32");
    assert_int_equal(ql_gguf_kv_type(g, ia), QL_GGUF_TYPE_ARRAY);
    assert_int_equal(ql_gguf_arr_type(g, ia), QL_GGUF_TYPE_INT32);
    assert_int_equal(ql_gguf_arr_len(g, ia), 5);
    for (uint64_t j = 0; j < 5; j++) {
        assert_int_equal(ql_gguf_arr_i64(g, ia, j, &iv), 0);
        assert_int_equal(iv, ai[j]);
        assert_int_equal(ql_gguf_arr_f64(g, ia, j, &d), 0);
        assert_true(d == ai[j]);
    }
    assert_memory_equal(ql_gguf_arr_data(g, ia), ai, sizeof(ai));
    int64_t fa = ql_gguf_find_key(g, "a.f32");
    for (uint64_t j = 0; j < 3; j++) {
        assert_int_equal(ql_gguf_arr_f64(g, fa, j, &d), 0);
        assert_true(d == af[j]);
    }
    int64_t ba = ql_gguf_find_key(g, "a.bool");
    assert_int_equal(ql_gguf_arr_i64(g, ba, 3, &iv), 0);
    assert_int_equal(iv, 1);
    int64_t ua = ql_gguf_find_key(g, "a.u64");
    assert_int_equal(ql_gguf_arr_i64(g, ua, 0, &iv), 0);
    assert_int_equal(iv, 7);
    assert_int_equal(ql_gguf_arr_i64(g, ua, 1, &iv), QL_ERANGE);
    int64_t ea = ql_gguf_find_key(g, "a.empty");
    assert_int_equal(ql_gguf_arr_len(g, ea), 0);
    assert_int_equal(ql_gguf_arr_i64(g, ea, 0, &iv), QL_EINVAL);
    int64_t sa = ql_gguf_find_key(g, "a.str");
    assert_int_equal(ql_gguf_arr_type(g, sa), QL_GGUF_TYPE_STRING);
    for (uint64_t j = 4; j-- > 0;) { /* backwards: the index is random access */
        assert_int_equal(ql_gguf_arr_str(g, sa, j, &s), 0);
        assert_true(ql_gguf_str_eq(s, strs[j]));
    }

    /* nested arrays through the value API, forwards, backwards and again */
    int64_t na = ql_gguf_find_key(g, "a.nested");
    assert_int_equal(ql_gguf_arr_type(g, na), QL_GGUF_TYPE_ARRAY);
    assert_int_equal(ql_gguf_arr_len(g, na), 3);
    assert_null(ql_gguf_arr_data(g, na));
    assert_int_equal(ql_gguf_arr_i64(g, na, 0, &iv), QL_EINVAL);
    assert_int_equal(ql_gguf_kv_value(g, na, &v), 0);
    static const uint64_t k_lens[3] = {3, 0, 1};
    for (int pass = 0; pass < 2; pass++) {
        for (uint64_t k = 0; k < 3; k++) {
            uint64_t j = pass ? 2 - k : k;
            assert_int_equal(ql_gguf_value_elem(&v, j, &e), 0);
            assert_int_equal(e.type, QL_GGUF_TYPE_ARRAY);
            assert_int_equal(e.arr_type, QL_GGUF_TYPE_UINT32);
            assert_int_equal(e.arr_len, k_lens[j]);
        }
    }
    assert_int_equal(ql_gguf_value_elem(&v, 0, &e), 0);
    assert_int_equal(ql_gguf_value_elem(&e, 2, &e2), 0);
    assert_int_equal(ql_gguf_value_i64(&e2, &iv), 0);
    assert_int_equal(iv, 3);
    assert_int_equal(ql_gguf_value_elem(&v, 2, &e), 0);
    assert_int_equal(ql_gguf_value_elem(&e, 0, &e2), 0);
    assert_int_equal(ql_gguf_value_i64(&e2, &iv), 0);
    assert_int_equal(iv, 4);
    assert_int_equal(ql_gguf_value_elem(&v, 3, &e), QL_EINVAL);
    assert_int_equal(ql_gguf_value_elem(&e2, 0, &e), QL_EINVAL); /* not an array */
    int64_t ma = ql_gguf_find_key(g, "a.mixed");
    assert_int_equal(ql_gguf_kv_value(g, ma, &v), 0);
    assert_int_equal(ql_gguf_value_elem(&v, 1, &e), 0);
    assert_int_equal(e.arr_type, QL_GGUF_TYPE_ARRAY);
    ql_gguf_value_t e3;
    assert_int_equal(ql_gguf_value_elem(&e, 0, &e2), 0);
    assert_int_equal(ql_gguf_value_elem(&e2, 0, &e3), 0);
    assert_int_equal(ql_gguf_value_i64(&e3, &iv), 0);
    assert_int_equal(iv, 5);
    assert_int_equal(ql_gguf_value_elem(&v, 0, &e), 0);
    assert_int_equal(ql_gguf_value_elem(&e, 0, &e2), 0);
    assert_int_equal(e2.type, QL_GGUF_TYPE_STRING);
    assert_true(ql_gguf_str_eq(e2.str, "x"));
    assert_int_equal(ql_gguf_value_f64(&e2, &d), QL_EFORMAT);

    /* tensors: shapes, types, aligned offsets and the bytes the callbacks wrote */
    assert_int_equal(ql_gguf_n_tensors(g), 4);
    assert_int_equal(ql_gguf_data_offset(g) % 32, 0);
    const ql_gguf_tensor_t *t = ql_gguf_find_tensor(g, "a");
    assert_non_null(t);
    assert_ptr_equal(t, ql_gguf_tensor(g, 0));
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 5);
    assert_int_equal(t->ne[1], 3);
    assert_int_equal(t->ne[2], 1);
    assert_int_equal(t->type, QL_DTYPE_F32);
    assert_int_equal(t->offset, 0);
    assert_int_equal(t->size, 60);
    const uint8_t *base = (const uint8_t *)t->data - ql_gguf_data_offset(g);
    static const uint64_t k_sizes[4] = {60, 2 * 2 * 34, 14, 2 * 20}; /* q8_0: 34 B/32, q4_1: 20 B/32 */
    for (int64_t i = 0; i < 4; i++) {
        t = ql_gguf_tensor(g, i);
        assert_int_equal(t->size, k_sizes[i]);
        assert_int_equal(t->offset % 32, 0);
        assert_ptr_equal(t->data, base + ql_gguf_data_offset(g) + t->offset);
        for (uint64_t b = 0; b < t->size; b++) {
            uint8_t want = i == 3 ? 0 : (uint8_t)(i * 31 + (int64_t)b * 7);
            assert_int_equal(((const uint8_t *)t->data)[b], want);
        }
    }
    assert_null(ql_gguf_find_tensor(g, "nope"));
    assert_null(ql_gguf_tensor(g, 4));
    assert_null(ql_gguf_tensor(g, -1));

    /* the same bytes through open_mem give the same view */
    size_t n;
    uint8_t *bytes = read_all(path, &n);
    ql_gguf_t *m = NULL;
    assert_int_equal(ql_gguf_open_mem(bytes, n, &m, err, sizeof(err)), 0);
    assert_int_equal(ql_gguf_file_size(m), n);
    assert_int_equal(ql_gguf_data_offset(m), ql_gguf_data_offset(g));
    assert_int_equal(ql_gguf_n_kv(m), 21);
    assert_int_equal(ql_gguf_find_tensor(m, "d.zeros")->offset, ql_gguf_find_tensor(g, "d.zeros")->offset);
    ql_gguf_free(m);
    free(bytes);
    ql_gguf_free(g);
}

static void test_custom_alignment(void **state) {
    (void)state;
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    assert_int_equal(ql_gguf_writer_set_u32(w, "general.alignment", 3), QL_EINVAL);
    uint64_t a64 = 64;
    assert_int_equal(ql_gguf_writer_set_u64(w, "general.alignment", a64), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_u32(w, "general.alignment", 256), 0);
    int64_t ne[1] = {3};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "x", QL_DTYPE_F32, 1, ne, NULL, NULL), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "y", QL_DTYPE_F32, 1, ne, NULL, NULL), 0);
    char err[512];
    assert_int_equal(ql_gguf_writer_write(w, tmp_path("a.gguf"), err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(tmp_path("a.gguf"), &g, err, sizeof(err)), 0);
    assert_int_equal(ql_gguf_alignment(g), 256);
    assert_int_equal(ql_gguf_data_offset(g) % 256, 0);
    assert_int_equal(ql_gguf_tensor(g, 1)->offset, 256);
    assert_int_equal(ql_gguf_file_size(g), ql_gguf_data_offset(g) + 512);
    ql_gguf_free(g);
}

static void test_offsets_layout(void **state) {
    (void)state;
    /* sizes 60, 136, 14: offsets 0, 64, 224 with the default alignment of 32 */
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    int64_t a[2] = {5, 3}, b[2] = {64, 2}, c[1] = {7};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "a", QL_DTYPE_F32, 2, a, NULL, NULL), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "b", QL_DTYPE_Q8_0, 2, b, NULL, NULL), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "c", QL_DTYPE_F16, 1, c, NULL, NULL), 0);
    char err[512];
    assert_int_equal(ql_gguf_writer_write(w, tmp_path("o.gguf"), err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(tmp_path("o.gguf"), &g, err, sizeof(err)), 0);
    assert_int_equal(ql_gguf_tensor(g, 0)->offset, 0);
    assert_int_equal(ql_gguf_tensor(g, 1)->offset, 64);
    assert_int_equal(ql_gguf_tensor(g, 2)->offset, 224);
    /* header 24 + 3 infos (8+1+4+8*nd+4+8 each) = 24 + 41 + 41 + 33 = 139 -> 160 */
    assert_int_equal(ql_gguf_data_offset(g), 160);
    assert_int_equal(ql_gguf_file_size(g), 160 + 256); /* the last tensor is padded too */
    ql_gguf_free(g);
}

static void test_zero_tensors(void **state) {
    (void)state;
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    char err[512];
    assert_int_equal(ql_gguf_writer_write(w, tmp_path("e.gguf"), err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(tmp_path("e.gguf"), &g, err, sizeof(err)), 0);
    assert_int_equal(ql_gguf_n_kv(g), 0);
    assert_int_equal(ql_gguf_n_tensors(g), 0);
    assert_int_equal(ql_gguf_find_key(g, "x"), -1);
    assert_null(ql_gguf_find_tensor(g, "x"));
    assert_int_equal(ql_gguf_data_offset(g), 32);
    ql_gguf_free(g);
    /* without the padding (as llama.cpp's vocab files end) the file still opens */
    bb_t b;
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "k");
    bb_u32(&b, QL_GGUF_TYPE_UINT8);
    bb_u8(&b, 1);
    expect_open(&b, 0, NULL);
}

/* ---- writer errors ---- */

static void test_writer_errors(void **state) {
    (void)state;
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    assert_int_equal(ql_gguf_writer_set_u32(w, "k", 1), 0);
    assert_int_equal(ql_gguf_writer_set_u32(w, "k", 2), QL_EINVAL);   /* set twice */
    assert_int_equal(ql_gguf_writer_set_str(w, "k", "x"), QL_EINVAL); /* even with another type */
    assert_int_equal(ql_gguf_writer_set_u32(w, "", 1), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_u32(w, NULL, 1), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_u32(NULL, "z", 1), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_str(w, "s", NULL), QL_EINVAL);
    uint32_t x = 1;
    assert_int_equal(ql_gguf_writer_set_scalar(w, "s", QL_GGUF_TYPE_STRING, &x), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "s", (ql_gguf_type_t)13, &x), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_arr(w, "s", QL_GGUF_TYPE_STRING, &x, 1), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_arr(w, "s", QL_GGUF_TYPE_UINT32, NULL, 1), QL_EINVAL);
    uint8_t bad_bool[2] = {0, 2};
    assert_int_equal(ql_gguf_writer_set_arr(w, "s", QL_GGUF_TYPE_BOOL, bad_bool, 2), QL_EINVAL);
    const char *strs[2] = {"a", NULL};
    assert_int_equal(ql_gguf_writer_set_arr_str(w, "s", strs, 2), QL_EINVAL);
    /* nesting: depth QL_GGUF_MAX_ARRAY_DEPTH is fine, one more is not */
    ql_gguf_arr_desc_t lv[QL_GGUF_MAX_ARRAY_DEPTH + 1];
    lv[QL_GGUF_MAX_ARRAY_DEPTH] = (ql_gguf_arr_desc_t){QL_GGUF_TYPE_UINT32, &x, 1};
    for (int i = QL_GGUF_MAX_ARRAY_DEPTH - 1; i >= 0; i--) lv[i] = (ql_gguf_arr_desc_t){QL_GGUF_TYPE_ARRAY, &lv[i + 1], 1};
    assert_int_equal(ql_gguf_writer_set_arr_desc(w, "deep", &lv[0]), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_set_arr_desc(w, "deep", &lv[1]), 0);
    /* a failed set left nothing behind: "s" is still free */
    assert_int_equal(ql_gguf_writer_set_str(w, "s", "ok"), 0);

    int64_t ne[5] = {32, 2, 1, 1, 1}, zero[1] = {0}, neg[2] = {32, -1}, odd[1] = {33};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F32, 0, ne, NULL, NULL), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F32, 5, ne, NULL, NULL), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F32, 1, zero, NULL, NULL), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F32, 2, neg, NULL, NULL), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_Q4_1, 1, odd, NULL, NULL), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", (ql_dtype_t)4, 1, ne, NULL, NULL), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", (ql_dtype_t)99, 1, ne, NULL, NULL), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "", QL_DTYPE_F32, 1, ne, NULL, NULL), QL_EINVAL);
    int64_t huge[4] = {INT64_C(1) << 40, INT64_C(1) << 40, 1, 1};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F32, 2, huge, NULL, NULL), QL_EOVERFLOW);
    int64_t big[2] = {INT64_C(1) << 62, 4};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F64, 2, big, NULL, NULL), QL_EOVERFLOW);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F32, 2, ne, NULL, NULL), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t", QL_DTYPE_F32, 2, ne, NULL, NULL), QL_EINVAL);
    int64_t one[1] = {32};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "u", QL_DTYPE_F32, 1, one, fill_fail, NULL), 0);

    /* a fill error is returned as is, and leaves no file behind */
    char err[512];
    assert_int_equal(ql_gguf_writer_write(w, tmp_path("f.gguf"), err, sizeof(err)), QL_ENOMEM);
    assert_non_null(strstr(err, "tensor 1 'u'"));
    assert_null(strchr(err, '\n'));
    assert_int_equal(count_files(g_dir), 0);
    /* an unwritable destination is QL_EIO with the errno text */
    assert_int_equal(ql_gguf_writer_write(w, "/nonexistent-dir/x.gguf", err, sizeof(err)), QL_EIO);
    assert_non_null(strstr(err, "/nonexistent-dir/x.gguf"));
    assert_non_null(strstr(err, strerror(ENOENT)));
    assert_int_equal(ql_gguf_writer_write(w, "", err, sizeof(err)), QL_EINVAL);
    assert_int_equal(ql_gguf_writer_write(NULL, "x", err, sizeof(err)), QL_EINVAL);
    ql_gguf_writer_free(w);
    ql_gguf_writer_free(NULL);
}

/* ---- reader errors ---- */

static void test_getter_errors(void **state) {
    (void)state;
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    int64_t neg = -5;
    double huge = 1e300, inf = INFINITY;
    float fl[2] = {1.5f, 2.0f};
    assert_int_equal(ql_gguf_writer_set_scalar(w, "neg", QL_GGUF_TYPE_INT64, &neg), 0);
    assert_int_equal(ql_gguf_writer_set_u64(w, "big", (uint64_t)1 << 40), 0);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "huge", QL_GGUF_TYPE_FLOAT64, &huge), 0);
    assert_int_equal(ql_gguf_writer_set_scalar(w, "inf", QL_GGUF_TYPE_FLOAT64, &inf), 0);
    assert_int_equal(ql_gguf_writer_set_f32(w, "f", 2.0f), 0);
    assert_int_equal(ql_gguf_writer_set_bool(w, "b", 0), 0);
    assert_int_equal(ql_gguf_writer_set_str(w, "s", "x"), 0);
    assert_int_equal(ql_gguf_writer_set_arr(w, "fa", QL_GGUF_TYPE_FLOAT32, fl, 2), 0);
    char err[512];
    assert_int_equal(ql_gguf_writer_write(w, tmp_path("g.gguf"), err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(tmp_path("g.gguf"), &g, err, sizeof(err)), 0);
    uint32_t u;
    int64_t i;
    float f;
    int b;
    double d;
    ql_gguf_str_t s;
    assert_int_equal(ql_gguf_get_u32(g, "missing", &u), QL_ENOENT);
    assert_int_equal(ql_gguf_get_u32(g, "neg", &u), QL_EFORMAT);  /* negative */
    assert_int_equal(ql_gguf_get_u32(g, "big", &u), QL_EFORMAT);  /* > UINT32_MAX */
    assert_int_equal(ql_gguf_get_i64(g, "big", &i), 0);
    assert_true(i == (INT64_C(1) << 40));
    assert_int_equal(ql_gguf_get_i64(g, "f", &i), QL_EFORMAT);    /* a float */
    assert_int_equal(ql_gguf_get_i64(g, "b", &i), QL_EFORMAT);    /* a bool */
    assert_int_equal(ql_gguf_get_i64(g, "s", &i), QL_EFORMAT);
    assert_int_equal(ql_gguf_get_i64(g, "fa", &i), QL_EFORMAT);   /* an array */
    assert_int_equal(ql_gguf_get_f32(g, "neg", &f), QL_EFORMAT);  /* an integer */
    assert_int_equal(ql_gguf_get_f32(g, "huge", &f), QL_EFORMAT); /* beyond float */
    assert_int_equal(ql_gguf_get_f32(g, "inf", &f), 0);
    assert_true(isinf(f));
    assert_int_equal(ql_gguf_get_bool(g, "f", &b), QL_EFORMAT);
    assert_int_equal(ql_gguf_get_bool(g, "b", &b), 0);
    assert_int_equal(b, 0);
    assert_int_equal(ql_gguf_get_str(g, "f", &s), QL_EFORMAT);
    assert_int_equal(ql_gguf_get_str(g, "nope", &s), QL_ENOENT);
    assert_int_equal(ql_gguf_get_u32(g, NULL, &u), QL_EINVAL);
    assert_int_equal(ql_gguf_get_u32(NULL, "f", &u), QL_EINVAL);
    int64_t fa = ql_gguf_find_key(g, "fa");
    assert_int_equal(ql_gguf_arr_i64(g, fa, 0, &i), QL_EINVAL); /* float elements */
    assert_int_equal(ql_gguf_arr_f64(g, fa, 1, &d), 0);
    assert_true(d == 2.0);
    assert_int_equal(ql_gguf_arr_f64(g, fa, 2, &d), QL_EINVAL); /* out of range */
    assert_int_equal(ql_gguf_arr_str(g, fa, 0, &s), QL_EINVAL);
    int64_t si = ql_gguf_find_key(g, "s");
    assert_int_equal(ql_gguf_arr_f64(g, si, 0, &d), QL_EINVAL); /* not an array */
    assert_null(ql_gguf_arr_data(g, si));
    assert_int_equal(ql_gguf_arr_len(g, si), 0);
    assert_int_equal((int)ql_gguf_arr_type(g, si), -1);
    /* indexes out of range */
    assert_null(ql_gguf_key(g, 99).ptr);
    assert_null(ql_gguf_key(g, -1).ptr);
    assert_int_equal((int)ql_gguf_kv_type(g, 99), -1);
    ql_gguf_value_t v;
    assert_int_equal(ql_gguf_kv_value(g, 99, &v), QL_EINVAL);
    assert_int_equal(ql_gguf_find_key(g, NULL), -1);
    ql_gguf_free(g);
    ql_gguf_free(NULL);
}

static void test_open_errors_files(void **state) {
    (void)state;
    char err[512];
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open("/nonexistent/model.gguf", &g, err, sizeof(err)), QL_ENOENT);
    assert_non_null(strstr(err, "/nonexistent/model.gguf"));
    assert_non_null(strstr(err, strerror(ENOENT)));
    assert_null(g);
    assert_int_equal(ql_gguf_open(g_dir, &g, err, sizeof(err)), QL_EIO);
    assert_non_null(strstr(err, strerror(EISDIR)));
    FILE *f = fopen(tmp_path("empty.gguf"), "wb");
    fclose(f);
    assert_int_equal(ql_gguf_open(tmp_path("empty.gguf"), &g, err, sizeof(err)), QL_EFORMAT);
    assert_non_null(strstr(err, "empty.gguf: header: empty file (0 bytes)"));
    if (geteuid() != 0) { /* root reads anything */
        chmod(tmp_path("empty.gguf"), 0);
        assert_int_equal(ql_gguf_open(tmp_path("empty.gguf"), &g, err, sizeof(err)), QL_EIO);
        assert_non_null(strstr(err, strerror(EACCES)));
    }
    assert_int_equal(ql_gguf_open(NULL, &g, err, sizeof(err)), QL_EINVAL);
    assert_int_equal(ql_gguf_open_mem(NULL, 5, &g, err, sizeof(err)), QL_EINVAL);
    assert_int_equal(ql_gguf_open_mem(NULL, 0, &g, err, sizeof(err)), QL_EFORMAT);
    assert_non_null(strstr(err, "empty file"));
}

static void test_open_errors_header(void **state) {
    (void)state;
    bb_t b;
    b.n = 0;
    expect_open(&b, QL_EFORMAT, "header: empty file (0 bytes)");
    bb_put(&b, "GG", 2);
    expect_open(&b, QL_EFORMAT, "not a GGUF file: magic 'GG' at offset 0");
    bb_header(&b, 3, 0, 0);
    memcpy(b.p, "GGML", 4);
    expect_open(&b, QL_EFORMAT, "not a GGUF file: magic 'GGML'");
    bb_header(&b, 1, 0, 0);
    expect_open(&b, QL_EUNSUPPORTED, "GGUF version 1 (32-bit counts) is not supported");
    bb_header(&b, 4, 0, 0);
    expect_open(&b, QL_EUNSUPPORTED, "unknown GGUF version 4");
    bb_header(&b, 0x03000000, 0, 0);
    expect_open(&b, QL_EUNSUPPORTED, "big-endian GGUF (version 3");
    bb_header(&b, 2, 0, 0);
    expect_open(&b, 0, NULL); /* v2 */
    b.n = 20;
    expect_open(&b, QL_EFORMAT, "truncated: metadata key count at offset 16 needs 8 bytes, only 4 left");
    bb_header(&b, 3, 0, UINT64_MAX);
    expect_open(&b, QL_EFORMAT, "metadata key count 18446744073709551615 at offset 16 cannot fit");
    bb_header(&b, 3, UINT64_C(1) << 60, 0);
    expect_open(&b, QL_EFORMAT, "tensor count 1152921504606846976 at offset 8 cannot fit");
    bb_header(&b, 3, 1, 0);
    expect_open(&b, QL_EFORMAT, "tensor count 1 at offset 8 cannot fit");
}

static void test_open_errors_metadata(void **state) {
    (void)state;
    bb_t b;
    bb_header(&b, 3, 0, 1);
    bb_u64(&b, 1000);
    bb_put(&b, "abcdef", 6);
    expect_open(&b, QL_EFORMAT, "key 0 '' (at offset 24): truncated: key at offset 24 has length 1000, only 6 bytes left");
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "general.name");
    bb_u32(&b, 13);
    bb_u8(&b, 0);
    expect_open(&b, QL_EFORMAT, "key 0 'general.name' (at offset 24): unknown value type 13");
    bb_header(&b, 3, 0, 2);
    bb_str(&b, "a");
    bb_u32(&b, QL_GGUF_TYPE_UINT8);
    bb_u8(&b, 1);
    bb_str(&b, "a");
    bb_u32(&b, QL_GGUF_TYPE_UINT8);
    bb_u8(&b, 2);
    expect_open(&b, QL_EFORMAT, "key 1 'a' (at offset 38): duplicate key (first at offset 24)");
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "b");
    bb_u32(&b, QL_GGUF_TYPE_BOOL);
    bb_u8(&b, 2);
    expect_open(&b, QL_EFORMAT, "bool value 2 at offset 37 (must be 0 or 1)");
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "u");
    bb_u32(&b, QL_GGUF_TYPE_UINT32);
    bb_u8(&b, 2);
    expect_open(&b, QL_EFORMAT, "truncated: value at offset 37 needs 4 bytes, only 1 left");
    /* a string array claiming more strings than the bytes left can hold: no allocation */
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "tokenizer.ggml.tokens");
    bb_u32(&b, QL_GGUF_TYPE_ARRAY);
    bb_u32(&b, QL_GGUF_TYPE_STRING);
    bb_u64(&b, UINT64_C(1) << 61);
    bb_u64(&b, 0);
    expect_open(&b, QL_EFORMAT, "array element count 2305843009213693952 at offset 61 cannot fit");
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "arr");
    bb_u32(&b, QL_GGUF_TYPE_ARRAY);
    bb_u32(&b, QL_GGUF_TYPE_UINT64);
    bb_u64(&b, UINT64_C(1) << 62); /* * 8 bytes overflows 64 bits */
    expect_open(&b, QL_EFORMAT, "truncated: array of 4611686018427387904 u64");
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "arr");
    bb_u32(&b, QL_GGUF_TYPE_ARRAY);
    bb_u32(&b, 42);
    bb_u64(&b, 0);
    expect_open(&b, QL_EFORMAT, "unknown array element type 42");
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "arr");
    bb_u32(&b, QL_GGUF_TYPE_ARRAY);
    bb_u32(&b, QL_GGUF_TYPE_BOOL);
    bb_u64(&b, 3);
    bb_u8(&b, 1), bb_u8(&b, 0), bb_u8(&b, 9);
    expect_open(&b, QL_EFORMAT, "bool element 2 is 9");
    /* nesting: QL_GGUF_MAX_ARRAY_DEPTH levels open, one more does not */
    for (int depth = QL_GGUF_MAX_ARRAY_DEPTH; depth <= QL_GGUF_MAX_ARRAY_DEPTH + 1; depth++) {
        bb_header(&b, 3, 0, 1);
        bb_str(&b, "deep");
        bb_u32(&b, QL_GGUF_TYPE_ARRAY);
        for (int i = 0; i < depth - 1; i++) {
            bb_u32(&b, QL_GGUF_TYPE_ARRAY);
            bb_u64(&b, 1);
        }
        bb_u32(&b, QL_GGUF_TYPE_UINT8);
        bb_u64(&b, 1);
        bb_u8(&b, 7);
        if (depth == QL_GGUF_MAX_ARRAY_DEPTH) expect_open(&b, 0, NULL);
        else expect_open(&b, QL_EFORMAT, "arrays nested more than 8 deep");
    }
    /* general.alignment: zero, not a power of two, a string, too large */
    static const uint32_t k_bad[2] = {0, 48};
    for (int i = 0; i < 2; i++) {
        bb_header(&b, 3, 0, 1);
        bb_str(&b, "general.alignment");
        bb_u32(&b, QL_GGUF_TYPE_UINT32);
        bb_u32(&b, k_bad[i]);
        expect_open(&b, QL_EFORMAT, "key 0 'general.alignment' (at offset 24): alignment");
        expect_open(&b, QL_EFORMAT, "is not a nonzero power of two");
    }
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, QL_GGUF_TYPE_STRING);
    bb_str(&b, "32");
    expect_open(&b, QL_EFORMAT, "alignment has type string");
    bb_header(&b, 3, 0, 1);
    bb_str(&b, "general.alignment");
    bb_u32(&b, QL_GGUF_TYPE_UINT64);
    bb_u64(&b, UINT64_C(1) << 63);
    expect_open(&b, QL_EFORMAT, "alignment is larger than 2^63");
    /* a huge alignment puts the data section past the end: fine without tensors, not with */
    uint64_t ne[1] = {32};
    for (int with_tensor = 0; with_tensor < 2; with_tensor++) {
        bb_header(&b, 3, (uint64_t)with_tensor, 1);
        bb_str(&b, "general.alignment");
        bb_u32(&b, QL_GGUF_TYPE_UINT64);
        bb_u64(&b, UINT64_C(1) << 62);
        if (with_tensor) bb_tensor(&b, "w", 1, ne, QL_DTYPE_F32, 0);
        if (with_tensor) expect_open(&b, QL_EFORMAT, "data section: starts at offset 4611686018427387904, past the end");
        else expect_open(&b, 0, NULL);
    }
}

/* One tensor "w" after the header; `ne`, `type` and `off` vary. */
static void one_tensor(bb_t *b, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off, size_t data) {
    bb_header(b, 3, 1, 0);
    bb_tensor(b, "w", n_dims, ne, type, off);
    bb_pad(b, 32);
    for (size_t i = 0; i < data; i++) bb_u8(b, 0);
}

static void test_open_errors_tensors(void **state) {
    (void)state;
    bb_t b;
    uint64_t ne[5] = {32, 2, 1, 1, 1};
    one_tensor(&b, 2, ne, QL_DTYPE_F32, 0, 256);
    expect_open(&b, 0, NULL);
    one_tensor(&b, 5, ne, QL_DTYPE_F32, 0, 256);
    expect_open(&b, QL_EFORMAT, "tensor 0 'w' (at offset 24): n_dims 5 at offset 33 (must be 1..4)");
    one_tensor(&b, 0, ne, QL_DTYPE_F32, 0, 256);
    expect_open(&b, QL_EFORMAT, "n_dims 0");
    uint64_t zero[2] = {32, 0}, neg[2] = {32, (uint64_t)-3};
    one_tensor(&b, 2, zero, QL_DTYPE_F32, 0, 256);
    expect_open(&b, QL_EFORMAT, "dimension 1 is 0 at offset 45 (must be positive)");
    one_tensor(&b, 2, neg, QL_DTYPE_F32, 0, 256);
    expect_open(&b, QL_EFORMAT, "dimension 1 is -3");
    one_tensor(&b, 2, ne, 99, 0, 256);
    expect_open(&b, QL_EUNSUPPORTED, "unknown or unsupported tensor type 99 at offset 53");
    one_tensor(&b, 2, ne, 4, 0, 256); /* the removed Q4_2 */
    expect_open(&b, QL_EUNSUPPORTED, "unknown or unsupported tensor type 4");
    uint64_t odd[2] = {33, 2};
    one_tensor(&b, 2, odd, QL_DTYPE_Q4_1, 0, 256);
    expect_open(&b, QL_EFORMAT, "row length ne[0] = 33 is not a multiple of q4_1's block size 32");
    uint64_t many[4] = {UINT64_C(1) << 32, UINT64_C(1) << 32, 2, 1};
    one_tensor(&b, 3, many, QL_DTYPE_F32, 0, 0);
    expect_open(&b, QL_EFORMAT, "element count overflows: shape [4294967296, 4294967296, 2, 1]");
    uint64_t wide[2] = {UINT64_C(1) << 31, UINT64_C(1) << 31};
    one_tensor(&b, 2, wide, QL_DTYPE_F64, 0, 0);
    expect_open(&b, QL_EFORMAT, "tensor size overflows: 4611686018427387904 elements of f64");
    one_tensor(&b, 2, ne, QL_DTYPE_F32, 16, 256);
    expect_open(&b, QL_EFORMAT, "data offset 16 is not a multiple of the alignment 32");
    one_tensor(&b, 2, ne, QL_DTYPE_F32, 0, 255);
    expect_open(&b, QL_EFORMAT, "tensor 0 'w' (at offset 24): data [0, +256 bytes) runs past the end of the file (351 bytes; data section at offset 96)");
    one_tensor(&b, 2, ne, QL_DTYPE_F32, UINT64_MAX - 31, 256);
    expect_open(&b, QL_EFORMAT, "runs past the end of the file");
    /* the data section itself past the end */
    bb_header(&b, 3, 1, 0);
    bb_tensor(&b, "w", 2, ne, QL_DTYPE_F32, 0);
    expect_open(&b, QL_EFORMAT, "data section: starts at offset 96, past the end of the file (65 bytes)");
    /* duplicate names */
    bb_header(&b, 3, 2, 0);
    bb_tensor(&b, "w", 1, ne, QL_DTYPE_F32, 0);
    bb_tensor(&b, "w", 1, ne, QL_DTYPE_F32, 128);
    bb_pad(&b, 32);
    for (int i = 0; i < 256; i++) bb_u8(&b, 0);
    expect_open(&b, QL_EFORMAT, "tensor 1 'w' (at offset 57): duplicate tensor name (first at offset 24)");
    /* a hostile name is quoted on one line */
    bb_header(&b, 3, 1, 0);
    uint64_t ne9[9] = {32, 1, 1, 1, 1, 1, 1, 1, 1};
    bb_tensor(&b, "bad\nname\xff", 9, ne9, QL_DTYPE_F32, 0);
    expect_open(&b, QL_EFORMAT, "tensor 0 'bad\\nname\\xFF'");
}

/* Every prefix of a valid file either opens (only when just trailing padding is cut) or
 * fails with QL_EFORMAT: never a crash, never another code. */
static void test_every_prefix(void **state) {
    (void)state;
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    const char *strs[] = {"a", "bb"};
    uint32_t n1[2] = {1, 2};
    ql_gguf_arr_desc_t in[1] = {{QL_GGUF_TYPE_UINT32, n1, 2}};
    ql_gguf_arr_desc_t nested = {QL_GGUF_TYPE_ARRAY, in, 1};
    assert_int_equal(ql_gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(ql_gguf_writer_set_arr_str(w, "s", strs, 2), 0);
    assert_int_equal(ql_gguf_writer_set_arr_desc(w, "n", &nested), 0);
    assert_int_equal(ql_gguf_writer_set_f32(w, "f", 1.0f), 0);
    int64_t ne[2] = {32, 3};
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t0", QL_DTYPE_Q8_0, 2, ne, NULL, NULL), 0);
    assert_int_equal(ql_gguf_writer_add_tensor(w, "t1", QL_DTYPE_F16, 1, ne, NULL, NULL), 0);
    char err[512];
    assert_int_equal(ql_gguf_writer_write(w, tmp_path("p.gguf"), err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    size_t n;
    uint8_t *full = read_all(tmp_path("p.gguf"), &n);
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open_mem(full, n, &g, err, sizeof(err)), 0);
    const ql_gguf_tensor_t *last = ql_gguf_tensor(g, 1);
    uint64_t data_end = ql_gguf_data_offset(g) + last->offset + last->size;
    ql_gguf_free(g);
    for (size_t k = 0; k < n; k++) {
        uint8_t *p = malloc(k ? k : 1); /* exact size, so ASan sees any overread */
        memcpy(p, full, k);
        int rc = ql_gguf_open_mem(p, k, &g, err, sizeof(err));
        if (k < data_end) {
            if (rc != QL_EFORMAT) print_error("prefix %zu: rc %d '%s'\n", k, rc, err);
            assert_int_equal(rc, QL_EFORMAT);
            assert_null(strchr(err, '\n'));
        } else {
            assert_int_equal(rc, 0);
            ql_gguf_free(g);
        }
        free(p);
    }
    free(full);
}

/* ---- display ---- */

static void test_str_escape(void **state) {
    (void)state;
    char buf[64];
    ql_gguf_str_t s = {"a\tb\n\\c\x01", 7};
    assert_string_equal(ql_gguf_str_escape(s, 100, buf, sizeof(buf)), "a\\tb\\n\\\\c\\x01");
    ql_gguf_str_t u = {"\xc4\xa0the\xe2\x82\xac\xff", 9};
    assert_string_equal(ql_gguf_str_escape(u, 100, buf, sizeof(buf)), "\xc4\xa0the\xe2\x82\xac\\xFF");
    ql_gguf_str_t bad = {"\xc0\x80\xed\xa0\x80", 5}; /* overlong NUL, a surrogate */
    assert_string_equal(ql_gguf_str_escape(bad, 100, buf, sizeof(buf)), "\\xC0\\x80\\xED\\xA0\\x80");
    ql_gguf_str_t longs = {"abcdefghij", 10};
    assert_string_equal(ql_gguf_str_escape(longs, 4, buf, sizeof(buf)), "abcd...");
    assert_string_equal(ql_gguf_str_escape(longs, 10, buf, sizeof(buf)), "abcdefghij");
    assert_string_equal(ql_gguf_str_escape(longs, 100, buf, 8), "abcd...");
    ql_gguf_str_t none = {NULL, 0};
    assert_string_equal(ql_gguf_str_escape(none, 10, buf, sizeof(buf)), "");
    assert_true(ql_gguf_str_eq(longs, "abcdefghij"));
    assert_false(ql_gguf_str_eq(longs, "abcdefghi"));
    assert_false(ql_gguf_str_eq(longs, NULL));
    assert_string_equal(ql_gguf_type_name(QL_GGUF_TYPE_FLOAT64), "f64");
    assert_null(ql_gguf_type_name(13));
    assert_null(ql_gguf_type_name(-1));
    assert_int_equal(ql_gguf_type_size(QL_GGUF_TYPE_UINT16), 2);
    assert_int_equal(ql_gguf_type_size(QL_GGUF_TYPE_STRING), 0);
}

/* ---- real files ---- */

static void test_default_model(void **state) {
    (void)state;
    const char *path = ql_test_default_model();
    if (access(path, R_OK) != 0) {
        print_message("skipped: default model %s is absent (run `make model`)\n", path);
        skip();
    }
    char err[512];
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(path, &g, err, sizeof(err)), 0);
    /* facts checked independently with gguf-py's GGUFReader */
    assert_int_equal(ql_gguf_version(g), 3);
    assert_int_equal(ql_gguf_n_kv(g), 33);
    assert_int_equal(ql_gguf_n_tensors(g), 272);
    assert_int_equal(ql_gguf_alignment(g), 32);
    assert_int_equal(ql_gguf_data_offset(g), 1785664);
    ql_gguf_str_t s;
    assert_int_equal(ql_gguf_get_str(g, "general.architecture", &s), 0);
    assert_true(ql_gguf_str_eq(s, "llama"));
    int64_t tok = ql_gguf_find_key(g, "tokenizer.ggml.tokens");
    assert_int_equal(ql_gguf_arr_len(g, tok), 49152);
    assert_int_equal(ql_gguf_arr_str(g, tok, 0, &s), 0);
    assert_true(ql_gguf_str_eq(s, "<|endoftext|>"));
    assert_int_equal(ql_gguf_arr_str(g, tok, 2, &s), 0);
    assert_true(ql_gguf_str_eq(s, "<|im_end|>"));
    int64_t tt = ql_gguf_find_key(g, "tokenizer.ggml.token_type");
    assert_int_equal(ql_gguf_arr_type(g, tt), QL_GGUF_TYPE_INT32);
    int64_t merges = ql_gguf_find_key(g, "tokenizer.ggml.merges");
    assert_int_equal(ql_gguf_arr_len(g, merges), 48900);
    assert_int_equal(ql_gguf_arr_str(g, merges, 48899, &s), 0);
    const ql_gguf_tensor_t *t = ql_gguf_tensor(g, 0);
    assert_true(ql_gguf_str_eq(t->name, "token_embd.weight"));
    assert_int_equal(t->type, QL_DTYPE_Q8_0);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 49152);
    assert_int_equal(t->size, 30081024);
    t = ql_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->offset, 31868992 - 1785664);
    assert_int_equal(t->size, 552960);
    /* the last tensor ends inside the file */
    t = ql_gguf_tensor(g, 271);
    assert_true(ql_gguf_data_offset(g) + t->offset + t->size <= ql_gguf_file_size(g));
    ql_gguf_free(g);
}

static void test_vocab_fixtures(void **state) {
    (void)state;
    static const struct {
        const char *name, *arch, *first;
        uint64_t n_tokens;
    } k_files[] = {
        {"ggml-vocab-gpt-2.gguf", "gpt2", "!", 50257},
        {"ggml-vocab-llama-spm.gguf", "llama", "<unk>", 32000},
        {"ggml-vocab-phi-3.gguf", "phi3", "<unk>", 32064},
        {"ggml-vocab-starcoder.gguf", "starcoder2", "<|endoftext|>", 49152},
        {"ggml-vocab-deepseek-coder.gguf", "llama", "!", 32256},
    };
    int found = 0;
    for (size_t i = 0; i < sizeof(k_files) / sizeof(k_files[0]); i++) {
        char path[512], err[512];
        snprintf(path, sizeof(path), "../shared/fixtures/vocab/%s", k_files[i].name);
        if (access(path, R_OK) != 0) {
            print_message("skipped: %s is absent\n", path);
            continue;
        }
        found++;
        ql_gguf_t *g = NULL;
        if (ql_gguf_open(path, &g, err, sizeof(err)) != 0) {
            print_error("%s\n", err);
            fail();
        }
        assert_int_equal(ql_gguf_version(g), 3);
        assert_int_equal(ql_gguf_n_tensors(g), 0);
        ql_gguf_str_t s;
        assert_int_equal(ql_gguf_get_str(g, "general.architecture", &s), 0);
        assert_true(ql_gguf_str_eq(s, k_files[i].arch));
        int64_t tok = ql_gguf_find_key(g, "tokenizer.ggml.tokens");
        assert_int_equal(ql_gguf_arr_len(g, tok), k_files[i].n_tokens);
        assert_int_equal(ql_gguf_arr_str(g, tok, 0, &s), 0);
        assert_true(ql_gguf_str_eq(s, k_files[i].first));
        /* walk every element of every key through the value API */
        for (int64_t k = 0; k < ql_gguf_n_kv(g); k++) {
            ql_gguf_value_t v, e;
            assert_int_equal(ql_gguf_kv_value(g, k, &v), 0);
            if (v.type != QL_GGUF_TYPE_ARRAY) continue;
            for (uint64_t j = 0; j < v.arr_len; j++) assert_int_equal(ql_gguf_value_elem(&v, j, &e), 0);
            if (v.arr_type == QL_GGUF_TYPE_STRING) {
                ql_gguf_str_t a;
                assert_int_equal(ql_gguf_arr_str(g, k, v.arr_len - 1, &a), 0);
                assert_ptr_equal(a.ptr, e.str.ptr);
            }
        }
        ql_gguf_free(g);
    }
    if (!found) {
        print_message("skipped: no ../shared/fixtures/vocab files\n");
        skip();
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_every_type, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_custom_alignment, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_offsets_layout, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_zero_tensors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_writer_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_getter_errors, setup_dir, teardown_dir),
        cmocka_unit_test_setup_teardown(test_open_errors_files, setup_dir, teardown_dir),
        cmocka_unit_test(test_open_errors_header),
        cmocka_unit_test(test_open_errors_metadata),
        cmocka_unit_test(test_open_errors_tensors),
        cmocka_unit_test_setup_teardown(test_every_prefix, setup_dir, teardown_dir),
        cmocka_unit_test(test_str_escape),
        cmocka_unit_test(test_default_model),
        cmocka_unit_test(test_vocab_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
