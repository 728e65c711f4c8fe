/*
 * proto/response.c — the bodies quill sends: completions and chat completions (whole or as SSE
 * chunks), the usage chunk, /v1/models, /tokenize and /detokenize. Each writer builds a jansson
 * tree in OpenAI's key order and appends it compact to the caller's buffer.
 */
#define QL_LOG_MODULE "proto"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto-internal.h"

static const char *const k_finish[] = {NULL, "stop", "length", "content_filter", "tool_calls"};

const char *ql_proto_finish_name(ql_proto_finish_t f) {
    return (unsigned)f < QL_ARRAY_LEN(k_finish) ? k_finish[f] : NULL;
}

/* ---- values ---- */

static json_t *str(const char *s) { return ql__proto_json_text(s, s ? strlen(s) : 0); }

static json_t *finish(ql_proto_finish_t f) {
    const char *n = ql_proto_finish_name(f);
    return n ? json_string(n) : json_null();
}

/* NOTE(logprob-format): a float logprob is written as the shortest decimal that reads back as
 * the same float32 (numpy's repr of a float32), e.g. -0.3132617 rather than the double
 * expansion -0.3132616877555847 that vLLM's .item() prints. -inf and values below -9999 are written as
 * -9999.0 (OpenAI and vLLM clamp the same way: JSON has no infinity); NaN is null. */
static json_t *logprob_value(float f) {
    if (isnan(f)) return json_null();
    if (!(f > QL_PROTO_LOGPROB_MIN)) f = QL_PROTO_LOGPROB_MIN;
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)f);
        if ((float)strtod(buf, NULL) == f) break;
    }
    return json_real(strtod(buf, NULL));
}

