/*
 * tests/unit/scheduler/fake-backend.c — the deterministic paged fake backend (see the header).
 */
#include "fake-backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "model/gguf.h"
#include "model/mkmodel.h"

uint64_t fake_digest(const int32_t *tokens, int32_t n) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t i = 0; i < n; i++) {
        h ^= (uint64_t)(uint32_t)tokens[i];
        h *= 1099511628211ull;
        h ^= h >> 29;
    }
    return h;
}

int32_t fake_next(const fake_be_t *fb, const int32_t *h, int32_t n) {
    if (fb->script_mark >= 0 && n >= 2 && h[0] == fb->script_mark && h[1] >= 0 && h[1] < FAKE_SCRIPTS_MAX) {
        const fake_script_t *s = &fb->scripts[h[1]];
        int32_t k = n - s->n_prompt; /* outputs so far */
        if (k >= 0 && k < s->n_out) return s->out[k];
        return fb->eos >= 0 ? fb->eos : fb->lo;
    }
    uint64_t d = fake_digest(h, n);
    if (fb->eos >= 0 && fb->eos_mod && ((d >> 24) % fb->eos_mod) == 0) return fb->eos;
    return fb->lo + (int32_t)(d % (uint64_t)(fb->hi - fb->lo));
}

int32_t fake_argmax(const float *row, int32_t n_vocab) {
    int32_t best = 0;
    for (int32_t v = 1; v < n_vocab; v++)
        if (row[v] > row[best]) best = v;
    return best;
}

static int fake_forward(ql_backend_t *be, const ql_batch_t *b, float *logits) {
    fake_be_t *fb = (fake_be_t *)be;
    const ql_backend_info_t *info = &be->info;
    char err[256];
    if (ql_batch_validate(b, info, err, sizeof err) != 0) {
        fprintf(stderr, "fake backend: invalid batch: %s\n", err);
        fb->n_invalid++;
        return QL_EINVAL;
    }
    fb->n_forward++;
    if (fb->fail_on_forward && fb->n_forward == fb->fail_on_forward) return fb->fail_status;
    if (fb->delay_us > 0) {
        struct timespec ts = {.tv_sec = fb->delay_us / 1000000, .tv_nsec = (long)(fb->delay_us % 1000000) * 1000};
        nanosleep(&ts, NULL);
    }
    fb->max_tokens_seen = QL_MAX(fb->max_tokens_seen, b->n_tokens);
    fb->max_seqs_seen = QL_MAX(fb->max_seqs_seen, b->n_seqs);
    const int32_t bs = info->kv.block_size;
    for (int32_t t = 0; t < b->n_tokens; t++) {
        int32_t s = b->seq_of_token[t], p = b->pos[t];
        int32_t blk = b->block_tables[s][p / bs];
        fb->slots[(size_t)blk * bs + p % bs] = b->tokens[t];
    }
    int32_t *hist = malloc((size_t)info->n_ctx_max * sizeof(int32_t));
    QL_ASSERT(hist);
    for (int32_t i = 0; i < b->n_logits; i++) {
        int32_t t = b->logits_rows[i], s = b->seq_of_token[t], p = b->pos[t];
        for (int32_t q = 0; q <= p; q++) hist[q] = fb->slots[(size_t)b->block_tables[s][q / bs] * bs + q % bs];
        int32_t next = fake_next(fb, hist, p + 1);
        uint64_t d = fake_digest(hist, p + 1);
        float *row = logits + (size_t)i * info->n_vocab;
        for (int32_t v = 0; v < info->n_vocab; v++) {
            uint64_t x = (d ^ ((uint64_t)(uint32_t)v * 0x9E3779B97F4A7C15ull)) * 0xBF58476D1CE4E5B9ull;
            row[v] = -(float)((x >> 40) % 10000) / 1000.0f; /* (-10, 0] */
        }
        row[next] = 10.0f;
    }
    free(hist);
    return 0;
}

