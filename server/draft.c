/*
 * server/draft.c — the draft model of speculative decoding (`--draft-model PATH`, with or
 * without `--spec-method draft`): opened beside the target by `quill serve` and `quill run`,
 * refused unless its vocabulary is the target's token for token, given its own backend object
 * and KV pool (a quarter of --kv-cache-mem), and handed to the engine (engine.h
 * draft_backend; NOTE(draft-model) in scheduler/engine.c).
 */
#define QL_LOG_MODULE "draft"
#include <stdio.h>
#include <string.h>

#include "cpu/cpu.h"
#include "server/server-internal.h"

/* The draft's KV pool: a quarter of the target's budget, at least 16 MiB. */
#define DRAFT_KV_SHARE 4
#define DRAFT_KV_MIN_BYTES (16ull << 20)

int ql__draft_load(const ql_config_t *cfg, const ql_loaded_t *target, int32_t n_seqs_max,
                   ql_draft_t *d, char *err, size_t errlen) {
    memset(d, 0, sizeof *d);
    const int method = cfg->spec_method;
    const int named = cfg->draft_model && cfg->draft_model[0];
    if (!named) {
        if (method != QL_SPEC_METHOD_DRAFT) return 0;
        snprintf(err, errlen, "--spec-method draft needs --draft-model PATH (a GGUF file)");
        return QL_EINVAL;
    }
    if (method != QL_SPEC_METHOD_DRAFT && method != QL_SPEC_METHOD_NONE) {
        snprintf(err, errlen, "--draft-model goes with --spec-method draft, not %s",
                 method == QL_SPEC_METHOD_NGRAM ? "ngram" : "layerskip");
        return QL_EINVAL;
    }
    char e[512] = "";
    int rc;
    const char *path = cfg->draft_model;
    if ((rc = ql_gguf_open(path, &d->gguf, e, sizeof e)) != 0) {
        snprintf(err, errlen, "--draft-model %s", e[0] ? e : ql_strerror(rc));
        goto fail;
    }
    if ((rc = ql_tok_init_from_gguf(d->gguf, &d->tok, e, sizeof e)) != 0) {
        snprintf(err, errlen, "--draft-model %s: tokenizer: %s", path, e[0] ? e : ql_strerror(rc));
        goto fail;
    }
    /* NOTE(draft-vocab): drafts are token ids the target verifies; the same ids must mean the
     * same text in both, or the draft proposes nonsense (still lossless, but useless) */
    const int32_t nv = ql_tok_n_vocab(target->tok);
    if (ql_tok_n_vocab(d->tok) != nv) {
        snprintf(err, errlen,
                 "--draft-model %s: its vocabulary has %d tokens, the target's %d: a draft model "
                 "must share the target's tokenizer",
                 path, (int)ql_tok_n_vocab(d->tok), (int)nv);
        rc = QL_EINVAL;
        goto fail;
    }
    for (int32_t id = 0; id < nv; id++) {
        size_t la, lb;
        const char *a = ql_tok_text(target->tok, id, &la), *b = ql_tok_text(d->tok, id, &lb);
        if (la != lb || memcmp(a, b, la) != 0) {
            snprintf(err, errlen,
                     "--draft-model %s: its vocabulary differs from the target's at token %d: a "
                     "draft model must share the target's tokenizer",
                     path, (int)id);
            rc = QL_EINVAL;
            goto fail;
        }
    }
    const ql_backend_info_t *ti = ql_backend_info(target->backend);
    if (strcmp(ti->name, "cpu") != 0) {
        snprintf(err, errlen, "--draft-model: a draft model runs on the CPU backend only for now "
                              "(the target runs on %s)",
                 ti->name);
        rc = QL_EUNSUPPORTED;
        goto fail;
    }
    if (n_seqs_max <= 0) n_seqs_max = cfg->max_num_seqs;
    uint64_t kv = cfg->kv_cache_bytes / DRAFT_KV_SHARE;
    ql_backend_params_t bp = {
        .n_threads = cfg->threads,
        .kv_cache_bytes = kv < DRAFT_KV_MIN_BYTES ? DRAFT_KV_MIN_BYTES : kv,
        .block_size = ti->kv.block_size,
        .n_batch_tokens_max = ti->n_batch_tokens_max,
        .n_seqs_max = n_seqs_max,
        .n_logits_max = n_seqs_max, /* one draft token per sequence and round */
        .n_ctx_max = cfg->max_model_len,
    };
    if ((rc = ql_cpu_backend_desc.init(d->gguf, &bp, &d->backend, e, sizeof e)) != 0) {
        snprintf(err, errlen, "--draft-model %s: %s", path, e[0] ? e : ql_strerror(rc));
        goto fail;
    }
    QL_LOG_INFO("draft model %s: %d KV blocks, %.1f MiB of weights", path,
                (int)ql_backend_info(d->backend)->kv.n_blocks,
                (double)ql_backend_info(d->backend)->weight_bytes / (1 << 20));
    return 0;

fail:
    ql__draft_free(d);
    return rc ? rc : QL_EINVAL;
}

void ql__draft_free(ql_draft_t *d) {
    if (!d) return;
    ql_backend_free(d->backend);
    ql_tok_free(d->tok);
    ql_gguf_free(d->gguf);
    memset(d, 0, sizeof *d);
}
