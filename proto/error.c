/*
 * proto/error.c — OpenAI's error bodies: {"error":{"message","type","param","code"}}, one
 * constructor per status the server sends (see the table in proto/proto.h) and the writer.
 *
 * NOTE(error-wire): the type and code strings are the ones OpenAI's API sends for the same
 * condition (401: invalid_request_error + invalid_api_key; 404: model_not_found; 429: type
 * "requests" + rate_limit_exceeded; 500: server_error). Where OpenAI has no such error (413,
 * 405, 503 draining) the code is quill's own, in OpenAI's snake_case style. OpenAI's SDKs pick
 * the exception class from the HTTP status alone.
 */
#define QL_LOG_MODULE "proto"
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "proto/proto-internal.h"

static const char k_invalid[] = "invalid_request_error";
static const char k_server[] = "server_error";

static void set_param(ql_proto_error_t *e, const char *param) {
    e->param[0] = '\0';
    if (param) snprintf(e->param, sizeof e->param, "%s", param);
}

/* NOTE(error-one-line): a message may quote the client's own bytes (jansson's parse error
 * quotes the bad token, a model name is echoed back), and those may hold newlines or other
 * control characters: each becomes a space, so a message is always one line, in the JSON body
 * and in the server's log. Found by fuzz-request. */
static void one_line(char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) *s = ' ';
}

static void vset(ql_proto_error_t *e, int status, const char *type, const char *code,
                 const char *param, const char *fmt, va_list ap) {
    e->status = status;
    e->type = type;
    e->code = code;
    set_param(e, param);
    one_line(e->param);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    one_line(e->message);
}

void ql_proto_error_set(ql_proto_error_t *e, int status, const char *type, const char *code,
                        const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vset(e, status, type, code, param, fmt, ap);
    va_end(ap);
}

void ql_proto_error_invalid(ql_proto_error_t *e, const char *param, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vset(e, 400, k_invalid, NULL, param, fmt, ap);
    va_end(ap);
}

/* OpenAI's wording, e.g. "This model's maximum context length is 4097 tokens. However, you
 * requested 4162 tokens (162 in the messages, 4000 in the completion). Please reduce the length
 * of the messages or completion." */
void ql_proto_error_context_length(ql_proto_error_t *e, int chat, int64_t max_model_len,
                                   int64_t n_prompt, int64_t n_completion) {
    const char *what = chat ? "messages" : "prompt";
    if (n_completion < 0) {
        ql_proto_error_set(e, 400, k_invalid, "context_length_exceeded", what,
                           "This model's maximum context length is %" PRId64
                           " tokens. However, your %s resulted in %" PRId64
                           " tokens. Please reduce the length of the %s.",
                           max_model_len, what, n_prompt, what);
    } else {
        ql_proto_error_set(e, 400, k_invalid, "context_length_exceeded", what,
                           "This model's maximum context length is %" PRId64
                           " tokens. However, you requested %" PRId64 " tokens (%" PRId64
                           " in the %s, %" PRId64
                           " in the completion). Please reduce the length of the %s or completion.",
                           max_model_len, n_prompt + n_completion, n_prompt, what, n_completion,
                           what);
    }
}

void ql_proto_error_auth(ql_proto_error_t *e, int key_sent) {
    if (key_sent)
        ql_proto_error_set(e, 401, k_invalid, "invalid_api_key", NULL,
                           "Incorrect API key provided.");
    else
        ql_proto_error_set(e, 401, k_invalid, NULL, NULL,
                           "You didn't provide an API key. You need to provide your API key in an "
                           "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                           "YOUR_KEY).");
}

void ql_proto_error_model_not_found(ql_proto_error_t *e, const char *model) {
    ql_proto_error_set(e, 404, k_invalid, "model_not_found", NULL,
                       "The model `%.200s` does not exist or you do not have access to it.",
                       model ? model : "");
}

