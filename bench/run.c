/*
 * bench/run.c — `quill bench`: set-up (model id, prompts of random token ids through the target's
 * /tokenize), the arrival process and the concurrency cap on one libuv loop, per-request
 * timestamps from the stream, and the report (table on stdout, JSON with --out), each metric
 * as vLLM's `bench serve` defines it (bench/stats.c). docs/BENCHMARKS.md has the figures.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench/bench-internal.h"

/* exit statuses, as server/cmd.h numbers them */
#define QL_EXIT_BENCH_FAIL 1
#define QL_EXIT_BENCH_USAGE 2

/* ---- state ---- */

typedef struct req_s req_t;
typedef struct run_s run_t;

struct req_s {
    size_t index;
    run_t *run;
    ql_proto_buf_t body;       /* the request body, built before the clock starts */
    int32_t input_len;         /* prompt tokens sent (completions) or intended (chat) */
    double t_arrival_s;        /* scheduled arrival, from the phase start */
    uint64_t t_start_ns;       /* sent (after the concurrency cap let it go) */
    uint64_t t_first_ns;       /* first chunk with text; 0 = none */
    uint64_t t_end_ns;         /* response complete or failed */
    uint64_t *chunk_ns;        /* [n_chunks] arrival of each chunk with text */
    size_t n_chunks, cap_chunks;
    int64_t usage_prompt;      /* the server's usage; -1 = not sent */
    int64_t usage_completion;
    int ok;
    char err[256];
    ql__bench_call_t call;
};

typedef struct bench_s {
    uv_loop_t loop;
    ql__bench_target_t target;
    const ql_config_t *cfg;
    char *model;               /* model id sent; NULL = none (the server has no /v1/models) */
    int llama_dialect;         /* /tokenize takes llama.cpp's {"content"} */
    int32_t *pool;             /* [n_pool] distinct token ids of the corpus */
    size_t n_pool;
    uint64_t seed;
    uint64_t rng;
    int tty;
} bench_t;

struct run_s {
    bench_t *b;
    req_t *reqs;               /* [n] */
    size_t n, next, in_flight, completed, peak;
    int max_concurrency;       /* 0 = no cap */
    int show_progress;
    uv_timer_t timer;
    uint64_t t0_ns;
    size_t progress_shown;
};

/* ---- synchronous set-up calls ---- */

static void sync_done(ql__bench_call_t *c) { *(int *)c->ud = 1; }

/* Runs one exchange to its end. On a transport failure writes err and returns QL_EIO. */
static int http_sync(bench_t *b, const char *method, const char *path, const ql_proto_buf_t *body,
                     ql__bench_call_t *c, char *err, size_t errlen) {
    int done = 0;
    int rc = ql__bench_call_start(&b->loop, c, &b->target, method, path, body ? body->data : NULL,
                                  body ? body->len : 0, NULL, sync_done, &done);
    if (rc != 0) {
        ql_errf(err, errlen, "%s %s: %s", method, path, rc < 0 && rc > -4096 ? uv_strerror(rc) : ql_strerror(rc));
        return QL_EIO;
    }
    while (!done) uv_run(&b->loop, UV_RUN_ONCE);
    if (c->failed) {
        ql_errf(err, errlen, "%s", c->err);
        ql__bench_call_free(c);
        return QL_EIO;
    }
    return 0;
}

/* "HTTP 404: message" from a non-200 answer. */
static void http_error(const ql__bench_call_t *c, char *err, size_t errlen) {
    char msg[200];
    if (ql_proto_client_error_message(c->body.data, c->body.len, msg, sizeof(msg)) != 0) {
        size_t n = c->body.len < 120 ? c->body.len : 120;
        for (size_t i = 0; i < n; i++) {
            char ch = c->body.data[i];
            msg[i] = (ch == '\n' || ch == '\r' || (unsigned char)ch < ' ') ? ' ' : ch;
        }
        msg[n] = '\0';
    }
    ql_errf(err, errlen, "HTTP %d%s%s", c->status, msg[0] ? ": " : "", msg);
}

