/*
 * tests/unit/scheduler/test-engine.c — the engine thread (scheduler/engine.h) over the paged
 * fake backend (fake-backend.h) and mkmodel's tiny tokenizer:
 *   - many threads submitting at once: every request gets exactly one final event, after all
 *     its output events; tokens equal the fake's greedy rule, text equals the one-shot decode,
 *     in a big pool and in a pool so small that preemption is constant;
 *   - stop conditions end to end (script mode): stop strings across tokens, EOS, stop ids,
 *     max_tokens, min_tokens (EOS banned), ignore_eos, the context length; n = 2; logprobs;
 *   - refusals at submit (the callback is never called), cancellation within one step from the
 *     callback and from another thread, shutdown (abort and drain) with requests in flight, a
 *     failing backend (every request ends with its status; the engine turns unhealthy);
 *   - prefix-cache hits reported as cached prompt tokens; counters; no KV block left in use.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pthread.h>
#include <time.h>

#include <cmocka.h>

#include "core/core.h"
#include "fake-backend.h"
#include "model/tokenizer.h"
#include "model/unicode.h"
#include "scheduler/detok.h"
#include "scheduler/engine.h"

#define V 512         /* mkmodel tiny's vocabulary */
#define EOS 2         /* <|im_end|> */
#define MAXT 160      /* output tokens recorded per choice */
#define MAXC 4        /* choices */

static ql_tok_t *g_tok;

/* ---- collecting events ---- */

typedef struct sync_s {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_final;
} sync_t;

typedef struct out_s {
    sync_t *sync;
    ql_engine_t *engine;
    uint64_t handle;
    int32_t prompt[64];
    int32_t n_prompt, max_tokens;
    int32_t tokens[MAXC][MAXT];
    int32_t n_tokens[MAXC];
    char text[MAXC][2048];
    size_t n_text[MAXC];
    ql_finish_reason_t finish[MAXC];
    int n_output, n_final, n_after_final, n_bad_utf8, n_logprobs_bad;
    int final_kind, status;
    char message[256];
    ql_engine_stats_t stats;
    int32_t n_choices_final;
    ql_finish_reason_t final_reasons[MAXC];
    int cancel_after;       /* > 0: cancel from the callback after this many OUTPUT events */
    int want_top;           /* expected top_logprobs count, 0: no logprobs expected */
} out_t;

/* Runs on the engine thread: records under the sync lock (the test thread reads under it too)
 * and never uses cmocka's asserts, which cannot fail across threads; bad events are counted. */
static void record_event(const ql_engine_event_t *ev, out_t *o) {
    if (o->n_final) {
        o->n_after_final++;
        return;
    }
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) {
        o->n_output++;
        int c = ev->choice;
        if (c < 0 || c >= MAXC) abort();
        if (o->finish[c] != QL_FINISH_REASON_NONE) o->n_after_final++; /* output after the choice ended */
        for (int32_t i = 0; i < ev->n_tokens; i++)
            if (o->n_tokens[c] < MAXT) o->tokens[c][o->n_tokens[c]++] = ev->tokens[i];
        if (!ql_utf8_valid(ev->text, ev->text_len)) o->n_bad_utf8++;
        if (o->n_text[c] + ev->text_len <= sizeof(o->text[c])) {
            memcpy(o->text[c] + o->n_text[c], ev->text, ev->text_len);
            o->n_text[c] += ev->text_len;
        }
        o->finish[c] = ev->finish_reason;
        if (o->want_top) {
            if (!ev->logprobs || ev->logprobs[0].n_top != o->want_top ||
                ev->logprobs[0].token != ev->tokens[0] || !(ev->logprobs[0].logprob <= 0.0f))
                o->n_logprobs_bad++;
        } else if (ev->logprobs) {
            o->n_logprobs_bad++;
        }
        if (o->cancel_after && o->n_output == o->cancel_after) ql_engine_cancel(o->engine, ev->handle);
        return;
    }
    o->final_kind = ev->kind;
    o->status = ev->status;
    o->stats = ev->stats;
    if (ev->kind == QL_ENGINE_EVENT_FINISHED) {
        o->n_choices_final = ev->n_choices;
        for (int32_t i = 0; i < ev->n_choices && i < MAXC; i++) o->final_reasons[i] = ev->finish_reasons[i];
    } else {
        snprintf(o->message, sizeof o->message, "%s", ev->message ? ev->message : "(null)");
    }
    o->n_final++;
    o->sync->n_final++;
    pthread_cond_broadcast(&o->sync->cv);
}

static void on_event(const ql_engine_event_t *ev, void *ud) {
    out_t *o = ud;
    pthread_mutex_lock(&o->sync->mu);
    record_event(ev, o);
    pthread_mutex_unlock(&o->sync->mu);
}

static void sync_init(sync_t *s) {
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->n_final = 0;
}

static void sync_destroy(sync_t *s) {
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}

