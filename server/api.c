/*
 * server/api.c — the endpoints: /health, /ready, /metrics, /v1/models, and the ones that reach
 * the model (/v1/completions, /v1/chat/completions, /tokenize, /detokenize); and the bridge
 * between the engine thread and the loop.
 *
 * A model request goes through three stages:
 *   1. prepare (libuv's worker pool): proto/ parses and validates the body; chat messages are
 *      rendered with the model's template; prompts are tokenized; /tokenize and /detokenize are
 *      answered right there. Nothing here touches the loop's state.
 *   2. submit (loop): the queue bound (--max-queue: 429 + Retry-After), then one engine request
 *      per prompt ("sub"), n choices each; a refusal maps to 400 context_length_exceeded, 400,
 *      503 or 500. A stream's headers (and chat's role deltas) go out at once.
 *   3. events: the engine thread's callback copies each event into its sub's outbox (a byte
 *      buffer of records, under the outbox lock: outbox.h) and wakes the loop with
 *      uv_async_send; the loop swaps the buffers out, under the same lock, and turns the
 *      records into SSE chunks or accumulates them for the JSON body. Buffers are swapped, not
 *      freed, so a long stream allocates nothing per token once they have grown.
 *
 * Lifetime: a request (ql_req_t) is referenced by its connection's exchange, by the prepare work
 * while it runs, and by each sub the engine accepted until that sub's final event is read. A
 * client that goes away drops the first reference and cancels the subs (the engine frees their
 * KV blocks at its next step); the request is freed when the engine has ended them all.
 */
#define QL_LOG_MODULE "api"
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server-internal.h"

/* ---- types ---- */

/* An OUTPUT event as copied into the outbox: followed by int32_t tokens[n_tokens], then
 * ql_sample_result_t lps[n_tokens] when has_lp, then text_len bytes, padded to 8 bytes. */
typedef struct rec_s {
    int32_t choice;
    int32_t n_tokens;
    int32_t finish; /* ql_finish_reason_t */
    int32_t has_lp;
    uint64_t t_ns; /* when the engine emitted it */
    uint32_t text_len;
    uint32_t pad_;
} rec_t;

typedef struct obuf_s {
    char *data;
    size_t len, cap;
} obuf_t;

/* One prompt's engine request. */
struct ql_sub_s {
    ql_outbox_node_t node; /* first: a taken node is its sub */
    ql_req_t *req;
    ql_srv_t *srv;
    int32_t index; /* prompt index */
    uint64_t handle;
    int submitted;  /* a final event will come */
    int final_done; /* its final event was read (loop) */
    /* written by the engine thread, under the outbox lock */
    obuf_t ob;
    int final_kind; /* 0, or QL_ENGINE_EVENT_FINISHED / _ERROR */
    ql_engine_stats_t stats;
    int status;
    char message[256];
    /* the loop's */
    obuf_t rd;      /* the records being read, swapped with ob */
    size_t rd_off;  /* [0, rd_off) of rd is read */
    int rd_final;   /* final_kind as swapped out */
    int in_pending; /* on the loop's list of subs with something to read */
    ql_sub_t *loop_next;
};

/* One choice's state on the loop. */
typedef struct choice_s {
    ql_proto_buf_t text;     /* non-streamed: the text so far */
    ql_sample_result_t *lps; /* non-streamed: [n_lps] per token */
    int32_t *offsets;        /* [n_lps] characters before each token (completions) */
    int32_t n_lps, cap_lps;
    int64_t chars; /* characters of the tokens' pieces so far (text_offset) */
    ql_finish_reason_t finish;
    uint64_t t_last_ns; /* the last token's event (inter-token latency) */
} choice_t;

struct ql_req_s {
    ql_srv_t *srv;
    ql_conn_t *conn; /* NULL once the exchange is over or the client is gone */
    ql_route_t route;
    ql_proto_endpoint_t ep;
    int chat;
    int refs;
    char id[64];
    int64_t created;
    uint64_t t_arrival_ns;

    /* prepare (worker) */
    char *body;
    size_t body_len;
    uv_work_t work;
    ql_arena_t arena;
    ql_proto_request_t pr;
    ql_proto_error_t err;
    int prep_rc;
    int32_t n_prompts;
    int32_t **prompt_ids; /* [n_prompts] → [n_prompt_ids[i]] */
    int32_t *n_prompt_ids;
    const char **echo; /* [n_prompts] echoed prompt text (completions with echo) */
    size_t *echo_len;
    ql_logit_bias_t *bias;
    ql_stop_str_t *stops;
    ql_proto_buf_t prebuilt; /* /tokenize, /detokenize: the body */

    /* engine */
    ql_sub_t *subs; /* [n_prompts] */
    int32_t n_submitted;
    int32_t n_final;
    int32_t n_choices; /* n_prompts * n */
    choice_t *choices;
    ql_proto_usage_t usage;
    int stream;
    int failed;         /* an error was answered */
    int done;           /* the response is complete */
    int cancelled;      /* we cancelled the subs (client gone, timeout, error) */
    ql_arena_t scratch; /* per chunk */
    ql_proto_buf_t sse;
};

/* ---- ids ---- */

static uint64_t rng_next(uint64_t *s) {
    /* xorshift64*: ids need to be unique, not secret */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1Dull;
}

void ql__api_new_id(ql_srv_t *s, const char *prefix, char *out, size_t cap) {
    uint64_t a = rng_next(&s->id_rng), b = rng_next(&s->id_rng);
    snprintf(out, cap, "%s%016" PRIx64 "%08" PRIx32, prefix, a, (uint32_t)b);
}

/* ---- request lifetime ---- */

