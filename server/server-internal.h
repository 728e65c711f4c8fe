/*
 * server/server-internal.h — what the files of `quill serve` share: the server object, the
 * connection and exchange calls (http.c), the router (route.c), the OpenAI endpoints and the
 * engine bridge (api.c), /metrics (metrics.c), signals and draining (signals.c) and model
 * loading (load.c).
 *
 * Threads. One libuv loop thread runs everything here except:
 *   - the engine thread (scheduler/engine.h), which only calls api.c's event callback: it copies
 *     the event into its request's outbox under the outbox lock and wakes the loop (uv_async_send);
 *   - libuv's worker pool, which runs request preparation (JSON parsing, chat rendering,
 *     tokenization: api.c) and model loading (load.c) so the loop never waits on them.
 * The loop never waits on the engine: it submits, cancels and reads counters, all of which take
 * the engine's lock only briefly and never wait for a step.
 */
#ifndef QL_SERVER_INTERNAL_H
#define QL_SERVER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config/config.h"
#include "core/core.h"
#include "model/chat.h"
#include "model/gguf.h"
#include "model/tokenizer.h"
#include "proto/proto.h"
#include "scheduler/engine.h"
#include "server/outbox.h"

typedef struct ql_srv_s ql_srv_t;
typedef struct ql_conn_s ql_conn_t;
typedef struct ql_req_s ql_req_t;
typedef struct ql_sub_s ql_sub_t;

/* ---- load.c: a model ready to serve ---- */

/* Everything `quill serve` (and `quill run`) needs from a model file. */
typedef struct ql_loaded_s {
    ql_gguf_t *gguf; /* the mapping the backend reads weights from */
    ql_tok_t *tok;
    ql_chat_t *chat;    /* NULL when the model has no usable template (chat requests → 400) */
    char chat_err[256]; /* why chat is NULL */
    ql_backend_t *backend;
    char *name; /* the file's base name without .gguf (malloc'd) */
} ql_loaded_t;

/** Opens cfg->model, builds its tokenizer, chat template (cfg->chat_template) and the backend
 *  (cfg->backend, threads, KV size, block size, batch limits, context) for n_seqs_max sequences
 *  per step (<= 0: cfg->max_num_seqs). A model without a usable chat template still loads
 *  (chat stays NULL, chat_err says why) unless cfg->chat_template names one explicitly. On
 *  error writes one line into err. @return 0 or a QL_E* code (QL_EINVAL: a bad setting, such
 *  as an unknown template name); on error *m is zeroed. Thread: any (slow: seconds). */
int ql__load_model(const ql_config_t *cfg, int32_t n_seqs_max, ql_loaded_t *m, char *err,
                   size_t errlen);
/** Checks, before anything is loaded, that --backend names a backend this build and machine
 *  have. On error writes one line into err. @return 0 or QL_EUNSUPPORTED. Thread: any. */
int ql__load_check_backend(const ql_config_t *cfg, char *err, size_t errlen);
/** Frees what ql__load_model built (the backend last but one, the mapping last). */
void ql__load_free(ql_loaded_t *m);

/* ---- draft.c: speculative decoding's draft model ---- */

typedef struct ql_draft_s {
    ql_gguf_t *gguf;
    ql_tok_t *tok;
    ql_backend_t *backend; /* NULL: no draft model configured */
} ql_draft_t;

/** Opens cfg->draft_model when set (or fails when --spec-method draft lacks it), refuses a
 *  vocabulary that differs from the target's in size or in any token's text, and builds its
 *  backend (CPU) for n_seqs_max sequences (<= 0: cfg->max_num_seqs) with a quarter of the KV
 *  budget. Without a draft model, leaves *d zeroed and returns 0. On error writes one line into
 *  err. @return 0, QL_EINVAL (bad flags, another vocabulary), QL_EUNSUPPORTED, or the loader's
 *  error. Thread: any (slow). */
int ql__draft_load(const ql_config_t *cfg, const ql_loaded_t *target, int32_t n_seqs_max,
                   ql_draft_t *d, char *err, size_t errlen);
void ql__draft_free(ql_draft_t *d); /* zeroed: no-op */

