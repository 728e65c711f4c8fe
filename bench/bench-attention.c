/*
 * bench/bench-attention.c — the CPU attention kernel alone (ql__cpu_attn_tile, one thread),
 * on SmolLM2-135M's shape by default: 9 query heads over 3 KV heads of 64, f16 K/V in
 * 16-token pages scattered over a pool of --layers layers, so that, as in a forward pass,
 * the pages come from memory rather than from cache.
 *
 *   bench-attention [--isa portable|avx2|avxvnni|avx512vnni] [--seqs 32] [--ctx 256]
 *                   [--layers 30] [--heads 9] [--kv-heads 3] [--head-dim 64]
 *                   [--block-size 16] [--prefill 128] [--reps 5]
 *
 * decode:  --seqs sequences of --ctx positions, one query token each (what a decode step
 *          does per layer), every (sequence, KV head) of every layer once per rep
 * prefill: one prompt of --prefill tokens in tiles of QL__CPU_ATTN_TILE, causal, per layer
 * Figures: ns per (query token · context position · KV head), and for decode the rate at
 * which K and V bytes are read (GB/s). Best and median of --reps. A benchmark, not a test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>

#include "core/core.h"
#include "cpu/cpu-internal.h"

typedef struct opts_s {
    int isa, seqs, ctx, layers, heads, kv_heads, head_dim, block_size, prefill, reps;
} opts_t;

static uint64_t rng_next(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int parse(int argc, char **argv, opts_t *o) {
    *o = (opts_t){.isa = ql_cpu_isa_default(),
                  .seqs = 32,
                  .ctx = 256,
                  .layers = 30,
                  .heads = 9,
                  .kv_heads = 3,
                  .head_dim = 64,
                  .block_size = 16,
                  .prefill = 128,
                  .reps = 5};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return 1;
        if (!v) return -1;
        i++;
        int *dst = !strcmp(a, "--seqs")         ? &o->seqs
                   : !strcmp(a, "--ctx")        ? &o->ctx
                   : !strcmp(a, "--layers")     ? &o->layers
                   : !strcmp(a, "--heads")      ? &o->heads
                   : !strcmp(a, "--kv-heads")   ? &o->kv_heads
                   : !strcmp(a, "--head-dim")   ? &o->head_dim
                   : !strcmp(a, "--block-size") ? &o->block_size
                   : !strcmp(a, "--prefill")    ? &o->prefill
                   : !strcmp(a, "--reps")       ? &o->reps
                                                : NULL;
        if (!strcmp(a, "--isa")) {
            o->isa = -1;
            for (int k = 0; k < QL_CPU_ISA_COUNT; k++)
                if (!strcasecmp(v, ql_cpu_isa_name((ql_cpu_isa_t)k))) o->isa = k;
            if (o->isa < 0 || !ql_cpu_isa_supported((ql_cpu_isa_t)o->isa)) {
                fprintf(stderr, "bench-attention: --isa %s: not known or not supported here\n",
                        v);
                return -1;
            }
            continue;
        }
        if (!dst) return -1;
        char *end;
        const long x = strtol(v, &end, 10);
        if (*end || x < 0 || x > (1 << 20)) return -1;
        *dst = (int)x;
    }
    if (o->seqs < 1 || o->ctx < 1 || o->layers < 1 || o->kv_heads < 1 || o->heads < 1 ||
        o->heads % o->kv_heads || o->heads / o->kv_heads > QL__CPU_ATTN_GROUP_MAX ||
        o->head_dim < 1 || o->block_size < 1 || o->reps < 1)
        return -1;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    opts_t o;
    const int pr = parse(argc, argv, &o);
    if (pr) {
        fprintf(pr > 0 ? stdout : stderr,
                "usage: bench-attention [--isa ISA] [--seqs N] [--ctx N] [--layers N] [--heads N]\n"
                "                       [--kv-heads N] [--head-dim N] [--block-size N]\n"
                "                       [--prefill N] [--reps N]\n");
        return pr > 0 ? 0 : 2;
    }
    const ql_cpu_isa_t isa = (ql_cpu_isa_t)o.isa;
    const int group = o.heads / o.kv_heads, hd = o.head_dim, bs = o.block_size;
    const int ctx_max = QL_MAX(o.ctx, o.prefill);
    const int per_seq = (ctx_max + bs - 1) / bs;
    ql_kv_layout_t kv = {.n_layer = 1,
                         .n_kv_head = o.kv_heads,
                         .head_dim = hd,
                         .block_size = bs,
                         .n_blocks = o.seqs * per_seq};
    const int64_t elems = ql_kv_layer_elems(&kv);
    const size_t pool_bytes = (size_t)elems * 2 * sizeof(uint16_t) * (size_t)o.layers;
    uint16_t *pool = NULL;
    if (posix_memalign((void **)&pool, (size_t)2 << 20, pool_bytes)) pool = NULL;
    if (pool && getenv("THP")) madvise(pool, pool_bytes, MADV_HUGEPAGE);
    int32_t *tables = malloc(sizeof(int32_t) * (size_t)kv.n_blocks);
    const size_t n_q = (size_t)QL_MAX(o.seqs, QL__CPU_ATTN_TILE) * (size_t)o.heads * hd;
    float *q = malloc(sizeof(float) * n_q), *out = malloc(sizeof(float) * n_q);
    const int64_t stride = ctx_max;
    float *scratch = malloc(sizeof(float) * QL__CPU_ATTN_TILE * group * (size_t)stride);
    if (!pool || !tables || !q || !out || !scratch) {
        fprintf(stderr, "bench-attention: out of memory (%zu bytes of KV)\n", pool_bytes);
        return 1;
    }
    uint64_t rng = 1;
    for (size_t i = 0; i < pool_bytes / 2; i++)
        pool[i] = ql__cpu_fp32_to_fp16((float)((double)(rng_next(&rng) >> 11) * 0x1.0p-53) - 0.5f);
    for (size_t i = 0; i < n_q; i++) q[i] = (float)((double)(rng_next(&rng) >> 11) * 0x1.0p-53);
    /* scattered pages: a random permutation of the pool */
    for (int i = 0; i < kv.n_blocks; i++) tables[i] = i;
    for (int i = kv.n_blocks - 1; i > 0; i--) {
        const int j = (int)(rng_next(&rng) % (uint64_t)(i + 1)), t = tables[i];
        tables[i] = tables[j];
        tables[j] = t;
    }
    const float scale = 1.0f / sqrtf((float)hd);
    printf("kernels: %s, %d heads / %d KV heads of %d, block %d, KV pool %.1f MiB over %d "
           "layers, 1 thread\n",
           ql_cpu_isa_name(isa), o.heads, o.kv_heads, hd, bs, (double)pool_bytes / 1048576.0,
           o.layers);

    double *t = malloc(sizeof(double) * (size_t)o.reps);
    /* decode */
    for (int rep = -1; rep < o.reps; rep++) {
        const uint64_t t0 = ql_time_ns();
        for (int l = 0; l < o.layers; l++) {
            const uint16_t *kp = pool + (size_t)l * 2 * (size_t)elems, *vp = kp + elems;
            for (int s = 0; s < o.seqs; s++)
                for (int h = 0; h < o.kv_heads; h++) {
                    const int64_t off = ((int64_t)s * o.heads + (int64_t)h * group) * hd;
                    const float *qs = q + off;
                    float *os = out + off;
                    const int32_t np = o.ctx;
                    ql__cpu_attn_tile(isa, &kv, kp, vp, h, tables + (size_t)s * per_seq, 1, &np,
                                      &qs, &os, group, scale, scratch, stride);
                }
        }
        if (rep >= 0) t[rep] = (double)(ql_time_ns() - t0);
    }
    qsort(t, (size_t)o.reps, sizeof(double), cmp_double);
    const double units = (double)o.layers * o.seqs * o.kv_heads * o.ctx;
    const double bytes = units * 2.0 * hd * sizeof(uint16_t);
    printf("decode  %3d seqs x %5d positions: %7.2f ns per position and KV head (median "
           "%7.2f), K+V read at %5.1f GB/s (median %5.1f)\n",
           o.seqs, o.ctx, t[0] / units, t[o.reps / 2] / units, bytes / t[0],
           bytes / t[o.reps / 2]);

    /* prefill: one prompt, tiles of QL__CPU_ATTN_TILE tokens */
    if (o.prefill > 0) {
        for (int rep = -1; rep < o.reps; rep++) {
            const uint64_t t0 = ql_time_ns();
            for (int l = 0; l < o.layers; l++) {
                const uint16_t *kp = pool + (size_t)l * 2 * (size_t)elems, *vp = kp + elems;
                for (int p0 = 0; p0 < o.prefill; p0 += QL__CPU_ATTN_TILE) {
                    const int nq = QL_MIN(QL__CPU_ATTN_TILE, o.prefill - p0);
                    for (int h = 0; h < o.kv_heads; h++) {
                        const float *qs[QL__CPU_ATTN_TILE];
                        float *os[QL__CPU_ATTN_TILE];
                        int32_t np[QL__CPU_ATTN_TILE];
                        for (int u = 0; u < nq; u++) {
                            const int64_t off = ((int64_t)u * o.heads + (int64_t)h * group) * hd;
                            qs[u] = q + off;
                            os[u] = out + off;
                            np[u] = p0 + u + 1;
                        }
                        ql__cpu_attn_tile(isa, &kv, kp, vp, h, tables, nq, np, qs, os, group,
                                          scale, scratch, stride);
                    }
                }
            }
            if (rep >= 0) t[rep] = (double)(ql_time_ns() - t0);
        }
        qsort(t, (size_t)o.reps, sizeof(double), cmp_double);
        const double pu = (double)o.layers * o.kv_heads * o.prefill * (o.prefill + 1) / 2.0;
        printf("prefill %5d tokens, causal:    %7.2f ns per position and KV head (median %7.2f)\n",
               o.prefill, t[0] / pu, t[o.reps / 2] / pu);
    }
    free(t);
    free(pool);
    free(tables);
    free(q);
    free(out);
    free(scratch);
    return 0;
}
