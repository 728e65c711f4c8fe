/*
 * tests/fuzz/fuzz-gguf.c — libFuzzer target for the GGUF reader and hyper-parameters.
 *
 * Opens the input with ql_gguf_open_mem, then walks everything the API exposes: every key
 * through the typed getters, every array element (nested ones through the value API),
 * every tensor's bytes, and runs ql_hparams_read + ql_weights_init. Besides the sanitizers'
 * findings it checks the reader's own promises (CHECK): a failed open leaves *out NULL and a
 * one-line message; every view lies inside the input; the name indexes find what the
 * listings hold.
 *
 * Built by QL_FUZZ=ON with clang (`make fuzz`); tests/fuzz/corpus-gguf.c links the same code
 * into a plain ctest driver so the regression corpus runs under every build.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/gguf.h"
#include "model/hparams.h"

#include "fuzz-check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct span_s {
    const uint8_t *lo, *hi; /* the input: every view must lie in [lo, hi] */
} span_t;

static void check_in(const span_t *in, const void *p, uint64_t n) {
    const uint8_t *q = p;
    CHECK(q >= in->lo && q <= in->hi && n <= (uint64_t)(in->hi - q));
}

/* Defeats the optimizer so every byte read really happens. */
static volatile uint8_t g_sink;

static void touch(const span_t *in, const void *p, uint64_t n) {
    check_in(in, p, n);
    if (n == 0) return;
    const uint8_t *q = p;
    g_sink ^= q[0];
    g_sink ^= q[n - 1];
}

static void walk_value(const span_t *in, ql_gguf_value_t *v, int depth) {
    CHECK(depth < QL_GGUF_MAX_ARRAY_DEPTH + 1);
    int64_t i;
    double d;
    switch (v->type) {
    case QL_GGUF_TYPE_STRING:
        touch(in, v->str.ptr, v->str.len);
        return;
    case QL_GGUF_TYPE_ARRAY: {
        check_in(in, v->data, 0);
        ql_gguf_value_t e;
        for (uint64_t j = 0; j < v->arr_len; j++) {
            CHECK(ql_gguf_value_elem(v, j, &e) == 0);
            CHECK(e.type == v->arr_type);
            walk_value(in, &e, depth + 1);
        }
        CHECK(ql_gguf_value_elem(v, v->arr_len, &e) == QL_EINVAL);
        /* random access backwards, on short arrays (each step may walk from the start) */
        for (uint64_t j = QL_MIN(v->arr_len, 8); j-- > 0;) CHECK(ql_gguf_value_elem(v, j, &e) == 0);
        return;
    }
    default:
        touch(in, v->data, ql_gguf_type_size(v->type));
        CHECK(ql_gguf_value_f64(v, &d) == 0);
        int rc = ql_gguf_value_i64(v, &i);
        CHECK(rc == 0 || rc == QL_EFORMAT || rc == QL_ERANGE);
        return;
    }
}

static void walk_kv(const span_t *in, const ql_gguf_t *g, int64_t k) {
    ql_gguf_str_t key = ql_gguf_key(g, k);
    touch(in, key.ptr, key.len);
    char name[256], esc[64 * 4 + 8];
    ql_gguf_str_escape(key, 64, esc, sizeof(esc));
    CHECK(strchr(esc, '\n') == NULL);
    /* keys without a NUL byte can be looked up by name, and find themselves */
    if (key.len < sizeof(name) && !memchr(key.ptr, '\0', key.len)) {
        memcpy(name, key.ptr, key.len);
        name[key.len] = '\0';
        CHECK(ql_gguf_find_key(g, name) == k);
        uint32_t u;
        int64_t i;
        float f;
        int b;
        ql_gguf_str_t s;
        (void)ql_gguf_get_u32(g, name, &u);
        (void)ql_gguf_get_i64(g, name, &i);
        (void)ql_gguf_get_f32(g, name, &f);
        (void)ql_gguf_get_bool(g, name, &b);
        if (ql_gguf_get_str(g, name, &s) == 0) touch(in, s.ptr, s.len);
    }
    ql_gguf_value_t v;
    CHECK(ql_gguf_kv_value(g, k, &v) == 0);
    CHECK(v.type == ql_gguf_kv_type(g, k));
    walk_value(in, &v, 0);
    if (v.type != QL_GGUF_TYPE_ARRAY) return;
    CHECK(v.arr_type == ql_gguf_arr_type(g, k) && v.arr_len == ql_gguf_arr_len(g, k));
    uint64_t n = ql_gguf_arr_len(g, k);
    for (uint64_t j = 0; j < n; j++) {
        int64_t i;
        double d;
        ql_gguf_str_t s;
        if (v.arr_type == QL_GGUF_TYPE_STRING) {
            CHECK(ql_gguf_arr_str(g, k, j, &s) == 0);
            touch(in, s.ptr, s.len);
        } else if (v.arr_type != QL_GGUF_TYPE_ARRAY) {
            (void)ql_gguf_arr_i64(g, k, j, &i);
            CHECK(ql_gguf_arr_f64(g, k, j, &d) == 0);
        }
    }
    if (v.arr_type != QL_GGUF_TYPE_STRING && v.arr_type != QL_GGUF_TYPE_ARRAY)
        touch(in, ql_gguf_arr_data(g, k), n * ql_gguf_type_size(v.arr_type));
}

