/*
 * proto/proto.h — OpenAI's JSON, exactly: request bodies in, response bodies, stream chunks and
 * error bodies out. Everything about the JSON, nothing about sockets.
 *
 * Where it sits: server/ hands a request body here (ql_proto_parse_request) and gets back plain
 * C structs (ql_proto_request_t) that it maps onto model/ and scheduler/ types; on the way back
 * it fills ql_proto_response_t / ql_proto_choice_t from the engine's output and asks for the
 * bytes to write (a JSON body, or SSE events). proto/ includes only core/ and jansson; no type
 * of jansson appears in this header, so only proto/ and config/ ever include jansson.h.
 *
 * Conventions of the whole module:
 *  - Functions return 0, or a negative QL_E* (core/core.h). Thread: any; no globals. Each call
 *    uses only its arguments (a given request, buffer or error struct by one thread at a time).
 *  - Text is UTF-8 with an explicit length (it may hold NUL bytes: JSON's "\u0000"); text the
 *    parser returns is also NUL-terminated.
 *  - Output goes to a caller-owned growable ql_proto_buf_t. A writer that fails leaves the buffer
 *    as it was (no half-written JSON or SSE event).
 *  - Numbers are read and written with strtod/snprintf: the process keeps the "C" numeric locale
 *    (quill never calls setlocale).
 *
 * NOTE(utf8-out): quill never emits invalid UTF-8. Model text (a token may be a fragment of a
 * multi-byte character), model names and echoed input are written with each maximal ill-formed
 * subsequence replaced by U+FFFD (Unicode's recommended practice, as Python's
 * bytes.decode(errors="replace") does). Chat logprobs also carry each token's exact bytes.
 * Control characters are escaped ("\n", "\u0000"...); other characters are written raw.
 *
 * NOTE(json-in): bodies must be UTF-8 JSON (jansson refuses anything else, with the line and
 * column). Nesting deeper than QL_PROTO_JSON_DEPTH_MAX is refused before jansson parses (jansson's
 * own limit, JSON_PARSER_MAX_DEPTH, is 2048 recursive levels). A duplicate key keeps its last
 * value, as Python's json (OpenAI, vLLM) does. Size is bounded by the caller (server/'s
 * --max-request-bytes); parsing holds the whole tree, a few tens of bytes per JSON value.
 * "null" for an optional field means "absent", as in OpenAI's and vLLM's schemas. Integer fields
 * accept a JSON number with no fractional part (1.0), as pydantic does; booleans are JSON's
 * true/false only.
 */
#ifndef QL_PROTO_H
#define QL_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Bodies nested deeper than this (objects and arrays) are refused: the deepest valid body,
 * messages[i].content[j], is 4 levels. */
#define QL_PROTO_JSON_DEPTH_MAX 32
/* OpenAI's limit on `stop` sequences (vLLM has none). */
#define QL_PROTO_STOP_MAX 4
/* The largest `logprobs` (completions) and `top_logprobs` (chat): OpenAI's 20 for chat and
 * vLLM's default --max-logprobs for both (OpenAI's legacy completions stop at 5). */
#define QL_PROTO_TOP_LOGPROBS_MAX 20
/* OpenAI's range for logit_bias values. */
#define QL_PROTO_LOGIT_BIAS_ABS_MAX 100.0
/* Logprobs below this (and -inf) are written as it, as OpenAI and vLLM do. */
#define QL_PROTO_LOGPROB_MIN (-9999.0f)
/* Completions' default max_tokens when the body has none (OpenAI's and vLLM's 16). */
#define QL_PROTO_COMPLETIONS_MAX_TOKENS_DEFAULT 16

/* ---- output buffer ---- */

/* A growable byte buffer: zero-initialise it (or ql_proto_buf_init), append with the writers
 * below, release with ql_proto_buf_free. `data[len]` is a NUL after any successful append. */
