/*
 * model/hparams.c — Llama-family hyper-parameters from GGUF metadata (`<arch>.*` keys, as
 * llama.cpp's converter writes them) and the table of weights, every shape checked against
 * them. Sits between the GGUF reader (model/gguf.c) and the backends' model loaders.
 */
#define QL_LOG_MODULE "hparams"
#include "model/hparams.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* NOTE(bounds): limits far above any real model that keep every product the backends form
 * (q_dim = n_head * head_dim, n_vocab * n_embd, ...) far from overflow and reject absurd
 * files early. */
#define MAX_EMBD (1u << 20)
#define MAX_LAYER (1u << 16)
#define MAX_HEAD_DIM 4096u
#define MAX_FF (1u << 24)
#define MAX_VOCAB (1u << 26)
#define MAX_CTX (1u << 30)
/* Tensors every layer has: attn_norm, attn_{q,k,v,output}, ffn_norm, ffn_{gate,up,down}. */
#define TENSORS_PER_LAYER 9u


static const char *type_name(const ql_gguf_t *g, int64_t i) {
    ql_gguf_type_t t = ql_gguf_kv_type(g, i);
    const char *n = ql_gguf_type_name((int)t);
    return n ? n : "?";
}

/* ---- keys ---- */

typedef struct reader_s {
    const ql_gguf_t *g;
    const char *arch;
    char *err;
    size_t errlen;
} reader_t;

/* "<arch>.<suffix>" into buf. */
static const char *arch_key(const reader_t *r, const char *suffix, char *buf, size_t n) {
    snprintf(buf, n, "%s.%s", r->arch, suffix);
    return buf;
}

/* An unsigned integer key in [lo, hi]. Absent: *out = dflt and 0 when !required, else an
 * error; *found says which. */
static int key_u32(const reader_t *r, const char *suffix, int required, uint32_t dflt, uint32_t lo,
                   uint32_t hi, uint32_t *out, int *found) {
    char key[128];
    arch_key(r, suffix, key, sizeof(key));
    int64_t i = ql_gguf_find_key(r->g, key);
    if (found) *found = i >= 0;
    if (i < 0) {
        if (!required) {
            *out = dflt;
            return 0;
        }
        ql_errf(r->err, r->errlen, "missing key '%s'", key);
        return QL_EFORMAT;
    }
    ql_gguf_value_t v;
    int64_t x;
    ql_gguf_kv_value(r->g, i, &v);
    int rc = ql_gguf_value_i64(&v, &x);
    if (v.type == QL_GGUF_TYPE_ARRAY) {
        ql_errf(r->err, r->errlen, "key '%s' is an array (per-layer values are not supported)", key);
        return QL_EUNSUPPORTED;
    }
    if (rc == QL_ERANGE) x = INT64_MAX;
    else if (rc != 0 || v.type == QL_GGUF_TYPE_BOOL) {
        ql_errf(r->err, r->errlen, "key '%s' has type %s, expected an unsigned integer", key, type_name(r->g, i));
        return QL_EFORMAT;
    }
    if (x < (int64_t)lo || x > (int64_t)hi) {
        ql_errf(r->err, r->errlen, "key '%s' = %lld is out of range (%u..%u)", key, (long long)x, lo, hi);
        return QL_EFORMAT;
    }
    *out = (uint32_t)x;
    return 0;
}

/* A finite float key in (lo, hi]. Absent: as key_u32. */
static int key_f32(const reader_t *r, const char *suffix, int required, float dflt, float lo, float hi,
                   float *out, int *found) {
    char key[128];
    arch_key(r, suffix, key, sizeof(key));
    int64_t i = ql_gguf_find_key(r->g, key);
    if (found) *found = i >= 0;
    if (i < 0) {
        if (!required) {
            *out = dflt;
            return 0;
        }
        ql_errf(r->err, r->errlen, "missing key '%s'", key);
        return QL_EFORMAT;
    }
    float f;
    if (ql_gguf_get_f32(r->g, key, &f) != 0) {
        ql_errf(r->err, r->errlen, "key '%s' has type %s, expected f32", key, type_name(r->g, i));
        return QL_EFORMAT;
    }
    if (!isfinite(f) || !(f > lo) || f > hi) {
        ql_errf(r->err, r->errlen, "key '%s' = %g is out of range (%g, %g]", key, (double)f, (double)lo,
                (double)hi);
        return QL_EFORMAT;
    }
    *out = f;
    return 0;
}

