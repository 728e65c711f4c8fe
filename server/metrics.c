/*
 * server/metrics.c — GET /metrics: Prometheus text format (version 0.0.4).
 *
 * Names follow vLLM's where the meaning is the same, with the `quill:` prefix, so dashboards and
 * autoscalers written for vLLM work: gauges quill:num_requests_running, quill:num_requests_waiting,
 * quill:kv_cache_usage_perc (a fraction in [0, 1], as vLLM's), counters quill:prompt_tokens_total,
 * quill:generation_tokens_total, quill:num_preemptions_total, quill:prefix_cache_queries_total,
 * quill:prefix_cache_hits_total (tokens), quill:request_success_total{finished_reason}, and the
 * histograms quill:time_to_first_token_seconds, quill:inter_token_latency_seconds,
 * quill:e2e_request_latency_seconds, quill:request_queue_time_seconds,
 * quill:request_prompt_tokens, quill:request_generation_tokens (vLLM's buckets), the speculative
 * decoding counters quill:spec_decode_num_drafts_total, _num_draft_tokens_total,
 * _num_accepted_tokens_total (vLLM's) with two gauges derived from them (acceptance rate, mean
 * accepted length per verify). Every sample
 * carries model_name="<served model>". quill's own (quill:http_*, quill:kv_cache_blocks_*,
 * quill:engine_*) have no vLLM counterpart.
 *
 * The engine's numbers come from one ql_engine_get_counters snapshot; the histograms are
 * observed on the loop thread (api.c) and need no lock.
 */
#define QL_LOG_MODULE "metrics"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "server/server-internal.h"

/* vLLM's buckets (vllm/v1/metrics/loggers.py). */
static const double k_ttft[] = {0.001, 0.005, 0.01, 0.02,  0.04,  0.06,  0.08, 0.1,
                                0.25,  0.5,   0.75, 1.0,   2.5,   5.0,   7.5,  10.0,
                                20.0,  40.0,  80.0, 160.0, 640.0, 2560.0};
static const double k_itl[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,  0.3,  0.4, 0.5,
                               0.75, 1.0,   2.5,  5.0,   7.5, 10.0, 20.0, 40.0, 80.0};
static const double k_e2e[] = {0.3,  0.5,   0.8,   1.0,   1.5,   2.0,    2.5,
                               5.0,  10.0,  15.0,  20.0,  30.0,  40.0,   50.0,
                               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
static const double k_tokens[] = {1,   2,    5,    10,   20,    50,    100,   200,
                                  500, 1000, 2000, 5000, 10000, 20000, 50000, 100000};

static void hist_init(ql_hist_t *h, const double *b, int n) {
    memset(h, 0, sizeof *h);
    QL_ASSERT(n <= QL_HIST_MAX_BUCKETS);
    h->bounds = b;
    h->n = n;
}

void ql__metrics_init(ql_metrics_t *m) {
    memset(m, 0, sizeof *m);
    hist_init(&m->ttft, k_ttft, (int)QL_ARRAY_LEN(k_ttft));
    hist_init(&m->itl, k_itl, (int)QL_ARRAY_LEN(k_itl));
    hist_init(&m->e2e, k_e2e, (int)QL_ARRAY_LEN(k_e2e));
    hist_init(&m->queue, k_e2e, (int)QL_ARRAY_LEN(k_e2e));
    hist_init(&m->prompt_len, k_tokens, (int)QL_ARRAY_LEN(k_tokens));
    hist_init(&m->gen_len, k_tokens, (int)QL_ARRAY_LEN(k_tokens));
}

void ql__hist_observe(ql_hist_t *h, double v) {
    if (!isfinite(v) || v < 0) v = 0;
    int i = 0;
    while (i < h->n && v > h->bounds[i]) i++;
    h->counts[i]++;
    h->sum += v;
    h->count++;
}

typedef struct w_s {
    ql_proto_buf_t *out;
    const char *model;
    int rc;
} w_t;

static void put(w_t *w, const char *fmt, ...) QL_PRINTF(2, 3);
static void put(w_t *w, const char *fmt, ...) {
    if (w->rc) return;
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) {
        w->rc = QL_EINVAL;
        return;
    }
    w->rc = ql_proto_buf_append(w->out, tmp, (size_t)n);
}