static int cmp_i32(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* The corpus through the target's /tokenize (vLLM's shape, else llama.cpp's): the pool of
 * distinct ids prompts are drawn from. */
static int build_pool(bench_t *b, char *err, size_t errlen) {
    ql_proto_buf_t text = {0};
    for (size_t i = 0; i < ql__bench_corpus_len; i++) {
        if (i) ql_proto_buf_append(&text, "\n\n", 2);
        ql_proto_buf_append(&text, ql__bench_corpus[i], strlen(ql__bench_corpus[i]));
    }
    char first[256] = "";
    int rc = QL_EIO;
    for (int dialect = 0; dialect < 2 && rc != 0; dialect++) {
        ql_proto_buf_t body = {0};
        if (ql_proto_client_tokenize_body(text.data, dialect, &body) != 0) {
            ql_proto_buf_free(&body);
            break;
        }
        ql__bench_call_t c;
        rc = http_sync(b, "POST", "/tokenize", &body, &c, err, errlen);
        ql_proto_buf_free(&body);
        if (rc) break; /* the transport failed: no point in the other dialect */
        rc = QL_EINVAL;
        if (c.status != 200) {
            if (!first[0]) http_error(&c, first, sizeof(first));
        } else if (ql_proto_client_tokens(c.body.data, c.body.len, &b->pool, &b->n_pool) == 0 && b->n_pool > 0) {
            b->llama_dialect = dialect;
            rc = 0;
        } else {
            free(b->pool);
            b->pool = NULL;
            b->n_pool = 0;
            if (!first[0]) ql_errf(first, sizeof(first), "an answer without a \"tokens\" list");
        }
        ql__bench_call_free(&c);
    }
    ql_proto_buf_free(&text);
    if (rc == QL_EINVAL)
        ql_errf(err, errlen, "POST /tokenize: %s (quill bench needs vLLM's or llama.cpp's /tokenize)", first);
    if (rc) return rc;
    qsort(b->pool, b->n_pool, sizeof(*b->pool), cmp_i32);
    size_t k = 0;
    for (size_t i = 0; i < b->n_pool; i++)
        if (k == 0 || b->pool[k - 1] != b->pool[i]) b->pool[k++] = b->pool[i];
    b->n_pool = k;
    return 0;
}

static int fetch_model(bench_t *b, char *err, size_t errlen) {
    ql__bench_call_t c;
    int rc = http_sync(b, "GET", "/v1/models", NULL, &c, err, errlen);
    if (rc) return rc;
    if (c.status != 200) {
        char e[256];
        http_error(&c, e, sizeof(e));
        ql_errf(err, errlen, "GET /v1/models: %s (give the model id with --model)", e);
        rc = QL_EIO;
    } else if (ql_proto_client_first_model(c.body.data, c.body.len, &b->model) != 0) {
        ql_errf(err, errlen, "GET /v1/models: no model id in the answer (give one with --model)");
        rc = QL_EIO;
    }
    ql__bench_call_free(&c);
    return rc;
}

/* One prompt of cfg->bench_input_len random ids of the pool; chat needs text: /detokenize. */
static int build_request(bench_t *b, req_t *q, char *err, size_t errlen) {
    const ql_config_t *cfg = b->cfg;
    size_t n = (size_t)cfg->bench_input_len;
    int32_t *ids = ql_xmalloc(n * sizeof(*ids));
    for (size_t i = 0; i < n; i++) ids[i] = b->pool[ql_bench_rand(&b->rng) % b->n_pool];
    ql_proto_client_req_t r = {.chat = cfg->bench_chat, .model = b->model, .prompt_ids = ids,
                               .n_prompt_ids = n, .max_tokens = cfg->bench_output_len, .ignore_eos = 1};
    char *text = NULL;
    int rc = 0;
    if (cfg->bench_chat) {
        ql_proto_buf_t body = {0};
        ql__bench_call_t c;
        rc = ql_proto_client_detokenize_body(ids, n, &body);
        if (!rc) rc = http_sync(b, "POST", "/detokenize", &body, &c, err, errlen);
        else ql_errf(err, errlen, "out of memory");
        ql_proto_buf_free(&body);
        if (!rc) {
            if (c.status != 200) {
                char e[256];
                http_error(&c, e, sizeof(e));
                ql_errf(err, errlen, "POST /detokenize: %s", e);
                rc = QL_EIO;
            } else if (ql_proto_client_text(c.body.data, c.body.len, &text) != 0) {
                ql_errf(err, errlen, "POST /detokenize: no \"prompt\" or \"content\" text in the answer");
                rc = QL_EIO;
            }
            ql__bench_call_free(&c);
        }
        r.prompt_text = text;
    }
    if (!rc && ql_proto_client_request(&r, &q->body) != 0) {
        ql_errf(err, errlen, "out of memory");
        rc = QL_ENOMEM;
    }
    q->input_len = (int32_t)n;
    q->usage_prompt = q->usage_completion = -1;
    free(text);
    free(ids);
    return rc;
}

/* ---- the measured loop ---- */

static void pump(run_t *r);

static void progress(run_t *r) {
    if (!r->show_progress) return;
    if (r->b->tty) {
        const int width = 40;
        int fill = (int)(r->completed * (size_t)width / r->n);
        fprintf(stderr, "\r%6zu/%zu [%.*s%*s] %zu in flight ", r->completed, r->n, fill,
                "########################################", width - fill, "", r->in_flight);
        if (r->completed == r->n) fputc('\n', stderr);
    } else {
        size_t step = r->n >= 10 ? r->n / 10 : 1;
        if (r->completed == r->n || r->completed >= r->progress_shown + step) {
            r->progress_shown = r->completed;
            fprintf(stderr, "quill bench: %zu/%zu requests done\n", r->completed, r->n);
        }
    }
    fflush(stderr);
}

static void req_event(ql__bench_call_t *c, const char *data, size_t len, uint64_t t_ns) {
    req_t *q = c->ud;
    ql_proto_client_chunk_t ch;
    if (ql_proto_client_chunk(data, len, &ch) != 0) {
        if (!q->err[0]) ql_errf(q->err, sizeof(q->err), "a stream chunk that is not a JSON object");
        return;
    }
    if (ch.is_error) {
        if (!q->err[0]) ql_errf(q->err, sizeof(q->err), "stream error: %s", ch.error);
        return;
    }
    if (ch.has_choice && ch.text_len > 0) {
        if (q->n_chunks == q->cap_chunks) {
            q->cap_chunks = q->cap_chunks ? 2 * q->cap_chunks : 64;
            q->chunk_ns = ql_xrealloc(q->chunk_ns, q->cap_chunks * sizeof(*q->chunk_ns));
        }
        q->chunk_ns[q->n_chunks++] = t_ns;
        if (!q->t_first_ns) q->t_first_ns = t_ns;
    }
    if (ch.completion_tokens >= 0) q->usage_completion = ch.completion_tokens;
    if (ch.prompt_tokens >= 0) q->usage_prompt = ch.prompt_tokens;
}

static void req_done(ql__bench_call_t *c) {
    req_t *q = c->ud;
    run_t *r = q->run;
    q->t_end_ns = c->t_end_ns;
    if (c->failed) {
        if (!q->err[0]) ql_errf(q->err, sizeof(q->err), "%s", c->err);
    } else if (c->status != 200) {
        http_error(c, q->err, sizeof(q->err));
    } else if (c->n_events == 0) {
        for (char *h = c->head; *h; h++)
            if ((unsigned char)*h < ' ') *h = ' ';
        ql_errf(q->err, sizeof(q->err), "HTTP 200 without any stream event; the body began: %s", c->head);
    } else if (!q->err[0] && q->n_chunks == 0) {
        ql_errf(q->err, sizeof(q->err), "the stream ended without any text");
    }
    q->ok = q->err[0] == '\0';
    ql__bench_call_free(c);
    r->in_flight--;
    r->completed++;
    progress(r);
    pump(r);
}

static void on_timer(uv_timer_t *t) { pump(t->data); }

static void start_req(run_t *r, req_t *q) {
    q->t_start_ns = ql_time_ns();
    r->in_flight++;
    if (r->in_flight > r->peak) r->peak = r->in_flight;
    int rc = ql__bench_call_start(&r->b->loop, &q->call, &r->b->target, "POST",
                                  r->b->cfg->bench_chat ? "/v1/chat/completions" : "/v1/completions",
                                  q->body.data, q->body.len, req_event, req_done, q);
    if (rc != 0) {
        q->t_end_ns = ql_time_ns();
        ql_errf(q->err, sizeof(q->err), "cannot start the request: %s",
                rc < 0 && rc > -4096 ? uv_strerror(rc) : ql_strerror(rc));
        r->in_flight--;
        r->completed++;
        progress(r);
    }
}

static void pump(run_t *r) {
    uint64_t now = ql_time_ns();
    double el = (double)(now - r->t0_ns) / 1e9;
    while (r->next < r->n && (r->max_concurrency == 0 || r->in_flight < (size_t)r->max_concurrency)) {
        req_t *q = &r->reqs[r->next];
        if (q->t_arrival_s > el) {
            uint64_t ms = (uint64_t)ceil((q->t_arrival_s - el) * 1000.0);
            uv_timer_start(&r->timer, on_timer, ms, 0);
            return;
        }
        r->next++;
        start_req(r, q);
    }
}

/* Runs reqs[0..n) to completion. */
static void run_phase(bench_t *b, run_t *r, int show_progress) {
    r->b = b;
    r->max_concurrency = b->cfg->bench_max_concurrency;
    r->show_progress = show_progress;
    for (size_t i = 0; i < r->n; i++) r->reqs[i].run = r;
    uv_timer_init(&b->loop, &r->timer);
    r->timer.data = r;
    r->t0_ns = ql_time_ns();
    pump(r);
    while (r->completed < r->n) uv_run(&b->loop, UV_RUN_ONCE);
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, NULL);
    uv_run(&b->loop, UV_RUN_NOWAIT);
}

