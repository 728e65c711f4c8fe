/*
 * cpu/kernels-amx.c — the quantized matmul on Intel AMX (Sapphire Rapids and later) for
 * groups of 16 tokens; everything else of QL_CPU_ISA_AMX is the AVX512-VNNI path (same
 * 16-row panels, cpu/kernels-avx512vnni.c).
 *
 * NOTE(amx): per 32-block b of a 16-row panel, one TDPBSSD computes the 16 tokens × 16 rows
 * integer dot products Σ w_q·a_q (s8 × s8, exact in int32):
 *   A (16 rows × 32 bytes): the tokens' quantized activations of block b, loaded in place
 *                           (row stride n_in);
 *   B (8 rows × 64 bytes):  the panel's block as stored, which already is the VNNI layout
 *                           AMX wants (row i: 16 weight rows × k = 4i..4i+3): P8 panels load
 *                           in place, P4 panels are split into their low and high nibbles
 *                           (rows 0-3 and 4-7) in a scratch, NOTE(amx-unpack);
 *   C (16 rows × 64 bytes): row t = token t's 16 output rows, the lane layout of the VNNI
 *                           kernel's accumulators.
 * The tile is stored and each token's row takes the float steps of NOTE(bitwise) in
 * cpu/cpu-internal.h, in the same order: the results are the portable path's bits, and a
 * sequence's logits stay the same whether its tokens land in an AMX group or in the tail.
 * The VNNI kernel spends 8 vpdpbusd per token and block on the integer sums; here the
 * tile unit does them and the vector units keep only the float steps. Q4_1/Q5_1's min term
 * (an fma of m·s per block, independent of the integer sums) runs as a second pass, so the
 * 16 accumulators of each pass fit in registers (named variables, not an array: GCC kept
 * an array of 16 accumulators on the stack, a load and a store around every fma).
 *
 * NOTE(amx-fma-rate): for about 80 ns after any tile instruction, this core runs 512-bit
 * fma, mul and int→float conversion at half rate, while integer and float add/sub keep
 * theirs (scratch measurement: 16 × k independent fmas with one tilezero in the loop cost
 * 2× for small k and +40 ns for any k ≥ 32; vpaddd, vpandd, vaddps cost nothing extra).
 * The float steps all run in that window, so they convert isum with an integer add and a
 * float subtract (amx_i2f: exact, the same bits as vcvtdq2ps) and read each token's block
 * scales from the group's transposed copy ([block][token], NOTE(act-groups), written by the
 * quantizer) through one pointer. Transposing them here instead, at every call, cost 6% of
 * a decode step at batch 32, which calls this kernel once per chunk of panels. Splitting
 * the tile work and the float steps into separate phases, so that the fmas run outside the
 * window, was slower: the two phases then do not overlap at all.
 *
 * NOTE(amx-prefetch): the float steps of block b prefetch block b of the next panel into
 * L2, one panel ahead. The VNNI kernels' fixed QL__CPU_PREFETCH (4 KiB) points inside the
 * current panel once a panel is longer than that (n_in 1536: 15 KiB), at bytes the nibble
 * split has already read, so the split waited on DRAM: the split's loop had 19% of this
 * kernel's samples at batch 32 (bench-forward --tg 16 --batch 32), 13% after.
 *
 * Tokens past the last full group of 16, f16/f32 weights, and activations without their
 * group copy (a view that does not start at a group, NOTE(act-groups)) go to the VNNI kernel.
 * Linux hands out the tile state only on request (ARCH_REQ_XCOMP_PERM): cpu/features.c
 * asks once, and QL_CPU_ISA_AMX is supported only when that succeeded.
 */
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdlib.h>

#include "cpu/cpu-internal.h"

#define AATTR __attribute__((target("avx2,fma,f16c,avx512f,avx512vl,avx512bw,amx-tile,amx-int8")))
#define AINL static inline __attribute__((always_inline)) AATTR

#define AROWS 16        /* rows per panel = tokens per group = C tile rows */
#define ATOKEN_CHUNK 64 /* tokens whose activations stay in cache while panels stream by */
#define AMX_STACK_BLOCKS 128 /* 64 KiB of split panel on the stack */

/* Tile registers (literal numbers: the intrinsics paste them into the instruction): block j
 * of a group goes to C(j mod 4) from A/B(j mod 2), NOTE(amx-pipe). */
