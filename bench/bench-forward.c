/*
 * bench/bench-forward.c — forward-pass throughput of the CPU backend, the figures
 * docs/BENCHMARKS.md sets beside llama.cpp's llama-bench on the same file and threads:
 *
 *   pp<N>       prefill of N tokens of one sequence in one step (logits for the last), t/s
 *   tg<N> @ B   B sequences decoding N tokens each, one token per sequence per step
 *               (positions 0..N-1, like llama-bench's tg), total t/s across the B
 *
 *   bench-forward [--model M] [--threads N] [--pp 512] [--tg 128] [--batch 1,8,32]
 *                 [--reps 3] [--block-size 16]
 *
 * The model defaults to $QL_DEFAULT_MODEL, then ~/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf.
 * Tokens are pseudo-random ids (the forward pass does not care what they say); no sampling.
 * Each figure is the mean ± sample standard deviation over --reps runs after one warm-up.
 * QL_CPU_ISA=portable|avx2|avxvnni|avx512vnni|amx picks a kernel path.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test-model.h"
#include "backend/backend.h"
#include "core/core.h"
#include "cpu/cpu.h"
#include "model/gguf.h"

typedef struct opts_s {
    const char *model;
    int threads, pp, tg, reps, block_size;
    int batches[16];
    int n_batches;
} opts_t;

static void usage(FILE *f) {
    fprintf(f,
            "usage: bench-forward [--model M] [--threads N] [--pp N] [--tg N] [--batch B1,B2,...]\n"
            "                     [--reps N] [--block-size N]\n");
}

static int parse(int argc, char **argv, opts_t *o) {
    memset(o, 0, sizeof(*o));
    o->pp = 512;
    o->tg = 128;
    o->reps = 3;
    o->block_size = 16;
    o->batches[0] = 1, o->batches[1] = 8, o->batches[2] = 32;
    o->n_batches = 3;
    o->model = ql_test_default_model();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        }
        if (!v) return -1;
        i++;
        if (!strcmp(a, "--model") || !strcmp(a, "-m"))
            o->model = v;
        else if (!strcmp(a, "--threads") || !strcmp(a, "-t"))
            o->threads = atoi(v);
        else if (!strcmp(a, "--pp"))
            o->pp = atoi(v);
        else if (!strcmp(a, "--tg"))
            o->tg = atoi(v);
        else if (!strcmp(a, "--reps"))
            o->reps = atoi(v);
        else if (!strcmp(a, "--block-size"))
            o->block_size = atoi(v);
        else if (!strcmp(a, "--batch")) {
            o->n_batches = 0;
            for (char *s = (char *)v; *s && o->n_batches < 16;) {
                o->batches[o->n_batches++] = (int)strtol(s, &s, 10);
                if (*s == ',')
                    s++;
                else if (*s)
                    return -1;
            }
        } else
            return -1;
    }
    if (o->pp < 0 || o->tg < 0 || o->reps < 1 || o->block_size < 1) return -1;
    for (int i = 0; i < o->n_batches; i++)
        if (o->batches[i] < 1 || o->batches[i] > 256) return -1;
    return 0;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

typedef struct run_s {
    ql_backend_t *be;
    int n_vocab, bs;
    int32_t *tokens, *pos, *seq_of, *rows, *n_blocks, *seq_len, *tables_mem;
    const int32_t **tables;
    float *logits;
    uint64_t rng;
} run_t;

/* Sequence s owns blocks [s·per_seq, (s+1)·per_seq). */
static void set_tables(run_t *r, int n_seqs, int per_seq) {
    for (int s = 0; s < n_seqs; s++) {
        for (int i = 0; i < per_seq; i++) r->tables_mem[s * per_seq + i] = s * per_seq + i;
        r->tables[s] = r->tables_mem + s * per_seq;
        r->n_blocks[s] = per_seq;
    }
}

/* One prefill of n tokens; seconds. */
static double run_pp(run_t *r, int n) {
    set_tables(r, 1, (n + r->bs - 1) / r->bs);
    for (int t = 0; t < n; t++) {
        r->tokens[t] = (int32_t)(rng_next(&r->rng) % (uint64_t)r->n_vocab);
        r->pos[t] = t;
        r->seq_of[t] = 0;
    }
    r->seq_len[0] = n;
    r->rows[0] = n - 1;
    ql_batch_t b = {.n_tokens = n,
                    .tokens = r->tokens,
                    .pos = r->pos,
                    .seq_of_token = r->seq_of,
                    .n_seqs = 1,
                    .block_tables = r->tables,
                    .n_blocks = r->n_blocks,
                    .seq_len = r->seq_len,
                    .logits_rows = r->rows,
                    .n_logits = 1};
    const uint64_t t0 = ql_time_ns();
    int rc = ql_backend_forward(r->be, &b, r->logits);
    const uint64_t t1 = ql_time_ns();
    if (rc) {
        fprintf(stderr, "bench-forward: forward failed: %s\n", ql_strerror(rc));
        exit(1);
    }
    return (double)(t1 - t0) * 1e-9;
}

