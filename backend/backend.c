/*
 * backend/backend.c — the thin wrappers over a backend's ops table, the batch contract
 * check every backend runs first, and the registry the server picks a backend from.
 */
#define QL_LOG_MODULE "backend"
#include "backend/backend.h"

#include <stdio.h>
#include <string.h>

/* ---- calls ---- */

int ql_backend_forward(ql_backend_t *be, const ql_batch_t *b, float *logits) {
    if (!be || !b || (b->n_logits > 0 && !logits)) return QL_EINVAL;
    return be->ops->forward(be, b, logits);
}

int ql_backend_copy_blocks(ql_backend_t *be, const int32_t *src, const int32_t *dst, int32_t n) {
    if (!be || n < 0 || (n > 0 && (!src || !dst))) return QL_EINVAL;
    if (n == 0) return 0;
    return be->ops->copy_blocks(be, src, dst, n);
}

int ql_backend_forward_sample(ql_backend_t *be, const ql_batch_t *b, const ql_backend_sampling_t *s,
                              int32_t *tokens_out) {
    if (!be || !b || !s || !tokens_out) return QL_EINVAL;
    if (!be->ops->forward_sample) return QL_EUNSUPPORTED;
    return be->ops->forward_sample(be, b, s, tokens_out);
}

const ql_backend_info_t *ql_backend_info(const ql_backend_t *be) {
    return be ? &be->info : NULL;
}

void ql_backend_free(ql_backend_t *be) {
    if (be) be->ops->free(be);
}

/* ---- the batch contract ---- */

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        if (err && errlen) snprintf(err, errlen, __VA_ARGS__);                                     \
        return QL_EINVAL;                                                                          \
    } while (0)

int ql_batch_validate(const ql_batch_t *b, const ql_backend_info_t *info, char *err,
                      size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!b || !info) FAIL("batch or info is NULL");
    if (b->n_tokens <= 0 || b->n_tokens > info->n_batch_tokens_max)
        FAIL("n_tokens %d outside [1, %d]", (int)b->n_tokens, (int)info->n_batch_tokens_max);
    if (b->n_seqs <= 0 || b->n_seqs > info->n_seqs_max)
        FAIL("n_seqs %d outside [1, %d]", (int)b->n_seqs, (int)info->n_seqs_max);
    if (b->n_logits < 0 || b->n_logits > info->n_logits_max)
        FAIL("n_logits %d outside [0, %d]", (int)b->n_logits, (int)info->n_logits_max);
    if (b->n_layers < 0 || b->n_layers > info->kv.n_layer)
        FAIL("n_layers %d outside [0, %d]", (int)b->n_layers, (int)info->kv.n_layer);
    if (!b->tokens || !b->pos || !b->seq_of_token || !b->block_tables || !b->n_blocks ||
        !b->seq_len || (b->n_logits > 0 && !b->logits_rows))
        FAIL("a batch array is NULL");
    const int32_t bs = info->kv.block_size;
    for (int32_t s = 0; s < b->n_seqs; s++) {
        int32_t nb = b->n_blocks[s], len = b->seq_len[s];
        if (nb < 0 || (nb > 0 && !b->block_tables[s])) FAIL("sequence %d: bad block table", (int)s);
        if (len < 0 || len > info->n_ctx_max)
            FAIL("sequence %d: seq_len %d outside [0, %d]", (int)s, (int)len, (int)info->n_ctx_max);
        if ((int64_t)len > (int64_t)nb * bs)
            FAIL("sequence %d: seq_len %d needs more than its %d blocks", (int)s, (int)len,
                 (int)nb);
        for (int32_t i = 0; i < nb; i++) {
            int32_t id = b->block_tables[s][i];
            if (id < 0 || id >= info->kv.n_blocks)
                FAIL("sequence %d: block %d is %d, outside [0, %d)", (int)s, (int)i, (int)id,
                     (int)info->kv.n_blocks);
        }
    }
    for (int32_t t = 0; t < b->n_tokens; t++) {
        int32_t s = b->seq_of_token[t];
        if (s < 0 || s >= b->n_seqs)
            FAIL("token %d: sequence %d outside [0, %d)", (int)t, (int)s, (int)b->n_seqs);
        if (b->pos[t] < 0 || b->pos[t] >= b->seq_len[s])
            FAIL("token %d: position %d outside [0, seq_len %d)", (int)t, (int)b->pos[t],
                 (int)b->seq_len[s]);
        if (b->tokens[t] < 0 || b->tokens[t] >= info->n_vocab)
            FAIL("token %d: id %d outside the vocabulary [0, %d)", (int)t, (int)b->tokens[t],
                 (int)info->n_vocab);
    }
    for (int32_t i = 0; i < b->n_logits; i++) {
        int32_t r = b->logits_rows[i];
        if (r < 0 || r >= b->n_tokens)
            FAIL("logits row %d is %d, outside [0, %d)", (int)i, (int)r, (int)b->n_tokens);
    }
    return 0;
}

#undef FAIL

/* ---- registry ---- */

int ql_backend_reg_add(ql_backend_reg_t *r, const ql_backend_desc_t *d) {
    if (!r || !d || !d->name || !d->init) return QL_EINVAL;
    if (ql_backend_reg_find(r, d->name)) return QL_EINVAL;
    if (r->n >= QL_BACKEND_REG_MAX) return QL_ENOSPC;
    r->descs[r->n++] = d;
    return 0;
}

const ql_backend_desc_t *ql_backend_reg_find(const ql_backend_reg_t *r, const char *name) {
    if (!r || !name) return NULL;
    for (int i = 0; i < r->n; i++)
        if (strcmp(r->descs[i]->name, name) == 0) return r->descs[i];
    return NULL;
}

int ql_backend_init(const ql_backend_reg_t *r, const char *name, const ql_gguf_t *gguf,
                    const ql_backend_params_t *p, ql_backend_t **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!r || !gguf || !p || !out) return QL_EINVAL;
    *out = NULL;
    const ql_backend_desc_t *d = NULL;
    if (name && strcmp(name, "auto") != 0) {
        d = ql_backend_reg_find(r, name);
        if (!d) {
            if (err && errlen) snprintf(err, errlen, "no backend named '%s' in this build", name);
            return QL_ENOENT;
        }
        if (d->available && !d->available()) {
            if (err && errlen)
                snprintf(err, errlen, "backend '%s' cannot run on this machine", name);
            return QL_ENOENT;
        }
    } else {
        for (int i = 0; i < r->n && !d; i++)
            if (!r->descs[i]->available || r->descs[i]->available()) d = r->descs[i];
        if (!d) {
            if (err && errlen) snprintf(err, errlen, "no backend can run on this machine");
            return QL_ENOENT;
        }
    }
    QL_LOG_DEBUG("initialising backend '%s'", d->name);
    return d->init(gguf, p, out, err, errlen);
}
