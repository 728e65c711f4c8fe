/*
 * bench/bench-spec.c — speculative decoding's benchmark: generation speed through the engine
 * thread and the CPU backend with and without each drafter, at several concurrencies, with the
 * acceptance figures (docs/BENCHMARKS.md, "Speculative decoding").
 *
 *   bench-spec [--model M] [--threads N] [--concurrency 1,4,16,64] [--methods LIST]
 *              [--task rewrite|open] [--output-len 64] [--reps 2] [--k 4] [--layers 8]
 *              [--max-batched-tokens 512] [--json PATH]
 *   bench-spec --print-prompts [--task rewrite|open]
 *
 * --print-prompts writes the task's four prompt texts, one JSON string per line, and exits:
 * bench/peers/spec-llama.sh sends exactly these to llama-server.
 *
 * Methods (comma-separated): none; ngram; layerskip; draft (the model drafting for itself: the
 * mechanics and their overhead, every greedy draft accepted); a "-fixed" suffix (ngram-fixed,
 * layerskip-fixed, draft-fixed) always drafts k tokens instead of letting the cost model choose.
 *
 * Tasks: "rewrite": the prompt holds a paragraph and asks for it again, lightly edited, and the
 * answer starts it (n-gram lookup's case: the output repeats the prompt); "open": prompts that
 * ask for new text (drafts rarely hit). Requests differ by a numbered first line, greedy
 * (temperature 0), ignore_eos, --output-len tokens each.
 *
 * One run at concurrency C submits C requests at once and waits for all. Figures: gen tok/s =
 * all generated tokens / (last finish - first submit), prefill included; dec tok/s = the mean
 * over requests of (tokens - 1) / (finish - first token); acceptance = accepted / drafted;
 * tokens per verify = 1 + accepted / verifies. Every (task, C) runs each method once per rep,
 * the methods interleaved so that a load change on the shared machine hits them alike; the
 * table gives the median over reps and the ratio to "none" in the same reps. The load average
 * is printed with every configuration.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "test-model.h"
#include "backend/backend.h"
#include "core/core.h"
#include "cpu/cpu.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"

#define MAX_LIST 16
#define MAX_REPS 16
#define MAX_C 256

typedef struct method_s {
    char name[32];
    int spec;  /* ql_engine_spec_t */
    int fixed; /* spec_fixed_k */
} method_t;

typedef struct opts_s {
    const char *model, *json, *task;
    int threads, output_len, reps, k, layers, max_batched_tokens;
    int conc[MAX_LIST], n_conc;
    method_t methods[MAX_LIST];
    int n_methods;
    int print_prompts;
} opts_t;

/* ---- requests ---- */

typedef struct req_s {
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *n_final;
    int kind, status;
    ql_engine_stats_t st;
} req_t;

static void on_event(const ql_engine_event_t *ev, void *ud) {
    req_t *r = ud;
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) return;
    pthread_mutex_lock(r->mu);
    r->kind = ev->kind;
    r->status = ev->status;
    r->st = ev->stats;
    (*r->n_final)++;
    pthread_cond_broadcast(r->cv);
    pthread_mutex_unlock(r->mu);
}

static const char *const k_rewrite[] = {
    "The committee met on Tuesday to review the budget for the coming year. After a long "
    "discussion, the members agreed to increase funding for the public library, to repair the "
    "roads near the old market, and to hire two new teachers for the primary school. The mayor "
    "thanked everyone for their patience and promised a full report by the end of the month.",
    "Photosynthesis is the process by which green plants use sunlight to make food from carbon "
    "dioxide and water. It takes place mainly in the leaves, inside small structures called "
    "chloroplasts, which contain the green pigment chlorophyll. Oxygen is released as a by "
    "product, and the sugars that are made give the plant the energy it needs to grow.",
    "To make a simple tomato sauce, warm two spoons of olive oil in a pan, add a chopped onion "
    "and cook it slowly until it is soft. Add two cloves of garlic, a can of tomatoes and a pinch "
    "of salt, then let the sauce simmer for twenty minutes, stirring from time to time, until it "
    "is thick. Finish it with fresh basil and serve it with pasta.",
    "The old lighthouse stood at the edge of the cliff for more than a hundred years. Every "
    "night its keeper climbed the narrow stairs to light the lamp, and every morning he wrote "
    "down the weather and the ships he had seen. When the lighthouse was finally automated, the "
    "keeper moved to the village below, but he still watched the light from his window.",
};
static const char *const k_open[] = {
    "Write a short story about a robot who learns to paint.",
    "Explain why the sky is blue to a ten year old child.",
    "List some good habits for staying healthy during winter, with a reason for each.",
    "Describe a busy market in a coastal town early in the morning.",
};