typedef struct ql_proto_buf_s {
    char *data; /* [cap], malloc'd; NULL until the first append */
    size_t len;
    size_t cap;
} ql_proto_buf_t;

QL_API void ql_proto_buf_init(ql_proto_buf_t *b);
/** Frees the bytes and zeroes `b`; NULL is a no-op. */
QL_API void ql_proto_buf_free(ql_proto_buf_t *b);
/** Appends `len` raw bytes. @return 0, QL_ENOMEM or QL_EOVERFLOW. */
QL_API int ql_proto_buf_append(ql_proto_buf_t *b, const void *p, size_t len);

/* ---- errors ---- */

/* An error to send: HTTP status plus OpenAI's error object
 * {"error":{"message":...,"type":...,"param":...,"code":...}}. Plain data, no ownership:
 * embed it anywhere. `type` and `code` point at static strings. */
#define QL_PROTO_ERROR_MESSAGE_MAX 512
#define QL_PROTO_ERROR_PARAM_MAX 96
typedef struct ql_proto_error_s {
    int status;         /* HTTP status: 400, 401, 404, 413, 429, 500, 503 ... */
    const char *type;   /* "invalid_request_error", "server_error", ... (static) */
    const char *code;   /* NULL (JSON null) or "model_not_found", ... (static) */
    char param[QL_PROTO_ERROR_PARAM_MAX];     /* the field, e.g. "messages[1].content"; "" = null */
    char message[QL_PROTO_ERROR_MESSAGE_MAX]; /* one line, names the field and what is accepted */
} ql_proto_error_t;

/** Fills `e` from its parts; `type` and `code` must be static strings (code may be NULL), `param`
 *  may be NULL. Long messages and params are cut (the JSON writer repairs a cut character). */
QL_API void ql_proto_error_set(ql_proto_error_t *e, int status, const char *type, const char *code,
                               const char *param, const char *fmt, ...) QL_PRINTF(6, 7);

/* The errors the server sends, with OpenAI's wire values where OpenAI has one:
 *   400 invalid_request_error, code null         a bad body or field (ql_proto_parse_request)
 *   400 invalid_request_error, context_length_exceeded            ql_proto_error_context_length
 *   401 invalid_request_error, invalid_api_key (null when no key was sent)   ql_proto_error_auth
 *   404 invalid_request_error, model_not_found                  ql_proto_error_model_not_found
 *   404 invalid_request_error, code null, "Invalid URL (GET /x)"    ql_proto_error_route_not_found
 *   405 invalid_request_error, method_not_allowed               ql_proto_error_method_not_allowed
 *   413 invalid_request_error, request_too_large                    ql_proto_error_too_large
 *   429 requests, rate_limit_exceeded (queue full)                  ql_proto_error_queue_full
 *   500 server_error, code null                                     ql_proto_error_internal
 *   503 server_error, service_unavailable (draining, not ready)     ql_proto_error_unavailable */
QL_API void ql_proto_error_invalid(ql_proto_error_t *e, const char *param, const char *fmt, ...)
    QL_PRINTF(3, 4);
/** `n_completion` < 0: the request set no completion length (the prompt alone is too long). */
QL_API void ql_proto_error_context_length(ql_proto_error_t *e, int chat, int64_t max_model_len,
                                          int64_t n_prompt, int64_t n_completion);
/** `key_sent`: 0 when the request had no bearer token. The key is never echoed. */
QL_API void ql_proto_error_auth(ql_proto_error_t *e, int key_sent);
QL_API void ql_proto_error_model_not_found(ql_proto_error_t *e, const char *model);
QL_API void ql_proto_error_route_not_found(ql_proto_error_t *e, const char *method, const char *path);
QL_API void ql_proto_error_method_not_allowed(ql_proto_error_t *e, const char *method,
                                              const char *path);
