/*
 * tests/unit/cpu/test-forward.c — the CPU backend's forward pass on tiny random models
 * written by model/mkmodel (llama, qwen2 and qwen3, tied and untied, GQA, several weight types):
 *   (a) it equals a naive dense-attention forward pass written here (double precision, no
 *       pages, weights dequantized by model/quant.c) within the tolerances derived below;
 *   (b) batch invariance: a sequence's logits are bit-identical alone and inside a batch of
 *       8 sequences mixing prefill chunks and decodes, block tables scattered over the
 *       pool, and its greedy tokens are identical;
 *   (c) chunked prefill gives the same logits, to the bit, as one piece;
 *   (d) every unused KV slot holds NaN during all of the above, and no NaN comes out;
 * plus: the portable path and other thread counts give the same bits, copy_blocks
 * (copy-on-write) and the batch contract's errors.
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

#include "backend/backend.h"
#include "cpu/cpu-internal.h"
#include "cpu/cpu.h"
#include "model/gguf.h"
#include "model/mkmodel.h"
#include "model/quant.h"

#define NAN16 0x7e00

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* ---- models ---- */

typedef struct model_s {
    char path[128];
    ql_gguf_t *g;
    ql_mkmodel_shape_t shape;
    ql_dtype_t wtype;
} model_t;

static void model_make(model_t *m, const ql_mkmodel_shape_t *shape, ql_dtype_t wtype,
                       uint64_t seed) {
    static int counter;
    char err[256];
    memset(m, 0, sizeof(*m));
    m->shape = *shape;
    m->wtype = wtype;
    snprintf(m->path, sizeof(m->path), "/tmp/quill-test-forward-%d-%d.gguf", (int)getpid(),
             counter++);
    ql_mkmodel_params_t p = {.shape = *shape, .seed = seed, .wtype = wtype};
    ql_mkmodel_t *mk = NULL;
    if (ql_mkmodel_init(&p, &mk, err, sizeof(err)) != 0) fail_msg("mkmodel: %s", err);
    if (ql_mkmodel_write(mk, m->path, err, sizeof(err)) != 0) fail_msg("mkmodel write: %s", err);
    ql_mkmodel_free(mk);
    if (ql_gguf_open(m->path, &m->g, err, sizeof(err)) != 0) fail_msg("open: %s", err);
}

static void model_drop(model_t *m) {
    ql_gguf_free(m->g);
    unlink(m->path);
}

static ql_mkmodel_shape_t shape_llama(void) {
    ql_mkmodel_shape_t s;
    assert_int_equal(ql_mkmodel_shape_get("tiny", &s),
                     0); /* 2 layers, 64 wide, 4 heads, 2 KV heads */
    return s;
}

static ql_mkmodel_shape_t shape_qwen2(void) {
    ql_mkmodel_shape_t s;
    ql_mkmodel_shape_blank(&s);
    snprintf(s.name, sizeof(s.name), "test-qwen2");
    s.arch = QL_MKMODEL_ARCH_QWEN2; /* q/k/v biases, RoPE on halves */
    s.n_layer = 3;
    s.n_embd = 96;
    s.n_head = 6; /* head_dim 16, GQA 3 */
    s.n_head_kv = 2;
    s.n_ff = 160;
    s.n_vocab = 384;
    s.n_ctx = 256;
    s.rope_freq_base = 1000000.0f;
    s.tied = 0;
    return s;
}

/* qwen3: no biases, each head of q and k RMSNormed (its own weights) before RoPE on halves */
static ql_mkmodel_shape_t shape_qwen3(void) {
    ql_mkmodel_shape_t s = shape_qwen2();
    snprintf(s.name, sizeof(s.name), "test-qwen3");
    s.arch = QL_MKMODEL_ARCH_QWEN3;
    s.rms_eps = 1e-6f;
    s.tied = 1;
    return s;
}

/* qwen3 with YaRN (factor 4 over an original context of 256; base 1e6): the blend's ramp runs
 * over pairs 0..3 of the 8 in a 16-wide head, pairs 3..7 are all scaled */
static ql_mkmodel_shape_t shape_qwen3_yarn(void) {
    ql_mkmodel_shape_t s = shape_qwen3();
    snprintf(s.name, sizeof(s.name), "test-qwen3-yarn");
    s.rope_scaling_factor = 4.0f;
    s.rope_scaling_orig_ctx = 256;
    s.rope_scaling_yarn = 1;
    return s;
}

/* Llama 3 RoPE scaling (a rope_freqs.weight tensor) with an original context short enough
 * that the tiny model's frequencies fall on both sides of the blend. */
static ql_mkmodel_shape_t shape_llama3(void) {
    ql_mkmodel_shape_t s = shape_llama();
    snprintf(s.name, sizeof(s.name), "tiny-llama3-rope");
    s.rope_freq_base = 500000.0f;
    s.rope_scaling_factor = 8.0f;
    s.rope_scaling_low_freq_factor = 1.0f;
    s.rope_scaling_high_freq_factor = 4.0f;
    s.rope_scaling_orig_ctx = 64;
    return s;
}

#define STEP_TOKENS_MAX 192 /* step()'s limit; backend_open's default batch is 96 */

