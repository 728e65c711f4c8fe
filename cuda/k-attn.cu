/*
 * cuda/k-attn.cu — attention over the paged KV cache for any mix of decode tokens,
 * speculative verify tokens and prefill chunks (semantics in cuda/kernels.h; the reference
 * is ql_cpu_attention_ref in cpu/ops.c), split over long contexts with a combine step.
 *
 * NOTE(attn-shape): a thread block takes a run of query tokens of one sequence (one token for
 * decode; consecutive tokens of a prefill chunk or verify, NOTE(attn-runs) in
 * kernels-plan.c) with up to QL_CUDA_ATTN_MAX_ROWS (token, query head) rows of ONE KV head
 * (GQA: the group and the run share every K/V tile it loads), and one split of their keys.
 * Per tile of QL_CUDA_ATTN_TILE_KEYS (32) keys the block stages K and V as f32 in shared
 * memory (K rows padded by one float so that lane j reading key j's element d hits bank
 * (j·(D+1)+d) mod 32: conflict-free); each warp owns rows warp, warp+4, ...: lane j scores
 * key j, the warp reduces max and sum with shuffles, and lane l accumulates dims l, l+32, ...
 * of p·V with an online softmax (running max m, sum l, rescaled by e^(m_old − m_new)). Keys
 * past the run's last position are never loaded (their tile entries are zero), and a row
 * scores keys past its own position −inf (causal), so NaN in unused slots never reaches the
 * result (the tests fill them with NaN).
 * TODO(tensor-cores): long prefills would go faster on tensor cores (FlashAttention-2 style
 * tiles of queries × keys); this kernel runs the dot products on the CUDA cores.
 */
#include "cuda/k-common.cuh"

#define ATTN_THREADS 128
#define ATTN_WARPS (ATTN_THREADS / 32)
#define ATTN_TK QL_CUDA_ATTN_TILE_KEYS
#define ATTN_ROWS QL_CUDA_ATTN_MAX_ROWS
#define ATTN_RPW (ATTN_ROWS / ATTN_WARPS) /* rows per warp */

static_assert(ATTN_TK == 32, "one key per lane");
static_assert(ATTN_ROWS % ATTN_WARPS == 0, "rows spread evenly over warps");

typedef struct attn_params_s {
    ql_kv_layout_t kv;
    const uint16_t *k_pool, *v_pool; /* [n_blocks][n_kv_head][block_size][D] f16 */
    const float *q;                  /* [n_tok][ldq], row = [n_head][D] */
    int64_t ldq;
    uint16_t *out; /* [n_tok][ldo], row = [n_head][D] f16 */
    int64_t ldo;
    int32_t n_head;
    float scale;
    const int32_t *pos, *seq_of; /* [n_tok] */
    const int32_t *block_tables; /* [n_seqs][max_blocks] */
    int32_t max_blocks, n_seqs;
    int64_t n_tok;
    int32_t n_splits, keys_per_split, heads_per_cta, n_head_chunks, tokens_per_cta;
    float *part; /* [n_tok][n_head][n_splits][D + 2]: m, l, acc[D]; NULL when n_splits == 1 */
} attn_params_t;

/* Eight f16 (one 16-byte load, element 0 in the low half of .x) to f32. */
static __device__ __forceinline__ void unpack8(const uint4 r, float *f) {
    const __half2 *h = reinterpret_cast<const __half2 *>(&r);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 x = __half22float2(h[i]);
        f[2 * i] = x.x;
        f[2 * i + 1] = x.y;
    }
}

/* Whether token t can be attended: its sequence and position are in range. */
static __device__ __forceinline__ bool token_ok(const attn_params_t &p, int64_t t) {
    const int32_t s = p.seq_of[t], pos = p.pos[t];
    return s >= 0 && s < p.n_seqs && pos >= 0 &&
           (int64_t)pos < (int64_t)p.max_blocks * p.kv.block_size;
}

/* grid: x = group of tokens_per_cta consecutive query tokens, y = KV head · n_head_chunks +
 * chunk, z = split of the context; block: ATTN_THREADS. The block walks its tokens in runs
 * (consecutive tokens of one sequence, NOTE(attn-runs) in kernels-plan.c); a run's rows are
 * (token, head) pairs, row r = token r / nh, head r % nh, at most ATTN_ROWS of them. */