/* ---- metrics.c ---- */

#define QL_HIST_MAX_BUCKETS 24

/* A Prometheus histogram: cumulative counts are computed when written. */
typedef struct ql_hist_s {
    const double *bounds; /* [n] upper bounds, ascending; +Inf is implicit */
    int n;
    uint64_t counts[QL_HIST_MAX_BUCKETS + 1]; /* [n + 1] per bucket (not cumulative) */
    double sum;
    uint64_t count;
} ql_hist_t;

typedef struct ql_metrics_s {
    ql_hist_t ttft;       /* time_to_first_token_seconds: arrival → first token */
    ql_hist_t itl;        /* inter_token_latency_seconds: between tokens of a choice */
    ql_hist_t e2e;        /* e2e_request_latency_seconds: arrival → final event */
    ql_hist_t queue;      /* request_queue_time_seconds: submit → first scheduled */
    ql_hist_t prompt_len; /* request_prompt_tokens */
    ql_hist_t gen_len;    /* request_generation_tokens */
    uint64_t success_stop, success_length; /* request_success_total{finished_reason} */
    uint64_t failed;           /* requests that ended with an error (not the client's doing) */
    uint64_t cancelled;        /* requests whose client went away or timed out */
    uint64_t http_by_class[6]; /* responses by status class (1xx..5xx), [0] unused */
    uint64_t conns_total;      /* connections accepted */
    uint64_t conns_refused;    /* over --max-connections */
    uint64_t cutoffs;          /* connections cut off for not reading (--max-output-bytes) */
    uint64_t timeouts;         /* connections closed by a header/body/idle/request timeout */
} ql_metrics_t;

void ql__metrics_init(ql_metrics_t *m);
void ql__hist_observe(ql_hist_t *h, double v);
/** Appends the Prometheus text exposition of the server's metrics and the engine's counters. */
int ql__metrics_write(ql_srv_t *s, ql_proto_buf_t *out);

/* ---- the server ---- */

typedef enum ql_srv_state_e {
    QL_SRV_LOADING = 0, /* listening; the model is loading (/ready 503) */
    QL_SRV_READY = 1,
    QL_SRV_DRAINING = 2, /* SIGTERM: no new requests, in-flight ones finish */
    QL_SRV_FAULTED = 3,  /* the backend failed: in-flight requests ended, exit non-zero */
    QL_SRV_STOPPING = 4, /* closing every connection; the loop ends when they are gone */
} ql_srv_state_t;

typedef enum ql_route_e {
    QL_ROUTE_NONE = 0,
    QL_ROUTE_HEALTH,
    QL_ROUTE_READY,
    QL_ROUTE_METRICS,
    QL_ROUTE_MODELS,
    QL_ROUTE_COMPLETIONS,
    QL_ROUTE_CHAT,
    QL_ROUTE_TOKENIZE,
    QL_ROUTE_DETOKENIZE,
    QL_ROUTE_COUNT,
} ql_route_t;

struct ql_srv_s {
    uv_loop_t *loop;
    const ql_config_t *cfg;
    ql_srv_state_t state;
    int exit_code; /* what ql_cmd_serve returns */

    /* model and engine (set once loading is done, loop thread) */
    ql_loaded_t model;
    ql_draft_t draft;  /* speculative decoding's draft model, when configured */
    int model_loaded;
    ql_engine_t *engine;
    ql_engine_limits_t lim;
    char *served_model; /* --served-model-name, else the file's base name */
    int64_t created_s;  /* Unix time the server started: /v1/models' created */
    uv_work_t load_work;
    int load_rc;
    char load_err[512];

    /* listener and connections */
    uv_tcp_t listener;
    int listening;
    int port;         /* the bound port */
    ql_conn_t *conns; /* all open connections (doubly linked) */
    int n_conns;
    uint64_t next_conn_id;
    char *read_buf;         /* [QL_READ_BUF_BYTES] shared by every read: libuv reads one
                                    stream at a time and read_cb copies out */
    uv_timer_t tick;        /* timeouts, readiness, draining: every QL_TICK_MS */
    uv_idle_t resume_idle;  /* parses pipelined input of connections whose exchange ended */
    ql_conn_t *resume_head; /* connections waiting for resume_idle (singly linked) */