/* ---- metrics ---- */

typedef struct metrics_s {
    size_t completed, failed, good;
    int64_t total_input, total_output;
    double duration_s;
    double request_throughput, output_throughput, total_token_throughput, goodput;
    ql_bench_dist_t ttft, tpot, itl, itl_token, e2el; /* ms */
} metrics_t;

static int64_t out_tokens(const req_t *q) {
    return q->usage_completion >= 0 ? q->usage_completion : (int64_t)q->n_chunks;
}

static double ms(uint64_t a, uint64_t b) { return (double)(b - a) / 1e6; }

static void compute(const run_t *r, const ql_config_t *cfg, metrics_t *m) {
    memset(m, 0, sizeof(*m));
    size_t n = r->n, n_itl = 0;
    for (size_t i = 0; i < n; i++)
        if (r->reqs[i].ok && r->reqs[i].n_chunks > 1) n_itl += r->reqs[i].n_chunks - 1;
    double *ttft = ql_xcalloc(n + 1, sizeof(double)), *tpot = ql_xcalloc(n + 1, sizeof(double));
    double *tpot_all = ql_xcalloc(n + 1, sizeof(double)), *e2el = ql_xcalloc(n + 1, sizeof(double));
    double *itl = ql_xcalloc(n_itl + 1, sizeof(double)), *itl_tok = ql_xcalloc(n_itl + 1, sizeof(double));
    size_t n_tpot = 0, k_itl = 0;
    uint64_t t_last = r->t0_ns;
    for (size_t i = 0; i < n; i++) {
        const req_t *q = &r->reqs[i];
        if (q->t_end_ns > t_last) t_last = q->t_end_ns;
        if (!q->ok) {
            m->failed++;
            continue;
        }
        int64_t n_out = out_tokens(q);
        m->total_input += q->usage_prompt >= 0 ? q->usage_prompt : q->input_len;
        m->total_output += n_out;
        double t = ms(q->t_start_ns, q->t_first_ns), e = ms(q->t_start_ns, q->t_end_ns);
        double tp = ql_bench_tpot(e, t, n_out);
        ttft[m->completed] = t;
        e2el[m->completed] = e;
        tpot_all[m->completed] = tp;
        if (n_out > 1) tpot[n_tpot++] = tp;
        /* NOTE(itl-token): a chunk may carry several tokens (a held-back partial character);
         * per token, each gap is divided by the mean tokens per gap, (n_out-1)/(chunks-1). */
        double per_gap = q->n_chunks > 1 && n_out > 1 ? (double)(n_out - 1) / (double)(q->n_chunks - 1) : 1.0;
        for (size_t j = 1; j < q->n_chunks; j++) {
            double g = ms(q->chunk_ns[j - 1], q->chunk_ns[j]);
            itl[k_itl] = g;
            itl_tok[k_itl++] = g / per_gap;
        }
        m->completed++;
    }
    m->duration_s = (double)(t_last - r->t0_ns) / 1e9;
    m->good = ql_bench_good(ttft, tpot_all, m->completed, cfg->bench_slo_ttft_ms, cfg->bench_slo_tpot_ms);
    ql_bench_dist(ttft, m->completed, &m->ttft);
    ql_bench_dist(tpot, n_tpot, &m->tpot);
    ql_bench_dist(itl, k_itl, &m->itl);
    ql_bench_dist(itl_tok, k_itl, &m->itl_token);
    ql_bench_dist(e2el, m->completed, &m->e2el);
    if (m->duration_s > 0) {
        m->request_throughput = (double)m->completed / m->duration_s;
        m->output_throughput = (double)m->total_output / m->duration_s;
        m->total_token_throughput = (double)(m->total_input + m->total_output) / m->duration_s;
        m->goodput = (double)m->good / m->duration_s;
    }
    free(ttft), free(tpot), free(tpot_all), free(e2el), free(itl), free(itl_tok);
}

