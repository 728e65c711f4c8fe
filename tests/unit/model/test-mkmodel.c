/*
 * tests/unit/model/test-mkmodel.c — model/mkmodel.h through the GGUF reader: every named
 * shape (and a Qwen2 shape built field by field) is written and read back, and its metadata
 * (every key, in order, with its type and value) and its whole tensor table (names, dims,
 * types, sizes, alignment) compared with what this file expects; the data in the file is
 * what ql_mkmodel_tensor_data generates; same seed gives the same bytes, another seed other
 * bytes; weights have plausible statistics; the vocabulary is a consistent byte-level BPE;
 * shape fields and types are refused with lines naming them.
 *
 * NOTE(mkmodel-large): llama-3.2-1b is written in q4_0 (0.8 GB, a few seconds) on every run;
 * llama-3.1-8b (5 GB in q4_0, ~30 s) only with QL_TEST_LARGE=1. Without it the 8B shape's
 * declared table is still checked (tensor count and data bytes against this file's own
 * expectation, the rope_freqs values), and its metadata path is the one the other shapes
 * exercise through the reader. Files go to $TMPDIR (default /tmp) and are deleted.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/chat.h"
#include "model/gguf.h"
#include "model/mkmodel.h"
#include "model/quant.h"

static char g_err[1024];

static void tmp_path(char *buf, size_t n, const char *tag) {
    const char *dir = getenv("TMPDIR");
    snprintf(buf, n, "%s/ql-test-mkmodel-%ld-%s.gguf", dir && *dir ? dir : "/tmp", (long)getpid(), tag);
}

static double now_s(void) { return (double)ql_time_ns() * 1e-9; }

static ql_mkmodel_t *make(const ql_mkmodel_shape_t *s, ql_dtype_t wtype, uint64_t seed) {
    ql_mkmodel_params_t p = {.shape = *s, .seed = seed, .wtype = wtype};
    ql_mkmodel_t *m = NULL;
    int rc = ql_mkmodel_init(&p, &m, g_err, sizeof(g_err));
    if (rc != 0) fail_msg("ql_mkmodel_init(%s, %s): %d %s", s->name, ql_dtype_name(wtype), rc, g_err);
    return m;
}

static ql_mkmodel_shape_t named(const char *name) {
    ql_mkmodel_shape_t s;
    assert_int_equal(ql_mkmodel_shape_get(name, &s), 0);
    return s;
}

/* ---- shapes, fields, types ---- */