/* Waits until n final events arrived (30 s at most: a hang fails instead of blocking). */
static void wait_finals(sync_t *s, int n) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 30;
    pthread_mutex_lock(&s->mu);
    while (s->n_final < n) {
        if (pthread_cond_timedwait(&s->cv, &s->mu, &dl) != 0) break;
    }
    int got = s->n_final;
    pthread_mutex_unlock(&s->mu);
    if (got < n) fail_msg("%d final events after 30 s, expected %d", got, n);
}

/* Waits until `o` has at least n OUTPUT events (polling; the counter only grows). */
static void wait_outputs(const out_t *o, int n) {
    for (int i = 0; i < 30000; i++) {
        pthread_mutex_lock(&o->sync->mu);
        int got = o->n_output, fin = o->n_final;
        pthread_mutex_unlock(&o->sync->mu);
        if (got >= n || fin) return;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    fail_msg("no output after 30 s");
}

/* ---- engines ---- */

/* Rule mode over mkmodel's merges (ids 259 and up: mostly ASCII text, so deltas can be checked
 * for whole characters) */
static fake_be_t *new_fake(int32_t n_blocks, int32_t bs) {
    fake_be_t *fb = fake_be_new(V, n_blocks, bs, 64, 16, 512);
    fb->lo = 259;
    fb->hi = V;
    fb->eos = EOS;
    fb->eos_mod = 12;
    return fb;
}

static ql_engine_t *new_engine(fake_be_t *fb, int32_t max_num_seqs, int32_t budget, int32_t max_model_len) {
    ql_engine_params_t p;
    memset(&p, 0, sizeof(p));
    p.max_num_seqs = max_num_seqs;
    p.max_batched_tokens = budget;
    p.max_model_len = max_model_len;
    ql_engine_t *e = NULL;
    char err[256];
    int rc = ql_engine_init(&p, &fb->base, g_tok, &e, err, sizeof err);
    if (rc != 0) fail_msg("engine init: %s (%s)", err, ql_strerror(rc));
    return e;
}

static ql_engine_request_t greedy_request(out_t *o) {
    ql_engine_request_t r = ql_engine_request_default();
    r.sampling.temperature = 0.0f;
    r.prompt = o->prompt;
    r.n_prompt = o->n_prompt;
    r.max_tokens = o->max_tokens;
    r.on_event = on_event;
    r.user_data = o;
    return r;
}

static void fill_prompt(out_t *o, int32_t n, uint32_t seed) {
    uint32_t x = seed * 2654435761u + 7u;
    for (int32_t k = 0; k < n; k++) {
        x = x * 1103515245u + 12345u;
        o->prompt[k] = 3 + (int32_t)((x >> 8) % (V - 3));
    }
    o->n_prompt = n;
}

static void submit_ok(ql_engine_t *e, const ql_engine_request_t *r, out_t *o) {
    char err[256];
    int rc = ql_engine_submit(e, r, &o->handle, err, sizeof err);
    if (rc != 0) fail_msg("submit: %s (%s)", err, ql_strerror(rc));
    assert_true(o->handle != 0);
}

/* The expected output of a greedy request: the fake's rule, up to EOS or max_tokens. */
static int32_t ref_tokens(const fake_be_t *fb, const out_t *o, int32_t *out) {
    int32_t hist[64 + MAXT];
    memcpy(hist, o->prompt, (size_t)o->n_prompt * sizeof(int32_t));
    int32_t n = 0;
    while (n < o->max_tokens) {
        int32_t t = fake_next(fb, hist, o->n_prompt + n);
        hist[o->n_prompt + n] = t;
        out[n++] = t;
        if (t == EOS) break;
    }
    return n;
}

/* The text of tokens[0, n) without a final EOS, as the engine must stream it. */
static size_t ref_text(const int32_t *tokens, int32_t n, char *buf, size_t cap) {
    if (n > 0 && tokens[n - 1] == EOS) n--;
    size_t len;
    assert_int_equal(ql_tok_decode(g_tok, tokens, (size_t)n, QL_TOK_CONTINUATION, buf, cap, &len), 0);
    size_t tail = ql_utf8_incomplete_tail(buf, len);
    if (tail) {
        memcpy(buf + len - tail, QL_DETOK_REPLACEMENT, 3);
        len = len - tail + 3;
    }
    return len;
}

static void assert_greedy_output(const fake_be_t *fb, const out_t *o) {
    assert_int_equal(o->n_final, 1);
    assert_int_equal(o->n_after_final, 0);
    if (o->final_kind != QL_ENGINE_EVENT_FINISHED)
        fail_msg("request ended with %d (%s): %s", o->final_kind, ql_strerror(o->status), o->message);
    int32_t ref[MAXT];
    int32_t n = ref_tokens(fb, o, ref);
    assert_int_equal(o->n_tokens[0], n);
    assert_memory_equal(o->tokens[0], ref, (size_t)n * sizeof(int32_t));
    assert_int_equal(o->stats.n_completion_tokens, n);
    assert_int_equal(o->stats.n_prompt_tokens, o->n_prompt);
    assert_int_equal(o->n_output, n);
    ql_finish_reason_t want = ref[n - 1] == EOS ? QL_FINISH_REASON_STOP : QL_FINISH_REASON_LENGTH;
    assert_int_equal(o->finish[0], want);
    assert_int_equal(o->final_reasons[0], want);
    assert_int_equal(o->n_choices_final, 1);
    char text[4096];
    size_t tn = ref_text(ref, n, text, sizeof text);
    assert_int_equal(o->n_text[0], tn);
    assert_memory_equal(o->text[0], text, tn);
    /* deltas are whole characters whenever the output's bytes are valid UTF-8 (invalid bytes
     * the model produced are passed on as they are: the HTTP layer replaces them) */
    if (ql_utf8_valid(text, tn)) assert_int_equal(o->n_bad_utf8, 0);
    assert_true(o->stats.t_submit_ns <= o->stats.t_scheduled_ns);
    assert_true(o->stats.t_scheduled_ns <= o->stats.t_first_token_ns);
    assert_true(o->stats.t_first_token_ns <= o->stats.t_finish_ns);
}

/* Counters are published after each step, and a request's final event comes during the step
 * that ends it: poll briefly. */
static void assert_engine_idle(ql_engine_t *e) {
    ql_engine_counters_t c;
    for (int k = 0; k < 1000; k++) {
        ql_engine_get_counters(e, &c);
        if (c.n_running == 0 && c.n_waiting == 0 && c.kv_blocks_used == 0) break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(c.n_running, 0);
    assert_int_equal(c.n_waiting, 0);
    assert_int_equal(c.kv_blocks_used, 0);
}

/* ---- many submitters ---- */

#define N_THREADS 4
#define N_PER_THREAD 30

typedef struct submitter_s {
    ql_engine_t *e;
    out_t *outs; /* [N_PER_THREAD] */
    sync_t *sync;
    int index;
    int cancel_some;
} submitter_t;

static void *submitter_main(void *arg) {
    submitter_t *s = arg;
    uint32_t x = 1000u + (uint32_t)s->index;
    for (int i = 0; i < N_PER_THREAD; i++) {
        out_t *o = &s->outs[i];
        memset(o, 0, sizeof(*o));
        o->sync = s->sync;
        o->engine = s->e;
        x = x * 1103515245u + 12345u;
        fill_prompt(o, 1 + (int32_t)((x >> 8) % 40), x);
        o->max_tokens = 1 + (int32_t)((x >> 20) % 24);
        ql_engine_request_t r = greedy_request(o);
        r.priority = (int32_t)((x >> 4) % 3);
        char id[32];
        snprintf(id, sizeof id, "t%d-%d", s->index, i);
        r.id = id;
        if (ql_engine_submit(s->e, &r, &o->handle, NULL, 0) != 0) abort();
        if (s->cancel_some && i % 5 == 4) {
            if (i % 10 == 4) ql_engine_cancel(s->e, o->handle);
            else ql_engine_cancel_id(s->e, id);
        }
    }
    return NULL;
}

static void run_concurrent(int32_t n_blocks, int32_t bs, int cancel_some) {
    fake_be_t *fb = new_fake(n_blocks, bs);
    ql_engine_t *e = new_engine(fb, 8, 32, 128);
    sync_t sync;
    sync_init(&sync);
    static out_t outs[N_THREADS][N_PER_THREAD];
    submitter_t subs[N_THREADS];
    pthread_t th[N_THREADS];
    for (int t = 0; t < N_THREADS; t++) {
        subs[t] = (submitter_t){.e = e, .outs = outs[t], .sync = &sync, .index = t, .cancel_some = cancel_some};
        assert_int_equal(pthread_create(&th[t], NULL, submitter_main, &subs[t]), 0);
    }
    for (int t = 0; t < N_THREADS; t++) pthread_join(th[t], NULL);
    wait_finals(&sync, N_THREADS * N_PER_THREAD);
    assert_engine_idle(e);
    int n_cancelled = 0;
    for (int t = 0; t < N_THREADS; t++) {
        for (int i = 0; i < N_PER_THREAD; i++) {
            out_t *o = &outs[t][i];
            if (o->final_kind == QL_ENGINE_EVENT_ERROR) {
                assert_true(cancel_some);
                assert_int_equal(o->status, QL_ECANCELED);
                assert_int_equal(o->n_final, 1);
                n_cancelled++;
                continue;
            }
            assert_greedy_output(fb, o);
        }
    }
    ql_engine_counters_t c;
    ql_engine_get_counters(e, &c);
    assert_int_equal(c.n_requests_finished + c.n_requests_cancelled, N_THREADS * N_PER_THREAD);
    assert_int_equal(c.n_requests_cancelled, (uint64_t)n_cancelled);
    assert_int_equal(c.n_requests_failed, 0);
    assert_int_equal(c.healthy, 1);
    assert_true(c.n_steps > 0);
    printf("    pool %d x %d%s: %llu steps, %llu preemptions, %llu generated, %d cancelled\n", (int)n_blocks,
           (int)bs, cancel_some ? ", cancellations" : "", (unsigned long long)c.n_steps,
           (unsigned long long)c.n_preemptions, (unsigned long long)c.n_generation_tokens, n_cancelled);
    ql_engine_shutdown(e, 1);
    ql_engine_free(e);
    assert_int_equal(fb->n_invalid, 0);
    assert_true(fb->max_tokens_seen <= 32);
    assert_true(fb->max_seqs_seen <= 8);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
}

static void test_concurrent_submitters(void **state) {
    (void)state;
    run_concurrent(256, 16, 0);
}

static void test_concurrent_tiny_pool(void **state) {
    (void)state;
    /* 64 tokens of KV for 8 seats: requests (<= 63 tokens each) keep preempting each other */
    run_concurrent(16, 4, 0);
}

static void test_concurrent_with_cancellations(void **state) {
    (void)state;
    run_concurrent(24, 4, 1);
}

/* ---- stop conditions ---- */

typedef struct script_case_s {
    const char *name;
    const char *script;      /* bytes the model says, one byte token each, then EOS */
    const char *stop;        /* NULL: none */
    const char *stop_id_char; /* NULL: none; else the byte whose token is a stop id */
    int32_t max_tokens, min_tokens, ignore_eos;
    const char *text;        /* expected text */
    ql_finish_reason_t finish;
    int32_t n_completion;    /* expected completion tokens; -1: don't check */
} script_case_t;

static const script_case_t k_script_cases[] = {
    {"stop string across tokens", "Hello world</s>tail", "</s>", NULL, 50, 0, 0, "Hello world",
     QL_FINISH_REASON_STOP, 15},
    {"stop string never matched", "Hello </", "</s>", NULL, 50, 0, 0, "Hello </", QL_FINISH_REASON_STOP, 9},
    {"multi-byte text and stop", "caf\xC3\xA9 \xE2\x9C\x93!", "\xE2\x9C\x93", NULL, 50, 0, 0, "caf\xC3\xA9 ",
     QL_FINISH_REASON_STOP, 9},
    {"eos", "abc", NULL, NULL, 50, 0, 0, "abc", QL_FINISH_REASON_STOP, 4},
    {"max_tokens", "abcdef", NULL, NULL, 2, 0, 0, "ab", QL_FINISH_REASON_LENGTH, 2},
    {"max_tokens flushes a held stop prefix", "ab<", "<|x|>", NULL, 3, 0, 0, "ab<", QL_FINISH_REASON_LENGTH, 3},
    {"max_tokens cuts a character", "a\xE2\x9C\x93", NULL, NULL, 3, 0, 0, "a" QL_DETOK_REPLACEMENT,
     QL_FINISH_REASON_LENGTH, 3},
    {"stop token id", "abcd", NULL, "c", 50, 0, 0, "ab", QL_FINISH_REASON_STOP, 3},
    {"ignore_eos runs to max_tokens", "ab", NULL, NULL, 6, 0, 1, "ab", QL_FINISH_REASON_LENGTH, 6},
    {"min_tokens with the stop string after it", "a</s>b", "</s>", NULL, 50, 2, 0, "a", QL_FINISH_REASON_STOP, 5},
};

static out_t *run_script(const script_case_t *c, int32_t *tokens_out, int32_t *n_out) {
    fake_be_t *fb = new_fake(64, 4);
    fb->script_mark = 1;
    fake_script_t *s = &fb->scripts[3];
    s->n_prompt = 4;
    s->n_out = (int32_t)strlen(c->script);
    for (int32_t i = 0; i < s->n_out; i++) s->out[i] = fake_byte_token(g_tok, (unsigned char)c->script[i]);
    ql_engine_t *e = new_engine(fb, 4, 32, 128);
    sync_t sync;
    sync_init(&sync);
    out_t *o = calloc(1, sizeof(*o));
    o->sync = &sync;
    o->engine = e;
    o->prompt[0] = 1; /* the script mark */
    o->prompt[1] = 3; /* script 3 */
    o->prompt[2] = 100;
    o->prompt[3] = 101;
    o->n_prompt = 4;
    o->max_tokens = c->max_tokens;
    ql_engine_request_t r = greedy_request(o);
    r.min_tokens = c->min_tokens;
    r.ignore_eos = c->ignore_eos;
    ql_stop_str_t stop = {c->stop, c->stop ? strlen(c->stop) : 0};
    if (c->stop) {
        r.stop = &stop;
        r.n_stop = 1;
    }
    int32_t stop_id = c->stop_id_char ? fake_byte_token(g_tok, (unsigned char)c->stop_id_char[0]) : -1;
    if (c->stop_id_char) {
        r.stop_token_ids = &stop_id;
        r.n_stop_token_ids = 1;
    }
    submit_ok(e, &r, o);
    wait_finals(&sync, 1);
    ql_engine_free(e);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
    o->sync = NULL;
    if (tokens_out) {
        memcpy(tokens_out, o->tokens[0], (size_t)o->n_tokens[0] * sizeof(int32_t));
        *n_out = o->n_tokens[0];
    }
    return o;
}

static void test_stop_conditions(void **state) {
    (void)state;
    for (size_t k = 0; k < QL_ARRAY_LEN(k_script_cases); k++) {
        const script_case_t *c = &k_script_cases[k];
        out_t *o = run_script(c, NULL, NULL);
        if (o->final_kind != QL_ENGINE_EVENT_FINISHED) fail_msg("%s: ended with %s", c->name, o->message);
        if (o->n_text[0] != strlen(c->text) || memcmp(o->text[0], c->text, o->n_text[0]) != 0)
            fail_msg("%s: text '%.*s', expected '%s'", c->name, (int)o->n_text[0], o->text[0], c->text);
        if (o->finish[0] != c->finish) fail_msg("%s: finish %d, expected %d", c->name, o->finish[0], c->finish);
        if (c->n_completion >= 0 && o->stats.n_completion_tokens != c->n_completion)
            fail_msg("%s: %d completion tokens, expected %d", c->name, (int)o->stats.n_completion_tokens,
                     (int)c->n_completion);
        assert_int_equal(o->n_tokens[0], o->stats.n_completion_tokens);
        assert_int_equal(o->n_bad_utf8, 0);
        assert_int_equal(o->n_after_final, 0);
        free(o);
    }
}

/* min_tokens bans EOS (and every end-of-generation token) until it is reached: the model's
 * EOS after "ab" is replaced by its runner-up three times, then allowed. */
static void test_min_tokens_bans_eos(void **state) {
    (void)state;
    script_case_t c = {"min_tokens", "ab", NULL, NULL, 50, 5, 0, NULL, QL_FINISH_REASON_STOP, 6};
    int32_t toks[MAXT], n;
    out_t *o = run_script(&c, toks, &n);
    assert_int_equal(o->final_kind, QL_ENGINE_EVENT_FINISHED);
    assert_int_equal(n, 6);
    for (int i = 0; i < 5; i++) assert_false(ql_tok_is_eog(g_tok, toks[i]));
    assert_int_equal(toks[5], EOS);
    assert_int_equal(o->finish[0], QL_FINISH_REASON_STOP);
    free(o);
    /* with ignore_eos the EOS is neither banned nor a stop */
    script_case_t c2 = {"min_tokens ignore_eos", "ab", NULL, NULL, 4, 3, 1, NULL, QL_FINISH_REASON_LENGTH, 4};
    o = run_script(&c2, toks, &n);
    assert_int_equal(n, 4);
    assert_int_equal(toks[2], EOS);
    assert_int_equal(o->finish[0], QL_FINISH_REASON_LENGTH);
    free(o);
}

/* max_tokens unset: the output runs until the context is full ("length"). */
static void test_context_length(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(64, 4);
    ql_engine_t *e = new_engine(fb, 4, 32, 48);
    sync_t sync;
    sync_init(&sync);
    out_t *o = calloc(1, sizeof(*o));
    o->sync = &sync;
    fill_prompt(o, 10, 5);
    o->max_tokens = 0;
    ql_engine_request_t r = greedy_request(o);
    r.ignore_eos = 1;
    submit_ok(e, &r, o);
    wait_finals(&sync, 1);
    assert_int_equal(o->final_kind, QL_ENGINE_EVENT_FINISHED);
    assert_int_equal(o->stats.n_completion_tokens, 38);
    assert_int_equal(o->finish[0], QL_FINISH_REASON_LENGTH);
    ql_engine_limits_t lim;
    ql_engine_get_limits(e, &lim);
    assert_int_equal(lim.max_model_len, 48);
    ql_engine_free(e);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
    free(o);
}

/* n = 2 with sampling: two choices, one finish each, one final event; logprobs on request. */
static void test_choices_and_logprobs(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(64, 4);
    fb->eos_mod = 0;
    ql_engine_t *e = new_engine(fb, 4, 32, 128);
    sync_t sync;
    sync_init(&sync);
    out_t *o = calloc(1, sizeof(*o));
    o->sync = &sync;
    o->want_top = 3;
    fill_prompt(o, 10, 9); /* 10 tokens, blocks of 4: the forks share a partial block */
    o->max_tokens = 12;
    ql_engine_request_t r = greedy_request(o);
    r.n = 2;
    r.sampling.temperature = 4.0f; /* the fake's margin is 10 logits: some draws differ */
    r.ignore_eos = 1;              /* a random draw of EOS must not end a choice early */
    r.sampling.seed = 42;
    r.sampling.logprobs = 1;
    r.sampling.top_logprobs = 3;
    submit_ok(e, &r, o);
    wait_finals(&sync, 1);
    assert_int_equal(o->final_kind, QL_ENGINE_EVENT_FINISHED);
    assert_int_equal(o->n_choices_final, 2);
    assert_int_equal(o->n_tokens[0], 12);
    assert_int_equal(o->n_tokens[1], 12);
    assert_int_equal(o->stats.n_completion_tokens, 24);
    assert_int_equal(o->final_reasons[0], QL_FINISH_REASON_LENGTH);
    assert_int_equal(o->final_reasons[1], QL_FINISH_REASON_LENGTH);
    assert_int_equal(o->n_logprobs_bad, 0);
    assert_int_equal(o->n_after_final, 0);
    assert_int_equal(o->stats.n_prompt_tokens, 10);
    assert_true(fb->n_copies >= 1); /* the shared partial block was copied */
    /* choice 0 alone with the same seed draws the same tokens: choices are independent */
    out_t *o1 = calloc(1, sizeof(*o1));
    o1->sync = &sync;
    o1->want_top = 3;
    memcpy(o1->prompt, o->prompt, sizeof(o->prompt));
    o1->n_prompt = o->n_prompt;
    o1->max_tokens = 12;
    ql_engine_request_t r1 = r;
    r1.n = 1;
    r1.user_data = o1;
    submit_ok(e, &r1, o1);
    wait_finals(&sync, 2);
    assert_memory_equal(o1->tokens[0], o->tokens[0], 12 * sizeof(int32_t));
    assert_engine_idle(e);
    ql_engine_free(e);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
    free(o);
    free(o1);
}

/* ---- refusals ---- */

static int g_refused_events;
static void count_event(const ql_engine_event_t *ev, void *ud) {
    (void)ev;
    (void)ud;
    g_refused_events++;
}

static void test_refusals(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(16, 4); /* 64 tokens of KV */
    ql_engine_t *e = new_engine(fb, 4, 32, 512);
    ql_engine_limits_t lim;
    ql_engine_get_limits(e, &lim);
    assert_int_equal(lim.max_model_len, 65); /* capped by the pool: the last token is never fed */
    int32_t prompt[80];
    for (int i = 0; i < 80; i++) prompt[i] = 10 + i;
    ql_engine_request_t r = ql_engine_request_default();
    r.prompt = prompt;
    r.n_prompt = 10;
    r.max_tokens = 10;
    r.on_event = count_event;
    char err[256];
    uint64_t h = 99;
    g_refused_events = 0;

    r.max_tokens = 56; /* 66 > 65 */
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_ERANGE);
    assert_non_null(strstr(err, "maximum context length is 65"));
    assert_int_equal(h, 0);
    r.max_tokens = 0;
    r.n_prompt = 65; /* no room left */
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_ERANGE);
    r.n_prompt = 60;
    r.min_tokens = 10; /* more than the 5 tokens left */
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_ERANGE);
    r.min_tokens = 0;
    r.n_prompt = 10;
    r.max_tokens = 10;
    r.min_tokens = 11;
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    r.min_tokens = 0;
    r.n_prompt = 0;
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    r.n_prompt = 10;
    prompt[3] = V;
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    assert_non_null(strstr(err, "outside the vocabulary"));
    prompt[3] = 13;
    r.sampling.temperature = -1.0f;
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    r.sampling.temperature = 1.0f;
    ql_stop_str_t empty = {"", 0};
    r.stop = &empty;
    r.n_stop = 1;
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    r.stop = NULL;
    r.n_stop = 0;
    int32_t bad_id = V + 5;
    r.stop_token_ids = &bad_id;
    r.n_stop_token_ids = 1;
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    r.stop_token_ids = NULL;
    r.n_stop_token_ids = 0;
    r.n = 5; /* > max_num_seqs */
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    r.n = 1;
    r.on_event = NULL;
    assert_int_equal(ql_engine_submit(e, &r, &h, err, sizeof err), QL_EINVAL);
    assert_int_equal(ql_engine_submit(NULL, &r, &h, err, sizeof err), QL_EINVAL);
    assert_int_equal(ql_engine_cancel(e, 0), QL_EINVAL);
    assert_int_equal(ql_engine_cancel_id(e, NULL), QL_EINVAL);
    assert_int_equal(ql_engine_cancel(e, 12345), 0); /* unknown: ignored */
    ql_engine_free(e);
    assert_int_equal(g_refused_events, 0);
    ql_backend_free(&fb->base);

    /* backend limits that cannot hold one sequence */
    fake_be_t *bad = fake_be_new(V, 4, 4, 64, 4, 1);
    ql_engine_params_t p;
    memset(&p, 0, sizeof(p));
    ql_engine_t *e2 = NULL;
    assert_int_equal(ql_engine_init(&p, &bad->base, g_tok, &e2, err, sizeof err), QL_EINVAL);
    assert_null(e2);
    p.max_num_seqs = -1;
    assert_int_equal(ql_engine_init(&p, &bad->base, g_tok, &e2, err, sizeof err), QL_EINVAL);
    assert_int_equal(ql_engine_init(&p, NULL, g_tok, &e2, err, sizeof err), QL_EINVAL);
    ql_backend_free(&bad->base);
}