/* ---- report ---- */

static void row_s(const char *k, const char *v) { printf("%-40s %s\n", k, v); }
static void row_d(const char *k, double v) { printf("%-40s %.2f\n", k, v); }
static void row_i(const char *k, long long v) { printf("%-40s %lld\n", k, v); }

static void section(const char *title) {
    int n = (int)strlen(title), w = 50 - n - 2;
    printf("%.*s %s %.*s\n", w / 2, "--------------------------------", title, w - w / 2,
           "--------------------------------");
}

static void dist_rows(const char *what, const ql_bench_dist_t *d) {
    char k[64];
    snprintf(k, sizeof(k), "Mean %s (ms):", what), row_d(k, d->mean);
    snprintf(k, sizeof(k), "Median %s (ms):", what), row_d(k, d->median);
    snprintf(k, sizeof(k), "P90 %s (ms):", what), row_d(k, d->p90);
    snprintf(k, sizeof(k), "P99 %s (ms):", what), row_d(k, d->p99);
}

static void print_table(const bench_t *b, const run_t *r, const metrics_t *m) {
    const ql_config_t *cfg = b->cfg;
    char v[64];
    printf("============ Serving Benchmark Result ============\n");
    row_i("Successful requests:", (long long)m->completed);
    row_i("Failed requests:", (long long)m->failed);
    if (cfg->bench_max_concurrency) row_i("Maximum request concurrency:", cfg->bench_max_concurrency);
    else row_s("Maximum request concurrency:", "none");
    if (cfg->bench_request_rate > 0) snprintf(v, sizeof(v), "%.2f", cfg->bench_request_rate);
    else snprintf(v, sizeof(v), "inf");
    row_s("Request rate configured (RPS):", v);
    row_d("Benchmark duration (s):", m->duration_s);
    row_i("Total input tokens:", (long long)m->total_input);
    row_i("Total generated tokens:", (long long)m->total_output);
    row_d("Request throughput (req/s):", m->request_throughput);
    if (cfg->bench_slo_ttft_ms > 0 || cfg->bench_slo_tpot_ms > 0) row_d("Request goodput (req/s):", m->goodput);
    row_d("Output token throughput (tok/s):", m->output_throughput);
    row_d("Total token throughput (tok/s):", m->total_token_throughput);
    row_i("Peak concurrent requests:", (long long)r->peak);
    section("Time to First Token");
    dist_rows("TTFT", &m->ttft);
    section("Time per Output Token (excl. 1st token)");
    dist_rows("TPOT", &m->tpot);
    section("Inter-token Latency (per chunk)");
    dist_rows("ITL", &m->itl);
    section("Inter-token Latency (per token)");
    dist_rows("ITL/token", &m->itl_token);
    section("End-to-end Latency");
    dist_rows("E2EL", &m->e2el);
    printf("==================================================\n");
    fflush(stdout);
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v) {
    if (isfinite(v)) fprintf(f, "%.6f", v);
    else fputs("null", f);
}

