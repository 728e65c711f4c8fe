/*
 * tests/unit/scheduler/test-spec-engine.c — speculative decoding through the engine thread and
 * the real CPU backend.
 *
 * Greedy identity (default model, skipped when absent): at temperature 0 every request gives
 * token for token, and logprob for logprob, the output it gives without speculation: batched,
 * with chunked prefill, with k fixed and with k load-adapted, and in a pool too small for the
 * batch (preemption and recompute in the middle of speculation), for n-gram and layerskip
 * drafts. This holds because the CPU
 * backend gives a position the same logits bits whether it is decoded alone or verified inside a
 * chunk (NOTE(batch-invariance) in cpu/forward.c), so any difference is the speculative path's:
 * a wrong accept, a wrong rollback, a stale draft in the KV. After every run the KV pool holds
 * as many cached blocks as without speculation: no rejected draft reached the prefix cache.
 *
 * Distribution (mkmodel's tiny model, always): sampled outputs with n-gram speculation (one-hot
 * q) and layerskip (q from the first layer) follow
 * the target's distribution: the first two speculated tokens of many seeded requests against
 * the exact distribution computed from the backend's logits with the same sampler settings
 * (chi-square).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>

#include <cmocka.h>

#include "test-mkmodel.h"
#include "test-model.h"

#include "backend/backend.h"
#include "core/core.h"
#include "cpu/cpu.h"
#include "model/gguf.h"
#include "model/mkmodel.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"
#include "scheduler/sampling.h"

#define MAX_OUT 40
#define MAX_PROMPT 256
#define MAX_REQ 64

typedef struct out_s {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *n_final;
    int32_t tokens[MAX_OUT];
    float logprobs[MAX_OUT];
    int32_t n_tokens;
    int final_kind, status;
    ql_engine_stats_t stats;
} out_t;

static void on_event(const ql_engine_event_t *ev, void *ud) {
    out_t *o = ud;
    pthread_mutex_lock(o->mu);
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) {
        for (int32_t i = 0; i < ev->n_tokens && o->n_tokens < MAX_OUT; i++) {
            o->logprobs[o->n_tokens] = ev->logprobs ? ev->logprobs[i].logprob : 0.0f;
            o->tokens[o->n_tokens++] = ev->tokens[i];
        }
    } else {
        o->final_kind = ev->kind;
        o->status = ev->status;
        o->stats = ev->stats;
        (*o->n_final)++;
        pthread_cond_broadcast(o->cv);
    }
    pthread_mutex_unlock(o->mu);
}

typedef struct prompts_s {
    int32_t ids[MAX_REQ][MAX_PROMPT];
    int32_t n[MAX_REQ];
    int n_req;
} prompts_t;

static ql_backend_t *open_backend(const ql_gguf_t *g, int32_t n_blocks, int32_t n_logits) {
    ql_backend_params_t p;
    memset(&p, 0, sizeof(p));
    p.n_threads = 2;
    p.block_size = 16;
    p.n_batch_tokens_max = 256;
    p.n_seqs_max = 8;
    p.n_logits_max = n_logits;
    p.n_ctx_max = 512;
    ql_backend_t *be = NULL;
    char err[256];
    p.kv_cache_bytes = 1u << 20;
    if (ql_cpu_backend_init(g, &p, &be, err, sizeof err) != 0) fail_msg("cpu backend: %s", err);
    uint64_t bb = ql_backend_info(be)->kv_block_bytes;
    ql_backend_free(be);
    p.kv_cache_bytes = bb * (uint64_t)n_blocks;
    if (ql_cpu_backend_init(g, &p, &be, err, sizeof err) != 0) fail_msg("cpu backend: %s", err);
    assert_int_equal(ql_backend_info(be)->kv.n_blocks, n_blocks);
    return be;
}

typedef struct runcfg_s {
    int spec;          /* ql_engine_spec_t */
    int32_t layers;    /* layerskip's draft layers */
    ql_backend_t *draft; /* the draft model's backend */
    int fixed_k;
    int32_t k;
    int32_t budget;    /* max_batched_tokens */
    int32_t max_seqs;
    float temperature;
    int32_t top_k;
    int32_t max_tokens;
    uint64_t seed0;    /* request i gets seed0 + i */
    int logprobs;
} runcfg_t;

typedef struct totals_s {
    ql_engine_counters_t counters;
    int32_t n_preemptions, n_draft, n_accepted;
} totals_t;

