/*
 * cpu/forward.c — the CPU backend: the Llama-family forward pass (llama, qwen2, qwen3) over a
 * paged KV cache, behind the backend/backend.h ops table.
 *
 * One forward() is one pool run: every thread walks the same sequence of phases, each split
 * into chunks the threads claim (tokens for per-token work, weight panels for matmuls,
 * (query tile, KV head) units for attention); a phase starts once the previous one is done
 * (NOTE(phases)):
 *
 *   embed + RoPE angles | for each layer:
 *     A  x̂ = RMSNorm(x)·g, quantize           (tokens)
 *     B  q, k, v = x̂·Wqᵀ, x̂·Wkᵀ, x̂·Wvᵀ (+bias) (rows)
 *     C  RoPE q, k; k, v → f16 KV pages        (tokens)
 *     D  attention over each sequence's pages  (token × KV head, dynamic)
 *     E  quantize attention output             (tokens)
 *     F  x += o·Woᵀ                            (rows)
 *     G  x̂ = RMSNorm(x)·g, quantize           (tokens)
 *     H  h = silu(x̂·Wgᵀ) ⊙ x̂·Wuᵀ              (rows: a chunk owns the same gate/up rows)
 *     I  quantize h                            (tokens)
 *     J  x += h·Wdᵀ                            (rows)
 *   final RMSNorm of the logits rows, quantize | logits = x̂·Woutᵀ (rows)
 *
 * NOTE(batch-invariance): every value a token produces is computed by the same operations
 * in the same order whatever else is in the batch, however the batch is split across
 * threads (see NOTE(bitwise) in cpu/cpu-internal.h for the matmul): a sequence's logits are
 * bit-identical alone, inside any batch, and prefilled in one piece or in chunks (keys and
 * values are always read back from the f16 pages, also the chunk's own).
 *
 * NOTE(kv-f16): K and V are stored as f16 (round to nearest even), as llama.cpp does by
 * default; attention reads them through the block tables and never touches a slot past the
 * query's position.
 *
 * All buffers are carved at init from one allocation sized by n_batch_tokens_max and
 * n_logits_max; a step allocates nothing.
 */
#define QL_LOG_MODULE "cpu"
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "cpu/cpu-internal.h"
#include "model/hparams.h"

typedef struct layer_s {
    const float *attn_norm, *ffn_norm; /* [n_embd] f32, in the mapping */
    const float *bq, *bk, *bv;         /* [q_dim], [kv_dim], [kv_dim] or NULL */
    const float *qn, *kn;              /* [head_dim] per-head q/k RMSNorm weights (qwen3) or NULL */
    ql_cpu_weight_t wq, wk, wv, wo, wg, wu, wd;
} layer_t;

typedef struct cpu_backend_s {
    ql_backend_t base; /* first: the backend handle points here */
    ql_hparams_t hp;
    ql_weights_t wt;
    ql_cpu_isa_t isa;
    ql_cpu_pool_t *pool;
    layer_t *layers;
    ql_cpu_weight_t out; /* output head (token_embd when tied) */
    const ql_gguf_tensor_t *tok_embd;
    const float *out_norm;
    ql_rope_params_t rope;
    float attn_scale;
    int64_t n_embd, q_dim, kv_dim, n_ff, head_dim, n_group, n_vocab;

    uint16_t *kv; /* [n_layer][2][n_blocks][n_kv_head][block_size][head_dim] f16 */
    int64_t kv_layer_elems;
    uint8_t *block_mark; /* [n_blocks] scratch for copy_blocks */

    /* activations, one allocation; T = n_batch_tokens_max, L = n_logits_max */
    void *arena;
    float *x;       /* [T][n_embd] residual stream */
    float *xn;      /* [T][n_embd] normed input / projection output */
    float *qkv;     /* [T][q_dim + 2 kv_dim] */
    float *att;     /* [T][q_dim] */
    float *ffg;     /* [T][n_ff] gate, then silu(gate)·up */
    float *ffu;     /* [T][n_ff] */
    float *cs;      /* [T][n_rot] RoPE cos/sin */
    float *lx;      /* [L][n_embd] normed logits rows */
    void *qact;     /* quantized activations, the largest matmul input */
    float *scratch; /* [n_threads][ATTN_TILE][n_group][n_ctx_max] attention scores */
    int32_t *tiles; /* [T + 1] attention tiles: first token of each, then n_tokens */
    int32_t n_tiles;

    /* the step in flight */
    const ql_batch_t *b;
    float *logits;
    struct phase_s *ph; /* [n_phases] work counters (NOTE(phases)) */
    int n_phases;
    atomic_int ph_sleepers; /* threads asleep waiting for a phase */
} cpu_backend_t;


/* ---- the step: phases of chunks ---- */

/* NOTE(phases): a step is a fixed sequence of phases; each phase is split into chunks
 * (tokens, weight panels or attention units) that threads claim from a shared counter, and
 * a thread starts a phase's chunks only once every chunk of the previous phase is done.
 * Unlike a barrier, this does not wait for every thread to arrive: a thread the OS has
 * descheduled delays at most the chunk it holds, and the others take its share (on a
 * shared machine a barrier per phase made a 2-thread decode 5x slower). Which thread
 * computes a chunk never changes the bits (NOTE(batch-invariance)). */