static void json_dist(FILE *f, const char *name, const ql_bench_dist_t *d) {
    fprintf(f, "  \"mean_%s_ms\": ", name), json_num(f, d->mean);
    fprintf(f, ",\n  \"median_%s_ms\": ", name), json_num(f, d->median);
    fprintf(f, ",\n  \"std_%s_ms\": ", name), json_num(f, d->std);
    fprintf(f, ",\n  \"p90_%s_ms\": ", name), json_num(f, d->p90);
    fprintf(f, ",\n  \"p99_%s_ms\": ", name), json_num(f, d->p99);
    fprintf(f, ",\n");
}

static double rel_s(const run_t *r, uint64_t t) { return t ? (double)(t - r->t0_ns) / 1e9 : NAN; }

static int write_json(const bench_t *b, const run_t *r, const metrics_t *m, char *err, size_t errlen) {
    const ql_config_t *cfg = b->cfg;
    FILE *f = fopen(cfg->bench_out, "w");
    if (!f) {
        ql_errf(err, errlen, "--out: cannot write %s: %s", cfg->bench_out, strerror(errno));
        return QL_EIO;
    }
    char date[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(date, sizeof(date), "%Y-%m-%dT%H:%M:%SZ", &tm);
    fprintf(f, "{\n  \"date\": \"%s\",\n  \"base_url\": ", date);
    json_str(f, cfg->bench_base_url);
    fprintf(f, ",\n  \"endpoint\": \"%s\",\n  \"model_id\": ", cfg->bench_chat ? "/v1/chat/completions" : "/v1/completions");
    if (b->model) json_str(f, b->model);
    else fputs("null", f);
    fprintf(f, ",\n  \"num_prompts\": %d,\n  \"input_len\": %d,\n  \"output_len\": %d,\n", cfg->bench_num_prompts,
            cfg->bench_input_len, cfg->bench_output_len);
    fprintf(f, "  \"request_rate\": ");
    if (cfg->bench_request_rate > 0) json_num(f, cfg->bench_request_rate);
    else fputs("null", f);
    fprintf(f, ",\n  \"burstiness\": ");
    json_num(f, cfg->bench_burstiness);
    fprintf(f, ",\n  \"max_concurrency\": ");
    if (cfg->bench_max_concurrency) fprintf(f, "%d", cfg->bench_max_concurrency);
    else fputs("null", f);
    fprintf(f, ",\n  \"seed\": %llu,\n  \"warmup\": %d,\n  \"tokenize_dialect\": \"%s\",\n", (unsigned long long)b->seed,
            cfg->bench_warmup, b->llama_dialect ? "llama.cpp" : "vllm");
    fprintf(f, "  \"duration\": ");
    json_num(f, m->duration_s);
    fprintf(f, ",\n  \"completed\": %zu,\n  \"failed\": %zu,\n  \"total_input_tokens\": %lld,\n  "
               "\"total_output_tokens\": %lld,\n",
            m->completed, m->failed, (long long)m->total_input, (long long)m->total_output);
    fprintf(f, "  \"request_throughput\": "), json_num(f, m->request_throughput);
    fprintf(f, ",\n  \"output_throughput\": "), json_num(f, m->output_throughput);
    fprintf(f, ",\n  \"total_token_throughput\": "), json_num(f, m->total_token_throughput);
    fprintf(f, ",\n  \"max_concurrent_requests\": %zu,\n", r->peak);
    fprintf(f, "  \"slo_ttft_ms\": ");
    if (cfg->bench_slo_ttft_ms > 0) json_num(f, cfg->bench_slo_ttft_ms);
    else fputs("null", f);
    fprintf(f, ",\n  \"slo_tpot_ms\": ");
    if (cfg->bench_slo_tpot_ms > 0) json_num(f, cfg->bench_slo_tpot_ms);
    else fputs("null", f);
    fprintf(f, ",\n  \"goodput\": ");
    if (cfg->bench_slo_ttft_ms > 0 || cfg->bench_slo_tpot_ms > 0) json_num(f, m->goodput);
    else fputs("null", f);
    fprintf(f, ",\n");
    json_dist(f, "ttft", &m->ttft);
    json_dist(f, "tpot", &m->tpot);
    json_dist(f, "itl", &m->itl);
    json_dist(f, "itl_token", &m->itl_token);
    json_dist(f, "e2el", &m->e2el);
    fprintf(f, "  \"requests\": [");
    for (size_t i = 0; i < r->n; i++) {
        const req_t *q = &r->reqs[i];
        fprintf(f, "%s\n    {\"index\": %zu, \"ok\": %s, \"error\": ", i ? "," : "", q->index, q->ok ? "true" : "false");
        if (q->ok) fputs("null", f);
        else json_str(f, q->err);
        fprintf(f, ", \"input_len\": %d, \"output_tokens\": %lld, \"chunks\": %zu, \"usage_prompt_tokens\": ",
                q->input_len, (long long)out_tokens(q), q->n_chunks);
        if (q->usage_prompt >= 0) fprintf(f, "%lld", (long long)q->usage_prompt);
        else fputs("null", f);
        fprintf(f, ", \"usage_completion_tokens\": ");
        if (q->usage_completion >= 0) fprintf(f, "%lld", (long long)q->usage_completion);
        else fputs("null", f);
        fprintf(f, ",\n     \"t_arrival\": "), json_num(f, q->t_arrival_s);
        fprintf(f, ", \"t_start\": "), json_num(f, rel_s(r, q->t_start_ns));
        fprintf(f, ", \"t_first_token\": "), json_num(f, rel_s(r, q->t_first_ns));
        fprintf(f, ", \"t_end\": "), json_num(f, rel_s(r, q->t_end_ns));
        double ttft = q->t_first_ns ? ms(q->t_start_ns, q->t_first_ns) : NAN;
        double e2el = q->t_end_ns && q->t_start_ns ? ms(q->t_start_ns, q->t_end_ns) : NAN;
        fprintf(f, ",\n     \"ttft_ms\": "), json_num(f, ttft);
        fprintf(f, ", \"e2el_ms\": "), json_num(f, e2el);
        fprintf(f, ", \"tpot_ms\": "), json_num(f, q->ok ? ql_bench_tpot(e2el, ttft, out_tokens(q)) : NAN);
        fprintf(f, ",\n     \"t_chunks\": [");
        for (size_t j = 0; j < q->n_chunks; j++) {
            if (j) fputs(", ", f);
            json_num(f, rel_s(r, q->chunk_ns[j]));
        }
        fprintf(f, "]}");
    }
    fprintf(f, "\n  ]\n}\n");
    int bad = ferror(f);
    if (fclose(f) != 0 || bad) {
        ql_errf(err, errlen, "--out: cannot write %s: %s", cfg->bench_out, strerror(errno));
        return QL_EIO;
    }
    return 0;
}

/* ---- the command ---- */

static void free_run(run_t *r) {
    for (size_t i = 0; r->reqs && i < r->n; i++) {
        ql_proto_buf_free(&r->reqs[i].body);
        free(r->reqs[i].chunk_ns);
    }
    free(r->reqs);
}

static int make_run(bench_t *b, run_t *r, size_t n, int measured, char *err, size_t errlen) {
    memset(r, 0, sizeof(*r));
    r->n = n;
    r->reqs = ql_xcalloc(n ? n : 1, sizeof(req_t));
    double *t = ql_xcalloc(n ? n : 1, sizeof(double));
    if (measured) ql_bench_arrivals(b->cfg->bench_request_rate, b->cfg->bench_burstiness, b->seed ^ 0xA5A5u, n, t);
    for (size_t i = 0; i < n; i++) {
        r->reqs[i].index = i;
        r->reqs[i].t_arrival_s = t[i];
        int rc = build_request(b, &r->reqs[i], err, errlen);
        if (rc) {
            free(t);
            return rc;
        }
    }
    free(t);
    return 0;
}

int ql_bench_cmd(const ql_config_t *cfg) {
    bench_t b;
    memset(&b, 0, sizeof(b));
    b.cfg = cfg;
    b.tty = isatty(STDERR_FILENO);
    char err[512];
    int status = QL_EXIT_BENCH_FAIL;
    run_t warm = {0}, run = {0};
    if (ql__bench_parse_url(cfg->bench_base_url, &b.target, err, sizeof(err)) != 0) {
        fprintf(stderr, "quill bench: %s\n", err);
        return QL_EXIT_BENCH_USAGE;
    }
    b.target.api_key = cfg->bench_api_key;
    b.target.timeout_ms = (uint64_t)cfg->request_timeout_s * 1000u;
    b.seed = cfg->seed >= 0 ? (uint64_t)cfg->seed : ql_time_ns();
    b.rng = b.seed;
    if (uv_loop_init(&b.loop) != 0) {
        fprintf(stderr, "quill bench: cannot create the event loop\n");
        return QL_EXIT_BENCH_FAIL;
    }
    if (ql__bench_resolve(&b.loop, &b.target, err, sizeof(err)) != 0) goto fail;
    if (cfg->bench_model) b.model = ql_xstrdup(cfg->bench_model);
    else if (fetch_model(&b, err, sizeof(err)) != 0) goto fail;
    if (build_pool(&b, err, sizeof(err)) != 0) goto fail;
    char rate[32] = "inf";
    if (cfg->bench_request_rate > 0) snprintf(rate, sizeof(rate), "%.6g/s", cfg->bench_request_rate);
    fprintf(stderr,
            "quill bench: http://%s%s%s, model %s: %d prompts of %d random token ids (%zu distinct, through %s /tokenize), "
            "output %d tokens, rate %s, max concurrency %d, warm-up %d, seed %llu\n",
            b.target.host_header, b.target.prefix, cfg->bench_chat ? "/v1/chat/completions" : "/v1/completions", b.model,
            cfg->bench_num_prompts, cfg->bench_input_len, b.n_pool, b.llama_dialect ? "llama.cpp's" : "vLLM's",
            cfg->bench_output_len, rate,
            cfg->bench_max_concurrency, cfg->bench_warmup, (unsigned long long)b.seed);
    if (cfg->bench_warmup > 0) {
        if (make_run(&b, &warm, (size_t)cfg->bench_warmup, 0, err, sizeof(err)) != 0) goto fail;
        run_phase(&b, &warm, 0);
        for (size_t i = 0; i < warm.n; i++) {
            if (!warm.reqs[i].ok) {
                ql_errf(err, sizeof(err), "the warm-up request failed: %s", warm.reqs[i].err);
                goto fail;
            }
        }
    }
    if (make_run(&b, &run, (size_t)cfg->bench_num_prompts, 1, err, sizeof(err)) != 0) goto fail;
    run_phase(&b, &run, 1);
    metrics_t m;
    compute(&run, cfg, &m);
    print_table(&b, &run, &m);
    if (cfg->bench_out && write_json(&b, &run, &m, err, sizeof(err)) != 0) goto fail;
    if (m.failed > 0) {
        const char *first = "";
        for (size_t i = 0; i < run.n && !first[0]; i++)
            if (!run.reqs[i].ok) first = run.reqs[i].err;
        ql_errf(err, sizeof(err), "%zu of %zu requests failed; the first: %s", m.failed, run.n, first);
        goto fail;
    }
    status = 0;
    goto done;
fail:
    fprintf(stderr, "quill bench: %s\n", err);
done:
    free_run(&warm);
    free_run(&run);
    free(b.pool);
    free(b.model);
    uv_run(&b.loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&b.loop);
    QL_ASSERT(rc == 0);
    return status;
}