#define TC0 0
#define TC1 1
#define TC2 2
#define TC3 3
#define TA0 4
#define TA1 5
#define TB0 6
#define TB1 7

/* GCC's tile intrinsics are asm statements without a memory clobber: this keeps the
 * compiler from moving the B scratch's stores after a tile load, or the C tile's loads
 * before its store. */
#define AMX_MEM_BARRIER() __asm__ volatile("" ::: "memory")

typedef struct amx_cfg_s {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_cfg_t;

AINL void amx_config(void) {
    amx_cfg_t c;
    memset(&c, 0, sizeof(c));
    c.palette = 1;
    for (int t = TC0; t <= TC3; t++) c.rows[t] = 16, c.colsb[t] = 64;
    for (int t = TA0; t <= TA1; t++) c.rows[t] = 16, c.colsb[t] = QL_CPU_QK;
    for (int t = TB0; t <= TB1; t++) c.rows[t] = QL_CPU_QK / 4, c.colsb[t] = 64;
    _tile_loadconfig(&c);
}

/* A P4 block's B tile: its low nibbles (rows 0-3) and high nibbles (rows 4-7) in bt. */
AINL void amx_unpack4(const uint8_t *pb, uint8_t *bt) {
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int v = 0; v < 4; v++) {
        const __m512i wv = _mm512_loadu_si512((const void *)(pb + 64 * v));
        _mm512_store_si512((void *)(bt + 64 * v), _mm512_and_si512(wv, m4));
        _mm512_store_si512((void *)(bt + 64 * (4 + v)),
                           _mm512_and_si512(_mm512_srli_epi16(wv, 4), m4));
    }
}

/* (float)i for |i| < 2^22, bit for bit, on the ports NOTE(amx-fma-rate) leaves at full rate:
 * 0x4B400000 is 1.5·2^23, so the integer add lands i in the float's mantissa exactly and the
 * subtraction removes 1.5·2^23 exactly (|isum| <= 32·128·127 < 2^19 here). */
AINL __m512 amx_i2f(__m512i i) {
    const __m512 f = _mm512_castsi512_ps(_mm512_add_epi32(i, _mm512_set1_epi32(0x4B400000)));
    return _mm512_sub_ps(f, _mm512_set1_ps(12582912.0f));
}

#define AMX_REP16(X)                                                                               \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

/* One 16-row panel against one group of 16 tokens: y[t][0..nvalid). pb0: the panel, nb
 * blocks of bbytes (qbytes of quants, then the fp16 d and, with has_min, m); bsrc/bstride:
 * each block's B tile (the panel itself, or its nibble-split copy); qa: the group's first
 * token's quantized activations (row stride n_in); gd, gs, gsum: the group's d, s and sum
 * transposed, [nb][16]. corr and has_min are constants at each call, so each combination
 * compiles without the branches. */