/* ---- cancellation ---- */

static void test_cancel_within_one_step(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(64, 4);
    fb->eos_mod = 0;
    fb->delay_us = 2000; /* slow steps: the main thread's cancel lands mid-run */
    ql_engine_t *e = new_engine(fb, 4, 32, 256);
    sync_t sync;
    sync_init(&sync);
    out_t *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b)), *c = calloc(1, sizeof(*c));
    out_t *os[3] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        os[i]->sync = &sync;
        os[i]->engine = e;
        fill_prompt(os[i], 30, 20 + (uint32_t)i);
        os[i]->max_tokens = 150;
    }
    a->cancel_after = 3; /* from the callback, on the engine thread */
    ql_engine_request_t ra = greedy_request(a), rb = greedy_request(b), rc = greedy_request(c);
    rc.id = "cancel-me";
    submit_ok(e, &ra, a);
    submit_ok(e, &rb, b);
    submit_ok(e, &rc, c);
    wait_outputs(b, 2);
    pthread_mutex_lock(&sync.mu);
    int b_before = b->n_output;
    pthread_mutex_unlock(&sync.mu);
    ql_engine_cancel(e, b->handle);
    assert_int_equal(ql_engine_cancel_id(e, "cancel-me"), 0);
    wait_finals(&sync, 3);
    /* from the callback: takes effect before the next step, so no output after the third */
    assert_int_equal(a->final_kind, QL_ENGINE_EVENT_ERROR);
    assert_int_equal(a->status, QL_ECANCELED);
    assert_int_equal(a->n_output, 3);
    /* from another thread: at most the step in flight completes */
    assert_int_equal(b->final_kind, QL_ENGINE_EVENT_ERROR);
    assert_int_equal(b->status, QL_ECANCELED);
    assert_true(b->n_output <= b_before + 1);
    assert_int_equal(c->final_kind, QL_ENGINE_EVENT_ERROR);
    assert_true(c->n_output < 150);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(os[i]->n_final, 1);
        assert_int_equal(os[i]->n_after_final, 0);
        assert_int_equal(os[i]->stats.n_completion_tokens, os[i]->n_output);
    }
    /* everything they held is free (counters are published after the step that ended them) */
    ql_engine_shutdown(e, 1);
    ql_engine_free(e); /* joins: the counters are final */
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
    free(a);
    free(b);
    free(c);
}