QL_API void ql_proto_error_too_large(ql_proto_error_t *e, uint64_t max_bytes);
QL_API void ql_proto_error_queue_full(ql_proto_error_t *e, int n_waiting, int retry_after_s);
/** `detail` (may be NULL) is appended, e.g. a request id; never put internal state in it. */
QL_API void ql_proto_error_internal(ql_proto_error_t *e, const char *detail);
/** `reason`: e.g. "the server is shutting down" or "the model is still loading". */
QL_API void ql_proto_error_unavailable(ql_proto_error_t *e, const char *reason);

/** Appends `{"error":{"message","type","param","code"}}`. @return 0 or QL_ENOMEM. */
QL_API int ql_proto_error_json(const ql_proto_error_t *e, ql_proto_buf_t *out);

/* ---- requests ---- */

typedef enum ql_proto_endpoint_e {
    QL_PROTO_ENDPOINT_COMPLETIONS = 0, /* POST /v1/completions */
    QL_PROTO_ENDPOINT_CHAT = 1,        /* POST /v1/chat/completions */
    QL_PROTO_ENDPOINT_TOKENIZE = 2,    /* POST /tokenize (vLLM) */
    QL_PROTO_ENDPOINT_DETOKENIZE = 3,  /* POST /detokenize (vLLM) */
} ql_proto_endpoint_t;

/* One prompt: text, or token ids (tokens != NULL). */
typedef struct ql_proto_prompt_s {
    const char *text;      /* [text_len] UTF-8, NUL-terminated; NULL for a token prompt */
    size_t text_len;       /* may be 0 (an empty prompt is the server's to judge) */
    const int32_t *tokens; /* [n_tokens] ids in [0, n_vocab); NULL for a text prompt */
    int32_t n_tokens;      /* >= 1 for a token prompt */
} ql_proto_prompt_t;

typedef enum ql_proto_role_e {
    QL_PROTO_ROLE_SYSTEM = 0, /* "system", and "developer" (OpenAI's newer name for it) */
    QL_PROTO_ROLE_USER = 1,
    QL_PROTO_ROLE_ASSISTANT = 2,
} ql_proto_role_t;

typedef struct ql_proto_msg_s {
    ql_proto_role_t role;
    const char *role_name; /* "system", "user" or "assistant" (static): model/chat.h's names */
    const char *content;   /* [content_len] UTF-8, NUL-terminated; text parts joined with "\n" */
    size_t content_len;
} ql_proto_msg_t;

typedef struct ql_proto_logit_bias_s {
    int32_t token; /* in [0, n_vocab) */
    float bias;    /* in [-100, 100] */
} ql_proto_logit_bias_t;

/* A stop sequence (non-empty). */
typedef struct ql_proto_text_s {
    const char *ptr; /* [len], NUL-terminated */
    size_t len;
} ql_proto_text_t;

/* What the parser needs from the server. */
typedef struct ql_proto_opts_s {
    const char *served_model; /* the model id clients name; required */
    int32_t max_n;            /* largest `n` accepted (--max-n), >= 1 */
    int32_t n_vocab;          /* token ids and logit_bias keys must be below it; 0 = unchecked */
    int32_t max_model_len;    /* a token prompt longer than this is refused; 0 = unchecked */
} ql_proto_opts_t;

/* A parsed request. Every pointer points into the arena given to ql_proto_parse_request and
 * lives until that arena is cleared; the struct itself is the caller's. Fields that do not
 * apply to the endpoint keep their defaults. */