/* Request i's prompt text for the task. */
static void prompt_text(const char *task, int i, char *text, size_t size) {
    if (strcmp(task, "rewrite") == 0) {
        const char *p = k_rewrite[i % 4];
        /* the answer's start: the paragraph's first words, so the model goes on copying */
        char start[64];
        snprintf(start, sizeof start, "%.40s", p);
        char *sp = strrchr(start, ' ');
        if (sp) *sp = '\0';
        snprintf(text, size,
                 "Request %d. Rewrite the following text, correcting any mistakes and keeping "
                 "everything else the same.\n\nText: %s\n\nRewritten text: %s",
                 i, p, start);
    } else {
        snprintf(text, size, "Request %d. %s\n\n", i, k_open[i % 4]);
    }
}

static int make_prompt(const ql_tok_t *tok, const char *task, int i, int32_t *ids, int cap) {
    char text[2048];
    prompt_text(task, i, text, sizeof text);
    size_t n = 0;
    if (ql_tok_encode(tok, text, strlen(text), QL_TOK_ADD_SPECIAL, ids, (size_t)cap, &n) != 0)
        return -1;
    return (int)n;
}

/* ---- one run ---- */

typedef struct result_s {
    double gen_tps, dec_tps, accept, per_verify;
    uint64_t drafted, accepted, verifies, steps;
} result_t;

static int run_once(const opts_t *o, ql_backend_t *be, ql_backend_t *draft, const ql_tok_t *tok,
                    const method_t *m, int C, result_t *res) {
    ql_engine_params_t ep;
    memset(&ep, 0, sizeof ep);
    ep.max_num_seqs = QL_MAX(64, C);
    ep.max_batched_tokens = o->max_batched_tokens;
    ep.spec_method = m->spec;
    ep.spec_k = o->k;
    ep.spec_layers = o->layers;
    ep.spec_fixed_k = m->fixed;
    ep.draft_backend = m->spec == QL_ENGINE_SPEC_DRAFT ? draft : NULL;
    ql_engine_t *e = NULL;
    char err[256];
    if (ql_engine_init(&ep, be, tok, &e, err, sizeof err) != 0) {
        fprintf(stderr, "bench-spec: engine: %s\n", err);
        return -1;
    }
    static int32_t ids[MAX_C][1024];
    static int n_ids[MAX_C];
    static req_t reqs[MAX_C];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_final = 0;
    for (int i = 0; i < C; i++) {
        n_ids[i] = make_prompt(tok, o->task, i, ids[i], 1024);
        if (n_ids[i] <= 0) return -1;
    }
    for (int i = 0; i < C; i++) {
        memset(&reqs[i], 0, sizeof reqs[i]);
        reqs[i].mu = &mu;
        reqs[i].cv = &cv;
        reqs[i].n_final = &n_final;
        ql_engine_request_t r = ql_engine_request_default();
        r.prompt = ids[i];
        r.n_prompt = n_ids[i];
        r.sampling.temperature = 0.0f;
        r.max_tokens = o->output_len;
        r.ignore_eos = 1;
        r.on_event = on_event;
        r.user_data = &reqs[i];
        if (ql_engine_submit(e, &r, NULL, err, sizeof err) != 0) {
            fprintf(stderr, "bench-spec: submit: %s\n", err);
            return -1;
        }
    }
    pthread_mutex_lock(&mu);
    while (n_final < C) pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    ql_engine_counters_t k;
    ql_engine_get_counters(e, &k);
    ql_engine_free(e);
    uint64_t t0 = UINT64_MAX, t1 = 0, gen = 0;
    double dec = 0;
    for (int i = 0; i < C; i++) {
        const ql_engine_stats_t *s = &reqs[i].st;
        if (reqs[i].kind != QL_ENGINE_EVENT_FINISHED) {
            fprintf(stderr, "bench-spec: request %d failed: %s\n", i, ql_strerror(reqs[i].status));
            return -1;
        }
        t0 = QL_MIN(t0, s->t_submit_ns);
        t1 = QL_MAX(t1, s->t_finish_ns);
        gen += (uint64_t)s->n_completion_tokens;
        if (s->t_finish_ns > s->t_first_token_ns)
            dec += (s->n_completion_tokens - 1) /
                   ((double)(s->t_finish_ns - s->t_first_token_ns) * 1e-9);
    }
    memset(res, 0, sizeof *res);
    res->gen_tps = (double)gen / ((double)(t1 - t0) * 1e-9);
    res->dec_tps = dec / C;
    res->drafted = k.spec_draft_tokens;
    res->accepted = k.spec_accepted_tokens;
    res->verifies = k.spec_num_drafts;
    res->steps = k.n_steps;
    res->accept = k.spec_draft_tokens ? (double)k.spec_accepted_tokens / k.spec_draft_tokens : 0;
    res->per_verify =
        k.spec_num_drafts ? 1.0 + (double)k.spec_accepted_tokens / k.spec_num_drafts : 0;
    pthread_mutex_destroy(&mu);
    pthread_cond_destroy(&cv);
    return 0;
}