    /* engine → loop (api.c) */
    uv_async_t outbox_async;
    ql_outbox_t outbox;                    /* subs with events to read (outbox.h) */
    ql_sub_t *pending_head, *pending_tail; /* the loop's: subs with records left to read */
    int n_reqs; /* API requests alive (preparing, in the engine, or detached) */

    /* readiness: the engine is making progress */
    uint64_t last_steps;
    uint64_t t_last_progress_ns;

    /* draining and shutdown (signals.c) */
    uv_signal_t sig_term, sig_int;
    uint64_t t_drain_deadline_ns; /* in-flight requests are aborted at this time */
    uint64_t t_stop_deadline_ns;  /* connections are closed at this time, whatever they do */
    int aborted;                  /* the engine was told to abort */

    ql_metrics_t metrics;
    uint64_t id_rng; /* request ids (not a secret) */
    char date[40];   /* the Date header value, refreshed each second */
    int64_t date_s;
};

#define QL_READ_BUF_BYTES (64 * 1024)
#define QL_TICK_MS 100
/* NOTE(progress): /ready turns 503 when requests wait or run and the engine has not finished a
 * step for this long: a step of max_batched_tokens takes seconds on a slow CPU, never minutes. */
#define QL_PROGRESS_STALL_NS (30ull * 1000000000ull)

/* ---- http.c: listener, connections, exchanges ---- */

/** Binds cfg->host:cfg->port (IPv4 or IPv6 literal, or "localhost") and listens. On error writes
 *  one line into err. @return 0 or QL_EIO. */
int ql__http_listen(ql_srv_t *s, char *err, size_t errlen);
/** Closes the listener (draining): new connections are refused by the kernel. */
void ql__http_stop_listening(ql_srv_t *s);
/** Closes every connection that has no exchange in progress and nothing left to write; the
 *  others close once their current response is written (draining). */
void ql__http_close_idle(ql_srv_t *s);
/** Closes every connection now (the end of a shutdown). */
void ql__http_close_all(ql_srv_t *s);
/** Enforces the header, body, idle and write-stall timeouts (and the request timeout through
 *  ql__api_timeout). Called by the tick timer. */
void ql__http_tick(ql_srv_t *s, uint64_t now_ns);
/** Refreshes s->date from the wall clock (once per second). */
void ql__http_update_date(ql_srv_t *s);

/* Answering the exchange in progress on `c` (loop thread). Each call writes into the
 * connection's output buffer; ql__http_flush sends it. A reply or a stream end finishes the
 * exchange: the request is detached from the connection, which reads the next (pipelined)
 * request or closes. `extra` is NULL or more header lines, each ending in "\r\n". */
void ql__http_reply(ql_conn_t *c, int status, const char *ctype, const char *extra,
                    const char *body, size_t len);
void ql__http_reply_error(ql_conn_t *c, const ql_proto_error_t *e, const char *extra);
/** Sends a 200 with `ctype` whose body follows in pieces (chunked on HTTP/1.1; on HTTP/1.0 the
 *  body ends with the connection). */
void ql__http_stream_start(ql_conn_t *c, const char *ctype);
/** Queues one piece of the body (one chunk on HTTP/1.1). */
void ql__http_stream_send(ql_conn_t *c, const char *data, size_t len);
/** Ends the body and the exchange. */
void ql__http_stream_end(ql_conn_t *c);
/** Writes what the connection has buffered. May close the connection (a client over
 *  --max-output-bytes, or a write error): the exchange's request is then detached through
 *  ql__api_conn_lost, so a caller must not use `c` after this call. */
void ql__http_flush(ql_conn_t *c);
/** Bytes buffered on `c` and not yet handed to libuv. */
size_t ql__http_out_len(const ql_conn_t *c);
/** 1 when the exchange's response has started (status line sent). */
int ql__http_started(const ql_conn_t *c);

/* ---- route.c: targets, routes, auth, CORS ---- */

