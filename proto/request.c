/*
 * proto/request.c — request bodies → ql_proto_request_t. Parses with jansson, validates every
 * known field (type, range, combinations), copies what the server needs into the request's arena
 * and drops the jansson tree before returning. Errors name the field and say what is accepted,
 * as "<field>: expected <what>, got <what>".
 */
#define QL_LOG_MODULE "proto"
#include <float.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/proto-internal.h"

typedef struct pctx_s {
    ql_proto_endpoint_t ep;
    const ql_proto_opts_t *o;
    ql_arena_t *arena;
    ql_proto_error_t *e;
    ql_proto_request_t *r;
} pctx_t;

#define PROMPT_FORMS "a string, a list of strings, a list of token ids or a list of lists of token ids"
#define ROLES "system, developer, user or assistant"

/* ---- small helpers ---- */

static const char *type_name(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return json_array_size(v) ? "a list" : "an empty list";
    case JSON_STRING: return json_string_length(v) ? "a string" : "an empty string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

/* The shortest "%g" text that reads back as d: error messages quote numbers as sent. */
static void fmt_num(double d, char *buf, size_t n) {
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, n, "%.*g", p, d);
        if (strtod(buf, NULL) == d) return;
    }
}

/* A client string quoted in a message: at most 40 bytes (the writer repairs a cut character). */
static void fmt_str(const json_t *v, char *buf, size_t n) {
    size_t len = json_string_length(v);
    if (len > 40)
        snprintf(buf, n, "\"%.40s...\"", json_string_value(v));
    else
        snprintf(buf, n, "\"%s\"", json_string_value(v));
}

static int oom(pctx_t *c) {
    ql_proto_error_internal(c->e, "out of memory while parsing the request");
    return QL_ENOMEM;
}

static int bad_type(pctx_t *c, const char *param, const char *expected, const json_t *v) {
    ql_proto_error_invalid(c->e, param, "%s: expected %s, got %s", param, expected, type_name(v));
    return QL_EINVAL;
}

static int bad_num(pctx_t *c, const char *param, const char *expected, double d) {
    char num[40];
    fmt_num(d, num, sizeof num);
    ql_proto_error_invalid(c->e, param, "%s: expected %s, got %s", param, expected, num);
    return QL_EINVAL;
}

/* obj[key], with JSON null read as absent (OpenAI's and vLLM's optional fields take null). */
static json_t *field(const json_t *obj, const char *key) {
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

/* A NUL-terminated arena copy of a JSON string (which may hold NUL bytes). */
static char *copy_str(pctx_t *c, const json_t *v, size_t *len) {
    size_t n = json_string_length(v);
    if (len) *len = n;
    return ql_arena_strndup(c->arena, json_string_value(v), n);
}

static void *alloc_array(pctx_t *c, size_t n, size_t size) {
    size_t bytes;
    if (ql_size_mul(n ? n : 1, size, &bytes)) return NULL;
    return ql_arena_alloc(c->arena, bytes);
}

/* ---- scalars: 1 = set, 0 = absent, < 0 = error (c->e filled) ---- */

static int get_bool(pctx_t *c, const json_t *obj, const char *key, const char *param, int *out) {
    json_t *v = field(obj, key);
    if (!v) return 0;
    if (!json_is_boolean(v)) return bad_type(c, param, "a boolean (true or false)", v);
    *out = json_is_true(v);
    return 1;
}

/* NOTE(lax-int): a JSON number with no fractional part (2.0) is accepted where an integer is
 * expected, as pydantic (OpenAI's and vLLM's schemas) does; 2.5 is refused. */
static int json_to_int64(const json_t *v, int64_t *out) {
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d != floor(d) || d < -9223372036854775808.0 || d >= 9223372036854775808.0) return 0;
        *out = (int64_t)d;
        return 1;
    }
    return 0;
}

static int get_int(pctx_t *c, const json_t *obj, const char *key, int64_t lo, int64_t hi,
                   const char *expected, int64_t *out) {
    json_t *v = field(obj, key);
    if (!v) return 0;
    int64_t x;
    if (!json_to_int64(v, &x)) {
        if (json_is_real(v)) return bad_num(c, key, expected, json_real_value(v));
        return bad_type(c, key, expected, v);
    }
    if (x < lo || x > hi) {
        ql_proto_error_invalid(c->e, key, "%s: expected %s, got %" PRId64, key, expected, x);
        return QL_EINVAL;
    }
    *out = x;
    return 1;
}