/* ---- options ---- */

static int parse_methods(const char *v, opts_t *o) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    o->n_methods = 0;
    for (char *s = strtok(buf, ","); s && o->n_methods < MAX_LIST; s = strtok(NULL, ",")) {
        method_t *m = &o->methods[o->n_methods++];
        memset(m, 0, sizeof *m);
        snprintf(m->name, sizeof m->name, "%s", s);
        char *fx = strstr(s, "-fixed");
        if (fx && fx[6] == '\0') {
            m->fixed = 1;
            *fx = '\0';
        }
        if (strcmp(s, "none") == 0) m->spec = QL_ENGINE_SPEC_NONE;
        else if (strcmp(s, "ngram") == 0) m->spec = QL_ENGINE_SPEC_NGRAM;
        else if (strcmp(s, "layerskip") == 0) m->spec = QL_ENGINE_SPEC_LAYERSKIP;
        else if (strcmp(s, "draft") == 0) m->spec = QL_ENGINE_SPEC_DRAFT;
        else return -1;
    }
    return o->n_methods > 0 ? 0 : -1;
}

static int parse_opts(int argc, char **argv, opts_t *o) {
    memset(o, 0, sizeof *o);
    o->model = ql_test_default_model();
    o->task = "rewrite";
    o->threads = 2;
    o->output_len = 64;
    o->reps = 2;
    o->k = 4;
    o->layers = 8;
    o->max_batched_tokens = 512;
    int defc[4] = {1, 4, 16, 64};
    memcpy(o->conc, defc, sizeof defc);
    o->n_conc = 4;
    parse_methods("none,ngram,layerskip,draft-fixed", o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define INTOPT(flag, field, lo, hi)                                                               \
    if (strcmp(a, flag) == 0 && v) {                                                              \
        o->field = atoi(v);                                                                       \
        if (o->field < (lo) || o->field > (hi)) return -1;                                        \
        i++;                                                                                      \
        continue;                                                                                 \
    }
        INTOPT("--threads", threads, 1, 256)
        INTOPT("--output-len", output_len, 2, 4096)
        INTOPT("--reps", reps, 1, MAX_REPS)
        INTOPT("--k", k, 1, 16)
        INTOPT("--layers", layers, 1, 1024)
        INTOPT("--max-batched-tokens", max_batched_tokens, 16, 65536)
#undef INTOPT
        if (strcmp(a, "--model") == 0 && v) {
            o->model = v;
            i++;
        } else if (strcmp(a, "--json") == 0 && v) {
            o->json = v;
            i++;
        } else if (strcmp(a, "--task") == 0 && v &&
                   (strcmp(v, "rewrite") == 0 || strcmp(v, "open") == 0)) {
            o->task = v;
            i++;
        } else if (strcmp(a, "--print-prompts") == 0) {
            o->print_prompts = 1;
        } else if (strcmp(a, "--methods") == 0 && v) {
            if (parse_methods(v, o) != 0) return -1;
            i++;
        } else if (strcmp(a, "--concurrency") == 0 && v) {
            char buf[128];
            snprintf(buf, sizeof buf, "%s", v);
            o->n_conc = 0;
            for (char *s = strtok(buf, ","); s && o->n_conc < MAX_LIST; s = strtok(NULL, ",")) {
                int c = atoi(s);
                if (c < 1 || c > MAX_C) return -1;
                o->conc[o->n_conc++] = c;
            }
            i++;
        } else {
            return -1;
        }
    }
    return 0;
}