template <int D>
static __global__ void __launch_bounds__(ATTN_THREADS) attn_paged_kernel(const attn_params_t p) {
    constexpr int DL = D / 32;     /* dims per lane */
    constexpr int ATTN_DV = D / 8; /* 16-byte vectors per key row */
    __shared__ float qs[ATTN_ROWS][D];
    __shared__ float ks[ATTN_TK][D + 1];
    __shared__ float vs[ATTN_TK][D];

    const int kvh = (int)blockIdx.y / p.n_head_chunks;
    const int chunk = (int)blockIdx.y % p.n_head_chunks;
    const int split = (int)blockIdx.z;
    const int group = p.n_head / p.kv.n_kv_head;
    const int h0 = kvh * group + chunk * p.heads_per_cta;
    const int nh = min(p.heads_per_cta, group - chunk * p.heads_per_cta);
    if (nh <= 0) return; /* uniform over the block */
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int bs = p.kv.block_size;
    const int64_t k_begin = (int64_t)split * p.keys_per_split;
    const int64_t t_first = (int64_t)blockIdx.x * p.tokens_per_cta;
    const int64_t t_last = min(t_first + (int64_t)p.tokens_per_cta, p.n_tok);

    /* every thread walks the same runs: the loop and its barriers are uniform */
    for (int64_t ts = t_first; ts < t_last;) {
        /* NOTE(attn-bad-token): a token whose sequence or position is out of range is a run
         * of its own that reads no key and writes NaN (split partials: l = NaN), so a
         * broken batch is loud, not out of bounds. */
        const bool bad = !token_ok(p, ts);
        const int32_t s = p.seq_of[ts];
        int64_t te = ts + 1;
        int64_t run_keys = bad ? 0 : (int64_t)p.pos[ts] + 1;
        if (!bad)
            while (te < t_last && p.seq_of[te] == s && token_ok(p, te)) {
                run_keys = max(run_keys, (int64_t)p.pos[te] + 1);
                te++;
            }
        const int n_rows = (int)(te - ts) * nh; /* <= ATTN_ROWS: checked by the wrapper */
        const int64_t k_end = min(run_keys, k_begin + (int64_t)p.keys_per_split);
        const int32_t *table = p.block_tables + (bad ? 0 : (int64_t)s * p.max_blocks);

        for (int idx = threadIdx.x; idx < n_rows * D; idx += ATTN_THREADS) {
            const int r = idx / D, d = idx - r * D;
            qs[r][d] = p.q[(ts + r / nh) * p.ldq + (int64_t)(h0 + r % nh) * D + d];
        }
        float m[ATTN_RPW], l[ATTN_RPW], acc[ATTN_RPW][DL];
        int64_t row_end[ATTN_RPW]; /* keys the row may see in this split: < row_end */
#pragma unroll
        for (int rr = 0; rr < ATTN_RPW; rr++) {
            const int r = warp + rr * ATTN_WARPS;
            m[rr] = -INFINITY;
            l[rr] = 0.0f;
#pragma unroll
            for (int i = 0; i < DL; i++) acc[rr][i] = 0.0f;
            row_end[rr] = r < n_rows && !bad ? min((int64_t)p.pos[ts + r / nh] + 1, k_end) : 0;
        }
        __syncthreads();

        for (int64_t j0 = k_begin; j0 < k_end; j0 += ATTN_TK) {
            /* NOTE(attn-vec): 8 halves (16 bytes) per load; a key's row of D halves is 16-byte
             * aligned because D is a multiple of 32 and the wrapper checks the pools are */
            for (int idx = threadIdx.x; idx < ATTN_TK * ATTN_DV; idx += ATTN_THREADS) {
                const int j = idx / ATTN_DV, d0 = (idx - j * ATTN_DV) * 8;
                const int64_t key = j0 + j;
                float kf[8], vf[8];
#pragma unroll
                for (int e = 0; e < 8; e++) kf[e] = vf[e] = 0.0f;
                if (key < k_end) {
                    const int32_t blk = table[key / bs];
                    if (blk >= 0 && blk < p.kv.n_blocks) {
                        const int64_t off =
                            ql_kv_offset(&p.kv, blk, kvh, (int32_t)(key % bs)) + d0;
                        unpack8(*reinterpret_cast<const uint4 *>(p.k_pool + off), kf);
                        unpack8(*reinterpret_cast<const uint4 *>(p.v_pool + off), vf);
                    } else {
#pragma unroll
                        for (int e = 0; e < 8; e++) kf[e] = vf[e] = NAN; /* bad block id: loud */
                    }
                }
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    ks[j][d0 + e] = kf[e];
                    vs[j][d0 + e] = vf[e];
                }
            }
            __syncthreads();
#pragma unroll
            for (int rr = 0; rr < ATTN_RPW; rr++) {
                const int r = warp + rr * ATTN_WARPS;
                if (r < n_rows) { /* uniform over the warp */
                    /* causal: a row sees keys up to its own position */
                    const bool valid = j0 + lane < row_end[rr];
                    float sc = -INFINITY;
                    if (valid) {
                        float dot = 0.0f;
#pragma unroll 8
                        for (int d = 0; d < D; d++) dot += qs[r][d] * ks[lane][d];
                        sc = dot * p.scale;
                    }
                    const float mt = ql_k_warp_max(sc);
                    const float mn = fmaxf(m[rr], mt);
                    /* NOTE(attn-empty): a row with no key yet (mn = −inf: its position is
                     * below this tile) keeps its zero state; e^(−inf − −inf) would be NaN */
                    const float alpha = mn == -INFINITY ? 1.0f : expf(m[rr] - mn);
                    const float pj = valid ? expf(sc - mn) : 0.0f;
                    l[rr] = l[rr] * alpha + ql_k_warp_sum(pj);
#pragma unroll
                    for (int i = 0; i < DL; i++) acc[rr][i] *= alpha;
                    for (int j = 0; j < ATTN_TK; j++) {
                        const float pk = __shfl_sync(0xffffffffu, pj, j);
#pragma unroll
                        for (int i = 0; i < DL; i++) acc[rr][i] += pk * vs[j][lane + 32 * i];
                    }
                    m[rr] = mn;
                }
            }
            __syncthreads(); /* the tile is overwritten next */
        }

#pragma unroll
        for (int rr = 0; rr < ATTN_RPW; rr++) {
            const int r = warp + rr * ATTN_WARPS;
            if (r >= n_rows) continue;
            const int64_t t = ts + r / nh;
            const int h = h0 + r % nh;
            if (p.n_splits == 1) {
                const float inv = 1.0f / l[rr]; /* l >= 1: the max key contributes e^0 */
                uint16_t *o = p.out + t * p.ldo + (int64_t)h * D;
#pragma unroll
                for (int i = 0; i < DL; i++)
                    o[lane + 32 * i] = ql_k_f2h(bad ? NAN : acc[rr][i] * inv);
            } else {
                float *pp = p.part + ((t * p.n_head + h) * p.n_splits + split) * (int64_t)(D + 2);
                if (lane == 0) {
                    pp[0] = bad ? 0.0f : m[rr]; /* −inf for an empty split */
                    pp[1] = bad ? NAN : l[rr];
                }
#pragma unroll
                for (int i = 0; i < DL; i++) pp[2 + lane + 32 * i] = bad ? NAN : acc[rr][i];
            }
        }
        __syncthreads(); /* qs is rewritten by the next run */
        ts = te;
    }
}