static ql_backend_t *backend_open_n(const model_t *m, int n_threads, int32_t block_size,
                                    int32_t n_batch_tokens) {
    ql_backend_params_t p = {.n_threads = n_threads,
                             .kv_cache_bytes = 0,
                             .block_size = block_size,
                             .n_batch_tokens_max = n_batch_tokens,
                             .n_seqs_max = 8,
                             .n_logits_max = n_batch_tokens,
                             .n_ctx_max = 128};
    ql_backend_t *be = NULL;
    char err[256];
    int rc = ql_cpu_backend_init(m->g, &p, &be, err, sizeof(err));
    if (rc) fail_msg("backend init: %s (%s)", err, ql_strerror(rc));
    return be;
}

static ql_backend_t *backend_open(const model_t *m, int n_threads, int32_t block_size) {
    return backend_open_n(m, n_threads, block_size, 96);
}

/* ---- the independent reference: dense, double precision, one sequence ---- */

typedef struct ref_s {
    int64_t E, QD, KVD, F, V, HD, NH, NKV, NL;
    int neox;
    double base, eps;
    int yarn;              /* YaRN: angles blended over corr[0..1], cos and sin times mag */
    double yscale, corr[2], mag;
    double *embd, *out, *out_norm;
    double *rope_ff; /* [HD/2] llama3 frequency divisors, or NULL */
    double **wq, **wk, **wv, **wo, **wg, **wu, **wd, **bq, **bk, **bv, **an, **fn, **qn, **kn;
} ref_t;

static double *tensor_f64(const ql_gguf_t *g, const char *name, int64_t *rows, int64_t *cols) {
    const ql_gguf_tensor_t *t = ql_gguf_find_tensor(g, name);
    if (!t) return NULL;
    const int64_t n0 = t->ne[0], n1 = t->n_dims > 1 ? t->ne[1] : 1;
    size_t rb;
    assert_int_equal(ql_dtype_row_bytes(t->type, n0, &rb), 0);
    double *d = malloc(sizeof(double) * (size_t)(n0 * n1));
    float *row = malloc(sizeof(float) * (size_t)n0);
    for (int64_t r = 0; r < n1; r++) {
        assert_int_equal(ql_dequantize_row(t->type, (const uint8_t *)t->data + r * rb, row, n0), 0);
        for (int64_t i = 0; i < n0; i++) d[r * n0 + i] = row[i];
    }
    free(row);
    if (rows) *rows = n1;
    if (cols) *cols = n0;
    return d;
}

static double *layer_tensor(const ql_gguf_t *g, int l, const char *what) {
    char name[96];
    snprintf(name, sizeof(name), "blk.%d.%s", l, what);
    return tensor_f64(g, name, NULL, NULL);
}

static void ref_init(ref_t *r, const model_t *m) {
    const ql_mkmodel_shape_t *s = &m->shape;
    memset(r, 0, sizeof(*r));
    r->E = s->n_embd;
    r->NH = s->n_head;
    r->NKV = s->n_head_kv;
    r->HD = s->n_embd / s->n_head;
    r->QD = r->NH * r->HD;
    r->KVD = r->NKV * r->HD;
    r->F = s->n_ff;
    r->V = s->n_vocab;
    r->NL = s->n_layer;
    r->neox = s->arch == QL_MKMODEL_ARCH_QWEN2 || s->arch == QL_MKMODEL_ARCH_QWEN3;
    r->base = s->rope_freq_base;
    r->eps = s->rms_eps;
    r->yarn = s->rope_scaling_yarn;
    r->mag = 1.0;
    if (r->yarn) { /* YaRN's definition, in double (the paper's and llama.cpp's defaults) */
        const double beta_fast = 32.0, beta_slow = 1.0, orig = (double)s->rope_scaling_orig_ctx;
        r->yscale = 1.0 / s->rope_scaling_factor;
        r->corr[0] = fmax(0.0, floor(r->HD * log(orig / (beta_fast * 2.0 * M_PI)) / (2.0 * log(r->base))));
        r->corr[1] = fmin(r->HD - 1.0, ceil(r->HD * log(orig / (beta_slow * 2.0 * M_PI)) / (2.0 * log(r->base))));
        r->mag = 1.0 + 0.1 * log(s->rope_scaling_factor);
    }
    r->embd = tensor_f64(m->g, "token_embd.weight", NULL, NULL);
    r->out = tensor_f64(m->g, "output.weight", NULL, NULL);
    if (!r->out) r->out = r->embd; /* tied */
    r->out_norm = tensor_f64(m->g, "output_norm.weight", NULL, NULL);
    r->rope_ff = tensor_f64(m->g, "rope_freqs.weight", NULL, NULL);
    assert_true((r->rope_ff != NULL) == (s->rope_scaling_factor != 0.0f && !s->rope_scaling_yarn));
    double ***fields[] = {&r->wq, &r->wk, &r->wv, &r->wo, &r->wg, &r->wu, &r->wd,
                          &r->bq, &r->bk, &r->bv, &r->an, &r->fn, &r->qn, &r->kn};
    const char *names[] = {"attn_q.weight",      "attn_k.weight",    "attn_v.weight",
                           "attn_output.weight", "ffn_gate.weight",  "ffn_up.weight",
                           "ffn_down.weight",    "attn_q.bias",      "attn_k.bias",
                           "attn_v.bias",        "attn_norm.weight", "ffn_norm.weight",
                           "attn_q_norm.weight", "attn_k_norm.weight"};
    for (size_t f = 0; f < QL_ARRAY_LEN(fields); f++) {
        *fields[f] = calloc((size_t)r->NL, sizeof(double *));
        for (int l = 0; l < r->NL; l++) (*fields[f])[l] = layer_tensor(m->g, l, names[f]);
    }
    assert_non_null(r->wq[0]);
    assert_true((r->bq[0] != NULL) == (s->arch == QL_MKMODEL_ARCH_QWEN2));
    assert_true((r->qn[0] != NULL) == (s->arch == QL_MKMODEL_ARCH_QWEN3));
}