static void req_free(ql_req_t *r) {
    ql_srv_t *s = r->srv;
    if (r->subs)
        for (int32_t i = 0; i < r->n_prompts; i++) {
            free(r->subs[i].ob.data);
            free(r->subs[i].rd.data);
        }
    free(r->subs);
    if (r->choices)
        for (int32_t i = 0; i < r->n_choices; i++) {
            ql_proto_buf_free(&r->choices[i].text);
            free(r->choices[i].lps);
            free(r->choices[i].offsets);
        }
    free(r->choices);
    ql_proto_buf_free(&r->prebuilt);
    ql_proto_buf_free(&r->sse);
    ql_arena_clear(&r->arena);
    ql_arena_clear(&r->scratch);
    free(r->body);
    free(r);
    s->n_reqs--;
}

static void req_unref(ql_req_t *r) {
    QL_ASSERT(r->refs > 0);
    if (--r->refs == 0) req_free(r);
}

/* The exchange is over for this request (answered, or the connection is gone). */
static void req_detach(ql_req_t *r) {
    if (!r->conn) return;
    r->conn = NULL;
    req_unref(r);
}

static void req_cancel_subs(ql_req_t *r) {
    r->cancelled = 1;
    for (int32_t i = 0; i < r->n_prompts && r->subs; i++) {
        ql_sub_t *sb = &r->subs[i];
        if (sb->submitted && !sb->final_done) ql_engine_cancel(r->srv->engine, sb->handle);
    }
}

void ql__api_conn_lost(ql_req_t *r) {
    QL_RLOG_INFO(r->id, "client went away: cancelling");
    r->srv->metrics.cancelled++;
    r->conn = NULL;
    req_cancel_subs(r);
    req_unref(r);
}

/* ---- answering ---- */

static void reply_json(ql_req_t *r, int status, const ql_proto_buf_t *b) {
    ql_conn_t *c = r->conn;
    ql__http_reply(c, status, "application/json", NULL, b->data, b->len);
    req_detach(r);
}

/* Ends the request with an error: an HTTP error before the stream began, an SSE error event
 * then [DONE] after. Cancels whatever still runs. */
static void req_fail(ql_req_t *r, const ql_proto_error_t *e, const char *extra) {
    if (r->failed || r->done) return;
    r->failed = 1;
    req_cancel_subs(r);
    ql_conn_t *c = r->conn;
    if (!c) return;
    if (!ql__http_started(c)) {
        ql__http_reply_error(c, e, extra);
    } else {
        ql_proto_buf_t b;
        ql_proto_buf_init(&b);
        if (ql_proto_sse_error(e, &b) == 0 && ql_proto_sse_done(&b) == 0)
            ql__http_stream_send(c, b.data, b.len);
        ql_proto_buf_free(&b);
        ql__http_stream_end(c);
    }
    req_detach(r);
}

void ql__api_timeout(ql_req_t *r) {
    ql_proto_error_t e;
    ql_proto_error_set(&e, 504, "server_error", "timeout", NULL,
                       "the request did not finish within %d s (--request-timeout)",
                       r->srv->cfg->request_timeout_s);
    QL_RLOG_WARN(r->id, "timed out after %d s", r->srv->cfg->request_timeout_s);
    req_fail(r, &e, NULL);
}

/* ---- simple endpoints ---- */

static int srv_ready(ql_srv_t *s, const char **why) {
    if (s->state == QL_SRV_LOADING) return *why = "the model is still loading", 0;
    if (s->state == QL_SRV_DRAINING || s->state == QL_SRV_STOPPING)
        return *why = "the server is shutting down", 0;
    if (s->state == QL_SRV_FAULTED || !ql_engine_healthy(s->engine))
        return *why = "the backend failed", 0;
    ql_engine_counters_t k;
    ql_engine_get_counters(s->engine, &k);
    if (k.n_running + k.n_waiting > 0 &&
        ql_time_ns() - s->t_last_progress_ns > QL_PROGRESS_STALL_NS)
        return *why = "the engine has made no progress for 30 s", 0;
    return 1;
}

static void handle_simple(ql_srv_t *s, ql_conn_t *c, ql_route_t route) {
    ql_proto_buf_t b;
    ql_proto_buf_init(&b);
    switch (route) {
    case QL_ROUTE_HEALTH:
        ql__http_reply(c, 200, "application/json", NULL, "{\"status\":\"ok\"}", 15);
        break;
    case QL_ROUTE_READY: {
        const char *why = NULL;
        if (srv_ready(s, &why)) {
            ql__http_reply(c, 200, "application/json", NULL, "{\"status\":\"ready\"}", 18);
        } else {
            ql_proto_error_t e;
            ql_proto_error_unavailable(&e, why);
            ql__http_reply_error(c, &e, NULL);
        }
        break;
    }
    case QL_ROUTE_METRICS:
        if (ql__metrics_write(s, &b) == 0)
            ql__http_reply(c, 200, "text/plain; version=0.0.4; charset=utf-8", NULL, b.data, b.len);
        else
            ql__http_reply(c, 500, "text/plain", NULL, "out of memory\n", 14);
        break;
    case QL_ROUTE_MODELS: {
        ql_proto_model_t m = {s->served_model, s->created_s, s->lim.max_model_len};
        if (ql_proto_models_json(&m, 1, &b) == 0)
            ql__http_reply(c, 200, "application/json", NULL, b.data, b.len);
        else
            ql__http_reply(c, 500, "text/plain", NULL, "out of memory\n", 14);
        break;
    }
    default: QL_ASSERT(0 && "not a simple route");
    }
    ql_proto_buf_free(&b);
}

/* ---- prepare (worker thread) ---- */

/* Tokenizes text[0, len) into the arena. */
static int encode(const ql_tok_t *tok, ql_arena_t *a, const char *text, size_t len, uint32_t flags,
                  int32_t **ids, int32_t *n_ids) {
    size_t n = 0;
    int rc = ql_tok_encode(tok, text, len, flags, NULL, 0, &n);
    if (rc != 0 && rc != QL_ENOSPC) return rc;
    if (n > (size_t)INT32_MAX / 2) return QL_ERANGE;
    *ids = ql_arena_alloc(a, (n ? n : 1) * sizeof(int32_t));
    if (!*ids) return QL_ENOMEM;
    if (n) rc = ql_tok_encode(tok, text, len, flags, *ids, n, &n);
    if (rc != 0) return rc;
    *n_ids = (int32_t)n;
    return 0;
}

