/*
 * bench/bench-gpu.c — forward-pass throughput of the CUDA backend, the figures of
 * docs/BENCHMARKS.md's GPU section (scripts/gpu-check.sh runs it on `quill mkmodel` shapes):
 *
 *   prefill     one sequence of --pp tokens in one step (logits for the last), tokens/s
 *   decode @ B  B sequences decoding --tg tokens each from position 0, one token per
 *               sequence per step, the next token sampled greedily on the device
 *               (forward_sample; the logits never leave the device), total tokens/s
 *   bound       the batch-1 decode bound of the device's memory bandwidth: a decode step
 *               reads every weight once (the untied embedding table only for its B rows,
 *               so it is left out), bandwidth / those bytes tokens/s
 *
 *   bench-gpu --model M [--pp 512] [--tg 128] [--batch 1,8,64,256] [--reps 3]
 *             [--block-size 16] [--json FILE]
 *
 * Each figure is the mean ± sample standard deviation over --reps runs after one warm-up
 * (the warm-up also captures the CUDA graphs; QL_CUDA_GRAPHS=0 runs eagerly). Exit status
 * 0, 1 on an error, 2 on bad flags, 77 when there is no CUDA device (or CUDA is not
 * compiled in): nothing to measure.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "core/core.h"
#include "cuda/cuda.h"
#include "model/gguf.h"
#include "model/hparams.h"

#define MAX_BATCHES 16

typedef struct opts_s {
    const char *model, *json;
    int pp, tg, reps, block_size;
    int batches[MAX_BATCHES];
    int n_batches;
} opts_t;

static void usage(FILE *f) {
    fprintf(f, "usage: bench-gpu --model M [--pp N] [--tg N] [--batch B1,B2,...] [--reps N]\n"
               "                 [--block-size N] [--json FILE]\n");
}

static int parse(int argc, char **argv, opts_t *o) {
    memset(o, 0, sizeof(*o));
    o->pp = 512;
    o->tg = 128;
    o->reps = 3;
    o->block_size = 16;
    const int dflt[] = {1, 8, 64, 256};
    for (int i = 0; i < 4; i++) o->batches[i] = dflt[i];
    o->n_batches = 4;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!v) return -1;
        i++;
        char *end = NULL;
        if (!strcmp(a, "--model") || !strcmp(a, "-m")) {
            o->model = v;
            continue;
        }
        if (!strcmp(a, "--json")) {
            o->json = v;
            continue;
        }
        if (!strcmp(a, "--batch")) {
            o->n_batches = 0;
            for (const char *s = v; *s;) {
                if (o->n_batches == MAX_BATCHES) return -1;
                long b = strtol(s, &end, 10);
                if (end == s || b < 1 || b > 4096) return -1;
                o->batches[o->n_batches++] = (int)b;
                s = end;
                if (*s == ',')
                    s++;
                else if (*s)
                    return -1;
            }
            continue;
        }
        long n = strtol(v, &end, 10);
        if (end == v || *end || n < 0 || n > 1000000) return -1;
        if (!strcmp(a, "--pp"))
            o->pp = (int)n;
        else if (!strcmp(a, "--tg"))
            o->tg = (int)n;
        else if (!strcmp(a, "--reps"))
            o->reps = (int)n;
        else if (!strcmp(a, "--block-size"))
            o->block_size = (int)n;
        else
            return -1;
    }
    if (!o->model || o->reps < 1 || o->block_size < 1 || o->n_batches < 1) return -1;
    return 0;
}

typedef struct run_s {
    ql_backend_t *be;
    int n_vocab, bs;
    int32_t *tokens, *pos, *seq_of, *rows, *n_blocks, *seq_len, *tables_mem, *sampled;
    const int32_t **tables;
    float *logits, *temps;
    uint64_t *seeds;
    uint64_t rng;
    int use_sample; /* forward_sample works here */
} run_t;

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Sequence s owns blocks [s·per_seq, (s+1)·per_seq). */
static void set_tables(run_t *r, int n_seqs, int per_seq) {
    for (int s = 0; s < n_seqs; s++) {
        for (int i = 0; i < per_seq; i++) r->tables_mem[s * per_seq + i] = s * per_seq + i;
        r->tables[s] = r->tables_mem + s * per_seq;
        r->n_blocks[s] = per_seq;
    }
}