static void ref_free(ref_t *r) {
    double **fields[] = {r->wq, r->wk, r->wv, r->wo, r->wg, r->wu, r->wd,
                         r->bq, r->bk, r->bv, r->an, r->fn, r->qn, r->kn};
    for (size_t f = 0; f < QL_ARRAY_LEN(fields); f++) {
        for (int l = 0; l < r->NL; l++) free(fields[f][l]);
        free(fields[f]);
    }
    if (r->out != r->embd) free(r->out);
    free(r->embd);
    free(r->out_norm);
    free(r->rope_ff);
}

/* y[o] = Σ_i W[o][i]·x[i] (+ b[o]) */
static void mv(double *y, const double *W, const double *b, const double *x, int64_t n_out,
               int64_t n_in) {
    for (int64_t o = 0; o < n_out; o++) {
        double s = b ? b[o] : 0.0;
        for (int64_t i = 0; i < n_in; i++) s += W[o * n_in + i] * x[i];
        y[o] = s;
    }
}

static void rmsnorm_d(double *y, const double *x, const double *g, int64_t n, double eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; i++) ss += x[i] * x[i];
    const double sc = 1.0 / sqrt(ss / n + eps);
    for (int64_t i = 0; i < n; i++) y[i] = x[i] * sc * g[i];
}

static void rope_d(const ref_t *r, double *v, int n_heads, int pos) {
    for (int h = 0; h < n_heads; h++) {
        double *x = v + (int64_t)h * r->HD;
        for (int i = 0; i < r->HD / 2; i++) {
            double th =
                pos * pow(r->base, -2.0 * i / (double)r->HD) / (r->rope_ff ? r->rope_ff[i] : 1.0);
            if (r->yarn) {
                const double y = (i - r->corr[0]) / fmax(0.001, r->corr[1] - r->corr[0]);
                const double ramp = 1.0 - fmin(1.0, fmax(0.0, y));
                th = r->yscale * th * (1.0 - ramp) + th * ramp;
            }
            const int a = r->neox ? i : 2 * i, b = r->neox ? i + (int)r->HD / 2 : 2 * i + 1;
            const double x0 = x[a], x1 = x[b];
            x[a] = r->mag * (x0 * cos(th) - x1 * sin(th));
            x[b] = r->mag * (x0 * sin(th) + x1 * cos(th));
        }
    }
}

/* logits [n][V] for every position of one sequence */
static void ref_forward(const ref_t *r, const int32_t *tok, int n, double *logits) {
    const int64_t E = r->E, QD = r->QD, KVD = r->KVD, F = r->F, HD = r->HD;
    double *x = malloc(sizeof(double) * n * E), *h = malloc(sizeof(double) * E);
    double *q = malloc(sizeof(double) * n * QD), *k = malloc(sizeof(double) * n * KVD),
           *v = malloc(sizeof(double) * n * KVD);
    double *o = malloc(sizeof(double) * QD), *y = malloc(sizeof(double) * (E > F ? E : F));
    double *g = malloc(sizeof(double) * F), *u = malloc(sizeof(double) * F),
           *sc = malloc(sizeof(double) * n);
    for (int t = 0; t < n; t++)
        memcpy(x + t * E, r->embd + (int64_t)tok[t] * E, sizeof(double) * E);
    for (int l = 0; l < r->NL; l++) {
        for (int t = 0; t < n; t++) {
            rmsnorm_d(h, x + t * E, r->an[l], E, r->eps);
            mv(q + t * QD, r->wq[l], r->bq[l], h, QD, E);
            mv(k + t * KVD, r->wk[l], r->bk[l], h, KVD, E);
            mv(v + t * KVD, r->wv[l], r->bv[l], h, KVD, E);
            if (r->qn[l]) /* qwen3: RMSNorm each head of q and of k */
                for (int hh = 0; hh < r->NH; hh++)
                    rmsnorm_d(q + t * QD + hh * HD, q + t * QD + hh * HD, r->qn[l], HD, r->eps);
            if (r->kn[l])
                for (int hh = 0; hh < r->NKV; hh++)
                    rmsnorm_d(k + t * KVD + hh * HD, k + t * KVD + hh * HD, r->kn[l], HD, r->eps);
            rope_d(r, q + t * QD, (int)r->NH, t);
            rope_d(r, k + t * KVD, (int)r->NKV, t);
            /* the KV cache holds f16 (NOTE(kv-f16) in cpu/forward.c): model that, and only
             * that, of quill's storage choices */
            for (int64_t i = 0; i < KVD; i++) {
                k[t * KVD + i] = ql_fp16_to_fp32(ql_fp32_to_fp16((float)k[t * KVD + i]));
                v[t * KVD + i] = ql_fp16_to_fp32(ql_fp32_to_fp16((float)v[t * KVD + i]));
            }
        }
        for (int t = 0; t < n; t++) {
            for (int hh = 0; hh < r->NH; hh++) {
                const int64_t kvh = hh / (r->NH / r->NKV);
                double mx = -INFINITY, sum = 0.0;
                for (int j = 0; j <= t; j++) { /* causal */
                    double d = 0.0;
                    for (int i = 0; i < HD; i++)
                        d += q[t * QD + hh * HD + i] * k[j * KVD + kvh * HD + i];
                    sc[j] = d / sqrt((double)HD);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j <= t; j++) sum += (sc[j] = exp(sc[j] - mx));
                for (int i = 0; i < HD; i++) {
                    double a = 0.0;
                    for (int j = 0; j <= t; j++) a += sc[j] / sum * v[j * KVD + kvh * HD + i];
                    o[hh * HD + i] = a;
                }
            }
            mv(y, r->wo[l], NULL, o, E, QD);
            for (int i = 0; i < E; i++) x[t * E + i] += y[i];
        }
        for (int t = 0; t < n; t++) {
            rmsnorm_d(h, x + t * E, r->fn[l], E, r->eps);
            mv(g, r->wg[l], NULL, h, F, E);
            mv(u, r->wu[l], NULL, h, F, E);
            for (int i = 0; i < F; i++) g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            mv(y, r->wd[l], NULL, g, E, F);
            for (int i = 0; i < E; i++) x[t * E + i] += y[i];
        }
    }
    for (int t = 0; t < n; t++) {
        rmsnorm_d(h, x + t * E, r->out_norm, E, r->eps);
        mv(logits + (int64_t)t * r->V, r->out, NULL, h, r->V, E);
    }
    free(x), free(h), free(q), free(k), free(v), free(o), free(y), free(g), free(u), free(sc);
}