/* Decodes ids into the arena (NUL-terminated). */
static int decode(const ql_tok_t *tok, ql_arena_t *a, const int32_t *ids, int32_t n, uint32_t flags,
                  const char **out, size_t *out_len) {
    size_t len = 0;
    int rc = ql_tok_decode(tok, ids, (size_t)n, flags, NULL, 0, &len);
    if (rc != 0 && rc != QL_ENOSPC) return rc;
    char *buf = ql_arena_alloc(a, len + 1);
    if (!buf) return QL_ENOMEM;
    if (len) rc = ql_tok_decode(tok, ids, (size_t)n, flags, buf, len, &len);
    if (rc != 0) return rc;
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

/* Renders the messages with the model's template and tokenizes the result. */
static int chat_prompt(ql_req_t *r, int32_t **ids, int32_t *n_ids) {
    ql_srv_t *s = r->srv;
    const ql_proto_request_t *pr = &r->pr;
    if (!s->model.chat) {
        ql_proto_error_invalid(&r->err, "messages",
                               "this model has no chat template quill can render (%s); start the "
                               "server with --chat-template or use /v1/completions",
                               s->model.chat_err[0] ? s->model.chat_err : "none found");
        return QL_EINVAL;
    }
    ql_chat_msg_t *msgs = ql_arena_alloc(&r->arena, sizeof *msgs * (size_t)pr->n_messages);
    if (!msgs) return QL_ENOMEM;
    for (int32_t i = 0; i < pr->n_messages; i++) {
        msgs[i].role = pr->messages[i].role_name;
        msgs[i].content = pr->messages[i].content;
        msgs[i].content_len = pr->messages[i].content_len;
    }
    char *text = NULL;
    size_t len = 0;
    char err[256] = "";
    int rc = ql_chat_render(s->model.chat, msgs, (size_t)pr->n_messages, pr->add_generation_prompt,
                            &text, &len, err, sizeof err);
    if (rc == QL_EINVAL) {
        ql_proto_error_invalid(&r->err, "messages", "%s",
                               err[0] ? err : "the chat template refused the messages");
        return rc;
    }
    if (rc != 0) return rc;
    /* NOTE(bos): the rendering carries BOS where the template wants it (model/chat.h) */
    uint32_t flags = QL_TOK_PARSE_SPECIAL | (pr->add_special_tokens ? QL_TOK_ADD_SPECIAL : 0);
    rc = encode(s->model.tok, &r->arena, text, len, flags, ids, n_ids);
    free(text);
    return rc;
}

/* NOTE(parse-special): a completion prompt's text that spells a control token ("<|im_start|>")
 * becomes that token, as in vLLM (Hugging Face tokenizers match special tokens in text) and
 * llama.cpp's server: prompts written for a chat model's format work unchanged. */
static int text_prompt(ql_req_t *r, const ql_proto_prompt_t *p, int32_t **ids, int32_t *n_ids) {
    uint32_t flags = QL_TOK_PARSE_SPECIAL | (r->pr.add_special_tokens ? QL_TOK_ADD_SPECIAL : 0);
    return encode(r->srv->model.tok, &r->arena, p->text, p->text_len, flags, ids, n_ids);
}

static int prepare_inner(ql_req_t *r) {
    ql_srv_t *s = r->srv;
    const ql_tok_t *tok = s->model.tok;
    ql_proto_opts_t opts = {s->served_model, s->cfg->max_n, s->lim.n_vocab, s->lim.max_model_len};
    int rc = ql_proto_parse_request(r->ep, r->body, r->body_len, &opts, &r->arena, &r->pr, &r->err);
    if (rc != 0) return rc;
    ql_proto_request_t *pr = &r->pr;

    if (r->ep == QL_PROTO_ENDPOINT_TOKENIZE) {
        int32_t *ids = NULL, n = 0;
        if (pr->n_messages > 0)
            rc = chat_prompt(r, &ids, &n);
        else
            rc = text_prompt(r, &pr->prompts[0], &ids, &n);
        if (rc == 0) rc = ql_proto_tokenize_json(ids, n, s->lim.max_model_len, &r->prebuilt);
        return rc;
    }
    if (r->ep == QL_PROTO_ENDPOINT_DETOKENIZE) {
        const char *text = NULL;
        size_t len = 0;
        rc = decode(tok, &r->arena, pr->tokens, pr->n_tokens, QL_TOK_RENDER_SPECIAL, &text, &len);
        if (rc == 0) rc = ql_proto_detokenize_json(text, len, &r->prebuilt);
        return rc;
    }

    if (r->ep == QL_PROTO_ENDPOINT_COMPLETIONS && pr->echo && (pr->logprobs || pr->top_logprobs)) {
        ql_proto_error_invalid(
            &r->err, "echo",
            "echo with logprobs needs the prompt's logprobs, which quill does not "
            "compute; drop one of them");
        return QL_EINVAL;
    }
    r->n_prompts = r->ep == QL_PROTO_ENDPOINT_CHAT ? 1 : pr->n_prompts;
    size_t np = (size_t)r->n_prompts;
    r->prompt_ids = ql_arena_alloc(&r->arena, np * sizeof *r->prompt_ids);
    r->n_prompt_ids = ql_arena_alloc(&r->arena, np * sizeof *r->n_prompt_ids);
    r->echo = ql_arena_alloc(&r->arena, np * sizeof *r->echo);
    r->echo_len = ql_arena_alloc(&r->arena, np * sizeof *r->echo_len);
    if (!r->prompt_ids || !r->n_prompt_ids || !r->echo || !r->echo_len) return QL_ENOMEM;
    for (int32_t i = 0; i < r->n_prompts; i++) {
        r->echo[i] = "";
        r->echo_len[i] = 0;
        if (r->ep == QL_PROTO_ENDPOINT_CHAT) {
            rc = chat_prompt(r, &r->prompt_ids[i], &r->n_prompt_ids[i]);
        } else {
            const ql_proto_prompt_t *p = &pr->prompts[i];
            if (p->tokens) {
                r->prompt_ids[i] = (int32_t *)p->tokens;
                r->n_prompt_ids[i] = p->n_tokens;
                if (pr->echo)
                    rc = decode(tok, &r->arena, p->tokens, p->n_tokens, QL_TOK_RENDER_SPECIAL,
                                &r->echo[i], &r->echo_len[i]);
            } else {
                rc = text_prompt(r, p, &r->prompt_ids[i], &r->n_prompt_ids[i]);
                if (pr->echo) {
                    r->echo[i] = p->text;
                    r->echo_len[i] = p->text_len;
                }
            }
        }
        if (rc != 0) return rc;
        int32_t n = r->n_prompt_ids[i];
        const char *param = r->ep == QL_PROTO_ENDPOINT_CHAT ? "messages" : "prompt";
        if (n == 0) {
            ql_proto_error_invalid(&r->err, param, "the prompt is empty (it makes no tokens)");
            return QL_EINVAL;
        }
        int64_t max_len = s->lim.max_model_len;
        if ((pr->max_tokens > 0 && (int64_t)n + pr->max_tokens > max_len) || n >= max_len) {
            ql_proto_error_context_length(&r->err, r->ep == QL_PROTO_ENDPOINT_CHAT, max_len, n,
                                          pr->max_tokens > 0 ? pr->max_tokens : -1);
            return QL_ERANGE;
        }
    }
    if (pr->n_logit_bias > 0) {
        r->bias = ql_arena_alloc(&r->arena, sizeof *r->bias * (size_t)pr->n_logit_bias);
        if (!r->bias) return QL_ENOMEM;
        for (int32_t i = 0; i < pr->n_logit_bias; i++) {
            r->bias[i].token = pr->logit_bias[i].token;
            r->bias[i].bias = pr->logit_bias[i].bias;
        }
    }
    if (pr->n_stop > 0) {
        r->stops = ql_arena_alloc(&r->arena, sizeof *r->stops * (size_t)pr->n_stop);
        if (!r->stops) return QL_ENOMEM;
        for (int32_t i = 0; i < pr->n_stop; i++) {
            r->stops[i].text = pr->stop[i].ptr;
            r->stops[i].len = pr->stop[i].len;
        }
    }
    return 0;
}

static void prepare_work(uv_work_t *w) {
    ql_req_t *r = w->data;
    r->prep_rc = prepare_inner(r);
    if (r->prep_rc != 0 && r->err.status == 0) {
        if (r->prep_rc == QL_ENOMEM)
            ql_proto_error_internal(&r->err, "out of memory");
        else
            ql_proto_error_internal(&r->err, ql_strerror(r->prep_rc));
    }
}

/* ---- submit (loop) ---- */

static void on_engine_event(const ql_engine_event_t *ev, void *ud);

static void stream_begin(ql_req_t *r);

static void submit(ql_req_t *r) {
    ql_srv_t *s = r->srv;
    const ql_proto_request_t *pr = &r->pr;
    ql_proto_error_t e;
    if (s->state != QL_SRV_READY) {
        ql_proto_error_unavailable(&e, s->state == QL_SRV_FAULTED ? "the backend failed"
                                                                  : "the server is shutting down");
        req_fail(r, &e, NULL);
        return;
    }
    ql_engine_counters_t k;
    ql_engine_get_counters(s->engine, &k);
    if ((int64_t)k.n_waiting + r->n_prompts > s->cfg->max_queue) {
        int per_step = s->lim.max_num_seqs > 0 ? s->lim.max_num_seqs : 1;
        int retry = 1 + k.n_waiting / per_step;
        if (retry > 60) retry = 60;
        ql_proto_error_queue_full(&e, k.n_waiting, retry);
        char extra[48];
        snprintf(extra, sizeof extra, "Retry-After: %d\r\n", retry);
        QL_RLOG_INFO(r->id, "queue full (%d waiting, --max-queue %d): 429", k.n_waiting,
                     s->cfg->max_queue);
        req_fail(r, &e, extra);
        return;
    }

    r->n_choices = r->n_prompts * pr->n;
    r->choices = ql_xcalloc((size_t)r->n_choices, sizeof *r->choices);
    r->subs = ql_xcalloc((size_t)r->n_prompts, sizeof *r->subs);
    r->stream = pr->stream;
    uint64_t seed = pr->has_seed ? (uint64_t)pr->seed : rng_next(&s->id_rng);
    for (int32_t i = 0; i < r->n_prompts; i++) {
        ql_sub_t *sb = &r->subs[i];
        sb->req = r;
        sb->srv = s;
        sb->index = i;
        ql_engine_request_t er = ql_engine_request_default();
        er.id = r->id;
        er.prompt = r->prompt_ids[i];
        er.n_prompt = r->n_prompt_ids[i];
        er.sampling.temperature = pr->temperature;
        er.sampling.top_k = pr->top_k;
        er.sampling.top_p = pr->top_p;
        er.sampling.min_p = pr->min_p;
        er.sampling.repetition_penalty = pr->repetition_penalty;
        er.sampling.presence_penalty = pr->presence_penalty;
        er.sampling.frequency_penalty = pr->frequency_penalty;
        /* each prompt's choices draw from their own seeds: choice j of prompt i from
         * seed + i * n + j (the engine adds j) */
        er.sampling.seed = seed + (uint64_t)i * (uint64_t)pr->n;
        er.sampling.logprobs = pr->logprobs || pr->top_logprobs > 0;
        er.sampling.top_logprobs = pr->top_logprobs;
        er.sampling.logit_bias = r->bias;
        er.sampling.n_logit_bias = pr->n_logit_bias;
        er.n = pr->n;
        er.max_tokens = pr->max_tokens > 0 ? pr->max_tokens : 0;
        er.min_tokens = pr->min_tokens;
        er.ignore_eos = pr->ignore_eos;
        /* the body's -1 (absent) = the server's setting, 0 = none: the engine's 0 and -1 */
        er.spec_tokens = pr->spec_tokens < 0 ? 0 : pr->spec_tokens == 0 ? -1 : pr->spec_tokens;
        er.stop = r->stops;
        er.n_stop = pr->n_stop;
        er.on_event = on_engine_event;
        er.user_data = sb;
        char err[256] = "";
        int rc = ql_engine_submit(s->engine, &er, &sb->handle, err, sizeof err);
        if (rc != 0) {
            switch (rc) {
            case QL_ERANGE:
            case QL_ENOSPC:
                ql_proto_error_context_length(&e, r->chat, s->lim.max_model_len, er.n_prompt,
                                              pr->max_tokens > 0 ? pr->max_tokens : -1);
                break;
            case QL_EINVAL:
                ql_proto_error_invalid(&e, NULL, "%s", err[0] ? err : "invalid request");
                break;
            case QL_ESTATE:
                ql_proto_error_unavailable(&e, ql_engine_healthy(s->engine)
                                                   ? "the server is shutting down"
                                                   : "the backend failed");
                break;
            default: ql_proto_error_internal(&e, NULL); break;
            }
            QL_RLOG_INFO(r->id, "refused by the engine: %s (%s)", err, ql_strerror(rc));
            req_fail(r, &e, NULL);
            return;
        }
        sb->submitted = 1;
        r->n_submitted++;
        r->refs++;
    }
    if (r->stream) stream_begin(r);
}

static void prepare_done(uv_work_t *w, int status) {
    ql_req_t *r = w->data;
    (void)status;
    if (!r->conn) { /* the client went away meanwhile */
        req_unref(r);
        return;
    }
    if (r->prep_rc != 0) {
        req_fail(r, &r->err, NULL);
    } else if (r->ep == QL_PROTO_ENDPOINT_TOKENIZE || r->ep == QL_PROTO_ENDPOINT_DETOKENIZE) {
        r->done = 1;
        reply_json(r, 200, &r->prebuilt);
    } else {
        submit(r);
    }
    if (r->conn) ql__http_flush(r->conn);
    req_unref(r); /* the work's reference */
}

void ql__api_handle(ql_srv_t *s, ql_conn_t *c, const ql_exchange_t *x) {
    switch (x->route) {
    case QL_ROUTE_HEALTH:
    case QL_ROUTE_READY:
    case QL_ROUTE_METRICS:
    case QL_ROUTE_MODELS: handle_simple(s, c, x->route); return;
    default: break;
    }
    ql_req_t *r = ql_xcalloc(1, sizeof *r);
    s->n_reqs++;
    r->srv = s;
    r->conn = c;
    r->route = x->route;
    r->t_arrival_ns = x->t_arrival_ns;
    r->created = (int64_t)time(NULL);
    r->refs = 2; /* the exchange, the prepare work */
    ql_arena_init(&r->arena, 16 * 1024);
    ql_arena_init(&r->scratch, 16 * 1024);
    switch (x->route) {
    case QL_ROUTE_COMPLETIONS: r->ep = QL_PROTO_ENDPOINT_COMPLETIONS; break;
    case QL_ROUTE_CHAT:
        r->ep = QL_PROTO_ENDPOINT_CHAT;
        r->chat = 1;
        break;
    case QL_ROUTE_TOKENIZE: r->ep = QL_PROTO_ENDPOINT_TOKENIZE; break;
    default: r->ep = QL_PROTO_ENDPOINT_DETOKENIZE; break;
    }
    ql__api_new_id(s,
                   r->chat                                  ? "chatcmpl-"
                   : r->ep == QL_PROTO_ENDPOINT_COMPLETIONS ? "cmpl-"
                                                            : "tok-",
                   r->id, sizeof r->id);
    r->body = ql_xmalloc(x->body_len + 1);
    memcpy(r->body, x->body, x->body_len);
    r->body[x->body_len] = '\0';
    r->body_len = x->body_len;
    ql__http_set_req(c, r);
    r->work.data = r;
    int rc = uv_queue_work(s->loop, &r->work, prepare_work, prepare_done);
    if (rc != 0) {
        r->refs--; /* no work */
        ql_proto_error_t e;
        ql_proto_error_internal(&e, "could not queue the request");
        req_fail(r, &e, NULL);
    }
}

/* ---- the engine thread's side ---- */

static void ob_reserve(obuf_t *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 1024;
    while (cap < b->len + more) cap *= 2;
    b->data = ql_xrealloc(b->data, cap);
    b->cap = cap;
}

static size_t rec_size(int32_t n_tokens, int has_lp, size_t text_len) {
    size_t n = sizeof(rec_t) + (size_t)n_tokens * sizeof(int32_t) +
               (has_lp ? (size_t)n_tokens * sizeof(ql_sample_result_t) : 0) + text_len;
    return (n + 7) & ~(size_t)7;
}

/* Runs on the engine thread: copy, link, wake. Never touches the request beyond its sub. */
static void on_engine_event(const ql_engine_event_t *ev, void *ud) {
    ql_sub_t *sb = ud;
    ql_srv_t *s = sb->srv;
    uint64_t now = ql_time_ns();
    ql_outbox_lock(&s->outbox);
    if (ev->kind == QL_ENGINE_EVENT_OUTPUT) {
        int has_lp = ev->logprobs != NULL;
        size_t sz = rec_size(ev->n_tokens, has_lp, ev->text_len);
        ob_reserve(&sb->ob, sz);
        char *p = sb->ob.data + sb->ob.len;
        rec_t rec = {ev->choice, ev->n_tokens, (int32_t)ev->finish_reason,
                     has_lp,     now,          (uint32_t)ev->text_len,
                     0};
        memcpy(p, &rec, sizeof rec);
        p += sizeof rec;
        memcpy(p, ev->tokens, (size_t)ev->n_tokens * sizeof(int32_t));
        p += (size_t)ev->n_tokens * sizeof(int32_t);
        if (has_lp) {
            memcpy(p, ev->logprobs, (size_t)ev->n_tokens * sizeof(ql_sample_result_t));
            p += (size_t)ev->n_tokens * sizeof(ql_sample_result_t);
        }
        if (ev->text_len) memcpy(p, ev->text, ev->text_len);
        sb->ob.len += sz;
    } else {
        sb->final_kind = ev->kind;
        sb->stats = ev->stats;
        sb->status = ev->status;
        snprintf(sb->message, sizeof sb->message, "%s", ev->message ? ev->message : "");
    }
    ql_outbox_link_locked(&s->outbox, &sb->node);
    /* NOTE(async-under-lock): woken before unlocking: once the lock is released the loop may
     * read a final event, free the request and, its last one gone, close the async handle;
     * nothing here may touch the server after the unlock */
    uv_async_send(&s->outbox_async);
    ql_outbox_unlock(&s->outbox);
}

/* ---- the loop's side: records → output ---- */

static void build_logprobs(ql_req_t *r, ql_arena_t *a, const ql_sample_result_t *lps,
                           const int32_t *offsets, int32_t n, ql_proto_logprob_t **out) {
    const ql_tok_t *tok = r->srv->model.tok;
    ql_proto_logprob_t *lp = n ? ql_arena_alloc(a, sizeof *lp * (size_t)n) : NULL;
    for (int32_t i = 0; i < n && lp; i++) {
        const ql_sample_result_t *sr = &lps[i];
        const char *bytes = "";
        size_t len = 0;
        ql_tok_piece(tok, sr->token, QL_TOK_RENDER_SPECIAL, &bytes, &len);
        lp[i].token = bytes;
        lp[i].token_len = len;
        lp[i].logprob = sr->logprob;
        lp[i].text_offset = offsets ? offsets[i] : 0;
        lp[i].n_top = r->pr.top_logprobs > 0 ? sr->n_top : 0;
        lp[i].top = NULL;
        if (lp[i].n_top > 0) {
            ql_proto_top_logprob_t *top = ql_arena_alloc(a, sizeof *top * (size_t)lp[i].n_top);
            if (!top) {
                lp[i].n_top = 0;
                continue;
            }
            for (int32_t k = 0; k < lp[i].n_top; k++) {
                const char *tb = "";
                size_t tl = 0;
                ql_tok_piece(tok, sr->top_tokens[k], QL_TOK_RENDER_SPECIAL, &tb, &tl);
                top[k].token = tb;
                top[k].token_len = tl;
                top[k].logprob = sr->top_logprobs[k];
            }
            lp[i].top = top;
        }
    }
    *out = lp;
}

/* Characters a token adds to the text (what text_offset counts). */
static int64_t token_chars(const ql_tok_t *tok, int32_t id) {
    const char *b = "";
    size_t len = 0;
    ql_tok_piece(tok, id, 0, &b, &len);
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) n += ((unsigned char)b[i] & 0xc0) != 0x80;
    return n;
}

