/*
 * tests/unit/cuda/test-step.c — the host half of a CUDA forward() (cuda/step.c): the step
 * record a batch becomes, decode batches padded to their graph bucket, the context bound and
 * the block table stride. Runs everywhere: no device needed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cuda/cuda-internal.h"

#define T 64
#define L 64
#define S 16
#define MB 64 /* n_ctx 1024 / block 16 */
#define BS 16
#define NCTX 1024
#define V 100
#define NL 4 /* layers */

typedef struct rec_s {
    int32_t tokens[T], pos[T], seq_of[T], slot[T], rows[L];
    int32_t tables[S * MB];
} rec_t;

static rec_t R;
static ql__cuda_step_rec_t views(void) {
    memset(&R, 0x7f, sizeof(R)); /* anything the fill does not write stays 0x7f7f7f7f */
    ql__cuda_step_rec_t v = {R.tokens, R.pos, R.seq_of, R.slot, R.rows, R.tables};
    return v;
}
#define UNTOUCHED 0x7f7f7f7f
#define TABLES_OFFSET offsetof(rec_t, tables)

static void test_ctx_bucket(void **state) {
    (void)state;
    int32_t b;
    assert_int_equal(ql__cuda_ctx_bucket(0, NCTX, &b), 8);
    assert_int_equal(b, 255); /* contexts up to 256 keys share the smallest bound */
    assert_int_equal(ql__cuda_ctx_bucket(255, NCTX, &b), 8);
    assert_int_equal(b, 255);
    assert_int_equal(ql__cuda_ctx_bucket(256, NCTX, &b), 9);
    assert_int_equal(b, 511);
    assert_int_equal(ql__cuda_ctx_bucket(700, NCTX, &b), 10);
    assert_int_equal(b, 1023);
    assert_int_equal(ql__cuda_ctx_bucket(600, 700, &b), 10);
    assert_int_equal(b, 699); /* capped at n_ctx - 1 */
    assert_int_equal(ql__cuda_ctx_bucket(10, 100, &b), 8);
    assert_int_equal(b, 99);
}

/* Three sequences decoding one token each: padded to the bucket of 4. */
static void test_decode_padded(void **state) {
    (void)state;
    int32_t t0[MB], t1[MB], t2[MB];
    for (int i = 0; i < MB; i++) t0[i] = 100 + i, t1[i] = 200 + i, t2[i] = 300 + i;
    const int32_t *tables[3] = {t0, t1, t2};
    const int32_t tokens[3] = {5, 6, 99}, pos[3] = {17, 0, 40}, seq_of[3] = {0, 1, 2};
    const int32_t n_blocks[3] = {2, 1, 3}, seq_len[3] = {18, 1, 41}, rows[3] = {0, 1, 2};
    ql_batch_t b = {3, tokens, pos, seq_of, 3, tables, n_blocks, seq_len, rows, 3, 0};
    ql__cuda_step_rec_t rec = views();
    ql__cuda_step_shape_t sh;
    assert_int_equal(ql__cuda_step_fill(&b, V, NL, 9, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh), 0);
    assert_int_equal(sh.bucket, 2);
    assert_int_equal(sh.n_tok, 4);
    assert_int_equal(sh.n_seqs, 4);
    assert_int_equal(sh.n_rows, 4);
    assert_int_equal(sh.cbucket, 8);
    assert_int_equal(sh.max_pos, 255);
    assert_int_equal(sh.stride, 16);
    assert_int_equal(sh.max_run, 1);
    assert_int_equal(sh.n_layers, NL);
    /* slots: block table[pos / 16] * 16 + pos % 16 */
    assert_int_equal(R.slot[0], 101 * BS + 1);
    assert_int_equal(R.slot[1], 200 * BS + 0);
    assert_int_equal(R.slot[2], 302 * BS + 8);
    /* the pad: token 0 at position 0 of sequence 0, no KV write, logits row 0 */
    assert_int_equal(R.tokens[3], 0);
    assert_int_equal(R.pos[3], 0);
    assert_int_equal(R.seq_of[3], 0);
    assert_int_equal(R.slot[3], -1);
    assert_int_equal(R.rows[3], 0);
    assert_int_equal(R.tokens[4], UNTOUCHED);
    /* tables: stride 16, n_blocks entries then zeros; the pad row all zeros */
    assert_int_equal(R.tables[0], 100);
    assert_int_equal(R.tables[1], 101);
    assert_int_equal(R.tables[2], 0);
    assert_int_equal(R.tables[16], 200);
    assert_int_equal(R.tables[17], 0);
    assert_int_equal(R.tables[32 + 2], 302);
    for (int i = 0; i < 16; i++) assert_int_equal(R.tables[48 + i], 0);
    assert_int_equal(R.tables[64], UNTOUCHED);
    assert_int_equal(sh.bytes, TABLES_OFFSET + 4 * 16 * sizeof(int32_t));

    /* with fewer buckets than it needs (a backend with 2 sequences at most) it is eager */
    rec = views();
    assert_int_equal(ql__cuda_step_fill(&b, V, NL, 2, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh), 0);
    assert_int_equal(sh.bucket, -1);
    assert_int_equal(sh.cbucket, -1);
    assert_int_equal(sh.n_tok, 3);
    assert_int_equal(R.tokens[3], UNTOUCHED);

    /* a layerskip draft (the first 2 layers) runs eagerly, unpadded; n_layers at or past the
     * model's, or 0, is every layer */
    b.n_layers = 2;
    rec = views();
    assert_int_equal(ql__cuda_step_fill(&b, V, NL, 9, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh), 0);
    assert_int_equal(sh.n_layers, 2);
    assert_int_equal(sh.bucket, -1);
    assert_int_equal(sh.n_tok, 3);
    b.n_layers = NL + 3;
    assert_int_equal(ql__cuda_step_fill(&b, V, NL, 9, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh), 0);
    assert_int_equal(sh.n_layers, NL);
    assert_int_equal(sh.bucket, 2);
    b.n_layers = 0;

    /* a token outside the vocabulary */
    const int32_t bad[3] = {5, V, 1};
    b.tokens = bad;
    assert_int_equal(ql__cuda_step_fill(&b, V, NL, 9, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh),
                     QL_EINVAL);
}