static int get_int32(pctx_t *c, const json_t *obj, const char *key, int64_t lo, int64_t hi,
                     const char *expected, int32_t *out) {
    int64_t x = 0;
    int rc = get_int(c, obj, key, lo, hi, expected, &x);
    if (rc == 1) *out = (int32_t)x;
    return rc;
}

#define LO_OPEN 1u /* the lower bound itself is refused */

/* A number in [lo, hi] (or (lo, hi] with LO_OPEN), stored as a float.
 * NOTE(float-cast): the range is checked on the double as sent; a value in an open range that
 * rounds to the bound as a float (top_p = 1e-300) is nudged to the next float above it, so the
 * sampler's own checks (top_p > 0) always hold. */
static int get_float(pctx_t *c, const json_t *obj, const char *key, double lo, double hi,
                     unsigned flags, const char *expected, float *out) {
    json_t *v = field(obj, key);
    if (!v) return 0;
    if (!json_is_number(v)) return bad_type(c, key, expected, v);
    double d = json_number_value(v);
    if (d < lo || d > hi || ((flags & LO_OPEN) && d == lo)) return bad_num(c, key, expected, d);
    float f = (float)d;
    if ((flags & LO_OPEN) && f <= (float)lo) f = nextafterf((float)lo, INFINITY);
    *out = f;
    return 1;
}

static int get_string(pctx_t *c, const json_t *obj, const char *key, const char **out) {
    json_t *v = field(obj, key);
    if (!v) return 0;
    if (!json_is_string(v)) return bad_type(c, key, "a string", v);
    if (!(*out = copy_str(c, v, NULL))) return oom(c);
    return 1;
}

/* ---- token ids ---- */

static int token_expected(pctx_t *c, char *buf, size_t n) {
    if (c->o->n_vocab > 0)
        snprintf(buf, n, "a token id in [0, %" PRId32 "]", c->o->n_vocab - 1);
    else
        snprintf(buf, n, "a token id (an integer >= 0)");
    return 0;
}

/* v[i] as a token id; param names the element. */
static int get_token(pctx_t *c, const json_t *v, const char *param, int32_t *out) {
    char expected[64];
    int64_t x;
    token_expected(c, expected, sizeof expected);
    if (!json_to_int64(v, &x)) {
        if (json_is_real(v)) return bad_num(c, param, expected, json_real_value(v));
        return bad_type(c, param, expected, v);
    }
    int64_t hi = c->o->n_vocab > 0 ? c->o->n_vocab - 1 : INT32_MAX;
    if (x < 0 || x > hi) {
        ql_proto_error_invalid(c->e, param, "%s: expected %s, got %" PRId64, param, expected, x);
        return QL_EINVAL;
    }
    *out = (int32_t)x;
    return 0;
}

/* A JSON list of token ids → arena array. `param` names the list ("prompt[2]", "tokens"). */
static int get_token_list(pctx_t *c, const json_t *arr, const char *param, const int32_t **out,
                          int32_t *n_out) {
    size_t n = json_array_size(arr);
    if (n > INT32_MAX) return bad_type(c, param, "a shorter list", arr);
    int32_t *t = alloc_array(c, n, sizeof *t);
    if (!t) return oom(c);
    for (size_t i = 0; i < n; i++) {
        char p[QL_PROTO_ERROR_PARAM_MAX];
        snprintf(p, sizeof p, "%s[%zu]", param, i);
        int rc = get_token(c, json_array_get(arr, i), p, &t[i]);
        if (rc) return rc;
    }
    *out = t;
    *n_out = (int32_t)n;
    return 0;
}

/* ---- prompt ---- */

static int token_prompt(pctx_t *c, const json_t *arr, const char *param, ql_proto_prompt_t *p) {
    if (json_array_size(arr) == 0) {
        ql_proto_error_invalid(c->e, param, "%s: expected a non-empty list of token ids, got an empty list",
                               param);
        return QL_EINVAL;
    }
    int rc = get_token_list(c, arr, param, &p->tokens, &p->n_tokens);
    if (rc) return rc;
    if (c->o->max_model_len > 0 && p->n_tokens > c->o->max_model_len) {
        ql_proto_error_context_length(c->e, 0, c->o->max_model_len, p->n_tokens, -1);
        return QL_EINVAL;
    }
    return 0;
}

static int text_prompt(pctx_t *c, const json_t *s, ql_proto_prompt_t *p) {
    if (!(p->text = copy_str(c, s, &p->text_len))) return oom(c);
    return 0;
}

