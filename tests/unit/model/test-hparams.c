/*
 * tests/unit/model/test-hparams.c — hyper-parameters and the weights table (model/hparams.c):
 * the default model against independently known numbers, the vocab fixtures, and small
 * llama/qwen2/qwen3 files built with the GGUF writer, each broken in one way to check the error.
 */
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

#include "test-model.h"

#include "model/gguf.h"
#include "model/hparams.h"

/* ---- a tiny model, built with the writer ---- */

typedef struct spec_s {
    const char *arch;
    uint32_t n_embd, n_head, n_head_kv, n_layer, n_ff, n_vocab, head_dim;
    int qkv_bias;        /* write attn_{q,k,v}.bias */
    int qk_norm;         /* write attn_{q,k}_norm.weight (qwen3) */
    int with_output;     /* write output.weight (untied) */
    int rope_freqs;      /* write rope_freqs.weight */
    int f16_norms;       /* norms as f16 (wrong) */
    const char *skip;    /* a tensor not to write */
    const char *bad;     /* a tensor written with one more row */
    const char *extra;   /* an extra 1-D f32 tensor {n_embd} */
    void (*keys)(ql_gguf_writer_t *w); /* keys set first; the defaults do not replace them */
} spec_t;

static spec_t tiny(const char *arch) {
    spec_t s = {.arch = arch, .n_embd = 64, .n_head = 4, .n_head_kv = 2, .n_layer = 2, .n_ff = 96,
                .n_vocab = 40, .head_dim = 16};
    return s;
}

static char g_path[256];

static void add(ql_gguf_writer_t *w, const spec_t *s, const char *name, ql_dtype_t type, int64_t ne0, int64_t ne1) {
    if (s->skip && strcmp(s->skip, name) == 0) return;
    if (s->bad && strcmp(s->bad, name) == 0) ne1 = ne1 ? ne1 + 1 : 2;
    int64_t ne[2] = {ne0, ne1};
    assert_int_equal(ql_gguf_writer_add_tensor(w, name, type, ne1 ? 2 : 1, ne, NULL, NULL), 0);
}

