/*
 * cuda/k-sample.cu — sampling on the device (steps 1-8 of scheduler/sampling.h, whose host
 * sampler is the reference: same order of steps, same formulas, same tie rules) and the
 * accept/reject step of speculative decoding.
 *
 * Flow of ql_cuda_sample_rows / ql_cuda_sample_probs, one row per thread block:
 *   1. prep_kernel:   raw NaN/+inf check, penalties and bias, the row max; temperature 0
 *                     rows are finished here (argmax, lowest id); the others get keys
 *                     (l − max) / temperature and ids 0..n_vocab−1;
 *   2. CUB's segmented radix sort of the rows top-k or top-p cut, keys descending; it is
 *      stable, so equal keys keep their ids ascending: the host's order (key desc, id asc);
 *   3. select_kernel: top-k, top-p, min-p on the sorted row (or on the row in id order when
 *      neither top-k nor top-p is on, as the host walks it), then the draw (rows) or the
 *      distribution (probs).
 *
 * NOTE(walk-f32): the host sums weights in double, here in f32 through a block scan whose
 * order is fixed (the same in every pass over a row, so a cut or a draw compares against a
 * total computed exactly as the cumulative sums are). Both pick the first candidate whose
 * cumulative weight passes the target; they can differ only when the target falls within
 * f32 rounding (~1e-7 relative) of a boundary.
 */
#include <cub/device/device_segmented_radix_sort.cuh>

#include "cuda/k-common.cuh"

#define SAMPLE_THREADS 1024
#define ROW_PENDING (-3) /* row status: to be cut and sampled by select_kernel */
#define WORK_ALIGN 256

/* ---- block scan helpers (blockDim.x == SAMPLE_THREADS) ---- */

/* Inclusive prefix sum of v over the block in thread order; *total gets the block's sum.
 * `sh` is 32 floats of shared memory. Every thread must call it. */
static __device__ float block_scan_incl(float v, float *sh, float *total) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int n_warps = (int)(blockDim.x >> 5);
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float n = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += n;
    }
    if (lane == 31) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float w = lane < n_warps ? sh[lane] : 0.0f;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float n = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += n;
        }
        sh[lane] = w;
    }
    __syncthreads();
    const float pre = warp > 0 ? sh[warp - 1] : 0.0f;
    *total = sh[n_warps - 1];
    __syncthreads(); /* sh is rewritten by the next call */
    return v + pre;
}

/* A row's candidate weights in walk order: weight(i) for i in [0, n). */
struct sorted_weights {
    const float *key; /* [n_vocab] in walk order */
    int64_t n;        /* candidates left after top-k / top-p */
    float min_p;      /* 0 = off */
    __device__ float operator()(int64_t i) const {
        if (i >= n) return 0.0f;
        const float w = expf(key[i]);
        return (min_p > 0.0f && !(w >= min_p)) ? 0.0f : w;
    }
};

/* max(0, p − q) of one position, q one-hot at `draft` when q is NULL; or p itself. */
struct residual_weights {
    const float *p, *q;
    int64_t n;
    int32_t draft;
    int residual; /* 0: p itself */
    __device__ float operator()(int64_t i) const {
        if (i >= n) return 0.0f;
        if (!residual) return p[i];
        const float qi = q ? q[i] : (i == draft ? 1.0f : 0.0f);
        return fmaxf(0.0f, p[i] - qi);
    }
};

/* The sum of weight(i), i in [0, n), in the scan's order. */
template <class F>
static __device__ float block_total(int64_t n, const F &weight, float *sh) {
    float carry = 0.0f;
    for (int64_t base = 0; base < n; base += blockDim.x) {
        float tot;
        (void)block_scan_incl(weight(base + threadIdx.x), sh, &tot);
        carry += tot;
    }
    return carry;
}

/* The first i in [0, n) whose cumulative weight c_i passes `target` (ge: c_i >= target;
 * else target < c_i), or, when none does (rounding), the last i of non-zero weight; -1
 * when every weight is 0. `ish` is 2 ints of shared memory. */
