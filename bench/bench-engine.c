/*
 * bench/bench-engine.c — end-to-end throughput of the serving path without HTTP: the engine
 * thread (scheduler/engine.h) over the CPU backend, with continuous batching, chunked prefill,
 * the prefix cache, host sampling, stop checks and detokenization, exactly as `quill serve`
 * runs them. The figures are the scheduler issue's: total generated tokens/s and time to first
 * token at 1, 8, 32 and 64 concurrent sequences (docs/BENCHMARKS.md).
 *
 *   bench-engine [--model M] [--threads N] [--concurrency 1,8,32,64] [--input-len 128]
 *                [--output-len 128] [--reps 3] [--warmup 1] [--shared-prefix N]
 *                [--max-num-seqs N] [--max-batched-tokens 512] [--kv-cache-mib 1024]
 *                [--block-size 16] [--no-prefix-cache] [--json PATH]
 *
 * One run at concurrency C submits C requests at once (a burst: every request is in the inbox
 * before the engine's next step) and waits for all of them. Each request: --input-len prompt
 * tokens, --output-len generated tokens (max_tokens with ignore_eos, so every request generates
 * exactly that many), greedy (temperature 0).
 *
 * Prompts: pseudo-random ids of ordinary tokens (no control, unused or end-of-generation
 * tokens), drawn from a generator seeded by (run, request): deterministic across invocations,
 * different between requests and between runs, so no request ever hits another's blocks in
 * the prefix cache (which is on, as in the server) — the cached-token column proves it stays
 * 0. With --shared-prefix N the first N tokens of every prompt of a run are the same (a common
 * system prompt); the rest stay distinct.
 *
 * Figures of one run (times from the engine's own per-request stats, ql_engine_stats_t):
 *   gen tok/s   every generated token of the run / (last request's finish - first submit):
 *               prefill included, as vLLM's "output token throughput"
 *   TTFT        first token sampled - submit, per request: mean, median, p90 (linear
 *               interpolation between order statistics)
 *   dec tok/s   per request, (output tokens - 1) / (finish - first token): the decode rate one
 *               client sees once its answer streams; the mean over requests
 *   steps       forward passes of the run (the engine's counter), and tokens per step
 * Each configuration runs --reps times after --warmup uncounted runs of the same
 * configuration; the table gives the median of each figure over the reps and the spread
 * (min..max) of gen tok/s. The load average is printed around each configuration: the machine
 * is shared, write it down with the figures.
 *
 * The model defaults to $QL_DEFAULT_MODEL, then ~/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf.
 * The engine limits default to `quill serve`'s (max-num-seqs 64 or the largest concurrency,
 * max-batched-tokens 512, a 1 GiB KV pool of 16-token blocks). QL_CPU_ISA picks a kernel path.
 */
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "test-model.h"
#include "backend/backend.h"
#include "core/core.h"
#include "cpu/cpu.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "scheduler/engine.h"

#define MAX_CONFIGS 16

typedef struct opts_s {
    const char *model;
    const char *json; /* NULL: none; "-": stdout (the table then goes to stderr) */
    int threads, input_len, output_len, reps, warmup, shared_prefix;
    int max_num_seqs, max_batched_tokens, kv_cache_mib, block_size, no_prefix_cache;
    int conc[MAX_CONFIGS];
    int n_conc;
} opts_t;

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench-engine [--model M] [--threads N] [--concurrency C1,C2,...]\n"
            "                    [--input-len N] [--output-len N] [--reps N] [--warmup N]\n"
            "                    [--shared-prefix N] [--max-num-seqs N] [--max-batched-tokens N]\n"
            "                    [--kv-cache-mib N] [--block-size N] [--no-prefix-cache]\n"
            "                    [--json PATH|-]\n");
}

