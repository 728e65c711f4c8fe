/*
 * server/load.c — a model file made ready to serve: the GGUF mapping, the tokenizer, the chat
 * template and the backend, built from the configuration (ql__load_model). `quill serve` calls it
 * on libuv's worker pool; it touches nothing but its arguments.
 *
 * NOTE(fault-injection): with QL_TEST_FAIL_FORWARD_AFTER=N in the environment the backend is
 * wrapped so that every forward pass after the first N fails (QL_EIO), as a device fault would.
 * The integration tests use it to check what a backend failure does to requests in flight,
 * /ready and the exit status; nothing else reads it.
 */
#define QL_LOG_MODULE "load"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "cpu/cpu.h"
#include "cuda/cuda.h"
#include "server/server-internal.h"

/* ---- the fault-injecting wrapper ---- */

typedef struct faulty_s {
    ql_backend_t base; /* first: the header every backend starts with */
    ql_backend_t *inner;
    long n_left; /* forward passes that still succeed */
} faulty_t;

static int faulty_forward(ql_backend_t *be, const ql_batch_t *b, float *logits) {
    faulty_t *f = (faulty_t *)be;
    if (f->n_left <= 0) return QL_EIO;
    f->n_left--;
    return ql_backend_forward(f->inner, b, logits);
}

static int faulty_copy(ql_backend_t *be, const int32_t *src, const int32_t *dst, int32_t n) {
    return ql_backend_copy_blocks(((faulty_t *)be)->inner, src, dst, n);
}

static void faulty_free(ql_backend_t *be) {
    faulty_t *f = (faulty_t *)be;
    ql_backend_free(f->inner);
    free(f);
}

static const ql_backend_ops_t k_faulty_ops = {faulty_forward, faulty_copy, NULL, faulty_free};

static ql_backend_t *maybe_faulty(ql_backend_t *be) {
    const char *v = getenv("QL_TEST_FAIL_FORWARD_AFTER");
    if (!v || !*v) return be;
    faulty_t *f = ql_xcalloc(1, sizeof *f);
    f->base.ops = &k_faulty_ops;
    f->base.info = *ql_backend_info(be);
    f->inner = be;
    f->n_left = strtol(v, NULL, 10);
    QL_LOG_WARN("QL_TEST_FAIL_FORWARD_AFTER=%ld: forward passes fail after that many (a test)",
                f->n_left);
    return &f->base;
}

/* ---- loading ---- */

static char *base_name(const char *path) {
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    size_t n = strlen(b);
    if (n > 5 && strcmp(b + n - 5, ".gguf") == 0) n -= 5;
    return ql_xstrndup(b, n);
}

/* Logits rows per step: one per sequence, and with speculative decoding one more per drafted
 * token (at most --num-speculative-tokens per sequence), within the step's token budget. */
static int32_t spec_rows(const ql_config_t *cfg, int32_t n_seqs_max) {
    const int drafting = cfg->spec_method != QL_SPEC_METHOD_NONE ||
                         (cfg->draft_model && cfg->draft_model[0]); /* implies the method */
    if (!drafting) return n_seqs_max;
    int64_t rows = (int64_t)n_seqs_max * (1 + cfg->num_speculative_tokens);
    if (cfg->max_batched_tokens > 0) rows = QL_MIN(rows, (int64_t)cfg->max_batched_tokens);
    return (int32_t)QL_MAX(rows, (int64_t)n_seqs_max);
}

/* The backends this binary can build, in order of preference. */
static void load_registry(ql_backend_reg_t *reg) {
    memset(reg, 0, sizeof(*reg));
    /* NOTE(registry): CUDA first, so `--backend auto` prefers it where a device exists; its
     * available() is 0 without one (and always in a build without nvcc: cuda/device-stub.c). */
    int rc = ql_backend_reg_add(reg, &ql_cuda_backend_desc);
    QL_ASSERT(rc == 0);
    rc = ql_backend_reg_add(reg, &ql_cpu_backend_desc);
    QL_ASSERT(rc == 0);
}

/* The registry name --backend asks for; NULL = auto. */
static const char *backend_name(const ql_config_t *cfg) {
    if (cfg->backend == QL_BACKEND_KIND_CPU) return "cpu";
    if (cfg->backend == QL_BACKEND_KIND_CUDA) return "cuda";
    return NULL;
}