/* ---- shutdown and failures ---- */

#define N_FLIGHT 12

static void start_flight(ql_engine_t *e, sync_t *sync, out_t *outs, int32_t max_tokens) {
    for (int i = 0; i < N_FLIGHT; i++) {
        memset(&outs[i], 0, sizeof(outs[i]));
        outs[i].sync = sync;
        outs[i].engine = e;
        fill_prompt(&outs[i], 5 + i, 300 + (uint32_t)i);
        outs[i].max_tokens = max_tokens;
        ql_engine_request_t r = greedy_request(&outs[i]);
        r.ignore_eos = 1;
        submit_ok(e, &r, &outs[i]);
    }
}

static void test_shutdown_abort_in_flight(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(64, 4);
    fb->delay_us = 1000;
    ql_engine_t *e = new_engine(fb, 4, 32, 256);
    sync_t sync;
    sync_init(&sync);
    static out_t outs[N_FLIGHT];
    start_flight(e, &sync, outs, 100);
    wait_outputs(&outs[0], 2);
    ql_engine_shutdown(e, 0);
    int32_t p[1] = {5};
    ql_engine_request_t r = ql_engine_request_default();
    r.prompt = p;
    r.n_prompt = 1;
    r.on_event = count_event;
    char err[128];
    assert_int_equal(ql_engine_submit(e, &r, NULL, err, sizeof err), QL_ESTATE);
    ql_engine_free(e); /* joins: every request has had its final event */
    assert_int_equal(sync.n_final, N_FLIGHT);
    int n_cancelled = 0;
    for (int i = 0; i < N_FLIGHT; i++) {
        assert_int_equal(outs[i].n_final, 1);
        assert_int_equal(outs[i].n_after_final, 0);
        if (outs[i].final_kind == QL_ENGINE_EVENT_ERROR) {
            assert_int_equal(outs[i].status, QL_ECANCELED);
            n_cancelled++;
        }
    }
    assert_true(n_cancelled > 0);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
}