static int parse_list(const char *v, int *out, int max, int *n) {
    *n = 0;
    for (char *s = (char *)v; *s;) {
        if (*n == max) return -1;
        char *end;
        out[(*n)++] = (int)strtol(s, &end, 10);
        if (end == s) return -1;
        s = end;
        if (*s == ',')
            s++;
        else if (*s)
            return -1;
    }
    return *n > 0 ? 0 : -1;
}

static int parse(int argc, char **argv, opts_t *o) {
    memset(o, 0, sizeof(*o));
    o->input_len = 128;
    o->output_len = 128;
    o->reps = 3;
    o->warmup = 1;
    o->max_batched_tokens = 512; /* quill serve's default (config/config.c) */
    o->kv_cache_mib = 1024;
    o->block_size = 16;
    const int def_conc[] = {1, 8, 32, 64};
    memcpy(o->conc, def_conc, sizeof(def_conc));
    o->n_conc = 4;
    o->model = ql_test_default_model();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!strcmp(a, "--no-prefix-cache")) {
            o->no_prefix_cache = 1;
            continue;
        }
        const char *v = i + 1 < argc ? argv[++i] : NULL;
        if (!v) return -1;
        if (!strcmp(a, "--model") || !strcmp(a, "-m"))
            o->model = v;
        else if (!strcmp(a, "--json"))
            o->json = v;
        else if (!strcmp(a, "--threads") || !strcmp(a, "-t"))
            o->threads = atoi(v);
        else if (!strcmp(a, "--input-len"))
            o->input_len = atoi(v);
        else if (!strcmp(a, "--output-len"))
            o->output_len = atoi(v);
        else if (!strcmp(a, "--reps"))
            o->reps = atoi(v);
        else if (!strcmp(a, "--warmup"))
            o->warmup = atoi(v);
        else if (!strcmp(a, "--shared-prefix"))
            o->shared_prefix = atoi(v);
        else if (!strcmp(a, "--max-num-seqs"))
            o->max_num_seqs = atoi(v);
        else if (!strcmp(a, "--max-batched-tokens"))
            o->max_batched_tokens = atoi(v);
        else if (!strcmp(a, "--kv-cache-mib"))
            o->kv_cache_mib = atoi(v);
        else if (!strcmp(a, "--block-size"))
            o->block_size = atoi(v);
        else if (!strcmp(a, "--concurrency") || !strcmp(a, "-c")) {
            if (parse_list(v, o->conc, MAX_CONFIGS, &o->n_conc) != 0) return -1;
        } else
            return -1;
    }
    if (o->input_len < 1 || o->output_len < 1 || o->reps < 1 || o->reps > 256 || o->warmup < 0 ||
        o->shared_prefix < 0 || o->shared_prefix > o->input_len || o->max_num_seqs < 0 ||
        o->max_batched_tokens < 1 || o->kv_cache_mib < 1 || o->block_size < 1 || o->threads < 0)
        return -1;
    for (int i = 0; i < o->n_conc; i++)
        if (o->conc[i] < 1 || o->conc[i] > 4096) return -1;
    return 0;
}

/* ---- deterministic prompts ---- */

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* The ids a prompt may hold: ordinary tokens that do not end generation. */
typedef struct pool_s {
    int32_t *ids;
    int32_t n;
} pool_t;

static int pool_init(pool_t *p, const ql_tok_t *tok, int32_t n_vocab) {
    p->ids = malloc((size_t)n_vocab * sizeof(int32_t));
    p->n = 0;
    if (!p->ids) return QL_ENOMEM;
    for (int32_t id = 0; id < n_vocab; id++) {
        int t = ql_tok_type(tok, id);
        if ((t == QL_TOK_TYPE_NORMAL || t == QL_TOK_TYPE_UNDEFINED) && !ql_tok_is_eog(tok, id))
            p->ids[p->n++] = id;
    }
    return p->n > 0 ? 0 : QL_EINVAL;
}

/* Prompt `req` of run `run`: [0, shared) from the run's generator, the rest from the
 * request's. */