/* The four forms of OpenAI's `prompt`; a list holds one form, decided by its first element. */
static int parse_prompt(pctx_t *c, const json_t *v, int string_only) {
    ql_proto_request_t *r = c->r;
    const char *forms = string_only ? "a string" : PROMPT_FORMS;
    if (json_is_string(v)) {
        ql_proto_prompt_t *p = alloc_array(c, 1, sizeof *p);
        if (!p) return oom(c);
        memset(p, 0, sizeof *p);
        int rc = text_prompt(c, v, p);
        if (rc) return rc;
        r->prompts = p;
        r->n_prompts = 1;
        return 0;
    }
    if (string_only || !json_is_array(v) || json_array_size(v) == 0)
        return bad_type(c, "prompt", forms, v);
    size_t n = json_array_size(v);
    const json_t *first = json_array_get(v, 0);
    int64_t dummy;
    if (json_to_int64(first, &dummy) || json_is_number(first)) { /* one token prompt */
        ql_proto_prompt_t *p = alloc_array(c, 1, sizeof *p);
        if (!p) return oom(c);
        memset(p, 0, sizeof *p);
        int rc = token_prompt(c, v, "prompt", p);
        if (rc) return rc;
        r->prompts = p;
        r->n_prompts = 1;
        return 0;
    }
    if (!json_is_string(first) && !json_is_array(first)) {
        ql_proto_error_invalid(c->e, "prompt[0]",
                               "prompt[0]: expected a string, a token id or a list of token ids, got %s",
                               type_name(first));
        return QL_EINVAL;
    }
    if (n > INT32_MAX) return bad_type(c, "prompt", "a shorter list", v);
    ql_proto_prompt_t *p = alloc_array(c, n, sizeof *p);
    if (!p) return oom(c);
    memset(p, 0, n * sizeof *p);
    for (size_t i = 0; i < n; i++) {
        const json_t *el = json_array_get(v, i);
        char param[QL_PROTO_ERROR_PARAM_MAX];
        snprintf(param, sizeof param, "prompt[%zu]", i);
        int rc;
        if (json_is_string(first)) {
            if (!json_is_string(el))
                return bad_type(c, param, "a string (a list of prompts holds one kind)", el);
            rc = text_prompt(c, el, &p[i]);
        } else {
            if (!json_is_array(el))
                return bad_type(c, param, "a list of token ids (a list of prompts holds one kind)", el);
            rc = token_prompt(c, el, param, &p[i]);
        }
        if (rc) return rc;
    }
    r->prompts = p;
    r->n_prompts = (int32_t)n;
    return 0;
}

/* ---- messages ---- */

/* A message's content: a string, or a list of text parts joined with "\n" (vLLM's rule). */
static int parse_content(pctx_t *c, const json_t *msg, size_t i, ql_proto_msg_t *m) {
    char param[QL_PROTO_ERROR_PARAM_MAX];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    const json_t *v = field(msg, "content");
    if (!v) {
        /* NOTE(assistant-null): OpenAI lets an assistant message carry tool calls instead of
         * content; quill has no tools, so such a message renders as empty text. */
        if (m->role == QL_PROTO_ROLE_ASSISTANT) {
            m->content = "";
            m->content_len = 0;
            return 0;
        }
        ql_proto_error_invalid(c->e, param,
                               "%s: required for role %s; expected a string or a list of text parts",
                               param, m->role_name);
        return QL_EINVAL;
    }
    if (json_is_string(v)) {
        if (!(m->content = copy_str(c, v, &m->content_len))) return oom(c);
        return 0;
    }
    if (!json_is_array(v)) return bad_type(c, param, "a string or a list of text parts", v);
    size_t n = json_array_size(v), total = 0;
    for (size_t j = 0; j < n; j++) {
        const json_t *part = json_array_get(v, j);
        char pp[QL_PROTO_ERROR_PARAM_MAX];
        snprintf(pp, sizeof pp, "messages[%zu].content[%zu]", i, j);
        if (!json_is_object(part))
            return bad_type(c, pp, "an object {\"type\": \"text\", \"text\": ...}", part);
        const json_t *type = json_object_get(part, "type");
        char tp[QL_PROTO_ERROR_PARAM_MAX];
        snprintf(tp, sizeof tp, "messages[%zu].content[%zu].type", i, j);
        if (!type || !json_is_string(type)) {
            if (!type) {
                ql_proto_error_invalid(c->e, tp, "%s: required; expected \"text\"", tp);
                return QL_EINVAL;
            }
            return bad_type(c, tp, "\"text\"", type);
        }
        if (strcmp(json_string_value(type), "text") != 0 || json_string_length(type) != 4) {
            char q[64];
            fmt_str(type, q, sizeof q);
            ql_proto_error_invalid(c->e, tp,
                                   "%s: %s parts are not supported; quill accepts only \"text\" parts",
                                   tp, q);
            return QL_EINVAL;
        }
        const json_t *text = json_object_get(part, "text");
        char xp[QL_PROTO_ERROR_PARAM_MAX];
        snprintf(xp, sizeof xp, "messages[%zu].content[%zu].text", i, j);
        if (!text || !json_is_string(text)) {
            if (!text) {
                ql_proto_error_invalid(c->e, xp, "%s: required; expected a string", xp);
                return QL_EINVAL;
            }
            return bad_type(c, xp, "a string", text);
        }
        if (ql_size_add(total, json_string_length(text) + (j ? 1 : 0), &total)) return oom(c);
    }
    char *s = ql_arena_alloc(c->arena, total + 1);
    if (!s) return oom(c);
    size_t o = 0;
    for (size_t j = 0; j < n; j++) {
        const json_t *text = json_object_get(json_array_get(v, j), "text");
        if (j) s[o++] = '\n';
        memcpy(s + o, json_string_value(text), json_string_length(text));
        o += json_string_length(text);
    }
    s[o] = '\0';
    m->content = s;
    m->content_len = o;
    return 0;
}