/* ---- driving the backend ---- */

/* A little scheduler: sequences with block tables drawn from a shuffled pool. */
typedef struct seq_s {
    int32_t tok[128];
    int n_prompt, n_total; /* tokens known; n_total grows as tokens are generated */
    int n_done;            /* tokens whose KV is in the cache */
    int32_t table[64];
    int n_blocks;
    float *logits; /* [128][V]: logits after each position (NaN where not asked) */
} seq_t;

typedef struct pool_s {
    int32_t free_ids[4096];
    int n_free;
} pool_t;

static void pool_init(pool_t *p, int n_blocks, uint64_t seed) {
    p->n_free = n_blocks;
    for (int i = 0; i < n_blocks; i++) p->free_ids[i] = i;
    uint64_t rng = seed;
    for (int i = n_blocks - 1; i > 0; i--) { /* scatter */
        int j = (int)(rng_next(&rng) % (uint64_t)(i + 1));
        int32_t t = p->free_ids[i];
        p->free_ids[i] = p->free_ids[j];
        p->free_ids[j] = t;
    }
}

static void seq_reserve(seq_t *s, pool_t *p, int n_tokens, int bs) {
    /* one spare block beyond need: an allocated, unwritten (NaN) block in every table */
    while (s->n_blocks * bs < n_tokens + bs) {
        assert_true(p->n_free > 0);
        s->table[s->n_blocks++] = p->free_ids[--p->n_free];
    }
}

static int argmax(const float *x, int64_t n) {
    int best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = (int)i;
    return best;
}

/* One step: for each sequence i in `which`, run `count[i]` tokens starting at its n_done;
 * logits for every token when all_logits, else for the last of each sequence. */
static void step(ql_backend_t *be, seq_t **seqs, const int *count, int n, int all_logits,
                 pool_t *pool) {
    const ql_backend_info_t *info = ql_backend_info(be);
    const int64_t V = info->n_vocab;
    int32_t tokens[STEP_TOKENS_MAX], pos[STEP_TOKENS_MAX], seq_of[STEP_TOKENS_MAX],
        rows[STEP_TOKENS_MAX], n_blocks[8], seq_len[8];
    const int32_t *tables[8];
    int nt = 0, nl = 0;
    for (int i = 0; i < n; i++) {
        seq_t *s = seqs[i];
        assert_true(nt + count[i] <= STEP_TOKENS_MAX);
        seq_reserve(s, pool, s->n_done + count[i], info->kv.block_size);
        for (int j = 0; j < count[i]; j++, nt++) {
            tokens[nt] = s->tok[s->n_done + j];
            pos[nt] = s->n_done + j;
            seq_of[nt] = i;
            if (all_logits || j == count[i] - 1) rows[nl++] = nt;
        }
        tables[i] = s->table;
        n_blocks[i] = s->n_blocks;
        seq_len[i] = s->n_done + count[i];
    }
    ql_batch_t b = {.n_tokens = nt,
                    .tokens = tokens,
                    .pos = pos,
                    .seq_of_token = seq_of,
                    .n_seqs = n,
                    .block_tables = tables,
                    .n_blocks = n_blocks,
                    .seq_len = seq_len,
                    .logits_rows = rows,
                    .n_logits = nl};
    float *logits = malloc(sizeof(float) * (size_t)(nl * V));
    assert_int_equal(ql_backend_forward(be, &b, logits), 0);
    for (int i = 0; i < nl; i++) {
        const int t = rows[i];
        seq_t *s = seqs[seq_of[t]];
        for (int64_t v = 0; v < V; v++) assert_false(isnan(logits[(int64_t)i * V + v]));
        memcpy(s->logits + (int64_t)pos[t] * V, logits + (int64_t)i * V, sizeof(float) * V);
    }
    for (int i = 0; i < n; i++) seqs[i]->n_done += count[i];
    free(logits);
}

static void seq_init(seq_t *s, int n_prompt, int64_t V, uint64_t seed) {
    memset(s, 0, sizeof(*s));
    uint64_t rng = seed;
    s->n_prompt = s->n_total = n_prompt;
    for (int i = 0; i < n_prompt; i++)
        s->tok[i] = (int32_t)(3 + rng_next(&rng) % (uint64_t)(V - 3));
    s->logits = malloc(sizeof(float) * 128 * (size_t)V);
    for (int64_t i = 0; i < 128 * V; i++) s->logits[i] = NAN;
}