static void make_prompt(const pool_t *p, uint64_t run, int req, int shared, int32_t *out, int n) {
    uint64_t s_run = 0x5eed0000ull ^ (run << 32),
             s_req = s_run ^ (uint64_t)(req + 1) * 0x100000001b3ull;
    for (int i = 0; i < n; i++) {
        uint64_t x = rng_next(i < shared ? &s_run : &s_req);
        out[i] = p->ids[x % (uint64_t)p->n];
    }
}

/* ---- one run ---- */

typedef struct req_s {
    ql_engine_stats_t stats;
    int kind; /* the final event's */
    int status;
    char message[160];
} req_t;

typedef struct wait_s {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n_done;
} wait_t;

typedef struct slot_s {
    req_t *req;
    wait_t *w;
} slot_t;

/* Engine thread: only the final event matters (its stats carry every time we report). */
static void on_event(const ql_engine_event_t *ev, void *ud) {
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) return;
    slot_t *s = ud;
    s->req->kind = ev->kind;
    s->req->status = ev->status;
    s->req->stats = ev->stats;
    if (ev->message) snprintf(s->req->message, sizeof(s->req->message), "%s", ev->message);
    pthread_mutex_lock(&s->w->mu);
    s->w->n_done++;
    pthread_cond_signal(&s->w->cv);
    pthread_mutex_unlock(&s->w->mu);
}