static int parse_messages(pctx_t *c, const json_t *v) {
    const char *expected = "a non-empty list of messages {\"role\", \"content\"}";
    if (!json_is_array(v) || json_array_size(v) == 0) return bad_type(c, "messages", expected, v);
    size_t n = json_array_size(v);
    if (n > INT32_MAX) return bad_type(c, "messages", "a shorter list", v);
    ql_proto_msg_t *msgs = alloc_array(c, n, sizeof *msgs);
    if (!msgs) return oom(c);
    for (size_t i = 0; i < n; i++) {
        const json_t *msg = json_array_get(v, i);
        ql_proto_msg_t *m = &msgs[i];
        char param[QL_PROTO_ERROR_PARAM_MAX];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(msg)) return bad_type(c, param, "an object {\"role\", \"content\"}", msg);
        snprintf(param, sizeof param, "messages[%zu].role", i);
        const json_t *role = field(msg, "role");
        if (!role) {
            ql_proto_error_invalid(c->e, param, "%s: required; expected " ROLES, param);
            return QL_EINVAL;
        }
        if (!json_is_string(role)) return bad_type(c, param, ROLES, role);
        const char *rs = json_string_value(role);
        size_t rl = json_string_length(role);
        if (rl == 6 && !strcmp(rs, "system")) {
            m->role = QL_PROTO_ROLE_SYSTEM;
        } else if (rl == 9 && !strcmp(rs, "developer")) {
            m->role = QL_PROTO_ROLE_SYSTEM; /* OpenAI's o1-era name for the system role */
        } else if (rl == 4 && !strcmp(rs, "user")) {
            m->role = QL_PROTO_ROLE_USER;
        } else if (rl == 9 && !strcmp(rs, "assistant")) {
            m->role = QL_PROTO_ROLE_ASSISTANT;
        } else {
            char q[64];
            fmt_str(role, q, sizeof q);
            ql_proto_error_invalid(c->e, param, "%s: role %s is not supported; expected " ROLES,
                                   param, q);
            return QL_EINVAL;
        }
        static const char *const k_names[] = {"system", "user", "assistant"};
        m->role_name = k_names[m->role];
        int rc = parse_content(c, msg, i, m);
        if (rc) return rc;
    }
    c->r->messages = msgs;
    c->r->n_messages = (int32_t)n;
    return 0;
}

/* ---- stop, logit_bias, stream_options ---- */

