/*
 * server/cmd-serve.c — `quill serve --model M [flags]`: the OpenAI-compatible HTTP server.
 *
 * Start-up: the listener is bound first (a bad --host/--port fails at once, exit 1) and the line
 *   quill serve: listening on http://HOST:PORT
 * goes to stderr; the model then loads on libuv's worker pool while the loop already answers
 * /health (200) and /ready (503 until the model is loaded and the engine runs). A model that
 * cannot be loaded ends the process with exit 1.
 *
 * The loop thread (this one) runs until a drain or a fault has closed every connection
 * (signals.c); then the engine thread is joined, everything is freed, and the exit status is 0
 * (SIGTERM/SIGINT) or 1 (a backend fault).
 */
#define QL_LOG_MODULE "serve"
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/cmd.h"
#include "server/server-internal.h"

static void load_work(uv_work_t *w) {
    ql_srv_t *s = w->data;
    s->load_rc = ql__load_model(s->cfg, 0, &s->model, s->load_err, sizeof s->load_err);
    if (s->load_rc == 0)
        s->load_rc = ql__draft_load(s->cfg, &s->model, 0, &s->draft, s->load_err,
                                    sizeof s->load_err);
}

static void load_done(uv_work_t *w, int status) {
    ql_srv_t *s = w->data;
    (void)status;
    if (s->load_rc != 0) {
        fprintf(stderr, "quill serve: %s\n", s->load_err);
        s->exit_code = QL_EXIT_FAIL;
        if (s->state != QL_SRV_STOPPING) {
            s->state = QL_SRV_STOPPING;
            ql__http_stop_listening(s);
        }
        return;
    }
    s->model_loaded = 1;
    if (s->state == QL_SRV_STOPPING) return; /* a signal came while loading */

    const ql_config_t *cfg = s->cfg;
    ql_engine_params_t ep;
    memset(&ep, 0, sizeof ep);
    ep.max_num_seqs = cfg->max_num_seqs;
    ep.max_batched_tokens = cfg->max_batched_tokens;
    ep.max_model_len = cfg->max_model_len;
    ep.disable_prefix_cache = cfg->no_prefix_cache;
    ep.prefix_hash_seed = s->id_rng ^ 0x9e3779b97f4a7c15ull;
    ep.spec_method = cfg->spec_method; /* ql_spec_method_t and ql_engine_spec_t agree */
    if (s->draft.backend) { /* --draft-model alone implies --spec-method draft */
        ep.spec_method = QL_ENGINE_SPEC_DRAFT;
        ep.draft_backend = s->draft.backend;
    }
    ep.spec_k = cfg->num_speculative_tokens;
    ep.spec_ngram_max = cfg->spec_ngram_max;
    ep.spec_layers = cfg->spec_layers;
    ep.spec_fixed_k = cfg->spec_fixed_k;
    char err[512] = "";
    int rc = ql_engine_init(&ep, s->model.backend, s->model.tok, &s->engine, err, sizeof err);
    if (rc != 0) {
        fprintf(stderr, "quill serve: engine: %s\n", err[0] ? err : ql_strerror(rc));
        s->exit_code = QL_EXIT_FAIL;
        s->state = QL_SRV_STOPPING;
        ql__http_stop_listening(s);
        return;
    }
    ql_engine_get_limits(s->engine, &s->lim);
    s->served_model = ql_xstrdup(cfg->served_model_name ? cfg->served_model_name : s->model.name);
    s->t_last_progress_ns = ql_time_ns();
    s->state = QL_SRV_READY;
    QL_LOG_INFO("ready: model %s as \"%s\" (%s backend), context %d, %d blocks of %d tokens, "
                "up to %d sequences, %d tokens per step",
                cfg->model, s->served_model, ql_backend_info(s->model.backend)->name,
                s->lim.max_model_len, s->lim.n_blocks, s->lim.block_size, s->lim.max_num_seqs,
                s->lim.max_batched_tokens);
}

static void walk_close(uv_handle_t *h, void *arg) {
    (void)arg;
    if (!uv_is_closing(h)) {
        QL_LOG_WARN("closing a handle left open (type %s)",
                    uv_handle_type_name(uv_handle_get_type(h)));
        uv_close(h, NULL);
    }
}