typedef struct ql_proto_request_s {
    ql_proto_endpoint_t endpoint;
    const char *model; /* opts->served_model (copied): the body named it, or none (absent, null, "") */

    /* ---- the input: one of these, by endpoint ---- */
    const ql_proto_prompt_t *prompts; /* [n_prompts] completions; tokenize with "prompt" (text) */
    int32_t n_prompts;
    const ql_proto_msg_t *messages;   /* [n_messages] chat; tokenize with "messages" */
    int32_t n_messages;
    const int32_t *tokens;            /* [n_tokens] detokenize */
    int32_t n_tokens;

    /* ---- length and stopping ---- */
    int32_t max_tokens;  /* >= 1; -1 = until EOS or the context is full (chat's default);
                            completions default to QL_PROTO_COMPLETIONS_MAX_TOKENS_DEFAULT */
    int32_t min_tokens;  /* >= 0, <= max_tokens when max_tokens is set. Default 0 */
    int ignore_eos;      /* default 0 */
    int32_t spec_tokens; /* "num_speculative_tokens" (quill's extension): 0 = no speculative
                            decoding for this request, 1..16 = at most this many drafts per step
                            (never more than the server's); -1 (absent) = the server's */
    const ql_proto_text_t *stop; /* [n_stop], n_stop <= QL_PROTO_STOP_MAX */
    int32_t n_stop;

    /* ---- sampling (defaults: OpenAI's, i.e. everything off but temperature 1) ---- */
    float temperature;        /* [0, 2]. Default 1 */
    float top_p;              /* (0, 1]. Default 1 */
    int32_t top_k;            /* >= 0, 0 = off (the body's -1 and 0 both mean off). Default 0 */
    float min_p;              /* [0, 1]. Default 0 */
    float presence_penalty;   /* [-2, 2]. Default 0 */
    float frequency_penalty;  /* [-2, 2]. Default 0 */
    float repetition_penalty; /* > 0 and finite. Default 1 */
    int has_seed;             /* 1 when the body set seed */
    int64_t seed;
    const ql_proto_logit_bias_t *logit_bias; /* [n_logit_bias], in the body's key order */
    int32_t n_logit_bias;
    int32_t n;                /* [1, opts->max_n]: choices per prompt. Default 1 */
    int logprobs;             /* 1: report each output token's logprob. Default 0 */
    int32_t top_logprobs;     /* [0, 20] alternatives per token; > 0 implies logprobs. Default 0 */

    /* ---- output ---- */
    int stream;               /* default 0 */
    int include_usage;        /* stream_options.include_usage (only with stream). Default 0 */
    int echo;                 /* completions: prepend the prompt to the text. Default 0 */
    const char *user;         /* NULL when absent */

    /* ---- tokenizer (vLLM's extensions; chat and tokenize) ---- */
    int add_special_tokens;   /* default 1 for a prompt, 0 for messages (vLLM's defaults) */
    int add_generation_prompt; /* messages: end with the assistant header. Default 1 */
} ql_proto_request_t;

/** Parses and validates the body of a request to endpoint `ep`.
 *
 *  Accepted (each field's range is on ql_proto_request_t above):
 *   prompt    a string, a list of strings, a list of token ids, or a list of lists of token ids
 *             (OpenAI's four forms; vLLM's too). A list may not be empty nor mix forms; a token
 *             list may not be empty. /tokenize takes a string only (as vLLM).
 *   messages  a non-empty list of {role, content}: role system, developer (→ system), user,
 *             assistant; content a string, or a list of {"type":"text","text":...} parts joined
 *             with "\n" (vLLM's rule); assistant content may be null or absent (""). Other roles
 *             and part types are refused. Tools, response_format other than text, and suffix
 *             are refused rather than ignored: quill does not implement them.
 *   max_tokens and max_completion_tokens are synonyms (both endpoints); both set and different
 *             → 400 naming max_tokens.
 *   best_of   must equal n when set (quill samples exactly n choices and ranks none).
 *  Unknown fields are ignored.
 *
 *  On success *r is filled (its pointers into `arena`, which the caller owns and clears when the
 *  request is done) and `e` is untouched. On error `e` holds what to send; the arena may hold
 *  partial data (clear it with the request).
 *  @return 0; QL_EINVAL with e->status 400 (not JSON, not an object, a missing, mistyped or
 *  out-of-range field; e->param names it, e->message says what is accepted) or 404
 *  (model_not_found: `model` is neither absent nor opts->served_model); QL_ENOMEM with
 *  e->status 500. Thread: any. */