static int parse_stop(pctx_t *c, const json_t *root) {
    const json_t *v = field(root, "stop");
    if (!v) return 0;
    char expected[96];
    snprintf(expected, sizeof expected, "a non-empty string or a list of at most %d non-empty strings",
             QL_PROTO_STOP_MAX);
    ql_proto_text_t *t;
    if (json_is_string(v)) {
        if (json_string_length(v) == 0) return bad_type(c, "stop", expected, v);
        if (!(t = alloc_array(c, 1, sizeof *t))) return oom(c);
        if (!(t->ptr = copy_str(c, v, &t->len))) return oom(c);
        c->r->stop = t;
        c->r->n_stop = 1;
        return 0;
    }
    if (!json_is_array(v)) return bad_type(c, "stop", expected, v);
    size_t n = json_array_size(v);
    if (n > QL_PROTO_STOP_MAX) {
        ql_proto_error_invalid(c->e, "stop", "stop: expected %s, got a list of %zu", expected, n);
        return QL_EINVAL;
    }
    if (!(t = alloc_array(c, n, sizeof *t))) return oom(c);
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_array_get(v, i);
        char param[32];
        snprintf(param, sizeof param, "stop[%zu]", i);
        if (!json_is_string(s) || json_string_length(s) == 0)
            return bad_type(c, param, "a non-empty string", s);
        if (!(t[i].ptr = copy_str(c, s, &t[i].len))) return oom(c);
    }
    c->r->stop = t;
    c->r->n_stop = (int32_t)n;
    return 0;
}

static int parse_logit_bias(pctx_t *c, const json_t *root) {
    const json_t *v = field(root, "logit_bias");
    if (!v) return 0;
    if (!json_is_object(v))
        return bad_type(c, "logit_bias",
                        "an object mapping token ids (as strings) to numbers in [-100, 100]", v);
    size_t n = json_object_size(v), i = 0;
    ql_proto_logit_bias_t *b = alloc_array(c, n, sizeof *b);
    if (!b) return oom(c);
    const char *key;
    size_t kl;
    json_t *val;
    char expected[64];
    token_expected(c, expected, sizeof expected);
    int64_t hi = c->o->n_vocab > 0 ? c->o->n_vocab - 1 : INT32_MAX;
    json_object_keylen_foreach((json_t *)v, key, kl, val) {
        /* NOTE(bias-keys): decimal digits only; vLLM's int() would also take "+5" and " 5" */
        int64_t id = 0;
        int ok = kl > 0 && kl <= 10;
        for (size_t k = 0; ok && k < kl; k++) {
            if (key[k] < '0' || key[k] > '9') ok = 0;
            else id = id * 10 + (key[k] - '0');
        }
        if (!ok || id > hi) {
            ql_proto_error_invalid(c->e, "logit_bias", "logit_bias: key \"%.40s\": expected %s", key,
                                   expected);
            return QL_EINVAL;
        }
        if (!json_is_number(val)) {
            ql_proto_error_invalid(c->e, "logit_bias",
                                   "logit_bias: value of \"%s\": expected a number in [-100, 100], got %s",
                                   key, type_name(val));
            return QL_EINVAL;
        }
        double d = json_number_value(val);
        if (d < -QL_PROTO_LOGIT_BIAS_ABS_MAX || d > QL_PROTO_LOGIT_BIAS_ABS_MAX) {
            char num[40];
            fmt_num(d, num, sizeof num);
            ql_proto_error_invalid(c->e, "logit_bias",
                                   "logit_bias: value of \"%s\": expected a number in [-100, 100], got %s",
                                   key, num);
            return QL_EINVAL;
        }
        b[i].token = (int32_t)id;
        b[i].bias = (float)d;
        i++;
    }
    c->r->logit_bias = b;
    c->r->n_logit_bias = (int32_t)i;
    return 0;
}

static int parse_stream(pctx_t *c, const json_t *root) {
    int rc = get_bool(c, root, "stream", "stream", &c->r->stream);
    if (rc < 0) return rc;
    const json_t *so = field(root, "stream_options");
    if (!so) return 0;
    if (!json_is_object(so))
        return bad_type(c, "stream_options", "an object {\"include_usage\": boolean}", so);
    if (!c->r->stream) {
        ql_proto_error_invalid(c->e, "stream_options",
                               "stream_options: only allowed when stream is true");
        return QL_EINVAL;
    }
    rc = get_bool(c, so, "include_usage", "stream_options.include_usage", &c->r->include_usage);
    return rc < 0 ? rc : 0;
}

/* ---- features quill refuses rather than silently ignores ---- */