static void test_named_shapes(void **state) {
    (void)state;
    static const struct {
        const char *name;
        int64_t n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab;
        float rope_base;
        int tied;
        float rope_factor;
    } k[] = {
        {"tiny", 2, 64, 4, 2, 128, 512, 10000.0f, 1, 0.0f},
        {"smollm2-135m", 30, 576, 9, 3, 1536, 49152, 100000.0f, 1, 0.0f},
        {"llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, 500000.0f, 1, 32.0f},
        {"llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 500000.0f, 0, 8.0f},
    };
    for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++) {
        ql_mkmodel_shape_t s = named(k[i].name);
        assert_string_equal(s.name, k[i].name);
        assert_int_equal(s.arch, QL_MKMODEL_ARCH_LLAMA);
        assert_int_equal(s.n_layer, k[i].n_layer);
        assert_int_equal(s.n_embd, k[i].n_embd);
        assert_int_equal(s.n_head, k[i].n_head);
        assert_int_equal(s.n_head_kv, k[i].n_head_kv);
        assert_int_equal(s.n_ff, k[i].n_ff);
        assert_int_equal(s.n_vocab, k[i].n_vocab);
        assert_true(s.rope_freq_base == k[i].rope_base);
        assert_true(s.rms_eps == 1e-5f);
        assert_int_equal(s.tied, k[i].tied);
        assert_true(s.rope_scaling_factor == k[i].rope_factor);
        if (k[i].rope_factor != 0.0f) assert_int_equal(s.rope_scaling_orig_ctx, 8192);
        assert_non_null(strstr(ql_mkmodel_shape_names(), k[i].name));
        for (size_t t = 0; t < 8; t++) {
            static const ql_dtype_t types[8] = {QL_DTYPE_F32,  QL_DTYPE_F16,  QL_DTYPE_BF16, QL_DTYPE_Q8_0,
                                                QL_DTYPE_Q4_0, QL_DTYPE_Q4_1, QL_DTYPE_Q5_0, QL_DTYPE_Q5_1};
            assert_int_equal(ql_mkmodel_shape_check(&s, types[t], g_err, sizeof(g_err)), 0);
        }
    }
    ql_mkmodel_shape_t s;
    assert_int_equal(ql_mkmodel_shape_get("llama-7b", &s), QL_ENOENT);
    assert_int_equal(ql_mkmodel_shape_get(NULL, &s), QL_EINVAL);
}

static void expect_err(int rc, int want, const char *must1, const char *must2) {
    if (rc != want) fail_msg("rc %d, expected %d (%s)", rc, want, g_err);
    if (must1 && !strstr(g_err, must1)) fail_msg("'%s' lacks '%s'", g_err, must1);
    if (must2 && !strstr(g_err, must2)) fail_msg("'%s' lacks '%s'", g_err, must2);
}

static void test_shape_fields(void **state) {
    (void)state;
    ql_mkmodel_shape_t s;
    ql_mkmodel_shape_blank(&s);
    /* a blank shape lacks its sizes, and says which */
    expect_err(ql_mkmodel_shape_check(&s, QL_DTYPE_F16, g_err, sizeof(g_err)), QL_EINVAL, "'n_layer'", "missing");
    assert_int_equal(ql_mkmodel_shape_set_num(&s, "n_layer", 3, g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_num(&s, "n_embd", 96, g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_num(&s, "n_head", 6, g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_num(&s, "n_ff", 176, g_err, sizeof(g_err)), 0);
    expect_err(ql_mkmodel_shape_check(&s, QL_DTYPE_F16, g_err, sizeof(g_err)), QL_EINVAL, "'n_vocab'", "missing");
    assert_int_equal(ql_mkmodel_shape_set_num(&s, "n_vocab", 300, g_err, sizeof(g_err)), 0);
    /* n_head_kv left out: one KV head per head */
    assert_int_equal(ql_mkmodel_shape_check(&s, QL_DTYPE_F16, g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_num(&s, "rope_freq_base", 1e6, g_err, sizeof(g_err)), 0);
    assert_true(s.rope_freq_base == 1e6f);
    assert_int_equal(ql_mkmodel_shape_set_bool(&s, "tied", 0, g_err, sizeof(g_err)), 0);
    assert_int_equal(s.tied, 0);
    /* each bool field is its own (YaRN without a factor is refused by the check) */
    assert_int_equal(ql_mkmodel_shape_set_bool(&s, "rope_scaling_yarn", 1, g_err, sizeof(g_err)), 0);
    assert_int_equal(s.rope_scaling_yarn, 1);
    assert_int_equal(s.tied, 0);
    expect_err(ql_mkmodel_shape_check(&s, QL_DTYPE_F16, g_err, sizeof(g_err)), QL_EINVAL, "'rope_scaling_yarn'",
               "rope_scaling_factor");
    assert_int_equal(ql_mkmodel_shape_set_bool(&s, "rope_scaling_yarn", 0, g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_str(&s, "arch", "qwen2", g_err, sizeof(g_err)), 0);
    assert_int_equal(s.arch, QL_MKMODEL_ARCH_QWEN2);
    assert_int_equal(ql_mkmodel_shape_set_str(&s, "name", "mine", g_err, sizeof(g_err)), 0);
    assert_string_equal(s.name, "mine");

    /* refusals name the field */
    expect_err(ql_mkmodel_shape_set_num(&s, "n_layers", 3, g_err, sizeof(g_err)), QL_ENOENT, "'n_layers'", "n_layer, n_embd");
    expect_err(ql_mkmodel_shape_set_num(&s, "n_layer", 2.5, g_err, sizeof(g_err)), QL_EINVAL, "'n_layer'", "not an integer");
    expect_err(ql_mkmodel_shape_set_num(&s, "n_vocab", 100, g_err, sizeof(g_err)), QL_EINVAL, "'n_vocab'", "259");
    expect_err(ql_mkmodel_shape_set_num(&s, "n_embd", -64, g_err, sizeof(g_err)), QL_EINVAL, "'n_embd'", "outside");
    expect_err(ql_mkmodel_shape_set_num(&s, "rms_eps", NAN, g_err, sizeof(g_err)), QL_EINVAL, "'rms_eps'", NULL);
    expect_err(ql_mkmodel_shape_set_num(&s, "tied", 1, g_err, sizeof(g_err)), QL_EINVAL, "'tied'", "true or false");
    expect_err(ql_mkmodel_shape_set_str(&s, "n_embd", "64", g_err, sizeof(g_err)), QL_EINVAL, "'n_embd'", "integer");
    expect_err(ql_mkmodel_shape_set_str(&s, "arch", "gpt2", g_err, sizeof(g_err)), QL_EINVAL, "'arch'", "llama, qwen2, qwen3");
    expect_err(ql_mkmodel_shape_set_bool(&s, "arch", 1, g_err, sizeof(g_err)), QL_EINVAL, "'arch'", NULL);
    expect_err(ql_mkmodel_shape_set_str(&s, "name", "", g_err, sizeof(g_err)), QL_EINVAL, "'name'", NULL);
    assert_int_equal(s.n_layer, 3); /* refused values change nothing */
    assert_int_equal(s.n_vocab, 300);

    /* consistency between fields */
    ql_mkmodel_shape_t t = s;
    t.n_head = 5;
    expect_err(ql_mkmodel_shape_check(&t, QL_DTYPE_F16, g_err, sizeof(g_err)), QL_EINVAL, "'n_embd'", "n_head");
    t = s;
    t.n_head = 32; /* head size 3: odd */
    expect_err(ql_mkmodel_shape_check(&t, QL_DTYPE_F16, g_err, sizeof(g_err)), QL_EINVAL, "'n_embd'", "even");
    t = s;
    t.n_head_kv = 4;
    expect_err(ql_mkmodel_shape_check(&t, QL_DTYPE_F16, g_err, sizeof(g_err)), QL_EINVAL, "'n_head'", "n_head_kv");
    t = s;
    expect_err(ql_mkmodel_shape_check(&t, QL_DTYPE_Q4_0, g_err, sizeof(g_err)), QL_EINVAL, "'n_ff'", "block of 32");
    t.n_ff = 192;
    assert_int_equal(ql_mkmodel_shape_check(&t, QL_DTYPE_Q4_0, g_err, sizeof(g_err)), 0);
    t.n_embd = 48, t.n_head = 4;
    expect_err(ql_mkmodel_shape_check(&t, QL_DTYPE_Q8_0, g_err, sizeof(g_err)), QL_EINVAL, "'n_embd'", "block of 32");
    assert_int_equal(ql_mkmodel_shape_check(&t, QL_DTYPE_BF16, g_err, sizeof(g_err)), 0);
    t = s;
    t.rope_scaling_factor = 4;
    expect_err(ql_mkmodel_shape_check(&t, QL_DTYPE_F16, g_err, sizeof(g_err)), QL_EINVAL, "rope_scaling", NULL);
}

static void test_types(void **state) {
    (void)state;
    static const char *const ok[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        ql_dtype_t t;
        assert_int_equal(ql_mkmodel_type_parse(ok[i], &t), 0);
        assert_string_equal(ql_dtype_name(t), ok[i]);
        assert_non_null(strstr(ql_mkmodel_type_names(), ok[i]));
        assert_int_equal(ql_mkmodel_embd_type(t), ql_dtype_block_elems(t) > 1 ? QL_DTYPE_Q8_0 : t);
    }
    ql_dtype_t t = QL_DTYPE_F16;
    assert_int_equal(ql_mkmodel_type_parse("q4_K", &t), QL_EINVAL);
    assert_int_equal(ql_mkmodel_type_parse("i8", &t), QL_EINVAL);
    assert_int_equal(ql_mkmodel_type_parse("fp16", &t), QL_EINVAL);
    assert_int_equal(t, QL_DTYPE_F16);

    ql_mkmodel_params_t p = {.shape = named("tiny"), .wtype = QL_DTYPE_Q4_K};
    ql_mkmodel_t *m = (ql_mkmodel_t *)&p;
    expect_err(ql_mkmodel_init(&p, &m, g_err, sizeof(g_err)), QL_EINVAL, "q4_K", "q4_0, q4_1");
    assert_null(m);
}

/* ---- the expected file ---- */

typedef struct want_tensor_s {
    char name[64];
    int n_dims;
    int64_t ne[2];
    ql_dtype_t type;
} want_tensor_t;

/* The tensor table as llama.cpp names and shapes it (ne[0] = input features), written out
 * here independently of mkmodel.c. */
static int64_t expected_tensors(const ql_mkmodel_shape_t *s, ql_dtype_t wt, want_tensor_t *out) {
    int64_t n = 0, hd = s->n_embd / s->n_head, kv = s->n_head_kv * hd;
    ql_dtype_t et = ql_dtype_block_elems(wt) > 1 ? QL_DTYPE_Q8_0 : wt;
#define T(nm, nd, a, b, ty)                                                                                \
    do {                                                                                                   \
        if (out) out[n] = (want_tensor_t){.n_dims = (nd), .ne = {(a), (b)}, .type = (ty)};                 \
        if (out) snprintf(out[n].name, sizeof(out[n].name), "%s", (nm));                                   \
        n++;                                                                                               \
    } while (0)
    if (s->rope_scaling_factor != 0) T("rope_freqs.weight", 1, hd / 2, 1, QL_DTYPE_F32);
    T("token_embd.weight", 2, s->n_embd, s->n_vocab, et);
    for (int64_t l = 0; l < s->n_layer; l++) {
        char b[64];
#define L(suffix, nd, a, bb, ty)                                    \
    do {                                                            \
        snprintf(b, sizeof(b), "blk.%lld." suffix, (long long)l);   \
        T(b, nd, a, bb, ty);                                        \
    } while (0)
        L("attn_norm.weight", 1, s->n_embd, 1, QL_DTYPE_F32);
        L("attn_q.weight", 2, s->n_embd, s->n_embd, wt);
        if (s->arch == QL_MKMODEL_ARCH_QWEN2) L("attn_q.bias", 1, s->n_embd, 1, QL_DTYPE_F32);
        L("attn_k.weight", 2, s->n_embd, kv, wt);
        if (s->arch == QL_MKMODEL_ARCH_QWEN2) L("attn_k.bias", 1, kv, 1, QL_DTYPE_F32);
        L("attn_v.weight", 2, s->n_embd, kv, wt);
        if (s->arch == QL_MKMODEL_ARCH_QWEN2) L("attn_v.bias", 1, kv, 1, QL_DTYPE_F32);
        L("attn_output.weight", 2, s->n_embd, s->n_embd, wt);
        L("ffn_norm.weight", 1, s->n_embd, 1, QL_DTYPE_F32);
        L("ffn_gate.weight", 2, s->n_embd, s->n_ff, wt);
        L("ffn_up.weight", 2, s->n_embd, s->n_ff, wt);
        L("ffn_down.weight", 2, s->n_ff, s->n_embd, wt);
#undef L
    }
    T("output_norm.weight", 1, s->n_embd, 1, QL_DTYPE_F32);
    if (!s->tied) T("output.weight", 2, s->n_embd, s->n_vocab, et);
#undef T
    return n;
}

static uint64_t tensor_bytes(const want_tensor_t *t) {
    size_t row;
    assert_int_equal(ql_dtype_row_bytes(t->type, t->ne[0], &row), 0);
    return (uint64_t)row * (uint64_t)t->ne[1];
}

static void check_u32(const ql_gguf_t *g, const char *key, uint32_t want) {
    uint32_t v = 0;
    int64_t i = ql_gguf_find_key(g, key);
    if (i < 0) fail_msg("no key %s", key);
    if (ql_gguf_kv_type(g, i) != QL_GGUF_TYPE_UINT32) fail_msg("%s is not a u32", key);
    assert_int_equal(ql_gguf_get_u32(g, key, &v), 0);
    if (v != want) fail_msg("%s = %u, expected %u", key, v, want);
}

static void check_f32(const ql_gguf_t *g, const char *key, float want) {
    float v = 0;
    int64_t i = ql_gguf_find_key(g, key);
    if (i < 0) fail_msg("no key %s", key);
    if (ql_gguf_kv_type(g, i) != QL_GGUF_TYPE_FLOAT32) fail_msg("%s is not an f32", key);
    assert_int_equal(ql_gguf_get_f32(g, key, &v), 0);
    if (v != want) fail_msg("%s = %g, expected %g", key, (double)v, (double)want);
}

static void check_str(const ql_gguf_t *g, const char *key, const char *want) {
    ql_gguf_str_t v;
    int64_t i = ql_gguf_find_key(g, key);
    if (i < 0) fail_msg("no key %s", key);
    if (ql_gguf_kv_type(g, i) != QL_GGUF_TYPE_STRING) fail_msg("%s is not a string", key);
    assert_int_equal(ql_gguf_get_str(g, key, &v), 0);
    if (want && !ql_gguf_str_eq(v, want)) fail_msg("%s = '%.*s', expected '%s'", key, (int)v.len, v.ptr, want);
}

/* GPT-2's byte -> code point map, written out from its definition (printable bytes are
 * themselves; the rest, in byte order, are U+0100, U+0101, ...). */
static uint32_t gpt2_cp(int b) {
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    if (printable) return (uint32_t)b;
    int n = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= 33 && c <= 126) || (c >= 161 && c <= 172) || (c >= 174 && c <= 255))) n++;
    return 256u + (uint32_t)n;
}

static int str_cmp(const void *a, const void *b) {
    const ql_gguf_str_t *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->ptr, y->ptr, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

/* The vocabulary is a consistent byte-level BPE: control tokens, the 256 byte tokens in
 * GPT-2's order, merged tokens each made by a merge of two earlier tokens, then padding. */
static void check_vocab(const ql_gguf_t *g, const ql_mkmodel_shape_t *s, int64_t n_merges_expected) {
    int64_t kt = ql_gguf_find_key(g, "tokenizer.ggml.tokens"), ky = ql_gguf_find_key(g, "tokenizer.ggml.token_type");
    int64_t km = ql_gguf_find_key(g, "tokenizer.ggml.merges");
    assert_true(kt >= 0 && ky >= 0 && km >= 0);
    assert_int_equal(ql_gguf_arr_type(g, kt), QL_GGUF_TYPE_STRING);
    assert_int_equal(ql_gguf_arr_type(g, ky), QL_GGUF_TYPE_INT32);
    assert_int_equal(ql_gguf_arr_type(g, km), QL_GGUF_TYPE_STRING);
    uint64_t n = ql_gguf_arr_len(g, kt);
    assert_int_equal(n, (uint64_t)s->n_vocab);
    assert_int_equal(ql_gguf_arr_len(g, ky), n);
    uint64_t n_merges = ql_gguf_arr_len(g, km);
    assert_int_equal(n_merges, (uint64_t)n_merges_expected);
    assert_true(n_merges <= QL_MKMODEL_MERGES_MAX);

    ql_gguf_str_t *tok = calloc(n, sizeof(*tok));
    int64_t *type = calloc(n, sizeof(*type));
    assert_non_null(tok);
    assert_non_null(type);
    for (uint64_t i = 0; i < n; i++) {
        assert_int_equal(ql_gguf_arr_str(g, kt, i, &tok[i]), 0);
        assert_int_equal(ql_gguf_arr_i64(g, ky, i, &type[i]), 0);
    }
    assert_true(ql_gguf_str_eq(tok[0], "<|endoftext|>") && type[0] == 3);
    assert_true(ql_gguf_str_eq(tok[1], "<|im_start|>") && type[1] == 3);
    assert_true(ql_gguf_str_eq(tok[2], "<|im_end|>") && type[2] == 3);
    /* hand-checked anchors: '!' (byte 33) is the first byte token; '\n' (byte 10) is U+010A
     * "Ċ" at 3 + 188 printable bytes + 10; ' ' (byte 32) is U+0120 "Ġ" at 3 + 188 + 32 */
    assert_true(ql_gguf_str_eq(tok[3], "!"));
    assert_true(ql_gguf_str_eq(tok[201], "\xc4\x8a"));
    assert_true(ql_gguf_str_eq(tok[223], "\xc4\xa0"));
    int seen[256] = {0};
    for (int i = 3; i < 259; i++) {
        assert_int_equal(type[i], 1);
        for (int b = 0; b < 256; b++) {
            uint32_t cp = gpt2_cp(b);
            char u[3] = {0};
            if (cp < 0x80) u[0] = (char)cp;
            else u[0] = (char)(0xc0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 0x3f));
            if (ql_gguf_str_eq(tok[i], u)) seen[b]++;
        }
    }
    for (int b = 0; b < 256; b++) assert_int_equal(seen[b], 1);
    /* merged tokens are normal; padding is <|unused_K|> with type 5, K counting from 0 */
    uint64_t n_used = 259;
    while (n_used < n && type[n_used] == 1) n_used++;
    assert_true(n_used - 259 <= n_merges);
    for (uint64_t i = n_used; i < n; i++) {
        char want[48];
        snprintf(want, sizeof(want), "<|unused_%llu|>", (unsigned long long)(i - n_used));
        if (!ql_gguf_str_eq(tok[i], want) || type[i] != 5) fail_msg("token %llu is not %s/unused", (unsigned long long)i, want);
    }
    /* every merge "A B": A, B and AB are used tokens */
    for (uint64_t j = 0; j < n_merges; j++) {
        ql_gguf_str_t mg;
        assert_int_equal(ql_gguf_arr_str(g, km, j, &mg), 0);
        const char *sp = memchr(mg.ptr, ' ', mg.len);
        assert_non_null(sp);
        ql_gguf_str_t a = {mg.ptr, (uint64_t)(sp - mg.ptr)}, b = {sp + 1, mg.len - a.len - 1};
        assert_null(memchr(b.ptr, ' ', b.len));
        int fa = 0, fb = 0, fab = 0;
        for (uint64_t i = 3; i < n_used; i++) {
            fa |= str_cmp(&tok[i], &a) == 0;
            fb |= str_cmp(&tok[i], &b) == 0;
            fab |= tok[i].len == a.len + b.len && memcmp(tok[i].ptr, a.ptr, a.len) == 0 &&
                   memcmp(tok[i].ptr + a.len, b.ptr, b.len) == 0;
        }
        if (!fa || !fb || !fab) fail_msg("merge %llu '%.*s' has a part or result missing", (unsigned long long)j, (int)mg.len, mg.ptr);
    }
    /* no token text twice */
    qsort(tok, n, sizeof(*tok), str_cmp);
    for (uint64_t i = 1; i < n; i++)
        if (str_cmp(&tok[i - 1], &tok[i]) == 0) fail_msg("token '%.*s' appears twice", (int)tok[i].len, tok[i].ptr);
    free(tok);
    free(type);
}

/* Reads `path` back and compares every key (in file order) and the whole tensor table with
 * the expectation for shape `s`; with `m`, also every tensor's bytes. */
static void check_file(const char *path, const ql_mkmodel_shape_t *s, ql_dtype_t wt, const ql_mkmodel_t *m,
                       int64_t n_merges) {
    ql_gguf_t *g = NULL;
    int rc = ql_gguf_open(path, &g, g_err, sizeof(g_err));
    if (rc != 0) fail_msg("ql_gguf_open(%s): %s", path, g_err);
    assert_int_equal(ql_gguf_version(g), 3);
    assert_int_equal(ql_gguf_alignment(g), 32);
    const char *a = s->arch == QL_MKMODEL_ARCH_QWEN2 ? "qwen2" : "llama";
    char name[96];
    snprintf(name, sizeof(name), "quill-random %s", s->name);
    static const uint32_t ftype[] = {[QL_DTYPE_F32] = 0,  [QL_DTYPE_F16] = 1,  [QL_DTYPE_Q4_0] = 2,
                                     [QL_DTYPE_Q4_1] = 3, [QL_DTYPE_Q8_0] = 7, [QL_DTYPE_Q5_0] = 8,
                                     [QL_DTYPE_Q5_1] = 9, [QL_DTYPE_BF16] = 32};
    /* every key, in the order llama.cpp's convert writes them */
    const char *keys[40];
    int nk = 0;
    char arch_keys[12][80];
    static const char *const arch_suffix[] = {"block_count", "context_length", "embedding_length",
                                              "feed_forward_length", "attention.head_count",
                                              "attention.head_count_kv", "rope.freq_base",
                                              "attention.layer_norm_rms_epsilon", "vocab_size",
                                              "rope.dimension_count"};
    for (int i = 0; i < 10; i++) snprintf(arch_keys[i], sizeof(arch_keys[i]), "%s.%s", a, arch_suffix[i]);
    keys[nk++] = "general.architecture";
    keys[nk++] = "general.type";
    keys[nk++] = "general.name";
    for (int i = 0; i < 8; i++) keys[nk++] = arch_keys[i];
    keys[nk++] = "general.file_type";
    keys[nk++] = arch_keys[8];
    if (s->arch == QL_MKMODEL_ARCH_LLAMA) keys[nk++] = arch_keys[9];
    static const char *const tail[] = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens",
                                       "tokenizer.ggml.token_type", "tokenizer.ggml.merges",
                                       "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                       "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
                                       "tokenizer.ggml.add_bos_token", "tokenizer.chat_template",
                                       "general.quantization_version", "general.alignment"};
    for (size_t i = 0; i < sizeof(tail) / sizeof(tail[0]); i++) keys[nk++] = tail[i];
    assert_int_equal(ql_gguf_n_kv(g), nk);
    for (int i = 0; i < nk; i++)
        if (!ql_gguf_str_eq(ql_gguf_key(g, i), keys[i]))
            fail_msg("key %d is '%.*s', expected '%s'", i, (int)ql_gguf_key(g, i).len, ql_gguf_key(g, i).ptr, keys[i]);
    check_str(g, "general.architecture", a);
    check_str(g, "general.type", "model");
    check_str(g, "general.name", name);
    check_u32(g, arch_keys[0], (uint32_t)s->n_layer);
    check_u32(g, arch_keys[1], (uint32_t)s->n_ctx);
    check_u32(g, arch_keys[2], (uint32_t)s->n_embd);
    check_u32(g, arch_keys[3], (uint32_t)s->n_ff);
    check_u32(g, arch_keys[4], (uint32_t)s->n_head);
    check_u32(g, arch_keys[5], (uint32_t)(s->n_head_kv ? s->n_head_kv : s->n_head));
    check_f32(g, arch_keys[6], s->rope_freq_base);
    check_f32(g, arch_keys[7], s->rms_eps);
    check_u32(g, "general.file_type", ftype[wt]);
    check_u32(g, arch_keys[8], (uint32_t)s->n_vocab);
    if (s->arch == QL_MKMODEL_ARCH_LLAMA) check_u32(g, arch_keys[9], (uint32_t)(s->n_embd / s->n_head));
    check_str(g, "tokenizer.ggml.model", "gpt2");
    check_str(g, "tokenizer.ggml.pre", "smollm");
    check_u32(g, "tokenizer.ggml.bos_token_id", 1);
    check_u32(g, "tokenizer.ggml.eos_token_id", 2);
    check_u32(g, "tokenizer.ggml.unknown_token_id", 0);
    check_u32(g, "tokenizer.ggml.padding_token_id", 2);
    int b = 1;
    assert_int_equal(ql_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), 0);
    assert_int_equal(b, 0);
    check_str(g, "tokenizer.chat_template", NULL);
    ql_gguf_str_t tmpl;
    assert_int_equal(ql_gguf_get_str(g, "tokenizer.chat_template", &tmpl), 0);
    assert_int_equal(ql_chat_detect(tmpl.ptr, (size_t)tmpl.len), QL_CHAT_FORMAT_CHATML);
    check_u32(g, "general.quantization_version", 2);
    check_u32(g, "general.alignment", 32);
    check_vocab(g, s, n_merges);

    /* the tensor table */
    int64_t n_want = expected_tensors(s, wt, NULL);
    want_tensor_t *want = calloc((size_t)n_want, sizeof(*want));
    assert_non_null(want);
    expected_tensors(s, wt, want);
    assert_int_equal(ql_gguf_n_tensors(g), n_want);
    uint64_t next = 0;
    for (int64_t i = 0; i < n_want; i++) {
        const ql_gguf_tensor_t *t = ql_gguf_tensor(g, i);
        if (!ql_gguf_str_eq(t->name, want[i].name))
            fail_msg("tensor %lld is '%.*s', expected '%s'", (long long)i, (int)t->name.len, t->name.ptr, want[i].name);
        if (t->n_dims != want[i].n_dims || t->ne[0] != want[i].ne[0] || (t->n_dims > 1 && t->ne[1] != want[i].ne[1]) ||
            t->type != want[i].type)
            fail_msg("%s: %d dims [%lld, %lld] %s, expected %d [%lld, %lld] %s", want[i].name, t->n_dims,
                     (long long)t->ne[0], (long long)t->ne[1], ql_dtype_name(t->type), want[i].n_dims,
                     (long long)want[i].ne[0], (long long)want[i].ne[1], ql_dtype_name(want[i].type));
        assert_int_equal(t->size, tensor_bytes(&want[i]));
        assert_int_equal(t->offset % 32, 0);
        assert_true(t->offset >= next); /* in order, not overlapping */
        next = t->offset + t->size;
        if (m) {
            void *buf = malloc((size_t)t->size);
            assert_non_null(buf);
            assert_int_equal(ql_mkmodel_tensor_data(m, i, buf, (size_t)t->size), 0);
            if (memcmp(buf, t->data, (size_t)t->size) != 0) fail_msg("%s: the file's bytes differ from the generator's", want[i].name);
            free(buf);
        }
    }
    assert_true(ql_gguf_data_offset(g) + next <= ql_gguf_file_size(g));
    free(want);
    ql_gguf_free(g);
}

/* Writes shape `s` in `wt`, reads it back, checks it, deletes it; prints the time. */
static void roundtrip(const ql_mkmodel_shape_t *s, ql_dtype_t wt, int check_data) {
    char path[512];
    tmp_path(path, sizeof(path), s->name);
    double t0 = now_s();
    ql_mkmodel_t *m = make(s, wt, 1234);
    double t1 = now_s();
    int rc = ql_mkmodel_write(m, path, g_err, sizeof(g_err));
    double t2 = now_s();
    if (rc != 0) {
        unlink(path);
        fail_msg("writing %s: %s", path, g_err);
    }
    /* the declared table agrees with this file's expectation before any reading */
    int64_t n_want = expected_tensors(s, wt, NULL);
    want_tensor_t *want = calloc((size_t)n_want, sizeof(*want));
    expected_tensors(s, wt, want);
    uint64_t bytes = 0;
    for (int64_t i = 0; i < n_want; i++) bytes += tensor_bytes(&want[i]);
    free(want);
    assert_int_equal(ql_mkmodel_n_tensors(m), n_want);
    assert_int_equal(ql_mkmodel_data_bytes(m), bytes);
    check_file(path, s, wt, check_data ? m : NULL, ql_mkmodel_n_merges(m));
    print_message("%s %s: init %.2f s, write %.2f s, %.1f MiB of weights, check %.2f s\n", s->name, ql_dtype_name(wt),
                  t1 - t0, t2 - t1, (double)bytes / (1 << 20), now_s() - t2);
    unlink(path);
    ql_mkmodel_free(m);
}

static void test_roundtrip_tiny_every_type(void **state) {
    (void)state;
    static const ql_dtype_t types[] = {QL_DTYPE_F32,  QL_DTYPE_F16,  QL_DTYPE_BF16, QL_DTYPE_Q8_0,
                                       QL_DTYPE_Q4_0, QL_DTYPE_Q4_1, QL_DTYPE_Q5_0, QL_DTYPE_Q5_1};
    ql_mkmodel_shape_t s = named("tiny");
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) roundtrip(&s, types[i], 1);
}