QL_API int ql_proto_parse_request(ql_proto_endpoint_t ep, const char *body, size_t len,
                                  const ql_proto_opts_t *opts, ql_arena_t *arena,
                                  ql_proto_request_t *r, ql_proto_error_t *e);

/* ---- responses ---- */

typedef enum ql_proto_finish_e {
    QL_PROTO_FINISH_NONE = 0,   /* still running: JSON null */
    QL_PROTO_FINISH_STOP = 1,   /* EOS or a stop sequence */
    QL_PROTO_FINISH_LENGTH = 2, /* max_tokens or the context */
    QL_PROTO_FINISH_CONTENT_FILTER = 3, /* OpenAI's; quill never sends it */
    QL_PROTO_FINISH_TOOL_CALLS = 4,     /* OpenAI's; quill never sends it */
} ql_proto_finish_t;

/** "stop", "length", "content_filter", "tool_calls"; NULL for NONE or an unknown value. */
QL_API const char *ql_proto_finish_name(ql_proto_finish_t f);

typedef struct ql_proto_usage_s {
    int64_t prompt_tokens;
    int64_t completion_tokens; /* total_tokens is their sum */
    int64_t cached_tokens;     /* prompt tokens served from the prefix cache */
    int has_spec;              /* 1: write completion_tokens_details with the two below */
    int64_t spec_accepted_tokens; /* drafted tokens accepted (OpenAI's accepted_prediction_tokens) */
    int64_t spec_rejected_tokens; /* drafted tokens rejected (rejected_prediction_tokens) */
} ql_proto_usage_t;

/* One alternative at one position. */
typedef struct ql_proto_top_logprob_s {
    const char *token; /* [token_len] the token's bytes (need not be valid UTF-8) */
    size_t token_len;
    float logprob;     /* -inf and values below -9999 are written as -9999.0 */
} ql_proto_top_logprob_t;

/* One position: the chosen token, its logprob and the alternatives. */
typedef struct ql_proto_logprob_s {
    const char *token;  /* [token_len] the token's bytes */
    size_t token_len;
    float logprob;      /* NaN: JSON null (an echoed prompt's first token has none) */
    int32_t text_offset; /* completions: characters before this token in the choice's text */
    const ql_proto_top_logprob_t *top; /* [n_top] most likely first; NULL when n_top = 0 */
    int32_t n_top;
} ql_proto_logprob_t;

/* One choice of a response, or what one stream event carries for one choice. */
typedef struct ql_proto_choice_s {
    int32_t index;        /* prompt_index * n + sample_index, as OpenAI numbers them */
    const char *text;     /* [text_len] completion text, chat content, or the delta since the
                             last event (bytes; written as UTF-8 with U+FFFD repairs) */
    size_t text_len;
    ql_proto_finish_t finish_reason; /* NONE: not finished (streams) */
    int has_logprobs;     /* 0: "logprobs": null. 1: the object below, even when empty */
    const ql_proto_logprob_t *logprobs; /* [n_logprobs] one per token of `text` */
    int32_t n_logprobs;
    int first;            /* chat streams: this choice's first event: the role delta goes first */
} ql_proto_choice_t;

/* A response (or a stream's constant header). All pointers are borrowed for the call. */
typedef struct ql_proto_response_s {
    const char *id;       /* "cmpl-…" or "chatcmpl-…", made by the server */
    int64_t created;      /* Unix seconds */
    const char *model;    /* the served model id */
    const ql_proto_choice_t *choices; /* [n_choices] */
    int32_t n_choices;
    const ql_proto_usage_t *usage; /* NULL: no usage (stream chunks) */
    int include_usage;    /* streams: every chunk carries "usage": null (OpenAI's shape when
                             stream_options.include_usage is set) */
} ql_proto_response_t;