static int refuse_unsupported(pctx_t *c, const json_t *root) {
    const json_t *v;
    if (c->ep == QL_PROTO_ENDPOINT_COMPLETIONS) {
        if ((v = field(root, "suffix")) && !(json_is_string(v) && json_string_length(v) == 0)) {
            ql_proto_error_invalid(c->e, "suffix", "suffix: not supported (quill does not insert "
                                                   "text); expected null or \"\"");
            return QL_EINVAL;
        }
        if ((v = field(root, "best_of"))) {
            int64_t x;
            if (!json_to_int64(v, &x) || x != c->r->n) {
                ql_proto_error_invalid(c->e, "best_of",
                                       "best_of: expected null or the value of n (%" PRId32
                                       "); quill returns every sample and ranks none",
                                       c->r->n);
                return QL_EINVAL;
            }
        }
        return 0;
    }
    if (c->ep != QL_PROTO_ENDPOINT_CHAT) return 0;
    static const char *const k_tools[] = {"tools", "functions"};
    for (size_t i = 0; i < QL_ARRAY_LEN(k_tools); i++) {
        if ((v = field(root, k_tools[i])) && !(json_is_array(v) && json_array_size(v) == 0)) {
            ql_proto_error_invalid(c->e, k_tools[i],
                                   "%s: not supported (quill does not call tools); expected null or []",
                                   k_tools[i]);
            return QL_EINVAL;
        }
    }
    static const char *const k_choice[] = {"tool_choice", "function_call"};
    for (size_t i = 0; i < QL_ARRAY_LEN(k_choice); i++) {
        if ((v = field(root, k_choice[i])) &&
            !(json_is_string(v) && (!strcmp(json_string_value(v), "none") ||
                                    !strcmp(json_string_value(v), "auto")))) {
            ql_proto_error_invalid(c->e, k_choice[i],
                                   "%s: expected \"none\" or \"auto\" (quill does not call tools)",
                                   k_choice[i]);
            return QL_EINVAL;
        }
    }
    if ((v = field(root, "response_format"))) {
        const json_t *t = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!t || !json_is_string(t) || strcmp(json_string_value(t), "text") != 0) {
            ql_proto_error_invalid(c->e, "response_format",
                                   "response_format: expected {\"type\": \"text\"} (quill does not "
                                   "constrain output to JSON)");
            return QL_EINVAL;
        }
    }
    return 0;
}

/* ---- the generation fields (completions and chat) ---- */