static void write_chunk(ql_req_t *r, const ql_proto_choice_t *ch) {
    ql_proto_response_t resp = {r->id, r->created, r->srv->served_model, ch,
                                1,     NULL,       r->pr.include_usage};
    r->sse.len = 0;
    if (ql_proto_sse_chunks(r->ep, &resp, &r->sse) == 0 && r->sse.len)
        ql__http_stream_send(r->conn, r->sse.data, r->sse.len);
}

static void stream_begin(ql_req_t *r) {
    ql__http_stream_start(r->conn, "text/event-stream; charset=utf-8");
    for (int32_t i = 0; i < r->n_choices; i++) {
        ql_proto_choice_t ch;
        memset(&ch, 0, sizeof ch);
        ch.index = i;
        if (r->chat) {
            ch.first = 1; /* the role delta goes first, at once */
        } else {
            int32_t p = i / r->pr.n;
            if (!r->echo_len[p]) continue;
            ch.text = r->echo[p];
            ch.text_len = r->echo_len[p];
        }
        write_chunk(r, &ch);
    }
}

static void read_record(ql_req_t *r, ql_sub_t *sb, const rec_t *rec, const char *p) {
    ql_srv_t *s = r->srv;
    const int32_t *tokens = (const int32_t *)p;
    p += (size_t)rec->n_tokens * sizeof(int32_t);
    const ql_sample_result_t *lps = NULL;
    if (rec->has_lp) {
        lps = (const ql_sample_result_t *)p;
        p += (size_t)rec->n_tokens * sizeof(ql_sample_result_t);
    }
    const char *text = p;
    int32_t idx = sb->index * r->pr.n + rec->choice;
    QL_ASSERT(idx >= 0 && idx < r->n_choices);
    choice_t *ch = &r->choices[idx];
    if (rec->n_tokens > 0) {
        if (ch->t_last_ns)
            ql__hist_observe(&s->metrics.itl,
                             (double)(rec->t_ns - ch->t_last_ns) * 1e-9 / rec->n_tokens);
        ch->t_last_ns = rec->t_ns;
    }
    if (rec->finish) ch->finish = (ql_finish_reason_t)rec->finish;
    if (r->failed || r->done || !r->conn) return;

    int want_lp = r->pr.logprobs || r->pr.top_logprobs > 0;
    if (r->stream) {
        ql_arena_clear(&r->scratch);
        int32_t *offs = NULL;
        if (want_lp && lps && rec->n_tokens) {
            offs = ql_arena_alloc(&r->scratch, sizeof *offs * (size_t)rec->n_tokens);
            for (int32_t i = 0; i < rec->n_tokens && offs; i++) {
                offs[i] = (int32_t)ch->chars;
                ch->chars += token_chars(s->model.tok, tokens[i]);
            }
        }
        ql_proto_choice_t pc;
        memset(&pc, 0, sizeof pc);
        pc.index = idx;
        pc.text = text;
        pc.text_len = rec->text_len;
        pc.finish_reason = (ql_proto_finish_t)rec->finish;
        if (want_lp) {
            ql_proto_logprob_t *plp = NULL;
            if (lps) build_logprobs(r, &r->scratch, lps, offs, rec->n_tokens, &plp);
            pc.has_logprobs = 1;
            pc.logprobs = plp;
            pc.n_logprobs = plp ? rec->n_tokens : 0;
        }
        write_chunk(r, &pc);
        return;
    }
    if (rec->text_len) ql_proto_buf_append(&ch->text, text, rec->text_len);
    if (want_lp && lps) {
        if (ch->n_lps + rec->n_tokens > ch->cap_lps) {
            int32_t cap = ch->cap_lps ? ch->cap_lps : 16;
            while (cap < ch->n_lps + rec->n_tokens) cap *= 2;
            ch->lps = ql_xrealloc(ch->lps, sizeof *ch->lps * (size_t)cap);
            ch->offsets = ql_xrealloc(ch->offsets, sizeof *ch->offsets * (size_t)cap);
            ch->cap_lps = cap;
        }
        for (int32_t i = 0; i < rec->n_tokens; i++) {
            ch->lps[ch->n_lps] = lps[i];
            ch->offsets[ch->n_lps] = (int32_t)ch->chars;
            ch->chars += token_chars(s->model.tok, tokens[i]);
            ch->n_lps++;
        }
    }
}