void ql_proto_error_route_not_found(ql_proto_error_t *e, const char *method, const char *path) {
    ql_proto_error_set(e, 404, k_invalid, NULL, NULL, "Invalid URL (%.16s %.200s)",
                       method ? method : "", path ? path : "");
}

void ql_proto_error_method_not_allowed(ql_proto_error_t *e, const char *method,
                                       const char *path) {
    ql_proto_error_set(e, 405, k_invalid, "method_not_allowed", NULL,
                       "Method %.16s is not allowed for %.200s", method ? method : "",
                       path ? path : "");
}

void ql_proto_error_too_large(ql_proto_error_t *e, uint64_t max_bytes) {
    ql_proto_error_set(e, 413, k_invalid, "request_too_large", NULL,
                       "The request body is larger than this server accepts (%" PRIu64 " bytes).",
                       max_bytes);
}

void ql_proto_error_queue_full(ql_proto_error_t *e, int n_waiting, int retry_after_s) {
    ql_proto_error_set(e, 429, "requests", "rate_limit_exceeded", NULL,
                       "The server is at capacity (%d requests waiting). Please retry after %d "
                       "seconds.",
                       n_waiting, retry_after_s);
}

void ql_proto_error_internal(ql_proto_error_t *e, const char *detail) {
    if (detail && detail[0])
        ql_proto_error_set(e, 500, k_server, NULL, NULL,
                           "The server had an error while processing your request (%.200s).",
                           detail);
    else
        ql_proto_error_set(e, 500, k_server, NULL, NULL,
                           "The server had an error while processing your request.");
}

void ql_proto_error_unavailable(ql_proto_error_t *e, const char *reason) {
    ql_proto_error_set(e, 503, k_server, "service_unavailable", NULL,
                       "The server cannot take requests now: %.200s. Please retry later.",
                       reason && reason[0] ? reason : "unavailable");
}

/* ---- writer ---- */

json_t *ql__proto_error_obj(const ql_proto_error_t *e) {
    json_t *inner = json_object(), *outer = json_object();
    if (!inner || !outer) goto fail;
    size_t mlen = strnlen(e->message, sizeof e->message);
    size_t plen = strnlen(e->param, sizeof e->param);
    if (ql__proto_set(inner, "message", ql__proto_json_text(e->message, mlen)) ||
        ql__proto_set(inner, "type", ql__proto_json_text(e->type ? e->type : k_invalid,
                                                         strlen(e->type ? e->type : k_invalid))) ||
        ql__proto_set(inner, "param", plen ? ql__proto_json_text(e->param, plen) : json_null()) ||
        ql__proto_set(inner, "code",
                      e->code ? ql__proto_json_text(e->code, strlen(e->code)) : json_null()))
        goto fail;
    if (ql__proto_set(outer, "error", inner)) {
        inner = NULL; /* stolen even on failure */
        goto fail;
    }
    return outer;
fail:
    json_decref(inner);
    json_decref(outer);
    return NULL;
}

int ql_proto_error_json(const ql_proto_error_t *e, ql_proto_buf_t *out) {
    if (!e || !out) return QL_EINVAL;
    json_t *j = ql__proto_error_obj(e);
    if (!j) return QL_ENOMEM;
    int rc = ql__proto_dump(j, NULL, NULL, out);
    json_decref(j);
    return rc;
}

int ql_proto_sse_error(const ql_proto_error_t *e, ql_proto_buf_t *out) {
    if (!e || !out) return QL_EINVAL;
    json_t *j = ql__proto_error_obj(e);
    if (!j) return QL_ENOMEM;
    int rc = ql__proto_dump(j, "data: ", "\n\n", out);
    json_decref(j);
    return rc;
}

int ql_proto_sse_done(ql_proto_buf_t *out) {
    if (!out) return QL_EINVAL;
    static const char k_done[] = "data: [DONE]\n\n";
    return ql_proto_buf_append(out, k_done, sizeof k_done - 1) ? QL_ENOMEM : 0;
}