/* Runs every prompt through one engine over `be`, all submitted at once. */
static void run(ql_backend_t *be, const ql_tok_t *tok, const prompts_t *pr, const runcfg_t *c,
                out_t *outs, totals_t *tot) {
    ql_engine_params_t p;
    memset(&p, 0, sizeof(p));
    p.max_num_seqs = c->max_seqs;
    p.max_batched_tokens = c->budget;
    p.spec_method = c->spec;
    p.spec_layers = c->layers;
    p.draft_backend = c->spec == QL_ENGINE_SPEC_DRAFT ? c->draft : NULL;
    p.spec_k = c->k;
    p.spec_fixed_k = c->fixed_k;
    ql_engine_t *e = NULL;
    char err[256];
    if (ql_engine_init(&p, be, tok, &e, err, sizeof err) != 0) fail_msg("engine: %s", err);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_final = 0;
    for (int i = 0; i < pr->n_req; i++) {
        memset(&outs[i], 0, sizeof(outs[i]));
        outs[i].mu = &mu;
        outs[i].cv = &cv;
        outs[i].n_final = &n_final;
        ql_engine_request_t r = ql_engine_request_default();
        r.prompt = pr->ids[i];
        r.n_prompt = pr->n[i];
        r.sampling.temperature = c->temperature;
        r.sampling.top_k = c->top_k;
        r.sampling.seed = c->seed0 + (uint64_t)i;
        r.sampling.logprobs = c->logprobs;
        r.max_tokens = c->max_tokens;
        r.ignore_eos = 1;
        r.on_event = on_event;
        r.user_data = &outs[i];
        if (ql_engine_submit(e, &r, NULL, err, sizeof err) != 0) fail_msg("submit: %s", err);
    }
    pthread_mutex_lock(&mu);
    while (n_final < pr->n_req) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    ql_engine_shutdown(e, 1);
    memset(tot, 0, sizeof(*tot));
    /* the counters once the thread is done */
    for (;;) {
        ql_engine_get_counters(e, &tot->counters);
        if (tot->counters.stopped) break;
        usleep(1000);
    }
    ql_engine_free(e);
    for (int i = 0; i < pr->n_req; i++) {
        if (outs[i].final_kind != QL_ENGINE_EVENT_FINISHED)
            fail_msg("request %d ended with %s", i, ql_strerror(outs[i].status));
        assert_int_equal(outs[i].n_tokens, c->max_tokens);
        assert_int_equal(outs[i].stats.n_completion_tokens, c->max_tokens);
        assert_true(outs[i].stats.n_accepted_tokens <= outs[i].stats.n_draft_tokens);
        tot->n_preemptions += outs[i].stats.n_preemptions;
        tot->n_draft += outs[i].stats.n_draft_tokens;
        tot->n_accepted += outs[i].stats.n_accepted_tokens;
    }
    /* usage and /metrics agree */
    assert_int_equal((int64_t)tot->counters.spec_draft_tokens, tot->n_draft);
    assert_int_equal((int64_t)tot->counters.spec_accepted_tokens, tot->n_accepted);
    if (!c->spec) assert_int_equal(tot->n_draft, 0);
    assert_int_equal(tot->counters.kv_blocks_used, 0);
    /* the draft model's block manager: every sequence closed, every invariant holds */
    assert_int_equal(tot->counters.spec_draft_kv_blocks_used, 0);
    assert_int_equal(tot->counters.spec_draft_kv_check, 0);
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
}

static void assert_same(const prompts_t *pr, const out_t *a, const out_t *b, const char *what,
                        int logprobs) {
    for (int i = 0; i < pr->n_req; i++) {
        if (memcmp(a[i].tokens, b[i].tokens, sizeof(a[i].tokens)) != 0) {
            int k = 0;
            while (k < MAX_OUT && a[i].tokens[k] == b[i].tokens[k]) k++;
            fail_msg("%s: request %d differs from the run without speculation at token %d", what,
                     i, k);
        }
        if (logprobs && memcmp(a[i].logprobs, b[i].logprobs, sizeof(a[i].logprobs)) != 0)
            fail_msg("%s: request %d's logprobs differ", what, i);
    }
}