static void head(w_t *w, const char *name, const char *type, const char *help) {
    put(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void gauge(w_t *w, const char *name, const char *help, double v) {
    head(w, name, "gauge", help);
    put(w, "%s{model_name=\"%s\"} %.17g\n", name, w->model, v);
}

/* Counters are exposed as <name>_total, as prometheus_client (and so vLLM) does. */
static void counter(w_t *w, const char *name, const char *help, uint64_t v) {
    head(w, name, "counter", help);
    put(w, "%s_total{model_name=\"%s\"} %llu\n", name, w->model, (unsigned long long)v);
}

static void hist(w_t *w, const char *name, const char *help, const ql_hist_t *h) {
    head(w, name, "histogram", help);
    uint64_t cum = 0;
    for (int i = 0; i < h->n; i++) {
        cum += h->counts[i];
        put(w, "%s_bucket{le=\"%g\",model_name=\"%s\"} %llu\n", name, h->bounds[i], w->model,
            (unsigned long long)cum);
    }
    cum += h->counts[h->n];
    put(w, "%s_bucket{le=\"+Inf\",model_name=\"%s\"} %llu\n", name, w->model,
        (unsigned long long)cum);
    put(w, "%s_count{model_name=\"%s\"} %llu\n", name, w->model, (unsigned long long)h->count);
    put(w, "%s_sum{model_name=\"%s\"} %.9g\n", name, w->model, h->sum);
}

int ql__metrics_write(ql_srv_t *s, ql_proto_buf_t *out) {
    /* NOTE(label-escape): the served model name goes into a label value: it is written with
     * backslash, quote and newline escaped, as the text format requires */
    char model[256];
    size_t o = 0;
    for (const char *p = s->served_model ? s->served_model : ""; *p && o + 3 < sizeof model; p++) {
        if (*p == '\\' || *p == '"')
            model[o++] = '\\', model[o++] = *p;
        else if (*p == '\n')
            model[o++] = '\\', model[o++] = 'n';
        else
            model[o++] = *p;
    }
    model[o] = '\0';
    w_t w = {out, model, 0};
    ql_engine_counters_t k;
    memset(&k, 0, sizeof k);
    if (s->engine) ql_engine_get_counters(s->engine, &k);
    const ql_metrics_t *m = &s->metrics;

    gauge(&w, "quill:num_requests_running", "Sequences in the running batch.", k.n_running);
    gauge(&w, "quill:num_requests_waiting", "Sequences waiting to be scheduled.", k.n_waiting);
    gauge(&w, "quill:kv_cache_usage_perc",
          "KV-cache usage: 1 means 100 percent (blocks held by sequences).",
          k.kv_blocks_total ? (double)k.kv_blocks_used / k.kv_blocks_total : 0.0);
    gauge(&w, "quill:kv_cache_blocks_total", "KV-cache blocks in the pool.", k.kv_blocks_total);
    gauge(&w, "quill:kv_cache_blocks_used", "KV-cache blocks held by sequences.", k.kv_blocks_used);
    gauge(&w, "quill:kv_cache_blocks_cached", "Free KV-cache blocks kept for prefix-cache hits.",
          k.kv_blocks_cached);
    counter(&w, "quill:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
            k.prefix_queries_tokens);
    counter(&w, "quill:prefix_cache_hits", "Prompt tokens served by the prefix cache.",
            k.prefix_hits_tokens);
    counter(&w, "quill:num_preemptions", "Preemptions (a sequence's KV freed for recompute).",
            k.n_preemptions);
    counter(&w, "quill:prompt_tokens", "Prompt tokens processed.", k.n_prompt_tokens);
    counter(&w, "quill:generation_tokens", "Tokens generated.", k.n_generation_tokens);
    counter(&w, "quill:engine_steps", "Engine steps (forward passes).", k.n_steps);
    /* speculative decoding: vLLM's spec_decode_* counters, and the two ratios they give */
    counter(&w, "quill:spec_decode_num_drafts",
            "Speculative verifies (a sequence's drafts in a step).", k.spec_num_drafts);
    counter(&w, "quill:spec_decode_num_draft_tokens", "Speculative tokens drafted and verified.",
            k.spec_draft_tokens);
    counter(&w, "quill:spec_decode_num_accepted_tokens", "Drafted tokens accepted.",
            k.spec_accepted_tokens);
    gauge(&w, "quill:spec_decode_acceptance_rate",
          "Accepted / drafted tokens since start (0 before any draft).",
          k.spec_draft_tokens ? (double)k.spec_accepted_tokens / (double)k.spec_draft_tokens : 0.0);
    gauge(&w, "quill:spec_decode_mean_accepted_length",
          "Tokens emitted per verify since start: 1 + accepted / verifies (0 before any).",
          k.spec_num_drafts ? 1.0 + (double)k.spec_accepted_tokens / (double)k.spec_num_drafts
                            : 0.0);

    head(&w, "quill:request_success", "counter", "Choices that finished, by finish reason.");
    put(&w, "quill:request_success_total{finished_reason=\"stop\",model_name=\"%s\"} %llu\n", model,
        (unsigned long long)m->success_stop);
    put(&w, "quill:request_success_total{finished_reason=\"length\",model_name=\"%s\"} %llu\n",
        model, (unsigned long long)m->success_length);
    counter(&w, "quill:request_failure", "Requests that ended with a server-side error.",
            m->failed);
    counter(&w, "quill:request_cancelled", "Requests whose client went away.", m->cancelled);

    hist(&w, "quill:time_to_first_token_seconds", "Time from arrival to the first token.",
         &m->ttft);
    hist(&w, "quill:inter_token_latency_seconds", "Time between consecutive tokens of a choice.",
         &m->itl);
    hist(&w, "quill:e2e_request_latency_seconds", "Time from arrival to the end of the request.",
         &m->e2e);
    hist(&w, "quill:request_queue_time_seconds", "Time from submission to the first step.",
         &m->queue);
    hist(&w, "quill:request_prompt_tokens", "Prompt tokens per request.", &m->prompt_len);
    hist(&w, "quill:request_generation_tokens", "Generated tokens per request.", &m->gen_len);

    gauge(&w, "quill:http_connections", "Open client connections.", s->n_conns);
    counter(&w, "quill:http_connections_accepted", "Client connections accepted.", m->conns_total);
    counter(&w, "quill:http_connections_refused", "Connections refused over --max-connections.",
            m->conns_refused);
    counter(&w, "quill:http_cutoffs", "Connections cut off for not reading (--max-output-bytes).",
            m->cutoffs);
    counter(&w, "quill:http_timeouts", "Connections or requests ended by a timeout.", m->timeouts);
    head(&w, "quill:http_responses", "counter", "HTTP responses by status class.");
    for (int c = 1; c <= 5; c++)
        put(&w, "quill:http_responses_total{code=\"%dxx\",model_name=\"%s\"} %llu\n", c, model,
            (unsigned long long)m->http_by_class[c]);
    gauge(&w, "quill:engine_healthy", "1 while the backend has not failed.",
          s->engine ? k.healthy : 0);
    gauge(&w, "quill:ready", "1 when /ready answers 200.", s->state == QL_SRV_READY && k.healthy);
    return w.rc;
}
