/*
 * cuda/backend.cu — the CUDA backend object behind backend/backend.h: weights uploaded once
 * as f16, one cuBLAS handle and workspace on the backend's own stream, a paged f16 KV pool
 * sized from the device's free memory, and the Llama/Qwen2 forward pass of cpu/forward.c
 * issued as cuBLAS GEMMs and the kernels of cuda/kernels.h, replayed from CUDA graphs for
 * decode steps.
 *
 * One step (every launch on be->stream):
 *
 *   host: check the batch, fill the pinned step record (tokens, positions, slots, block
 *         tables, logits rows), one copy to the device
 *   embed_get_rows(token_embd) → x                                   x [T][E] f32
 *   per layer:  rmsnorm_residual(x += delta, attn_norm) → h16        h16 [T][E] f16
 *               qkv = h16 · Wqkvᵀ (+ bias: a rank-1 GEMM)            qkv [T][QD + 2 KVD] f32
 *               rope(q, k); kv_write(k, v → pools at slot[t])
 *               attn_paged → a16                                     a16 [T][QD] f16
 *               delta = a16 · Woᵀ                                    delta [T][E] f32
 *               rmsnorm_residual(x += delta, ffn_norm) → h16
 *               gu = h16 · [Wg; Wu]ᵀ                                 gu [T][2F] f32
 *               swiglu(g, u) → s16                                   s16 [T][F] f16
 *               delta = s16 · Wdᵀ
 *   rmsnorm_residual(x += delta, output_norm) → h16; gather the logits rows → l16 [L][E] f16
 *   logits = l16 · Woutᵀ                                             logits [L][V] f32
 *   host: wait for the step (bounded: NOTE(step-timeout)), copy the logits rows out
 *
 * NOTE(f16-weights): every matrix is dequantized on the host (cuda/convert.c, the reference
 * dequantization of model/quant.c) and stored f16, Wq/Wk/Wv stacked into one matrix and
 * Wg/Wu into another so that a layer runs four GEMMs. GEMM inputs are f16, outputs f32,
 * accumulation f32 (CUBLAS_COMPUTE_32F). On an F16 model the CPU backend multiplies the same
 * f16 weights by f32 activations; the only differences are the f16 rounding of the GEMM
 * inputs and the order of the sums (tests/unit/cuda/test-cuda-model.c states the bound).
 *
 * NOTE(graphs): a decode-only step (one token per sequence, sequence i owning token i) of n
 * tokens is padded to the next bucket B of 1, 2, 4, ... 256 (not beyond the backend's
 * limits) and the attention's context bound to the next power of two, and the whole step
 * from the embedding to the logits GEMM is captured once per (B, context bucket) into a CUDA
 * graph and replayed: only the step record changes between replays, and it lives at a fixed
 * device address. Pad tokens read position 0 of sequence 0, write no KV (slot −1) and their
 * rows are never copied out. Without graphs (QL_CUDA_GRAPHS=0, or a capture that failed:
 * logged once, then eager for good) the same padded launches run eagerly, so graph and eager
 * steps give the same bits. Other steps (prefill chunks, mixed batches) run eagerly at their
 * exact size.
 *
 * NOTE(device-fault): every CUDA and cuBLAS call is checked (QL_CU / QL_CUBLAS log the call,
 * file:line and the error string and return QL_ECUDA; kernel wrappers return their own
 * status). The first failure marks the backend faulted: every later call returns QL_ECUDA at
 * once, so the engine fails its requests with an error, reports itself unhealthy, and
 * `quill serve` turns /ready 503 and exits 1 (server/signals.c).
 *
 * NOTE(step-timeout): a step is waited for by polling an event, never by a blocking
 * synchronize, for at most QL_CUDA_STEP_TIMEOUT_MS (default 120000) milliseconds: a device
 * that hangs becomes a QL_ECUDA like any fault instead of a hung engine. Teardown of a
 * backend whose device hung releases host memory only (the process is exiting).
 */
#define QL_LOG_MODULE "cuda"
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda/cuda-internal.h"
#include "cuda/cuda.h"
#include "cuda/kernels.h"
#include "model/hparams.h"
#include "model/quant.h"

/* ---- checks ---- */

#define QL_CU(x)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (x);                                                                      \
        if (e_ != cudaSuccess) {                                                                   \
            QL_LOG_ERROR("%s: %s (%s:%d)", #x, cudaGetErrorString(e_), __FILE__, __LINE__);        \
            return QL_ECUDA;                                                                       \
        }                                                                                          \
    } while (0)

#define QL_CUBLAS(x)                                                                               \
    do {                                                                                           \
        cublasStatus_t s_ = (x);                                                                   \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                         \
            QL_LOG_ERROR("%s: %s (%s:%d)", #x, cublasGetStatusString(s_), __FILE__, __LINE__);     \
            return QL_ECUDA;                                                                       \
        }                                                                                          \
    } while (0)