static void encode_all(const ql_tok_t *tok, const char *const *texts, int n, prompts_t *pr) {
    pr->n_req = n;
    for (int i = 0; i < n; i++) {
        size_t len;
        assert_int_equal(ql_tok_encode(tok, texts[i], strlen(texts[i]), QL_TOK_ADD_SPECIAL,
                                       pr->ids[i], MAX_PROMPT, &len),
                         0);
        pr->n[i] = (int32_t)len;
    }
}

/* Rewrite tasks (the answer repeats the prompt: n-gram drafts hit) and open ones (they miss). */
static const char *const k_texts[] = {
    "Repeat the following sentence exactly.\nSentence: The quick brown fox jumps over the lazy "
    "dog while the cat sleeps on the warm windowsill.\nRepeat: The quick brown fox",
    "Fix the spelling: 'Paged atention splits the key value cache into blocks so that many "
    "sequences share one pool of memory.'\nFixed: 'Paged attention splits the",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "Once upon a time",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
    "The capital of France is",
};
#define N_TEXTS ((int)(sizeof(k_texts) / sizeof(k_texts[0])))

static void test_greedy_identity(void **state) {
    (void)state;
    const char *path = ql_test_default_model();
    if (access(path, R_OK) != 0) {
        printf("skipped: %s is absent (the default model)\n", path);
        skip();
    }
    char err[256];
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(path, &g, err, sizeof err) != 0) fail_msg("gguf: %s", err);
    ql_tok_t *tok = NULL;
    if (ql_tok_init_from_gguf(g, &tok, err, sizeof err) != 0) fail_msg("tok: %s", err);
    prompts_t pr;
    encode_all(tok, k_texts, N_TEXTS, &pr);
    static out_t ref[MAX_REQ], got[MAX_REQ];
    totals_t t_ref, t;
    runcfg_t c = {.k = 4, .budget = 256, .max_seqs = 8, .temperature = 0.0f,
                  .max_tokens = MAX_OUT, .logprobs = 1};
    ql_backend_t *big = open_backend(g, 128, 8 * 5);
    run(big, tok, &pr, &c, ref, &t_ref);

    c.spec = QL_ENGINE_SPEC_NGRAM;
    c.fixed_k = 1;
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "ngram, k = 4 fixed", 1);
    printf("    ngram k=4: %d drafted, %d accepted\n", t.n_draft, t.n_accepted);
    assert_true(t.n_accepted > 0 && t.n_draft > t.n_accepted); /* accepts and rejects */
    /* as many blocks cached as without speculation: no rejected draft was registered */
    assert_int_equal(t.counters.kv_blocks_cached, t_ref.counters.kv_blocks_cached);
    assert_true(t.counters.n_steps < t_ref.counters.n_steps);

    c.k = 7;
    c.budget = 24; /* prefill chunks beside verifies, and drafts cut by the budget */
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "ngram, k = 7, 24-token steps", 1);
    printf("    ngram k=7, 24-token steps: %d drafted, %d accepted\n", t.n_draft, t.n_accepted);

    c.k = 4;
    c.budget = 256;
    c.fixed_k = 0;
    c.logprobs = 0;
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "ngram, adaptive k", 0);
    printf("    ngram adaptive: %d drafted, %d accepted\n", t.n_draft, t.n_accepted);

    /* layerskip: the first 8 of 30 layers draft, k fixed then adaptive; 24-token steps */
    c.spec = QL_ENGINE_SPEC_LAYERSKIP;
    c.layers = 8;
    c.fixed_k = 1;
    c.logprobs = 1;
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "layerskip, k = 4 fixed", 1);
    printf("    layerskip L=8 k=4: %d drafted, %d accepted\n", t.n_draft, t.n_accepted);
    assert_true(t.n_draft > 0 && t.n_accepted > 0);
    assert_int_equal(t.counters.kv_blocks_cached, t_ref.counters.kv_blocks_cached);
    c.budget = 24;
    c.k = 3;
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "layerskip, k = 3, 24-token steps", 1);
    c.budget = 256;
    c.k = 4;
    c.fixed_k = 0;
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "layerskip, adaptive k", 1);
    printf("    layerskip adaptive: %d drafted, %d accepted\n", t.n_draft, t.n_accepted);

    /* a draft model: the default model drafting for itself (its own backend and KV pool):
     * every greedy draft is the target's token, so all are accepted */
    c.spec = QL_ENGINE_SPEC_DRAFT;
    c.draft = open_backend(g, 64, 8);
    c.fixed_k = 1;
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "draft model, k = 4 fixed", 1);
    printf("    self-draft k=4: %d drafted, %d accepted\n", t.n_draft, t.n_accepted);
    assert_true(t.n_draft > 0);
    assert_int_equal(t.n_accepted, t.n_draft);
    assert_int_equal(t.counters.kv_blocks_cached, t_ref.counters.kv_blocks_cached);
    c.budget = 24; /* catch-ups split over steps */
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "draft model, 24-token steps", 1);
    c.budget = 256;
    c.fixed_k = 0;
    run(big, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "draft model, adaptive k", 1);
    printf("    self-draft adaptive: %d drafted, %d accepted\n", t.n_draft, t.n_accepted);
    ql_backend_free(big);

    /* a pool that holds the longest request alone but not all of them: preemption */
    int32_t longest = 0;
    for (int i = 0; i < pr.n_req; i++) longest = QL_MAX(longest, pr.n[i]);
    int32_t n_small = (longest + MAX_OUT + 8 + 15) / 16 + 1;
    ql_backend_t *small = open_backend(g, n_small, 8 * 5);
    c.spec = QL_ENGINE_SPEC_NGRAM;
    c.fixed_k = 1;
    c.logprobs = 1;
    run(small, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "ngram, preempted", 1);
    printf("    ngram in a pool of %d blocks: %d preemptions, %d drafted, %d accepted\n",
           (int)n_small, t.n_preemptions, t.n_draft, t.n_accepted);
    assert_true(t.n_preemptions > 0);
    assert_true(t.n_accepted > 0);
    ql_backend_free(small);
    /* layerskip takes 16 scratch blocks (two per seat: a draft may cross a block) off the pool */
    small = open_backend(g, n_small + 16, 8 * 5);
    c.spec = QL_ENGINE_SPEC_LAYERSKIP;
    run(small, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "layerskip, preempted", 1);
    printf("    layerskip in a pool of %d blocks: %d preemptions, %d drafted, %d accepted\n",
           (int)n_small, t.n_preemptions, t.n_draft, t.n_accepted);
    assert_true(t.n_preemptions > 0);
    ql_backend_free(small);
    /* the draft model preempted in the target's pool, and short of blocks in its own */
    small = open_backend(g, n_small, 8 * 5);
    ql_backend_free(c.draft);
    c.draft = open_backend(g, n_small + 2, 8);
    c.spec = QL_ENGINE_SPEC_DRAFT;
    run(small, tok, &pr, &c, got, &t);
    assert_same(&pr, ref, got, "draft model, preempted, small draft pool", 1);
    printf("    self-draft, pools of %d and %d blocks: %d preemptions, %d drafted, %d accepted\n",
           (int)n_small, (int)n_small + 2, t.n_preemptions, t.n_draft, t.n_accepted);
    assert_true(t.n_preemptions > 0 && t.n_draft > 0);
    ql_backend_free(small);
    ql_backend_free(c.draft);
    ql_tok_free(tok);
    ql_gguf_free(g);
}