static void test_roundtrip_smollm2(void **state) {
    (void)state;
    ql_mkmodel_shape_t s = named("smollm2-135m");
    roundtrip(&s, QL_DTYPE_Q4_0, 1);
}

static void test_roundtrip_qwen2(void **state) {
    (void)state;
    ql_mkmodel_shape_t s;
    ql_mkmodel_shape_blank(&s);
    static const struct {
        const char *k;
        double v;
    } f[] = {{"n_layer", 3}, {"n_embd", 128}, {"n_head", 4}, {"n_head_kv", 2}, {"n_ff", 256}, {"n_vocab", 1500},
             {"n_ctx", 4096}, {"rope_freq_base", 1e6}, {"rms_eps", 1e-6}};
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++)
        assert_int_equal(ql_mkmodel_shape_set_num(&s, f[i].k, f[i].v, g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_str(&s, "arch", "qwen2", g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_str(&s, "name", "qwen-mini", g_err, sizeof(g_err)), 0);
    assert_int_equal(ql_mkmodel_shape_set_bool(&s, "tied", 0, g_err, sizeof(g_err)), 0);
    roundtrip(&s, QL_DTYPE_Q5_1, 1);
}

static void test_roundtrip_llama_3_2_1b(void **state) {
    (void)state;
    ql_mkmodel_shape_t s = named("llama-3.2-1b");
    roundtrip(&s, QL_DTYPE_Q4_0, 0);
}

static void test_roundtrip_llama_3_1_8b(void **state) {
    (void)state;
    ql_mkmodel_shape_t s = named("llama-3.1-8b");
    const char *large = getenv("QL_TEST_LARGE");
    if (large && strcmp(large, "1") == 0) {
        roundtrip(&s, QL_DTYPE_Q4_0, 0);
        return;
    }
    /* without the file: the declared table against this file's expectation */
    ql_mkmodel_t *m = make(&s, QL_DTYPE_Q4_0, 1234);
    int64_t n_want = expected_tensors(&s, QL_DTYPE_Q4_0, NULL);
    want_tensor_t *want = calloc((size_t)n_want, sizeof(*want));
    expected_tensors(&s, QL_DTYPE_Q4_0, want);
    uint64_t bytes = 0;
    for (int64_t i = 0; i < n_want; i++) bytes += tensor_bytes(&want[i]);
    assert_int_equal(ql_mkmodel_n_tensors(m), n_want);
    assert_int_equal(ql_mkmodel_data_bytes(m), bytes);
    free(want);
    ql_mkmodel_free(m);
    print_message("llama-3.1-8b: %lld tensors, %.1f MiB declared; the 5 GB write + read-back runs with "
                  "QL_TEST_LARGE=1\n", (long long)n_want, (double)bytes / (1 << 20));
}

/* ---- determinism and values ---- */

static unsigned char *read_all(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    *n = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc(*n);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, *n, f), *n);
    fclose(f);
    return b;
}