static int parse_generation(pctx_t *c, const json_t *root) {
    ql_proto_request_t *r = c->r;
    int chat = c->ep == QL_PROTO_ENDPOINT_CHAT;
    int rc;
#define TRY(x)                                                                       \
    do {                                                                             \
        if ((rc = (x)) < 0) return rc;                                               \
    } while (0)

    /* max_tokens and its newer synonym */
    int32_t mt = 0, mct = 0;
    int has_mt, has_mct;
    TRY(has_mt = get_int32(c, root, "max_tokens", 1, INT32_MAX, "an integer >= 1", &mt));
    TRY(has_mct = get_int32(c, root, "max_completion_tokens", 1, INT32_MAX, "an integer >= 1", &mct));
    if (has_mt && has_mct && mt != mct) {
        ql_proto_error_invalid(c->e, "max_tokens",
                               "max_tokens: %" PRId32 " differs from max_completion_tokens %" PRId32
                               "; they are synonyms: set one of them",
                               mt, mct);
        return QL_EINVAL;
    }
    if (has_mt || has_mct) r->max_tokens = has_mct ? mct : mt;
    int has_min;
    TRY(has_min = get_int32(c, root, "min_tokens", 0, INT32_MAX, "an integer >= 0", &r->min_tokens));
    if (has_min && r->max_tokens > 0 && r->min_tokens > r->max_tokens) {
        ql_proto_error_invalid(c->e, "min_tokens",
                               "min_tokens: expected at most max_tokens (%" PRId32 "), got %" PRId32,
                               r->max_tokens, r->min_tokens);
        return QL_EINVAL;
    }
    TRY(get_bool(c, root, "ignore_eos", "ignore_eos", &r->ignore_eos));
    TRY(get_int32(c, root, "num_speculative_tokens", 0, 16, "an integer in [0, 16]",
                  &r->spec_tokens));
    TRY(parse_stop(c, root));

    TRY(get_float(c, root, "temperature", 0, 2, 0, "a number in [0, 2]", &r->temperature));
    TRY(get_float(c, root, "top_p", 0, 1, LO_OPEN, "a number in (0, 1]", &r->top_p));
    int32_t top_k = 0;
    TRY(get_int32(c, root, "top_k", -1, INT32_MAX, "an integer >= -1 (-1 or 0: off)", &top_k));
    r->top_k = top_k < 0 ? 0 : top_k;
    TRY(get_float(c, root, "min_p", 0, 1, 0, "a number in [0, 1]", &r->min_p));
    TRY(get_float(c, root, "presence_penalty", -2, 2, 0, "a number in [-2, 2]", &r->presence_penalty));
    TRY(get_float(c, root, "frequency_penalty", -2, 2, 0, "a number in [-2, 2]", &r->frequency_penalty));
    /* NOTE(repetition-range): vLLM's range, > 0 (1 = off); the upper end only keeps it a finite float */
    TRY(get_float(c, root, "repetition_penalty", 0, FLT_MAX, LO_OPEN, "a finite number > 0 (1: off)",
                  &r->repetition_penalty));
    int64_t seed = 0;
    TRY(r->has_seed = get_int(c, root, "seed", INT64_MIN, INT64_MAX, "an integer", &seed));
    r->seed = seed;
    TRY(parse_logit_bias(c, root));
    char n_expected[64];
    snprintf(n_expected, sizeof n_expected, "an integer in [1, %" PRId32 "]", c->o->max_n);
    TRY(get_int32(c, root, "n", 1, c->o->max_n, n_expected, &r->n));

    if (chat) {
        TRY(get_bool(c, root, "logprobs", "logprobs", &r->logprobs));
        int has_top;
        TRY(has_top = get_int32(c, root, "top_logprobs", 0, QL_PROTO_TOP_LOGPROBS_MAX,
                                "an integer in [0, 20]", &r->top_logprobs));
        if (has_top && r->top_logprobs > 0 && !r->logprobs) {
            ql_proto_error_invalid(c->e, "top_logprobs",
                                   "top_logprobs: only allowed when logprobs is true");
            return QL_EINVAL;
        }
        TRY(get_bool(c, root, "add_special_tokens", "add_special_tokens", &r->add_special_tokens));
        TRY(get_bool(c, root, "add_generation_prompt", "add_generation_prompt",
                     &r->add_generation_prompt));
    } else {
        /* completions: logprobs = k reports the chosen token's logprob and the k most likely */
        int32_t k = 0;
        int has;
        TRY(has = get_int32(c, root, "logprobs", 0, QL_PROTO_TOP_LOGPROBS_MAX,
                            "an integer in [0, 20]", &k));
        if (has) {
            r->logprobs = 1;
            r->top_logprobs = k;
        }
        TRY(get_bool(c, root, "echo", "echo", &r->echo));
    }

    TRY(parse_stream(c, root));
    TRY(get_string(c, root, "user", &r->user));
    TRY(refuse_unsupported(c, root));
#undef TRY
    return 0;
}

/* ---- the entry point ---- */

/* NOTE(depth): counts nesting on the raw bytes (outside strings) so a body like 100000 '['
 * never reaches jansson's recursive parser. Invalid JSON is left to jansson to report. */