/* Every sub ended well: the whole response, or the stream's last events. */
static void finish_response(ql_req_t *r) {
    r->done = 1;
    ql_proto_usage_t *u = &r->usage;
    QL_RLOG_INFO(r->id, "%s%s: %lld prompt tokens (%lld cached), %lld completion tokens, %.3f s",
                 r->chat ? "chat" : "completion", r->stream ? " stream" : "",
                 (long long)u->prompt_tokens, (long long)u->cached_tokens,
                 (long long)u->completion_tokens, (double)(ql_time_ns() - r->t_arrival_ns) * 1e-9);
    if (r->stream) {
        ql_proto_buf_t b;
        ql_proto_buf_init(&b);
        if (r->pr.include_usage) {
            ql_proto_response_t resp = {r->id, r->created, r->srv->served_model, NULL, 0, u, 1};
            ql_proto_sse_usage(r->ep, &resp, &b);
        }
        ql_proto_sse_done(&b);
        ql__http_stream_send(r->conn, b.data, b.len);
        ql_proto_buf_free(&b);
        ql__http_stream_end(r->conn);
        req_detach(r);
        return;
    }
    ql_arena_clear(&r->scratch);
    ql_proto_choice_t *pcs = ql_arena_alloc(&r->scratch, sizeof *pcs * (size_t)r->n_choices);
    int want_lp = r->pr.logprobs || r->pr.top_logprobs > 0;
    ql_proto_buf_t *texts = ql_xcalloc((size_t)r->n_choices, sizeof *texts);
    for (int32_t i = 0; i < r->n_choices && pcs; i++) {
        choice_t *ch = &r->choices[i];
        memset(&pcs[i], 0, sizeof pcs[i]);
        pcs[i].index = i;
        int32_t p = i / r->pr.n;
        if (!r->chat && r->echo_len[p]) {
            ql_proto_buf_append(&texts[i], r->echo[p], r->echo_len[p]);
            if (ch->text.len) ql_proto_buf_append(&texts[i], ch->text.data, ch->text.len);
            pcs[i].text = texts[i].data;
            pcs[i].text_len = texts[i].len;
        } else {
            pcs[i].text = ch->text.data ? ch->text.data : "";
            pcs[i].text_len = ch->text.len;
        }
        pcs[i].finish_reason = (ql_proto_finish_t)ch->finish;
        if (want_lp) {
            ql_proto_logprob_t *plp = NULL;
            build_logprobs(r, &r->scratch, ch->lps, ch->offsets, ch->n_lps, &plp);
            pcs[i].has_logprobs = 1;
            pcs[i].logprobs = plp;
            pcs[i].n_logprobs = plp ? ch->n_lps : 0;
        }
    }
    ql_proto_response_t resp = {r->id, r->created, r->srv->served_model, pcs, r->n_choices, u, 0};
    ql_proto_buf_t b;
    ql_proto_buf_init(&b);
    int rc = pcs ? ql_proto_response_json(r->ep, &resp, &b) : QL_ENOMEM;
    for (int32_t i = 0; i < r->n_choices; i++) ql_proto_buf_free(&texts[i]);
    free(texts);
    if (rc == 0) {
        reply_json(r, 200, &b);
    } else {
        ql_proto_error_t e;
        ql_proto_error_internal(&e, "could not write the response");
        r->done = 0;
        req_fail(r, &e, NULL);
    }
    ql_proto_buf_free(&b);
}