/* Writes the model to g_path and opens it. */
static ql_gguf_t *build(const spec_t *s) {
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    char k[128];
    if (s->keys) s->keys(w);
    /* NOTE(defaults): a key the hook set makes the writer return QL_EINVAL here: ignored */
    ql_gguf_writer_set_str(w, "general.architecture", s->arch);
#define KEY_U32(suffix, v) (snprintf(k, sizeof(k), "%s." suffix, s->arch), ql_gguf_writer_set_u32(w, k, (v)))
    KEY_U32("embedding_length", s->n_embd);
    KEY_U32("block_count", s->n_layer);
    KEY_U32("attention.head_count", s->n_head);
    KEY_U32("attention.head_count_kv", s->n_head_kv);
    KEY_U32("feed_forward_length", s->n_ff);
    KEY_U32("context_length", 2048);
#undef KEY_U32
    snprintf(k, sizeof(k), "%s.attention.layer_norm_rms_epsilon", s->arch);
    ql_gguf_writer_set_f32(w, k, 1e-6f);
    const char *toks[64];
    char tokbuf[64][16];
    assert_true(s->n_vocab <= 64);
    for (uint32_t i = 0; i < s->n_vocab; i++) {
        snprintf(tokbuf[i], sizeof(tokbuf[i]), "t%u", i);
        toks[i] = tokbuf[i];
    }
    ql_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", toks, s->n_vocab);

    int64_t e = s->n_embd, q = (int64_t)s->n_head * s->head_dim, kv = (int64_t)s->n_head_kv * s->head_dim;
    ql_dtype_t nt = s->f16_norms ? QL_DTYPE_F16 : QL_DTYPE_F32;
    add(w, s, "token_embd.weight", QL_DTYPE_Q8_0, e, s->n_vocab);
    add(w, s, "output_norm.weight", nt, e, 0);
    if (s->with_output) add(w, s, "output.weight", QL_DTYPE_Q4_1, e, s->n_vocab);
    if (s->rope_freqs) add(w, s, "rope_freqs.weight", QL_DTYPE_F32, s->head_dim / 2, 0);
    for (uint32_t il = 0; il < s->n_layer; il++) {
        char n[64];
#define T(suffix, type, ne0, ne1) (snprintf(n, sizeof(n), "blk.%u." suffix, il), add(w, s, n, type, ne0, ne1))
        T("attn_norm.weight", nt, e, 0);
        T("attn_q.weight", QL_DTYPE_Q4_1, e, q);
        T("attn_k.weight", QL_DTYPE_Q4_1, e, kv);
        T("attn_v.weight", QL_DTYPE_Q4_1, e, kv);
        T("attn_output.weight", QL_DTYPE_Q4_1, q, e);
        if (s->qkv_bias) {
            T("attn_q.bias", QL_DTYPE_F32, q, 0);
            T("attn_k.bias", QL_DTYPE_F32, kv, 0);
            T("attn_v.bias", QL_DTYPE_F32, kv, 0);
        }
        if (s->qk_norm) {
            T("attn_q_norm.weight", nt, s->head_dim, 0);
            T("attn_k_norm.weight", nt, s->head_dim, 0);
        }
        T("ffn_norm.weight", nt, e, 0);
        T("ffn_gate.weight", QL_DTYPE_Q4_1, e, s->n_ff);
        T("ffn_up.weight", QL_DTYPE_Q4_1, e, s->n_ff);
        T("ffn_down.weight", QL_DTYPE_Q4_1, s->n_ff, e);
#undef T
    }
    if (s->extra) add(w, s, s->extra, QL_DTYPE_F32, e, 0);
    char err[512];
    snprintf(g_path, sizeof(g_path), "/tmp/ql-test-hparams-%ld.gguf", (long)getpid());
    assert_int_equal(ql_gguf_writer_write(w, g_path, err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(g_path, &g, err, sizeof(err)) != 0) {
        print_error("%s\n", err);
        fail();
    }
    unlink(g_path); /* the mapping stays valid */
    return g;
}

/* hparams, then weights; expects `rc` from the stage that fails and `msg` in its error. */
static void expect(const spec_t *s, int rc, const char *msg) {
    ql_gguf_t *g = build(s);
    ql_hparams_t hp;
    ql_weights_t w;
    char err[512] = "";
    int got = ql_hparams_read(g, &hp, err, sizeof(err));
    if (got == 0) {
        got = ql_weights_init(g, &hp, &w, err, sizeof(err));
        if (got == 0) ql_weights_free(&w);
    }
    if (got != rc || (msg && !strstr(err, msg))) {
        print_error("expected %d '%s', got %d '%s'\n", rc, msg ? msg : "", got, err);
        fail();
    }
    assert_null(strchr(err, '\n'));
    ql_gguf_free(g);
}

/* ---- good files ---- */

static void test_llama_tiny(void **state) {
    (void)state;
    spec_t s = tiny("llama");
    ql_gguf_t *g = build(&s);
    ql_hparams_t hp;
    char err[512];
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.arch, QL_ARCH_LLAMA);
    assert_string_equal(hp.arch_name, "llama");
    assert_int_equal(hp.n_embd, 64);
    assert_int_equal(hp.n_layer, 2);
    assert_int_equal(hp.n_head, 4);
    assert_int_equal(hp.n_head_kv, 2);
    assert_int_equal(hp.head_dim, 16);
    assert_int_equal(hp.n_ff, 96);
    assert_int_equal(hp.n_vocab, 40);
    assert_int_equal(hp.n_ctx_train, 2048);
    assert_true(hp.rope_freq_base == 10000.0f); /* default */
    assert_int_equal(hp.rope_scaling, QL_ROPE_SCALING_NONE);
    assert_true(hp.rope_scaling_factor == 1.0f);
    assert_true(hp.rope_attn_factor == 1.0f); /* absent */
    assert_true(hp.rms_eps == 1e-6f);
    assert_int_equal(hp.tied_embeddings, 1);
    assert_int_equal(hp.rope_layout, QL_ROPE_LAYOUT_ADJACENT);
    assert_int_equal(hp.has_qkv_bias, 0);
    assert_int_equal(hp.has_rope_freqs, 0);
    ql_weights_t w;
    assert_int_equal(ql_weights_init(g, &hp, &w, err, sizeof(err)), 0);
    assert_null(w.output);
    assert_null(w.rope_freqs);
    assert_int_equal(w.n_layer, 2);
    assert_ptr_equal(w.token_embd, ql_gguf_find_tensor(g, "token_embd.weight"));
    assert_ptr_equal(w.layers[1].ffn_down, ql_gguf_find_tensor(g, "blk.1.ffn_down.weight"));
    assert_int_equal(w.layers[1].attn_k->ne[1], 32);
    assert_null(w.layers[0].attn_q_bias);
    ql_weights_free(&w);
    assert_null(w.layers);
    ql_weights_free(&w); /* twice: a no-op */
    ql_weights_free(NULL);
    char sum[QL_HPARAMS_SUMMARY_MAX];
    assert_non_null(strstr(ql_hparams_summary(&hp, sum, sizeof(sum)), "llama n_embd=64 n_layer=2 n_head=4"));
    ql_gguf_free(g);
}