static ql_batch_t batch(run_t *r, int n_tokens, int n_seqs, int n_logits) {
    ql_batch_t b = {.n_tokens = n_tokens,
                    .tokens = r->tokens,
                    .pos = r->pos,
                    .seq_of_token = r->seq_of,
                    .n_seqs = n_seqs,
                    .block_tables = r->tables,
                    .n_blocks = r->n_blocks,
                    .seq_len = r->seq_len,
                    .logits_rows = r->rows,
                    .n_logits = n_logits};
    return b;
}

/* One prefill of n tokens; seconds, or -1 on an error. */
static double run_pp(run_t *r, int n) {
    set_tables(r, 1, (n + r->bs - 1) / r->bs);
    for (int t = 0; t < n; t++) {
        r->tokens[t] = (int32_t)(rng_next(&r->rng) % (uint64_t)r->n_vocab);
        r->pos[t] = t;
        r->seq_of[t] = 0;
    }
    r->seq_len[0] = n;
    r->rows[0] = n - 1;
    ql_batch_t b = batch(r, n, 1, 1);
    const uint64_t t0 = ql_time_ns();
    int rc = ql_backend_forward(r->be, &b, r->logits);
    const uint64_t t1 = ql_time_ns();
    if (rc) {
        fprintf(stderr, "bench-gpu: prefill failed: %s\n", ql_strerror(rc));
        return -1;
    }
    return (double)(t1 - t0) * 1e-9;
}

/* B sequences decoding n tokens each; seconds, or -1 on an error. */
static double run_tg(run_t *r, int B, int n) {
    set_tables(r, B, (n + r->bs - 1) / r->bs);
    for (int s = 0; s < B; s++) r->sampled[s] = (int32_t)(rng_next(&r->rng) % (uint64_t)r->n_vocab);
    uint64_t total = 0;
    for (int p = 0; p < n; p++) {
        for (int s = 0; s < B; s++) {
            r->tokens[s] = r->sampled[s];
            r->pos[s] = p;
            r->seq_of[s] = s;
            r->seq_len[s] = p + 1;
            r->rows[s] = s;
            r->temps[s] = 0.0f;
            r->seeds[s] = (uint64_t)s;
        }
        ql_batch_t b = batch(r, B, B, B);
        int rc;
        const uint64_t t0 = ql_time_ns();
        if (r->use_sample) {
            ql_backend_sampling_t sp = {.temperature = r->temps, .seed = r->seeds};
            rc = ql_backend_forward_sample(r->be, &b, &sp, r->sampled);
        } else {
            rc = ql_backend_forward(r->be, &b, r->logits);
        }
        total += ql_time_ns() - t0;
        if (rc) {
            fprintf(stderr, "bench-gpu: decode step failed: %s\n", ql_strerror(rc));
            return -1;
        }
        if (!r->use_sample)
            for (int s = 0; s < B; s++) r->sampled[s] = (int32_t)((r->sampled[s] + 1) % r->n_vocab);
    }
    return (double)total * 1e-9;
}

static void stats(double tokens, const double *sec, int reps, double *mean, double *sd) {
    double m = 0.0, v = 0.0;
    for (int i = 0; i < reps; i++) m += tokens / sec[i];
    m /= reps;
    for (int i = 0; i < reps; i++) v += (tokens / sec[i] - m) * (tokens / sec[i] - m);
    *mean = m;
    *sd = reps > 1 ? sqrt(v / (reps - 1)) : 0.0;
}