/* ---- (a) against the dense reference ---- */

/* Runs the prompt through the backend in chunks and compares every position's logits with
 * the reference: |Δ| <= tol · max|ref logits of that position|. */
static double compare_with_reference(const model_t *m, int n, double tol) {
    ref_t r;
    ref_init(&r, m);
    ql_backend_t *be = backend_open(m, 2, 4);
    ql__cpu_backend_kv_fill(be, NAN16);
    pool_t pool;
    pool_init(&pool, ql_backend_info(be)->kv.n_blocks, 5);
    seq_t s, *sp = &s;
    seq_init(&s, n, r.V, 77);
    for (int done = 0, c = 7; done < n; done += c) {
        int cnt = QL_MIN(c, n - done);
        step(be, &sp, &cnt, 1, 1, &pool);
    }
    double *ref = malloc(sizeof(double) * (size_t)(n * r.V));
    ref_forward(&r, s.tok, n, ref);
    double worst = 0.0;
    for (int t = 0; t < n; t++) {
        double mx = 0.0, e = 0.0;
        for (int64_t v = 0; v < r.V; v++) {
            mx = fmax(mx, fabs(ref[t * r.V + v]));
            e = fmax(e, fabs(ref[t * r.V + v] - s.logits[t * r.V + v]));
        }
        worst = fmax(worst, e / mx);
        if (e > tol * mx)
            fail_msg("%s position %d: max |quill - ref| = %g > %g (max |logit| %g)",
                     ql_dtype_name(m->wtype), t, e, tol * mx, mx);
    }
    print_message("%s %s: max |quill - reference| / max |logit| = %.2e (tolerance %.2e)\n",
                  m->shape.name, ql_dtype_name(m->wtype), worst, tol);
    free(ref);
    free(s.logits);
    ql_backend_free(be);
    ref_free(&r);
    return worst;
}

static void test_matches_dense_reference(void **state) {
    (void)state;
    const ql_mkmodel_shape_t shapes[] = {shape_llama(), shape_qwen2(), shape_llama3(),
                                         shape_qwen3(), shape_qwen3_yarn()};
    for (size_t k = 0; k < QL_ARRAY_LEN(shapes); k++) {
        model_t m;
        /* NOTE(tol-f32): F32 weights: the matmuls see f32 activations and the reference stores
         * K and V in f16 like quill, so what remains is f32 against double arithmetic. A dot
         * product of n terms errs by at most γ_n·Σ|w·x| (Higham §3.1), n <= n_max = max(n_embd,
         * n_ff); allowing Σ|w·x| up to 4·|y| (random weights), each of the 7·n_layer + 1
         * matmuls adds at most 4·γ_{n_max} relative to the logits' scale, and norms, RoPE,
         * softmax and residual adds are a few u each: tol = 4·γ_{n_max}·(7·n_layer + 1) + the
         * rare f16 rounding of K or V to the neighbouring value (2^-11 of one element, seen
         * through one attention weight < 1): + 2^-11 / n_embd. */
        model_make(&m, &shapes[k], QL_DTYPE_F32, 11 + k);
        {
            const double nmax = (double)QL_MAX(shapes[k].n_embd, shapes[k].n_ff),
                         U = 1.0 / 16777216.0;
            const double tol =
                4.0 * (nmax * U / (1.0 - nmax * U)) * (7.0 * (double)shapes[k].n_layer + 1.0) +
                1.0 / 2048.0 / (double)shapes[k].n_embd;
            compare_with_reference(&m, 40, tol);
        }
        model_drop(&m);
        /* NOTE(tol-q8): quantized weights: the same weights (dequantized) on both sides, but
         * quill quantizes every matmul input to 8 bits: per element |x − x̂| <= max|x_b|/254
         * (NOTE(q8-bound) in test-kernels.c). For activations of a random model the RMS error
         * of a dot product is then about 1/(254·sqrt(3)) ≈ 0.23% of the block's scale per
         * matmul, 7 matmuls a layer plus the head: with a 5-sigma margin over a random walk of
         * 7·n_layer + 1 such errors, tol = 5 · 0.0023 · sqrt(7·n_layer + 1). */
        const ql_dtype_t qt[] = {QL_DTYPE_Q8_0, QL_DTYPE_Q4_1, QL_DTYPE_Q4_0, QL_DTYPE_Q5_1,
                                 QL_DTYPE_F16};
        for (size_t i = 0; i < QL_ARRAY_LEN(qt); i++) {
            model_make(&m, &shapes[k], qt[i], 21 + k * 10 + i);
            /* F16 weights are exact in f32: the F32 tolerance holds for them too */
            const double nmax = (double)QL_MAX(shapes[k].n_embd, shapes[k].n_ff),
                         U = 1.0 / 16777216.0;
            const double tol = qt[i] == QL_DTYPE_F16
                                   ? 4.0 * (nmax * U / (1.0 - nmax * U)) *
                                             (7.0 * (double)shapes[k].n_layer + 1.0) +
                                         1.0 / 2048.0 / (double)shapes[k].n_embd
                                   : 5.0 * 0.0023 * sqrt(7.0 * (double)shapes[k].n_layer + 1.0);
            compare_with_reference(&m, 24, tol);
            model_drop(&m);
        }
    }
}

/* ---- (b) batch invariance, (c) chunked prefill, (d) NaN slots ---- */

#define N_SEQ 8
#define N_GEN 5