typedef struct result_s {
    double gen_tps; /* generated tokens / wall */
    double wall_s;  /* first submit -> last finish */
    double ttft_mean_ms, ttft_p50_ms, ttft_p90_ms, ttft_max_ms;
    double dec_tps_mean; /* per request */
    double tok_per_step; /* every token fed (prompt + decode) / steps */
    double steps;        /* forward passes of the run */
    long n_gen, n_cached, n_preempt;
} result_t;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* q in [0, 1] of sorted v[0, n), interpolating between order statistics (numpy's default). */
static double quantile(const double *v, int n, double q) {
    if (n == 1) return v[0];
    double h = q * (n - 1);
    int i = (int)h;
    if (i >= n - 1) return v[n - 1];
    return v[i] + (h - i) * (v[i + 1] - v[i]);
}

typedef struct bench_s {
    const opts_t *o;
    ql_engine_t *eng;
    const pool_t *pool;
    int32_t *prompts; /* [C_max][input_len] */
    req_t *reqs;      /* [C_max] */
    slot_t *slots;    /* [C_max] */
    double *tmp;      /* [C_max] */
} bench_t;

static int run_once(bench_t *b, int C, int output_len, uint64_t run, result_t *res) {
    const opts_t *o = b->o;
    wait_t w;
    memset(&w, 0, sizeof(w));
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    for (int i = 0; i < C; i++) {
        make_prompt(b->pool, run, i, o->shared_prefix, b->prompts + (size_t)i * o->input_len,
                    o->input_len);
        memset(&b->reqs[i], 0, sizeof(req_t));
        b->slots[i] = (slot_t){&b->reqs[i], &w};
    }
    ql_engine_counters_t c0, c1;
    ql_engine_get_counters(b->eng, &c0);
    char err[256];
    int n_submitted = 0, rc = 0;
    const uint64_t t0 = ql_time_ns();
    for (int i = 0; i < C; i++) {
        ql_engine_request_t r = ql_engine_request_default();
        char id[32];
        snprintf(id, sizeof(id), "bench-%llu-%d", (unsigned long long)run, i);
        r.id = id;
        r.prompt = b->prompts + (size_t)i * o->input_len;
        r.n_prompt = o->input_len;
        r.sampling.temperature = 0.0f; /* greedy */
        r.max_tokens = output_len;
        r.ignore_eos = 1;
        r.on_event = on_event;
        r.user_data = &b->slots[i];
        rc = ql_engine_submit(b->eng, &r, NULL, err, sizeof(err));
        if (rc != 0) {
            fprintf(stderr, "bench-engine: submit: %s (%s)\n", err, ql_strerror(rc));
            break;
        }
        n_submitted++;
    }
    pthread_mutex_lock(&w.mu);
    while (w.n_done < n_submitted) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    /* NOTE(counters): the final events come from inside the last step, the counters are
     * published after it: wait for the snapshot that holds every generated token. */
    const uint64_t n_gen_expected = c0.n_generation_tokens + (uint64_t)n_submitted * output_len;
    for (;;) {
        ql_engine_get_counters(b->eng, &c1);
        if (c1.n_generation_tokens >= n_gen_expected || c1.stopped) break;
        nanosleep(&(struct timespec){0, 50000}, NULL);
    }
    pthread_cond_destroy(&w.cv);
    pthread_mutex_destroy(&w.mu);
    if (rc != 0) return rc;

    memset(res, 0, sizeof(*res));
    uint64_t t_end = t0;
    double dec_sum = 0.0;
    int n_dec = 0;
    for (int i = 0; i < C; i++) {
        const req_t *q = &b->reqs[i];
        if (q->kind != QL_ENGINE_EVENT_FINISHED) {
            fprintf(stderr, "bench-engine: request %d failed: %s (%s)\n", i, q->message,
                    ql_strerror(q->status));
            return q->status ? q->status : QL_EINTERNAL;
        }
        const ql_engine_stats_t *s = &q->stats;
        t_end = QL_MAX(t_end, s->t_finish_ns);
        res->n_gen += s->n_completion_tokens;
        res->n_cached += s->n_cached_prompt_tokens;
        res->n_preempt += s->n_preemptions;
        b->tmp[i] = (double)(s->t_first_token_ns - s->t_submit_ns) * 1e-6;
        if (s->n_completion_tokens > 1 && s->t_finish_ns > s->t_first_token_ns) {
            dec_sum += (double)(s->n_completion_tokens - 1) * 1e9 /
                       (double)(s->t_finish_ns - s->t_first_token_ns);
            n_dec++;
        }
    }
    res->wall_s = (double)(t_end - t0) * 1e-9;
    res->gen_tps = (double)res->n_gen / res->wall_s;
    qsort(b->tmp, (size_t)C, sizeof(double), cmp_double);
    double sum = 0.0;
    for (int i = 0; i < C; i++) sum += b->tmp[i];
    res->ttft_mean_ms = sum / C;
    res->ttft_p50_ms = quantile(b->tmp, C, 0.5);
    res->ttft_p90_ms = quantile(b->tmp, C, 0.9);
    res->ttft_max_ms = b->tmp[C - 1];
    res->dec_tps_mean = n_dec ? dec_sum / n_dec : 0.0;
    res->steps = (double)(c1.n_steps - c0.n_steps);
    const double fed = (double)(c1.n_prompt_tokens - c0.n_prompt_tokens) - (double)res->n_cached +
                       (double)(res->n_gen - C); /* the last token of each is never fed */
    res->tok_per_step = res->steps > 0 ? fed / res->steps : 0.0;
    return 0;
}

/* ---- reporting ---- */

static void loadavg(char *buf, size_t len) {
    snprintf(buf, len, "?");
    FILE *f = fopen("/proc/loadavg", "r");
    if (!f) return;
    double a, b, c;
    if (fscanf(f, "%lf %lf %lf", &a, &b, &c) == 3) snprintf(buf, len, "%.2f %.2f %.2f", a, b, c);
    fclose(f);
}

/* CPU time the whole machine spent busy (/proc/stat, all cores) and this process spent
 * (getrusage), in seconds: their difference over a configuration is what other processes
 * took meanwhile, the noise on a shared machine. busy < 0 when /proc/stat is unreadable. */
static void cpu_times(double *busy, double *self) {
    *busy = -1.0;
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        unsigned long long v[8] = {0};
        if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]) == 8) {
            const double hz = (double)sysconf(_SC_CLK_TCK);
            *busy =
                (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / hz; /* all but idle, iowait */
        }
        fclose(f);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    *self = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
            ru.ru_stime.tv_usec * 1e-6;
}