typedef struct phase_s {
    _Alignas(64) atomic_int next; /* chunks claimed */
    atomic_int front, back;       /* of those, claimed from the front and from the back */
    atomic_int done;              /* chunks finished */
} phase_t;

typedef struct walker_s {
    cpu_backend_t *be;
    int p;      /* current phase */
    int n;      /* its chunks */
    int prev_n; /* chunks of the previous phase */
    int nth;
    int from_back; /* NOTE(two-ended) */
} walker_t;

#define QL_PHASE_SPINS 2000 /* pause rounds before a waiter sleeps */

static void phase_wait(cpu_backend_t *be, int p, int n) {
    atomic_int *d = &be->ph[p].done;
    int spins = 0, v;
    while ((v = atomic_load_explicit(d, memory_order_acquire)) < n) {
        if (++spins <= QL_PHASE_SPINS) {
            ql__cpu_relax();
            continue;
        }
        atomic_fetch_add(&be->ph_sleepers, 1);
        if (atomic_load(d) == v) ql__cpu_futex_wait((atomic_uint *)(void *)d, (unsigned)v);
        atomic_fetch_sub(&be->ph_sleepers, 1);
    }
}

/* Opens the next phase of n chunks once the previous one is complete. */
static void phase_open(walker_t *w, int n) {
    if (w->p > 0) phase_wait(w->be, w->p - 1, w->prev_n);
    w->n = n;
}
/* The next chunk for this thread, or -1 when the phase has none left.
 * NOTE(two-ended): even threads claim chunks from the front, odd ones from the back, so two
 * threads work on contiguous ranges that meet where they run out instead of alternating
 * chunk by chunk: every chunk boundary between threads is a place where both write the same
 * output rows (a matmul split by panels) or neighbouring ones, and cache lines move between
 * the cores there. Decode at batch 32 on two threads: 1710-1734 t/s claiming from one end,
 * 2040-2046 from both (bench-forward --tg 16 --batch 32, alternated). The claim counter
 * keeps the total at n, so the two ends never overlap, and a thread that falls behind still
 * leaves its share to the others. */
static int phase_next(walker_t *w) {
    phase_t *ph = &w->be->ph[w->p];
    if (atomic_fetch_add_explicit(&ph->next, 1, memory_order_relaxed) >= w->n) return -1;
    if (w->from_back)
        return w->n - 1 - atomic_fetch_add_explicit(&ph->back, 1, memory_order_relaxed);
    return atomic_fetch_add_explicit(&ph->front, 1, memory_order_relaxed);
}
static void phase_chunk_done(walker_t *w) {
    cpu_backend_t *be = w->be;
    if (atomic_fetch_add(&be->ph[w->p].done, 1) + 1 == w->n && atomic_load(&be->ph_sleepers) > 0)
        ql__cpu_futex_wake((atomic_uint *)(void *)&be->ph[w->p].done);
}
static void phase_close(walker_t *w) {
    w->prev_n = w->n;
    w->p++;
}
#define FOR_CHUNKS(w, n, c)                                                                        \
    for (int c = (phase_open((w), (n)), phase_next(w)); c >= 0 || (phase_close(w), 0);             \
         phase_chunk_done(w), c = phase_next(w))

/* Chunks of a row range [0, n) of `unit`-sized pieces: about 4 per thread. */
static int64_t chunk_size(int64_t n, int nth) {
    return QL_MAX((int64_t)1, (n + 4 * nth - 1) / (4 * nth));
}

/* A matmul phase over several weights (same input): chunk c covers panels of one of them. */
typedef struct mm_part_s {
    const ql_cpu_weight_t *w;
    float *y;
    int64_t ldy;
    const float *bias; /* added to the chunk's rows, or NULL */
    float *residual;   /* x += y on the chunk's rows, or NULL */
    int64_t cp;        /* panels per chunk */
    int n_chunks;
} mm_part_t;

static void mm_setup(mm_part_t *m, const ql_cpu_weight_t *w, float *y, int64_t ldy,
                     const float *bias, float *residual, int nth) {
    m->w = w;
    m->y = y;
    m->ldy = ldy;
    m->bias = bias;
    m->residual = residual;
    m->cp = chunk_size(w->_n_panels, nth);
    m->n_chunks = (int)((w->_n_panels + m->cp - 1) / m->cp);
}

/* Rows [r0, r1) of chunk c of m. */
static void mm_rows(const mm_part_t *m, int c, int64_t *r0, int64_t *r1) {
    const int64_t R = m->w->_panel_rows;
    *r0 = (int64_t)c * m->cp * R;
    *r1 = QL_MIN(((int64_t)c + 1) * m->cp * R, m->w->n_out);
}

/* Rows [r0, r1) of m for tokens [t0, t1) of x, then the bias and the residual add there. */
static void mm_block(const mm_part_t *m, const ql_cpu_act_t *x, int64_t r0, int64_t r1, int64_t t0,
                     int64_t t1) {
    ql_cpu_act_t v;
    ql_cpu_act_view(&v, x, t0, t1);
    ql_cpu_matmul_rows(m->w, &v, m->y + t0 * m->ldy, m->ldy, r0, r1);
    if (m->bias)
        for (int64_t t = t0; t < t1; t++)
            for (int64_t r = r0; r < r1; r++) m->y[t * m->ldy + r] += m->bias[r];
    if (m->residual)
        for (int64_t t = t0; t < t1; t++)
            for (int64_t r = r0; r < r1; r++) m->residual[t * m->ldy + r] += m->y[t * m->ldy + r];
}