/* ---- sampled outputs follow the target's distribution ---- */

#define D_VOCAB 259 /* mkmodel's smallest: 3 control tokens and 256 bytes */
#define D_PROMPT 129
#define D_N 6000    /* seeded requests */

/* The processed distribution after `toks` [n], computed straight from the backend (one full
 * forward of the sequence into blocks 0..). */
static void exact_probs(ql_backend_t *be, ql_sampler_t *s, ql_sampler_ws_t *ws,
                        const int32_t *toks, int32_t n, int32_t n_prompt, float *probs) {
    static int32_t pos[600], seq[600], table[64];
    static float logits[D_VOCAB];
    const int32_t bs = ql_backend_info(be)->kv.block_size;
    for (int32_t i = 0; i < n; i++) {
        pos[i] = i;
        seq[i] = 0;
    }
    int32_t nb = (n + bs - 1) / bs;
    for (int32_t i = 0; i < nb; i++) table[i] = i;
    const int32_t *tables[1] = {table};
    int32_t row = n - 1;
    ql_batch_t b = {.n_tokens = n, .tokens = toks, .pos = pos, .seq_of_token = seq, .n_seqs = 1,
                    .block_tables = tables, .n_blocks = &nb, .seq_len = &n, .logits_rows = &row,
                    .n_logits = 1};
    assert_int_equal(ql_backend_forward(be, &b, logits), 0);
    ql_sampling_history_t h = {.tokens = toks, .n_tokens = n, .n_prompt = n_prompt};
    assert_int_equal(ql_sampler_probs(s, ws, logits, &h, probs), 0);
}