static double median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void loadavg(char *buf, size_t n) {
    double l[3] = {0, 0, 0};
    if (getloadavg(l, 3) < 0) l[0] = -1;
    snprintf(buf, n, "%.2f %.2f %.2f", l[0], l[1], l[2]);
}

int main(int argc, char **argv) {
    opts_t o;
    if (parse_opts(argc - 1, argv + 1, &o) != 0) {
        fprintf(stderr, "usage: bench-spec [--model M] [--threads N] [--concurrency 1,4,16,64]\n"
                        "                  [--methods none,ngram,layerskip,draft-fixed,...]\n"
                        "                  [--task rewrite|open] [--output-len N] [--reps N]\n"
                        "                  [--k N] [--layers L] [--max-batched-tokens N]\n"
                        "                  [--json PATH]\n"
                        "       bench-spec --print-prompts [--task rewrite|open]\n");
        return 2;
    }
    if (o.print_prompts) { /* the texts as JSON strings (printable ASCII and newlines) */
        for (int i = 0; i < 4; i++) {
            char text[2048];
            prompt_text(o.task, i, text, sizeof text);
            putchar('"');
            for (const char *c = text; *c; c++) {
                if (*c == '\n') fputs("\\n", stdout);
                else if (*c == '"' || *c == '\\') printf("\\%c", *c);
                else putchar(*c);
            }
            puts("\"");
        }
        return 0;
    }
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    char err[256];
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(o.model, &g, err, sizeof err) != 0) {
        fprintf(stderr, "bench-spec: %s\n", err);
        return 1;
    }
    ql_tok_t *tok = NULL;
    if (ql_tok_init_from_gguf(g, &tok, err, sizeof err) != 0) {
        fprintf(stderr, "bench-spec: %s\n", err);
        return 1;
    }
    int c_max = 1;
    for (int i = 0; i < o.n_conc; i++) c_max = QL_MAX(c_max, o.conc[i]);
    const int n_seqs = QL_MAX(64, c_max);
    ql_backend_params_t bp = {.n_threads = o.threads,
                              .kv_cache_bytes = 1ull << 30,
                              .block_size = 16,
                              .n_batch_tokens_max = o.max_batched_tokens,
                              .n_seqs_max = n_seqs,
                              .n_logits_max = QL_MIN(n_seqs * (1 + o.k), o.max_batched_tokens)};
    ql_backend_t *be = NULL, *draft = NULL;
    if (ql_cpu_backend_init(g, &bp, &be, err, sizeof err) != 0) {
        fprintf(stderr, "bench-spec: %s\n", err);
        return 1;
    }
    for (int i = 0; i < o.n_methods; i++) {
        if (o.methods[i].spec != QL_ENGINE_SPEC_DRAFT || draft) continue;
        ql_backend_params_t dp = bp;
        dp.kv_cache_bytes = 256ull << 20;
        dp.n_logits_max = n_seqs;
        if (ql_cpu_backend_init(g, &dp, &draft, err, sizeof err) != 0) {
            fprintf(stderr, "bench-spec: draft: %s\n", err);
            return 1;
        }
    }
    FILE *js = o.json ? fopen(o.json, "w") : NULL;
    if (o.json && !js) {
        fprintf(stderr, "bench-spec: cannot write %s\n", o.json);
        return 1;
    }
    if (js)
        fprintf(js,
                "{\"task\": \"%s\", \"output_len\": %d, \"k\": %d, \"layers\": %d, "
                "\"results\": [",
                o.task, o.output_len, o.k, o.layers);
    printf("bench-spec: %s, task %s, %d threads, %d output tokens, k %d, layerskip L %d, %d reps\n",
           o.model, o.task, o.threads, o.output_len, o.k, o.layers, o.reps);
    printf("%4s  %-16s %9s %8s %9s %8s %8s %7s  %s\n", "C", "method", "gen tok/s", "vs none",
           "dec tok/s", "accept", "tok/vfy", "steps", "load (before, after)");
    int first = 1;
    for (int ci = 0; ci < o.n_conc; ci++) {
        const int C = o.conc[ci];
        static result_t res[MAX_LIST][MAX_REPS];
        char la0[64], la1[64];
        loadavg(la0, sizeof la0);
        for (int rep = 0; rep < o.reps; rep++)
            for (int mi = 0; mi < o.n_methods; mi++)
                if (run_once(&o, be, draft, tok, &o.methods[mi], C, &res[mi][rep]) != 0) return 1;
        loadavg(la1, sizeof la1);
        double none_med = 0;
        for (int mi = 0; mi < o.n_methods; mi++) {
            double g_[MAX_REPS], d_[MAX_REPS], a_[MAX_REPS], v_[MAX_REPS], ratio[MAX_REPS];
            int none_i = -1;
            for (int j = 0; j < o.n_methods; j++)
                if (o.methods[j].spec == QL_ENGINE_SPEC_NONE) none_i = j;
            for (int rep = 0; rep < o.reps; rep++) {
                g_[rep] = res[mi][rep].gen_tps;
                d_[rep] = res[mi][rep].dec_tps;
                a_[rep] = res[mi][rep].accept;
                v_[rep] = res[mi][rep].per_verify;
                ratio[rep] = none_i >= 0 ? res[mi][rep].gen_tps / res[none_i][rep].gen_tps : 0;
            }
            double gm = median(g_, o.reps), dm = median(d_, o.reps), am = median(a_, o.reps),
                   vm = median(v_, o.reps), rm = median(ratio, o.reps);
            if (o.methods[mi].spec == QL_ENGINE_SPEC_NONE) none_med = gm;
            printf("%4d  %-16s %9.1f %7.2fx %9.1f %7.1f%% %8.2f %7llu  %s, %s\n", C,
                   o.methods[mi].name, gm, rm, dm, 100 * am, vm,
                   (unsigned long long)res[mi][0].steps, la0, la1);
            if (js)
                fprintf(js,
                        "%s\n  {\"concurrency\": %d, \"method\": \"%s\", \"gen_tok_s\": %.2f, "
                        "\"vs_none\": %.4f, \"dec_tok_s\": %.2f, \"acceptance\": %.4f, "
                        "\"tokens_per_verify\": %.3f, \"load_before\": \"%s\", \"load_after\": "
                        "\"%s\"}",
                        first ? "" : ",", C, o.methods[mi].name, gm, rm, dm, am, vm, la0, la1);
            first = 0;
        }
        (void)none_med;
        fflush(stdout);
    }
    if (js) {
        fprintf(js, "\n]}\n");
        fclose(js);
    }
    ql_backend_free(draft);
    ql_backend_free(be);
    ql_tok_free(tok);
    ql_gguf_free(g);
    return 0;
}