static void mm_chunk(const mm_part_t *m, const ql_cpu_act_t *x, int c) {
    int64_t r0, r1;
    mm_rows(m, c, &r0, &r1);
    mm_block(m, x, r0, r1, 0, x->n_tok);
}

/* NOTE(token-split): a matmul phase of many tokens splits them among the threads (every row
 * of each weight, for a range of tokens) instead of the weights' panels. Split by panels,
 * two threads write interleaved column ranges of the same output rows, and at 512 tokens
 * the AMX matmul then ran 1.6x slower than one whose threads write whole rows (scratch
 * benchmark of a 576 x 1536 Q4_1 weight on two threads: 1232 against 772 µs; 203 against
 * 180 µs at 128 tokens). Split by tokens, each thread reads all of a weight, which costs
 * nothing while the weights are reused by many tokens, but doubles the weight traffic of a
 * decode step, which streams them from memory: below MM_TOKEN_SPLIT_MIN tokens the panels
 * are split. Token chunks are multiples of 16, the AMX group. Which split runs never
 * changes the bits (NOTE(bitwise)). */
#define MM_TOKEN_SPLIT_MIN 128
#define MM_TOKEN_CHUNK_MIN 64

/* Tokens per chunk of a token-split matmul phase over n tokens, or 0: split the panels. */
static int64_t mm_token_chunk(int64_t n, int nth) {
    if (nth < 2 || n < MM_TOKEN_SPLIT_MIN) return 0;
    const int64_t ct = (chunk_size(n, nth) + 15) / 16 * 16;
    return QL_MAX(ct, (int64_t)MM_TOKEN_CHUNK_MIN);
}

/* A matmul phase of one weight: by tokens when mct > 0 (NOTE(token-split)), else by panels. */
static void mm_phase(walker_t *w, const mm_part_t *m, const ql_cpu_act_t *x, int64_t mct) {
    const int64_t T = x->n_tok;
    if (mct) {
        FOR_CHUNKS(w, (int)((T + mct - 1) / mct), c) {
            const int64_t t0 = (int64_t)c * mct, t1 = QL_MIN(T, t0 + mct);
            mm_block(m, x, 0, m->w->n_out, t0, t1);
        }
    } else {
        FOR_CHUNKS(w, m->n_chunks, c) mm_chunk(m, x, c);
    }
}

static void norm_quantize(cpu_backend_t *be, ql_cpu_act_t *a, float *dst, const float *src,
                          const int32_t *rows, const float *g, int64_t t0, int64_t t1) {
    const int64_t E = be->n_embd;
    for (int64_t t = t0; t < t1; t++)
        ql_cpu_rmsnorm(dst + t * E, src + (rows ? rows[t] : t) * E, g, 1, E, be->hp.rms_eps);
    if (a->qs) ql_cpu_act_quantize(be->isa, a, t0, t1);
}