static void run_alone(ql_backend_t *be, seq_t *s, const int *chunks, int n_chunks, pool_t *pool) {
    const int64_t V = ql_backend_info(be)->n_vocab;
    for (int c = 0; c < n_chunks; c++) step(be, &s, &chunks[c], 1, 0, pool);
    assert_int_equal(s->n_done, s->n_prompt);
    while (s->n_total < s->n_prompt + N_GEN) {
        s->tok[s->n_total] = argmax(s->logits + (int64_t)(s->n_total - 1) * V, V);
        s->n_total++;
        int one = 1;
        step(be, &s, &one, 1, 0, pool);
    }
}

static void test_batch_invariance(void **state) {
    (void)state;
    model_t m;
    ql_mkmodel_shape_t shape = shape_qwen2();
    model_make(&m, &shape, QL_DTYPE_Q4_1, 5);
    ql_backend_t *be = backend_open(&m, 3, 4);
    ql__cpu_backend_kv_fill(be, NAN16); /* (d): nothing unwritten may ever be read */
    const int64_t V = ql_backend_info(be)->n_vocab;
    pool_t pool;
    pool_init(&pool, ql_backend_info(be)->kv.n_blocks, 99);

    /* the batched run: 8 sequences arriving at different steps with different prompt
     * lengths, prefilled in chunks of up to 9 tokens under a 24-token step budget, the others
     * decoding greedily */
    seq_t seqs[N_SEQ];
    static const int prompt_len[N_SEQ] = {17, 3, 30, 1, 12, 25, 8, 20};
    static const int arrive[N_SEQ] = {0, 0, 1, 2, 2, 3, 5, 6};
    for (int i = 0; i < N_SEQ; i++) seq_init(&seqs[i], prompt_len[i], V, 1000 + i);
    int step_no = 0, mixed_steps = 0;
    for (;;) {
        seq_t *batch[N_SEQ];
        int count[N_SEQ], n = 0, budget = 24, n_prefill = 0, n_decode = 0;
        for (int i = 0; i < N_SEQ; i++) {
            seq_t *s = &seqs[i];
            if (arrive[i] > step_no) continue;
            if (s->n_done < s->n_prompt) { /* a prefill chunk */
                const int c = QL_MIN(QL_MIN(9, s->n_prompt - s->n_done), budget);
                if (c <= 0) continue;
                budget -= c;
                batch[n] = s;
                count[n++] = c;
                n_prefill++;
            } else if (s->n_total < s->n_prompt + N_GEN) { /* decode the next greedy token */
                s->tok[s->n_total] = argmax(s->logits + (int64_t)(s->n_total - 1) * V, V);
                s->n_total++;
                budget--;
                batch[n] = s;
                count[n++] = 1;
                n_decode++;
            }
        }
        if (n == 0 && step_no > arrive[N_SEQ - 1]) break;
        if (n_prefill && n_decode) mixed_steps++;
        if (n) step(be, batch, count, n, 0, &pool);
        step_no++;
        assert_true(step_no < 200);
    }
    assert_true(mixed_steps > 0);

    /* each sequence alone, in a fresh backend with other blocks, prefilled in one piece,
     * then the same for sequence 2 in odd chunks: (b) and (c) */
    ql_backend_t *be2 = backend_open(&m, 2, 4);
    ql__cpu_backend_kv_fill(be2, NAN16);
    for (int i = 0; i < N_SEQ; i++) {
        pool_t pool2;
        pool_init(&pool2, ql_backend_info(be2)->kv.n_blocks, 7 + i);
        seq_t a;
        seq_init(&a, prompt_len[i], V, 1000 + i);
        const int whole = prompt_len[i];
        run_alone(be2, &a, &whole, 1, &pool2);
        assert_memory_equal(a.tok, seqs[i].tok,
                            sizeof(int32_t) * (size_t)(prompt_len[i] + N_GEN)); /* greedy */
        for (int p = prompt_len[i] - 1; p < prompt_len[i] + N_GEN - 1; p++)
            if (memcmp(a.logits + (int64_t)p * V, seqs[i].logits + (int64_t)p * V,
                       sizeof(float) * V) != 0)
                fail_msg("sequence %d position %d: logits alone differ from inside the batch", i,
                         p);
        free(a.logits);
    }
    {
        /* (c): a 30-token prompt in pieces of 1, 5, 16, 8 against one piece, all rows */
        pool_t pool3;
        pool_init(&pool3, ql_backend_info(be2)->kv.n_blocks, 3);
        seq_t one, pieces, *po = &one, *pp = &pieces;
        seq_init(&one, 30, V, 1002);
        seq_init(&pieces, 30, V, 1002);
        int whole = 30;
        step(be2, &po, &whole, 1, 1, &pool3);
        const int chunks[] = {1, 5, 16, 8};
        for (size_t c = 0; c < QL_ARRAY_LEN(chunks); c++) step(be2, &pp, &chunks[c], 1, 1, &pool3);
        assert_memory_equal(one.logits, pieces.logits, sizeof(float) * 30 * (size_t)V);
        free(one.logits);
        free(pieces.logits);
    }
    for (int i = 0; i < N_SEQ; i++) free(seqs[i].logits);
    ql_backend_free(be2);
    ql_backend_free(be);
    model_drop(&m);
}

/* The portable path and other thread counts give the same bits as the default. 21 tokens:
 * on AMX one 16-token group on tiles and a tail of 5 on the VNNI kernel. */