static int depth_ok(const char *s, size_t len, int max) {
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (in_str) {
            if (ch == '\\') i++;
            else if (ch == '"') in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '[' || ch == '{') {
            if (++depth > max) return 0;
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return 1;
}

static void defaults(ql_proto_endpoint_t ep, ql_proto_request_t *r) {
    memset(r, 0, sizeof *r);
    r->endpoint = ep;
    r->max_tokens = ep == QL_PROTO_ENDPOINT_COMPLETIONS ? QL_PROTO_COMPLETIONS_MAX_TOKENS_DEFAULT : -1;
    r->temperature = 1.0f;
    r->top_p = 1.0f;
    r->repetition_penalty = 1.0f;
    r->n = 1;
    r->spec_tokens = -1;
    r->add_special_tokens = 1;
    r->add_generation_prompt = 1;
}

static int parse_model(pctx_t *c, const json_t *root) {
    const json_t *v = field(root, "model");
    const char *served = c->o->served_model;
    if (v && !json_is_string(v)) return bad_type(c, "model", "a string (the served model's id)", v);
    /* NOTE(model): an absent, null or empty model means the served one (vLLM accepts these;
     * OpenAI requires the field). Any other name is OpenAI's 404 model_not_found. */
    if (v && json_string_length(v) > 0 &&
        (json_string_length(v) != strlen(served) || strcmp(json_string_value(v), served) != 0)) {
        ql_proto_error_model_not_found(c->e, json_string_value(v));
        return QL_EINVAL;
    }
    if (!(c->r->model = ql_arena_strndup(c->arena, served, strlen(served)))) return oom(c);
    return 0;
}

static int parse_root(pctx_t *c, const json_t *root) {
    ql_proto_request_t *r = c->r;
    int rc = parse_model(c, root);
    if (rc) return rc;
    const json_t *prompt = field(root, "prompt"), *messages = field(root, "messages");
    switch (c->ep) {
    case QL_PROTO_ENDPOINT_COMPLETIONS:
        if (!prompt) {
            ql_proto_error_invalid(c->e, "prompt", "prompt: required; expected " PROMPT_FORMS);
            return QL_EINVAL;
        }
        if ((rc = parse_prompt(c, prompt, 0))) return rc;
        return parse_generation(c, root);
    case QL_PROTO_ENDPOINT_CHAT:
        if (!messages) {
            ql_proto_error_invalid(c->e, "messages",
                                   "messages: required; expected a non-empty list of messages "
                                   "{\"role\", \"content\"}");
            return QL_EINVAL;
        }
        r->add_special_tokens = 0;
        if ((rc = parse_messages(c, messages))) return rc;
        return parse_generation(c, root);
    case QL_PROTO_ENDPOINT_TOKENIZE:
        if (prompt && messages) {
            ql_proto_error_invalid(c->e, "messages", "messages: give either prompt or messages, not both");
            return QL_EINVAL;
        }
        if (!prompt && !messages) {
            ql_proto_error_invalid(c->e, "prompt", "prompt: required (a string), or messages instead");
            return QL_EINVAL;
        }
        if (prompt) {
            if ((rc = parse_prompt(c, prompt, 1))) return rc;
        } else {
            r->add_special_tokens = 0;
            if ((rc = parse_messages(c, messages))) return rc;
            if ((rc = get_bool(c, root, "add_generation_prompt", "add_generation_prompt",
                               &r->add_generation_prompt)) < 0)
                return rc;
        }
        rc = get_bool(c, root, "add_special_tokens", "add_special_tokens", &r->add_special_tokens);
        return rc < 0 ? rc : 0;
    case QL_PROTO_ENDPOINT_DETOKENIZE: {
        const json_t *t = field(root, "tokens");
        if (!t) {
            ql_proto_error_invalid(c->e, "tokens", "tokens: required; expected a list of token ids");
            return QL_EINVAL;
        }
        if (!json_is_array(t)) return bad_type(c, "tokens", "a list of token ids", t);
        return get_token_list(c, t, "tokens", &r->tokens, &r->n_tokens);
    }
    }
    return QL_EINVAL;
}

int ql_proto_parse_request(ql_proto_endpoint_t ep, const char *body, size_t len,
                           const ql_proto_opts_t *opts, ql_arena_t *arena, ql_proto_request_t *r,
                           ql_proto_error_t *e) {
    if (!e) return QL_EINVAL;
    if (!opts || !opts->served_model || opts->max_n < 1 || !arena || !r || (!body && len) ||
        (unsigned)ep > QL_PROTO_ENDPOINT_DETOKENIZE) {
        ql_proto_error_internal(e, "invalid parser arguments");
        return QL_EINVAL;
    }
    defaults(ep, r);
    if (!depth_ok(body, len, QL_PROTO_JSON_DEPTH_MAX)) {
        ql_proto_error_invalid(e, NULL, "The request body is nested deeper than %d levels.",
                               QL_PROTO_JSON_DEPTH_MAX);
        return QL_EINVAL;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body ? body : "", len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
    if (!root) {
        /* NOTE(jansson-oom): jansson 2.14 reports some allocation failures with an empty text,
         * and some as "invalid token": under memory exhaustion a body may get a 400. */
        if (json_error_code(&jerr) == json_error_out_of_memory || jerr.text[0] == '\0') {
            ql_proto_error_internal(e, "out of memory while parsing the request");
            return QL_ENOMEM;
        }
        ql_proto_error_invalid(e, NULL,
                               "The request body is not valid JSON: %s (line %d, column %d, byte %d).",
                               jerr.text, jerr.line, jerr.column, jerr.position);
        return QL_EINVAL;
    }
    int rc;
    if (!json_is_object(root)) {
        ql_proto_error_invalid(e, NULL, "The request body must be a JSON object, got %s.",
                               type_name(root));
        rc = QL_EINVAL;
    } else {
        pctx_t c = {.ep = ep, .o = opts, .arena = arena, .e = e, .r = r};
        rc = parse_root(&c, root);
    }
    json_decref(root);
    return rc;
}