template <class F>
static __device__ int64_t block_find(int64_t n, const F &weight, float target, int ge, float *sh,
                                     int *ish) {
    if (threadIdx.x == 0) {
        ish[0] = INT_MAX; /* first passing index */
        ish[1] = -1;      /* last index of non-zero weight */
    }
    __syncthreads();
    float carry = 0.0f;
    for (int64_t base = 0; base < n; base += blockDim.x) {
        const int64_t i = base + threadIdx.x;
        const float w = weight(i);
        float tot;
        const float c = carry + block_scan_incl(w, sh, &tot);
        if (i < n) {
            const bool pass = ge ? c >= target : target < c;
            if (pass) atomicMin(&ish[0], (int)i);
            if (w > 0.0f) atomicMax(&ish[1], (int)i);
        }
        carry += tot;
        __syncthreads();
        if (ish[0] != INT_MAX) break; /* uniform: every thread reads it after the barrier */
    }
    const int first = ish[0], last = ish[1];
    __syncthreads(); /* ish may be reused by the caller */
    return first != INT_MAX ? first : last;
}

/* The lowest index holding the max of x[0, n) (NaN-free), -1 when all are -inf. */
static __device__ int64_t block_argmax(const float *x, int64_t n, float *sh, int *ish) {
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, x[i]);
    m = ql_k_block_max(m, sh);
    if (m == -INFINITY) return -1;
    if (threadIdx.x == 0) ish[0] = INT_MAX;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
        if (x[i] == m) {
            atomicMin(&ish[0], (int)i);
            break; /* this thread's later indices are larger */
        }
    __syncthreads();
    const int r = ish[0];
    __syncthreads();
    return r;
}

/* ---- step 1-4: penalties, bias, max, greedy, keys ---- */

/* Whether a row at temperature > 0 is cut by top-k or top-p, so walked in sorted order. */
static __device__ __forceinline__ bool row_sorts(const ql_cuda_sample_params_t &P,
                                                 int32_t n_vocab) {
    return (P.top_k > 0 && P.top_k < n_vocab) || P.top_p < 1.0f;
}

static __device__ __forceinline__ float clamp_finite(float x) {
    return fminf(fmaxf(x, -FLT_MAX), FLT_MAX);
}

typedef struct sample_work_s {
    float *keys_in, *keys_out;  /* [n_rows][n_vocab] */
    int32_t *ids_in, *ids_out;  /* [n_rows][n_vocab] */
    int32_t *seg_begin;         /* [n_rows] row r's segment of the sort: [begin, end) */
    int32_t *seg_end;           /* [n_rows] begin + n_vocab, or begin: not sorted */
    int32_t *status;            /* [n_rows] token, QL_CUDA_SAMPLE_*, or ROW_PENDING */
    void *cub_tmp;
    size_t cub_bytes;
} sample_work_t;