int main(int argc, char **argv) {
    opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    if (!ql_cuda_compiled() || ql_cuda_device_count() == 0) {
        printf("bench-gpu: %s: nothing to measure\n",
               ql_cuda_compiled() ? "no CUDA device present" : "CUDA is not compiled in");
        return 77;
    }
    ql_cuda_device_info_t di;
    if (ql_cuda_device_info(0, &di) != 0) {
        fprintf(stderr, "bench-gpu: cannot read device 0\n");
        return 1;
    }
    char err[512];
    ql_gguf_t *g = NULL;
    int rc = ql_gguf_open(o.model, &g, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "bench-gpu: %s\n", err);
        return 1;
    }
    /* tied or not: an untied embedding table is not read by a decode step */
    ql_hparams_t hp;
    ql_weights_t wt;
    memset(&wt, 0, sizeof(wt));
    if (ql_hparams_read(g, &hp, err, sizeof(err)) ||
        ql_weights_init(g, &hp, &wt, err, sizeof(err))) {
        fprintf(stderr, "bench-gpu: %s\n", err);
        return 1;
    }
    const int untied = wt.output != NULL;
    ql_weights_free(&wt);

    int bmax = 1;
    for (int i = 0; i < o.n_batches; i++) bmax = QL_MAX(bmax, o.batches[i]);
    const int n_tok_max = QL_MAX(QL_MAX(o.pp, bmax), 1);
    const int n_ctx = QL_MAX(QL_MAX(o.pp, o.tg), 1);
    const int per_seq = (n_ctx + o.block_size - 1) / o.block_size;
    ql_backend_params_t p = {.block_size = o.block_size,
                             .n_batch_tokens_max = n_tok_max,
                             .n_seqs_max = bmax,
                             .n_logits_max = bmax,
                             .n_ctx_max = n_ctx,
                             .gpu_memory_utilization = 0.9};
    ql_backend_t *be = NULL;
    const uint64_t l0 = ql_time_ns();
    rc = ql_cuda_backend_init(g, &p, &be, err, sizeof(err));
    const double load_s = (double)(ql_time_ns() - l0) * 1e-9;
    if (rc) {
        fprintf(stderr, "bench-gpu: %s\n", err);
        return 1;
    }
    const ql_backend_info_t *info = ql_backend_info(be);
    if (info->kv.n_blocks < bmax * per_seq) {
        fprintf(stderr, "bench-gpu: KV pool of %d blocks, need %d\n", (int)info->kv.n_blocks,
                bmax * per_seq);
        return 1;
    }
    const double embd_bytes = (double)hp.n_vocab * hp.n_embd * 2.0;
    const double step_bytes = (double)info->weight_bytes - (untied ? embd_bytes : 0.0);
    const double bound = di.mem_bandwidth_bytes_s > 0 ? di.mem_bandwidth_bytes_s / step_bytes : 0;
    const char *slash = strrchr(o.model, '/');
    const char *mname = slash ? slash + 1 : o.model;
    const char *gv = getenv("QL_CUDA_GRAPHS");
    const int graphs = !(gv && !strcmp(gv, "0"));
    printf("device: %s, sm_%d%d, %d SMs, %.1f GiB, peak bandwidth %.0f GB/s\n", di.name,
           di.sm_major, di.sm_minor, di.n_sm, (double)di.mem_total_bytes / 1073741824.0,
           di.mem_bandwidth_bytes_s * 1e-9);
    printf("model: %s, weights %.2f GiB as f16 (a decode step reads %.2f GiB), load %.1f s, "
           "graphs %s\n",
           mname, (double)info->weight_bytes / 1073741824.0, step_bytes / 1073741824.0, load_s,
           graphs ? "on" : "off");
    printf("batch-1 decode bound: %.1f tok/s\n", bound);
    printf("| test     | batch |        tok/s (total) | vs bound |\n"
           "|----------|-------|----------------------|----------|\n");
    fflush(stdout);

    run_t r = {.be = be, .n_vocab = info->n_vocab, .bs = o.block_size, .rng = 1, .use_sample = 1};
    r.tokens = calloc((size_t)n_tok_max, sizeof(int32_t));
    r.pos = calloc((size_t)n_tok_max, sizeof(int32_t));
    r.seq_of = calloc((size_t)n_tok_max, sizeof(int32_t));
    r.rows = calloc((size_t)bmax, sizeof(int32_t));
    r.n_blocks = calloc((size_t)bmax, sizeof(int32_t));
    r.seq_len = calloc((size_t)bmax, sizeof(int32_t));
    r.sampled = calloc((size_t)bmax, sizeof(int32_t));
    r.tables_mem = calloc((size_t)bmax * per_seq, sizeof(int32_t));
    r.tables = calloc((size_t)bmax, sizeof(int32_t *));
    r.logits = malloc(sizeof(float) * (size_t)bmax * info->n_vocab);
    r.temps = calloc((size_t)bmax, sizeof(float));
    r.seeds = calloc((size_t)bmax, sizeof(uint64_t));
    double *sec = calloc((size_t)o.reps, sizeof(double));
    if (!r.tokens || !r.pos || !r.seq_of || !r.rows || !r.n_blocks || !r.seq_len || !r.sampled ||
        !r.tables_mem || !r.tables || !r.logits || !r.temps || !r.seeds || !sec) {
        fprintf(stderr, "bench-gpu: out of memory\n");
        return 1;
    }
    /* device sampling, or the logits when it fails (then the logits download is timed) */
    if (run_tg(&r, 1, 1) < 0) {
        r.use_sample = 0;
        fprintf(stderr, "bench-gpu: device sampling failed: decode steps download the logits\n");
        if (run_tg(&r, 1, 1) < 0) return 1;
    }

    FILE *jf = NULL;
    if (o.json && !(jf = fopen(o.json, "w"))) {
        fprintf(stderr, "bench-gpu: cannot write %s\n", o.json);
        return 1;
    }
    if (jf)
        fprintf(jf,
                "{\"model\": \"%s\", \"device\": \"%s\", \"sm\": \"%d.%d\", \"n_sm\": %d, "
                "\"mem_total_bytes\": %llu, \"bandwidth_bytes_s\": %.0f, \"weight_bytes\": %llu, "
                "\"decode_step_bytes\": %.0f, \"bound_decode_b1_tok_s\": %.2f, \"load_s\": %.2f, "
                "\"graphs\": %s, \"decode_mode\": \"%s\", \"reps\": %d",
                mname, di.name, di.sm_major, di.sm_minor, di.n_sm,
                (unsigned long long)di.mem_total_bytes, di.mem_bandwidth_bytes_s,
                (unsigned long long)info->weight_bytes, step_bytes, bound, load_s,
                graphs ? "true" : "false", r.use_sample ? "device-greedy" : "logits", o.reps);
    int failed = 0;
    double mean, sd;
    if (o.pp > 0) {
        if (run_pp(&r, o.pp) < 0) failed = 1; /* warm-up */
        for (int i = 0; i < o.reps && !failed; i++)
            if ((sec[i] = run_pp(&r, o.pp)) < 0) failed = 1;
        if (!failed) {
            stats(o.pp, sec, o.reps, &mean, &sd);
            printf("| pp%-6d | %5d | %11.1f ± %7.1f |          |\n", o.pp, 1, mean, sd);
            if (jf)
                fprintf(jf, ",\n \"prefill\": {\"tokens\": %d, \"tok_s\": %.2f, \"sd\": %.2f}",
                        o.pp, mean, sd);
        }
    }
    double b1 = 0;
    if (jf) fprintf(jf, ",\n \"decode\": [");
    for (int k = 0; k < o.n_batches && o.tg > 0 && !failed; k++) {
        const int B = o.batches[k];
        /* warm-up over every position, so that each graph is captured before the timing */
        if (run_tg(&r, B, o.tg) < 0) failed = 1;
        for (int i = 0; i < o.reps && !failed; i++)
            if ((sec[i] = run_tg(&r, B, o.tg)) < 0) failed = 1;
        if (failed) break;
        stats((double)B * o.tg, sec, o.reps, &mean, &sd);
        if (B == 1) b1 = mean;
        printf("| tg%-6d | %5d | %11.1f ± %7.1f | %7.1f%% |\n", o.tg, B, mean, sd,
               bound > 0 ? 100.0 * mean / bound : 0.0);
        fflush(stdout);
        if (jf)
            fprintf(jf,
                    "%s\n  {\"batch\": %d, \"steps\": %d, \"tok_s\": %.2f, \"sd\": %.2f, "
                    "\"step_ms\": %.3f, \"frac_of_b1_bound\": %.4f, \"over_b1\": %.3f}",
                    k ? "," : "", B, o.tg, mean, sd, 1e3 * B / mean, bound > 0 ? mean / bound : 0.0,
                    b1 > 0 ? mean / b1 : 0.0);
    }
    if (jf) {
        fprintf(jf, "],\n \"ok\": %s}\n", failed ? "false" : "true");
        fclose(jf);
    }
    free(sec);
    free(r.tokens), free(r.pos), free(r.seq_of), free(r.rows), free(r.n_blocks), free(r.seq_len);
    free(r.sampled), free(r.tables_mem), free(r.tables), free(r.logits), free(r.temps);
    free(r.seeds);
    ql_backend_free(be);
    ql_gguf_free(g);
    return failed ? 1 : 0;
}