static void test_paths_and_threads_agree(void **state) {
    (void)state;
    model_t m;
    ql_mkmodel_shape_t shape = shape_llama();
    shape.tied = 0;
    model_make(&m, &shape, QL_DTYPE_Q5_0, 9);
    const int64_t V = shape.n_vocab;
    float *ref = NULL;
    const char *isas[] = {NULL, "portable", "avx2", "avx512vnni", "amx"};
    const int threads[] = {2, 1, 3, 4, 1};
    for (size_t k = 0; k < QL_ARRAY_LEN(isas); k++) {
        if (isas[k]) setenv("QL_CPU_ISA", isas[k], 1);
        ql_backend_t *be = backend_open(&m, threads[k], 16);
        unsetenv("QL_CPU_ISA");
        print_message("path %s, %d threads\n", ql_cpu_isa_name(ql__cpu_backend_isa(be)),
                      threads[k]);
        pool_t pool;
        pool_init(&pool, ql_backend_info(be)->kv.n_blocks, 1);
        seq_t s, *sp = &s;
        seq_init(&s, 21, V, 4);
        int n = 21;
        step(be, &sp, &n, 1, 1, &pool);
        if (!ref) {
            ref = s.logits;
        } else {
            assert_memory_equal(s.logits, ref, sizeof(float) * 21 * (size_t)V);
            free(s.logits);
        }
        ql_backend_free(be);
    }
    free(ref);
    model_drop(&m);
}

/* A step of 160 tokens (two prompts, every row's logits) on 2 and 3 threads: the matmuls
 * split the tokens among the threads (NOTE(token-split) in cpu/forward.c; 64-token chunks,
 * the last one 32 tokens), and on AMX each chunk reads its groups' scale copies
 * (NOTE(act-groups)). The bits must be the portable path's on one thread, for a model with
 * q/k/v biases and a Q4_1 one (the AMX min term) and a Q5_0 one without. */
static void test_token_split_agrees(void **state) {
    (void)state;
    ql_mkmodel_shape_t shapes[2] = {shape_qwen2(), shape_llama()};
    const int types[2] = {QL_DTYPE_Q4_1, QL_DTYPE_Q5_0};
    for (int k = 0; k < 2; k++) {
        model_t m;
        model_make(&m, &shapes[k], types[k], 21 + k);
        const int64_t V = shapes[k].n_vocab;
        seq_t ref[2];
        const char *isas[] = {"portable", NULL, NULL};
        const int threads[] = {1, 2, 3};
        for (size_t r = 0; r < QL_ARRAY_LEN(isas); r++) {
            if (isas[r]) setenv("QL_CPU_ISA", isas[r], 1);
            ql_backend_t *be = backend_open_n(&m, threads[r], 16, 160);
            unsetenv("QL_CPU_ISA");
            print_message("model %d: path %s, %d threads\n", k,
                          ql_cpu_isa_name(ql__cpu_backend_isa(be)), threads[r]);
            pool_t pool;
            pool_init(&pool, ql_backend_info(be)->kv.n_blocks, 5);
            seq_t s[2], *sp[2] = {&s[0], &s[1]};
            seq_init(&s[0], 90, V, 31);
            seq_init(&s[1], 70, V, 32);
            const int count[2] = {90, 70};
            step(be, sp, count, 2, 1, &pool);
            for (int i = 0; i < 2; i++) {
                if (r == 0) {
                    ref[i] = s[i];
                    continue;
                }
                if (memcmp(s[i].logits, ref[i].logits, sizeof(float) * (size_t)(count[i] * V)))
                    fail_msg("model %d, %d threads: sequence %d's logits differ from the "
                             "portable path's",
                             k, threads[r], i);
                free(s[i].logits);
            }
            ql_backend_free(be);
        }
        free(ref[0].logits);
        free(ref[1].logits);
        model_drop(&m);
    }
}

/* copy_blocks: a sequence forked onto a copy of its last, partly filled block continues
 * exactly as the original does, and writing to the copy leaves the original alone. */