static void map_engine_error(ql_req_t *r, const ql_sub_t *sb, ql_proto_error_t *e) {
    ql_srv_t *s = r->srv;
    if (sb->status == QL_ECANCELED) {
        ql_proto_error_unavailable(e, "the server is shutting down; the request was not completed");
    } else if (sb->status == QL_ERANGE) {
        ql_proto_error_invalid(e, NULL,
                               "no token could be sampled: every token is banned (logit_bias)");
    } else if (!ql_engine_healthy(s->engine)) {
        ql_proto_error_set(e, 500, "server_error", "backend_failure", NULL,
                           "the model backend failed; the request was not completed and the server "
                           "is stopping");
    } else {
        ql_proto_error_internal(e, NULL);
    }
}

static void read_final(ql_req_t *r, ql_sub_t *sb) {
    ql_srv_t *s = r->srv;
    sb->final_done = 1;
    r->n_final++;
    const ql_engine_stats_t *st = &sb->stats;
    r->usage.prompt_tokens += st->n_prompt_tokens;
    r->usage.completion_tokens += st->n_completion_tokens;
    r->usage.cached_tokens += st->n_cached_prompt_tokens;
    r->usage.has_spec = s->lim.spec_k > 0 && r->pr.spec_tokens != 0;
    r->usage.spec_accepted_tokens += st->n_accepted_tokens;
    r->usage.spec_rejected_tokens += st->n_draft_tokens - st->n_accepted_tokens;
    if (st->t_first_token_ns && st->t_first_token_ns > r->t_arrival_ns)
        ql__hist_observe(&s->metrics.ttft, (double)(st->t_first_token_ns - r->t_arrival_ns) * 1e-9);
    if (st->t_scheduled_ns && st->t_scheduled_ns > st->t_submit_ns)
        ql__hist_observe(&s->metrics.queue, (double)(st->t_scheduled_ns - st->t_submit_ns) * 1e-9);
    if (sb->rd_final == QL_ENGINE_EVENT_FINISHED) {
        ql__hist_observe(&s->metrics.e2e, (double)(st->t_finish_ns - r->t_arrival_ns) * 1e-9);
        ql__hist_observe(&s->metrics.prompt_len, st->n_prompt_tokens);
        ql__hist_observe(&s->metrics.gen_len, st->n_completion_tokens);
        for (int32_t j = 0; j < r->pr.n; j++) {
            ql_finish_reason_t f = r->choices[sb->index * r->pr.n + j].finish;
            if (f == QL_FINISH_REASON_LENGTH)
                s->metrics.success_length++;
            else
                s->metrics.success_stop++;
        }
    } else {
        int ours = sb->status == QL_ECANCELED && r->cancelled;
        if (!ours) {
            s->metrics.failed++;
            QL_RLOG_WARN(r->id, "engine error: %s (%s)", sb->message, ql_strerror(sb->status));
            ql_proto_error_t e;
            map_engine_error(r, sb, &e);
            req_fail(r, &e, NULL);
            if (!ql_engine_healthy(s->engine)) ql__srv_fault(s, sb->message);
        }
    }
    if (r->n_final == r->n_submitted && !r->failed && !r->done && r->conn) finish_response(r);
}