/* grid: one block per row; block: SAMPLE_THREADS. */
static __global__ void __launch_bounds__(SAMPLE_THREADS)
    prep_kernel(const float *__restrict__ logits, int32_t n_vocab,
                const ql_cuda_sample_params_t *__restrict__ params,
                const uint8_t *__restrict__ in_prompt, const int32_t *__restrict__ out_counts,
                const float *__restrict__ bias, sample_work_t w) {
    __shared__ float sh[32];
    __shared__ int ish[2];
    const int64_t r = blockIdx.x;
    const int64_t V = n_vocab, row = r * V;
    const ql_cuda_sample_params_t P = params[r];
    float *l = w.keys_in + row; /* the processed logits first, then the keys */
    float m = -INFINITY, bad = 0.0f;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x) {
        float x = logits[row + i];
        if (isnan(x) || x == INFINITY) bad = 1.0f;
        /* step 1-2: penalties (NOTE(penalty-scope) in scheduler/sampling.h) */
        const int32_t c = out_counts ? out_counts[row + i] : 0;
        const bool seen = c > 0 || (in_prompt && in_prompt[row + i]);
        if (seen) {
            if (P.repetition_penalty != 1.0f)
                x = x > 0.0f ? x / P.repetition_penalty : x * P.repetition_penalty;
            /* _rn: no FMA contraction, so the same roundings as the host's expression */
            if (c > 0)
                x -= __fadd_rn(__fmul_rn((float)c, P.frequency_penalty), P.presence_penalty);
            x = x == -INFINITY ? x : clamp_finite(x);
        }
        /* step 3: bias; -inf bans, and -inf is never revived */
        if (bias) {
            const float b = bias[row + i];
            if (b == -INFINITY) x = -INFINITY;
            else if (x != -INFINITY) x = clamp_finite(x + b);
        }
        l[i] = x;
        w.ids_in[row + i] = (int32_t)i;
        m = fmaxf(m, x);
    }
    /* NOTE(sort-rows): only rows select_kernel walks in sorted order are sorted; the others
     * get an empty segment (greedy, temperature alone, min-p alone, and broken rows) */
    if (threadIdx.x == 0) w.seg_begin[r] = w.seg_end[r] = (int32_t)row;
    bad = ql_k_block_max(bad, sh);
    m = ql_k_block_max(m, sh);
    if (bad > 0.0f) {
        if (threadIdx.x == 0) w.status[r] = QL_CUDA_SAMPLE_NAN;
        return;
    }
    if (m == -INFINITY) {
        if (threadIdx.x == 0) w.status[r] = QL_CUDA_SAMPLE_NONE;
        return;
    }
    if (P.temperature == 0.0f) {
        /* step 4, greedy: each thread reads back only what it wrote, then the barrier */
        __syncthreads();
        const int64_t a = block_argmax(l, V, sh, ish);
        if (threadIdx.x == 0) w.status[r] = a >= 0 ? (int32_t)a : QL_CUDA_SAMPLE_NONE;
        return;
    }
    /* NOTE(temperature) in scheduler/sampling.c: (l − m) / t stays <= 0 and never +inf */
    /* + 0.0f turns a key that underflowed to −0 (a tiny l − m over a large temperature) into
     * +0: the radix sort orders −0 below +0, the host compares them equal (then by id) */
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
        l[i] = (l[i] - m) / P.temperature + 0.0f;
    if (threadIdx.x == 0) {
        w.status[r] = ROW_PENDING;
        if (row_sorts(P, n_vocab)) w.seg_end[r] = (int32_t)(row + V);
    }
}

/* ---- steps 5-8 ---- */

