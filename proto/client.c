/*
 * proto/client.c — the client side of OpenAI's JSON, for `quill bench` (bench/): the streamed
 * request bodies it sends, and what it reads back from any OpenAI-compatible server (stream
 * chunks, usage, errors, /v1/models, /tokenize and /detokenize in vLLM's and llama.cpp's
 * shapes). Only proto/ sees jansson; bench/ gets plain C values.
 */
#include <stdlib.h>
#include <string.h>

#include "proto/proto-internal.h"

/* ---- request bodies ---- */

int ql_proto_client_request(const ql_proto_client_req_t *r, ql_proto_buf_t *out) {
    if (!r || !out || r->max_tokens < 1) return QL_EINVAL;
    if (!r->prompt_text && (!r->prompt_ids || r->n_prompt_ids == 0)) return QL_EINVAL;
    if (r->chat && !r->prompt_text) return QL_EINVAL;
    json_t *o = json_object();
    if (!o) return QL_ENOMEM;
    int rc = 0;
    if (r->model) rc = ql__proto_set(o, "model", ql__proto_json_text(r->model, strlen(r->model)));
    if (!rc && r->chat) {
        json_t *msg = json_object();
        json_t *arr = json_array();
        if (!msg || !arr) {
            json_decref(msg);
            json_decref(arr);
            rc = QL_ENOMEM;
        } else {
            rc = ql__proto_set(msg, "role", json_string("user"));
            if (!rc) rc = ql__proto_set(msg, "content", ql__proto_json_text(r->prompt_text, strlen(r->prompt_text)));
            if (!rc) rc = ql__proto_push(arr, msg);
            else json_decref(msg);
            if (!rc) rc = ql__proto_set(o, "messages", arr);
            else json_decref(arr);
        }
    } else if (!rc && r->prompt_text) {
        rc = ql__proto_set(o, "prompt", ql__proto_json_text(r->prompt_text, strlen(r->prompt_text)));
    } else if (!rc) {
        json_t *arr = json_array();
        if (!arr) rc = QL_ENOMEM;
        for (size_t i = 0; !rc && i < r->n_prompt_ids; i++) rc = ql__proto_push(arr, json_integer(r->prompt_ids[i]));
        if (!rc) rc = ql__proto_set(o, "prompt", arr);
        else json_decref(arr);
    }
    if (!rc) rc = ql__proto_set(o, "max_tokens", json_integer(r->max_tokens));
    if (!rc) rc = ql__proto_set(o, "temperature", json_real(0.0));
    if (!rc && r->ignore_eos) rc = ql__proto_set(o, "ignore_eos", json_true());
    if (!rc) rc = ql__proto_set(o, "stream", json_true());
    if (!rc) {
        json_t *so = json_object();
        if (!so) rc = QL_ENOMEM;
        if (!rc) rc = ql__proto_set(so, "include_usage", json_true());
        if (!rc) rc = ql__proto_set(o, "stream_options", so);
        else json_decref(so);
    }
    if (!rc) rc = ql__proto_dump(o, NULL, NULL, out);
    json_decref(o);
    return rc;
}

int ql_proto_client_tokenize_body(const char *text, int llama_dialect, ql_proto_buf_t *out) {
    if (!text || !out) return QL_EINVAL;
    json_t *o = json_object();
    if (!o) return QL_ENOMEM;
    int rc = ql__proto_set(o, llama_dialect ? "content" : "prompt", ql__proto_json_text(text, strlen(text)));
    if (!rc) rc = ql__proto_set(o, llama_dialect ? "add_special" : "add_special_tokens", json_false());
    if (!rc) rc = ql__proto_dump(o, NULL, NULL, out);
    json_decref(o);
    return rc;
}

int ql_proto_client_detokenize_body(const int32_t *ids, size_t n, ql_proto_buf_t *out) {
    if ((!ids && n) || !out) return QL_EINVAL;
    json_t *o = json_object();
    json_t *arr = json_array();
    int rc = (!o || !arr) ? QL_ENOMEM : 0;
    for (size_t i = 0; !rc && i < n; i++) rc = ql__proto_push(arr, json_integer(ids[i]));
    if (!rc) {
        rc = ql__proto_set(o, "tokens", arr);
        arr = NULL;
    }
    if (!rc) rc = ql__proto_dump(o, NULL, NULL, out);
    json_decref(arr);
    json_decref(o);
    return rc;
}

/* ---- what comes back ---- */

static json_t *load(const char *json, size_t len) {
    if (!json) return NULL;
    return json_loadb(json, len, JSON_DECODE_ANY, NULL);
}