/* ---- architecture ---- */

static const struct {
    const char *name;
    ql_arch_t arch;
} k_arches[] = {
    {"llama", QL_ARCH_LLAMA},
    {"qwen2", QL_ARCH_QWEN2},
    {"qwen3", QL_ARCH_QWEN3},
};

static int read_arch(const ql_gguf_t *g, ql_hparams_t *hp, char *err, size_t errlen) {
    ql_gguf_str_t s;
    int rc = ql_gguf_get_str(g, "general.architecture", &s);
    if (rc == QL_ENOENT) {
        ql_errf(err, errlen, "missing key 'general.architecture'");
        return QL_EFORMAT;
    }
    if (rc != 0) {
        ql_errf(err, errlen, "key 'general.architecture' has type %s, expected string",
                type_name(g, ql_gguf_find_key(g, "general.architecture")));
        return QL_EFORMAT;
    }
    for (size_t i = 0; i < QL_ARRAY_LEN(k_arches); i++) {
        if (ql_gguf_str_eq(s, k_arches[i].name)) {
            hp->arch = k_arches[i].arch;
            hp->arch_name = k_arches[i].name;
            return 0;
        }
    }
    char esc[160];
    ql_errf(err, errlen, "unsupported architecture '%s' (supported: llama, qwen2, qwen3)",
            ql_gguf_str_escape(s, 32, esc, sizeof(esc)));
    return QL_EUNSUPPORTED;
}

/* ---- vocabulary ---- */

static int read_vocab(const reader_t *r, ql_hparams_t *hp) {
    int64_t i = ql_gguf_find_key(r->g, "tokenizer.ggml.tokens");
    uint32_t vs;
    int have_vs, rc = key_u32(r, "vocab_size", 0, 0, 1, MAX_VOCAB, &vs, &have_vs);
    if (rc) return rc;
    if (i < 0) {
        if (!have_vs) {
            ql_errf(r->err, r->errlen, "no vocabulary size: neither 'tokenizer.ggml.tokens' nor '%s.vocab_size'",
                    r->arch);
            return QL_EFORMAT;
        }
        hp->n_vocab = vs;
        return 0;
    }
    if (ql_gguf_kv_type(r->g, i) != QL_GGUF_TYPE_ARRAY || ql_gguf_arr_type(r->g, i) != QL_GGUF_TYPE_STRING) {
        ql_errf(r->err, r->errlen, "key 'tokenizer.ggml.tokens' has type %s, expected an array of strings",
                type_name(r->g, i));
        return QL_EFORMAT;
    }
    uint64_t n = ql_gguf_arr_len(r->g, i);
    if (n < 1 || n > MAX_VOCAB) {
        ql_errf(r->err, r->errlen, "'tokenizer.ggml.tokens' has %llu tokens (must be 1..%u)",
                (unsigned long long)n, MAX_VOCAB);
        return QL_EFORMAT;
    }
    if (have_vs && vs != n) {
        ql_errf(r->err, r->errlen, "'%s.vocab_size' = %u disagrees with the %llu tokens of 'tokenizer.ggml.tokens'",
                r->arch, vs, (unsigned long long)n);
        return QL_EFORMAT;
    }
    hp->n_vocab = (uint32_t)n;
    return 0;
}

/* ---- rope ---- */

