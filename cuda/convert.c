/*
 * cuda/convert.c — the host half of the CUDA backend's weight upload: GGUF rows of any type
 * model/quant.c dequantizes (F32, F16, BF16, Q4_0 ... Q8_0, Q2_K ... Q6_K, IQ4_NL, IQ4_XS) turned into f16 rows,
 * the layout cuBLAS and the kernels read. The backend (cuda/backend.cu) streams each tensor
 * through a pinned staging buffer a slice of rows at a time, so host memory stays bounded
 * whatever the model's size. Plain C, compiled into every build: tests/unit/cuda/ checks it
 * without a GPU.
 *
 * NOTE(f16-range): f16 holds |x| < 65520. A weight beyond it (possible in BF16 or F32 files,
 * never in the quantized types' usual scales) would become inf and poison every activation it
 * touches, so the conversion fails with QL_ERANGE and the row instead.
 */
#define QL_LOG_MODULE "cuda"
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "cuda/cuda-internal.h"
#include "model/quant.h"

typedef struct job_s {
    int type;
    const uint8_t *data;
    size_t row_bytes;
    int64_t n_in, r0, r1; /* this thread's rows */
    int64_t row_base;     /* dst row 0 = source row row_base */
    uint16_t *dst;
    int rc;
    int64_t bad_row;
} job_t;

static void *convert_job(void *arg) {
    job_t *j = arg;
    j->rc = 0;
    j->bad_row = -1;
    float *row = malloc(sizeof(float) * (size_t)j->n_in);
    if (!row) {
        j->rc = QL_ENOMEM;
        return NULL;
    }
    for (int64_t r = j->r0; r < j->r1; r++) {
        int rc = ql_dequantize_row(j->type, j->data + (size_t)r * j->row_bytes, row, j->n_in);
        if (rc) {
            j->rc = rc;
            break;
        }
        uint16_t *d = j->dst + (size_t)(r - j->row_base) * (size_t)j->n_in;
        int bad = 0;
        for (int64_t i = 0; i < j->n_in; i++) {
            if (!(fabsf(row[i]) < 65520.0f)) bad = 1; /* also NaN */
            d[i] = ql_fp32_to_fp16(row[i]);
        }
        if (bad) {
            j->rc = QL_ERANGE;
            j->bad_row = r;
            break;
        }
    }
    free(row);
    return NULL;
}

int ql__cuda_convert_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 32 ? 32 : (int)n;
}

int ql__cuda_rows_to_f16(int type, const void *data, int64_t n_in, int64_t r0, int64_t r1,
                         uint16_t *dst, int n_threads, int64_t *bad_row) {
    if (bad_row) *bad_row = -1;
    if (!data || !dst || n_in <= 0 || r0 < 0 || r1 < r0) return QL_EINVAL;
    size_t row_bytes;
    int rc = ql_dtype_row_bytes(type, n_in, &row_bytes);
    if (rc) return rc == QL_EOVERFLOW ? QL_EINVAL : rc;
    {
        /* a type without a reference dequantization: say so before any thread starts */
        float probe[256];
        const int64_t be = ql_dtype_block_elems(type);
        if (be <= 0 || be > 256) return QL_EUNSUPPORTED;
        rc = ql_dequantize_row(type, data, probe, be);
        if (rc) return rc == QL_EINVAL ? QL_EUNSUPPORTED : rc;
    }
    if (r1 == r0) return 0;
    const int64_t n_rows = r1 - r0;
    int nth = n_threads < 1 ? 1 : n_threads > 64 ? 64 : n_threads;
    if ((int64_t)nth > n_rows) nth = (int)n_rows;
    job_t jobs[64];
    pthread_t tids[64];
    int started[64] = {0};
    for (int i = 0; i < nth; i++) {
        jobs[i] = (job_t){.type = type,
                          .data = data,
                          .row_bytes = row_bytes,
                          .n_in = n_in,
                          .r0 = r0 + n_rows * i / nth,
                          .r1 = r0 + n_rows * (i + 1) / nth,
                          .row_base = r0,
                          .dst = dst};
        if (i > 0 && pthread_create(&tids[i], NULL, convert_job, &jobs[i]) == 0) started[i] = 1;
    }
    convert_job(&jobs[0]);
    for (int i = 1; i < nth; i++) {
        if (started[i])
            pthread_join(tids[i], NULL);
        else
            convert_job(&jobs[i]); /* no thread: do its share here */
    }
    for (int i = 0; i < nth; i++) {
        if (jobs[i].rc) {
            if (bad_row) *bad_row = jobs[i].bad_row;
            return jobs[i].rc;
        }
    }
    return 0;
}
