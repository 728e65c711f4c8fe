/*
 * tests/unit/scheduler/test-engine-cpu.c — the engine thread over the real CPU backend: greedy
 * outputs are identical alone, batched (with chunked prefill), after preemption in a pool too
 * small for the batch, and on prefix-cache hits (the CPU backend is batch invariant to the bit,
 * so any difference is the scheduler's: a wrong block table, a missed copy, a wrong recompute).
 * On mkmodel's tiny random model (always) and on the default model (SmolLM2, skipped when
 * absent: $QL_DEFAULT_MODEL or ~/.cache/quill).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pthread.h>
#include <time.h>

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

#define N_REQ 4
#define MAX_OUT 24
#define MAX_PROMPT 160

typedef struct out_s {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *n_final;
    int32_t tokens[MAX_OUT];
    int32_t n_tokens;
    int final_kind, status;
    int32_t n_cached;
    int32_t n_preemptions;
} out_t;

static void on_event(const ql_engine_event_t *ev, void *ud) {
    out_t *o = ud;
    pthread_mutex_lock(o->mu);
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) {
        for (int32_t i = 0; i < ev->n_tokens && o->n_tokens < MAX_OUT; i++) o->tokens[o->n_tokens++] = ev->tokens[i];
    } else {
        o->final_kind = ev->kind;
        o->status = ev->status;
        o->n_cached = ev->stats.n_cached_prompt_tokens;
        o->n_preemptions = ev->stats.n_preemptions;
        (*o->n_final)++;
        pthread_cond_broadcast(o->cv);
    }
    pthread_mutex_unlock(o->mu);
}

typedef struct prompts_s {
    int32_t ids[N_REQ][MAX_PROMPT];
    int32_t n[N_REQ];
} prompts_t;

static ql_backend_t *open_backend(const ql_gguf_t *g, int32_t n_blocks) {
    ql_backend_params_t p;
    memset(&p, 0, sizeof(p));
    p.n_threads = 2;
    p.block_size = 16;
    p.n_batch_tokens_max = 64;
    p.n_seqs_max = 8;
    p.n_ctx_max = 512;
    ql_backend_t *be = NULL;
    char err[256];
    /* size the pool by asking once for one block's bytes */
    p.kv_cache_bytes = 1u << 20;
    if (ql_cpu_backend_init(g, &p, &be, err, sizeof err) != 0) fail_msg("cpu backend: %s", err);
    uint64_t bb = ql_backend_info(be)->kv_block_bytes;
    ql_backend_free(be);
    p.kv_cache_bytes = bb * (uint64_t)n_blocks;
    if (ql_cpu_backend_init(g, &p, &be, err, sizeof err) != 0) fail_msg("cpu backend: %s", err);
    assert_int_equal(ql_backend_info(be)->kv.n_blocks, n_blocks);
    return be;
}

/* Runs the prompts through an engine over `be`: all at once (`together`) or one after the
 * other; outputs into outs[]. */
static void run(ql_backend_t *be, const ql_tok_t *tok, const prompts_t *pr, int together,
                int32_t budget, out_t *outs) {
    ql_engine_params_t p;
    memset(&p, 0, sizeof(p));
    p.max_num_seqs = 4;
    p.max_batched_tokens = budget;
    ql_engine_t *e = NULL;
    char err[256];
    if (ql_engine_init(&p, be, tok, &e, err, sizeof err) != 0) fail_msg("engine: %s", err);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_final = 0;
    for (int i = 0; i < N_REQ; i++) {
        memset(&outs[i], 0, sizeof(outs[i]));
        outs[i].mu = &mu;
        outs[i].cv = &cv;
        outs[i].n_final = &n_final;
        ql_engine_request_t r = ql_engine_request_default();
        r.prompt = pr->ids[i];
        r.n_prompt = pr->n[i];
        r.sampling.temperature = 0.0f;
        r.max_tokens = MAX_OUT;
        r.ignore_eos = 1; /* full length: more steps to get wrong */
        r.on_event = on_event;
        r.user_data = &outs[i];
        if (ql_engine_submit(e, &r, NULL, err, sizeof err) != 0) fail_msg("submit: %s", err);
        if (!together) {
            pthread_mutex_lock(&mu);
            while (n_final < i + 1) pthread_cond_wait(&cv, &mu);
            pthread_mutex_unlock(&mu);
        }
    }
    pthread_mutex_lock(&mu);
    while (n_final < N_REQ) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    ql_engine_shutdown(e, 1);
    ql_engine_free(e);
    for (int i = 0; i < N_REQ; i++) {
        if (outs[i].final_kind != QL_ENGINE_EVENT_FINISHED)
            fail_msg("request %d ended with %s", i, ql_strerror(outs[i].status));
        assert_int_equal(outs[i].n_tokens, MAX_OUT);
    }
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
}

static void assert_same(const out_t *a, const out_t *b, const char *what) {
    for (int i = 0; i < N_REQ; i++) {
        if (memcmp(a[i].tokens, b[i].tokens, sizeof(a[i].tokens)) != 0) {
            int k = 0;
            while (k < MAX_OUT && a[i].tokens[k] == b[i].tokens[k]) k++;
            fail_msg("%s: request %d differs from its run alone at token %d", what, i, k);
        }
    }
}