/* A call that returns a QL_* status (the kernel wrappers, our own helpers). */
#define QL_TRY(x)                                                                                  \
    do {                                                                                           \
        int rc_ = (x);                                                                             \
        if (rc_ != 0) {                                                                            \
            QL_LOG_ERROR("%s: %s (%s:%d)", #x, ql_strerror(rc_), __FILE__, __LINE__);              \
            return rc_;                                                                            \
        }                                                                                          \
    } while (0)

/* ---- the object ---- */

#define QL_CUDA_STAGE_BYTES ((size_t)64 << 20) /* one pinned upload buffer (two of them) */
#define QL_CUDA_CUBLAS_WS_BYTES ((size_t)32 << 20)
/* NOTE(kv-reserve): device memory kept out of the KV pool for what is allocated after it:
 * CUDA graphs, cuBLAS and the kernels' own launch state. */
#define QL_CUDA_RESERVE_BYTES ((uint64_t)256 << 20)

typedef struct cuda_layer_s {
    uint16_t *wqkv;   /* [QD + 2 KVD][E] f16: Wq rows, then Wk, then Wv */
    uint16_t *wo;     /* [E][QD] */
    uint16_t *wgu;    /* [2F][E]: Wg rows, then Wu */
    uint16_t *wd;     /* [E][F] */
    float *attn_norm; /* [E] */
    float *ffn_norm;  /* [E] */
    float *bqkv;      /* [QD + 2 KVD] or NULL */
} cuda_layer_t;

/* The step record (cuda/step.c): host (pinned) and device copies of the same bytes. */
typedef ql__cuda_step_rec_t step_ptrs_t;

typedef struct cuda_backend_s {
    ql_backend_t base; /* first: the backend handle points here */
    ql_hparams_t hp;
    ql_weights_t wt;
    int device, n_sm;
    int64_t E, QD, KVD, QKVD, F, HD, V;
    int32_t T, S, L, MB, n_ctx; /* token, sequence, logits-row limits; blocks per table */
    float attn_scale;
    ql_cuda_rope_params_t rope;

    cudaStream_t stream;
    cudaEvent_t done;
    cublasHandle_t cublas;
    int have_stream, have_event, have_cublas;

    /* device memory: one allocation, carved */
    void *dmem;
    size_t dmem_bytes;
    uint16_t *tok_embd, *out_w; /* [V][E]; out_w == tok_embd when tied */
    float *out_norm, *rope_freqs, *ones;
    cuda_layer_t *layers; /* host array of device pointers */
    uint16_t *kv;         /* [n_layer][2][n_blocks][n_kv][bs][HD] */
    int64_t kv_layer_elems;
    float *x, *delta, *qkv, *gu, *lx32, *logits;
    uint16_t *h16, *a16, *s16, *l16;
    void *attn_work, *sample_work, *cublas_ws;
    size_t attn_work_bytes, sample_work_bytes;
    ql_cuda_sample_params_t *sparams; /* [L] */
    uint64_t *rng;                    /* [L] */
    int32_t *sampled;                 /* [L] */
    step_ptrs_t d;                    /* device step record */
    void *step_dev;
    size_t step_bytes;

    /* pinned host memory */
    void *step_host;
    step_ptrs_t h;
    float *logits_host;               /* [L][V] */
    ql_cuda_sample_params_t *sp_host; /* [L] */
    uint64_t *rng_host;               /* [L] */
    int32_t *sampled_host;            /* [L] */

    /* graphs */
    int graphs_on;
    int n_buckets;
    cudaGraphExec_t graphs[QL_CUDA_N_BUCKETS][QL_CUDA_N_CTX_BUCKETS];
    uint8_t graph_warm[QL_CUDA_N_BUCKETS][QL_CUDA_N_CTX_BUCKETS]; /* ran eagerly once */

    long trap_after; /* NOTE(fault-injection): steps before a real device fault; −1 = never */
    int faulted;     /* a device error happened: everything fails from now on */
    int hung;        /* a step timed out: teardown skips the device */
    uint64_t step_timeout_ns;
    uint8_t *block_mark; /* [n_blocks] copy_blocks scratch */
} cuda_backend_t;

/* ---- device facts ---- */

extern "C" int ql_cuda_device_info(int idx, ql_cuda_device_info_t *out) {
    if (!out || idx < 0 || idx >= ql_cuda_device_count()) return QL_EINVAL;
    memset(out, 0, sizeof(*out));
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, idx) != cudaSuccess) {
        (void)cudaGetLastError();
        return QL_EINVAL;
    }
    snprintf(out->name, sizeof(out->name), "%s", prop.name);
    out->sm_major = prop.major;
    out->sm_minor = prop.minor;
    out->n_sm = prop.multiProcessorCount;
    out->mem_total_bytes = prop.totalGlobalMem;
    /* NOTE(cuda13-props): CUDA 13 dropped cudaDeviceProp.memoryClockRate; the attribute
     * stays. */
    int clock_khz = 0, bus_bits = 0;
    if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, idx) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, idx) != cudaSuccess) {
        (void)cudaGetLastError();
        clock_khz = bus_bits = 0;
    }
    out->mem_bandwidth_bytes_s = 2.0 * (double)clock_khz * 1e3 * (double)bus_bits / 8.0;
    int cur = 0;
    size_t fr = 0, tot = 0;
    if (cudaGetDevice(&cur) == cudaSuccess && cudaSetDevice(idx) == cudaSuccess &&
        cudaMemGetInfo(&fr, &tot) == cudaSuccess)
        out->mem_free_bytes = fr;
    else
        (void)cudaGetLastError();
    (void)cudaSetDevice(cur);
    return 0;
}

/* ---- waiting with a bound ---- */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Waits for everything queued on the stream so far (NOTE(step-timeout)). */
static int wait_stream(cuda_backend_t *be) {
    QL_CU(cudaEventRecord(be->done, be->stream));
    const uint64_t t0 = now_ns();
    for (unsigned i = 0;; i++) {
        cudaError_t e = cudaEventQuery(be->done);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) {
            QL_LOG_ERROR("device step failed: %s", cudaGetErrorString(e));
            return QL_ECUDA;
        }
        const uint64_t dt = now_ns() - t0;
        if (dt > be->step_timeout_ns) {
            QL_LOG_ERROR("device step did not finish within %llu ms: the device is hung",
                         (unsigned long long)(be->step_timeout_ns / 1000000u));
            be->hung = 1;
            return QL_ECUDA;
        }
        if (dt > 2000000u) { /* past 2 ms: sleep between polls (a prefill, a load) */
            struct timespec ts = {0, 50000};
            nanosleep(&ts, NULL);
        } else if (i % 64 == 63) {
            sched_yield();
        }
    }
}

/* ---- GEMM ---- */

/* Y[M][N] (row stride ldy) = X[M][K] (row stride ldx) · W[N][K]ᵀ, f16 in, f32 out and
 * accumulation. In cuBLAS's column-major terms Yᵀ = W · Xᵀ with W read transposed. */