static json_t *bytes_array(const char *s, size_t len) {
    json_t *a = json_array();
    if (!a) return NULL;
    for (size_t i = 0; i < len; i++) {
        if (ql__proto_push(a, json_integer((unsigned char)s[i]))) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *usage_obj(const ql_proto_usage_t *u) {
    json_t *o = json_object(), *d = json_object();
    if (!o || !d) goto fail;
    if (ql__proto_set(d, "cached_tokens", json_integer(u->cached_tokens))) goto fail;
    if (ql__proto_set(o, "prompt_tokens", json_integer(u->prompt_tokens)) ||
        ql__proto_set(o, "completion_tokens", json_integer(u->completion_tokens)) ||
        ql__proto_set(o, "total_tokens", json_integer(u->prompt_tokens + u->completion_tokens)))
        goto fail;
    if (ql__proto_set(o, "prompt_tokens_details", d)) {
        d = NULL;
        goto fail;
    }
    d = NULL;
    /* NOTE(spec-usage): speculative decoding's drafts in OpenAI's names for predicted outputs,
     * which count the same thing (proposed tokens the model accepted or not) */
    if (u->has_spec) {
        json_t *cd = json_object();
        if (!cd ||
            ql__proto_set(cd, "accepted_prediction_tokens",
                          json_integer(u->spec_accepted_tokens)) ||
            ql__proto_set(cd, "rejected_prediction_tokens",
                          json_integer(u->spec_rejected_tokens))) {
            json_decref(cd);
            goto fail;
        }
        if (ql__proto_set(o, "completion_tokens_details", cd)) goto fail;
    }
    return o;
fail:
    json_decref(d);
    json_decref(o);
    return NULL;
}

/* ---- logprobs ---- */

/* Chat: {"content":[{"token","logprob","bytes","top_logprobs":[{"token","logprob","bytes"}]}]}
 * NOTE(steal): ql__proto_set/push take the value even when they fail, so every value is created
 * inside the call that hands it over and a failure leaks nothing. */
static json_t *chat_logprobs(const ql_proto_logprob_t *lp, int32_t n) {
    json_t *o = json_object(), *content;
    if (ql__proto_set(o, "content", content = json_array())) goto fail;
    for (int32_t i = 0; i < n; i++) {
        json_t *e, *top;
        if (ql__proto_push(content, e = json_object()) ||
            ql__proto_set(e, "token", ql__proto_json_text(lp[i].token, lp[i].token_len)) ||
            ql__proto_set(e, "logprob", logprob_value(lp[i].logprob)) ||
            ql__proto_set(e, "bytes", bytes_array(lp[i].token, lp[i].token_len)) ||
            ql__proto_set(e, "top_logprobs", top = json_array()))
            goto fail;
        for (int32_t k = 0; k < lp[i].n_top; k++) {
            const ql_proto_top_logprob_t *t = &lp[i].top[k];
            json_t *te;
            if (ql__proto_push(top, te = json_object()) ||
                ql__proto_set(te, "token", ql__proto_json_text(t->token, t->token_len)) ||
                ql__proto_set(te, "logprob", logprob_value(t->logprob)) ||
                ql__proto_set(te, "bytes", bytes_array(t->token, t->token_len)))
                goto fail;
        }
    }
    return o;
fail:
    json_decref(o);
    return NULL;
}

/* Completions: {"tokens":[...],"token_logprobs":[...],"top_logprobs":[{token:logprob}],
 * "text_offset":[...]}. NOTE(top-dict): OpenAI's top_logprobs are objects keyed by token text,
 * so two alternatives with one text (two byte fragments both shown as U+FFFD) keep the first,
 * the more likely. A position without a logprob (an echoed first token) has null for both. */
static json_t *completion_logprobs(const ql_proto_logprob_t *lp, int32_t n) {
    json_t *o = json_object(), *tokens, *lps, *tops, *offs;
    if (ql__proto_set(o, "tokens", tokens = json_array()) ||
        ql__proto_set(o, "token_logprobs", lps = json_array()) ||
        ql__proto_set(o, "top_logprobs", tops = json_array()) ||
        ql__proto_set(o, "text_offset", offs = json_array()))
        goto fail;
    for (int32_t i = 0; i < n; i++) {
        if (ql__proto_push(tokens, ql__proto_json_text(lp[i].token, lp[i].token_len)) ||
            ql__proto_push(lps, logprob_value(lp[i].logprob)) ||
            ql__proto_push(offs, json_integer(lp[i].text_offset)))
            goto fail;
        if (isnan(lp[i].logprob)) {
            if (ql__proto_push(tops, json_null())) goto fail;
            continue;
        }
        json_t *d;
        if (ql__proto_push(tops, d = json_object())) goto fail;
        for (int32_t k = 0; k < lp[i].n_top; k++) {
            const ql_proto_top_logprob_t *t = &lp[i].top[k];
            json_t *key = ql__proto_json_text(t->token, t->token_len);
            if (!key) goto fail;
            const char *ks = json_string_value(key);
            size_t kl = json_string_length(key);
            int rc = 0;
            if (!json_object_getn(d, ks, kl))
                rc = json_object_setn_new_nocheck(d, ks, kl, logprob_value(t->logprob));
            json_decref(key);
            if (rc) goto fail;
        }
    }
    return o;
fail:
    json_decref(o);
    return NULL;
}

static json_t *choice_logprobs(int chat, const ql_proto_choice_t *ch) {
    if (!ch->has_logprobs) return json_null();
    return chat ? chat_logprobs(ch->logprobs, ch->n_logprobs)
                : completion_logprobs(ch->logprobs, ch->n_logprobs);
}

/* ---- objects ---- */

static int check_response(const ql_proto_response_t *r, const ql_proto_buf_t *out) {
    if (!r || !out || !r->id || !r->model || r->n_choices < 0 || (r->n_choices && !r->choices))
        return QL_EINVAL;
    for (int32_t i = 0; i < r->n_choices; i++) {
        const ql_proto_choice_t *c = &r->choices[i];
        if ((c->text_len && !c->text) || c->n_logprobs < 0 || (c->n_logprobs && !c->logprobs) ||
            (unsigned)c->finish_reason >= QL_ARRAY_LEN(k_finish))
            return QL_EINVAL;
        for (int32_t k = 0; k < c->n_logprobs; k++)
            if (c->logprobs[k].n_top < 0 || (c->logprobs[k].n_top && !c->logprobs[k].top) ||
                (c->logprobs[k].token_len && !c->logprobs[k].token))
                return QL_EINVAL;
    }
    return 0;
}

/* {"id","object","created","model"} */
static json_t *head(const ql_proto_response_t *r, const char *object) {
    json_t *o = json_object();
    if (ql__proto_set(o, "id", str(r->id)) || ql__proto_set(o, "object", json_string(object)) ||
        ql__proto_set(o, "created", json_integer(r->created)) ||
        ql__proto_set(o, "model", str(r->model))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* One choice of a whole response. */
static json_t *choice_obj(int chat, const ql_proto_choice_t *ch) {
    json_t *o = json_object(), *m;
    int rc;
    if (chat)
        rc = ql__proto_set(o, "index", json_integer(ch->index)) ||
             ql__proto_set(o, "message", m = json_object()) ||
             ql__proto_set(m, "role", json_string("assistant")) ||
             ql__proto_set(m, "content", ql__proto_json_text(ch->text, ch->text_len));
    else
        rc = ql__proto_set(o, "text", ql__proto_json_text(ch->text, ch->text_len)) ||
             ql__proto_set(o, "index", json_integer(ch->index));
    if (rc || ql__proto_set(o, "logprobs", choice_logprobs(chat, ch)) ||
        ql__proto_set(o, "finish_reason", finish(ch->finish_reason))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int ql_proto_response_json(ql_proto_endpoint_t ep, const ql_proto_response_t *r,
                           ql_proto_buf_t *out) {
    if (ep != QL_PROTO_ENDPOINT_COMPLETIONS && ep != QL_PROTO_ENDPOINT_CHAT) return QL_EINVAL;
    if (check_response(r, out) || !r->usage) return QL_EINVAL;
    int chat = ep == QL_PROTO_ENDPOINT_CHAT;
    json_t *o = head(r, chat ? "chat.completion" : "text_completion"), *choices;
    if (ql__proto_set(o, "choices", choices = json_array())) goto fail;
    for (int32_t i = 0; i < r->n_choices; i++)
        if (ql__proto_push(choices, choice_obj(chat, &r->choices[i]))) goto fail;
    if (ql__proto_set(o, "usage", usage_obj(r->usage))) goto fail;
    int rc = ql__proto_dump(o, NULL, NULL, out);
    json_decref(o);
    return rc;
fail:
    json_decref(o);
    return QL_ENOMEM;
}

/* ---- streams ---- */

enum { DELTA_ROLE, DELTA_TEXT, DELTA_FINISH };

/* One SSE event for one choice: the role delta, a text delta or the finish. */
static int chunk_event(int chat, const ql_proto_response_t *r, const ql_proto_choice_t *ch,
                       int kind, ql_proto_buf_t *out) {
    json_t *o = head(r, chat ? "chat.completion.chunk" : "text_completion"), *choices, *c, *d;
    int rc = QL_ENOMEM;
    if (ql__proto_set(o, "choices", choices = json_array()) ||
        ql__proto_push(choices, c = json_object()))
        goto done;
    /* OpenAI's key order: chat {"index","delta",...}, completions {"text","index",...} */
    if (chat) {
        if (ql__proto_set(c, "index", json_integer(ch->index)) ||
            ql__proto_set(c, "delta", d = json_object()))
            goto done;
        if (kind == DELTA_ROLE && (ql__proto_set(d, "role", json_string("assistant")) ||
                                   ql__proto_set(d, "content", json_string(""))))
            goto done;
        if (kind == DELTA_TEXT &&
            ql__proto_set(d, "content", ql__proto_json_text(ch->text, ch->text_len)))
            goto done;
    } else if (ql__proto_set(c, "text", kind == DELTA_TEXT ? ql__proto_json_text(ch->text, ch->text_len)
                                                           : json_string("")) ||
               ql__proto_set(c, "index", json_integer(ch->index))) {
        goto done;
    }
    if (ql__proto_set(c, "logprobs", kind == DELTA_TEXT ? choice_logprobs(chat, ch) : json_null()) ||
        ql__proto_set(c, "finish_reason",
                      finish(kind == DELTA_FINISH ? ch->finish_reason : QL_PROTO_FINISH_NONE)))
        goto done;
    if (r->include_usage && ql__proto_set(o, "usage", json_null())) goto done;
    rc = ql__proto_dump(o, "data: ", "\n\n", out);
done:
    json_decref(o);
    return rc;
}

int ql_proto_sse_chunks(ql_proto_endpoint_t ep, const ql_proto_response_t *r,
                        ql_proto_buf_t *out) {
    if (ep != QL_PROTO_ENDPOINT_COMPLETIONS && ep != QL_PROTO_ENDPOINT_CHAT) return QL_EINVAL;
    if (check_response(r, out)) return QL_EINVAL;
    int chat = ep == QL_PROTO_ENDPOINT_CHAT;
    size_t len0 = out->len;
    int rc = 0;
    for (int32_t i = 0; i < r->n_choices && !rc; i++) {
        const ql_proto_choice_t *ch = &r->choices[i];
        if (chat && ch->first) rc = chunk_event(chat, r, ch, DELTA_ROLE, out);
        if (!rc && (ch->text_len > 0 || ch->n_logprobs > 0))
            rc = chunk_event(chat, r, ch, DELTA_TEXT, out);
        if (!rc && ch->finish_reason != QL_PROTO_FINISH_NONE)
            rc = chunk_event(chat, r, ch, DELTA_FINISH, out);
    }
    if (rc) { /* all or nothing: no half-sent choice */
        out->len = len0;
        if (out->data) out->data[len0] = '\0';
    }
    return rc;
}

int ql_proto_sse_usage(ql_proto_endpoint_t ep, const ql_proto_response_t *r, ql_proto_buf_t *out) {
    if (ep != QL_PROTO_ENDPOINT_COMPLETIONS && ep != QL_PROTO_ENDPOINT_CHAT) return QL_EINVAL;
    if (!r || !out || !r->id || !r->model || !r->usage) return QL_EINVAL;
    json_t *o = head(r, ep == QL_PROTO_ENDPOINT_CHAT ? "chat.completion.chunk" : "text_completion");
    int rc = QL_ENOMEM;
    if (o && !ql__proto_set(o, "choices", json_array()) &&
        !ql__proto_set(o, "usage", usage_obj(r->usage)))
        rc = ql__proto_dump(o, "data: ", "\n\n", out);
    json_decref(o);
    return rc;
}

/* ---- models, tokenize, detokenize ---- */

int ql_proto_models_json(const ql_proto_model_t *models, int32_t n_models, ql_proto_buf_t *out) {
    if (!out || n_models < 0 || (n_models && !models)) return QL_EINVAL;
    for (int32_t i = 0; i < n_models; i++)
        if (!models[i].id) return QL_EINVAL;
    json_t *o = json_object(), *data;
    int rc = QL_ENOMEM;
    if (ql__proto_set(o, "object", json_string("list")) || ql__proto_set(o, "data", data = json_array()))
        goto done;
    for (int32_t i = 0; i < n_models; i++) {
        const ql_proto_model_t *m = &models[i];
        json_t *e;
        if (ql__proto_push(data, e = json_object()) || ql__proto_set(e, "id", str(m->id)) ||
            ql__proto_set(e, "object", json_string("model")) ||
            ql__proto_set(e, "created", json_integer(m->created)) ||
            ql__proto_set(e, "owned_by", json_string("quill")))
            goto done;
        if (m->max_model_len > 0 && ql__proto_set(e, "max_model_len", json_integer(m->max_model_len)))
            goto done;
    }
    rc = ql__proto_dump(o, NULL, NULL, out);
done:
    json_decref(o);
    return rc;
}

int ql_proto_tokenize_json(const int32_t *tokens, int32_t n_tokens, int32_t max_model_len,
                           ql_proto_buf_t *out) {
    if (!out || n_tokens < 0 || (n_tokens && !tokens)) return QL_EINVAL;
    json_t *o = json_object(), *t;
    int rc = QL_ENOMEM;
    if (ql__proto_set(o, "count", json_integer(n_tokens)) ||
        ql__proto_set(o, "max_model_len", json_integer(max_model_len)) ||
        ql__proto_set(o, "tokens", t = json_array()))
        goto done;
    for (int32_t i = 0; i < n_tokens; i++)
        if (ql__proto_push(t, json_integer(tokens[i]))) goto done;
    rc = ql__proto_dump(o, NULL, NULL, out);
done:
    json_decref(o);
    return rc;
}

int ql_proto_detokenize_json(const char *text, size_t text_len, ql_proto_buf_t *out) {
    if (!out || (text_len && !text)) return QL_EINVAL;
    json_t *o = json_object();
    int rc = QL_ENOMEM;
    if (!ql__proto_set(o, "prompt", ql__proto_json_text(text, text_len)))
        rc = ql__proto_dump(o, NULL, NULL, out);
    json_decref(o);
    return rc;
}