static void test_determinism(void **state) {
    (void)state;
    ql_mkmodel_shape_t s = named("tiny");
    static const ql_dtype_t types[] = {QL_DTYPE_F16, QL_DTYPE_Q4_1, QL_DTYPE_Q5_0};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        char p[3][512];
        uint64_t seeds[3] = {7, 7, 8};
        for (int k = 0; k < 3; k++) {
            char tag[32];
            snprintf(tag, sizeof(tag), "det%d", k);
            tmp_path(p[k], sizeof(p[k]), tag);
            ql_mkmodel_t *m = make(&s, types[t], seeds[k]);
            assert_int_equal(ql_mkmodel_write(m, p[k], g_err, sizeof(g_err)), 0);
            ql_mkmodel_free(m);
        }
        size_t n[3];
        unsigned char *b[3];
        for (int k = 0; k < 3; k++) b[k] = read_all(p[k], &n[k]);
        assert_int_equal(n[0], n[1]);
        assert_memory_equal(b[0], b[1], n[0]); /* same seed: same bytes */
        assert_int_equal(n[0], n[2]);          /* another seed: same layout ... */
        /* ... and every tensor's bytes differ */
        ql_gguf_t *g0, *g2;
        assert_int_equal(ql_gguf_open(p[0], &g0, g_err, sizeof(g_err)), 0);
        assert_int_equal(ql_gguf_open(p[2], &g2, g_err, sizeof(g_err)), 0);
        assert_int_equal(ql_gguf_data_offset(g0), ql_gguf_data_offset(g2));
        assert_memory_equal(b[0], b[2], (size_t)ql_gguf_data_offset(g0)); /* metadata has no seed */
        for (int64_t i = 0; i < ql_gguf_n_tensors(g0); i++) {
            const ql_gguf_tensor_t *x = ql_gguf_tensor(g0, i), *y = ql_gguf_tensor(g2, i);
            assert_int_equal(x->size, y->size);
            if (memcmp(x->data, y->data, (size_t)x->size) == 0)
                fail_msg("tensor %.*s is the same for seeds 7 and 8", (int)x->name.len, x->name.ptr);
        }
        ql_gguf_free(g0);
        ql_gguf_free(g2);
        for (int k = 0; k < 3; k++) {
            free(b[k]);
            unlink(p[k]);
        }
    }
}