/* Writes s as a JSON string (quotes, backslashes and control bytes escaped). */
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        const unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* The median over reps of field `off` of r[0, n). */
static double median_of(const result_t *r, int n, size_t off, double *tmp) {
    for (int i = 0; i < n; i++) tmp[i] = *(const double *)((const char *)&r[i] + off);
    qsort(tmp, (size_t)n, sizeof(double), cmp_double);
    return quantile(tmp, n, 0.5);
}

#define MED(field) median_of(rs, o.reps, offsetof(result_t, field), tmp)

int main(int argc, char **argv) {
    opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    FILE *out = o.json && !strcmp(o.json, "-") ? stderr : stdout;
    int c_max = 1;
    for (int i = 0; i < o.n_conc; i++) c_max = QL_MAX(c_max, o.conc[i]);
    const int max_num_seqs = o.max_num_seqs ? o.max_num_seqs : QL_MAX(64, c_max);

    char err[512] = "";
    ql_gguf_t *g = NULL;
    ql_tok_t *tok = NULL;
    ql_backend_t *be = NULL;
    ql_engine_t *eng = NULL;
    pool_t pool = {NULL, 0};
    bench_t b;
    memset(&b, 0, sizeof(b));
    result_t *all = NULL;
    FILE *jf = NULL;
    int code = 1, rc;
    if ((rc = ql_gguf_open(o.model, &g, err, sizeof(err))) != 0) {
        fprintf(stderr, "bench-engine: %s\n", err[0] ? err : ql_strerror(rc));
        goto done;
    }
    if ((rc = ql_tok_init_from_gguf(g, &tok, err, sizeof(err))) != 0) {
        fprintf(stderr, "bench-engine: %s: %s\n", o.model, err[0] ? err : ql_strerror(rc));
        goto done;
    }
    /* the backend as `quill serve` builds it (server/load.c), with the bench's limits */
    ql_backend_params_t bp = {
        .n_threads = o.threads,
        .kv_cache_bytes = (uint64_t)o.kv_cache_mib << 20,
        .block_size = o.block_size,
        .n_batch_tokens_max = o.max_batched_tokens,
        .n_seqs_max = max_num_seqs,
        .n_logits_max = max_num_seqs, /* one row per running sequence and step */
        .n_ctx_max = 0,               /* the model's */
    };
    if ((rc = ql_cpu_backend_init(g, &bp, &be, err, sizeof(err))) != 0) {
        fprintf(stderr, "bench-engine: %s: %s\n", o.model, err[0] ? err : ql_strerror(rc));
        goto done;
    }
    ql_engine_params_t ep = {
        .max_num_seqs = max_num_seqs,
        .max_batched_tokens = o.max_batched_tokens,
        .disable_prefix_cache = o.no_prefix_cache,
    };
    if ((rc = ql_engine_init(&ep, be, tok, &eng, err, sizeof(err))) != 0) {
        fprintf(stderr, "bench-engine: %s\n", err[0] ? err : ql_strerror(rc));
        goto done;
    }
    ql_engine_limits_t lim;
    ql_engine_get_limits(eng, &lim);
    if ((rc = pool_init(&pool, tok, lim.n_vocab)) != 0) {
        fprintf(stderr, "bench-engine: no ordinary token to build prompts from\n");
        goto done;
    }
    b.o = &o;
    b.eng = eng;
    b.pool = &pool;
    b.prompts = malloc((size_t)c_max * o.input_len * sizeof(int32_t));
    b.reqs = calloc((size_t)c_max, sizeof(req_t));
    b.slots = calloc((size_t)c_max, sizeof(slot_t));
    b.tmp = calloc((size_t)QL_MAX(c_max, o.reps), sizeof(double));
    all = calloc((size_t)o.n_conc * o.reps, sizeof(result_t));
    if (!b.prompts || !b.reqs || !b.slots || !b.tmp || !all) {
        fprintf(stderr, "bench-engine: out of memory\n");
        goto done;
    }

    const ql_backend_info_t *bi = ql_backend_info(be);
    char feat[128], la[64];
    ql_cpu_features_str(ql_cpu_features(), feat, sizeof(feat));
    const char *slash = strrchr(o.model, '/');
    const int n_threads = o.threads > 0 ? o.threads : ql_cpu_count();
    fprintf(out, "model: %s (%.1f MiB of weights, vocab %d), threads: %d, kernels: %s, cpu: %s\n",
            slash ? slash + 1 : o.model, (double)bi->weight_bytes / 1048576.0, (int)lim.n_vocab,
            n_threads, ql_cpu_isa_name(ql_cpu_isa_default()), feat);
    loadavg(la, sizeof(la));
    fprintf(out, "load average before: %s\n", la);
    fprintf(out,
            "engine: max_num_seqs %d, max_batched_tokens %d, %d KV blocks of %d tokens, prefix "
            "cache %s; requests: %d prompt tokens (%d shared), %d output tokens, greedy, "
            "ignore_eos; %d rep(s) after %d warm-up\n",
            (int)lim.max_num_seqs, (int)lim.max_batched_tokens, (int)lim.n_blocks,
            (int)lim.block_size, o.no_prefix_cache ? "off" : "on", o.input_len, o.shared_prefix,
            o.output_len, o.reps, o.warmup);
    fprintf(out, "| conc | gen tok/s (median, min..max) | TTFT ms mean | p50 | p90 | "
                 "dec tok/s/req | wall s | steps | tok/step | cached | preempt | others |\n");
    fprintf(out, "|-----:|:-----------------------------|----------:|----------:|----------:|"
                 "------------:|-------:|------:|---------:|-------:|--------:|-------:|\n");
    fflush(out);

    uint64_t run = 1;
    double tmp[256], others_cores[MAX_CONFIGS];
    for (int k = 0; k < o.n_conc; k++) {
        const int C = o.conc[k];
        if (C > lim.max_num_seqs)
            fprintf(stderr, "bench-engine: note: concurrency %d > max_num_seqs %d: the rest wait\n",
                    C, (int)lim.max_num_seqs);
        double busy0, self0, busy1, self1;
        cpu_times(&busy0, &self0);
        const uint64_t tc0 = ql_time_ns();
        result_t scratch, *rs = all + (size_t)k * o.reps;
        for (int i = 0; i < o.warmup; i++)
            if ((rc = run_once(&b, C, o.output_len, run++, &scratch)) != 0) goto done;
        for (int i = 0; i < o.reps; i++)
            if ((rc = run_once(&b, C, o.output_len, run++, &rs[i])) != 0) goto done;
        double lo = rs[0].gen_tps, hi = rs[0].gen_tps;
        long cached = 0, preempt = 0;
        for (int i = 0; i < o.reps; i++) {
            lo = QL_MIN(lo, rs[i].gen_tps), hi = QL_MAX(hi, rs[i].gen_tps);
            cached += rs[i].n_cached, preempt += rs[i].n_preempt;
        }
        cpu_times(&busy1, &self1);
        const double span_s = (double)(ql_time_ns() - tc0) * 1e-9;
        char spread[64], others[16] = "?";
        others_cores[k] = -1.0;
        if (busy0 >= 0 && busy1 >= 0) { /* cores' worth of other processes' CPU over the runs */
            others_cores[k] = QL_MAX(0.0, (busy1 - busy0) - (self1 - self0)) / span_s;
            snprintf(others, sizeof(others), "%.2f", others_cores[k]);
        }
        snprintf(spread, sizeof(spread), "%.1f (%.1f..%.1f)", MED(gen_tps), lo, hi);
        fprintf(out,
                "| %4d | %-28s | %9.1f | %9.1f | %9.1f | %12.1f | %6.2f | %5.0f | %8.1f | %6ld "
                "| %7ld | %6s |\n",
                C, spread, MED(ttft_mean_ms), MED(ttft_p50_ms), MED(ttft_p90_ms), MED(dec_tps_mean),
                MED(wall_s), MED(steps), MED(tok_per_step), cached, preempt, others);
        fflush(out);
    }
    loadavg(la, sizeof(la));
    fprintf(out,
            "load average after: %s; others = CPU other processes used during the "
            "configuration, in cores (of %d)\n",
            la, ql_cpu_count());
    if (o.n_conc > 1 && o.conc[0] == 1) {
        for (int k = 1; k < o.n_conc; k++) {
            const result_t *r1 = all, *rk = all + (size_t)k * o.reps;
            double m1 = median_of(r1, o.reps, offsetof(result_t, gen_tps), tmp);
            double mk = median_of(rk, o.reps, offsetof(result_t, gen_tps), tmp);
            fprintf(out, "%s%d vs 1: %.2fx", k == 1 ? "" : ", ", o.conc[k], mk / m1);
        }
        fprintf(out, "\n");
    }

    if (o.json) {
        jf = strcmp(o.json, "-") ? fopen(o.json, "w") : stdout;
        if (!jf) {
            fprintf(stderr, "bench-engine: cannot write %s\n", o.json);
            goto done;
        }
        fprintf(jf, "{\"model\": ");
        json_str(jf, slash ? slash + 1 : o.model);
        fprintf(jf,
                ", \"threads\": %d, \"kernels\": \"%s\", \"input_len\": %d, "
                "\"output_len\": %d, \"shared_prefix\": %d, \"prefix_cache\": %s, "
                "\"max_num_seqs\": %d, \"max_batched_tokens\": %d, \"results\": [",
                n_threads, ql_cpu_isa_name(ql_cpu_isa_default()), o.input_len, o.output_len,
                o.shared_prefix, o.no_prefix_cache ? "false" : "true", (int)lim.max_num_seqs,
                (int)lim.max_batched_tokens);
        for (int k = 0; k < o.n_conc; k++) {
            fprintf(jf, "%s\n  {\"concurrency\": %d, \"others_cores\": %.3f, \"reps\": [",
                    k ? "," : "", o.conc[k], others_cores[k]);
            for (int i = 0; i < o.reps; i++) {
                const result_t *r = all + (size_t)k * o.reps + i;
                fprintf(jf,
                        "%s\n    {\"gen_tok_s\": %.2f, \"wall_s\": %.4f, \"ttft_ms_mean\": %.2f, "
                        "\"ttft_ms_p50\": %.2f, \"ttft_ms_p90\": %.2f, \"ttft_ms_max\": %.2f, "
                        "\"decode_tok_s_per_req\": %.2f, \"generated\": %ld, \"steps\": %.0f, "
                        "\"tok_per_step\": %.2f, \"cached_prompt_tokens\": %ld, "
                        "\"preemptions\": %ld}",
                        i ? "," : "", r->gen_tps, r->wall_s, r->ttft_mean_ms, r->ttft_p50_ms,
                        r->ttft_p90_ms, r->ttft_max_ms, r->dec_tps_mean, r->n_gen, r->steps,
                        r->tok_per_step, r->n_cached, r->n_preempt);
            }
            fprintf(jf, "]}");
        }
        fprintf(jf, "\n]}\n");
        if (jf != stdout) fclose(jf);
    }
    code = 0;

done:
    ql_engine_free(eng);
    ql_backend_free(be);
    ql_tok_free(tok);
    ql_gguf_free(g);
    free(pool.ids);
    free(b.prompts), free(b.reqs), free(b.slots), free(b.tmp), free(all);
    return code;
}