/* A prefill chunk beside a decode token and a verify: eager at the exact size, runs counted,
 * a long context widens the stride, tables clipped to it. */
static void test_mixed(void **state) {
    (void)state;
    int32_t t0[MB], t1[MB];
    for (int i = 0; i < MB; i++) t0[i] = i, t1[i] = 63 - i;
    const int32_t *tables[2] = {t0, t1};
    int32_t tokens[12], pos[12], seq_of[12];
    /* seq 0: positions 300..309 (a chunk of 10); seq 1: position 5 */
    for (int i = 0; i < 10; i++) tokens[i] = i, pos[i] = 300 + i, seq_of[i] = 0;
    tokens[10] = 7, pos[10] = 5, seq_of[10] = 1;
    const int32_t n_blocks[2] = {MB, 1}, seq_len[2] = {310, 6}, rows[2] = {9, 10};
    ql_batch_t b = {11, tokens, pos, seq_of, 2, tables, n_blocks, seq_len, rows, 2, 0};
    ql__cuda_step_rec_t rec = views();
    ql__cuda_step_shape_t sh;
    assert_int_equal(ql__cuda_step_fill(&b, V, NL, 9, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh), 0);
    assert_int_equal(sh.bucket, -1);
    assert_int_equal(sh.cbucket, -1);
    assert_int_equal(sh.n_tok, 11);
    assert_int_equal(sh.n_seqs, 2);
    assert_int_equal(sh.n_rows, 2);
    assert_int_equal(sh.max_pos, 511);
    assert_int_equal(sh.stride, 32);
    assert_int_equal(sh.max_run, 10);
    assert_int_equal(R.rows[0], 9);
    assert_int_equal(R.rows[1], 10);
    assert_int_equal(R.rows[2], UNTOUCHED);
    assert_int_equal(R.slot[0], t0[300 / BS] * BS + 300 % BS);
    assert_int_equal(R.slot[10], t1[0] * BS + 5);
    /* seq 0 has 64 blocks but the stride is 32: clipped */
    assert_int_equal(R.tables[31], 31);
    assert_int_equal(R.tables[32], 63); /* row 1 starts at the stride */
    assert_int_equal(R.tables[33], 0);
    assert_int_equal(R.tables[64], UNTOUCHED);
    assert_int_equal(sh.bytes, TABLES_OFFSET + 2 * 32 * sizeof(int32_t));

    /* positions that are not consecutive do not make a run; a sequence that does not hold
     * token t at row t makes the batch not decode */
    pos[1] = 302;
    assert_int_equal(ql__cuda_step_fill(&b, V, NL, 9, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh), 0);
    assert_int_equal(sh.max_run, 8); /* 300, 302, then 302..309 */
    const int32_t d_tok[2] = {1, 2}, d_pos[2] = {3, 4}, d_seq[2] = {1, 0}, d_rows[2] = {0, 1};
    const int32_t d_nb[2] = {1, 1}, d_len[2] = {5, 4};
    ql_batch_t d = {2, d_tok, d_pos, d_seq, 2, tables, d_nb, d_len, d_rows, 2, 0};
    assert_int_equal(ql__cuda_step_fill(&d, V, NL, 9, NCTX, MB, BS, &rec, TABLES_OFFSET, &sh), 0);
    assert_int_equal(sh.bucket, -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ctx_bucket),
        cmocka_unit_test(test_decode_padded),
        cmocka_unit_test(test_mixed),
    };
    return cmocka_run_group_tests_name("cuda-step", tests, NULL, NULL);
}