static int read_rope(const reader_t *r, ql_hparams_t *hp) {
    int rc, have_factor, have_legacy;
    float legacy;
    if ((rc = key_f32(r, "rope.freq_base", 0, 10000.0f, 0.0f, 1e12f, &hp->rope_freq_base, NULL))) return rc;
    if ((rc = key_f32(r, "rope.scaling.factor", 0, 1.0f, 0.0f, 1e6f, &hp->rope_scaling_factor, &have_factor)))
        return rc;
    if ((rc = key_f32(r, "rope.scale_linear", 0, 1.0f, 0.0f, 1e6f, &legacy, &have_legacy))) return rc;
    if ((rc = key_f32(r, "rope.scaling.attn_factor", 0, 1.0f, 0.0f, 1e6f, &hp->rope_attn_factor, NULL)))
        return rc;
    if ((rc = key_u32(r, "rope.scaling.original_context_length", 0, 0, 1, MAX_CTX, &hp->rope_scaling_orig_ctx,
                      NULL)))
        return rc;
    char key[128];
    arch_key(r, "rope.scaling.type", key, sizeof(key));
    ql_gguf_str_t type;
    rc = ql_gguf_get_str(r->g, key, &type);
    if (rc == QL_EFORMAT) {
        ql_errf(r->err, r->errlen, "key '%s' has type %s, expected string", key,
                type_name(r->g, ql_gguf_find_key(r->g, key)));
        return QL_EFORMAT;
    }
    /* NOTE(rope-scaling-default): without a type, llama.cpp treats a factor as linear
     * scaling; older files carry the factor as rope.scale_linear. */
    if (rc == QL_ENOENT) {
        if (!have_factor && have_legacy) hp->rope_scaling_factor = legacy;
        hp->rope_scaling = hp->rope_scaling_factor != 1.0f ? QL_ROPE_SCALING_LINEAR : QL_ROPE_SCALING_NONE;
    } else if (ql_gguf_str_eq(type, "none")) {
        hp->rope_scaling = QL_ROPE_SCALING_NONE;
        hp->rope_scaling_factor = 1.0f;
    } else if (ql_gguf_str_eq(type, "linear")) {
        hp->rope_scaling = QL_ROPE_SCALING_LINEAR;
    } else if (ql_gguf_str_eq(type, "yarn")) {
        hp->rope_scaling = QL_ROPE_SCALING_YARN;
        if (hp->rope_scaling_orig_ctx == 0) {
            ql_errf(r->err, r->errlen, "yarn rope scaling needs '%s.rope.scaling.original_context_length'", r->arch);
            return QL_EFORMAT;
        }
    } else {
        char esc[160];
        ql_errf(r->err, r->errlen, "unsupported rope scaling type '%s' in '%s' (supported: none, linear, yarn)",
                ql_gguf_str_escape(type, 32, esc, sizeof(esc)), key);
        return QL_EUNSUPPORTED;
    }
    return 0;
}

/* ---- hyper-parameters ---- */