static int fake_copy(ql_backend_t *be, const int32_t *src, const int32_t *dst, int32_t n) {
    fake_be_t *fb = (fake_be_t *)be;
    const int32_t bs = be->info.kv.block_size, nb = be->info.kv.n_blocks;
    for (int32_t i = 0; i < n; i++) {
        if (src[i] < 0 || src[i] >= nb || dst[i] < 0 || dst[i] >= nb) return QL_EINVAL;
        for (int32_t j = 0; j < n; j++)
            if (dst[i] == src[j]) return QL_EINVAL; /* the real backends' contract */
    }
    for (int32_t i = 0; i < n; i++)
        memcpy(fb->slots + (size_t)dst[i] * bs, fb->slots + (size_t)src[i] * bs, (size_t)bs * sizeof(int32_t));
    fb->n_copy_calls++;
    fb->n_copies += n;
    return 0;
}

static void fake_free(ql_backend_t *be) {
    fake_be_t *fb = (fake_be_t *)be;
    free(fb->slots);
    free(fb);
}

static const ql_backend_ops_t k_fake_ops = {
    .forward = fake_forward,
    .copy_blocks = fake_copy,
    .forward_sample = NULL,
    .free = fake_free,
};

fake_be_t *fake_be_new(int32_t n_vocab, int32_t n_blocks, int32_t bs, int32_t n_batch_tokens_max,
                       int32_t n_seqs_max, int32_t n_ctx_max) {
    fake_be_t *fb = calloc(1, sizeof(*fb));
    QL_ASSERT(fb);
    fb->base.ops = &k_fake_ops;
    ql_backend_info_t *in = &fb->base.info;
    in->name = "fake";
    in->n_vocab = n_vocab;
    in->n_ctx_max = n_ctx_max;
    in->n_batch_tokens_max = n_batch_tokens_max;
    in->n_seqs_max = n_seqs_max;
    in->n_logits_max = n_seqs_max;
    in->kv = (ql_kv_layout_t){.n_layer = 1, .n_kv_head = 1, .head_dim = 1, .block_size = bs, .n_blocks = n_blocks};
    in->kv_block_bytes = ql_kv_block_bytes(&in->kv, 2);
    in->kv_bytes = in->kv_block_bytes * (uint64_t)n_blocks;
    fb->slots = malloc((size_t)n_blocks * bs * sizeof(int32_t));
    QL_ASSERT(fb->slots);
    memset(fb->slots, 0xff, (size_t)n_blocks * bs * sizeof(int32_t));
    fb->lo = 0;
    fb->hi = n_vocab;
    fb->eos = -1;
    fb->eos_mod = 0;
    fb->script_mark = -1;
    return fb;
}

ql_tok_t *fake_tiny_tok(void) {
    char err[256], path[] = "/tmp/quill-test-tiny-XXXXXX";
    int fd = mkstemp(path);
    QL_ASSERT(fd >= 0);
    close(fd);
    ql_mkmodel_params_t p;
    memset(&p, 0, sizeof(p));
    QL_ASSERT(ql_mkmodel_shape_get("tiny", &p.shape) == 0);
    p.seed = 1;
    p.wtype = QL_DTYPE_F32;
    ql_mkmodel_t *m = NULL;
    if (ql_mkmodel_init(&p, &m, err, sizeof err) != 0) ql_abort(__FILE__, __LINE__, "mkmodel: %s", err);
    if (ql_mkmodel_write(m, path, err, sizeof err) != 0) ql_abort(__FILE__, __LINE__, "mkmodel: %s", err);
    ql_mkmodel_free(m);
    ql_gguf_t *g = NULL;
    if (ql_gguf_open(path, &g, err, sizeof err) != 0) ql_abort(__FILE__, __LINE__, "gguf: %s", err);
    ql_tok_t *tok = NULL;
    if (ql_tok_init_from_gguf(g, &tok, err, sizeof err) != 0) ql_abort(__FILE__, __LINE__, "tok: %s", err);
    ql_gguf_free(g);
    unlink(path);
    return tok;
}

int32_t fake_byte_token(const ql_tok_t *tok, unsigned char b) {
    int32_t n = ql_tok_n_vocab(tok);
    for (int32_t id = 0; id < n; id++) {
        const char *s;
        size_t len;
        if (ql_tok_piece(tok, id, 0, &s, &len) == 0 && len == 1 && (unsigned char)s[0] == b &&
            ql_tok_type(tok, id) != QL_TOK_TYPE_CONTROL)
            return id;
    }
    return -1;
}