static void forward_task(void *ctx, int ith, int nth) {
    cpu_backend_t *be = ctx;
    const ql_batch_t *b = be->b;
    const int64_t T = b->n_tokens, E = be->n_embd, QD = be->q_dim, KVD = be->kv_dim, F = be->n_ff;
    const int64_t HD = be->head_dim, NR = be->rope.n_rot, LDQKV = QD + 2 * KVD;
    const int n_head = (int)be->hp.n_head, n_kv = (int)be->hp.n_head_kv;
    const ql_kv_layout_t *kv = &be->base.info.kv;
    const int64_t ct = chunk_size(T, nth); /* tokens per chunk */
    const int n_tok_chunks = (int)((T + ct - 1) / ct);
    walker_t w = {.be = be, .nth = nth, .from_back = ith & 1};
    ql_cpu_act_t a;
#define TOKENS(c) const int64_t t0 = (int64_t)(c)*ct, t1 = QL_MIN(T, t0 + ct)
    const int64_t mct = mm_token_chunk(T, nth); /* NOTE(token-split) */
    const int n_mm_chunks = mct ? (int)((T + mct - 1) / mct) : 0;
#define MM_TOKENS(c) const int64_t t0 = (int64_t)(c)*mct, t1 = QL_MIN(T, t0 + mct)

    /* embeddings and RoPE angles */
    FOR_CHUNKS(&w, n_tok_chunks, c) {
        TOKENS(c);
        const ql_gguf_tensor_t *te = be->tok_embd;
        int rc = ql_cpu_get_rows(be->x + t0 * E, te->data, te->type, te->ne[1], E, b->tokens + t0,
                                 t1 - t0);
        QL_ASSERT(rc == 0); /* ids and type checked before the run */
        for (int64_t t = t0; t < t1; t++) ql_cpu_rope_cache(&be->rope, b->pos[t], be->cs + t * NR);
    }

    /* n_layers < n_layer: a layerskip draft, the first layers then the head (backend.h) */
    const uint32_t n_layer_run = b->n_layers > 0 ? (uint32_t)b->n_layers : be->hp.n_layer;
    for (uint32_t l = 0; l < n_layer_run; l++) {
        const layer_t *L = &be->layers[l];
        uint16_t *kpool = be->kv + (int64_t)l * 2 * be->kv_layer_elems;
        uint16_t *vpool = kpool + be->kv_layer_elems;
        mm_part_t m[3];

        /* A: x̂ = RMSNorm(x)·g, quantized */
        ql_cpu_act_bind(&a, be->qact, T, E, be->xn, E);
        FOR_CHUNKS(&w, n_tok_chunks, c) {
            TOKENS(c);
            norm_quantize(be, &a, be->xn, be->x, NULL, L->attn_norm, t0, t1);
        }
        /* B: q, k, v (+ bias) */
        mm_setup(&m[0], &L->wq, be->qkv, LDQKV, L->bq, NULL, nth);
        mm_setup(&m[1], &L->wk, be->qkv + QD, LDQKV, L->bk, NULL, nth);
        mm_setup(&m[2], &L->wv, be->qkv + QD + KVD, LDQKV, L->bv, NULL, nth);
        if (mct) {
            FOR_CHUNKS(&w, n_mm_chunks, c) {
                MM_TOKENS(c);
                for (int i = 0; i < 3; i++) mm_block(&m[i], &a, 0, m[i].w->n_out, t0, t1);
            }
        } else {
            FOR_CHUNKS(&w, m[0].n_chunks + m[1].n_chunks + m[2].n_chunks, c) {
                int i = 0, cc = c;
                while (cc >= m[i].n_chunks) cc -= m[i++].n_chunks;
                mm_chunk(&m[i], &a, cc);
            }
        }
        /* C: (qwen3: each head of q and k RMSNormed), RoPE, K and V into the pages */
        FOR_CHUNKS(&w, n_tok_chunks, c) {
            TOKENS(c);
            for (int64_t t = t0; t < t1; t++) {
                float *q = be->qkv + t * LDQKV, *k = q + QD, *v = k + KVD;
                if (L->qn) ql_cpu_rmsnorm(q, q, L->qn, n_head, HD, be->hp.rms_eps);
                if (L->kn) ql_cpu_rmsnorm(k, k, L->kn, n_kv, HD, be->hp.rms_eps);
                ql_cpu_rope_apply(&be->rope, be->cs + t * NR, q, n_head, (int)HD);
                ql_cpu_rope_apply(&be->rope, be->cs + t * NR, k, n_kv, (int)HD);
                const int32_t s = b->seq_of_token[t], p = b->pos[t];
                const int32_t blk = b->block_tables[s][p / kv->block_size],
                              slot = p % kv->block_size;
                for (int h = 0; h < n_kv; h++) {
                    const int64_t off = ql_kv_offset(kv, blk, h, slot);
                    ql_cpu_f32_to_f16(be->isa, k + h * HD, kpool + off, HD);
                    ql_cpu_f32_to_f16(be->isa, v + h * HD, vpool + off, HD);
                }
            }
        }
        /* D: attention, units (tile, KV head), the heaviest (latest) tiles at the front */
        {
            const int64_t stride = be->base.info.n_ctx_max;
            float *scratch = be->scratch + (int64_t)ith * QL__CPU_ATTN_TILE * be->n_group * stride;
            const int n_units = be->n_tiles * n_kv;
            FOR_CHUNKS(&w, n_units, u) {
                const int tile = (n_units - 1 - u) / n_kv, h = (n_units - 1 - u) % n_kv;
                const int32_t tt = be->tiles[tile], nq = be->tiles[tile + 1] - tt;
                const float *qs[QL__CPU_ATTN_TILE];
                float *os[QL__CPU_ATTN_TILE];
                int32_t np[QL__CPU_ATTN_TILE];
                const int64_t off = (int64_t)h * be->n_group * HD;
                for (int32_t i = 0; i < nq; i++) {
                    qs[i] = be->qkv + (tt + i) * LDQKV + off;
                    os[i] = be->att + (tt + i) * QD + off;
                    np[i] = b->pos[tt + i] + 1;
                }
                ql__cpu_attn_tile(be->isa, kv, kpool, vpool, h,
                                  b->block_tables[b->seq_of_token[tt]], nq, np, qs, os,
                                  (int)be->n_group, be->attn_scale, scratch, stride);
            }
        }
        /* E: quantize the attention output */
        ql_cpu_act_bind(&a, be->qact, T, QD, be->att, QD);
        FOR_CHUNKS(&w, n_tok_chunks, c) {
            TOKENS(c);
            if (a.qs) ql_cpu_act_quantize(be->isa, &a, t0, t1);
        }
        /* F: x += o·Woᵀ */
        mm_setup(&m[0], &L->wo, be->xn, E, NULL, be->x, nth);
        mm_phase(&w, &m[0], &a, mct);
        /* G: x̂ = RMSNorm(x)·g, quantized */
        ql_cpu_act_bind(&a, be->qact, T, E, be->xn, E);
        FOR_CHUNKS(&w, n_tok_chunks, c) {
            TOKENS(c);
            norm_quantize(be, &a, be->xn, be->x, NULL, L->ffn_norm, t0, t1);
        }
        /* H: h = silu(x̂·Wgᵀ) ⊙ x̂·Wuᵀ, a chunk owning the same rows of both */
        mm_setup(&m[0], &L->wg, be->ffg, F, NULL, NULL, nth);
        mm_setup(&m[1], &L->wu, be->ffu, F, NULL, NULL, nth);
        QL_ASSERT(m[0].n_chunks == m[1].n_chunks);
        if (mct) {
            FOR_CHUNKS(&w, n_mm_chunks, c) {
                MM_TOKENS(c);
                mm_block(&m[0], &a, 0, F, t0, t1);
                mm_block(&m[1], &a, 0, F, t0, t1);
                for (int64_t t = t0; t < t1; t++)
                    ql__cpu_swiglu(be->isa, be->ffg + t * F, be->ffg + t * F, be->ffu + t * F, F);
            }
        } else {
            FOR_CHUNKS(&w, m[0].n_chunks, c) {
                mm_chunk(&m[0], &a, c);
                mm_chunk(&m[1], &a, c);
                int64_t r0, r1;
                mm_rows(&m[0], c, &r0, &r1);
                for (int64_t t = 0; t < T; t++)
                    ql__cpu_swiglu(be->isa, be->ffg + t * F + r0, be->ffg + t * F + r0,
                                   be->ffu + t * F + r0, r1 - r0);
            }
        }
        /* I: quantize h */
        ql_cpu_act_bind(&a, be->qact, T, F, be->ffg, F);
        FOR_CHUNKS(&w, n_tok_chunks, c) {
            TOKENS(c);
            if (a.qs) ql_cpu_act_quantize(be->isa, &a, t0, t1);
        }
        /* J: x += h·Wdᵀ */
        mm_setup(&m[0], &L->wd, be->xn, E, NULL, be->x, nth);
        mm_phase(&w, &m[0], &a, mct);
    }

    /* logits rows: final norm, then the head */
    const int64_t NL = b->n_logits;
    const int64_t cl = chunk_size(NL, nth);
    ql_cpu_act_bind(&a, be->qact, QL_MAX(NL, (int64_t)1), E, be->lx, E);
    FOR_CHUNKS(&w, (int)((NL + cl - 1) / cl), c) {
        const int64_t i0 = (int64_t)c * cl, i1 = QL_MIN(NL, i0 + cl);
        norm_quantize(be, &a, be->lx, be->x, b->logits_rows, be->out_norm, i0, i1);
    }
    if (NL > 0) {
        a.n_tok = NL;
        mm_part_t mo;
        mm_setup(&mo, &be->out, be->logits, be->n_vocab, NULL, NULL, nth);
        mm_phase(&w, &mo, &a, mm_token_chunk(NL, nth));
    }
    QL_ASSERT(w.p <= be->n_phases);
#undef TOKENS
#undef MM_TOKENS
}