/* grid: one block per row; block: SAMPLE_THREADS. probs == NULL: sample into tokens_out. */
static __global__ void __launch_bounds__(SAMPLE_THREADS)
    select_kernel(int32_t n_vocab, const ql_cuda_sample_params_t *__restrict__ params,
                  uint64_t *__restrict__ rng, sample_work_t w, int32_t *__restrict__ tokens_out,
                  float *__restrict__ probs) {
    __shared__ float sh[32];
    __shared__ int ish[2];
    __shared__ float target_sh;
    const int64_t r = blockIdx.x;
    const int64_t V = n_vocab, row = r * V;
    const int32_t st = w.status[r];
    if (st != ROW_PENDING) {
        if (probs == NULL) {
            if (threadIdx.x == 0) tokens_out[r] = st;
        } else {
            for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
                probs[row + i] = st >= 0 ? (i == st ? 1.0f : 0.0f) : NAN;
        }
        return;
    }
    const ql_cuda_sample_params_t P = params[r];
    const bool topk = P.top_k > 0 && P.top_k < n_vocab;
    const bool topp = P.top_p < 1.0f;
    /* the host walks the sorted order once top-k or top-p has sorted, else id order; prep
     * gave exactly these rows a segment of the sort */
    const bool sorted = row_sorts(P, n_vocab);
    const float *key = (sorted ? w.keys_out : w.keys_in) + row;
    const int32_t *ids = (sorted ? w.ids_out : w.ids_in) + row;
    int64_t n = topk ? P.top_k : V;
    if (topp) {
        /* step 6: the smallest prefix whose mass is >= top_p of what top-k kept */
        const sorted_weights all = {key, n, 0.0f};
        const float z = block_total(n, all, sh);
        const int64_t i = block_find(n, all, P.top_p * z, 1, sh, ish);
        if (i >= 0) n = i + 1;
    }
    /* step 7 folds into the weights: w < min_p weighs 0 (the max weighs 1) */
    const sorted_weights kept = {key, n, P.min_p};
    const float z = block_total(n, kept, sh);
    if (probs != NULL) {
        for (int64_t i = threadIdx.x; i < V; i += blockDim.x) probs[row + i] = 0.0f;
        __syncthreads(); /* zeros before the scatter below, which other threads do */
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) probs[row + ids[i]] = kept(i) / z;
        return;
    }
    /* step 8 */
    if (threadIdx.x == 0) target_sh = (float)(ql_cuda_rng_uniform(&rng[r]) * (double)z);
    __syncthreads();
    const int64_t i = block_find(n, kept, target_sh, 0, sh, ish);
    if (threadIdx.x == 0) tokens_out[r] = i >= 0 ? ids[i] : QL_CUDA_SAMPLE_NONE;
}

/* ---- wrappers ---- */

static size_t align_up(size_t x) { return (x + WORK_ALIGN - 1) / WORK_ALIGN * WORK_ALIGN; }

/* Carves `base` (or sizes it, base NULL) into w; returns the bytes used. */
static size_t work_layout(char *base, int64_t n_rows, int32_t n_vocab, size_t cub_bytes,
                          sample_work_t *w) {
    const size_t nv = (size_t)n_rows * (size_t)n_vocab;
    size_t off = 0;
    w->keys_in = (float *)(base + off);
    off += align_up(nv * sizeof(float));
    w->keys_out = (float *)(base + off);
    off += align_up(nv * sizeof(float));
    w->ids_in = (int32_t *)(base + off);
    off += align_up(nv * sizeof(int32_t));
    w->ids_out = (int32_t *)(base + off);
    off += align_up(nv * sizeof(int32_t));
    w->seg_begin = (int32_t *)(base + off);
    off += align_up((size_t)n_rows * sizeof(int32_t));
    w->seg_end = (int32_t *)(base + off);
    off += align_up((size_t)n_rows * sizeof(int32_t));
    w->status = (int32_t *)(base + off);
    off += align_up((size_t)n_rows * sizeof(int32_t));
    w->cub_tmp = base + off;
    w->cub_bytes = cub_bytes;
    off += align_up(cub_bytes);
    return off;
}

static int cub_bytes_for(int64_t n_rows, int32_t n_vocab, size_t *out) {
    size_t bytes = 0;
    const int n_items = (int)(n_rows * n_vocab);
    QL_CUDA_TRY(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        (void *)NULL, bytes, (const float *)NULL, (float *)NULL, (const int32_t *)NULL,
        (int32_t *)NULL, n_items, (int)n_rows, (const int32_t *)NULL, (const int32_t *)NULL));
    *out = bytes;
    return 0;
}

static int sizes_ok(int64_t n_rows, int32_t n_vocab) {
    return n_rows >= 1 && n_vocab >= 1 && n_rows <= QL_K_GRID_X_MAX &&
           n_rows * (int64_t)n_vocab <= INT32_MAX - 1;
}

extern "C" int ql_cuda_sample_work_bytes(int64_t n_rows, int32_t n_vocab, size_t *out) {
    if (out == NULL) return QL_EINVAL;
    *out = 0;
    if (!sizes_ok(n_rows, n_vocab)) return QL_EINVAL;
    size_t cub = 0;
    int rc = cub_bytes_for(n_rows, n_vocab, &cub);
    if (rc != 0) return rc;
    sample_work_t w;
    *out = work_layout(NULL, n_rows, n_vocab, cub, &w);
    return 0;
}