static void suite(const ql_gguf_t *g, const ql_tok_t *tok, const char *const texts[N_REQ]) {
    prompts_t pr;
    for (int i = 0; i < N_REQ; i++) {
        size_t n;
        assert_int_equal(ql_tok_encode(tok, texts[i], strlen(texts[i]), QL_TOK_ADD_SPECIAL, pr.ids[i],
                                       MAX_PROMPT, &n), 0);
        pr.n[i] = (int32_t)n;
    }
    out_t alone[N_REQ], batched[N_REQ], chunked[N_REQ], tight[N_REQ];
    ql_backend_t *big = open_backend(g, 64);
    run(big, tok, &pr, 0, 64, alone);
    run(big, tok, &pr, 1, 64, batched);
    assert_same(alone, batched, "batched");
    run(big, tok, &pr, 1, 8, chunked); /* prefill in chunks of at most 8 - decodes */
    assert_same(alone, chunked, "chunked prefill");
    ql_backend_free(big);

    /* a pool that holds the longest request alone but not the four together: preemption */
    int32_t longest = 0;
    for (int i = 0; i < N_REQ; i++) longest = QL_MAX(longest, pr.n[i]);
    int32_t n_small = (longest + MAX_OUT - 1 + 15) / 16 + 1;
    ql_backend_t *small = open_backend(g, n_small);
    run(small, tok, &pr, 1, 64, tight);
    assert_same(alone, tight, "preempted");
    int n_pre = 0;
    for (int i = 0; i < N_REQ; i++) n_pre += tight[i].n_preemptions;
    assert_true(n_pre > 0);
    ql_backend_free(small);
    printf("    prompts of %d..%d tokens; %d preemptions in a pool of %d blocks\n",
           (int)QL_MIN(QL_MIN(pr.n[0], pr.n[1]), QL_MIN(pr.n[2], pr.n[3])), (int)longest, n_pre,
           (int)n_small);
}

/* A second round of the same prompts in one engine: cached prompt tokens, same outputs. */
static void prefix_round(const ql_gguf_t *g, const ql_tok_t *tok, const char *const texts[N_REQ]) {
    prompts_t pr;
    for (int i = 0; i < N_REQ; i++) {
        size_t n;
        assert_int_equal(ql_tok_encode(tok, texts[i], strlen(texts[i]), QL_TOK_ADD_SPECIAL, pr.ids[i],
                                       MAX_PROMPT, &n), 0);
        pr.n[i] = (int32_t)n;
    }
    ql_backend_t *be = open_backend(g, 64);
    ql_engine_params_t p;
    memset(&p, 0, sizeof(p));
    p.max_num_seqs = 4;
    ql_engine_t *e = NULL;
    char err[256];
    if (ql_engine_init(&p, be, tok, &e, err, sizeof err) != 0) fail_msg("engine: %s", err);
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_final = 0;
    out_t rounds[2][N_REQ];
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < N_REQ; i++) {
            out_t *o = &rounds[round][i];
            memset(o, 0, sizeof(*o));
            o->mu = &mu;
            o->cv = &cv;
            o->n_final = &n_final;
            ql_engine_request_t r = ql_engine_request_default();
            r.prompt = pr.ids[i];
            r.n_prompt = pr.n[i];
            r.sampling.temperature = 0.0f;
            r.max_tokens = MAX_OUT;
            r.ignore_eos = 1;
            r.on_event = on_event;
            r.user_data = o;
            if (ql_engine_submit(e, &r, NULL, err, sizeof err) != 0) fail_msg("submit: %s", err);
        }
        pthread_mutex_lock(&mu);
        while (n_final < N_REQ * (round + 1)) pthread_cond_wait(&cv, &mu);
        pthread_mutex_unlock(&mu);
    }
    ql_engine_free(e);
    ql_backend_free(be);
    for (int i = 0; i < N_REQ; i++) {
        assert_int_equal(rounds[1][i].final_kind, QL_ENGINE_EVENT_FINISHED);
        assert_int_equal(rounds[1][i].n_cached, (pr.n[i] - 1) / 16 * 16);
    }
    assert_same(rounds[0], rounds[1], "prefix-cache hits");
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
}

/* Prompts of 40..70 tokens on the tiny vocabulary (about 1 token per 1.5 characters). */
static const char *const k_texts[N_REQ] = {
    "The quick brown fox jumps over the lazy dog while the cat sleeps on the warm windowsill "
    "and dreams of fish.",
    "In the beginning there was nothing but a small server written in C, and it answered every "
    "request with care.",
    "Paged attention splits the key value cache into blocks so that many sequences share one "
    "pool of memory without waste.",
    "Continuous batching admits new requests at every step, which keeps the accelerator busy and "
    "the latency low.",
};

static void test_tiny_model(void **state) {
    (void)state;
    char err[256], path[] = "/tmp/quill-test-engine-cpu-XXXXXX";
    ql_mkmodel_params_t mp;
    memset(&mp, 0, sizeof(mp));
    assert_int_equal(ql_mkmodel_shape_get("tiny", &mp.shape), 0);
    mp.seed = 3;
    mp.wtype = QL_DTYPE_F32;
    if (ql_test_mkmodel_file(&mp, path, err, sizeof err) != 0) fail_msg("mkmodel: %s", err);
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(path, &g, err, sizeof err) != 0) fail_msg("gguf: %s", err);
    ql_tok_t *tok = NULL;
    if (ql_tok_init_from_gguf(g, &tok, err, sizeof err) != 0) fail_msg("tok: %s", err);
    suite(g, tok, k_texts);
    prefix_round(g, tok, k_texts);
    ql_tok_free(tok);
    ql_gguf_free(g);
    unlink(path);
}

static void test_default_model(void **state) {
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
    suite(g, tok, k_texts);
    prefix_round(g, tok, k_texts);
    ql_tok_free(tok);
    ql_gguf_free(g);
}

int main(void) {
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_model),
        cmocka_unit_test(test_default_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
