/*
 * bench/bench-internal.h — what bench/'s files share: the target URL and the one-shot HTTP/1.1
 * client (client.c) every request of `quill bench` goes through. Not a public API.
 */
#ifndef QL_BENCH_INTERNAL_H
#define QL_BENCH_INTERNAL_H

#include <llhttp.h>
#include <uv.h>

#include "bench/bench.h"
#include "proto/proto.h"

/* ---- the target ---- */

typedef struct ql__bench_target_s {
    char host[256];          /* as written, without brackets */
    char host_header[300];   /* Host: value */
    int port;
    char prefix[256];        /* path prefix without a trailing '/', "" for none */
    struct sockaddr_storage addr;
    const char *api_key;     /* borrowed; NULL = none */
    uint64_t timeout_ms;     /* per request; 0 = none */
} ql__bench_target_t;

/** Parses http://HOST[:PORT][/PREFIX] into t (not resolved). @return 0 or QL_EINVAL with one
 *  line in err. */
int ql__bench_parse_url(const char *url, ql__bench_target_t *t, char *err, size_t errlen);
/** Resolves t->host (blocking getaddrinfo through libuv). @return 0 or QL_EIO with err. */
int ql__bench_resolve(uv_loop_t *loop, ql__bench_target_t *t, char *err, size_t errlen);

/* ---- one HTTP exchange on its own connection (Connection: close) ---- */

typedef struct ql__bench_call_s ql__bench_call_t;
/* A `data:` payload of an event stream (status 200 with text/event-stream), read at t_ns. */
typedef void (*ql__bench_event_fn)(ql__bench_call_t *c, const char *data, size_t len, uint64_t t_ns);
/* The exchange ended (c->failed says how); every handle is closed: the callee may free c. */
typedef void (*ql__bench_done_fn)(ql__bench_call_t *c);

struct ql__bench_call_s {
    uv_tcp_t tcp;
    uv_connect_t connect;
    uv_write_t write;
    uv_timer_t timer;
    llhttp_t parser;
    const ql__bench_target_t *target;
    ql_proto_buf_t req;   /* the request bytes */
    ql_proto_buf_t body;  /* the response body (not an event stream), or unparsed stream bytes */
    int status;           /* HTTP status; 0 before the headers */
    int is_stream;        /* status 200 to a request with on_event: read as an event stream */
    size_t n_events;      /* `data:` lines seen */
    char head[121];       /* the body's first bytes, for error messages */
    size_t n_head;
    int complete;         /* the response ended */
    int saw_done;         /* the stream sent "data: [DONE]" */
    int failed;           /* 1: no complete response (err says why) */
    char err[256];
    int n_open;           /* handles not yet closed */
    int closing;
    uint64_t t_read_ns;   /* when the bytes being parsed arrived */
    uint64_t t_end_ns;    /* when the response ended (or failed) */
    ql__bench_event_fn on_event;
    ql__bench_done_fn on_done;
    void *ud;
};

/** Starts `method path` with `body` (may be NULL) on a new connection. `c` must stay put
 *  until on_done; it is initialised here. @return 0, or a negative libuv/QL status (then no
 *  callback is called and nothing is left open). */
int ql__bench_call_start(uv_loop_t *loop, ql__bench_call_t *c, const ql__bench_target_t *t,
                         const char *method, const char *path, const char *body, size_t body_len,
                         ql__bench_event_fn on_event, ql__bench_done_fn on_done, void *ud);
/** Frees the buffers of a finished call. */
void ql__bench_call_free(ql__bench_call_t *c);

/* ---- the text corpus prompts are drawn from (corpus.c) ---- */

extern const char *const ql__bench_corpus[];
extern const size_t ql__bench_corpus_len;

#endif /* QL_BENCH_INTERNAL_H */