typedef struct stats_s {
    double mean, std, min, max;
    int finite;
} stats_t;

static stats_t stats_of(const float *x, int64_t n) {
    stats_t s = {0, 0, INFINITY, -INFINITY, 1};
    double sum = 0, sum2 = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(x[i])) s.finite = 0;
        sum += x[i];
        sum2 += (double)x[i] * x[i];
        s.min = fmin(s.min, x[i]);
        s.max = fmax(s.max, x[i]);
    }
    s.mean = sum / (double)n;
    s.std = sqrt(fmax(0.0, sum2 / (double)n - s.mean * s.mean));
    return s;
}

/* Dequantized weights: linear layers and the used embedding rows have mean ~0 and std ~0.02;
 * unused tokens' rows std ~0.02/16; norms within 1 +- 0.1 with std ~0.05; all finite. The
 * bounds are loose against sampling noise (>= 4096 values per tensor) and a jitter of +-25%
 * on quantized blocks' scales, tight against a wrong scale or layout. */
static void test_value_statistics(void **state) {
    (void)state;
    ql_mkmodel_shape_t s = named("tiny");
    s.n_vocab = 1500; /* 1227 used tokens and 273 unused ones */
    snprintf(s.name, sizeof(s.name), "tiny-1500");
    static const ql_dtype_t types[] = {QL_DTYPE_F32,  QL_DTYPE_F16,  QL_DTYPE_BF16, QL_DTYPE_Q8_0,
                                       QL_DTYPE_Q4_0, QL_DTYPE_Q4_1, QL_DTYPE_Q5_0, QL_DTYPE_Q5_1};
    for (size_t t = 0; t < sizeof(types) / sizeof(types[0]); t++) {
        char path[512];
        tmp_path(path, sizeof(path), "stats");
        ql_mkmodel_t *m = make(&s, types[t], 99);
        assert_int_equal(ql_mkmodel_write(m, path, g_err, sizeof(g_err)), 0);
        ql_mkmodel_free(m);
        ql_gguf_t *g;
        assert_int_equal(ql_gguf_open(path, &g, g_err, sizeof(g_err)), 0);
        int64_t kt = ql_gguf_find_key(g, "tokenizer.ggml.token_type"), n_used = 0, ty = 0;
        while (ql_gguf_arr_i64(g, kt, (uint64_t)n_used, &ty) == 0 && ty != 5) n_used++;
        assert_true(n_used > 1000 && n_used < 1500);
        for (int64_t i = 0; i < ql_gguf_n_tensors(g); i++) {
            const ql_gguf_tensor_t *x = ql_gguf_tensor(g, i);
            int64_t n = x->ne[0] * x->ne[1];
            float *v = malloc((size_t)n * sizeof(float));
            assert_non_null(v);
            assert_int_equal(ql_dequantize_row(x->type, x->data, v, n), 0);
            char nm[64];
            snprintf(nm, sizeof(nm), "%.*s", (int)x->name.len, x->name.ptr);
            int is_norm = strstr(nm, "norm") != NULL, is_embd = strcmp(nm, "token_embd.weight") == 0;
            int64_t n_loud = is_embd ? n_used * x->ne[0] : n;
            stats_t st = stats_of(v, n_loud);
            int ok = st.finite;
            if (is_norm)
                ok = ok && fabs(st.mean - 1.0) < 0.02 && st.std > 0.035 && st.std < 0.065 && st.min >= 0.9 && st.max <= 1.1;
            else
                ok = ok && fabs(st.mean) < 0.004 && st.std > 0.016 && st.std < 0.024 && st.max < 0.1 && st.min > -0.1;
            if (!ok)
                fail_msg("%s %s: mean %g std %g min %g max %g", ql_dtype_name(types[t]), nm, st.mean, st.std, st.min, st.max);
            if (is_embd) {
                stats_t q = stats_of(v + n_loud, n - n_loud);
                if (!(q.finite && q.std > 0.016 / 16 && q.std < 0.024 / 16))
                    fail_msg("%s unused rows: std %g, expected ~%g", ql_dtype_name(types[t]), q.std, 0.02 / 16);
            }
            free(v);
        }
        ql_gguf_free(g);
        unlink(path);
    }
}