/* grid: x = query token, y = query head; block: D threads, one output dim each. */
template <int D>
static __global__ void attn_combine_kernel(const float *__restrict__ part,
                                           uint16_t *__restrict__ out, int64_t ldo,
                                           int32_t n_head, int32_t n_splits) {
    const int64_t t = blockIdx.x;
    const int h = (int)blockIdx.y, d = (int)threadIdx.x;
    const float *pp = part + (t * n_head + h) * n_splits * (int64_t)(D + 2);
    float mx = -INFINITY;
    for (int z = 0; z < n_splits; z++) mx = fmaxf(mx, pp[(int64_t)z * (D + 2)]);
    float sum = 0.0f, o = 0.0f;
    for (int z = 0; z < n_splits; z++) {
        const float *pz = pp + (int64_t)z * (D + 2);
        const float w = pz[0] == -INFINITY ? 0.0f : expf(pz[0] - mx); /* empty split: 0 */
        sum += w * pz[1];
        o += w * pz[2 + d];
    }
    out[t * ldo + (int64_t)h * D + d] = ql_k_f2h(o / sum);
}

template <int D>
static int attn_paged_cuda(const attn_params_t &p, int64_t n_tok, cudaStream_t st) {
    const dim3 grid((unsigned)((n_tok + p.tokens_per_cta - 1) / p.tokens_per_cta),
                    (unsigned)(p.kv.n_kv_head * p.n_head_chunks), (unsigned)p.n_splits);
    attn_paged_kernel<D><<<grid, ATTN_THREADS, 0, st>>>(p);
    QL_K_LAUNCH_CHECK();
    if (p.n_splits > 1) {
        attn_combine_kernel<D><<<dim3((unsigned)n_tok, (unsigned)p.n_head), D, 0, st>>>(
            p.part, p.out, p.ldo, p.n_head, p.n_splits);
        QL_K_LAUNCH_CHECK();
    }
    return 0;
}