/* A request target made canonical: what routing and authentication both see. */
typedef struct ql_target_s {
    char path[256]; /* percent-decoded, "//" collapsed, "." and ".." resolved, no trailing "/" */
    int too_long;   /* the canonical path did not fit: no route has such a path */
} ql_target_t;

/** Canonicalises a request target (origin-form "/p?q", or absolute-form "http://h/p?q"): the
 *  query is dropped, %XX decoded (a decoded '/' separates segments like a literal one),
 *  empty and "." segments dropped, ".." removes the previous segment (never above the root),
 *  a trailing '/' dropped. @return 0; QL_EINVAL for a target that is not a path (no leading
 *  '/', a bad escape, a decoded NUL or control byte, a '#', an unknown scheme or
 *  authority-form). Thread: any. */
int ql__route_target(const char *target, size_t len, ql_target_t *out);
/** The route of a canonical path, or QL_ROUTE_NONE. */
ql_route_t ql__route_find(const char *path);
/** "GET" or "POST": the method the route takes. */
const char *ql__route_method(ql_route_t r);
/** 1 for the routes open without an API key (/health, /ready). */
int ql__route_open(ql_route_t r);
/** Checks an Authorization header value (NULL when absent) against cfg->api_keys: "Bearer "
 *  (scheme case-insensitive) then a key, compared in constant time against every key.
 *  @return 1 when allowed (or no keys are configured), 0 when not. *sent is set to whether a
 *  bearer token was present. */
int ql__route_auth(const ql_config_t *cfg, const char *authz, size_t authz_len, int *sent);
/** Whether `origin` is allowed by cfg->cors_origins; writes the CORS response header lines
 *  (Access-Control-Allow-Origin, Vary) into out. @return 1 allowed, 0 not (out = ""). */
int ql__route_cors(const ql_config_t *cfg, const char *origin, size_t origin_len, char *out,
                   size_t cap);

/* ---- api.c: the endpoints and the engine bridge ---- */

/* What the HTTP layer hands the API layer when a request is complete. */
typedef struct ql_exchange_s {
    ql_route_t route;
    const char *body; /* [body_len], the connection's: copy what outlives the call */
    size_t body_len;
    uint64_t t_arrival_ns; /* first byte of the request */
} ql_exchange_t;

/** Handles a complete, authorised request on `c` (any route). Either replies at once or
 *  starts work that replies later. Sets the connection's request through ql__http_set_req. */
void ql__api_handle(ql_srv_t *s, ql_conn_t *c, const ql_exchange_t *x);
/** The connection of `r` is gone (client closed, cut off, timed out): cancel its engine work.
 *  `r` is freed once the engine has ended all of it. */
void ql__api_conn_lost(ql_req_t *r);
/** --request-timeout passed for `r`: cancel it and answer 504 (or an SSE error). */
void ql__api_timeout(ql_req_t *r);
/** Attach / detach the request an exchange is waiting for (http.c keeps the pointer). */
void ql__http_set_req(ql_conn_t *c, ql_req_t *r);
ql_req_t *ql__http_req(const ql_conn_t *c);
/** Drains the engine events (the outbox). uv_async callback. */
void ql__api_outbox_cb(uv_async_t *a);
/** A new request id into out[cap] with `prefix` ("cmpl-", "chatcmpl-"). */
void ql__api_new_id(ql_srv_t *s, const char *prefix, char *out, size_t cap);

/* ---- signals.c ---- */

/** Installs the SIGTERM/SIGINT handlers and the tick timer. @return 0 or QL_EIO. */
int ql__signals_init(ql_srv_t *s);
/** Starts a drain (SIGTERM, SIGINT): stop accepting, let in-flight requests finish up to
 *  --shutdown-timeout, then abort them; the loop ends when every connection is closed. A second
 *  call aborts at once. */
void ql__srv_drain(ql_srv_t *s, const char *why);
/** The backend failed: fail what is in flight, /ready 503, stop accepting, exit non-zero. */
void ql__srv_fault(ql_srv_t *s, const char *why);
/** Closes the handles signals.c owns (the end of the loop). */
void ql__signals_close(ql_srv_t *s);

#endif /* QL_SERVER_INTERNAL_H */
