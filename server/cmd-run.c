/*
 * server/cmd-run.c — `quill run --model M -p PROMPT [-n N] [--chat] [sampling flags]`: generates
 * from one prompt on the command line and prints the text as it comes.
 *
 * It is the whole serving path with one request and no HTTP: the GGUF reader and tokenizer
 * (model/), the backend picked from the registry (backend/: the CPU backend, cpu/), and the
 * engine thread (scheduler/engine.h), which prefills, samples with the host sampler, checks the
 * stop conditions and detokenizes incrementally. Its text deltas never cut a UTF-8 character, so
 * stdout never carries a broken one; they are written and flushed as each token arrives.
 *
 * Prompt: plain text is tokenized as a completion prompt (BOS where the vocabulary asks for it,
 * control-token text kept as text); --chat wraps it as one user message in the model's chat
 * template (model/chat.h; --chat-template overrides the choice) with the generation prompt, and
 * tokenizes that with control tokens parsed and no BOS added (the template writes it).
 *
 * Generation stops at an end-of-generation token (EOS, end of turn; not with --ignore-eos), after
 * -n tokens, or when the context (--max-model-len, default the model's; capped by the KV pool) is
 * full. Sampling: --temperature 0 (the default) is greedy; --seed S makes a sampled run
 * repeatable, -1 draws the seed from the clock and reports it.
 *
 * Output: the generated text on stdout (not the prompt), ended with a newline when it does not
 * end with one; then one line on stderr:
 *   quill run: prompt 42 tokens, 812.3 tok/s; generated 64 tokens, 95.1 tok/s (-n reached)
 * Prompt speed is the prefill (admission to the first sampled token); generation speed counts
 * the tokens after the first, each one decode step, over the time after the first.
 *
 * Exit codes (server/cmd.h): 0; 1 when the model cannot be read or used, the backend cannot be
 * built (or is not in this build), the prompt does not fit the context, or generation fails;
 * 2 for a missing --model or -p, an empty prompt, a sampling value the sampler refuses, or an
 * unknown --chat-template name. Every error is one line on stderr.
 */
#define QL_LOG_MODULE "run"
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/chat.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"
#include "server/cmd.h"
#include "server/server-internal.h"

#define CMD "run"

#define fail_line(code, ...) ql_cmd_fail((code), CMD, __VA_ARGS__)

/* ---- the prompt ---- */

/* Tokenizes the prompt into *ids (malloc'd): plain text as a completion prompt, or with --chat
 * one user message in the model's template with the generation prompt (as quill tokenize
 * --chat). On error prints the line and returns the exit code. */
static int tokenize_prompt(const ql_config_t *cfg, const ql_loaded_t *m, int32_t **ids,
                           int32_t *n_ids) {
    char *rendered = NULL;
    size_t len = strlen(cfg->prompt);
    const char *input = cfg->prompt;
    uint32_t flags = QL_TOK_ADD_SPECIAL;
    if (cfg->chat) {
        if (!m->chat) return fail_line(QL_EXIT_FAIL, "--chat: %s", m->chat_err);
        char err[512] = "";
        ql_chat_msg_t msg = {"user", cfg->prompt, len};
        int rc = ql_chat_render(m->chat, &msg, 1, 1, &rendered, &len, err, sizeof err);
        if (rc != 0) return fail_line(QL_EXIT_FAIL, "%s", err[0] ? err : ql_strerror(rc));
        input = rendered;
        flags = QL_TOK_PARSE_SPECIAL;
    }
    size_t n = 0;
    int32_t *v = NULL;
    int rc = ql_tok_encode(m->tok, input, len, flags, NULL, 0, &n);
    if (rc == QL_ENOSPC || (rc == 0 && n > 0)) {
        v = malloc(n * sizeof(*v));
        rc = v ? ql_tok_encode(m->tok, input, len, flags, v, n, &n) : QL_ENOMEM;
    }
    free(rendered);
    if (rc != 0) {
        free(v);
        return fail_line(QL_EXIT_FAIL, "tokenizing the prompt: %s", ql_strerror(rc));
    }
    if (n == 0) {
        free(v);
        return fail_line(QL_EXIT_USAGE, "the prompt is empty (no tokens)");
    }
    if (n > (size_t)INT32_MAX) {
        free(v);
        return fail_line(QL_EXIT_FAIL, "the prompt is too long (%zu tokens)", n);
    }
    *ids = v;
    *n_ids = (int32_t)n;
    return QL_EXIT_OK;
}

/* ---- the request's events (engine thread) ---- */

typedef struct run_state_s {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done; /* the final event arrived */
    int kind; /* FINISHED or ERROR */
    int status;
    char message[256];
    ql_engine_stats_t stats;
    ql_finish_reason_t finish;
    size_t n_bytes; /* text written */
    char last;      /* its last byte */
    int write_failed;
} run_state_t;