/* The error message of {"error":{"message":...}} or {"error":"..."} or {"message":...}. */
static int error_message(const json_t *root, char *msg, size_t cap) {
    const json_t *e = json_object_get(root, "error");
    const char *m = NULL;
    if (json_is_string(e)) m = json_string_value(e);
    else if (json_is_object(e) && json_is_string(json_object_get(e, "message")))
        m = json_string_value(json_object_get(e, "message"));
    else if (!e && json_is_string(json_object_get(root, "message")) && !json_object_get(root, "choices"))
        m = json_string_value(json_object_get(root, "message"));
    if (!m) return 0;
    if (msg && cap) {
        size_t n = strlen(m);
        if (n >= cap) n = cap - 1;
        memcpy(msg, m, n);
        msg[n] = '\0';
        for (size_t i = 0; i < n; i++)
            if (msg[i] == '\n' || msg[i] == '\r') msg[i] = ' ';
    }
    return 1;
}

int ql_proto_client_error_message(const char *json, size_t len, char *msg, size_t cap) {
    json_t *root = load(json, len);
    if (!root) return QL_EINVAL;
    int found = json_is_object(root) && error_message(root, msg, cap);
    json_decref(root);
    return found ? 0 : QL_EINVAL;
}

static int64_t usage_field(const json_t *usage, const char *key) {
    const json_t *v = json_object_get(usage, key);
    return json_is_integer(v) && json_integer_value(v) >= 0 ? (int64_t)json_integer_value(v) : -1;
}

int ql_proto_client_chunk(const char *json, size_t len, ql_proto_client_chunk_t *c) {
    if (!c) return QL_EINVAL;
    memset(c, 0, sizeof(*c));
    c->prompt_tokens = c->completion_tokens = -1;
    json_t *root = load(json, len);
    if (!root) return QL_EINVAL;
    if (!json_is_object(root)) {
        json_decref(root);
        return QL_EINVAL;
    }
    if (error_message(root, c->error, sizeof(c->error))) c->is_error = 1;
    const json_t *choices = json_object_get(root, "choices");
    if (json_is_array(choices) && json_array_size(choices) > 0) {
        const json_t *ch = json_array_get(choices, 0);
        c->has_choice = 1;
        const json_t *text = json_object_get(ch, "text");
        if (!text) text = json_object_get(json_object_get(ch, "delta"), "content");
        if (json_is_string(text)) c->text_len = json_string_length(text);
        c->finished = json_is_string(json_object_get(ch, "finish_reason"));
    }
    const json_t *usage = json_object_get(root, "usage");
    if (json_is_object(usage)) {
        c->prompt_tokens = usage_field(usage, "prompt_tokens");
        c->completion_tokens = usage_field(usage, "completion_tokens");
    }
    json_decref(root);
    return 0;
}

int ql_proto_client_tokens(const char *json, size_t len, int32_t **ids, size_t *n) {
    if (!ids || !n) return QL_EINVAL;
    *ids = NULL;
    *n = 0;
    json_t *root = load(json, len);
    const json_t *arr = json_is_object(root) ? json_object_get(root, "tokens") : NULL;
    if (!json_is_array(arr)) {
        json_decref(root);
        return QL_EINVAL;
    }
    size_t k = json_array_size(arr);
    int32_t *v = malloc((k ? k : 1) * sizeof(*v));
    if (!v) {
        json_decref(root);
        return QL_ENOMEM;
    }
    for (size_t i = 0; i < k; i++) {
        const json_t *t = json_array_get(arr, i);
        if (json_is_object(t)) t = json_object_get(t, "id"); /* llama.cpp's with_pieces shape */
        if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) > INT32_MAX) {
            free(v);
            json_decref(root);
            return QL_EINVAL;
        }
        v[i] = (int32_t)json_integer_value(t);
    }
    json_decref(root);
    *ids = v;
    *n = k;
    return 0;
}

/* Copies the string member `key` of `root` into a new NUL-terminated buffer. */
static int dup_string(const json_t *s, char **text) {
    if (!json_is_string(s)) return QL_EINVAL;
    size_t n = json_string_length(s);
    char *t = malloc(n + 1);
    if (!t) return QL_ENOMEM;
    memcpy(t, json_string_value(s), n);
    t[n] = '\0';
    *text = t;
    return 0;
}

int ql_proto_client_text(const char *json, size_t len, char **text) {
    if (!text) return QL_EINVAL;
    *text = NULL;
    json_t *root = load(json, len);
    int rc = QL_EINVAL;
    if (json_is_object(root)) {
        const json_t *s = json_object_get(root, "prompt");
        if (!s) s = json_object_get(root, "content");
        rc = dup_string(s, text);
    }
    json_decref(root);
    return rc;
}

int ql_proto_client_first_model(const char *json, size_t len, char **id) {
    if (!id) return QL_EINVAL;
    *id = NULL;
    json_t *root = load(json, len);
    int rc = QL_EINVAL;
    const json_t *data = json_is_object(root) ? json_object_get(root, "data") : NULL;
    if (json_is_array(data) && json_array_size(data) > 0)
        rc = dup_string(json_object_get(json_array_get(data, 0), "id"), id);
    json_decref(root);
    return rc;
}