int ql_hparams_read(const ql_gguf_t *g, ql_hparams_t *out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!g || !out) {
        ql_errf(err, errlen, "ql_hparams_read: NULL argument");
        return QL_EINVAL;
    }
    ql_hparams_t hp;
    memset(&hp, 0, sizeof(hp));
    int rc = read_arch(g, &hp, err, errlen);
    if (rc) return rc;
    reader_t r = {g, hp.arch_name, err, errlen};
    uint32_t key_len, val_len, n_rot;
    int have_key_len, have_val_len, have_rot;
    if ((rc = key_u32(&r, "embedding_length", 1, 0, 1, MAX_EMBD, &hp.n_embd, NULL)) ||
        (rc = key_u32(&r, "block_count", 1, 0, 1, MAX_LAYER, &hp.n_layer, NULL)) ||
        (rc = key_u32(&r, "attention.head_count", 1, 0, 1, hp.n_embd, &hp.n_head, NULL)) ||
        (rc = key_u32(&r, "attention.head_count_kv", 0, hp.n_head, 1, hp.n_head, &hp.n_head_kv, NULL)) ||
        (rc = key_u32(&r, "feed_forward_length", 1, 0, 1, MAX_FF, &hp.n_ff, NULL)) ||
        (rc = key_u32(&r, "context_length", 1, 0, 1, MAX_CTX, &hp.n_ctx_train, NULL)) ||
        (rc = key_u32(&r, "attention.key_length", 0, 0, 1, MAX_HEAD_DIM, &key_len, &have_key_len)) ||
        (rc = key_u32(&r, "attention.value_length", 0, 0, 1, MAX_HEAD_DIM, &val_len, &have_val_len)) ||
        (rc = key_u32(&r, "rope.dimension_count", 0, 0, 1, MAX_HEAD_DIM, &n_rot, &have_rot)) ||
        (rc = key_f32(&r, "attention.layer_norm_rms_epsilon", 1, 0.0f, 0.0f, 1.0f, &hp.rms_eps, NULL)))
        return rc;
    if (hp.n_head % hp.n_head_kv != 0) {
        ql_errf(err, errlen, "'%s.attention.head_count' = %u is not a multiple of '%s.attention.head_count_kv' = %u",
                r.arch, hp.n_head, r.arch, hp.n_head_kv);
        return QL_EFORMAT;
    }
    if (have_key_len) {
        hp.head_dim = key_len;
    } else if (hp.n_embd % hp.n_head != 0) {
        ql_errf(err, errlen, "'%s.embedding_length' = %u is not a multiple of '%s.attention.head_count' = %u "
                "and '%s.attention.key_length' is absent", r.arch, hp.n_embd, r.arch, hp.n_head, r.arch);
        return QL_EFORMAT;
    } else {
        hp.head_dim = hp.n_embd / hp.n_head;
    }
    if (hp.head_dim % 2 != 0 || hp.head_dim > MAX_HEAD_DIM) {
        ql_errf(err, errlen, "head_dim %u must be even and at most %u", hp.head_dim, MAX_HEAD_DIM);
        return QL_EFORMAT;
    }
    if (have_val_len && val_len != hp.head_dim) {
        ql_errf(err, errlen, "'%s.attention.value_length' = %u differs from the key length %u (not supported)",
                r.arch, val_len, hp.head_dim);
        return QL_EUNSUPPORTED;
    }
    if (have_rot && n_rot != hp.head_dim) {
        ql_errf(err, errlen, "'%s.rope.dimension_count' = %u is not head_dim %u: partial rotary is not supported",
                r.arch, n_rot, hp.head_dim);
        return QL_EUNSUPPORTED;
    }
    if ((uint64_t)hp.n_head * hp.head_dim > MAX_EMBD * 4ull) {
        ql_errf(err, errlen, "n_head %u x head_dim %u is absurdly large", hp.n_head, hp.head_dim);
        return QL_EFORMAT;
    }
    if ((rc = read_vocab(&r, &hp)) || (rc = read_rope(&r, &hp))) return rc;

    hp.tied_embeddings = ql_gguf_find_tensor(g, "output.weight") == NULL;
    hp.has_rope_freqs = ql_gguf_find_tensor(g, "rope_freqs.weight") != NULL;
    if (hp.arch == QL_ARCH_QWEN2) {
        hp.rope_layout = QL_ROPE_LAYOUT_HALVES;
        hp.has_qkv_bias = 1;
    } else if (hp.arch == QL_ARCH_QWEN3) {
        hp.rope_layout = QL_ROPE_LAYOUT_HALVES;
        hp.has_qkv_bias = ql_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
        hp.has_qk_norm = 1;
    } else {
        hp.rope_layout = QL_ROPE_LAYOUT_ADJACENT;
        hp.has_qkv_bias = ql_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    }
    *out = hp;
    return 0;
}

char *ql_hparams_summary(const ql_hparams_t *hp, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    if (!hp) {
        buf[0] = '\0';
        return buf;
    }
    static const char *const k_scaling[] = {"none", "linear", "yarn"};
    snprintf(buf, n,
             "%s n_embd=%u n_layer=%u n_head=%u n_head_kv=%u head_dim=%u n_ff=%u n_vocab=%u n_ctx_train=%u "
             "rope_base=%g rope_scaling=%s factor=%g orig_ctx=%u attn_factor=%g rope_freqs=%s rope_layout=%s rms_eps=%g "
             "tied_embeddings=%s qkv_bias=%s qk_norm=%s",
             hp->arch_name ? hp->arch_name : "?", hp->n_embd, hp->n_layer, hp->n_head, hp->n_head_kv, hp->head_dim,
             hp->n_ff, hp->n_vocab, hp->n_ctx_train, (double)hp->rope_freq_base,
             (unsigned)hp->rope_scaling < QL_ARRAY_LEN(k_scaling) ? k_scaling[hp->rope_scaling] : "?",
             (double)hp->rope_scaling_factor, hp->rope_scaling_orig_ctx, (double)hp->rope_attn_factor,
             hp->has_rope_freqs ? "yes" : "no",
             hp->rope_layout == QL_ROPE_LAYOUT_HALVES ? "halves" : "adjacent", (double)hp->rms_eps,
             hp->tied_embeddings ? "yes" : "no", hp->has_qkv_bias ? "yes" : "no",
             hp->has_qk_norm ? "yes" : "no");
    return buf;
}

/* ---- weights ---- */

typedef struct wctx_s {
    const ql_gguf_t *g;
    uint8_t *claimed; /* [n_tensors] 1 once a tensor is in the table */
    char *err;
    size_t errlen;
} wctx_t;