static void on_event(const ql_engine_event_t *ev, void *ud) {
    run_state_t *s = ud;
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) {
        /* NOTE(stream): only this thread writes stdout while the request runs; the main thread
         * waits. Flushed per token so the text appears as it is generated. */
        if (ev->text_len > 0) {
            if (fwrite(ev->text, 1, ev->text_len, stdout) != ev->text_len) s->write_failed = 1;
            s->n_bytes += ev->text_len;
            s->last = ev->text[ev->text_len - 1];
        }
        if (fflush(stdout) != 0) s->write_failed = 1;
        if (ev->finish_reason != QL_FINISH_REASON_NONE) s->finish = ev->finish_reason;
        return;
    }
    pthread_mutex_lock(&s->mu);
    s->kind = ev->kind;
    s->status = ev->status;
    s->stats = ev->stats;
    if (ev->message) snprintf(s->message, sizeof(s->message), "%s", ev->message);
    s->done = 1;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* tokens per second over [t0, t1] (ns), or -1 when the interval is empty */
static double rate(int64_t n, uint64_t t0, uint64_t t1) {
    if (n <= 0 || t0 == 0 || t1 <= t0) return -1.0;
    return (double)n * 1e9 / (double)(t1 - t0);
}

static void print_rate(char *buf, size_t len, double r) {
    if (r < 0)
        snprintf(buf, len, "n/a");
    else
        snprintf(buf, len, "%.1f tok/s", r);
}

/* ---- the command ---- */