/* rope_freqs.weight, hand-computed for head_dim 64, base 500000, low/high freq factors 1/4,
 * original context 8192: freq_i = 500000^(-i/32), wavelength 2*pi/freq_i. Short wavelengths
 * (< 8192/4 = 2048, i <= 14) keep 1; long ones (> 8192, i >= 18) get the factor; between,
 * smooth = (8192/wavelength - 1)/3 and the value is 1/((1-smooth)/factor + smooth). For
 * i = 16: 500000^0.5 = 707.107, wavelength 4442.88, smooth 0.281279: factor 32 -> 3.29229,
 * factor 8 (llama-3.1-8b, head_dim 128: i = 32 has the same frequency) -> 2.69456. */
static void test_rope_freqs(void **state) {
    (void)state;
    static const struct {
        const char *shape;
        int64_t n, mid;
        float factor, mid_value;
    } k[] = {{"llama-3.2-1b", 32, 16, 32.0f, 3.29229f}, {"llama-3.1-8b", 64, 32, 8.0f, 2.69456f}};
    for (size_t c = 0; c < sizeof(k) / sizeof(k[0]); c++) {
        ql_mkmodel_shape_t s = named(k[c].shape);
        ql_mkmodel_t *m = make(&s, QL_DTYPE_Q4_0, 0);
        float v[64];
        assert_int_equal(ql_mkmodel_tensor_data(m, 0, v, (size_t)k[c].n * sizeof(float)), 0);
        assert_int_equal(ql_mkmodel_tensor_data(m, 0, v, 3), QL_EINVAL); /* wrong size */
        /* i <= 13 and i >= 18 at 32 frequencies; i <= 28 and i >= 36 at 64 */
        int64_t lo = k[c].n * 15 / 32 - 1, hi = k[c].n * 18 / 32;
        for (int64_t i = 0; i < k[c].n; i++) {
            if (i < lo) assert_true(v[i] == 1.0f);
            if (i >= hi) assert_true(v[i] == k[c].factor);
            if (i > 0) assert_true(v[i] >= v[i - 1]);
        }
        if (fabsf(v[k[c].mid] - k[c].mid_value) > 1e-4f)
            fail_msg("%s rope_freqs[%lld] = %.6f, expected %.5f", k[c].shape, (long long)k[c].mid, (double)v[k[c].mid],
                     (double)k[c].mid_value);
        ql_mkmodel_free(m);
    }
}