static int gemm(cuda_backend_t *be, const uint16_t *W, int64_t N, int64_t K, const uint16_t *X,
                int64_t ldx, float *Y, int64_t ldy, int64_t M) {
    if (M == 0) return 0;
    if (N > INT32_MAX || K > INT32_MAX || M > INT32_MAX || ldx > INT32_MAX || ldy > INT32_MAX)
        return QL_EOVERFLOW;
    const float one = 1.0f, zero = 0.0f;
    QL_CUBLAS(cublasGemmEx(be->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)M, (int)K, &one, W,
                           CUDA_R_16F, (int)K, X, CUDA_R_16F, (int)ldx, &zero, Y, CUDA_R_32F,
                           (int)ldy, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

/* Y[t][0..n) += bias[0..n) for M rows of stride ldy: a rank-1 f32 GEMM (Yᵀ += bias · onesᵀ),
 * each element gaining exactly bias[i]·1, as the CPU backend adds it. */
static int add_bias(cuda_backend_t *be, float *Y, int64_t ldy, const float *bias, int64_t n,
                    int64_t M) {
    if (M == 0 || !bias) return 0;
    const float one = 1.0f;
    QL_CUBLAS(cublasSgemm(be->cublas, CUBLAS_OP_N, CUBLAS_OP_T, (int)n, (int)M, 1, &one, bias,
                          (int)n, be->ones, (int)M, &one, Y, (int)ldy));
    return 0;
}

/* ---- one step's launches ---- */

/* What the launches of a step depend on (a graph is captured for one of these). */
typedef ql__cuda_step_shape_t step_shape_t;

static int enqueue_step(cuda_backend_t *be, const step_shape_t *sh) {
    cudaStream_t st = be->stream;
    const int64_t T = sh->n_tok, E = be->E, QD = be->QD, KVD = be->KVD, QKVD = be->QKVD, F = be->F;
    const ql_kv_layout_t *kv = &be->base.info.kv;
    QL_TRY(ql_cuda_embed_get_rows(be->x, be->tok_embd, be->V, E, be->d.tokens, T, st));

    ql_cuda_attn_args_t aa;
    memset(&aa, 0, sizeof(aa));
    aa.kv = kv;
    aa.ldq = QKVD;
    aa.out = be->a16;
    aa.ldo = QD;
    aa.n_tok = T;
    aa.n_head = (int32_t)be->hp.n_head;
    aa.scale = be->attn_scale;
    aa.pos = be->d.pos;
    aa.seq_of = be->d.seq_of;
    aa.block_tables = be->d.block_tables;
    aa.max_blocks = sh->stride;
    aa.n_seqs = sh->n_seqs;
    aa.max_pos = sh->max_pos;
    ql_cuda_attn_plan_t plan;
    /* a prefill chunk's tokens share their K/V tiles (runs); a decode step is one token per
     * block */
    QL_TRY(ql_cuda_attn_plan_runs(T, aa.n_head, (int32_t)be->hp.n_head_kv, sh->max_pos, sh->max_run,
                                  be->n_sm, &plan));
    const size_t wb = ql_cuda_attn_work_bytes(&plan, T, aa.n_head, (int32_t)be->HD);
    if (wb > be->attn_work_bytes) {
        QL_LOG_ERROR("attention needs %zu bytes of scratch, %zu were sized at init", wb,
                     be->attn_work_bytes);
        return QL_EINTERNAL;
    }
    aa.plan = &plan; /* the plan the scratch was sized for, whatever the device reports */
    aa.work = wb ? be->attn_work : NULL;
    aa.work_bytes = wb ? be->attn_work_bytes : 0;

    /* all layers, or the first n_layers of a layerskip draft (ql_batch_t.n_layers) */
    for (int32_t l = 0; l < sh->n_layers; l++) {
        const cuda_layer_t *L = &be->layers[l];
        uint16_t *kpool = be->kv + (int64_t)l * 2 * be->kv_layer_elems;
        uint16_t *vpool = kpool + be->kv_layer_elems;
        QL_TRY(ql_cuda_rmsnorm_residual(be->x, l == 0 ? NULL : be->delta, L->attn_norm, be->h16,
                                        NULL, T, E, be->hp.rms_eps, st));
        QL_TRY(gemm(be, L->wqkv, QKVD, E, be->h16, E, be->qkv, QKVD, T));
        QL_TRY(add_bias(be, be->qkv, QKVD, L->bqkv, QKVD, T));
        QL_TRY(ql_cuda_rope(&be->rope, be->qkv, QKVD, (int)be->hp.n_head, be->qkv + QD, QKVD,
                            (int)be->hp.n_head_kv, (int)be->HD, be->d.pos, T, st));
        QL_TRY(ql_cuda_kv_write(kv, kpool, vpool, be->qkv + QD, QKVD, be->qkv + QD + KVD, QKVD,
                                be->d.slot, T, st));
        aa.k_pool = kpool;
        aa.v_pool = vpool;
        aa.q = be->qkv;
        QL_TRY(ql_cuda_attn_paged(&aa, st));
        QL_TRY(gemm(be, L->wo, E, QD, be->a16, QD, be->delta, E, T));
        QL_TRY(ql_cuda_rmsnorm_residual(be->x, be->delta, L->ffn_norm, be->h16, NULL, T, E,
                                        be->hp.rms_eps, st));
        QL_TRY(gemm(be, L->wgu, 2 * F, E, be->h16, E, be->gu, 2 * F, T));
        QL_TRY(ql_cuda_swiglu(be->s16, be->gu, be->gu + F, 2 * F, T, F, st));
        QL_TRY(gemm(be, L->wd, E, F, be->s16, F, be->delta, E, T));
    }
    if (sh->n_rows > 0) {
        /* the final norm over every row (cheap), then the logits rows gathered: f16 → f32 →
         * f16 is exact */
        QL_TRY(ql_cuda_rmsnorm_residual(be->x, sh->n_layers > 0 ? be->delta : NULL, be->out_norm,
                                        be->h16, NULL, T, E, be->hp.rms_eps, st));
        QL_TRY(ql_cuda_embed_get_rows(be->lx32, be->h16, T, E, be->d.rows, sh->n_rows, st));
        QL_TRY(ql_cuda_f32_to_f16(be->l16, be->lx32, (int64_t)sh->n_rows * E, st));
        QL_TRY(gemm(be, be->out_w, be->V, E, be->l16, E, be->logits, be->V, sh->n_rows));
    }
    QL_CU(cudaGetLastError());
    return 0;
}

/* ---- graphs ---- */

/* Runs the step eagerly, or from its graph (captured on first use). */
static int launch_step(cuda_backend_t *be, const step_shape_t *sh) {
    const int bucket = sh->bucket, cbucket = sh->cbucket;
    if (bucket < 0 || !be->graphs_on) return enqueue_step(be, sh);
    cudaGraphExec_t *slot = &be->graphs[bucket][cbucket];
    if (!*slot && !be->graph_warm[bucket][cbucket]) {
        /* NOTE(graph-warm-up): the first step of a shape runs eagerly (the same bits), so that
         * the kernels and cuBLAS's choices are loaded before anything is captured */
        be->graph_warm[bucket][cbucket] = 1;
        return enqueue_step(be, sh);
    }
    if (!*slot) {
        cudaGraph_t g = NULL;
        QL_CU(cudaStreamBeginCapture(be->stream, cudaStreamCaptureModeThreadLocal));
        int rc = enqueue_step(be, sh);
        cudaError_t e = cudaStreamEndCapture(be->stream, &g);
        cudaGraphExec_t ex = NULL;
        if (rc == 0 && e == cudaSuccess) e = cudaGraphInstantiate(&ex, g, 0);
        if (g) (void)cudaGraphDestroy(g);
        if (rc != 0 || e != cudaSuccess) {
            /* NOTE(graphs): a capture that fails is not a device fault: run eagerly for good */
            QL_LOG_WARN("CUDA graph capture failed (%s): decode steps run eagerly from now on",
                        rc ? ql_strerror(rc) : cudaGetErrorString(e));
            (void)cudaGetLastError();
            be->graphs_on = 0;
            return enqueue_step(be, sh);
        }
        *slot = ex;
        QL_LOG_DEBUG("captured the decode graph for %d tokens, positions < %d", sh->n_tok,
                     sh->max_pos + 1);
    }
    QL_CU(cudaGraphLaunch(*slot, be->stream));
    return 0;
}

/* ---- forward ---- */

/* Fills the step record (cuda/step.c), picks the launch shape, copies the record to the
 * device in one transfer. */
static int prepare_step(cuda_backend_t *be, const ql_batch_t *b, step_shape_t *sh) {
    const ql_kv_layout_t *kv = &be->base.info.kv;
    const size_t tables_offset = (size_t)((uint8_t *)be->h.block_tables - (uint8_t *)be->step_host);
    if (ql__cuda_step_fill(b, (int32_t)be->V, (int32_t)be->hp.n_layer, be->n_buckets, be->n_ctx,
                           be->MB, kv->block_size, &be->h, tables_offset, sh) != 0) {
        QL_LOG_DEBUG("bad batch: a token id out of the vocabulary");
        return QL_EINVAL;
    }
    QL_CU(cudaMemcpyAsync(be->step_dev, be->step_host, sh->bytes, cudaMemcpyHostToDevice,
                          be->stream));
    return 0;
}

/* NOTE(fault-injection): with QL_CUDA_TEST_TRAP_AFTER=N in the environment, the step after
 * the first N starts with a kernel that executes a trap instruction: a real device fault
 * (the context is lost, every later CUDA call fails), so the tests see what a fault does to
 * the backend, the engine and `quill serve`. Nothing else reads it. */
static __global__ void trap_kernel(void) {
    __trap();
}

static int maybe_trap(cuda_backend_t *be) {
    if (be->trap_after < 0 || be->trap_after-- > 0) return 0;
    QL_LOG_WARN("QL_CUDA_TEST_TRAP_AFTER: a device fault now (a test)");
    trap_kernel<<<1, 1, 0, be->stream>>>();
    QL_CU(cudaGetLastError());
    return 0;
}

static int fault(cuda_backend_t *be, int rc) {
    if (rc == QL_ECUDA || rc == QL_EINTERNAL) {
        if (!be->faulted) QL_LOG_ERROR("CUDA backend faulted: every later step fails");
        be->faulted = 1;
        return QL_ECUDA;
    }
    return rc;
}

static int check_batch(cuda_backend_t *be, const ql_batch_t *b) {
    char err[160];
    if (ql_batch_validate(b, &be->base.info, err, sizeof(err)) != 0) {
        QL_LOG_DEBUG("bad batch: %s", err);
        return QL_EINVAL;
    }
    return 0;
}

/* Everything up to the logits on the device; the caller waits. */
static int run_step(cuda_backend_t *be, const ql_batch_t *b) {
    step_shape_t sh;
    int rc = maybe_trap(be);
    if (rc == 0) rc = prepare_step(be, b, &sh);
    if (rc) return rc; /* QL_EINVAL from here means nothing was queued */
    rc = launch_step(be, &sh);
    if (rc != 0 && rc != QL_ECUDA) {
        /* NOTE(launch-refused): a kernel wrapper or gemm() refusing its arguments after
         * prepare_step accepted the batch is a bug, and part of the step (the step record's
         * copy from pinned memory, some kernels) may already be queued: let it drain before
         * anything reuses those buffers, and fault the backend. */
        QL_LOG_ERROR("step launch refused its own arguments (%s)", ql_strerror(rc));
        (void)wait_stream(be);
        return QL_EINTERNAL;
    }
    return rc;
}

static int cuda_forward(ql_backend_t *base, const ql_batch_t *b, float *logits) {
    cuda_backend_t *be = (cuda_backend_t *)base;
    if (be->faulted) return QL_ECUDA;
    int rc = check_batch(be, b);
    if (rc) return rc;
    if (b->n_logits > 0 && !logits) return QL_EINVAL;
    if (cudaSetDevice(be->device) != cudaSuccess) return fault(be, QL_ECUDA);
    rc = run_step(be, b);
    if (rc == QL_EINVAL) return rc; /* nothing was queued */
    const size_t bytes = (size_t)b->n_logits * (size_t)be->V * sizeof(float);
    if (rc == 0 && bytes) {
        cudaError_t e =
            cudaMemcpyAsync(be->logits_host, be->logits, bytes, cudaMemcpyDeviceToHost, be->stream);
        if (e != cudaSuccess) {
            QL_LOG_ERROR("logits download: %s", cudaGetErrorString(e));
            rc = QL_ECUDA;
        }
    }
    if (rc == 0) rc = wait_stream(be);
    if (rc) return fault(be, rc);
    if (bytes) memcpy(logits, be->logits_host, bytes);
    return 0;
}

static int cuda_forward_sample(ql_backend_t *base, const ql_batch_t *b,
                               const ql_backend_sampling_t *s, int32_t *tokens_out) {
    cuda_backend_t *be = (cuda_backend_t *)base;
    if (be->faulted) return QL_ECUDA;
    int rc = check_batch(be, b);
    if (rc) return rc;
    const int32_t n = b->n_logits;
    if (n > 0 && (!s || !s->temperature || !tokens_out)) return QL_EINVAL;
    if (n > 0 && !be->sample_work) return QL_EUNSUPPORTED; /* sized out at init */
    for (int32_t i = 0; i < n; i++) {
        const float temp = s->temperature[i];
        const float top_p = s->top_p ? s->top_p[i] : 1.0f;
        const float min_p = s->min_p ? s->min_p[i] : 0.0f;
        const int32_t top_k = s->top_k ? s->top_k[i] : 0;
        if (!(temp >= 0.0f) || !(top_p > 0.0f && top_p <= 1.0f) ||
            !(min_p >= 0.0f && min_p <= 1.0f) || top_k < 0 || (temp > 0.0f && !s->seed))
            return QL_EINVAL;
        be->sp_host[i] = ql_cuda_sample_params_t{temp, top_k, top_p, min_p, 1.0f, 0.0f, 0.0f, 0};
        be->rng_host[i] = s->seed ? s->seed[i] : 0;
    }
    if (cudaSetDevice(be->device) != cudaSuccess) return fault(be, QL_ECUDA);
    rc = run_step(be, b);
    if (rc == QL_EINVAL) return rc;
    if (rc == 0 && n > 0) {
        cudaError_t e = cudaMemcpyAsync(be->sparams, be->sp_host, sizeof(*be->sp_host) * (size_t)n,
                                        cudaMemcpyHostToDevice, be->stream);
        if (e == cudaSuccess)
            e = cudaMemcpyAsync(be->rng, be->rng_host, sizeof(uint64_t) * (size_t)n,
                                cudaMemcpyHostToDevice, be->stream);
        if (e != cudaSuccess) {
            QL_LOG_ERROR("sampling parameters upload: %s", cudaGetErrorString(e));
            rc = QL_ECUDA;
        }
    }
    if (rc == 0 && n > 0) {
        ql_cuda_sample_args_t a;
        memset(&a, 0, sizeof(a));
        a.logits = be->logits;
        a.n_rows = n;
        a.n_vocab = (int32_t)be->V;
        a.params = be->sparams;
        a.rng = be->rng;
        a.work = be->sample_work;
        a.work_bytes = be->sample_work_bytes;
        rc = ql_cuda_sample_rows(&a, be->sampled, be->stream);
        if (rc == 0) {
            cudaError_t e =
                cudaMemcpyAsync(be->sampled_host, be->sampled, sizeof(int32_t) * (size_t)n,
                                cudaMemcpyDeviceToHost, be->stream);
            if (e != cudaSuccess) {
                QL_LOG_ERROR("sampled tokens download: %s", cudaGetErrorString(e));
                rc = QL_ECUDA;
            }
        }
    }
    if (rc == 0) rc = wait_stream(be);
    if (rc) return fault(be, rc);
    for (int32_t i = 0; i < n; i++) {
        const int32_t tok = be->sampled_host[i];
        if (tok == QL_CUDA_SAMPLE_NONE) return QL_ERANGE;
        if (tok < 0 || tok >= be->V) return QL_EINTERNAL; /* NaN logits */
        tokens_out[i] = tok;
    }
    return 0;
}

static int cuda_copy_blocks(ql_backend_t *base, const int32_t *src, const int32_t *dst, int32_t n) {
    cuda_backend_t *be = (cuda_backend_t *)base;
    const ql_kv_layout_t *kv = &base->info.kv;
    if (n < 0 || (n > 0 && (!src || !dst))) return QL_EINVAL;
    int rc = 0;
    /* every id in range before any mark: an early return must not leave marks behind (a
     * stale mark would refuse a later, valid copy into that block as "a dst that is a src") */
    for (int32_t i = 0; i < n; i++)
        if (src[i] < 0 || src[i] >= kv->n_blocks || dst[i] < 0 || dst[i] >= kv->n_blocks)
            return QL_EINVAL;
    for (int32_t i = 0; i < n; i++) be->block_mark[src[i]] = 1;
    for (int32_t i = 0; i < n && rc == 0; i++)
        if (be->block_mark[dst[i]]) rc = QL_EINVAL; /* a dst that is also a src */
    for (int32_t i = 0; i < n; i++) be->block_mark[src[i]] = 0;
    if (rc || n == 0) return rc;
    if (be->faulted) return QL_ECUDA;
    if (cudaSetDevice(be->device) != cudaSuccess) return fault(be, QL_ECUDA);
    const size_t blk = (size_t)kv->n_kv_head * kv->block_size * kv->head_dim * sizeof(uint16_t);
    for (int64_t l = 0; l < 2 * (int64_t)kv->n_layer && rc == 0; l++) {
        uint8_t *pool = (uint8_t *)(be->kv + l * be->kv_layer_elems);
        for (int32_t i = 0; i < n; i++) {
            cudaError_t e =
                cudaMemcpyAsync(pool + (size_t)dst[i] * blk, pool + (size_t)src[i] * blk, blk,
                                cudaMemcpyDeviceToDevice, be->stream);
            if (e != cudaSuccess) {
                QL_LOG_ERROR("KV block copy: %s", cudaGetErrorString(e));
                rc = QL_ECUDA;
                break;
            }
        }
    }
    if (rc == 0) rc = wait_stream(be);
    return rc ? fault(be, rc) : 0;
}

static void cuda_free(ql_backend_t *base) {
    cuda_backend_t *be = (cuda_backend_t *)base;
    if (!be) return;
    if (!be->hung) {
        (void)cudaSetDevice(be->device);
        for (int i = 0; i < QL_CUDA_N_BUCKETS; i++)
            for (int j = 0; j < QL_CUDA_N_CTX_BUCKETS; j++)
                if (be->graphs[i][j]) (void)cudaGraphExecDestroy(be->graphs[i][j]);
        if (be->have_cublas) (void)cublasDestroy(be->cublas);
        if (be->have_event) (void)cudaEventDestroy(be->done);
        if (be->have_stream) (void)cudaStreamDestroy(be->stream);
        if (be->dmem) (void)cudaFree(be->dmem);
        if (be->step_host) (void)cudaFreeHost(be->step_host); /* with the logits rows */
        (void)cudaGetLastError();
    }
    free(be->layers);
    free(be->block_mark);
    ql_weights_free(&be->wt);
    free(be);
}

static const ql_backend_ops_t cuda_ops = {
    cuda_forward,
    cuda_copy_blocks,
    cuda_forward_sample,
    cuda_free,
};

/* ---- init: sizes ---- */

/* Offsets of every device buffer in one allocation (STYLE §5), 256-byte aligned. */
typedef struct carve_s {
    size_t off;
} carve_t;
static size_t carve(carve_t *c, size_t bytes) {
    size_t at = c->off;
    c->off += (bytes + 255) & ~(size_t)255;
    return at;
}

/* The attention scratch the largest one-token-per-block split plan of any step can ask for
 * (every step's context bound is rounded up to a power of two, or n_ctx, so this visits
 * every such plan). Plans over runs of tokens are bounded by ql_cuda_attn_work_bytes_max(),
 * and the backend allocates the larger of the two. */
static size_t attn_work_max(const cuda_backend_t *be) {
    size_t m = 0;
    for (int32_t n = 1; n <= be->T; n++) {
        for (int k = 0; k < QL_CUDA_N_CTX_BUCKETS; k++) {
            int32_t bound;
            int64_t p = ((int64_t)1 << k) - 1;
            if (p > be->n_ctx - 1) p = be->n_ctx - 1;
            (void)ql__cuda_ctx_bucket((int32_t)p, be->n_ctx, &bound);
            ql_cuda_attn_plan_t plan;
            if (ql_cuda_attn_plan(n, (int32_t)be->hp.n_head, (int32_t)be->hp.n_head_kv, bound,
                                  be->n_sm, &plan) == 0)
                m = QL_MAX(
                    m, ql_cuda_attn_work_bytes(&plan, n, (int32_t)be->hp.n_head, (int32_t)be->HD));
            if (p == be->n_ctx - 1) break;
        }
    }
    return m;
}

/* ---- init: weights ---- */

typedef struct uploader_s {
    cuda_backend_t *be;
    uint16_t *stage[2]; /* pinned, QL_CUDA_STAGE_BYTES each */
    cudaEvent_t ev[2];
    int have_ev[2];
    int next;
    int n_threads;
} uploader_t;

/* Converts tensor t (n_out rows of n_in) to f16 and copies it to dst, a slice of rows at a
 * time through the two staging buffers (the conversion of one overlaps the copy of the
 * other). */
static int upload_matrix(uploader_t *u, const ql_gguf_tensor_t *t, uint16_t *dst, char *err,
                         size_t errlen) {
    const int64_t n_in = t->ne[0], n_out = t->ne[1];
    const int64_t rows = QL_MAX((int64_t)1, (int64_t)(QL_CUDA_STAGE_BYTES / 2 / (size_t)n_in));
    if ((size_t)n_in * 2 > QL_CUDA_STAGE_BYTES) {
        ql_errf(err, errlen, "tensor %.*s: rows of %lld elements are too long", (int)t->name.len,
                t->name.ptr, (long long)n_in);
        return QL_EUNSUPPORTED;
    }
    for (int64_t r0 = 0; r0 < n_out; r0 += rows) {
        const int64_t r1 = QL_MIN(n_out, r0 + rows);
        const int i = u->next;
        u->next ^= 1;
        QL_CU(cudaEventSynchronize(u->ev[i])); /* the previous copy out of this buffer */
        int64_t bad = -1;
        int rc =
            ql__cuda_rows_to_f16(t->type, t->data, n_in, r0, r1, u->stage[i], u->n_threads, &bad);
        if (rc) {
            const char *tn = ql_dtype_name(t->type);
            if (rc == QL_ERANGE)
                ql_errf(err, errlen, "tensor %.*s: row %lld holds a value f16 cannot hold",
                        (int)t->name.len, t->name.ptr, (long long)bad);
            else
                ql_errf(err, errlen, "tensor %.*s (%s): cannot convert to f16: %s",
                        (int)t->name.len, t->name.ptr, tn ? tn : "?", ql_strerror(rc));
            return rc == QL_EINVAL ? QL_EUNSUPPORTED : rc;
        }
        QL_CU(cudaMemcpyAsync(dst + r0 * n_in, u->stage[i], (size_t)(r1 - r0) * (size_t)n_in * 2,
                              cudaMemcpyHostToDevice, u->be->stream));
        QL_CU(cudaEventRecord(u->ev[i], u->be->stream));
    }
    return 0;
}

/* An f32 vector (norm, bias, rope factors) as stored. */
static int upload_f32(cuda_backend_t *be, const ql_gguf_tensor_t *t, float *dst, int64_t n) {
    if (!t) return 0;
    QL_ASSERT(t->type == QL_DTYPE_F32 && t->size == (uint64_t)n * sizeof(float));
    QL_CU(cudaMemcpyAsync(dst, t->data, (size_t)n * sizeof(float), cudaMemcpyHostToDevice,
                          be->stream));
    QL_CU(cudaStreamSynchronize(be->stream)); /* the source is pageable: keep it simple */
    return 0;
}

static int upload_weights(cuda_backend_t *be, char *err, size_t errlen) {
    uploader_t u;
    memset(&u, 0, sizeof(u));
    u.be = be;
    u.n_threads = ql__cuda_convert_threads();
    int rc = 0;
    for (int i = 0; i < 2; i++) {
        if (cudaMallocHost((void **)&u.stage[i], QL_CUDA_STAGE_BYTES) != cudaSuccess) {
            u.stage[i] = NULL;
            ql_errf(err, errlen, "cannot allocate %zu MiB of pinned host memory",
                    QL_CUDA_STAGE_BYTES >> 20);
            rc = QL_ENOMEM;
            goto done;
        }
        if (cudaEventCreateWithFlags(&u.ev[i], cudaEventDisableTiming) != cudaSuccess) {
            rc = QL_ECUDA;
            goto done;
        }
        u.have_ev[i] = 1;
        if (cudaEventRecord(u.ev[i], be->stream) != cudaSuccess) {
            rc = QL_ECUDA;
            goto done;
        }
    }
    {
        const ql_weights_t *w = &be->wt;
        const int64_t E = be->E, QD = be->QD, KVD = be->KVD, F = be->F;
#define UP(t, d)                                                                                   \
    do {                                                                                           \
        if ((rc = upload_matrix(&u, (t), (d), err, errlen)) != 0) goto done;                       \
    } while (0)
        UP(w->token_embd, be->tok_embd);
        if (w->output) UP(w->output, be->out_w);
        for (uint32_t l = 0; l < be->hp.n_layer; l++) {
            const ql_layer_weights_t *lw = &w->layers[l];
            cuda_layer_t *L = &be->layers[l];
            UP(lw->attn_q, L->wqkv);
            UP(lw->attn_k, L->wqkv + QD * E);
            UP(lw->attn_v, L->wqkv + (QD + KVD) * E);
            UP(lw->attn_output, L->wo);
            UP(lw->ffn_gate, L->wgu);
            UP(lw->ffn_up, L->wgu + F * E);
            UP(lw->ffn_down, L->wd);
            if ((rc = upload_f32(be, lw->attn_norm, L->attn_norm, E)) ||
                (rc = upload_f32(be, lw->ffn_norm, L->ffn_norm, E)))
                goto done;
            if (L->bqkv && ((rc = upload_f32(be, lw->attn_q_bias, L->bqkv, QD)) ||
                            (rc = upload_f32(be, lw->attn_k_bias, L->bqkv + QD, KVD)) ||
                            (rc = upload_f32(be, lw->attn_v_bias, L->bqkv + QD + KVD, KVD))))
                goto done;
        }
#undef UP
        if ((rc = upload_f32(be, w->output_norm, be->out_norm, E))) goto done;
        if (w->rope_freqs && (rc = upload_f32(be, w->rope_freqs, be->rope_freqs, be->HD / 2)))
            goto done;
    }
    if (cudaStreamSynchronize(be->stream) != cudaSuccess) rc = QL_ECUDA;
done:
    if (rc == QL_ECUDA && err && !err[0])
        ql_errf(err, errlen, "CUDA error while uploading weights");
    for (int i = 0; i < 2; i++) {
        if (u.have_ev[i]) {
            (void)cudaEventSynchronize(u.ev[i]);
            (void)cudaEventDestroy(u.ev[i]);
        }
        if (u.stage[i]) (void)cudaFreeHost(u.stage[i]);
    }
    return rc;
}

/* ---- init ---- */

static double env_double(const char *name, double dflt) {
    const char *v = getenv(name);
    if (!v || !*v) return dflt;
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    return (errno || *end) ? dflt : d;
}

static int cuda_available(void) {
    return ql_cuda_device_count() > 0;
}

#define GIB(x) ((double)(x) / (1024.0 * 1024.0 * 1024.0))

/* Creates the stream, the cuBLAS handle and the event. */
static int init_device(cuda_backend_t *be) {
    QL_CU(cudaSetDevice(be->device));
    QL_CU(cudaDeviceGetAttribute(&be->n_sm, cudaDevAttrMultiProcessorCount, be->device));
    QL_CU(cudaStreamCreateWithFlags(&be->stream, cudaStreamNonBlocking));
    be->have_stream = 1;
    QL_CU(cudaEventCreateWithFlags(&be->done, cudaEventDisableTiming));
    be->have_event = 1;
    QL_CUBLAS(cublasCreate(&be->cublas));
    be->have_cublas = 1;
    QL_CUBLAS(cublasSetStream(be->cublas, be->stream));
    return 0;
}

extern "C" int ql_cuda_backend_init(const ql_gguf_t *g, const ql_backend_params_t *p,
                                    ql_backend_t **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!g || !p || !out) return QL_EINVAL;
    *out = NULL;
    if (ql_cuda_device_count() <= 0) {
        ql_errf(err, errlen, "no CUDA device found on this machine");
        return QL_EUNSUPPORTED;
    }
    cuda_backend_t *be = (cuda_backend_t *)calloc(1, sizeof(*be));
    if (!be) return QL_ENOMEM;
    be->base.ops = &cuda_ops;
    int rc = ql_hparams_read(g, &be->hp, err, errlen);
    if (rc) goto fail;
    rc = ql_weights_init(g, &be->hp, &be->wt, err, errlen);
    if (rc) goto fail;
    {
        const ql_hparams_t *hp = &be->hp;
        if (hp->rope_scaling == QL_ROPE_SCALING_YARN || hp->rope_attn_factor != 1.0f) {
            ql_errf(err, errlen, "YaRN RoPE scaling and rope attn_factor are not supported by the CUDA backend");
            rc = QL_EUNSUPPORTED;
            goto fail;
        }
        /* NOTE(cuda-qk-norm): qwen3's per-head q/k RMSNorm has no kernel here yet (one that
         * could not be run against the CPU reference on a device would be a guess); with
         * --backend auto the server then loads the model on the CPU backend. */
        if (hp->has_qk_norm) {
            ql_errf(err, errlen, "the per-head q/k RMSNorm of %s is not supported by the CUDA backend",
                    hp->arch_name);
            rc = QL_EUNSUPPORTED;
            goto fail;
        }
        if (hp->n_head_kv == 0 || hp->n_head % hp->n_head_kv || hp->head_dim % 2 ||
            !ql_cuda_attn_head_dim_supported((int32_t)hp->head_dim)) {
            ql_errf(err, errlen,
                    "attention shape (%u heads, %u KV heads, head_dim %u) not supported by the "
                    "CUDA kernels",
                    hp->n_head, hp->n_head_kv, hp->head_dim);
            rc = QL_EUNSUPPORTED;
            goto fail;
        }
        be->E = hp->n_embd;
        be->HD = hp->head_dim;
        be->QD = (int64_t)hp->n_head * hp->head_dim;
        be->KVD = (int64_t)hp->n_head_kv * hp->head_dim;
        be->QKVD = be->QD + 2 * be->KVD;
        be->F = hp->n_ff;
        const ql_gguf_tensor_t *head = be->wt.output ? be->wt.output : be->wt.token_embd;
        be->V = head->ne[1];
        if (be->V != (int64_t)hp->n_vocab || be->wt.token_embd->ne[1] != be->V) {
            ql_errf(err, errlen, "output head has %lld rows, vocabulary %u", (long long)be->V,
                    hp->n_vocab);
            rc = QL_EFORMAT;
            goto fail;
        }
        be->attn_scale = 1.0f / sqrtf((float)hp->head_dim);

        /* parameters, as the CPU backend reads them */
        const int32_t block_size = p->block_size > 0 ? p->block_size : 16;
        be->T = p->n_batch_tokens_max > 0 ? p->n_batch_tokens_max : 512;
        be->S = p->n_seqs_max > 0 ? p->n_seqs_max : 64;
        be->L = p->n_logits_max > 0 ? p->n_logits_max : be->T;
        int64_t n_ctx = p->n_ctx_max > 0 ? p->n_ctx_max : (int64_t)hp->n_ctx_train;
        if (n_ctx <= 0 || n_ctx > INT32_MAX / 2) n_ctx = 4096;
        be->n_ctx = (int32_t)n_ctx;
        const double util = p->gpu_memory_utilization > 0 ? p->gpu_memory_utilization : 0.9;
        if (block_size > 4096 || be->T > (1 << 20) || be->S > (1 << 20) || be->L > (1 << 20) ||
            !(util > 0.0 && util <= 1.0)) {
            ql_errf(err, errlen, "backend parameters out of range");
            rc = QL_EINVAL;
            goto fail;
        }
        be->MB = (int32_t)((n_ctx + block_size - 1) / block_size);
        be->n_buckets = 0;
        while (be->n_buckets < QL_CUDA_N_BUCKETS &&
               (1 << be->n_buckets) <= QL_MIN(be->T, QL_MIN(be->S, be->L)))
            be->n_buckets++;
        const char *gv = getenv("QL_CUDA_GRAPHS");
        be->graphs_on = !(gv && strcmp(gv, "0") == 0);
        be->step_timeout_ns = (uint64_t)(env_double("QL_CUDA_STEP_TIMEOUT_MS", 120000.0) * 1e6);
        be->trap_after = (long)env_double("QL_CUDA_TEST_TRAP_AFTER", -1.0);
        be->device = 0;
        if ((rc = init_device(be)) != 0) {
            ql_errf(err, errlen, "cannot set up CUDA device 0 (stream, cuBLAS)");
            goto fail;
        }
        be->rope.mode = hp->rope_layout == QL_ROPE_LAYOUT_HALVES ? 1 : 0;
        be->rope.n_rot = (int)hp->head_dim;
        be->rope.freq_base = hp->rope_freq_base;
        be->rope.freq_scale =
            hp->rope_scaling == QL_ROPE_SCALING_LINEAR && hp->rope_scaling_factor > 0
                ? 1.0f / hp->rope_scaling_factor
                : 1.0f;

        /* sizes: weights, then buffers (NOTE(f16-weights)) */
        const int64_t E = be->E, QKVD = be->QKVD, F = be->F, V = be->V, QD = be->QD;
        const size_t T = (size_t)be->T, L = (size_t)be->L, h2 = 2, f4 = 4;
        be->attn_work_bytes =
            QL_MAX(attn_work_max(be),
                   ql_cuda_attn_work_bytes_max(be->T, (int32_t)hp->n_head, (int32_t)hp->n_head_kv,
                                               (int32_t)hp->head_dim, be->n_ctx, be->n_sm));
        size_t sw = 0;
        rc = ql_cuda_sample_work_bytes(be->L, (int32_t)V, &sw);
        if (rc == QL_EINVAL) {
            /* more than INT32_MAX logits in one call (n_logits_max · n_vocab): the sort's
             * item count is an int. forward() needs none of it, so only device sampling goes
             * (forward_sample: QL_EUNSUPPORTED) instead of the whole backend */
            QL_LOG_WARN("device sampling off: %d rows of %lld logits exceed its sort's limit",
                        (int)be->L, (long long)V);
            rc = 0;
            sw = 0;
        } else if (rc != 0) {
            ql_errf(err, errlen, "device sampling cannot run %d rows of %lld", (int)be->L,
                    (long long)V);
            goto fail;
        }
        be->sample_work_bytes = sw;
        carve_t c = {0};
        const size_t o_embd = carve(&c, (size_t)V * E * h2);
        const size_t o_out = be->wt.output ? carve(&c, (size_t)V * E * h2) : o_embd;
        size_t *o_lay = (size_t *)calloc(hp->n_layer * 7u + 1u, sizeof(size_t));
        if (!o_lay) {
            rc = QL_ENOMEM;
            goto fail;
        }
        for (uint32_t l = 0; l < hp->n_layer; l++) {
            size_t *o = o_lay + 7u * l;
            o[0] = carve(&c, (size_t)QKVD * E * h2);
            o[1] = carve(&c, (size_t)E * QD * h2);
            o[2] = carve(&c, (size_t)2 * F * E * h2);
            o[3] = carve(&c, (size_t)E * F * h2);
            o[4] = carve(&c, (size_t)E * f4);
            o[5] = carve(&c, (size_t)E * f4);
            o[6] = hp->has_qkv_bias ? carve(&c, (size_t)QKVD * f4) : SIZE_MAX;
        }
        const size_t o_onorm = carve(&c, (size_t)E * f4);
        const size_t o_rf = be->wt.rope_freqs ? carve(&c, (size_t)be->HD / 2 * f4) : SIZE_MAX;
        const uint64_t weight_bytes = c.off;
        const size_t o_ones = carve(&c, T * f4);
        const size_t o_x = carve(&c, T * E * f4), o_delta = carve(&c, T * E * f4);
        const size_t o_qkv = carve(&c, T * QKVD * f4), o_gu = carve(&c, T * 2 * F * f4);
        const size_t o_h16 = carve(&c, T * E * h2), o_a16 = carve(&c, T * QD * h2);
        const size_t o_s16 = carve(&c, T * F * h2);
        const size_t o_lx = carve(&c, L * E * f4), o_l16 = carve(&c, L * E * h2);
        const size_t o_logits = carve(&c, L * V * f4);
        const size_t o_attw = carve(&c, be->attn_work_bytes);
        const size_t o_smpw = carve(&c, be->sample_work_bytes);
        const size_t o_cbw = carve(&c, QL_CUDA_CUBLAS_WS_BYTES);
        const size_t o_sp = carve(&c, L * sizeof(ql_cuda_sample_params_t));
        const size_t o_rng = carve(&c, L * 8), o_smp = carve(&c, L * 4);
        /* the step record: 4 arrays of T, rows [L], tables [S][MB] */
        carve_t sc = {0};
        const size_t s_tok = carve(&sc, T * 4), s_pos = carve(&sc, T * 4),
                     s_seq = carve(&sc, T * 4), s_slot = carve(&sc, T * 4),
                     s_rows = carve(&sc, L * 4),
                     s_bt = carve(&sc, (size_t)be->S * (size_t)be->MB * 4);
        be->step_bytes = sc.off;
        const size_t o_step = carve(&c, be->step_bytes);
        const uint64_t fixed_bytes = c.off;

        /* the KV pool: what the utilization leaves (NOTE(kv-reserve)) */
        ql_kv_layout_t kv = {(int32_t)hp->n_layer, (int32_t)hp->n_head_kv, (int32_t)hp->head_dim,
                             block_size, 0};
        const uint64_t block_bytes = ql_kv_block_bytes(&kv, 2);
        size_t fr = 0, tot = 0;
        if (cudaMemGetInfo(&fr, &tot) != cudaSuccess) {
            ql_errf(err, errlen, "cannot read the device's memory");
            rc = QL_ECUDA;
            free(o_lay);
            goto fail;
        }
        const double used = (double)(tot - fr);
        const double allowed = util * (double)tot - used - (double)QL_CUDA_RESERVE_BYTES;
        if ((double)fixed_bytes + (double)block_bytes > allowed) {
            ql_errf(err, errlen,
                    "the model does not fit on the device: it needs %.2f GiB (weights %.2f GiB "
                    "as f16, buffers %.2f GiB) plus KV blocks; %.2f GiB are allowed "
                    "(--gpu-memory-utilization %.2f of %.2f GiB, %.2f GiB already in use)",
                    GIB(fixed_bytes), GIB(weight_bytes), GIB(fixed_bytes - weight_bytes),
                    GIB(allowed > 0 ? allowed : 0), util, GIB(tot), GIB(used));
            rc = QL_ENOMEM;
            free(o_lay);
            goto fail;
        }
        /* NOTE(kv-budget): p->kv_cache_bytes (--kv-cache-mem) is the CPU backend's budget;
         * here the utilization decides */
        const uint64_t kv_budget = (uint64_t)(allowed - (double)fixed_bytes);
        uint64_t n_blocks = kv_budget / block_bytes;
        n_blocks = QL_MIN(n_blocks, (uint64_t)be->S * (uint64_t)be->MB); /* more is never used */
        n_blocks = QL_MIN(n_blocks, (uint64_t)(INT32_MAX / block_size)); /* int32 slots */
        if (n_blocks == 0) {
            ql_errf(err, errlen,
                    "KV cache budget of %llu bytes holds no block (one block is %llu bytes)",
                    (unsigned long long)kv_budget, (unsigned long long)block_bytes);
            rc = QL_EINVAL;
            free(o_lay);
            goto fail;
        }
        kv.n_blocks = (int32_t)n_blocks;
        be->kv_layer_elems = ql_kv_layer_elems(&kv);
        const uint64_t kv_bytes = n_blocks * block_bytes;
        const size_t o_kv = carve(&c, (size_t)kv_bytes);
        be->dmem_bytes = c.off;
        if (cudaMalloc(&be->dmem, be->dmem_bytes) != cudaSuccess) {
            (void)cudaGetLastError();
            be->dmem = NULL;
            ql_errf(err, errlen, "cannot allocate %.2f GiB of device memory", GIB(be->dmem_bytes));
            rc = QL_ENOMEM;
            free(o_lay);
            goto fail;
        }
        uint8_t *d = (uint8_t *)be->dmem;
        be->tok_embd = (uint16_t *)(d + o_embd);
        be->out_w = (uint16_t *)(d + o_out);
        be->layers = (cuda_layer_t *)calloc(hp->n_layer, sizeof(cuda_layer_t));
        be->block_mark = (uint8_t *)calloc((size_t)n_blocks, 1);
        if (!be->layers || !be->block_mark) {
            rc = QL_ENOMEM;
            free(o_lay);
            goto fail;
        }
        for (uint32_t l = 0; l < hp->n_layer; l++) {
            const size_t *o = o_lay + 7u * l;
            cuda_layer_t *Ly = &be->layers[l];
            Ly->wqkv = (uint16_t *)(d + o[0]);
            Ly->wo = (uint16_t *)(d + o[1]);
            Ly->wgu = (uint16_t *)(d + o[2]);
            Ly->wd = (uint16_t *)(d + o[3]);
            Ly->attn_norm = (float *)(d + o[4]);
            Ly->ffn_norm = (float *)(d + o[5]);
            Ly->bqkv = o[6] == SIZE_MAX ? NULL : (float *)(d + o[6]);
        }
        free(o_lay);
        be->out_norm = (float *)(d + o_onorm);
        be->rope_freqs = o_rf == SIZE_MAX ? NULL : (float *)(d + o_rf);
        be->rope.freq_factors = be->rope_freqs;
        be->ones = (float *)(d + o_ones);
        be->x = (float *)(d + o_x);
        be->delta = (float *)(d + o_delta);
        be->qkv = (float *)(d + o_qkv);
        be->gu = (float *)(d + o_gu);
        be->h16 = (uint16_t *)(d + o_h16);
        be->a16 = (uint16_t *)(d + o_a16);
        be->s16 = (uint16_t *)(d + o_s16);
        be->lx32 = (float *)(d + o_lx);
        be->l16 = (uint16_t *)(d + o_l16);
        be->logits = (float *)(d + o_logits);
        be->attn_work = be->attn_work_bytes ? d + o_attw : NULL;
        be->sample_work = be->sample_work_bytes ? d + o_smpw : NULL;
        be->cublas_ws = d + o_cbw;
        be->sparams = (ql_cuda_sample_params_t *)(d + o_sp);
        be->rng = (uint64_t *)(d + o_rng);
        be->sampled = (int32_t *)(d + o_smp);
        be->step_dev = d + o_step;
        be->kv = (uint16_t *)(d + o_kv);
        uint8_t *sd = (uint8_t *)be->step_dev;
        be->d =
            step_ptrs_t{(int32_t *)(sd + s_tok),  (int32_t *)(sd + s_pos),  (int32_t *)(sd + s_seq),
                        (int32_t *)(sd + s_slot), (int32_t *)(sd + s_rows), (int32_t *)(sd + s_bt)};

        /* pinned host memory: the step record, then the logits and sampling rows */
        const size_t hl = carve(&sc, L * (size_t)V * f4),
                     hsp = carve(&sc, L * sizeof(ql_cuda_sample_params_t)),
                     hrng = carve(&sc, L * 8), hsmp = carve(&sc, L * 4);
        if (cudaMallocHost(&be->step_host, sc.off) != cudaSuccess) {
            (void)cudaGetLastError();
            be->step_host = NULL;
            ql_errf(err, errlen, "cannot allocate %.1f MiB of pinned host memory",
                    (double)sc.off / 1048576.0);
            rc = QL_ENOMEM;
            goto fail;
        }
        uint8_t *hs = (uint8_t *)be->step_host;
        be->h =
            step_ptrs_t{(int32_t *)(hs + s_tok),  (int32_t *)(hs + s_pos),  (int32_t *)(hs + s_seq),
                        (int32_t *)(hs + s_slot), (int32_t *)(hs + s_rows), (int32_t *)(hs + s_bt)};
        be->logits_host = (float *)(hs + hl);
        be->sp_host = (ql_cuda_sample_params_t *)(hs + hsp);
        be->rng_host = (uint64_t *)(hs + hrng);
        be->sampled_host = (int32_t *)(hs + hsmp);

        /* cuBLAS on its own workspace, so graph capture never allocates */
        if (cublasSetWorkspace(be->cublas, be->cublas_ws, QL_CUDA_CUBLAS_WS_BYTES) !=
            CUBLAS_STATUS_SUCCESS) {
            ql_errf(err, errlen, "cuBLAS refused its workspace");
            rc = QL_ECUDA;
            goto fail;
        }
        /* constants; a zeroed KV pool (pads read it: finite values) */
        {
            float *ones = (float *)malloc(T * f4);
            if (!ones) {
                rc = QL_ENOMEM;
                goto fail;
            }
            for (size_t i = 0; i < T; i++) ones[i] = 1.0f;
            cudaError_t e = cudaMemcpy(be->ones, ones, T * f4, cudaMemcpyHostToDevice);
            free(ones);
            if (e == cudaSuccess) e = cudaMemsetAsync(be->kv, 0, (size_t)kv_bytes, be->stream);
            if (e == cudaSuccess) e = cudaMemsetAsync(be->step_dev, 0, be->step_bytes, be->stream);
            if (e != cudaSuccess) {
                ql_errf(err, errlen, "device set-up: %s", cudaGetErrorString(e));
                rc = QL_ECUDA;
                goto fail;
            }
        }
        memset(be->step_host, 0, be->step_bytes);
        if ((rc = upload_weights(be, err, errlen)) != 0) goto fail;

        ql_backend_info_t *info = &be->base.info;
        info->name = "cuda";
        info->n_vocab = (int32_t)hp->n_vocab;
        info->n_ctx_max = be->n_ctx;
        info->n_batch_tokens_max = be->T;
        info->n_seqs_max = be->S;
        info->n_logits_max = be->L;
        info->kv = kv;
        info->kv_block_bytes = block_bytes;
        info->kv_bytes = kv_bytes;
        info->weight_bytes = weight_bytes;
        char dev[256] = "";
        (void)ql_cuda_device_describe(be->device, dev, sizeof(dev));
        QL_LOG_INFO("cuda backend: %s; weights %.2f GiB (f16), KV %d blocks of %d tokens "
                    "(%.2f GiB), batch %d tokens, graphs %s",
                    dev, GIB(weight_bytes), (int)kv.n_blocks, (int)block_size, GIB(kv_bytes),
                    (int)be->T, be->graphs_on ? "on" : "off");
    }
    *out = &be->base;
    return 0;
fail:
    if (rc == QL_ECUDA && err && !err[0]) ql_errf(err, errlen, "CUDA error during set-up");
    cuda_free(&be->base);
    return rc;
}

extern "C" const ql_backend_desc_t ql_cuda_backend_desc = {"cuda", cuda_available,
                                                           ql_cuda_backend_init};