/* B sequences decoding n tokens each; seconds. */
static double run_tg(run_t *r, int B, int n) {
    set_tables(r, B, (n + r->bs - 1) / r->bs);
    uint64_t total = 0;
    for (int p = 0; p < n; p++) {
        for (int s = 0; s < B; s++) {
            r->tokens[s] = (int32_t)(rng_next(&r->rng) % (uint64_t)r->n_vocab);
            r->pos[s] = p;
            r->seq_of[s] = s;
            r->seq_len[s] = p + 1;
            r->rows[s] = s;
        }
        ql_batch_t b = {.n_tokens = B,
                        .tokens = r->tokens,
                        .pos = r->pos,
                        .seq_of_token = r->seq_of,
                        .n_seqs = B,
                        .block_tables = r->tables,
                        .n_blocks = r->n_blocks,
                        .seq_len = r->seq_len,
                        .logits_rows = r->rows,
                        .n_logits = B};
        const uint64_t t0 = ql_time_ns();
        int rc = ql_backend_forward(r->be, &b, r->logits);
        total += ql_time_ns() - t0;
        if (rc) {
            fprintf(stderr, "bench-forward: forward failed: %s\n", ql_strerror(rc));
            exit(1);
        }
    }
    return (double)total * 1e-9;
}

static void report(const char *test, int batch, double tokens, const double *sec, int reps) {
    double mean = 0.0, sd = 0.0;
    for (int i = 0; i < reps; i++) mean += tokens / sec[i];
    mean /= reps;
    for (int i = 0; i < reps; i++) sd += (tokens / sec[i] - mean) * (tokens / sec[i] - mean);
    sd = reps > 1 ? sqrt(sd / (reps - 1)) : 0.0;
    printf("| %-8s | %5d | %10.2f ± %7.2f |\n", test, batch, mean, sd);
    fflush(stdout);
}

int main(int argc, char **argv) {
    opts_t o;
    if (parse(argc, argv, &o) != 0) {
        usage(stderr);
        return 2;
    }
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    char err[512];
    ql_gguf_t *g = NULL;
    int rc = ql_gguf_open(o.model, &g, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "bench-forward: %s\n", err);
        return 1;
    }
    int bmax = 1;
    for (int i = 0; i < o.n_batches; i++) bmax = QL_MAX(bmax, o.batches[i]);
    const int n_tok_max = QL_MAX(QL_MAX(o.pp, bmax), 1);
    const int n_ctx = QL_MAX(QL_MAX(o.pp, o.tg), 1);
    const int per_seq = (n_ctx + o.block_size - 1) / o.block_size;
    ql_backend_params_t p = {.n_threads = o.threads,
                             .block_size = o.block_size,
                             .n_batch_tokens_max = n_tok_max,
                             .n_seqs_max = bmax,
                             .n_logits_max = bmax,
                             .n_ctx_max = n_ctx};
    /* kv_cache_bytes 0: the pool holds n_seqs_max full contexts (pages touched only as used) */
    ql_backend_t *be = NULL;
    rc = ql_cpu_backend_init(g, &p, &be, err, sizeof(err));
    if (rc) {
        fprintf(stderr, "bench-forward: %s\n", err);
        return 1;
    }
    const ql_backend_info_t *info = ql_backend_info(be);
    if (info->kv.n_blocks < bmax * per_seq) {
        fprintf(stderr, "bench-forward: KV pool of %d blocks, need %d\n", (int)info->kv.n_blocks,
                bmax * per_seq);
        return 1;
    }
    char feat[128];
    ql_cpu_features_str(ql_cpu_features(), feat, sizeof(feat));
    const char *isa = getenv("QL_CPU_ISA");
    const char *slash = strrchr(o.model, '/');
    printf("model: %s (%.1f MiB of weights), threads: %d, cpu: %s, kernels: %s%s\n",
           slash ? slash + 1 : o.model, (double)info->weight_bytes / 1048576.0,
           o.threads > 0 ? o.threads : ql_cpu_count(), feat, ql_cpu_isa_name(ql_cpu_isa_default()),
           isa ? " (QL_CPU_ISA)" : "");
    printf(
        "| test     | batch |        t/s (total) |\n|----------|-------|--------------------|\n");
    fflush(stdout);

    run_t r = {.be = be, .n_vocab = info->n_vocab, .bs = o.block_size, .rng = 1};
    r.tokens = calloc((size_t)n_tok_max, sizeof(int32_t));
    r.pos = calloc((size_t)n_tok_max, sizeof(int32_t));
    r.seq_of = calloc((size_t)n_tok_max, sizeof(int32_t));
    r.rows = calloc((size_t)bmax, sizeof(int32_t));
    r.n_blocks = calloc((size_t)bmax, sizeof(int32_t));
    r.seq_len = calloc((size_t)bmax, sizeof(int32_t));
    r.tables_mem = calloc((size_t)bmax * per_seq, sizeof(int32_t));
    r.tables = calloc((size_t)bmax, sizeof(int32_t *));
    r.logits = malloc(sizeof(float) * (size_t)bmax * info->n_vocab);
    double *sec = calloc((size_t)o.reps, sizeof(double));

    if (o.pp > 0) {
        run_pp(&r, o.pp); /* warm-up: pages of the KV pool and buffers */
        for (int i = 0; i < o.reps; i++) sec[i] = run_pp(&r, o.pp);
        char name[32];
        snprintf(name, sizeof(name), "pp%d", o.pp);
        report(name, 1, o.pp, sec, o.reps);
    }
    if (o.tg > 0) {
        for (int k = 0; k < o.n_batches; k++) {
            const int B = o.batches[k];
            run_tg(&r, B, QL_MIN(o.tg, 16)); /* warm-up */
            for (int i = 0; i < o.reps; i++) sec[i] = run_tg(&r, B, o.tg);
            char name[32];
            snprintf(name, sizeof(name), "tg%d", o.tg);
            report(name, B, (double)B * o.tg, sec, o.reps);
        }
    }
    free(sec);
    free(r.tokens), free(r.pos), free(r.seq_of), free(r.rows), free(r.n_blocks), free(r.seq_len);
    free(r.tables_mem), free(r.tables), free(r.logits);
    ql_backend_free(be);
    ql_gguf_free(g);
    return 0;
}
