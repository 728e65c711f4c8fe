/*
 * bench/bench-cuda-kernels.c — the CUDA kernels of cuda/kernels.h alone, on device 0: paged
 * attention for decode batches (the KV bytes read per second, against the device's peak
 * DRAM bandwidth) and for a prefill chunk (a token per block vs runs of tokens), sampling a
 * batch of rows, and the elementwise kernels. Wall time of many launches on the default
 * stream, synchronised once (launch overhead included, as the backend sees it without
 * graphs). Without a device it says so and exits 77 (skipped, as bench-gpu).
 *
 *   bench-cuda-kernels [iters]      (default 50)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/cuda.h"
#include "cuda/kernels.h"
#include "model/quant.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_f(uint64_t *s) { return (float)((rng_next(s) >> 40) * (1.0 / 16777216.0)) - 0.5f; }

#define CHECK(x)                                                                             \
    do {                                                                                     \
        int rc_ = (x);                                                                       \
        if (rc_ != 0) {                                                                      \
            fprintf(stderr, "bench-cuda-kernels: %s failed: %s\n", #x, ql_strerror(rc_));  \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static void *dev_alloc(size_t bytes) {
    void *d = NULL;
    CHECK(ql_cuda_mem_alloc(&d, bytes ? bytes : 1));
    return d;
}

/* A new device buffer of n f16 values in [-0.5, 0.5): one 16 MiB random piece, made once,
 * uploaded over and over (the values do not change the timings; the host's time does). */
static uint16_t *dev_random_f16(size_t n, uint64_t *rng) {
    static uint16_t *h = NULL;
    const size_t piece = (size_t)8 << 20;
    if (h == NULL) {
        h = malloc(piece * 2);
        if (!h) exit(1);
        for (size_t j = 0; j < piece; j++) h[j] = ql_fp32_to_fp16(rng_f(rng));
    }
    uint16_t *d = dev_alloc(n * 2);
    for (size_t i = 0; i < n; i += piece) {
        const size_t m = n - i < piece ? n - i : piece;
        CHECK(ql_cuda_mem_upload(d + i, h, m * 2));
    }
    return d;
}
static float *dev_random_f32(size_t n, uint64_t *rng) {
    float *h = malloc(n * 4);
    if (!h) exit(1);
    for (size_t i = 0; i < n; i++) h[i] = rng_f(rng);
    float *d = dev_alloc(n * 4);
    CHECK(ql_cuda_mem_upload(d, h, n * 4));
    free(h);
    return d;
}

/* ---- attention ---- */

typedef struct shape_s {
    const char *name;
    int n_head, n_kv, hd;
} shape_t;

/* n_seqs sequences of ctx keys each (block size 16, blocks scattered), q_per_seq query tokens
 * per sequence at its last positions; returns seconds per call. */