/** Appends the complete (non-streamed) body for `ep` (COMPLETIONS or CHAT):
 *   completions: {"id","object":"text_completion","created","model",
 *                 "choices":[{"index","text","logprobs","finish_reason"}],"usage"}
 *   chat:        {"id","object":"chat.completion","created","model",
 *                 "choices":[{"index","message":{"role":"assistant","content"},"logprobs",
 *                             "finish_reason"}],"usage"}
 *  usage: {"prompt_tokens","completion_tokens","total_tokens","prompt_tokens_details":
 *  {"cached_tokens"}} (r->usage must be set). Logprobs: completions' {"tokens","token_logprobs",
 *  "top_logprobs":[{token:logprob}],"text_offset"}; chat's {"content":[{"token","logprob",
 *  "bytes","top_logprobs":[{"token","logprob","bytes"}]}]}.
 *  @return 0, QL_EINVAL (bad endpoint, NULL or missing usage) or QL_ENOMEM. */
QL_API int ql_proto_response_json(ql_proto_endpoint_t ep, const ql_proto_response_t *r,
                                  ql_proto_buf_t *out);

/** Appends the SSE events for r->choices (streams; r->usage is ignored), in OpenAI's order, one
 *  choice per event, each `data: <json>\n\n`:
 *   chat (object "chat.completion.chunk"), per choice:
 *     if first:                      delta {"role":"assistant","content":""}
 *     if text or logprobs:           delta {"content":text}, with logprobs when has_logprobs
 *     if finish_reason != NONE:      delta {}, finish_reason
 *   completions (object "text_completion"), per choice:
 *     if text or logprobs:           "text":text, with logprobs when has_logprobs
 *     if finish_reason != NONE:      "text":"", finish_reason
 *  A choice with nothing to say writes nothing.
 *  @return 0, QL_EINVAL or QL_ENOMEM (out unchanged). */
QL_API int ql_proto_sse_chunks(ql_proto_endpoint_t ep, const ql_proto_response_t *r,
                               ql_proto_buf_t *out);

/** Appends the usage event sent last when stream_options.include_usage is set:
 *  data: {"id","object","created","model","choices":[],"usage":{...}}\n\n (r->choices ignored).
 *  @return 0, QL_EINVAL (no usage) or QL_ENOMEM. */
QL_API int ql_proto_sse_usage(ql_proto_endpoint_t ep, const ql_proto_response_t *r,
                              ql_proto_buf_t *out);

/** Appends `data: {"error":{...}}\n\n`: an error after the stream began (follow it with
 *  ql_proto_sse_done). @return 0 or QL_ENOMEM. */
QL_API int ql_proto_sse_error(const ql_proto_error_t *e, ql_proto_buf_t *out);

/** Appends `data: [DONE]\n\n`. @return 0 or QL_ENOMEM. */
QL_API int ql_proto_sse_done(ql_proto_buf_t *out);

/* One entry of GET /v1/models. */
typedef struct ql_proto_model_s {
    const char *id;
    int64_t created;       /* Unix seconds */
    int32_t max_model_len; /* vLLM's extension; 0 = omitted */
} ql_proto_model_t;

/** Appends {"object":"list","data":[{"id","object":"model","created","owned_by":"quill",
 *  "max_model_len"}]}. @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_models_json(const ql_proto_model_t *models, int32_t n_models,
                                ql_proto_buf_t *out);

/** Appends vLLM's /tokenize body {"count","max_model_len","tokens"}.
 *  @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_tokenize_json(const int32_t *tokens, int32_t n_tokens, int32_t max_model_len,
                                  ql_proto_buf_t *out);

/** Appends vLLM's /detokenize body {"prompt":text}. @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_detokenize_json(const char *text, size_t text_len, ql_proto_buf_t *out);

/* ---- UTF-8 helpers (what the writers use; the server needs them for text_offset) ---- */