AINL void amx_group(const uint8_t *pb0, int64_t qbytes, int64_t bbytes, const uint8_t *bsrc,
                    int64_t bstride, int64_t nb, const int corr, const int has_min,
                    const int8_t *qa, int64_t n_in, const float *gd, const float *gs,
                    const int32_t *gsum, float *y, int64_t ldy, int nvalid) {
    _Alignas(64) int32_t cb[4][AROWS * 16];
    const int64_t pf_dist = nb * bbytes; /* NOTE(amx-prefetch) */
#define AMX_DECL(t) __m512 f##t = _mm512_setzero_ps();
    AMX_REP16(AMX_DECL)
#undef AMX_DECL

/* C tile k (a literal, as the intrinsics want) := block bb's integer sums, from A/B tiles ab */
#define AMX_COMPUTE(k, ab, bb)                                                                     \
    do {                                                                                           \
        _tile_loadd(TB##ab, bsrc + (bb) * bstride, 64);                                            \
        _tile_loadd(TA##ab, qa + (bb) * QL_CPU_QK, n_in);                                          \
        _tile_zero(TC##k);                                                                         \
        _tile_dpbssd(TC##k, TA##ab, TB##ab);                                                       \
    } while (0)
/* C tile k into cb[k] */
#define AMX_STORE(k)                                                                               \
    do {                                                                                           \
        _tile_stored(TC##k, cb[k], 64);                                                            \
        AMX_MEM_BARRIER();                                                                         \
    } while (0)
/* token t's float step of the block whose sums are in cbk (NOTE(bitwise)) */
#define AMX_FSTEP(t)                                                                               \
    {                                                                                              \
        __m512i isum = _mm512_load_si512((const void *)(cbk + 16 * (t)));                          \
        if (corr) isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(corr * gsumb[t]));               \
        const __m512 scale = _mm512_mul_ps(dv, _mm512_set1_ps(gdb[t]));                            \
        f##t = _mm512_fmadd_ps(amx_i2f(isum), scale, f##t);                                        \
    }
/* the float steps of block bb from cb[k] */
#define AMX_FLOAT(k, bb)                                                                           \
    do {                                                                                           \
        const uint8_t *pbk = pb0 + (bb) * bbytes;                                                  \
        for (int64_t o = 0; o < bbytes; o += 64)                                                   \
            _mm_prefetch((const char *)(pbk + pf_dist + o), _MM_HINT_T1);                          \
        const __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(pbk + qbytes)));    \
        const int32_t *cbk = cb[k];                                                                \
        const float *gdb = gd + (bb) * AROWS;                                                      \
        const int32_t *gsumb = gsum + (bb) * AROWS;                                                \
        (void)gsumb;                                                                               \
        AMX_REP16(AMX_FSTEP)                                                                       \
    } while (0)

    /* NOTE(amx-pipe): block j's tiles are C(j mod 4), A/B(j mod 2). A tile store waits for
     * its product, and the float steps wait for the store: the tile unit runs three blocks
     * ahead of the float steps and stores each C one step after computing it. */
    if (nb > 0) AMX_COMPUTE(0, 0, 0);
    if (nb > 1) AMX_COMPUTE(1, 1, 1);
    if (nb > 0) AMX_STORE(0);
    if (nb > 2) AMX_COMPUTE(2, 0, 2);
    if (nb > 1) AMX_STORE(1);
    for (int64_t b = 0; b < nb; b += 4) {
        if (b + 3 < nb) AMX_COMPUTE(3, 1, b + 3);
        if (b + 2 < nb) AMX_STORE(2);
        AMX_FLOAT(0, b);
        if (b + 4 < nb) AMX_COMPUTE(0, 0, b + 4);
        if (b + 3 < nb) AMX_STORE(3);
        if (b + 1 < nb) AMX_FLOAT(1, b + 1);
        if (b + 5 < nb) AMX_COMPUTE(1, 1, b + 5);
        if (b + 4 < nb) AMX_STORE(0);
        if (b + 2 < nb) AMX_FLOAT(2, b + 2);
        if (b + 6 < nb) AMX_COMPUTE(2, 0, b + 6);
        if (b + 5 < nb) AMX_STORE(1);
        if (b + 3 < nb) AMX_FLOAT(3, b + 3);
    }
#undef AMX_COMPUTE
#undef AMX_STORE
#undef AMX_FSTEP
#undef AMX_FLOAT

    /* y = acc + macc, as NOTE(bitwise) adds them (macc = +0 without a min term) */
#define AMX_DECLM(t) __m512 m##t = _mm512_setzero_ps();
    AMX_REP16(AMX_DECLM)
#undef AMX_DECLM
    if (has_min) {
        const uint8_t *pbk = pb0 + qbytes + 32;
        for (int64_t bb = 0; bb < nb; bb++, pbk += bbytes) {
            const __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)pbk));
            const float *gsb = gs + bb * AROWS;
#define AMX_MSTEP(t) m##t = _mm512_fmadd_ps(mv, _mm512_set1_ps(gsb[t]), m##t);
            AMX_REP16(AMX_MSTEP)
#undef AMX_MSTEP
        }
    }
    const __mmask16 mask = (__mmask16)((1u << nvalid) - 1u);
#define AMX_OUT(t)                                                                                 \
    {                                                                                              \
        const __m512 o = _mm512_add_ps(f##t, m##t);                                                \
        if (nvalid == AROWS)                                                                       \
            _mm512_storeu_ps(y + (t) * ldy, o);                                                    \
        else                                                                                       \
            _mm512_mask_storeu_ps(y + (t) * ldy, mask, o);                                         \
    }
    AMX_REP16(AMX_OUT)
#undef AMX_OUT
}