static double bench_attn(const shape_t *sh, int n_seqs, int ctx, int q_per_seq, int runs, int iters,
                         int n_sm, double *kv_bytes) {
    uint64_t rng = 1;
    const int bs = 16, nb = (ctx + bs - 1) / bs;
    ql_kv_layout_t kv = {.n_layer = 1, .n_kv_head = sh->n_kv, .head_dim = sh->hd,
                         .block_size = bs, .n_blocks = n_seqs * nb};
    const size_t pool_n = (size_t)ql_kv_layer_elems(&kv);
    uint16_t *k = dev_random_f16(pool_n, &rng), *v = dev_random_f16(pool_n, &rng);
    int32_t *tab = malloc((size_t)n_seqs * nb * 4);
    for (int i = 0; i < n_seqs * nb; i++) tab[i] = (int32_t)((i * 7919LL) % (n_seqs * nb));
    const int64_t n_tok = (int64_t)n_seqs * q_per_seq;
    int32_t *pos = malloc((size_t)n_tok * 4), *seq = malloc((size_t)n_tok * 4);
    for (int s = 0; s < n_seqs; s++)
        for (int i = 0; i < q_per_seq; i++) {
            pos[s * q_per_seq + i] = ctx - q_per_seq + i;
            seq[s * q_per_seq + i] = s;
        }
    int32_t *d_tab = dev_alloc((size_t)n_seqs * nb * 4), *d_pos = dev_alloc((size_t)n_tok * 4);
    int32_t *d_seq = dev_alloc((size_t)n_tok * 4);
    CHECK(ql_cuda_mem_upload(d_tab, tab, (size_t)n_seqs * nb * 4));
    CHECK(ql_cuda_mem_upload(d_pos, pos, (size_t)n_tok * 4));
    CHECK(ql_cuda_mem_upload(d_seq, seq, (size_t)n_tok * 4));
    const int64_t qd = (int64_t)sh->n_head * sh->hd;
    float *q = dev_random_f32((size_t)(n_tok * qd), &rng);
    uint16_t *out = dev_alloc((size_t)(n_tok * qd) * 2);
    ql_cuda_attn_plan_t plan;
    CHECK(ql_cuda_attn_plan_runs(n_tok, sh->n_head, sh->n_kv, ctx - 1, runs ? q_per_seq : 1, n_sm,
                                 &plan));
    const size_t wb = ql_cuda_attn_work_bytes(&plan, n_tok, sh->n_head, sh->hd);
    void *work = wb ? dev_alloc(wb) : NULL;
    ql_cuda_attn_args_t a = {.kv = &kv, .k_pool = k, .v_pool = v, .q = q, .ldq = qd, .out = out,
                             .ldo = qd, .n_tok = n_tok, .n_head = sh->n_head,
                             .scale = 1.0f / sqrtf((float)sh->hd), .pos = d_pos, .seq_of = d_seq,
                             .block_tables = d_tab, .max_blocks = nb, .n_seqs = n_seqs,
                             .max_pos = ctx - 1, .plan = &plan, .work = work, .work_bytes = wb};
    CHECK(ql_cuda_attn_paged(&a, NULL)); /* warm-up */
    CHECK(ql_cuda_stream_sync(NULL));
    const double t0 = now_s();
    for (int i = 0; i < iters; i++) CHECK(ql_cuda_attn_paged(&a, NULL));
    CHECK(ql_cuda_stream_sync(NULL));
    const double dt = (now_s() - t0) / iters;
    /* K and V of every key each sequence's tokens see, read once per sequence at best */
    *kv_bytes = (double)n_seqs * ctx * sh->n_kv * sh->hd * 2.0 * 2.0;
    printf("  %-10s seqs %3d ctx %5d q/seq %4d %-5s splits %3d tok/cta %2d: %9.1f us  %7.1f GB/s\n",
           sh->name, n_seqs, ctx, q_per_seq, runs ? "runs" : "1/cta", plan.n_splits,
           plan.tokens_per_cta, dt * 1e6, *kv_bytes / dt * 1e-9);
    ql_cuda_mem_free(k), ql_cuda_mem_free(v), ql_cuda_mem_free(d_tab), ql_cuda_mem_free(d_pos);
    ql_cuda_mem_free(d_seq), ql_cuda_mem_free(q), ql_cuda_mem_free(out), ql_cuda_mem_free(work);
    free(tab), free(pos), free(seq);
    return dt;
}

/* ---- sampling ---- */

static void bench_sample(int n_rows, int32_t V, float temperature, float top_p, int iters) {
    uint64_t rng = 2;
    float *logits = dev_random_f32((size_t)n_rows * V, &rng);
    ql_cuda_sample_params_t *hp = calloc((size_t)n_rows, sizeof(*hp));
    uint64_t *seeds = malloc((size_t)n_rows * 8);
    for (int r = 0; r < n_rows; r++) {
        hp[r] = (ql_cuda_sample_params_t){.temperature = temperature, .top_p = top_p,
                                          .repetition_penalty = 1.0f};
        seeds[r] = (uint64_t)r;
    }
    ql_cuda_sample_params_t *d_p = dev_alloc((size_t)n_rows * sizeof(*hp));
    uint64_t *d_rng = dev_alloc((size_t)n_rows * 8);
    int32_t *d_tok = dev_alloc((size_t)n_rows * 4);
    CHECK(ql_cuda_mem_upload(d_p, hp, (size_t)n_rows * sizeof(*hp)));
    CHECK(ql_cuda_mem_upload(d_rng, seeds, (size_t)n_rows * 8));
    size_t wb = 0;
    CHECK(ql_cuda_sample_work_bytes(n_rows, V, &wb));
    void *work = dev_alloc(wb);
    ql_cuda_sample_args_t a = {.logits = logits, .n_rows = n_rows, .n_vocab = V, .params = d_p,
                               .rng = d_rng, .work = work, .work_bytes = wb};
    CHECK(ql_cuda_sample_rows(&a, d_tok, NULL));
    CHECK(ql_cuda_stream_sync(NULL));
    const double t0 = now_s();
    for (int i = 0; i < iters; i++) CHECK(ql_cuda_sample_rows(&a, d_tok, NULL));
    CHECK(ql_cuda_stream_sync(NULL));
    const double dt = (now_s() - t0) / iters;
    printf("  sample %2d rows x %d, temperature %.1f top-p %.2f: %8.1f us\n", n_rows, (int)V,
           (double)temperature, (double)top_p, dt * 1e6);
    ql_cuda_mem_free(logits), ql_cuda_mem_free(d_p), ql_cuda_mem_free(d_rng);
    ql_cuda_mem_free(d_tok), ql_cuda_mem_free(work);
    free(hp), free(seeds);
}