static int cpu_forward(ql_backend_t *base, const ql_batch_t *b, float *logits) {
    cpu_backend_t *be = (cpu_backend_t *)base;
    char err[160];
    if (ql_batch_validate(b, &base->info, err, sizeof(err)) != 0) {
        QL_LOG_DEBUG("bad batch: %s", err);
        return QL_EINVAL;
    }
    if (b->n_logits > 0 && !logits) return QL_EINVAL;
    be->b = b;
    be->logits = logits;
    /* attention tiles: runs of up to QL__CPU_ATTN_TILE consecutive tokens of one sequence,
     * which share their K/V conversions */
    int32_t n = 0;
    for (int32_t t = 0; t < b->n_tokens; t++)
        if (n == 0 || t - be->tiles[n - 1] >= QL__CPU_ATTN_TILE ||
            b->seq_of_token[t] != b->seq_of_token[t - 1])
            be->tiles[n++] = t;
    be->tiles[n] = b->n_tokens;
    be->n_tiles = n;
    for (int i = 0; i < be->n_phases; i++) {
        atomic_store_explicit(&be->ph[i].next, 0, memory_order_relaxed);
        atomic_store_explicit(&be->ph[i].front, 0, memory_order_relaxed);
        atomic_store_explicit(&be->ph[i].back, 0, memory_order_relaxed);
        atomic_store_explicit(&be->ph[i].done, 0, memory_order_relaxed);
    }
    ql_cpu_pool_run(be->pool, forward_task, be); /* the run's start publishes all of the above */
    be->b = NULL;
    be->logits = NULL;
    return 0;
}

static int cpu_copy_blocks(ql_backend_t *base, const int32_t *src, const int32_t *dst, int32_t n) {
    cpu_backend_t *be = (cpu_backend_t *)base;
    const ql_kv_layout_t *kv = &base->info.kv;
    int rc = 0;
    /* every id first: returning from the marking loop would leave earlier marks set and
     * make a later, valid copy into those blocks look like "a dst that is also a src" */
    for (int32_t i = 0; i < n; i++)
        if (src[i] < 0 || src[i] >= kv->n_blocks || dst[i] < 0 || dst[i] >= kv->n_blocks)
            return QL_EINVAL;
    for (int32_t i = 0; i < n; i++) be->block_mark[src[i]] = 1;
    for (int32_t i = 0; i < n && rc == 0; i++)
        if (be->block_mark[dst[i]]) rc = QL_EINVAL; /* a dst that is also a src */
    for (int32_t i = 0; i < n; i++) be->block_mark[src[i]] = 0;
    if (rc) return rc;
    const size_t blk_elems = (size_t)kv->n_kv_head * kv->block_size * kv->head_dim;
    for (int64_t l = 0; l < 2 * (int64_t)kv->n_layer; l++) {
        uint16_t *pool = be->kv + l * be->kv_layer_elems;
        for (int32_t i = 0; i < n; i++)
            memcpy(pool + (size_t)dst[i] * blk_elems, pool + (size_t)src[i] * blk_elems,
                   blk_elems * sizeof(uint16_t));
    }
    return 0;
}