static void test_shutdown_drain(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(64, 4);
    fb->delay_us = 200;
    ql_engine_t *e = new_engine(fb, 4, 32, 256);
    sync_t sync;
    sync_init(&sync);
    static out_t outs[N_FLIGHT];
    start_flight(e, &sync, outs, 20);
    ql_engine_shutdown(e, 1);
    wait_finals(&sync, N_FLIGHT);
    for (int i = 0; i < N_FLIGHT; i++) {
        assert_int_equal(outs[i].final_kind, QL_ENGINE_EVENT_FINISHED);
        assert_int_equal(outs[i].stats.n_completion_tokens, 20);
    }
    ql_engine_counters_t c;
    for (int k = 0; k < 3000; k++) { /* the thread exits once drained */
        ql_engine_get_counters(e, &c);
        if (c.stopped) break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(c.stopped, 1);
    assert_int_equal(c.n_requests_finished, N_FLIGHT);
    assert_int_equal(c.kv_blocks_used, 0);
    ql_engine_free(e);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
}

static void test_backend_failure(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(64, 4);
    fb->fail_on_forward = 6;
    fb->fail_status = QL_ECUDA;
    fb->delay_us = 2000; /* all twelve are accepted before the sixth forward */
    ql_engine_t *e = new_engine(fb, 4, 32, 256);
    sync_t sync;
    sync_init(&sync);
    static out_t outs[N_FLIGHT];
    start_flight(e, &sync, outs, 40);
    wait_finals(&sync, N_FLIGHT);
    for (int i = 0; i < N_FLIGHT; i++) {
        assert_int_equal(outs[i].n_final, 1);
        assert_int_equal(outs[i].final_kind, QL_ENGINE_EVENT_ERROR);
        assert_int_equal(outs[i].status, QL_ECUDA);
        assert_non_null(strstr(outs[i].message, "backend"));
    }
    assert_int_equal(ql_engine_healthy(e), 0); /* already when the errors were delivered */
    ql_engine_counters_t c;
    for (int k = 0; k < 1000; k++) { /* published at the end of the step */
        ql_engine_get_counters(e, &c);
        if (c.n_requests_failed == N_FLIGHT) break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(c.healthy, 0);
    assert_int_equal(c.n_requests_failed, N_FLIGHT);
    assert_int_equal(c.kv_blocks_used, 0);
    int32_t p[1] = {5};
    ql_engine_request_t r = ql_engine_request_default();
    r.prompt = p;
    r.n_prompt = 1;
    r.on_event = count_event;
    char err[128];
    g_refused_events = 0;
    assert_int_equal(ql_engine_submit(e, &r, NULL, err, sizeof err), QL_ESTATE);
    assert_non_null(strstr(err, "unhealthy"));
    ql_engine_free(e);
    assert_int_equal(g_refused_events, 0);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
}

/* ---- prefix cache ---- */

static void test_cached_prompt_tokens(void **state) {
    (void)state;
    fake_be_t *fb = new_fake(64, 4);
    ql_engine_t *e = new_engine(fb, 4, 32, 256);
    sync_t sync;
    sync_init(&sync);
    out_t *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));
    a->sync = b->sync = &sync;
    fill_prompt(a, 40, 77);
    a->max_tokens = b->max_tokens = 5;
    memcpy(b->prompt, a->prompt, sizeof(a->prompt));
    b->n_prompt = 40;
    ql_engine_request_t ra = greedy_request(a);
    submit_ok(e, &ra, a);
    wait_finals(&sync, 1);
    ql_engine_request_t rb = greedy_request(b);
    submit_ok(e, &rb, b);
    wait_finals(&sync, 2);
    assert_int_equal(a->stats.n_cached_prompt_tokens, 0);
    assert_int_equal(b->stats.n_cached_prompt_tokens, 36); /* floor(39 / 4) blocks of 4 */
    assert_greedy_output(fb, a);
    assert_greedy_output(fb, b);
    ql_engine_counters_t c;
    ql_engine_get_counters(e, &c);
    assert_engine_idle(e);
    ql_engine_get_counters(e, &c);
    assert_true(c.prefix_hits_tokens >= 36);
    assert_int_equal(c.n_prompt_tokens, 80);
    ql_engine_free(e);
    ql_backend_free(&fb->base);
    sync_destroy(&sync);
    free(a);
    free(b);
}

static int group_setup(void **state) {
    (void)state;
    ql_log_set_level(QL_LOG_LEVEL_WARN); /* one INFO line per engine otherwise */
    g_tok = fake_tiny_tok();
    return g_tok ? 0 : -1;
}

static int group_teardown(void **state) {
    (void)state;
    ql_tok_free(g_tok);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_concurrent_submitters),
        cmocka_unit_test(test_concurrent_tiny_pool),
        cmocka_unit_test(test_concurrent_with_cancellations),
        cmocka_unit_test(test_stop_conditions),
        cmocka_unit_test(test_min_tokens_bans_eos),
        cmocka_unit_test(test_context_length),
        cmocka_unit_test(test_choices_and_logprobs),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_cancel_within_one_step),
        cmocka_unit_test(test_shutdown_abort_in_flight),
        cmocka_unit_test(test_shutdown_drain),
        cmocka_unit_test(test_backend_failure),
        cmocka_unit_test(test_cached_prompt_tokens),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
