/*
 * tests/unit/cuda/test-cuda-fault.c — a real device fault in the CUDA backend
 * (QL_CUDA_TEST_TRAP_AFTER: a kernel executes a trap instruction, NOTE(fault-injection) in
 * cuda/backend.cu): the step fails with QL_ECUDA, every later call fails at once with
 * QL_ECUDA, and the backend is freed without hanging. Its own process: a fault loses the CUDA
 * context for good. Skips without a device.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "cuda/cuda.h"
#include "model/gguf.h"
#include "model/mkmodel.h"

#define BLOCK 16

static void test_trap_is_sticky(void **state) {
    (void)state;
    if (!ql_cuda_compiled() || ql_cuda_device_count() == 0) {
        printf("SKIP: %s\n", ql_cuda_compiled() ? "no CUDA device present"
                                                : "CUDA is not compiled into this build");
        skip();
    }
    ql_mkmodel_params_t mp;
    memset(&mp, 0, sizeof(mp));
    ql_mkmodel_shape_blank(&mp.shape);
    snprintf(mp.shape.name, sizeof(mp.shape.name), "cuda-fault");
    mp.shape.n_layer = 2, mp.shape.n_embd = 256, mp.shape.n_head = 4, mp.shape.n_head_kv = 2;
    mp.shape.n_ff = 512, mp.shape.n_vocab = 320, mp.shape.n_ctx = 256;
    mp.seed = 1;
    mp.wtype = QL_DTYPE_F16;
    char path[256], err[512];
    const char *dir = getenv("TMPDIR");
    snprintf(path, sizeof(path), "%s/quill-cuda-fault-%ld.gguf", dir && *dir ? dir : "/tmp",
             (long)getpid());
    ql_mkmodel_t *mk = NULL;
    assert_int_equal(ql_mkmodel_init(&mp, &mk, err, sizeof(err)), 0);
    assert_int_equal(ql_mkmodel_write(mk, path, err, sizeof(err)), 0);
    ql_mkmodel_free(mk);
    ql_gguf_t *g = NULL;
    assert_int_equal(ql_gguf_open(path, &g, err, sizeof(err)), 0);

    setenv("QL_CUDA_TEST_TRAP_AFTER", "2", 1);
    ql_backend_params_t p = {.block_size = BLOCK,
                             .n_batch_tokens_max = 16,
                             .n_seqs_max = 2,
                             .n_logits_max = 2,
                             .n_ctx_max = 256,
                             .gpu_memory_utilization = 0.5};
    ql_backend_t *be = NULL;
    int rc = ql_cuda_backend_init(g, &p, &be, err, sizeof(err));
    unsetenv("QL_CUDA_TEST_TRAP_AFTER");
    if (rc) fail_msg("cuda backend: %s", err);

    const int32_t V = 320;
    float *logits = malloc(sizeof(float) * V);
    assert_non_null(logits);
    int32_t table[16];
    for (int i = 0; i < 16; i++) table[i] = i;
    const int32_t *tables[1] = {table};
    int32_t n_blocks[1] = {16}, seq_len[1], tok[1] = {7}, pos[1], seq_of[1] = {0}, rows[1] = {0};
    for (int step = 0; step < 5; step++) {
        pos[0] = step;
        seq_len[0] = step + 1;
        ql_batch_t b = {.n_tokens = 1,
                        .tokens = tok,
                        .pos = pos,
                        .seq_of_token = seq_of,
                        .n_seqs = 1,
                        .block_tables = tables,
                        .n_blocks = n_blocks,
                        .seq_len = seq_len,
                        .logits_rows = rows,
                        .n_logits = 1};
        rc = ql_backend_forward(be, &b, logits);
        printf("step %d: %s\n", step, rc ? ql_strerror(rc) : "ok");
        /* two steps run, the third faults, and every one after it fails too */
        assert_int_equal(rc, step < 2 ? 0 : QL_ECUDA);
    }
    const int32_t src[1] = {0}, dst[1] = {1};
    assert_int_equal(ql_backend_copy_blocks(be, src, dst, 1), QL_ECUDA);
    ql_backend_free(be); /* returns: nothing waits on the lost context */
    free(logits);
    ql_gguf_free(g);
    unlink(path);
}

int main(void) {
    ql_log_set_level(QL_LOG_LEVEL_WARN);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_trap_is_sticky)};
    return cmocka_run_group_tests_name("cuda-fault", tests, NULL, NULL);
}