static void cpu_free(ql_backend_t *base) {
    cpu_backend_t *be = (cpu_backend_t *)base;
    if (!be) return;
    ql_cpu_pool_free(be->pool);
    if (be->layers) {
        for (uint32_t l = 0; l < be->hp.n_layer; l++) {
            layer_t *L = &be->layers[l];
            ql_cpu_weight_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wg, &L->wu, &L->wd};
            for (size_t i = 0; i < QL_ARRAY_LEN(ws); i++) ql_cpu_weight_free(ws[i]);
        }
        free(be->layers);
    }
    ql_cpu_weight_free(&be->out);
    ql_weights_free(&be->wt);
    free(be->kv);
    free(be->block_mark);
    free(be->arena);
    free(be);
}

static const ql_backend_ops_t cpu_ops = {
    .forward = cpu_forward,
    .copy_blocks = cpu_copy_blocks,
    .forward_sample = NULL, /* the scheduler's host sampler is the reference */
    .free = cpu_free,
};

/* ---- init ---- */

static const float *f32_data(const ql_gguf_tensor_t *t) {
    return t ? (const float *)t->data : NULL;
}

static int init_weight(cpu_backend_t *be, ql_cpu_weight_t *w, const ql_gguf_tensor_t *t, char *err,
                       size_t errlen) {
    int rc = ql_cpu_weight_init(w, be->isa, t->type, t->ne[0], t->ne[1], t->data);
    if (rc) {
        ql_errf(err, errlen, "tensor %.*s (%s, %lld x %lld): %s", (int)t->name.len, t->name.ptr,
                ql_dtype_name(t->type) ? ql_dtype_name(t->type) : "?", (long long)t->ne[0],
                (long long)t->ne[1],
                rc == QL_EUNSUPPORTED ? "type not supported by the CPU backend" : ql_strerror(rc));
    }
    return rc;
}

/* Offsets of the activation buffers in one allocation. */
typedef struct carve_s {
    size_t off;
} carve_t;
static size_t carve(carve_t *c, size_t bytes) {
    size_t at = c->off;
    c->off += (bytes + 63) & ~(size_t)63;
    return at;
}