enum { REQUIRED = 0, OPTIONAL = 1 };
enum { ANY_TYPE = 0, F32_ONLY = 1 };

/* Finds `name` and checks its shape is {ne0} (ne1 == 0) or {ne0, ne1}; `dims` names the
 * expected dimensions for the message. */
static int want(wctx_t *c, const char *name, int64_t ne0, int64_t ne1, const char *dims, int optional, int f32,
                const ql_gguf_tensor_t **out) {
    const ql_gguf_tensor_t *t = ql_gguf_find_tensor(c->g, name);
    char exp[64];
    if (ne1) snprintf(exp, sizeof(exp), "[%lld, %lld]", (long long)ne0, (long long)ne1);
    else snprintf(exp, sizeof(exp), "[%lld]", (long long)ne0);
    *out = t;
    if (!t) {
        if (optional) return 0;
        ql_errf(c->err, c->errlen, "missing tensor '%s' (expected shape %s = %s)", name, exp, dims);
        return QL_EFORMAT;
    }
    int64_t want_ne[QL_GGUF_MAX_DIMS] = {ne0, ne1 ? ne1 : 1, 1, 1};
    if (memcmp(t->ne, want_ne, sizeof(want_ne)) != 0) {
        char got[96];
        int k = snprintf(got, sizeof(got), "[%lld", (long long)t->ne[0]);
        for (int d = 1; d < t->n_dims && k > 0 && (size_t)k < sizeof(got); d++)
            k += snprintf(got + k, sizeof(got) - (size_t)k, ", %lld", (long long)t->ne[d]);
        if (k > 0 && (size_t)k < sizeof(got)) snprintf(got + k, sizeof(got) - (size_t)k, "]");
        ql_errf(c->err, c->errlen, "tensor '%s' has shape %s, expected %s = %s", name, got, exp, dims);
        return QL_EFORMAT;
    }
    if (f32 && t->type != QL_DTYPE_F32) {
        const char *tn = ql_dtype_name(t->type);
        ql_errf(c->err, c->errlen, "tensor '%s' has type %s, expected f32", name, tn ? tn : "?");
        return QL_EFORMAT;
    }
    c->claimed[t - ql_gguf_tensor(c->g, 0)] = 1;
    return 0;
}

static int want_layer(wctx_t *c, const ql_hparams_t *hp, uint32_t il, ql_layer_weights_t *l) {
    char name[64];
    int64_t e = hp->n_embd, q = (int64_t)hp->n_head * hp->head_dim, kv = (int64_t)hp->n_head_kv * hp->head_dim;
    int opt_bias = hp->has_qkv_bias ? REQUIRED : OPTIONAL, rc;
#define L(field, suffix, ne0, ne1, dims, opt, f32)                                      \
    do {                                                                                \
        snprintf(name, sizeof(name), "blk.%u.%s", il, suffix);                          \
        if ((rc = want(c, name, ne0, ne1, dims, opt, f32, &l->field))) return rc;       \
    } while (0)
    L(attn_norm, "attn_norm.weight", e, 0, "[n_embd]", REQUIRED, F32_ONLY);
    L(attn_q, "attn_q.weight", e, q, "[n_embd, n_head*head_dim]", REQUIRED, ANY_TYPE);
    L(attn_k, "attn_k.weight", e, kv, "[n_embd, n_head_kv*head_dim]", REQUIRED, ANY_TYPE);
    L(attn_v, "attn_v.weight", e, kv, "[n_embd, n_head_kv*head_dim]", REQUIRED, ANY_TYPE);
    L(attn_output, "attn_output.weight", q, e, "[n_head*head_dim, n_embd]", REQUIRED, ANY_TYPE);
    L(ffn_norm, "ffn_norm.weight", e, 0, "[n_embd]", REQUIRED, F32_ONLY);
    L(ffn_gate, "ffn_gate.weight", e, hp->n_ff, "[n_embd, n_ff]", REQUIRED, ANY_TYPE);
    L(ffn_up, "ffn_up.weight", e, hp->n_ff, "[n_embd, n_ff]", REQUIRED, ANY_TYPE);
    L(ffn_down, "ffn_down.weight", hp->n_ff, e, "[n_ff, n_embd]", REQUIRED, ANY_TYPE);
    /* NOTE(bias-all-or-none): has_qkv_bias comes from layer 0 for llama; a bias that only
     * some layers have would be silently half-applied, so the unclaimed-tensor check below
     * rejects it. */
    if (hp->has_qkv_bias) {
        L(attn_q_bias, "attn_q.bias", q, 0, "[n_head*head_dim]", opt_bias, F32_ONLY);
        L(attn_k_bias, "attn_k.bias", kv, 0, "[n_head_kv*head_dim]", opt_bias, F32_ONLY);
        L(attn_v_bias, "attn_v.bias", kv, 0, "[n_head_kv*head_dim]", opt_bias, F32_ONLY);
    }
    if (hp->has_qk_norm) {
        L(attn_q_norm, "attn_q_norm.weight", hp->head_dim, 0, "[head_dim]", REQUIRED, F32_ONLY);
        L(attn_k_norm, "attn_k_norm.weight", hp->head_dim, 0, "[head_dim]", REQUIRED, F32_ONLY);
    }
#undef L
    return 0;
}