/* NOTE(loop-budget): one call reads for at most OUTBOX_BUDGET_NS, then wakes itself again, so a
 * burst of engine events (a fast model, many streams, slow JSON in a debug build) never keeps
 * the loop from its sockets: /metrics, new requests and cut-offs stay timely. Subs are read in
 * turn (FIFO), each for up to OUTBOX_SLICE records at a time. */
#define OUTBOX_BUDGET_NS (5ull * 1000000ull)
#define OUTBOX_SLICE 64
/* A connection's buffered output is sent once it reaches this, so the output cap is checked
 * while a long backlog is being read, not after. */
#define OUTBOX_FLUSH_BYTES (64u * 1024u)

static void pending_push(ql_srv_t *s, ql_sub_t *sb) {
    if (sb->in_pending) return;
    sb->in_pending = 1;
    sb->loop_next = NULL;
    if (s->pending_tail)
        s->pending_tail->loop_next = sb;
    else
        s->pending_head = sb;
    s->pending_tail = sb;
}

static ql_sub_t *pending_pop(ql_srv_t *s) {
    ql_sub_t *sb = s->pending_head;
    if (!sb) return NULL;
    s->pending_head = sb->loop_next;
    if (!s->pending_head) s->pending_tail = NULL;
    sb->loop_next = NULL;
    sb->in_pending = 0;
    return sb;
}