int ql_cmd_serve(const ql_config_t *cfg) {
    ql_log_level_t lvl = (ql_log_level_t)cfg->log_level;
    ql_log_set_level(lvl);
    if (!cfg->model || !cfg->model[0]) {
        fprintf(stderr, "quill serve: --model is required (a GGUF file; see quill serve --help)\n");
        return QL_EXIT_USAGE;
    }
    /* a model that cannot even be opened fails before the listener is bound (make run tells a
     * failed start from a server that ran by the "listening on" line) */
    FILE *mf = fopen(cfg->model, "rb");
    if (!mf) {
        fprintf(stderr, "quill serve: cannot open %s: %s\n", cfg->model, strerror(errno));
        return QL_EXIT_FAIL;
    }
    fclose(mf);
    /* a write to a socket the client closed must fail with EPIPE, not kill the process */
    signal(SIGPIPE, SIG_IGN);

    ql_srv_t *s = ql_xcalloc(1, sizeof *s);
    uv_loop_t loop;
    int code = QL_EXIT_FAIL;
    if (ql_outbox_init(&s->outbox) != 0) {
        fprintf(stderr, "quill serve: cannot create the engine's outbox lock\n");
        free(s);
        return QL_EXIT_FAIL;
    }
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "quill serve: cannot create the event loop\n");
        ql_outbox_destroy(&s->outbox);
        free(s);
        return QL_EXIT_FAIL;
    }
    s->loop = &loop;
    s->cfg = cfg;
    s->state = QL_SRV_LOADING;
    s->created_s = (int64_t)time(NULL);
    s->id_rng = ql_time_ns() ^ ((uint64_t)getpid() << 32) ^ 0x853c49e6748fea9bull;
    if (s->id_rng == 0) s->id_rng = 1;
    s->read_buf = ql_xmalloc(QL_READ_BUF_BYTES);
    ql__metrics_init(&s->metrics);
    ql__http_update_date(s);
    uv_async_init(&loop, &s->outbox_async, ql__api_outbox_cb);
    s->outbox_async.data = s;
    uv_idle_init(&loop, &s->resume_idle);
    s->resume_idle.data = s;

    char err[512] = "";
    if (ql__signals_init(s) != 0) {
        fprintf(stderr, "quill serve: cannot install the signal handlers\n");
        goto out;
    }
    if (ql__http_listen(s, err, sizeof err) != 0) {
        fprintf(stderr, "quill serve: %s\n", err);
        goto out;
    }
    fprintf(stderr, "quill serve: listening on http://%s%s%s:%d\n",
            strchr(cfg->host, ':') ? "[" : "", cfg->host, strchr(cfg->host, ':') ? "]" : "",
            s->port);
    QL_LOG_INFO("loading %s", cfg->model);
    s->load_work.data = s;
    if (uv_queue_work(&loop, &s->load_work, load_work, load_done) != 0) {
        fprintf(stderr, "quill serve: cannot start loading the model\n");
        goto out;
    }
    s->exit_code = QL_EXIT_OK;
    uv_run(&loop, UV_RUN_DEFAULT);
    code = s->exit_code;
    goto done;

out:
    ql__http_stop_listening(s);
    ql__signals_close(s);
done:
    /* NOTE(teardown): every handle is closed by now (the loop returned because none is
     * active); a last pass closes any left behind by an error path and runs their callbacks */
    uv_walk(&loop, walk_close, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (s->engine) {
        ql_engine_free(s->engine); /* joins the engine thread */
        s->engine = NULL;
    }
    ql__draft_free(&s->draft);
    ql__load_free(&s->model);
    int lrc = uv_loop_close(&loop);
    if (lrc != 0) QL_LOG_ERROR("the event loop did not close cleanly: %s", uv_strerror(lrc));
    ql_outbox_destroy(&s->outbox);
    if (s->n_reqs != 0) QL_LOG_ERROR("%d request(s) still alive at exit", s->n_reqs);
    free(s->served_model);
    free(s->read_buf);
    free(s);
    if (code == QL_EXIT_OK) QL_LOG_INFO("stopped");
    return code;
}