static void walk_tensors(const span_t *in, const ql_gguf_t *g) {
    uint64_t align = ql_gguf_alignment(g);
    CHECK(align > 0 && (align & (align - 1)) == 0);
    CHECK(ql_gguf_data_offset(g) % align == 0);
    for (int64_t i = 0; i < ql_gguf_n_tensors(g); i++) {
        const ql_gguf_tensor_t *t = ql_gguf_tensor(g, i);
        CHECK(t != NULL);
        touch(in, t->name.ptr, t->name.len);
        CHECK(t->n_dims >= 1 && t->n_dims <= QL_GGUF_MAX_DIMS);
        for (int d = 0; d < QL_GGUF_MAX_DIMS; d++) CHECK(t->ne[d] > 0);
        CHECK(t->offset % align == 0);
        CHECK(ql_dtype_name(t->type) != NULL);
        touch(in, t->data, t->size);
        CHECK((const uint8_t *)t->data == in->lo + ql_gguf_data_offset(g) + t->offset);
        char name[256];
        if (t->name.len < sizeof(name) && !memchr(t->name.ptr, '\0', t->name.len)) {
            memcpy(name, t->name.ptr, t->name.len);
            name[t->name.len] = '\0';
            CHECK(ql_gguf_find_tensor(g, name) == t);
        }
    }
    CHECK(ql_gguf_tensor(g, ql_gguf_n_tensors(g)) == NULL);
}

static void walk_hparams(const ql_gguf_t *g) {
    ql_hparams_t hp;
    ql_weights_t w;
    char err[512], sum[QL_HPARAMS_SUMMARY_MAX];
    err[0] = 'x';
    int rc = ql_hparams_read(g, &hp, err, sizeof(err));
    if (rc != 0) {
        CHECK(rc == QL_EFORMAT || rc == QL_EUNSUPPORTED);
        CHECK(err[0] != '\0' && strchr(err, '\n') == NULL);
        return;
    }
    ql_hparams_summary(&hp, sum, sizeof(sum));
    CHECK(hp.n_head % hp.n_head_kv == 0 && hp.head_dim > 0 && hp.n_vocab > 0);
    rc = ql_weights_init(g, &hp, &w, err, sizeof(err));
    if (rc != 0) {
        CHECK(rc == QL_EFORMAT || rc == QL_EUNSUPPORTED);
        CHECK(err[0] != '\0' && strchr(err, '\n') == NULL);
        return;
    }
    CHECK(w.n_layer == hp.n_layer && w.token_embd && w.output_norm);
    for (uint32_t il = 0; il < w.n_layer; il++) CHECK(w.layers[il].ffn_down->ne[1] == hp.n_embd);
    ql_weights_free(&w);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ql_gguf_t *g = (ql_gguf_t *)&g_sink; /* must come back NULL on failure */
    char err[512];
    err[0] = 'x';
    int rc = ql_gguf_open_mem(data, size, &g, err, sizeof(err));
    if (rc != 0) {
        CHECK(g == NULL);
        CHECK(rc == QL_EFORMAT || rc == QL_EUNSUPPORTED || rc == QL_ENOMEM);
        CHECK(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0' && strchr(err, '\n') == NULL);
        return 0;
    }
    span_t in = {data, data + size};
    CHECK(ql_gguf_file_size(g) == size);
    CHECK(ql_gguf_version(g) == 2 || ql_gguf_version(g) == 3);
    for (int64_t k = 0; k < ql_gguf_n_kv(g); k++) walk_kv(&in, g, k);
    CHECK(ql_gguf_key(g, ql_gguf_n_kv(g)).ptr == NULL);
    walk_tensors(&in, g);
    walk_hparams(g);
    ql_gguf_free(g);
    return 0;
}