/* ---- elementwise ---- */

static void bench_elementwise(int iters) {
    uint64_t rng = 3;
    const int64_t T = 512, E = 4096, F = 14336;
    float *x = dev_random_f32((size_t)(T * E), &rng), *dl = dev_random_f32((size_t)(T * E), &rng);
    float *w = dev_random_f32((size_t)E, &rng), *gu = dev_random_f32((size_t)(T * 2 * F), &rng);
    uint16_t *h16 = dev_alloc((size_t)(T * 2 * F) * 2);
    double t0 = now_s();
    for (int i = 0; i < iters; i++)
        CHECK(ql_cuda_rmsnorm_residual(x, dl, w, h16, NULL, T, E, 1e-5f, NULL));
    CHECK(ql_cuda_stream_sync(NULL));
    double dt = (now_s() - t0) / iters;
    /* x read and written, delta read, out written as f16 */
    printf("  rmsnorm+residual %lld x %lld: %7.1f us  %7.1f GB/s\n", (long long)T, (long long)E,
           dt * 1e6, (double)T * E * (4 + 4 + 4 + 2) / dt * 1e-9);
    t0 = now_s();
    for (int i = 0; i < iters; i++) CHECK(ql_cuda_swiglu(h16, gu, gu + F, 2 * F, T, F, NULL));
    CHECK(ql_cuda_stream_sync(NULL));
    dt = (now_s() - t0) / iters;
    printf("  swiglu %lld x %lld:           %7.1f us  %7.1f GB/s\n", (long long)T, (long long)F,
           dt * 1e6, (double)T * F * (4 + 4 + 2) / dt * 1e-9);
    ql_cuda_mem_free(x), ql_cuda_mem_free(dl), ql_cuda_mem_free(w), ql_cuda_mem_free(gu);
    ql_cuda_mem_free(h16);
}

int main(int argc, char **argv) {
    const int iters = argc > 1 ? atoi(argv[1]) : 50;
    if (iters < 1) {
        fprintf(stderr, "usage: bench-cuda-kernels [iters >= 1]\n");
        return 2;
    }
    if (!ql_cuda_compiled() || ql_cuda_device_count() == 0) {
        printf("bench-cuda-kernels: no CUDA device (or CUDA not compiled in): nothing to "
               "measure\n");
        return 77; /* "skipped", as bench-gpu */
    }
    ql_cuda_device_info_t info;
    CHECK(ql_cuda_device_info(0, &info));
    printf("device 0: %s, %d SMs, peak DRAM %.0f GB/s; %d iterations per figure\n", info.name,
           info.n_sm, info.mem_bandwidth_bytes_s * 1e-9, iters);
    const shape_t shapes[] = {{"smollm2", 9, 3, 64}, {"llama3-8b", 32, 8, 128}};
    printf("decode attention (a query token per sequence; GB/s of the K/V its keys hold):\n");
    for (size_t s = 0; s < 2; s++) {
        const int batches[] = {1, 8, 32, 64}, ctxs[] = {512, 2048, 8192};
        for (int b = 0; b < 4; b++)
            for (int c = 0; c < 3; c++) {
                double bytes;
                bench_attn(&shapes[s], batches[b], ctxs[c], 1, 0, iters, info.n_sm, &bytes);
            }
    }
    printf("prefill attention (one sequence, a chunk of 512 query tokens at its end):\n");
    for (size_t s = 0; s < 2; s++) {
        const int ctxs[] = {512, 2048};
        for (int c = 0; c < 2; c++)
            for (int runs = 0; runs <= 1; runs++) {
                double bytes;
                bench_attn(&shapes[s], 1, ctxs[c], 512, runs, iters, info.n_sm, &bytes);
            }
    }
    printf("sampling:\n");
    bench_sample(1, 49152, 0.0f, 1.0f, iters);
    bench_sample(64, 49152, 0.0f, 1.0f, iters);
    bench_sample(64, 49152, 0.8f, 0.9f, iters);
    bench_sample(64, 128256, 0.8f, 0.9f, iters);
    printf("elementwise:\n");
    bench_elementwise(iters);
    return 0;
}
