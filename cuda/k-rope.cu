/*
 * cuda/k-rope.cu — rotary position embedding, in place on the f32 q and k rows, in both
 * layouts of cpu/cpu.h (NORM: adjacent pairs; NEOX: halves). The reference is ql_cpu_rope.
 *
 * NOTE(rope-theta): the angle of pair i at position p is formed as the reference forms it,
 * θ = p · s^i by i repeated f32 multiplications with s = powf(base, −2/n_rot) computed on
 * the host (the same powf), then freq_scale · (θ / ff). So the angles are bit-identical;
 * only cosf/sinf differ from the host's (CUDA: 2 ulp over the full range, with a slow path
 * for large arguments); the rotation is rounded as the reference rounds it (no FMA).
 */
#include "cuda/k-common.cuh"

/* grid: 1-D grid-stride over n_tok · (n_head + n_kv_head) · n_rot/2 rotations; one thread
 * rotates one pair of one head of one token. */
static __global__ void rope_kernel(float *__restrict__ q, int64_t ldq, int n_head,
                                   float *__restrict__ k, int64_t ldk, int n_kv_head,
                                   int head_dim, const int32_t *__restrict__ pos, int64_t n_tok,
                                   int mode, int n_rot, float theta_scale, float freq_scale,
                                   const float *__restrict__ freq_factors) {
    const int half = n_rot / 2;
    const int heads = n_head + n_kv_head;
    const int64_t n = n_tok * heads * half;
    for (int64_t e = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        const int i = (int)(e % half);
        const int64_t th_idx = e / half;
        const int h = (int)(th_idx % heads);
        const int64_t t = th_idx / heads;
        float *xh = h < n_head ? q + t * ldq + (int64_t)h * head_dim
                               : k + t * ldk + (int64_t)(h - n_head) * head_dim;
        float theta = (float)pos[t];
        for (int j = 0; j < i; j++) theta *= theta_scale;
        const float ff = freq_factors ? freq_factors[i] : 1.0f;
        const float ang = freq_scale * (theta / ff);
        float s, c;
        sincosf(ang, &s, &c);
        float *a, *b;
        if (mode == 1) {
            a = xh + i;
            b = xh + i + half;
        } else {
            a = xh + 2 * i;
            b = xh + 2 * i + 1;
        }
        const float x0 = *a, x1 = *b;
        /* _rn: no FMA contraction, the reference's roundings */
        *a = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
        *b = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
    }
}

extern "C" int ql_cuda_rope(const ql_cuda_rope_params_t *p, float *q, int64_t ldq, int n_head,
                            float *k, int64_t ldk, int n_kv_head, int head_dim,
                            const int32_t *pos, int64_t n_tok, void *stream) {
    if (p == NULL || n_tok < 0 || n_head < 0 || n_kv_head < 0 || head_dim < 1) return QL_EINVAL;
    if (p->mode != 0 && p->mode != 1) return QL_EINVAL;
    if (p->n_rot < 0 || (p->n_rot & 1) || p->n_rot > head_dim) return QL_EINVAL;
    if (!(p->freq_base > 0.0f) || !isfinite(p->freq_scale)) return QL_EINVAL;
    if (n_head > 0 && (q == NULL || ldq < (int64_t)n_head * head_dim)) return QL_EINVAL;
    if (n_kv_head > 0 && (k == NULL || ldk < (int64_t)n_kv_head * head_dim)) return QL_EINVAL;
    if (n_tok == 0 || p->n_rot == 0 || n_head + n_kv_head == 0) return 0;
    if (pos == NULL) return QL_EINVAL;
    const float theta_scale = powf(p->freq_base, -2.0f / (float)p->n_rot);
    const int64_t n = n_tok * (n_head + n_kv_head) * (p->n_rot / 2);
    const int threads = 256;
    const int64_t blocks = QL_MIN(ql_k_ceil_div(n, threads), (int64_t)65536);
    rope_kernel<<<(unsigned)blocks, threads, 0, QL_K_STREAM(stream)>>>(
        q, ldq, n_head, k, ldk, n_kv_head, head_dim, pos, n_tok, p->mode, p->n_rot, theta_scale,
        p->freq_scale, p->freq_factors);
    QL_K_LAUNCH_CHECK();
    return 0;
}