int ql_weights_init(const ql_gguf_t *g, const ql_hparams_t *hp, ql_weights_t *out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!g || !hp || !out) {
        ql_errf(err, errlen, "ql_weights_init: NULL argument");
        return QL_EINVAL;
    }
    memset(out, 0, sizeof(*out));
    int64_t n_tensors = ql_gguf_n_tensors(g);
    /* NOTE(layer-bound): n_layer is checked against the tensors the file really has before
     * the layer array is sized by it. */
    if ((uint64_t)hp->n_layer * TENSORS_PER_LAYER > (uint64_t)n_tensors) {
        ql_errf(err, errlen, "%s.block_count = %u needs at least %llu tensors, the file has %lld",
                hp->arch_name ? hp->arch_name : "?", hp->n_layer,
                (unsigned long long)hp->n_layer * TENSORS_PER_LAYER, (long long)n_tensors);
        return QL_EFORMAT;
    }
    wctx_t c = {g, calloc((size_t)QL_MAX(n_tensors, 1), 1), err, errlen};
    ql_weights_t w = {0};
    w.n_layer = hp->n_layer;
    w.layers = calloc(QL_MAX(hp->n_layer, 1u), sizeof(*w.layers));
    int rc = 0;
    if (!c.claimed || !w.layers) {
        ql_errf(err, errlen, "out of memory for the weights table of %u layers", hp->n_layer);
        rc = QL_ENOMEM;
        goto fail;
    }
    int64_t e = hp->n_embd;
    if ((rc = want(&c, "token_embd.weight", e, hp->n_vocab, "[n_embd, n_vocab]", REQUIRED, ANY_TYPE, &w.token_embd)) ||
        (rc = want(&c, "output_norm.weight", e, 0, "[n_embd]", REQUIRED, F32_ONLY, &w.output_norm)) ||
        (rc = want(&c, "output.weight", e, hp->n_vocab, "[n_embd, n_vocab]", OPTIONAL, ANY_TYPE, &w.output)) ||
        (rc = want(&c, "rope_freqs.weight", hp->head_dim / 2, 0, "[head_dim/2]", OPTIONAL, F32_ONLY,
                   &w.rope_freqs)))
        goto fail;
    for (uint32_t il = 0; il < hp->n_layer; il++)
        if ((rc = want_layer(&c, hp, il, &w.layers[il]))) goto fail;
    /* A per-layer tensor nobody claimed (a bias we do not apply, a layer past block_count)
     * means the forward pass would silently differ from the model's. */
    for (int64_t i = 0; i < n_tensors; i++) {
        const ql_gguf_tensor_t *t = ql_gguf_tensor(g, i);
        if (c.claimed[i] || !(t->name.len > 4 && memcmp(t->name.ptr, "blk.", 4) == 0)) continue;
        char esc[160];
        ql_errf(err, errlen, "tensor '%s' is not used by quill's %s forward pass (unsupported variant)",
                ql_gguf_str_escape(t->name, 64, esc, sizeof(esc)), hp->arch_name ? hp->arch_name : "?");
        rc = QL_EUNSUPPORTED;
        goto fail;
    }
    free(c.claimed);
    *out = w;
    return 0;
fail:
    free(c.claimed);
    free(w.layers);
    return rc;
}

void ql_weights_free(ql_weights_t *w) {
    if (!w) return;
    free(w->layers);
    memset(w, 0, sizeof(*w));
}