static void test_copy_blocks(void **state) {
    (void)state;
    model_t m;
    ql_mkmodel_shape_t shape = shape_llama();
    model_make(&m, &shape, QL_DTYPE_Q8_0, 3);
    ql_backend_t *be = backend_open(&m, 2, 8);
    const ql_backend_info_t *info = ql_backend_info(be);
    const int64_t V = info->n_vocab;
    pool_t pool;
    pool_init(&pool, info->kv.n_blocks, 2);
    seq_t a, *ap = &a;
    seq_init(&a, 13, V, 8); /* 13 tokens: block 0 full, block 1 holds 5 */
    int n = 13;
    step(be, &ap, &n, 1, 0, &pool);
    seq_t b = a, *bp = &b;
    b.logits = malloc(sizeof(float) * 128 * (size_t)V);
    memcpy(b.logits, a.logits, sizeof(float) * 128 * (size_t)V);
    b.table[1] = pool.free_ids[--pool.n_free];
    b.n_blocks = 2;
    const int32_t src[] = {a.table[1]}, dst[] = {b.table[1]};
    assert_int_equal(ql_backend_copy_blocks(be, src, dst, 1), 0);
    /* both decode the same token: same logits; then b diverges, a is unchanged */
    a.tok[13] = b.tok[13] = 42;
    a.n_total = b.n_total = 14;
    int one = 1;
    step(be, &ap, &one, 1, 0, &pool);
    step(be, &bp, &one, 1, 0, &pool);
    assert_memory_equal(a.logits + 13 * V, b.logits + 13 * V, sizeof(float) * (size_t)V);
    b.tok[14] = 7;
    b.n_total = 15;
    step(be, &bp, &one, 1, 0, &pool);
    a.tok[14] = 9;
    a.n_total = 15;
    float keep[512];
    step(be, &ap, &one, 1, 0, &pool);
    memcpy(keep, a.logits + 14 * V, sizeof(float) * (size_t)V);
    /* a re-run of a's step 14 from its own blocks gives the same result */
    a.n_done = 14;
    step(be, &ap, &one, 1, 0, &pool);
    assert_memory_equal(keep, a.logits + 14 * V, sizeof(float) * (size_t)V);
    /* errors */
    const int32_t bad[] = {info->kv.n_blocks};
    assert_int_equal(ql_backend_copy_blocks(be, bad, dst, 1), QL_EINVAL);
    assert_int_equal(ql_backend_copy_blocks(be, src, bad, 1), QL_EINVAL);
    const int32_t s2[] = {1, 2}, d2[] = {2, 3}; /* dst 2 is also a src */
    assert_int_equal(ql_backend_copy_blocks(be, s2, d2, 2), QL_EINVAL);
    assert_int_equal(ql_backend_copy_blocks(be, NULL, NULL, 0), 0);
    /* a refused call leaves no state behind: block 4 was a valid src before the bad id, and
     * a later copy into it is accepted */
    const int32_t s3[] = {4, info->kv.n_blocks}, d3[] = {5, 6};
    assert_int_equal(ql_backend_copy_blocks(be, s3, d3, 2), QL_EINVAL);
    const int32_t s4[] = {5}, d4[] = {4};
    assert_int_equal(ql_backend_copy_blocks(be, s4, d4, 1), 0);
    free(a.logits);
    free(b.logits);
    ql_backend_free(be);
    model_drop(&m);
}

static void test_bad_batches(void **state) {
    (void)state;
    model_t m;
    ql_mkmodel_shape_t shape = shape_llama();
    model_make(&m, &shape, QL_DTYPE_Q4_0, 4);
    ql_backend_t *be = backend_open(&m, 1, 16);
    const ql_backend_info_t *info = ql_backend_info(be);
    assert_string_equal(info->name, "cpu");
    assert_int_equal(info->n_vocab, shape.n_vocab);
    assert_true(info->kv.n_blocks > 0);
    assert_int_equal(info->kv_block_bytes, (uint64_t)shape.n_layer * 2 * shape.n_head_kv * 16 *
                                               (shape.n_embd / shape.n_head) * 2);
    int32_t tok[] = {5, 6}, pos[] = {0, 1}, seq[] = {0, 0}, nb[] = {1}, len[] = {2}, rows[] = {1};
    int32_t tab[] = {0};
    const int32_t *tabs[] = {tab};
    float logits[512];
    ql_batch_t b = {.n_tokens = 2,
                    .tokens = tok,
                    .pos = pos,
                    .seq_of_token = seq,
                    .n_seqs = 1,
                    .block_tables = tabs,
                    .n_blocks = nb,
                    .seq_len = len,
                    .logits_rows = rows,
                    .n_logits = 1};
    assert_int_equal(ql_backend_forward(be, &b, logits), 0);
    tok[1] = (int32_t)shape.n_vocab;
    assert_int_equal(ql_backend_forward(be, &b, logits), QL_EINVAL); /* token id */
    tok[1] = 6;
    pos[1] = 2;
    assert_int_equal(ql_backend_forward(be, &b, logits), QL_EINVAL); /* pos >= seq_len */
    pos[1] = 1;
    tab[0] = info->kv.n_blocks;
    assert_int_equal(ql_backend_forward(be, &b, logits), QL_EINVAL); /* block id */
    tab[0] = 0;
    len[0] = 17;
    assert_int_equal(ql_backend_forward(be, &b, logits), QL_EINVAL); /* seq_len beyond its blocks */
    len[0] = 2;
    rows[0] = 2;
    assert_int_equal(ql_backend_forward(be, &b, logits), QL_EINVAL); /* logits row */
    rows[0] = 1;
    seq[1] = 1;
    assert_int_equal(ql_backend_forward(be, &b, logits), QL_EINVAL); /* sequence index */
    seq[1] = 0;
    b.n_tokens = info->n_batch_tokens_max + 1;
    assert_int_equal(ql_backend_forward(be, &b, logits), QL_EINVAL);
    b.n_tokens = 2;
    assert_int_equal(ql_backend_forward(be, &b, NULL), QL_EINVAL);
    b.n_logits = 0;
    assert_int_equal(ql_backend_forward(be, &b, NULL), 0); /* no logits wanted */
    assert_int_equal(ql_backend_forward_sample(be, &b, &(ql_backend_sampling_t){0}, tok),
                     QL_EUNSUPPORTED);
    ql_backend_free(be);

    /* init errors: a budget too small for one block */
    ql_backend_params_t p = {.n_threads = 1, .kv_cache_bytes = 100};
    char err[256];
    assert_int_equal(ql_cpu_backend_init(m.g, &p, &be, err, sizeof(err)), QL_EINVAL);
    assert_null(be);
    assert_non_null(strstr(err, "KV cache"));
    model_drop(&m);
}

int main(void) {
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_batches),      cmocka_unit_test(test_matches_dense_reference),
        cmocka_unit_test(test_batch_invariance), cmocka_unit_test(test_paths_and_threads_agree),
        cmocka_unit_test(test_token_split_agrees),
        cmocka_unit_test(test_copy_blocks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