/* the 0.999 quantile of chi-square with `dof` degrees of freedom (Wilson-Hilferty) */
static double chi2_q999(int dof) {
    const double z = 3.0902, k = dof, a = 2.0 / (9.0 * k);
    const double c = 1.0 - a + z * sqrt(a);
    return k * c * c * c;
}

static ql_backend_t *g_draft; /* the draft model of check_sampled's QL_ENGINE_SPEC_DRAFT */

/* D_N seeded requests with speculation (method), the first three tokens counted against the
 * exact joint distribution */
static void check_sampled(ql_backend_t *be, const ql_tok_t *tok, const int32_t *prompt,
                          const ql_sampling_params_t *sp_in, int method, const double *joint,
                          int n_cells, const float *p1, int32_t top2[][4], int32_t top3[][4][4]) {
    char err[256];
    ql_sampling_params_t sp = *sp_in;
    /* one draft fits after the first token: max_tokens 3 */
    static out_t outs[D_N];
    ql_engine_params_t ep;
    memset(&ep, 0, sizeof(ep));
    ep.max_num_seqs = 64;
    ep.max_batched_tokens = 512;
    ep.spec_method = method;
    ep.spec_layers = 1;
    ep.draft_backend = method == QL_ENGINE_SPEC_DRAFT ? g_draft : NULL;
    ep.spec_k = 2;
    ep.spec_ngram_max = 1;
    ep.spec_fixed_k = 1;
    ql_engine_t *e = NULL;
    if (ql_engine_init(&ep, be, tok, &e, err, sizeof err) != 0) fail_msg("engine: %s", err);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_final = 0;
    for (int i = 0; i < D_N; i++) {
        out_t *o = &outs[i];
        memset(o, 0, sizeof(*o));
        o->mu = &mu;
        o->cv = &cv;
        o->n_final = &n_final;
        ql_engine_request_t r = ql_engine_request_default();
        r.prompt = prompt;
        r.n_prompt = D_PROMPT;
        r.sampling = sp;
        r.sampling.seed = 1000 + (uint64_t)i;
        r.max_tokens = 3;
        r.ignore_eos = 1;
        r.on_event = on_event;
        r.user_data = o;
        if (ql_engine_submit(e, &r, NULL, err, sizeof err) != 0) fail_msg("submit: %s", err);
    }
    pthread_mutex_lock(&mu);
    while (n_final < D_N) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    ql_engine_free(e);
    static int counts[D_VOCAB * 4 * 4];
    memset(counts, 0, sizeof(counts));
    int drafted = 0, accepted = 0;
    for (int i = 0; i < D_N; i++) {
        const out_t *o = &outs[i];
        assert_int_equal(o->final_kind, QL_ENGINE_EVENT_FINISHED);
        assert_int_equal(o->n_tokens, 3);
        drafted += o->stats.n_draft_tokens;
        accepted += o->stats.n_accepted_tokens;
        int32_t t1 = o->tokens[0], r2 = -1, r3 = -1;
        if (p1[t1] <= 0.0f) fail_msg("request %d: first token %d has p = 0", i, (int)t1);
        for (int k = 0; k < 4; k++)
            if (top2[t1][k] == o->tokens[1]) r2 = k;
        if (r2 < 0) fail_msg("request %d: second token %d has p = 0", i, (int)o->tokens[1]);
        for (int k = 0; k < 4; k++)
            if (top3[t1][r2][k] == o->tokens[2]) r3 = k;
        if (r3 < 0) fail_msg("request %d: third token %d has p = 0", i, (int)o->tokens[2]);
        counts[(t1 * 4 + r2) * 4 + r3]++;
    }
    double x = 0.0;
    for (int c = 0; c < D_VOCAB * 16; c++) {
        if (joint[c] <= 0.0) continue;
        double ex = joint[c] * D_N;
        x += (counts[c] - ex) * (counts[c] - ex) / ex;
    }
    printf("    %s: %d cells, chi2 %.1f (0.999 quantile %.1f); %d drafted, %d accepted\n",
           method == QL_ENGINE_SPEC_NGRAM       ? "ngram"
           : method == QL_ENGINE_SPEC_LAYERSKIP ? "layerskip (1 of 2 layers)"
                                                : "draft model (other weights)",
           n_cells, x,
           chi2_q999(n_cells - 1), drafted, accepted);
    assert_true(x < chi2_q999(n_cells - 1));
    assert_true(accepted >= 200 && drafted - accepted >= 200); /* both paths, often */
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
}