/* Under the outbox lock (NOTE(outbox-links)): what the engine wrote moves to the loop's side. */
static void take_sub(ql_outbox_node_t *n, void *ud) {
    ql_srv_t *s = ud;
    ql_sub_t *sb = (ql_sub_t *)n;
    if (sb->rd_off == sb->rd.len) { /* all read: swap the buffers */
        obuf_t t = sb->rd;
        sb->rd = sb->ob;
        t.len = 0;
        sb->ob = t;
        sb->rd_off = 0;
    } else if (sb->ob.len) { /* a backlog: append behind it */
        size_t need = sb->rd.len + sb->ob.len;
        if (need > sb->rd.cap) {
            sb->rd.data = ql_xrealloc(sb->rd.data, need);
            sb->rd.cap = need;
        }
        memcpy(sb->rd.data + sb->rd.len, sb->ob.data, sb->ob.len);
        sb->rd.len = need;
        sb->ob.len = 0;
    }
    sb->rd_final = sb->final_kind;
    pending_push(s, sb);
}

void ql__api_outbox_cb(uv_async_t *a) {
    ql_srv_t *s = a->data;
    ql_outbox_take(&s->outbox, take_sub, s);

    uint64_t t0 = ql_time_ns();
    ql_sub_t *sb;
    while ((sb = pending_pop(s)) != NULL) {
        ql_req_t *r = sb->req;
        r->refs++; /* held while reading: a flush may drop the connection's reference */
        int n = 0;
        while (sb->rd_off < sb->rd.len && n < OUTBOX_SLICE) {
            const rec_t *rec = (const rec_t *)(sb->rd.data + sb->rd_off);
            read_record(r, sb, rec, (const char *)(rec + 1));
            sb->rd_off += rec_size(rec->n_tokens, rec->has_lp, rec->text_len);
            n++;
            if (r->conn && ql__http_out_len(r->conn) >= OUTBOX_FLUSH_BYTES) ql__http_flush(r->conn);
        }
        if (sb->rd_off < sb->rd.len) {
            pending_push(s, sb); /* more next turn */
        } else if (sb->rd_final && !sb->final_done) {
            read_final(r, sb);
            r->refs--; /* the sub's reference (r->refs stays >= 1: ours) */
        }
        if (r->conn) ql__http_flush(r->conn);
        req_unref(r);
        if (ql_time_ns() - t0 > OUTBOX_BUDGET_NS) break;
    }
    if (s->pending_head) uv_async_send(&s->outbox_async);
}