int ql_cmd_run(const ql_config_t *cfg) {
    if (!cfg->model || !cfg->model[0])
        return fail_line(QL_EXIT_USAGE,
                         "--model is required (a GGUF file; see quill " CMD " --help)");
    if (!cfg->prompt)
        return fail_line(QL_EXIT_USAGE, "-p/--prompt is required (see quill " CMD " --help)");
    if (cfg->n_args > 0)
        return fail_line(QL_EXIT_USAGE, "unexpected argument '%s' (the prompt goes after -p)",
                         cfg->args[0]);
    if (!(cfg->top_p > 0)) /* the option table's range is inclusive; the sampler's is (0, 1] */
        return fail_line(QL_EXIT_USAGE,
                         "--top-p: %g is out of range (expected a number above 0 and at most 1; "
                         "1 = off)",
                         cfg->top_p);

    char err[512] = "";
    if (ql__load_check_backend(cfg, err, sizeof err) != 0) return fail_line(QL_EXIT_FAIL, "%s", err);
    int code = QL_EXIT_FAIL;
    ql_loaded_t m;
    memset(&m, 0, sizeof m);
    ql_draft_t draft;
    memset(&draft, 0, sizeof draft);
    ql_engine_t *eng = NULL;
    int32_t *ids = NULL, n_ids = 0;
    run_state_t st;
    memset(&st, 0, sizeof(st));
    pthread_mutex_init(&st.mu, NULL);
    pthread_cond_init(&st.cv, NULL);

    /* one sequence: one logits row per step */
    int rc = ql__load_model(cfg, 1, &m, err, sizeof err);
    if (rc != 0) {
        code = fail_line(rc == QL_EINVAL ? QL_EXIT_USAGE : QL_EXIT_FAIL, "%s",
                         err[0] ? err : ql_strerror(rc));
        goto done;
    }
    code = tokenize_prompt(cfg, &m, &ids, &n_ids);
    if (code != QL_EXIT_OK) goto done;
    code = QL_EXIT_FAIL;

    ql_engine_params_t ep = {
        .max_num_seqs = 1,
        .max_batched_tokens = 0, /* the backend's batch */
        .max_model_len = cfg->max_model_len,
        .disable_prefix_cache = 1, /* one request: nothing to share */
        .spec_method = cfg->spec_method, /* ql_spec_method_t and ql_engine_spec_t agree */
        .spec_k = cfg->num_speculative_tokens,
        .spec_ngram_max = cfg->spec_ngram_max,
        .spec_layers = cfg->spec_layers,
        .spec_fixed_k = cfg->spec_fixed_k,
    };
    rc = ql__draft_load(cfg, &m, 1, &draft, err, sizeof err);
    if (rc != 0) {
        code = fail_line(rc == QL_EINVAL ? QL_EXIT_USAGE : QL_EXIT_FAIL, "%s", err);
        goto done;
    }
    if (draft.backend) { /* --draft-model alone implies --spec-method draft */
        ep.spec_method = QL_ENGINE_SPEC_DRAFT;
        ep.draft_backend = draft.backend;
    }
    rc = ql_engine_init(&ep, m.backend, m.tok, &eng, err, sizeof err);
    if (rc != 0) {
        code = fail_line(QL_EXIT_FAIL, "%s", err[0] ? err : ql_strerror(rc));
        goto done;
    }
    ql_engine_limits_t lim;
    ql_engine_get_limits(eng, &lim);
    if (n_ids >= lim.max_model_len) {
        code = fail_line(QL_EXIT_FAIL,
                         "the prompt is %d tokens; the context holds %d (prompt and output)",
                         (int)n_ids, (int)lim.max_model_len);
        goto done;
    }
    /* -n beyond the context stops at the context, as -1 does */
    const int32_t room = lim.max_model_len - n_ids;
    const int32_t max_tokens = cfg->n_predict < 0 ? room : QL_MIN(cfg->n_predict, room);
    if (max_tokens == 0) { /* -n 0: nothing to generate, nothing to run */
        fprintf(stderr, "quill " CMD ": prompt %d tokens; generated 0 tokens (-n 0)\n", (int)n_ids);
        code = QL_EXIT_OK;
        goto done;
    }

    uint64_t seed = (uint64_t)cfg->seed;
    if (cfg->seed < 0) seed = (ql_time_ns() ^ ((uint64_t)getpid() << 32)) & ((1ull << 53) - 1);
    ql_engine_request_t r = ql_engine_request_default();
    r.id = "run";
    r.prompt = ids;
    r.n_prompt = n_ids;
    r.sampling.temperature = (float)cfg->temperature;
    r.sampling.top_k = cfg->top_k;
    r.sampling.top_p = (float)cfg->top_p;
    r.sampling.min_p = (float)cfg->min_p;
    r.sampling.repetition_penalty = (float)cfg->repeat_penalty;
    r.sampling.seed = seed;
    r.max_tokens = max_tokens;
    r.ignore_eos = cfg->ignore_eos;
    r.on_event = on_event;
    r.user_data = &st;
    rc = ql_engine_submit(eng, &r, NULL, err, sizeof err);
    if (rc != 0) {
        code = fail_line(rc == QL_EINVAL ? QL_EXIT_USAGE : QL_EXIT_FAIL, "%s",
                         err[0] ? err : ql_strerror(rc));
        goto done;
    }
    pthread_mutex_lock(&st.mu);
    while (!st.done) pthread_cond_wait(&st.cv, &st.mu);
    pthread_mutex_unlock(&st.mu);

    if (st.n_bytes > 0 && st.last != '\n') {
        if (fputc('\n', stdout) == EOF) st.write_failed = 1;
    }
    if (fflush(stdout) != 0) st.write_failed = 1;
    if (st.kind != QL_ENGINE_EVENT_FINISHED) {
        code = fail_line(QL_EXIT_FAIL, "generation failed: %s",
                         st.message[0] ? st.message : ql_strerror(st.status));
        goto done;
    }
    if (st.write_failed) {
        code = fail_line(QL_EXIT_FAIL, "writing the output failed");
        goto done;
    }

    const ql_engine_stats_t *s = &st.stats;
    char pr[32], gr[32], why[64];
    print_rate(pr, sizeof pr, rate(s->n_prompt_tokens, s->t_scheduled_ns, s->t_first_token_ns));
    print_rate(gr, sizeof gr,
               rate((int64_t)s->n_completion_tokens - 1, s->t_first_token_ns, s->t_finish_ns));
    if (st.finish == QL_FINISH_REASON_STOP)
        snprintf(why, sizeof why, "end of text");
    else if (s->n_completion_tokens >= cfg->n_predict && cfg->n_predict >= 0)
        snprintf(why, sizeof why, "-n reached");
    else
        snprintf(why, sizeof why, "context full: %d tokens", (int)lim.max_model_len);
    char seed_note[48] = "";
    if (cfg->seed < 0 && cfg->temperature > 0)
        snprintf(seed_note, sizeof seed_note, ", seed %llu", (unsigned long long)seed);
    char spec_note[96] = "";
    if (lim.spec_k > 0)
        snprintf(spec_note, sizeof spec_note, "; speculative: %d drafted, %d accepted",
                 (int)s->n_draft_tokens, (int)s->n_accepted_tokens);
    fprintf(stderr, "quill " CMD ": prompt %d tokens, %s; generated %d tokens, %s (%s%s)%s\n",
            (int)s->n_prompt_tokens, pr, (int)s->n_completion_tokens, gr, why, seed_note,
            spec_note);
    code = QL_EXIT_OK;

done:
    ql_engine_free(eng);
    free(ids);
    ql__draft_free(&draft);
    ql__load_free(&m);
    pthread_cond_destroy(&st.cv);
    pthread_mutex_destroy(&st.mu);
    return code;
}