static void keys_llama31(ql_gguf_writer_t *w) {
    ql_gguf_writer_set_u32(w, "llama.attention.key_length", 32);
    ql_gguf_writer_set_u32(w, "llama.attention.value_length", 32);
    ql_gguf_writer_set_u32(w, "llama.rope.dimension_count", 32);
    ql_gguf_writer_set_f32(w, "llama.rope.freq_base", 500000.0f);
    ql_gguf_writer_set_str(w, "llama.rope.scaling.type", "yarn");
    ql_gguf_writer_set_f32(w, "llama.rope.scaling.factor", 8.0f);
    ql_gguf_writer_set_u32(w, "llama.rope.scaling.original_context_length", 8192);
    ql_gguf_writer_set_f32(w, "llama.rope.scaling.attn_factor", 0.75f);
    ql_gguf_writer_set_u32(w, "llama.vocab_size", 40);
}

static void test_llama_untied_keylen_yarn_rope_freqs(void **state) {
    (void)state;
    spec_t s = tiny("llama");
    s.head_dim = 32; /* key_length, not n_embd / n_head = 16 */
    s.with_output = 1;
    s.rope_freqs = 1;
    s.keys = keys_llama31;
    ql_gguf_t *g = build(&s);
    ql_hparams_t hp;
    char err[512];
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.head_dim, 32);
    assert_true(hp.rope_freq_base == 500000.0f);
    assert_int_equal(hp.rope_scaling, QL_ROPE_SCALING_YARN);
    assert_true(hp.rope_scaling_factor == 8.0f);
    assert_int_equal(hp.rope_scaling_orig_ctx, 8192);
    assert_true(hp.rope_attn_factor == 0.75f);
    assert_int_equal(hp.tied_embeddings, 0);
    assert_int_equal(hp.has_rope_freqs, 1);
    ql_weights_t w;
    assert_int_equal(ql_weights_init(g, &hp, &w, err, sizeof(err)), 0);
    assert_non_null(w.output);
    assert_non_null(w.rope_freqs);
    assert_int_equal(w.rope_freqs->ne[0], 16);
    assert_int_equal(w.layers[0].attn_q->ne[1], 128); /* 4 heads x 32 */
    assert_int_equal(w.layers[0].attn_output->ne[0], 128);
    ql_weights_free(&w);
    ql_gguf_free(g);
}

static void test_qwen2_biases(void **state) {
    (void)state;
    spec_t s = tiny("qwen2");
    s.qkv_bias = 1;
    ql_gguf_t *g = build(&s);
    ql_hparams_t hp;
    char err[512];
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.arch, QL_ARCH_QWEN2);
    assert_string_equal(hp.arch_name, "qwen2");
    assert_int_equal(hp.has_qkv_bias, 1);
    assert_int_equal(hp.rope_layout, QL_ROPE_LAYOUT_HALVES);
    ql_weights_t w;
    assert_int_equal(ql_weights_init(g, &hp, &w, err, sizeof(err)), 0);
    for (uint32_t il = 0; il < 2; il++) {
        assert_non_null(w.layers[il].attn_q_bias);
        assert_int_equal(w.layers[il].attn_q_bias->ne[0], 64);
        assert_int_equal(w.layers[il].attn_k_bias->ne[0], 32);
        assert_int_equal(w.layers[il].attn_v_bias->ne[0], 32);
    }
    ql_weights_free(&w);
    ql_gguf_free(g);
    /* a llama file with biases gets them too */
    s = tiny("llama");
    s.qkv_bias = 1;
    g = build(&s);
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.has_qkv_bias, 1);
    assert_int_equal(hp.rope_layout, QL_ROPE_LAYOUT_ADJACENT);
    ql_gguf_free(g);
}