AATTR void ql__cpu_mm_panels_amx(const ql__cpu_mm_args_t *a) {
    const ql_cpu_weight_t *w = a->w;
    const ql_cpu_act_t *x = a->x;
    const int kt = w->_ktype;
    const int64_t n16 = x->n_tok / AROWS * AROWS;
    if (kt == QL_DTYPE_F32 || kt == QL_DTYPE_F16 || n16 == 0 || !x->g) {
        ql__cpu_mm_panels_avx512vnni(a);
        return;
    }
    QL_ASSERT(w->_panel_rows == AROWS);
    const int64_t n_in = w->n_in, nb = n_in / QL_CPU_QK;
    const int p4 = w->_pack == QL_CPU_PACK_P4, has_min = ql__cpu_type_has_min(kt);
    const int64_t qbytes = p4 ? 256 : 512, bbytes = (int64_t)w->_panel_bytes / nb;
    const int corr = ql__cpu_type_offset(kt); /* s8 × s8: no +128 bias for P8S */
    QL_ASSERT(!(corr && has_min)); /* no type has both: amx_group's three variants below */
    /* the split panel: on the stack up to AMX_STACK_BLOCKS blocks (n_in 4096), else the heap */
    _Alignas(64) uint8_t stack_scr[AMX_STACK_BLOCKS * 512];
    uint8_t *bscr = stack_scr, *heap = NULL;
    if (p4 && nb > AMX_STACK_BLOCKS) {
        if (posix_memalign((void **)&heap, 64, (size_t)nb * 512) != 0) {
            ql__cpu_mm_panels_avx512vnni(a); /* no scratch: the same bits, without tiles */
            return;
        }
        bscr = heap;
    }
    amx_config();
    for (int64_t tc = 0; tc < n16; tc += ATOKEN_CHUNK) {
        const int64_t tce = QL_MIN(n16, tc + ATOKEN_CHUNK);
        for (int64_t p = a->p0; p < a->p1; p++) {
            const uint8_t *pb = (const uint8_t *)w->_packed + (size_t)p * w->_panel_bytes;
            const int64_t row0 = p * AROWS;
            const int nvalid = (int)QL_MIN((int64_t)AROWS, w->n_out - row0);
            const uint8_t *bsrc = pb;
            int64_t bstride = bbytes;
            /* NOTE(amx-unpack): a tile load waits until the vector stores that wrote its
             * bytes have reached the cache (nothing forwards from the store buffer into a
             * tile). Splitting each P4 block just before its tile load stalled every block
             * (the AMX path then lost to VNNI); splitting the whole panel first, once for
             * all its token groups, leaves the stores long retired when the loads come. */
            if (p4) {
                for (int64_t b = 0; b < nb; b++) amx_unpack4(pb + b * bstride, bscr + b * 512);
                bsrc = bscr;
                bstride = 512;
                AMX_MEM_BARRIER();
            }
            for (int64_t g = tc; g < tce; g += AROWS) {
                const float *gd = x->g + g / AROWS * 3 * nb * AROWS, *gs = gd + nb * AROWS;
                const int32_t *gsum = (const int32_t *)(gs + nb * AROWS);
                const int8_t *qa = x->qs + g * n_in;
                float *yg = a->y + g * a->ldy + row0;
                if (has_min) /* Q4_1, Q5_1 */
                    amx_group(pb, qbytes, bbytes, bsrc, bstride, nb, 0, 1, qa, n_in, gd, gs, gsum,
                              yg, a->ldy, nvalid);
                else if (corr == 0) /* Q8_0, K-quants as Q8_0 */
                    amx_group(pb, qbytes, bbytes, bsrc, bstride, nb, 0, 0, qa, n_in, gd, gs, gsum,
                              yg, a->ldy, nvalid);
                else /* Q4_0, Q5_0 */
                    amx_group(pb, qbytes, bbytes, bsrc, bstride, nb, corr, 0, qa, n_in, gd, gs,
                              gsum, yg, a->ldy, nvalid);
            }
        }
    }
    _tile_release();
    free(heap);
    if (n16 == x->n_tok) return;
    /* the tail: a view of the last tokens for the VNNI kernel */
    ql_cpu_act_t tail;
    ql_cpu_act_view(&tail, x, n16, x->n_tok);
    ql__cpu_mm_args_t ta = *a;
    ta.x = &tail;
    ta.y = a->y + n16 * a->ldy;
    ql__cpu_mm_panels_avx512vnni(&ta);
}

#else
typedef int ql__cpu_kernels_amx_empty; /* ISO C forbids an empty translation unit */
#endif