static int sample_run(const ql_cuda_sample_args_t *a, int32_t *tokens_out, float *probs,
                      void *stream) {
    if (a == NULL || a->n_rows < 0) return QL_EINVAL;
    if (a->n_rows == 0) return 0;
    if (!sizes_ok(a->n_rows, a->n_vocab)) return QL_EINVAL;
    if (!a->logits || !a->params || !a->work) return QL_EINVAL;
    if (probs == NULL && (tokens_out == NULL || a->rng == NULL)) return QL_EINVAL;
    size_t cub = 0;
    int rc = cub_bytes_for(a->n_rows, a->n_vocab, &cub);
    if (rc != 0) return rc;
    sample_work_t w;
    if (work_layout((char *)a->work, a->n_rows, a->n_vocab, cub, &w) > a->work_bytes)
        return QL_EINVAL;
    cudaStream_t st = QL_K_STREAM(stream);
    prep_kernel<<<(unsigned)a->n_rows, SAMPLE_THREADS, 0, st>>>(
        a->logits, a->n_vocab, a->params, a->in_prompt, a->out_counts, a->bias, w);
    QL_K_LAUNCH_CHECK();
    /* which rows need the sort is known only on the device: the others' segments are empty
     * (NOTE(sort-rows)) */
    const int n_items = (int)(a->n_rows * a->n_vocab);
    QL_CUDA_TRY(cub::DeviceSegmentedRadixSort::SortPairsDescending(
        w.cub_tmp, w.cub_bytes, (const float *)w.keys_in, w.keys_out,
        (const int32_t *)w.ids_in, w.ids_out, n_items, (int)a->n_rows,
        (const int32_t *)w.seg_begin, (const int32_t *)w.seg_end, 0, 32, st));
    select_kernel<<<(unsigned)a->n_rows, SAMPLE_THREADS, 0, st>>>(a->n_vocab, a->params, a->rng,
                                                                  w, tokens_out, probs);
    QL_K_LAUNCH_CHECK();
    return 0;
}

extern "C" int ql_cuda_sample_rows(const ql_cuda_sample_args_t *a, int32_t *tokens_out,
                                   void *stream) {
    if (tokens_out == NULL) return QL_EINVAL;
    return sample_run(a, tokens_out, NULL, stream);
}

extern "C" int ql_cuda_sample_probs(const ql_cuda_sample_args_t *a, float *probs, void *stream) {
    if (probs == NULL) return QL_EINVAL;
    return sample_run(a, NULL, probs, stream);
}

/* ---- speculative accept / reject ---- */