int ql_cpu_backend_init(const ql_gguf_t *g, const ql_backend_params_t *p, ql_backend_t **out,
                        char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!g || !p || !out) return QL_EINVAL;
    *out = NULL;
    cpu_backend_t *be = calloc(1, sizeof(*be));
    if (!be) return QL_ENOMEM;
    be->base.ops = &cpu_ops;
    int rc = ql_hparams_read(g, &be->hp, err, errlen);
    if (rc) goto fail;
    rc = ql_weights_init(g, &be->hp, &be->wt, err, errlen);
    if (rc) goto fail;
    const ql_hparams_t *hp = &be->hp;
    if (hp->n_head % hp->n_head_kv || hp->n_head / hp->n_head_kv > QL__CPU_ATTN_GROUP_MAX ||
        hp->head_dim % 2) {
        ql_errf(err, errlen, "attention shape (%u heads, %u KV heads, head_dim %u) not supported",
                hp->n_head, hp->n_head_kv, hp->head_dim);
        rc = QL_EUNSUPPORTED;
        goto fail;
    }

    /* parameters */
    const int32_t block_size = p->block_size > 0 ? p->block_size : 16;
    const int32_t n_tok_max = p->n_batch_tokens_max > 0 ? p->n_batch_tokens_max : 512;
    const int32_t n_seqs_max = p->n_seqs_max > 0 ? p->n_seqs_max : 64;
    const int32_t n_logits_max = p->n_logits_max > 0 ? p->n_logits_max : n_tok_max;
    int64_t n_ctx = p->n_ctx_max > 0 ? p->n_ctx_max : (int64_t)hp->n_ctx_train;
    if (n_ctx <= 0 || n_ctx > INT32_MAX / 2) n_ctx = 4096;
    if (block_size <= 0 || n_tok_max > (1 << 20) || n_seqs_max > (1 << 20) ||
        n_logits_max > (1 << 20) || block_size > 4096) {
        ql_errf(err, errlen, "backend parameters out of range");
        rc = QL_EINVAL;
        goto fail;
    }

    be->isa = ql_cpu_isa_default();
    be->n_embd = hp->n_embd;
    be->head_dim = hp->head_dim;
    be->q_dim = (int64_t)hp->n_head * hp->head_dim;
    be->kv_dim = (int64_t)hp->n_head_kv * hp->head_dim;
    be->n_ff = hp->n_ff;
    be->n_group = hp->n_head / hp->n_head_kv;
    be->tok_embd = be->wt.token_embd;
    be->out_norm = f32_data(be->wt.output_norm);
    be->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    be->rope = (ql_rope_params_t){
        .mode = hp->rope_layout == QL_ROPE_LAYOUT_HALVES ? QL_ROPE_MODE_NEOX : QL_ROPE_MODE_NORM,
        .n_rot = (int)hp->head_dim,
        .freq_base = hp->rope_freq_base,
        .freq_scale = (hp->rope_scaling == QL_ROPE_SCALING_LINEAR ||
                       hp->rope_scaling == QL_ROPE_SCALING_YARN) &&
                              hp->rope_scaling_factor > 0
                          ? 1.0f / hp->rope_scaling_factor
                          : 1.0f,
        .freq_factors = f32_data(be->wt.rope_freqs),
        /* NOTE(yarn) in cpu/cpu.h; llama.cpp's defaults: ext_factor 1, beta_fast 32, beta_slow 1 */
        .ext_factor = hp->rope_scaling == QL_ROPE_SCALING_YARN ? 1.0f : 0.0f,
        .mscale = hp->rope_attn_factor,
    };
    if (hp->rope_scaling == QL_ROPE_SCALING_YARN)
        ql_rope_yarn_corr_dims((int)hp->head_dim, (int)hp->rope_scaling_orig_ctx, hp->rope_freq_base,
                               32.0f, 1.0f, be->rope.corr_dims);
    if (be->n_embd % QL_CPU_QK || be->q_dim % QL_CPU_QK || be->n_ff % QL_CPU_QK) {
        ql_errf(err, errlen, "widths (n_embd %lld, q_dim %lld, n_ff %lld) must be multiples of 32",
                (long long)be->n_embd, (long long)be->q_dim, (long long)be->n_ff);
        rc = QL_EUNSUPPORTED;
        goto fail;
    }
    {
        /* the embedding gather dequantizes rows with model/quant.c: check once that it can */
        float *row = malloc(sizeof(float) * (size_t)be->n_embd);
        if (!row) {
            rc = QL_ENOMEM;
            goto fail;
        }
        const int32_t id0 = 0;
        rc = ql_cpu_get_rows(row, be->tok_embd->data, be->tok_embd->type, be->tok_embd->ne[1],
                             be->n_embd, &id0, 1);
        free(row);
        if (rc) {
            ql_errf(err, errlen, "token_embd.weight: type %s cannot be gathered",
                    ql_dtype_name(be->tok_embd->type) ? ql_dtype_name(be->tok_embd->type) : "?");
            rc = QL_EUNSUPPORTED;
            goto fail;
        }
    }

    rc = ql_cpu_pool_init(p->n_threads, &be->pool);
    if (rc) {
        ql_errf(err, errlen, "cannot start %d threads", p->n_threads);
        goto fail;
    }

    /* weights */
    be->layers = calloc(hp->n_layer, sizeof(*be->layers));
    if (!be->layers) {
        rc = QL_ENOMEM;
        goto fail;
    }
    uint64_t weight_bytes = 0;
    for (uint32_t l = 0; l < hp->n_layer; l++) {
        const ql_layer_weights_t *lw = &be->wt.layers[l];
        layer_t *L = &be->layers[l];
        L->attn_norm = f32_data(lw->attn_norm);
        L->ffn_norm = f32_data(lw->ffn_norm);
        L->bq = f32_data(lw->attn_q_bias);
        L->bk = f32_data(lw->attn_k_bias);
        L->bv = f32_data(lw->attn_v_bias);
        L->qn = f32_data(lw->attn_q_norm);
        L->kn = f32_data(lw->attn_k_norm);
        const ql_gguf_tensor_t *ts[] = {lw->attn_q,   lw->attn_k, lw->attn_v,  lw->attn_output,
                                        lw->ffn_gate, lw->ffn_up, lw->ffn_down};
        ql_cpu_weight_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->wg, &L->wu, &L->wd};
        for (size_t i = 0; i < QL_ARRAY_LEN(ts); i++) {
            if ((rc = init_weight(be, ws[i], ts[i], err, errlen))) goto fail;
            weight_bytes += ts[i]->size;
        }
    }
    const ql_gguf_tensor_t *head = be->wt.output ? be->wt.output : be->wt.token_embd;
    if ((rc = init_weight(be, &be->out, head, err, errlen))) goto fail;
    weight_bytes += head->size + (be->wt.output ? be->wt.token_embd->size : 0);
    be->n_vocab = head->ne[1];

    /* KV pool */
    ql_kv_layout_t kv = {.n_layer = (int32_t)hp->n_layer,
                         .n_kv_head = (int32_t)hp->n_head_kv,
                         .head_dim = (int32_t)hp->head_dim,
                         .block_size = block_size,
                         .n_blocks = 0};
    const uint64_t block_bytes = ql_kv_block_bytes(&kv, 2);
    const uint64_t blocks_per_seq =
        ((uint64_t)n_ctx + (uint64_t)block_size - 1) / (uint64_t)block_size;
    uint64_t budget = p->kv_cache_bytes;
    if (budget == 0)
        budget = QL_MIN((uint64_t)n_seqs_max * blocks_per_seq * block_bytes, (uint64_t)1 << 30);
    uint64_t n_blocks = budget / block_bytes;
    n_blocks =
        QL_MIN(n_blocks, (uint64_t)n_seqs_max * blocks_per_seq); /* more could never be used */
    n_blocks = QL_MIN(n_blocks, (uint64_t)INT32_MAX / 2);
    if (n_blocks == 0) {
        ql_errf(err, errlen,
                "KV cache budget of %llu bytes holds no block (one block is %llu bytes)",
                (unsigned long long)budget, (unsigned long long)block_bytes);
        rc = QL_EINVAL;
        goto fail;
    }
    kv.n_blocks = (int32_t)n_blocks;
    be->kv_layer_elems = ql_kv_layer_elems(&kv);
    size_t kv_bytes;
    if (ql_size_mul((size_t)be->kv_layer_elems, 2 * sizeof(uint16_t) * hp->n_layer, &kv_bytes)) {
        rc = QL_EOVERFLOW;
        goto fail;
    }
    be->kv = calloc(1, kv_bytes); /* untouched pages cost nothing until used */
    be->block_mark = calloc((size_t)n_blocks, 1);
    if (!be->kv || !be->block_mark) {
        ql_errf(err, errlen, "cannot allocate a KV cache of %zu bytes", kv_bytes);
        rc = QL_ENOMEM;
        goto fail;
    }

    /* activation buffers */
    const int nth = ql_cpu_pool_n_threads(be->pool);
    const size_t T = (size_t)n_tok_max, Lr = (size_t)n_logits_max, fs = sizeof(float);
    const int64_t widest = QL_MAX(be->n_embd, QL_MAX(be->q_dim, be->n_ff));
    carve_t c = {0};
    const size_t o_x = carve(&c, T * be->n_embd * fs), o_xn = carve(&c, T * be->n_embd * fs);
    const size_t o_qkv = carve(&c, T * (be->q_dim + 2 * be->kv_dim) * fs),
                 o_att = carve(&c, T * be->q_dim * fs);
    const size_t o_ffg = carve(&c, T * be->n_ff * fs), o_ffu = carve(&c, T * be->n_ff * fs);
    const size_t o_cs = carve(&c, T * (size_t)be->rope.n_rot * fs),
                 o_lx = carve(&c, Lr * be->n_embd * fs);
    const size_t o_q = carve(&c, ql_cpu_act_bytes(QL_MAX((int64_t)T, (int64_t)Lr), widest));
    const size_t o_s =
        carve(&c, (size_t)nth * QL__CPU_ATTN_TILE * be->n_group * (size_t)n_ctx * fs);
    const size_t o_t = carve(&c, (T + 1) * sizeof(int32_t));
    const size_t o_ph = carve(&c, (size_t)(3 + 10 * (size_t)hp->n_layer) * 64);
    if (posix_memalign(&be->arena, 64, c.off) != 0) {
        be->arena = NULL;
        rc = QL_ENOMEM;
        goto fail;
    }
    uint8_t *base = be->arena;
    be->x = (float *)(base + o_x);
    be->xn = (float *)(base + o_xn);
    be->qkv = (float *)(base + o_qkv);
    be->att = (float *)(base + o_att);
    be->ffg = (float *)(base + o_ffg);
    be->ffu = (float *)(base + o_ffu);
    be->cs = (float *)(base + o_cs);
    be->lx = (float *)(base + o_lx);
    be->qact = base + o_q;
    be->scratch = (float *)(base + o_s);
    be->tiles = (int32_t *)(base + o_t);
    be->n_phases = 3 + 10 * (int)hp->n_layer;
    be->ph = (struct phase_s *)(base + o_ph);
    for (int i = 0; i < be->n_phases; i++) {
        atomic_init(&be->ph[i].next, 0);
        atomic_init(&be->ph[i].front, 0);
        atomic_init(&be->ph[i].back, 0);
        atomic_init(&be->ph[i].done, 0);
    }
    atomic_init(&be->ph_sleepers, 0);

    ql_backend_info_t *info = &be->base.info;
    info->name = "cpu";
    info->n_vocab = (int32_t)hp->n_vocab;
    info->n_ctx_max = (int32_t)n_ctx;
    info->n_batch_tokens_max = n_tok_max;
    info->n_seqs_max = n_seqs_max;
    info->n_logits_max = n_logits_max;
    info->kv = kv;
    info->kv_block_bytes = block_bytes;
    info->kv_bytes = kv_bytes;
    info->weight_bytes = weight_bytes;
    if (be->n_vocab != (int64_t)hp->n_vocab) {
        ql_errf(err, errlen, "output head has %lld rows, vocabulary %u", (long long)be->n_vocab,
                hp->n_vocab);
        rc = QL_EFORMAT;
        goto fail;
    }
    QL_LOG_INFO(
        "cpu backend: %s, %d threads, KV %d blocks of %d tokens (%.1f MiB), batch %d tokens",
        ql_cpu_isa_name(be->isa), nth, (int)kv.n_blocks, (int)block_size,
        (double)kv_bytes / 1048576.0, (int)n_tok_max);
    *out = &be->base;
    return 0;
fail:
    cpu_free(&be->base);
    return rc;
}

static int cpu_available(void) {
    return 1;
}

const ql_backend_desc_t ql_cpu_backend_desc = {
    .name = "cpu", .available = cpu_available, .init = ql_cpu_backend_init};

/* ---- white-box hooks for tests ---- */

void ql__cpu_backend_kv_fill(ql_backend_t *base, uint16_t bits) {
    cpu_backend_t *be = (cpu_backend_t *)base;
    const int64_t n = be->kv_layer_elems * 2 * (int64_t)be->hp.n_layer;
    for (int64_t i = 0; i < n; i++) be->kv[i] = bits;
}

ql_cpu_isa_t ql__cpu_backend_isa(const ql_backend_t *base) {
    return ((const cpu_backend_t *)base)->isa;
}