static void test_qwen3_qk_norm(void **state) {
    (void)state;
    spec_t s = tiny("qwen3");
    s.qk_norm = 1;
    ql_gguf_t *g = build(&s);
    ql_hparams_t hp;
    char err[512];
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.arch, QL_ARCH_QWEN3);
    assert_string_equal(hp.arch_name, "qwen3");
    assert_int_equal(hp.has_qk_norm, 1);
    assert_int_equal(hp.has_qkv_bias, 0);
    assert_int_equal(hp.rope_layout, QL_ROPE_LAYOUT_HALVES);
    char sum[QL_HPARAMS_SUMMARY_MAX];
    assert_non_null(strstr(ql_hparams_summary(&hp, sum, sizeof(sum)), "qk_norm=yes"));
    ql_weights_t w;
    assert_int_equal(ql_weights_init(g, &hp, &w, err, sizeof(err)), 0);
    for (uint32_t il = 0; il < 2; il++) {
        assert_int_equal(w.layers[il].attn_q_norm->ne[0], 16);
        assert_int_equal(w.layers[il].attn_k_norm->ne[0], 16);
        assert_null(w.layers[il].attn_q_bias);
    }
    ql_weights_free(&w);
    ql_gguf_free(g);
    /* a missing or misshapen norm, norms stored f16, norms in a llama file */
    s.skip = "blk.1.attn_k_norm.weight";
    expect(&s, QL_EFORMAT, "missing tensor 'blk.1.attn_k_norm.weight' (expected shape [16] = [head_dim])");
    s.skip = NULL;
    s.bad = "blk.0.attn_q_norm.weight";
    expect(&s, QL_EFORMAT, "tensor 'blk.0.attn_q_norm.weight' has shape [16, 2], expected [16] = [head_dim]");
    s = tiny("qwen3");
    expect(&s, QL_EFORMAT, "missing tensor 'blk.0.attn_q_norm.weight'");
    s = tiny("llama");
    s.qk_norm = 1;
    expect(&s, QL_EUNSUPPORTED, "tensor 'blk.0.attn_q_norm.weight' is not used by quill's llama forward pass");
}

/* ---- broken files ---- */

static void test_weights_errors(void **state) {
    (void)state;
    spec_t s = tiny("qwen2");
    expect(&s, QL_EFORMAT, "missing tensor 'blk.0.attn_q.bias' (expected shape [64] = [n_head*head_dim])");
    s.qkv_bias = 1;
    s.skip = "blk.1.attn_k.bias";
    expect(&s, QL_EFORMAT, "missing tensor 'blk.1.attn_k.bias'");
    s = tiny("llama");
    s.skip = "blk.1.ffn_up.weight";
    expect(&s, QL_EFORMAT, "missing tensor 'blk.1.ffn_up.weight' (expected shape [64, 96] = [n_embd, n_ff])");
    s.skip = "token_embd.weight";
    expect(&s, QL_EFORMAT, "missing tensor 'token_embd.weight'");
    s.skip = "output_norm.weight";
    expect(&s, QL_EFORMAT, "missing tensor 'output_norm.weight'");
    s.skip = NULL;
    s.bad = "blk.1.attn_k.weight";
    expect(&s, QL_EFORMAT,
           "tensor 'blk.1.attn_k.weight' has shape [64, 33], expected [64, 32] = [n_embd, n_head_kv*head_dim]");
    s.bad = "blk.0.attn_norm.weight";
    expect(&s, QL_EFORMAT, "tensor 'blk.0.attn_norm.weight' has shape [64, 2], expected [64] = [n_embd]");
    s.bad = "token_embd.weight";
    expect(&s, QL_EFORMAT, "tensor 'token_embd.weight' has shape [64, 41], expected [64, 40] = [n_embd, n_vocab]");
    s.bad = NULL;
    s.with_output = 1;
    s.bad = "output.weight";
    expect(&s, QL_EFORMAT, "tensor 'output.weight' has shape [64, 41]");
    s = tiny("llama");
    s.f16_norms = 1;
    expect(&s, QL_EFORMAT, "tensor 'output_norm.weight' has type f16, expected f32");
    s = tiny("llama");
    s.extra = "blk.0.attn_output.bias";
    expect(&s, QL_EUNSUPPORTED, "tensor 'blk.0.attn_output.bias' is not used by quill's llama forward pass");
    s.extra = "blk.2.attn_norm.weight"; /* a layer past block_count */
    expect(&s, QL_EUNSUPPORTED, "tensor 'blk.2.attn_norm.weight' is not used");
    s.extra = "some.other.tensor"; /* outside the layers: ignored */
    expect(&s, 0, NULL);
}