/* grid: one block per sequence; block: SAMPLE_THREADS. */
static __global__ void __launch_bounds__(SAMPLE_THREADS)
    spec_verify_kernel(const ql_cuda_spec_args_t a, int32_t *__restrict__ n_accepted,
                       int32_t *__restrict__ tokens_out) {
    __shared__ float sh[32];
    __shared__ int ish[2];
    __shared__ float u_sh;
    __shared__ int verdict_sh;
    const int64_t s = blockIdx.x;
    const int64_t V = a.n_vocab, K = a.k_max;
    int32_t *out = tokens_out + s * (K + 1);
    for (int64_t j = threadIdx.x; j <= K; j += blockDim.x) out[j] = -1;
    const int32_t k = a.n_draft[s];
    const int32_t *draft = a.draft + s * K;
    const bool greedy = a.greedy[s] != 0;
    /* rows whose inputs are broken: n_accepted = -1 */
    float bad = (k < 0 || k > K) ? 1.0f : 0.0f;
    if (bad == 0.0f) {
        for (int64_t i = threadIdx.x; i < (int64_t)(k + 1) * V; i += blockDim.x) {
            const float x = a.p[(s * (K + 1)) * V + i];
            if (!(x >= 0.0f && x <= 1.0f)) bad = 1.0f; /* NaN fails too */
        }
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x)
            if (draft[i] < 0 || draft[i] >= a.n_vocab) bad = 1.0f;
    }
    bad = ql_k_block_max(bad, sh);
    if (bad > 0.0f) {
        if (threadIdx.x == 0) n_accepted[s] = -1;
        return;
    }
    __syncthreads(); /* out's -1s before thread 0 writes tokens */
    int32_t i = 0;
    for (; i < k; i++) {
        const float *pi = a.p + (s * (K + 1) + i) * V;
        const int32_t d = draft[i];
        if (greedy) {
            const int64_t am = block_argmax(pi, V, sh, ish);
            if (am != d) {
                if (threadIdx.x == 0) out[i] = (int32_t)am;
                break;
            }
        } else {
            if (threadIdx.x == 0) {
                const float px = pi[d];
                const float qx = a.q ? a.q[(s * K + i) * V + d] : 1.0f;
                /* u < min(1, p/q)  <=>  u·q < p  for u in [0, 1), q > 0 (no division); a
                 * draft its drafter gave q = 0 is rejected, as scheduler/spec.c does */
                const double u = ql_cuda_rng_uniform(&a.rng[s]);
                verdict_sh = qx > 0.0f && u * (double)qx < (double)px;
            }
            __syncthreads();
            const int accept = verdict_sh;
            __syncthreads();
            if (!accept) {
                const float *qi = a.q ? a.q + (s * K + i) * V : NULL;
                residual_weights rw = {pi, qi, V, d, 1};
                float z = block_total(V, rw, sh);
                if (!(z > 0.0f)) { /* p == q up to rounding: the residual is empty */
                    rw.residual = 0;
                    z = block_total(V, rw, sh);
                }
                if (threadIdx.x == 0) u_sh = (float)(ql_cuda_rng_uniform(&a.rng[s]) * (double)z);
                __syncthreads();
                const int64_t c = block_find(V, rw, u_sh, 0, sh, ish);
                if (threadIdx.x == 0) out[i] = (int32_t)c;
                break;
            }
        }
        if (threadIdx.x == 0) out[i] = d;
    }
    if (i == k) { /* every draft accepted: the bonus token from p_k */
        const float *pk = a.p + (s * (K + 1) + k) * V;
        int64_t c;
        if (greedy) {
            c = block_argmax(pk, V, sh, ish);
        } else {
            const residual_weights rw = {pk, NULL, V, -1, 0};
            const float z = block_total(V, rw, sh);
            if (threadIdx.x == 0) u_sh = (float)(ql_cuda_rng_uniform(&a.rng[s]) * (double)z);
            __syncthreads();
            c = block_find(V, rw, u_sh, 0, sh, ish);
        }
        if (threadIdx.x == 0) out[k] = (int32_t)c;
    }
    if (threadIdx.x == 0) {
        /* a correction or bonus of -1 means the distribution was all zero */
        n_accepted[s] = out[i] >= 0 ? i : -1;
    }
}

extern "C" int ql_cuda_spec_verify(const ql_cuda_spec_args_t *a, int32_t *n_accepted,
                                   int32_t *tokens_out, void *stream) {
    if (a == NULL || a->n_seqs < 0 || a->k_max < 0 || a->n_vocab < 1) return QL_EINVAL;
    if (a->n_seqs == 0) return 0;
    if (!a->p || !a->draft || !a->n_draft || !a->greedy || !a->rng || !n_accepted || !tokens_out)
        return QL_EINVAL;
    if ((int64_t)a->n_vocab > INT32_MAX / 2) return QL_EINVAL;
    spec_verify_kernel<<<(unsigned)a->n_seqs, SAMPLE_THREADS, 0, QL_K_STREAM(stream)>>>(
        *a, n_accepted, tokens_out);
    QL_K_LAUNCH_CHECK();
    return 0;
}