int ql__load_check_backend(const ql_config_t *cfg, char *err, size_t errlen) {
    if (cfg->backend != QL_BACKEND_KIND_CUDA) return 0;
    const char *why = NULL;
    ql_backend_reg_t reg;
    load_registry(&reg);
    if (!ql_cuda_compiled())
        why = "this build has no CUDA support (built without nvcc)";
    else if (ql_cuda_device_count() == 0)
        why = "no CUDA device found on this machine";
    else if (!ql_backend_reg_find(&reg, "cuda"))
        why = "the CUDA backend is not available yet in this version";
    if (!why) return 0;
    snprintf(err, errlen, "--backend cuda: %s; use --backend cpu", why);
    return QL_EUNSUPPORTED;
}

int ql__load_model(const ql_config_t *cfg, int32_t n_seqs_max, ql_loaded_t *m, char *err,
                   size_t errlen) {
    memset(m, 0, sizeof *m);
    char e[512] = "";
    int rc;
    if (!cfg->model || !cfg->model[0]) {
        snprintf(err, errlen, "--model is required (a GGUF file)");
        return QL_EINVAL;
    }
    if ((rc = ql_gguf_open(cfg->model, &m->gguf, e, sizeof e)) != 0) {
        snprintf(err, errlen, "%s", e[0] ? e : ql_strerror(rc));
        goto fail;
    }
    if ((rc = ql_tok_init_from_gguf(m->gguf, &m->tok, e, sizeof e)) != 0) {
        snprintf(err, errlen, "%s: tokenizer: %s", cfg->model, e[0] ? e : ql_strerror(rc));
        goto fail;
    }

    /* the chat template: a model without one still serves completions */
    ql_gguf_str_t t = {NULL, 0};
    int trc = ql_gguf_get_str(m->gguf, "tokenizer.chat_template", &t);
    int32_t bos = ql_tok_bos(m->tok), eos = ql_tok_eos(m->tok);
    ql_chat_params_t cp = {
        .name = cfg->chat_template,
        .tmpl = trc == 0 ? t.ptr : NULL,
        .tmpl_len = trc == 0 ? (size_t)t.len : 0,
        .bos_token = bos >= 0 ? ql_tok_text(m->tok, bos, NULL) : NULL,
        .eos_token = eos >= 0 ? ql_tok_text(m->tok, eos, NULL) : NULL,
    };
    rc = ql_chat_init(&cp, &m->chat, m->chat_err, sizeof m->chat_err);
    if (rc != 0) {
        int explicit_name = cfg->chat_template && strcmp(cfg->chat_template, "auto") != 0;
        if (explicit_name) {
            snprintf(err, errlen, "--chat-template: %s", m->chat_err);
            goto fail;
        }
        QL_LOG_WARN("%s: no chat template (%s): /v1/chat/completions will answer 400", cfg->model,
                    m->chat_err);
        m->chat = NULL;
    }

    /* the backend: the registry's choice, or the one --backend names */
    if ((rc = ql__load_check_backend(cfg, err, errlen)) != 0) goto fail;
    ql_backend_reg_t reg;
    load_registry(&reg);
    if (n_seqs_max <= 0) n_seqs_max = cfg->max_num_seqs;
    ql_backend_params_t bp = {
        .n_threads = cfg->threads,
        .kv_cache_bytes = cfg->kv_cache_bytes,
        .gpu_memory_utilization = cfg->gpu_memory_utilization,
        .block_size = cfg->block_size,
        .n_batch_tokens_max = cfg->max_batched_tokens,
        .n_seqs_max = n_seqs_max,
        /* one row per running sequence and step, plus one per drafted token when speculating */
        .n_logits_max = spec_rows(cfg, n_seqs_max),
        .n_ctx_max = cfg->max_model_len,
    };
    ql_backend_t *be = NULL;
    rc = ql_backend_init(&reg, backend_name(cfg), m->gguf, &bp, &be, e, sizeof e);
    if (rc == QL_EUNSUPPORTED && !backend_name(cfg)) {
        /* NOTE(registry): `auto` means the best backend that runs this model: a shape the
         * CUDA kernels lack (a head size, say) still runs on the CPU */
        QL_LOG_WARN("%s: the preferred backend cannot run it (%s): using the CPU backend",
                    cfg->model, e);
        rc = ql_backend_init(&reg, "cpu", m->gguf, &bp, &be, e, sizeof e);
    }
    if (rc != 0) {
        snprintf(err, errlen, "%s: %s", cfg->model, e[0] ? e : ql_strerror(rc));
        goto fail;
    }
    m->backend = maybe_faulty(be);
    m->name = base_name(cfg->model);
    return 0;

fail:
    ql__load_free(m);
    return rc ? rc : QL_EINVAL;
}

void ql__load_free(ql_loaded_t *m) {
    if (!m) return;
    ql_backend_free(m->backend);
    ql_chat_free(m->chat);
    ql_tok_free(m->tok);
    ql_gguf_free(m->gguf);
    free(m->name);
    memset(m, 0, sizeof *m);
}