static void keys_gpt2(ql_gguf_writer_t *w) { ql_gguf_writer_set_str(w, "general.architecture", "gpt2"); }
static void keys_arch_u32(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "general.architecture", 1); }
static void keys_no_blocks(ql_gguf_writer_t *w) { ql_gguf_writer_set_str(w, "llama.block_count", "30"); }
static void keys_heads_str(ql_gguf_writer_t *w) { ql_gguf_writer_set_str(w, "llama.attention.head_count", "4"); }
static void keys_heads_arr(ql_gguf_writer_t *w) {
    uint32_t h[2] = {4, 4};
    ql_gguf_writer_set_arr(w, "llama.attention.head_count", QL_GGUF_TYPE_UINT32, h, 2);
}
static void keys_kv3(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.attention.head_count_kv", 3); }
static void keys_kv8(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.attention.head_count_kv", 8); }
static void keys_embd0(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.embedding_length", 0); }
static void keys_rot(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.rope.dimension_count", 8); }
static void keys_vlen(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.attention.value_length", 8); }
static void keys_yarn(ql_gguf_writer_t *w) { ql_gguf_writer_set_str(w, "llama.rope.scaling.type", "yarn"); }
static void keys_longrope(ql_gguf_writer_t *w) { ql_gguf_writer_set_str(w, "llama.rope.scaling.type", "longrope"); }
static void keys_linear_legacy(ql_gguf_writer_t *w) { ql_gguf_writer_set_f32(w, "llama.rope.scale_linear", 2.0f); }
static void keys_vocab_size(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.vocab_size", 41); }
static void keys_eps_nan(ql_gguf_writer_t *w) { ql_gguf_writer_set_f32(w, "llama.attention.layer_norm_rms_epsilon", NAN); }
static void keys_eps_u32(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.attention.layer_norm_rms_epsilon", 1); }
static void keys_tokens_u32(ql_gguf_writer_t *w) {
    uint32_t t[2] = {1, 2};
    ql_gguf_writer_set_arr(w, "tokenizer.ggml.tokens", QL_GGUF_TYPE_UINT32, t, 2);
}
static void keys_many_layers(ql_gguf_writer_t *w) { ql_gguf_writer_set_u32(w, "llama.block_count", 60000); }
static void keys_no_ctx(ql_gguf_writer_t *w) { ql_gguf_writer_set_str(w, "unused", "x"); }

static void test_hparams_errors(void **state) {
    (void)state;
    spec_t s = tiny("llama");
    s.keys = keys_gpt2;
    expect(&s, QL_EUNSUPPORTED, "unsupported architecture 'gpt2' (supported: llama, qwen2, qwen3)");
    s.keys = keys_arch_u32;
    expect(&s, QL_EFORMAT, "key 'general.architecture' has type u32, expected string");
    s.keys = keys_no_blocks;
    expect(&s, QL_EFORMAT, "key 'llama.block_count' has type string, expected an unsigned integer");
    s.keys = keys_heads_str;
    expect(&s, QL_EFORMAT, "key 'llama.attention.head_count' has type string");
    s.keys = keys_heads_arr;
    expect(&s, QL_EUNSUPPORTED, "key 'llama.attention.head_count' is an array (per-layer values are not supported)");
    s.keys = keys_kv3;
    expect(&s, QL_EFORMAT, "'llama.attention.head_count' = 4 is not a multiple of 'llama.attention.head_count_kv' = 3");
    s.keys = keys_kv8;
    expect(&s, QL_EFORMAT, "key 'llama.attention.head_count_kv' = 8 is out of range (1..4)");
    s.keys = keys_embd0;
    expect(&s, QL_EFORMAT, "key 'llama.embedding_length' = 0 is out of range");
    s.keys = keys_rot;
    expect(&s, QL_EUNSUPPORTED, "'llama.rope.dimension_count' = 8 is not head_dim 16: partial rotary is not supported");
    s.keys = keys_vlen;
    expect(&s, QL_EUNSUPPORTED, "'llama.attention.value_length' = 8 differs from the key length 16");
    s.keys = keys_yarn;
    expect(&s, QL_EFORMAT, "yarn rope scaling needs 'llama.rope.scaling.original_context_length'");
    s.keys = keys_longrope;
    expect(&s, QL_EUNSUPPORTED, "unsupported rope scaling type 'longrope' in 'llama.rope.scaling.type'");
    s.keys = keys_vocab_size;
    expect(&s, QL_EFORMAT, "'llama.vocab_size' = 41 disagrees with the 40 tokens of 'tokenizer.ggml.tokens'");
    s.keys = keys_eps_nan;
    expect(&s, QL_EFORMAT, "key 'llama.attention.layer_norm_rms_epsilon' = nan is out of range");
    s.keys = keys_eps_u32;
    expect(&s, QL_EFORMAT, "key 'llama.attention.layer_norm_rms_epsilon' has type u32, expected f32");
    s.keys = keys_tokens_u32;
    expect(&s, QL_EFORMAT, "key 'tokenizer.ggml.tokens' has type array, expected an array of strings");
    /* block_count far beyond the tensors present: refused before anything is sized by it */
    s.keys = keys_many_layers;
    expect(&s, QL_EFORMAT, "llama.block_count = 60000 needs at least 540000 tensors, the file has 20");
    s.keys = keys_no_ctx;
    expect(&s, 0, NULL);

    /* a legacy linear factor */
    s.keys = keys_linear_legacy;
    ql_gguf_t *g = build(&s);
    ql_hparams_t hp;
    char err[512];
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.rope_scaling, QL_ROPE_SCALING_LINEAR);
    assert_true(hp.rope_scaling_factor == 2.0f);
    assert_int_equal(ql_hparams_read(NULL, &hp, err, sizeof(err)), QL_EINVAL);
    assert_int_equal(ql_hparams_read(g, NULL, err, sizeof(err)), QL_EINVAL);
    ql_weights_t w;
    assert_int_equal(ql_weights_init(g, NULL, &w, err, sizeof(err)), QL_EINVAL);
    ql_gguf_free(g);
}

static void test_missing_keys(void **state) {
    (void)state;
    /* an empty file: the architecture key comes first */
    ql_gguf_writer_t *w = ql_gguf_writer_init();
    char err[512];
    snprintf(g_path, sizeof(g_path), "/tmp/ql-test-hparams-%ld-e.gguf", (long)getpid());
    assert_int_equal(ql_gguf_writer_set_str(w, "general.architecture", "llama"), 0);
    assert_int_equal(ql_gguf_writer_set_u32(w, "llama.embedding_length", 64), 0);
    assert_int_equal(ql_gguf_writer_write(w, g_path, err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(g_path, &g, err, sizeof(err)), 0);
    unlink(g_path);
    ql_hparams_t hp;
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), QL_EFORMAT);
    assert_string_equal(err, "missing key 'llama.block_count'");
    ql_gguf_free(g);
    w = ql_gguf_writer_init();
    assert_int_equal(ql_gguf_writer_write(w, g_path, err, sizeof(err)), 0);
    ql_gguf_writer_free(w);
    assert_int_equal(ql_gguf_open(g_path, &g, err, sizeof(err)), 0);
    unlink(g_path);
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), QL_EFORMAT);
    assert_string_equal(err, "missing key 'general.architecture'");
    ql_gguf_free(g);
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
    ql_hparams_t hp;
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    /* SmolLM2-135M's config.json: hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate
     * 1536, vocab 49152, rope_theta 100000, rms_norm_eps 1e-5, tie_word_embeddings */
    assert_int_equal(hp.arch, QL_ARCH_LLAMA);
    assert_int_equal(hp.n_layer, 30);
    assert_int_equal(hp.n_embd, 576);
    assert_int_equal(hp.n_head, 9);
    assert_int_equal(hp.n_head_kv, 3);
    assert_int_equal(hp.head_dim, 64);
    assert_int_equal(hp.n_ff, 1536);
    assert_int_equal(hp.n_vocab, 49152);
    assert_int_equal(hp.n_ctx_train, 8192);
    assert_true(hp.rope_freq_base == 100000.0f);
    assert_true(fabsf(hp.rms_eps - 1e-5f) < 1e-12f);
    assert_int_equal(hp.rope_scaling, QL_ROPE_SCALING_NONE);
    assert_int_equal(hp.tied_embeddings, 1);
    assert_int_equal(hp.rope_layout, QL_ROPE_LAYOUT_ADJACENT);
    assert_int_equal(hp.has_qkv_bias, 0);
    assert_int_equal(hp.has_rope_freqs, 0);
    ql_weights_t w;
    assert_int_equal(ql_weights_init(g, &hp, &w, err, sizeof(err)), 0);
    assert_null(w.output);
    assert_int_equal(w.token_embd->type, QL_DTYPE_Q8_0);
    assert_int_equal(w.output_norm->type, QL_DTYPE_F32);
    for (uint32_t il = 0; il < hp.n_layer; il++) {
        const ql_layer_weights_t *l = &w.layers[il];
        assert_int_equal(l->attn_norm->type, QL_DTYPE_F32);
        assert_int_equal(l->ffn_norm->type, QL_DTYPE_F32);
        const ql_gguf_tensor_t *lin[7] = {l->attn_q, l->attn_k, l->attn_v, l->attn_output,
                                          l->ffn_gate, l->ffn_up, l->ffn_down};
        for (int k = 0; k < 7; k++) assert_int_equal(lin[k]->type, QL_DTYPE_Q4_1);
        assert_int_equal(l->attn_k->ne[1], 192);
        assert_int_equal(l->ffn_down->ne[0], 1536);
    }
    ql_weights_free(&w);
    ql_gguf_free(g);
}

static void test_vocab_fixtures(void **state) {
    (void)state;
    const char *dir = "../shared/fixtures/vocab";
    char path[512], err[512];
    snprintf(path, sizeof(path), "%s/ggml-vocab-llama-spm.gguf", dir);
    if (access(path, R_OK) != 0) {
        print_message("skipped: %s is absent\n", path);
        skip();
    }
    ql_gguf_t *g = NULL;
    ql_hparams_t hp;
    ql_weights_t w;
    assert_int_equal(ql_gguf_open(path, &g, err, sizeof(err)), 0);
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.n_layer, 32);
    assert_int_equal(hp.n_embd, 4096);
    assert_int_equal(hp.head_dim, 128);
    assert_int_equal(hp.n_vocab, 32000);
    assert_true(hp.rope_freq_base == 10000.0f);
    /* vocab only: no tensors */
    assert_int_equal(ql_weights_init(g, &hp, &w, err, sizeof(err)), QL_EFORMAT);
    assert_string_equal(err, "llama.block_count = 32 needs at least 288 tensors, the file has 0");
    ql_gguf_free(g);

    snprintf(path, sizeof(path), "%s/ggml-vocab-deepseek-coder.gguf", dir);
    assert_int_equal(ql_gguf_open(path, &g, err, sizeof(err)), 0);
    assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), 0);
    assert_int_equal(hp.rope_scaling, QL_ROPE_SCALING_LINEAR);
    assert_true(hp.rope_scaling_factor == 4.0f);
    assert_true(hp.rope_freq_base == 100000.0f);
    assert_int_equal(hp.n_vocab, 32256);
    ql_gguf_free(g);

    static const char *const k_other[][2] = {{"ggml-vocab-gpt-2.gguf", "'gpt2'"},
                                             {"ggml-vocab-phi-3.gguf", "'phi3'"},
                                             {"ggml-vocab-starcoder.gguf", "'starcoder2'"}};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, k_other[i][0]);
        assert_int_equal(ql_gguf_open(path, &g, err, sizeof(err)), 0);
        assert_int_equal(ql_hparams_read(g, &hp, err, sizeof(err)), QL_EUNSUPPORTED);
        assert_non_null(strstr(err, k_other[i][1]));
        ql_gguf_free(g);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llama_tiny),
        cmocka_unit_test(test_llama_untied_keylen_yarn_rope_freqs),
        cmocka_unit_test(test_qwen2_biases),
        cmocka_unit_test(test_qwen3_qk_norm),
        cmocka_unit_test(test_weights_errors),
        cmocka_unit_test(test_hparams_errors),
        cmocka_unit_test(test_missing_keys),
        cmocka_unit_test(test_default_model),
        cmocka_unit_test(test_vocab_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