static void test_distribution(void **state) {
    (void)state;
    char err[256], path[] = "/tmp/quill-test-spec-XXXXXX";
    ql_mkmodel_params_t mp;
    memset(&mp, 0, sizeof(mp));
    assert_int_equal(ql_mkmodel_shape_get("tiny", &mp.shape), 0);
    mp.shape.n_vocab = D_VOCAB;
    mp.seed = 11;
    mp.wtype = QL_DTYPE_F32;
    if (ql_test_mkmodel_file(&mp, path, err, sizeof err) != 0) fail_msg("mkmodel: %s", err);
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(path, &g, err, sizeof err) != 0) fail_msg("gguf: %s", err);
    ql_tok_t *tok = NULL;
    if (ql_tok_init_from_gguf(g, &tok, err, sizeof err) != 0) fail_msg("tok: %s", err);

    /* the prompt: <|im_start|> then pairs (v, v): an n-gram of one token proposes the token
     * that followed it, so drafts are proposed after most first tokens */
    int32_t prompt[D_PROMPT];
    prompt[0] = 1;
    for (int i = 0; i < (D_PROMPT - 1) / 2; i++) prompt[1 + 2 * i] = prompt[2 + 2 * i] = 3 + i;
    /* sampling: temperature, top-k and a frequency penalty shape p (and the one-hot q) */
    ql_sampling_params_t sp = ql_sampling_params_default();
    sp.temperature = 0.9f;
    sp.top_k = 4;
    sp.frequency_penalty = 0.3f;

    /* the exact joint distribution of the first three tokens */
    ql_backend_params_t bp;
    memset(&bp, 0, sizeof(bp));
    bp.n_threads = 2;
    bp.block_size = 16;
    bp.n_batch_tokens_max = 512;
    bp.n_seqs_max = 64;
    bp.n_logits_max = 64 * 3;
    bp.n_ctx_max = 512;
    bp.kv_cache_bytes = 16u << 20;
    ql_backend_t *be = NULL;
    if (ql_cpu_backend_init(g, &bp, &be, err, sizeof err) != 0) fail_msg("cpu: %s", err);
    ql_sampler_ws_t *ws = NULL;
    assert_int_equal(ql_sampler_ws_init(D_VOCAB, &ws), 0);
    ql_sampler_t smp;
    assert_int_equal(ql_sampler_init(&smp, &sp, D_VOCAB), 0);
    static float p1[D_VOCAB], p2[D_VOCAB], p3[D_VOCAB];
    static double joint[D_VOCAB * 4 * 4]; /* indexed by (t1, rank of t2, rank of t3) */
    static int32_t top2[D_VOCAB][4], top3[D_VOCAB][4][4];
    int32_t seqbuf[D_PROMPT + 3];
    memcpy(seqbuf, prompt, sizeof(prompt));
    exact_probs(be, &smp, ws, seqbuf, D_PROMPT, D_PROMPT, p1);
    int n_cells = 0;
    for (int32_t t1 = 0; t1 < D_VOCAB; t1++) {
        if (p1[t1] <= 0.0f) continue;
        seqbuf[D_PROMPT] = t1;
        exact_probs(be, &smp, ws, seqbuf, D_PROMPT + 1, D_PROMPT, p2);
        int r2 = 0;
        for (int32_t t2 = 0; t2 < D_VOCAB; t2++) {
            if (p2[t2] <= 0.0f) continue;
            assert_true(r2 < 4);
            top2[t1][r2] = t2;
            seqbuf[D_PROMPT + 1] = t2;
            exact_probs(be, &smp, ws, seqbuf, D_PROMPT + 2, D_PROMPT, p3);
            int r3 = 0;
            for (int32_t t3 = 0; t3 < D_VOCAB; t3++) {
                if (p3[t3] <= 0.0f) continue;
                assert_true(r3 < 4);
                top3[t1][r2][r3] = t3;
                joint[(t1 * 4 + r2) * 4 + r3] = (double)p1[t1] * p2[t2] * p3[t3];
                r3++;
                n_cells++;
            }
            r2++;
        }
    }
    ql_sampler_ws_free(ws);

    check_sampled(be, tok, prompt, &sp, QL_ENGINE_SPEC_NGRAM, joint, n_cells, p1, top2, top3);
    check_sampled(be, tok, prompt, &sp, QL_ENGINE_SPEC_LAYERSKIP, joint, n_cells, p1, top2, top3);
    /* a draft model with other weights (mkmodel seed 12) over the same vocabulary */
    mp.seed = 12;
    char dpath[] = "/tmp/quill-test-spec-draft-XXXXXX";
    if (ql_test_mkmodel_file(&mp, dpath, err, sizeof err) != 0) fail_msg("mkmodel: %s", err);
    ql_gguf_t *dg = NULL;
    if (ql_gguf_open(dpath, &dg, err, sizeof err) != 0) fail_msg("gguf: %s", err);
    if (ql_cpu_backend_init(dg, &bp, &g_draft, err, sizeof err) != 0) fail_msg("cpu: %s", err);
    check_sampled(be, tok, prompt, &sp, QL_ENGINE_SPEC_DRAFT, joint, n_cells, p1, top2, top3);
    ql_backend_free(g_draft);
    g_draft = NULL;
    ql_gguf_free(dg);
    unlink(dpath);
    ql_backend_free(be);

    ql_tok_free(tok);
    ql_gguf_free(g);
    unlink(path);
}