static int device_sm_count(int32_t *n_sm) {
    int dev = 0, n = 0;
    QL_CUDA_TRY(cudaGetDevice(&dev));
    QL_CUDA_TRY(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
    *n_sm = n > 0 ? n : 1;
    return 0;
}

extern "C" int ql_cuda_attn_paged(const ql_cuda_attn_args_t *a, void *stream) {
    if (a == NULL || a->kv == NULL || a->n_tok < 0) return QL_EINVAL;
    const ql_kv_layout_t *kv = a->kv;
    if (kv->n_kv_head < 1 || kv->head_dim < 1 || kv->block_size < 1 || kv->n_blocks < 1)
        return QL_EINVAL;
    if (a->n_head < 1 || a->n_head % kv->n_kv_head != 0) return QL_EINVAL;
    const int32_t D = kv->head_dim;
    if (a->ldq < (int64_t)a->n_head * D || a->ldo < (int64_t)a->n_head * D) return QL_EINVAL;
    if (a->max_blocks < 1 || a->n_seqs < 1 || a->max_pos < 0 || !isfinite(a->scale))
        return QL_EINVAL;
    if (a->n_tok == 0) return 0;
    if (!a->k_pool || !a->v_pool || !a->q || !a->out || !a->pos || !a->seq_of ||
        !a->block_tables)
        return QL_EINVAL;
    if (a->n_tok > QL_K_GRID_X_MAX) return QL_EINVAL;
    if (((uintptr_t)a->k_pool | (uintptr_t)a->v_pool) % 16 != 0) return QL_EINVAL;
    if (!ql_cuda_attn_head_dim_supported(D)) return QL_EUNSUPPORTED;

    ql_cuda_attn_plan_t plan;
    if (a->plan) {
        plan = *a->plan;
        /* a caller's plan must cover every head and key the kernel is asked for */
        const int32_t group = a->n_head / kv->n_kv_head;
        if (plan.heads_per_cta < 1 || plan.tokens_per_cta < 1 ||
            (int64_t)plan.heads_per_cta * plan.tokens_per_cta > QL_CUDA_ATTN_MAX_ROWS ||
            plan.n_head_chunks < 1 || (int64_t)plan.heads_per_cta * plan.n_head_chunks < group ||
            plan.keys_per_split < 1 || plan.keys_per_split % QL_CUDA_ATTN_TILE_KEYS != 0 ||
            plan.n_splits < 1 || plan.n_splits > QL_K_GRID_YZ_MAX ||
            (int64_t)plan.n_splits * plan.keys_per_split < (int64_t)a->max_pos + 1 ||
            (int64_t)kv->n_kv_head * plan.n_head_chunks > QL_K_GRID_YZ_MAX)
            return QL_EINVAL;
    } else {
        int32_t n_sm = 1;
        int rc = device_sm_count(&n_sm);
        if (rc != 0) return rc;
        if (ql_cuda_attn_plan(a->n_tok, a->n_head, kv->n_kv_head, a->max_pos, n_sm, &plan) != 0)
            return QL_EINVAL;
    }
    const size_t need = ql_cuda_attn_work_bytes(&plan, a->n_tok, a->n_head, D);
    if (need > 0 && (a->work == NULL || a->work_bytes < need)) return QL_EINVAL;

    attn_params_t p;
    p.kv = *kv;
    p.k_pool = a->k_pool;
    p.v_pool = a->v_pool;
    p.q = a->q;
    p.ldq = a->ldq;
    p.out = a->out;
    p.ldo = a->ldo;
    p.n_head = a->n_head;
    p.scale = a->scale;
    p.pos = a->pos;
    p.seq_of = a->seq_of;
    p.block_tables = a->block_tables;
    p.max_blocks = a->max_blocks;
    p.n_seqs = a->n_seqs;
    p.n_splits = plan.n_splits;
    p.keys_per_split = plan.keys_per_split;
    p.heads_per_cta = plan.heads_per_cta;
    p.n_head_chunks = plan.n_head_chunks;
    p.tokens_per_cta = plan.tokens_per_cta;
    p.n_tok = a->n_tok;
    p.part = plan.n_splits > 1 ? (float *)a->work : NULL;

    cudaStream_t st = QL_K_STREAM(stream);
    switch (D) {
    case 32: return attn_paged_cuda<32>(p, a->n_tok, st);
    case 64: return attn_paged_cuda<64>(p, a->n_tok, st);
    case 96: return attn_paged_cuda<96>(p, a->n_tok, st);
    case 128: return attn_paged_cuda<128>(p, a->n_tok, st);
    default: return QL_EUNSUPPORTED;
    }
}