static void test_write_errors(void **state) {
    (void)state;
    ql_mkmodel_shape_t s = named("tiny");
    ql_mkmodel_t *m = make(&s, QL_DTYPE_F16, 0);
    const char *path = "/nonexistent-ql-dir/out.gguf";
    expect_err(ql_mkmodel_write(m, path, g_err, sizeof(g_err)), QL_EIO, path, "No such file or directory");
    expect_err(ql_mkmodel_write(m, NULL, g_err, sizeof(g_err)), QL_EINVAL, NULL, NULL);
    assert_int_equal(ql_mkmodel_tensor_data(m, -1, g_err, 1), QL_EINVAL);
    assert_int_equal(ql_mkmodel_tensor_data(m, ql_mkmodel_n_tensors(m), g_err, 1), QL_EINVAL);
    ql_mkmodel_free(m);
    ql_mkmodel_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named_shapes),
        cmocka_unit_test(test_shape_fields),
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_roundtrip_tiny_every_type),
        cmocka_unit_test(test_roundtrip_qwen2),
        cmocka_unit_test(test_roundtrip_smollm2),
        cmocka_unit_test(test_roundtrip_llama_3_2_1b),
        cmocka_unit_test(test_roundtrip_llama_3_1_8b),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_value_statistics),
        cmocka_unit_test(test_rope_freqs),
        cmocka_unit_test(test_write_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