/* ql_batch_t.n_layers on the CPU backend: all layers = 0, fewer layers = other logits (the
 * first layers and the head), out of range refused */
static void test_layer_limit(void **state) {
    (void)state;
    char err[256], path[] = "/tmp/quill-test-spec-ll-XXXXXX";
    ql_mkmodel_params_t mp;
    memset(&mp, 0, sizeof(mp));
    assert_int_equal(ql_mkmodel_shape_get("tiny", &mp.shape), 0);
    mp.seed = 5;
    mp.wtype = QL_DTYPE_F32;
    if (ql_test_mkmodel_file(&mp, path, err, sizeof err) != 0) fail_msg("mkmodel: %s", err);
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(path, &g, err, sizeof err) != 0) fail_msg("gguf: %s", err);
    ql_backend_t *be = open_backend(g, 8, 8);
    const int32_t n_vocab = ql_backend_info(be)->n_vocab, n_layer = ql_backend_info(be)->kv.n_layer;
    assert_int_equal(n_layer, 2);
    const int32_t toks[5] = {1, 40, 41, 42, 43}, pos[5] = {0, 1, 2, 3, 4}, seq[5] = {0};
    const int32_t table[1] = {0}, *tables[1] = {table}, nb = 1, len = 5, row = 4;
    float *l0 = malloc((size_t)n_vocab * sizeof(float)), *l1 = malloc((size_t)n_vocab * 4),
          *l2 = malloc((size_t)n_vocab * 4);
    ql_batch_t b = {.n_tokens = 5, .tokens = toks, .pos = pos, .seq_of_token = seq, .n_seqs = 1,
                    .block_tables = tables, .n_blocks = &nb, .seq_len = &len,
                    .logits_rows = &row, .n_logits = 1};
    assert_int_equal(ql_backend_forward(be, &b, l0), 0);
    b.n_layers = n_layer;
    assert_int_equal(ql_backend_forward(be, &b, l2), 0);
    assert_memory_equal(l0, l2, (size_t)n_vocab * sizeof(float));
    b.n_layers = 1;
    assert_int_equal(ql_backend_forward(be, &b, l1), 0);
    assert_true(memcmp(l0, l1, (size_t)n_vocab * sizeof(float)) != 0);
    /* the full forward again: what the one-layer run wrote did not disturb it */
    b.n_layers = 0;
    assert_int_equal(ql_backend_forward(be, &b, l2), 0);
    assert_memory_equal(l0, l2, (size_t)n_vocab * sizeof(float));
    b.n_layers = n_layer + 1;
    assert_int_equal(ql_backend_forward(be, &b, l2), QL_EINVAL);
    b.n_layers = -1;
    assert_int_equal(ql_backend_forward(be, &b, l2), QL_EINVAL);
    free(l0);
    free(l1);
    free(l2);
    ql_backend_free(be);
    ql_gguf_free(g);
    unlink(path);
}

int main(void) {
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_identity),
        cmocka_unit_test(test_distribution),
        cmocka_unit_test(test_layer_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