/** Characters in s[0..len) as the writers output it: code points, each U+FFFD repair counting
 *  one (Python's len() of the decoded text, which OpenAI's text_offset counts). */
QL_API size_t ql_proto_utf8_chars(const char *s, size_t len);

/** Length of the longest prefix of s[0..len) that ends on a character boundary: what a stream
 *  may send now while a multi-byte character is still incomplete. Bytes that can never start a
 *  valid character do not hold the prefix back. */
QL_API size_t ql_proto_utf8_complete_prefix(const char *s, size_t len);

/* ---- the client side (quill bench, proto/client.c) ---- */

/* One streamed request as `quill bench` sends it: temperature 0, "stream": true,
 * "stream_options": {"include_usage": true}. */
typedef struct ql_proto_client_req_s {
    int chat;                 /* 0: completions ("prompt"), 1: chat (one user message) */
    const char *model;        /* NUL-terminated; NULL: no "model" field */
    const char *prompt_text;  /* NUL-terminated; chat needs it; completions use it when set */
    const int32_t *prompt_ids; /* [n_prompt_ids] completions' token-id prompt (no prompt_text) */
    size_t n_prompt_ids;
    int32_t max_tokens;       /* >= 1 */
    int ignore_eos;           /* sends "ignore_eos": true (vLLM's and llama.cpp's extension) */
} ql_proto_client_req_t;

/** Appends the request body. @return 0, QL_EINVAL (no prompt, chat without text, max_tokens
 *  < 1) or QL_ENOMEM. */
QL_API int ql_proto_client_request(const ql_proto_client_req_t *r, ql_proto_buf_t *out);
/** Appends a /tokenize body for `text`, without special tokens: vLLM's {"prompt",
 *  "add_special_tokens": false} or, with `llama_dialect`, llama.cpp's {"content",
 *  "add_special": false}. @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_client_tokenize_body(const char *text, int llama_dialect, ql_proto_buf_t *out);
/** Appends {"tokens":[ids...]} (/detokenize, both dialects). @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_client_detokenize_body(const int32_t *ids, size_t n, ql_proto_buf_t *out);

/* What one SSE `data:` payload of a completions or chat stream carries. */
typedef struct ql_proto_client_chunk_s {
    int has_choice;            /* "choices" is a non-empty array */
    size_t text_len;           /* bytes of choices[0].text (or .delta.content); 0 if none */
    int finished;              /* choices[0].finish_reason is a string */
    int64_t prompt_tokens;     /* usage.prompt_tokens; -1 when there is no usage */
    int64_t completion_tokens; /* usage.completion_tokens; -1 when there is no usage */
    int is_error;              /* the payload is an error object: its message is in `error` */
    char error[256];
} ql_proto_client_chunk_t;

/** Reads one stream payload. @return 0 or QL_EINVAL (not a JSON object). */
QL_API int ql_proto_client_chunk(const char *json, size_t len, ql_proto_client_chunk_t *c);
/** The message of an error body ({"error":{"message"}}, {"error":"..."}, {"message"}), one line,
 *  cut to msg[cap]. @return 0 or QL_EINVAL (no such message). */
QL_API int ql_proto_client_error_message(const char *json, size_t len, char *msg, size_t cap);
/** The "tokens" of a /tokenize answer (ints, or llama.cpp's {"id",...} objects) into *ids
 *  (malloc'd: the caller frees it). @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_client_tokens(const char *json, size_t len, int32_t **ids, size_t *n);
/** The text of a /detokenize answer ("prompt" in vLLM's, "content" in llama.cpp's) into *text
 *  (malloc'd, NUL-terminated). @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_client_text(const char *json, size_t len, char **text);
/** data[0].id of a /v1/models answer into *id (malloc'd). @return 0, QL_EINVAL or QL_ENOMEM. */
QL_API int ql_proto_client_first_model(const char *json, size_t len, char **id);

#ifdef __cplusplus
}
#endif

#endif /* QL_PROTO_H */
