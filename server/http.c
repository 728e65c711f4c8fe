/*
 * server/http.c — HTTP/1.1 over libuv: the listener, connections, request framing with llhttp,
 * limits, timeouts, keep-alive and pipelining, and the write side with backpressure.
 *
 * Where it sits: the loop thread accepts connections and reads bytes; llhttp frames each request
 * and this file checks it, routes and authenticates it (route.c) as soon as its headers are in,
 * collects the body, and hands the complete request to api.c. api.c answers through the
 * ql__http_reply / ql__http_stream_* calls; a finished exchange lets the connection read the
 * next request.
 *
 * Framing is strict. llhttp runs with no lenient flag, and because llhttp 8 still accepts a few
 * shapes RFC 9112 forbids (bare LF line ends, obs-fold, several spaces in the request line, chunk
 * data not followed by CRLF, HTTP/0.9 and HTTP/2.0 request lines), the header block is checked
 * again here byte by byte (parse_head), and the CRLF after each chunk's data is verified. Every
 * framing error is answered with 400 and the connection closed: after a bad frame nothing that
 * follows on the connection can be trusted (request smuggling).
 *
 * To see a header block whole, the parser is paused at three points: message begin (the block's
 * first byte), headers complete (its end: it is checked, routed and authorised there, and a body
 * too large for --max-request-bytes is refused from Content-Length before any of it is read),
 * and message complete (the request goes to api.c; pipelined bytes stay in `in` until the
 * exchange ends). While a request is being answered the connection keeps reading, so a client
 * that goes away is seen at once and its request cancelled.
 *
 * Output: each connection buffers what api.c writes and sends it with one uv_write per flush.
 * When what libuv could not hand to the kernel exceeds --max-output-bytes (the client stopped
 * reading), the connection is cut off and its request cancelled.
 */
#define QL_LOG_MODULE "http"
#include <errno.h>
#include <llhttp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "server/server-internal.h"

typedef enum phase_e {
    PH_IDLE = 0,     /* between requests (keep-alive) */
    PH_HEADERS = 1,  /* the request line or headers are arriving */
    PH_BODY = 2,     /* the body is arriving */
    PH_HANDLING = 3, /* the request is complete and being answered */
    PH_LINGER = 4,   /* shut down for writing; reading and dropping what the client still sends */
} phase_t;

/* NOTE(linger): after answering a request whose body was not read (413, an early error), the
 * server shuts down its write side and drops what still arrives, for a moment, before closing:
 * closing a socket with unread input makes the kernel send a RST, which can destroy the
 * response in the client's receive buffer before the client reads it. */
#define LINGER_NS (2ull * 1000000000ull)
#define LINGER_BYTES_MAX (4u << 20)

/* Fields of the header block that the server acts on, copied out of the input buffer. */
#define AUTHZ_MAX 1024
#define ORIGIN_MAX 512

struct ql_conn_s {
    uv_tcp_t tcp; /* tcp.data = this */
    ql_srv_t *srv;
    ql_conn_t *prev, *next;
    ql_conn_t *resume_next; /* srv->resume_head list */
    int in_resume;
    uint64_t id;
    llhttp_t parser;
    phase_t phase;
    int closing;     /* uv_close called */
    int close_after; /* close once the exchange's response is written */
    int eof;         /* the client shut down its side */
    int read_paused; /* uv_read_stop: too much pipelined input while answering */

    /* input: bytes read and not yet parsed; [msg_start, in_len) while headers arrive */
    char *in;
    size_t in_len, in_cap;
    size_t parsed;        /* [0, parsed) went through llhttp */
    size_t msg_start;     /* where the header block being read starts */
    const char *exec_end; /* end of the buffer llhttp is executing (for the chunk CRLF check) */
    int pause;            /* which callback paused the parser (PAUSE_*) */
    int skip_complete;    /* the request was answered from its headers: its completion is no
                             request to dispatch */
    int no_more;          /* parse nothing more on this connection */
    int timed_out;        /* --request-timeout already reported */
    char tail[2];         /* the last two bytes parsed and already dropped from `in` */

    /* the request being framed */
    uint64_t t_begin_ns;   /* its first byte */
    uint64_t t_headers_ns; /* its headers complete */
    int http_minor;
    int method; /* llhttp_method_t */
    ql_route_t route;
    char *body;
    size_t body_len, body_cap;
    uint64_t chunk_left; /* data bytes left in the current chunk */
    int crlf_need;       /* CRLF bytes still to check after a chunk's data (2, 1, 0) */
    int fail_status;     /* set by a callback that refused the request */
    const char *fail_msg;
    char cors[384]; /* CORS response header lines of this exchange ("" = none) */

    /* the exchange */
    ql_req_t *req;    /* api.c's request, NULL when answered at once */
    int started;      /* status line written */
    int chunked;      /* streaming with chunked transfer coding */
    int stream_close; /* streaming on HTTP/1.0: the body ends with the connection */
    int streaming;    /* a streamed body is being produced (the output cap applies) */
    int keep_alive;   /* this exchange leaves the connection open */

    /* output */
    ql_proto_buf_t out;  /* written by api.c, sent by ql__http_flush */
    int n_writes;        /* uv_write requests in flight */
    uint64_t t_write_ns; /* last write progress (or the first write after a quiet time) */
    uint64_t t_idle_ns;  /* the connection became idle (accept, or the end of an exchange) */
    uint64_t linger_deadline_ns;
    size_t linger_bytes;
};

enum { PAUSE_NONE = 0, PAUSE_BEGIN, PAUSE_HEADERS, PAUSE_COMPLETE };

typedef struct wreq_s {
    uv_write_t req;
    ql_conn_t *c;
    char *data; /* the connection's output buffer, handed over */
} wreq_t;

static const llhttp_settings_t *parser_settings(void);
static void conn_process(ql_conn_t *c);
static void conn_close(ql_conn_t *c, const char *why);

/* ---- small helpers ---- */

static const char *reason_phrase(int status) {
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 417: return "Expectation Failed";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

static int append(ql_proto_buf_t *b, const void *p, size_t n) {
    return ql_proto_buf_append(b, p, n);
}

static int appendf(ql_proto_buf_t *b, const char *fmt, ...) QL_PRINTF(2, 3);
static int appendf(ql_proto_buf_t *b, const char *fmt, ...) {
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return QL_EINVAL;
    if ((size_t)n >= sizeof tmp) n = (int)sizeof tmp - 1;
    return append(b, tmp, (size_t)n);
}

void ql__http_update_date(ql_srv_t *s) {
    time_t now = time(NULL);
    if ((int64_t)now == s->date_s && s->date[0]) return;
    s->date_s = (int64_t)now;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(s->date, sizeof s->date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* ---- connection list ---- */

static void list_add(ql_srv_t *s, ql_conn_t *c) {
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
}

static void list_remove(ql_srv_t *s, ql_conn_t *c) {
    if (c->prev)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->n_conns--;
}

/* ---- closing ---- */

static void on_closed(uv_handle_t *h) {
    ql_conn_t *c = h->data;
    ql_srv_t *s = c->srv;
    /* a connection waiting for resume_idle leaves that list first */
    if (c->in_resume) {
        ql_conn_t **pp = &s->resume_head;
        while (*pp && *pp != c) pp = &(*pp)->resume_next;
        if (*pp) *pp = c->resume_next;
    }
    free(c->in);
    free(c->body);
    ql_proto_buf_free(&c->out);
    free(c);
}

/* Detaches the exchange's request (cancelling it) and closes the socket. Pending writes are
 * cancelled by libuv (their callbacks run with UV_ECANCELED before on_closed). */
static void conn_close(ql_conn_t *c, const char *why) {
    if (c->closing) return;
    c->closing = 1;
    QL_LOG_DEBUG("conn %llu closes: %s", (unsigned long long)c->id, why);
    ql_req_t *r = c->req;
    c->req = NULL;
    list_remove(c->srv, c);
    uv_close((uv_handle_t *)&c->tcp, on_closed);
    if (r) ql__api_conn_lost(r);
}

static void on_shutdown(uv_shutdown_t *req, int status) {
    ql_conn_t *c = req->data;
    free(req);
    if (c->closing) return;
    if (status < 0 || c->eof) {
        conn_close(c, "shut down");
        return;
    }
    /* keep reading (and dropping) until the client closes or the linger time passes */
    c->phase = PH_LINGER;
    c->linger_deadline_ns = ql_time_ns() + LINGER_NS;
}

/* Graceful close: once every write is done, shut down our side, linger, close. */
static void conn_finish(ql_conn_t *c) {
    if (c->closing) return;
    if (c->n_writes > 0 || c->out.len > 0) {
        c->close_after = 1;
        return;
    }
    uv_shutdown_t *req = ql_xmalloc(sizeof *req);
    req->data = c;
    if (uv_shutdown(req, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        free(req);
        conn_close(c, "shutdown failed");
        return;
    }
    c->close_after = 0;
    c->phase = PH_LINGER;
    c->linger_deadline_ns = ql_time_ns() + LINGER_NS;
}

/* ---- writing ---- */

static void on_write(uv_write_t *w, int status) {
    wreq_t *wr = (wreq_t *)w;
    ql_conn_t *c = wr->c;
    free(wr->data);
    free(wr);
    c->n_writes--;
    if (c->closing) return;
    if (status < 0) {
        conn_close(c, uv_strerror(status));
        return;
    }
    c->t_write_ns = ql_time_ns();
    if (c->close_after && c->n_writes == 0 && c->out.len == 0 && !c->req) conn_finish(c);
}

void ql__http_flush(ql_conn_t *c) {
    if (c->closing || c->out.len == 0) return;
    wreq_t *wr = ql_xmalloc(sizeof *wr);
    wr->c = c;
    wr->data = c->out.data;
    uv_buf_t buf = uv_buf_init(c->out.data, (unsigned)c->out.len);
    size_t len = c->out.len;
    ql_proto_buf_init(&c->out);
    if (c->n_writes == 0) c->t_write_ns = ql_time_ns();
    int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &buf, 1, on_write);
    if (rc != 0) {
        free(wr->data);
        free(wr);
        conn_close(c, uv_strerror(rc));
        return;
    }
    c->n_writes++;
    (void)len;
    /* NOTE(output-cap): what libuv could not hand to the kernel while a stream is produced: the
     * client is not reading it. A response written whole (a large non-streamed body) may queue
     * more than the cap for a moment and drain; only the write-stall timeout (--idle-timeout)
     * applies to it. */
    size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
    if (c->streaming && queued > c->srv->cfg->max_output_bytes) {
        c->srv->metrics.cutoffs++;
        QL_LOG_WARN("conn %llu: %zu bytes of output queued (--max-output-bytes %llu): the client "
                    "stopped reading; cutting it off",
                    (unsigned long long)c->id, queued,
                    (unsigned long long)c->srv->cfg->max_output_bytes);
        conn_close(c, "output cap");
    }
}

int ql__http_started(const ql_conn_t *c) { return c->started; }
size_t ql__http_out_len(const ql_conn_t *c) { return c->closing ? 0 : c->out.len; }
void ql__http_set_req(ql_conn_t *c, ql_req_t *r) { c->req = r; }
ql_req_t *ql__http_req(const ql_conn_t *c) { return c->req; }

/* Status line and common headers. */
static void write_head(ql_conn_t *c, int status, const char *ctype, const char *extra,
                       int64_t len) {
    ql_srv_t *s = c->srv;
    ql__http_update_date(s);
    ql_proto_buf_t *o = &c->out;
    int minor = c->http_minor == 0 ? 0 : 1;
    appendf(o, "HTTP/1.%d %d %s\r\nDate: %s\r\nServer: quill\r\n", minor, status,
            reason_phrase(status), s->date);
    if (ctype) appendf(o, "Content-Type: %s\r\n", ctype);
    if (len >= 0) appendf(o, "Content-Length: %lld\r\n", (long long)len);
    if (c->cors[0]) append(o, c->cors, strlen(c->cors));
    if (extra) append(o, extra, strlen(extra));
    if (!c->keep_alive)
        append(o, "Connection: close\r\n", 19);
    else if (minor == 0)
        append(o, "Connection: keep-alive\r\n", 24);
    append(o, "\r\n", 2);
    c->started = 1;
    if (status >= 100 && status < 600) s->metrics.http_by_class[status / 100]++;
}

static void schedule_resume(ql_conn_t *c);
static void read_start(ql_conn_t *c);

/* The exchange is answered: next request, or close. */
static void exchange_end(ql_conn_t *c) {
    c->req = NULL;
    c->started = 0;
    c->chunked = 0;
    c->streaming = 0;
    c->cors[0] = '\0';
    c->phase = PH_IDLE;
    c->t_idle_ns = ql_time_ns();
    free(c->body);
    c->body = NULL;
    c->body_len = c->body_cap = 0;
    ql_srv_t *s = c->srv;
    /* draining: requests already read (pipelined) are still answered (with 503 where they need
     * the engine), then the connection closes */
    int pending = c->in_len > c->parsed;
    if (!c->keep_alive || c->eof || (s->state >= QL_SRV_DRAINING && !pending)) {
        c->no_more = 1;
        conn_finish(c);
        return;
    }
    schedule_resume(c);
}

void ql__http_reply(ql_conn_t *c, int status, const char *ctype, const char *extra,
                    const char *body, size_t len) {
    if (c->closing) return;
    QL_ASSERT(!c->started);
    write_head(c, status, ctype, extra, (int64_t)len);
    if (len) append(&c->out, body, len);
    exchange_end(c);
    ql__http_flush(c);
}

void ql__http_reply_error(ql_conn_t *c, const ql_proto_error_t *e, const char *extra) {
    ql_proto_buf_t b;
    ql_proto_buf_init(&b);
    if (ql_proto_error_json(e, &b) != 0) {
        ql_proto_buf_free(&b);
        ql__http_reply(c, 500, "text/plain", NULL, "out of memory\n", 14);
        return;
    }
    ql__http_reply(c, e->status, "application/json", extra, b.data, b.len);
    ql_proto_buf_free(&b);
}

void ql__http_stream_start(ql_conn_t *c, const char *ctype) {
    if (c->closing) return;
    QL_ASSERT(!c->started);
    const char *extra = "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n";
    c->streaming = 1;
    if (c->http_minor == 0) {
        /* HTTP/1.0 has no chunked coding: the body ends when the connection does */
        c->keep_alive = 0;
        c->stream_close = 1;
        write_head(c, 200, ctype, extra, -1);
    } else {
        char hdr[128];
        snprintf(hdr, sizeof hdr, "%sTransfer-Encoding: chunked\r\n", extra);
        c->chunked = 1;
        write_head(c, 200, ctype, hdr, -1);
    }
}

void ql__http_stream_send(ql_conn_t *c, const char *data, size_t len) {
    if (c->closing || len == 0) return;
    if (c->chunked) {
        appendf(&c->out, "%zx\r\n", len);
        append(&c->out, data, len);
        append(&c->out, "\r\n", 2);
    } else {
        append(&c->out, data, len);
    }
}

void ql__http_stream_end(ql_conn_t *c) {
    if (c->closing) return;
    if (c->chunked) append(&c->out, "0\r\n\r\n", 5);
    exchange_end(c);
    ql__http_flush(c);
}

/* An error the HTTP layer answers itself (framing, limits, auth, routing); closes the
 * connection when `close` or when the body was not read. */
static void reply_plain_error(ql_conn_t *c, int status, const char *type, const char *code,
                              int close, const char *fmt, ...) QL_PRINTF(6, 7);
static void reply_plain_error(ql_conn_t *c, int status, const char *type, const char *code,
                              int close, const char *fmt, ...) {
    ql_proto_error_t e;
    char msg[QL_PROTO_ERROR_MESSAGE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ql_proto_error_set(&e, status, type, code, NULL, "%s", msg);
    if (close) c->keep_alive = 0;
    ql__http_reply_error(c, &e, NULL);
}

/* ---- the header block, checked strictly ---- */

/* RFC 9110 tchar. */
static int is_tchar(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return 1;
    if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') return 1;
    return ch != 0 && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* field-vchar / SP / HTAB, obs-text allowed (RFC 9110 5.5). */
static int is_value_char(unsigned char ch) { return ch == '\t' || (ch >= 0x20 && ch != 0x7f); }

/* What the server reads from the header block. */
typedef struct head_s {
    const char *target;
    size_t target_len;
    int n_fields;
    int n_host;
    const char *authz;
    size_t authz_len;
    int n_authz;
    const char *origin;
    size_t origin_len;
    const char *expect;
    size_t expect_len;
    int has_upgrade;
    int has_acrm; /* Access-Control-Request-Method: a CORS preflight */
} head_t;

static int name_is(const char *p, size_t n, const char *lit) {
    size_t l = strlen(lit);
    return n == l && strncasecmp(p, lit, l) == 0;
}

/* Checks p[0, n) (the whole header block, ending with CRLF CRLF, optionally preceded by empty
 * lines) and fills h. @return 0, or the status to refuse the request with: 400 (malformed),
 * 431 (request target over --max-request-line-bytes, more than --max-headers fields), 505
 * (a version other than HTTP/1.0 and HTTP/1.1). *why names the fault. */
static int parse_head(const ql_config_t *cfg, const char *p, size_t n, head_t *h,
                      const char **why) {
    memset(h, 0, sizeof *h);
    size_t i = 0;
    while (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n') i += 2; /* RFC 9112 2.2 */
    /* request-line = method SP request-target SP HTTP-version CRLF */
    size_t m0 = i;
    while (i < n && is_tchar((unsigned char)p[i])) i++;
    if (i == m0 || i >= n || p[i] != ' ') return *why = "malformed request line", 400;
    i++;
    size_t t0 = i;
    while (i < n && (unsigned char)p[i] > 0x20 && p[i] != 0x7f) i++;
    if (i == t0 || i >= n || p[i] != ' ') return *why = "malformed request target", 400;
    h->target = p + t0;
    h->target_len = i - t0;
    if (h->target_len > cfg->max_request_line_bytes)
        return *why = "request target too long (--max-request-line-bytes)", 431;
    i++;
    if (n - i < 10 || memcmp(p + i, "HTTP/1.", 7) != 0 || (p[i + 7] != '0' && p[i + 7] != '1') ||
        p[i + 8] != '\r' || p[i + 9] != '\n') {
        if (n - i >= 5 && memcmp(p + i, "HTTP/", 5) == 0)
            return *why = "only HTTP/1.0 and HTTP/1.1 are served", 505;
        return *why = "malformed HTTP version", 400;
    }
    i += 10;
    /* field-line = field-name ":" OWS field-value OWS CRLF; the block ends with CRLF */
    for (;;) {
        if (i + 1 < n && p[i] == '\r' && p[i + 1] == '\n') {
            i += 2;
            break;
        }
        if (i >= n) return *why = "header block ends early", 400;
        if (p[i] == ' ' || p[i] == '\t') return *why = "obsolete line folding", 400;
        size_t f0 = i;
        while (i < n && is_tchar((unsigned char)p[i])) i++;
        if (i == f0 || i >= n || p[i] != ':') return *why = "malformed header field name", 400;
        size_t f1 = i++;
        while (i < n && (p[i] == ' ' || p[i] == '\t')) i++;
        size_t v0 = i;
        while (i < n && p[i] != '\r' && p[i] != '\n') {
            if (!is_value_char((unsigned char)p[i]))
                return *why = "control byte in a header value", 400;
            i++;
        }
        if (i + 1 >= n || p[i] != '\r' || p[i + 1] != '\n')
            return *why = "bare CR or LF in the header block", 400;
        size_t v1 = i;
        while (v1 > v0 && (p[v1 - 1] == ' ' || p[v1 - 1] == '\t')) v1--;
        i += 2;
        if (++h->n_fields > cfg->max_headers)
            return *why = "too many header fields (--max-headers)", 431;
        const char *name = p + f0, *val = p + v0;
        size_t nl = f1 - f0, vl = v1 - v0;
        if (name_is(name, nl, "host"))
            h->n_host++;
        else if (name_is(name, nl, "authorization")) {
            h->n_authz++;
            h->authz = val;
            h->authz_len = vl;
        } else if (name_is(name, nl, "origin")) {
            h->origin = val;
            h->origin_len = vl;
        } else if (name_is(name, nl, "expect")) {
            h->expect = val;
            h->expect_len = vl;
        } else if (name_is(name, nl, "upgrade")) {
            h->has_upgrade = 1;
        } else if (name_is(name, nl, "access-control-request-method")) {
            h->has_acrm = 1;
        }
    }
    if (i != n)
        return *why = "bytes after the header block", 400; /* cannot happen: llhttp ends it */
    return 0;
}

/* ---- llhttp callbacks ---- */

static int cb_message_begin(llhttp_t *p) {
    ql_conn_t *c = p->data;
    c->phase = PH_HEADERS;
    c->t_begin_ns = ql_time_ns();
    c->fail_status = 0;
    c->fail_msg = NULL;
    c->crlf_need = 0;
    c->chunk_left = 0;
    c->route = QL_ROUTE_NONE;
    c->skip_complete = 0;
    c->pause = PAUSE_BEGIN;
    return HPE_PAUSED; /* conn_process records where the block starts */
}

static int cb_headers_complete(llhttp_t *p) {
    ql_conn_t *c = p->data;
    c->phase = PH_BODY;
    c->pause = PAUSE_HEADERS;
    return HPE_PAUSED; /* conn_process checks the block */
}

/* Checks the CRLF after a chunk's data in the bytes [q, end) llhttp has not parsed yet. */
static int check_chunk_crlf(ql_conn_t *c, const char *q, const char *end) {
    while (c->crlf_need > 0 && q < end) {
        char want = c->crlf_need == 2 ? '\r' : '\n';
        if (*q != want) return -1;
        c->crlf_need--;
        q++;
    }
    return 0;
}

static int cb_chunk_header(llhttp_t *p) {
    ql_conn_t *c = p->data;
    c->chunk_left = p->content_length;
    return 0;
}

/* Header fields reach this callback only after the header block, i.e. as chunked trailers.
 * NOTE(trailers): trailer fields are refused: llhttp 8 parses them with its lenient line rules,
 * and no OpenAI client sends any. */
static int cb_header_field(llhttp_t *p, const char *at, size_t len) {
    ql_conn_t *c = p->data;
    (void)at;
    (void)len;
    if (c->phase != PH_BODY) return 0;
    c->fail_status = 400;
    c->fail_msg = "trailer fields after a chunked body are not accepted";
    return HPE_USER;
}

static int cb_body(llhttp_t *p, const char *at, size_t len) {
    ql_conn_t *c = p->data;
    uint64_t max = c->srv->cfg->max_request_bytes;
    if ((uint64_t)c->body_len + len > max) {
        c->fail_status = 413;
        return HPE_USER;
    }
    if (c->body_len + len + 1 > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 4096;
        while (cap < c->body_len + len + 1) cap *= 2;
        if ((uint64_t)cap > max + 1) cap = (size_t)max + 1;
        char *nb = realloc(c->body, cap);
        if (!nb) {
            c->fail_status = 500;
            return HPE_USER;
        }
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    if (p->flags & F_CHUNKED) {
        c->chunk_left = c->chunk_left >= len ? c->chunk_left - len : 0;
        if (c->chunk_left == 0) {
            c->crlf_need = 2;
            if (check_chunk_crlf(c, at + len, c->exec_end) != 0) {
                c->fail_status = 400;
                c->fail_msg = "chunk data not followed by CRLF";
                return HPE_USER;
            }
        }
    }
    return 0;
}

static int cb_message_complete(llhttp_t *p) {
    ql_conn_t *c = p->data;
    if (c->crlf_need) { /* cannot happen: llhttp completes after the final CRLF */
        c->fail_status = 400;
        c->fail_msg = "malformed chunked body";
        return HPE_USER;
    }
    c->pause = PAUSE_COMPLETE;
    return HPE_PAUSED;
}

static const llhttp_settings_t *parser_settings(void) {
    static llhttp_settings_t st;
    static int init;
    if (!init) {
        llhttp_settings_init(&st);
        st.on_message_begin = cb_message_begin;
        st.on_headers_complete = cb_headers_complete;
        st.on_chunk_header = cb_chunk_header;
        st.on_header_field = cb_header_field;
        st.on_body = cb_body;
        st.on_message_complete = cb_message_complete;
        init = 1;
    }
    return &st;
}

/* ---- request handling ---- */

/* The headers are in: check, route, authorise; refuse early what can be refused. Returns 0 to
 * go on reading the body, or 1 when the request was answered (the connection closes after). */
static int on_head(ql_conn_t *c, const char *block, size_t n) {
    ql_srv_t *s = c->srv;
    const ql_config_t *cfg = s->cfg;
    llhttp_t *p = &c->parser;
    c->t_headers_ns = ql_time_ns();
    c->http_minor = p->http_minor;
    c->method = p->method;
    c->keep_alive = llhttp_should_keep_alive(p);
    head_t h;
    const char *why = NULL;
    int st = 0;
    if (n > cfg->max_header_bytes)
        st = 431, why = "request line and headers too large (--max-header-bytes)";
    else
        st = parse_head(cfg, block, n, &h, &why);
    if (st) {
        reply_plain_error(c, st, "invalid_request_error", NULL, 1, "%s", why);
        return 1;
    }
    if (p->http_major != 1) {
        reply_plain_error(c, 505, "invalid_request_error", NULL, 1,
                          "only HTTP/1.0 and HTTP/1.1 are served");
        return 1;
    }
    if (p->http_minor == 1 && h.n_host != 1) {
        reply_plain_error(c, 400, "invalid_request_error", NULL, 1,
                          "an HTTP/1.1 request needs exactly one Host header (RFC 9112 3.2)");
        return 1;
    }
    if ((p->flags & F_TRANSFER_ENCODING) && p->http_minor == 0) {
        reply_plain_error(c, 400, "invalid_request_error", NULL, 1,
                          "Transfer-Encoding in an HTTP/1.0 request (RFC 9112 6.1)");
        return 1;
    }
    if (h.n_authz > 1) {
        reply_plain_error(c, 400, "invalid_request_error", NULL, 1,
                          "more than one Authorization header");
        return 1;
    }
    /* NOTE(upgrade): quill speaks HTTP/1.1 only; a request asking to switch protocols is
     * answered in HTTP/1.1 and the connection closed, so nothing after it is parsed as
     * something else. */
    if (h.has_upgrade || p->upgrade) c->keep_alive = 0;

    int has_body =
        (p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);

    /* CORS: the allowed origin's headers go on every response of this exchange */
    c->cors[0] = '\0';
    int cors_ok = 0;
    if (h.origin) cors_ok = ql__route_cors(cfg, h.origin, h.origin_len, c->cors, sizeof c->cors);

    ql_target_t t;
    if (ql__route_target(h.target, h.target_len, &t) != 0) {
        reply_plain_error(c, 400, "invalid_request_error", NULL, 1, "malformed request target");
        return 1;
    }
    ql_route_t route = t.too_long ? QL_ROUTE_NONE : ql__route_find(t.path);
    c->route = route;

    /* a CORS preflight: no credentials are sent with it, so it is answered before auth */
    if (c->method == HTTP_OPTIONS && h.origin && h.has_acrm) {
        if (!cors_ok) {
            reply_plain_error(c, 403, "invalid_request_error", NULL, has_body,
                              "origin not allowed by --cors-origins");
            return 1;
        }
        char extra[256];
        snprintf(extra, sizeof extra,
                 "Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
                 "Access-Control-Allow-Headers: Authorization, Content-Type, X-Request-Id\r\n"
                 "Access-Control-Max-Age: 600\r\n");
        if (has_body) c->keep_alive = 0;
        ql__http_reply(c, 204, NULL, extra, NULL, 0);
        return 1;
    }

    /* deny by default: only /health and /ready are open, on the canonical path */
    if (!ql__route_open(route)) {
        int sent = 0;
        if (!ql__route_auth(cfg, h.authz, h.authz_len, &sent)) {
            ql_proto_error_t e;
            ql_proto_error_auth(&e, sent);
            if (has_body) c->keep_alive = 0;
            ql__http_reply_error(c, &e, "WWW-Authenticate: Bearer\r\n");
            return 1;
        }
    }
    const char *method = llhttp_method_name((llhttp_method_t)c->method);
    if (route == QL_ROUTE_NONE) {
        ql_proto_error_t e;
        char shown[96];
        snprintf(shown, sizeof shown, "%.*s", (int)QL_MIN(h.target_len, sizeof shown - 1),
                 h.target);
        ql_proto_error_route_not_found(&e, method, shown);
        if (has_body) c->keep_alive = 0;
        ql__http_reply_error(c, &e, NULL);
        return 1;
    }
    if (strcmp(method, ql__route_method(route)) != 0) {
        ql_proto_error_t e;
        ql_proto_error_method_not_allowed(&e, method, t.path);
        char allow[64];
        snprintf(allow, sizeof allow, "Allow: %s\r\n", ql__route_method(route));
        if (has_body) c->keep_alive = 0;
        ql__http_reply_error(c, &e, allow);
        return 1;
    }
    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > cfg->max_request_bytes) {
        ql_proto_error_t e;
        ql_proto_error_too_large(&e, cfg->max_request_bytes);
        c->keep_alive = 0;
        ql__http_reply_error(c, &e, NULL);
        return 1;
    }
    if (h.expect) {
        if (h.expect_len == 12 && strncasecmp(h.expect, "100-continue", 12) == 0) {
            if (has_body && c->http_minor == 1) {
                /* an interim response: the exchange goes on */
                append(&c->out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
                ql__http_flush(c);
                if (c->closing) return 1;
            }
        } else {
            reply_plain_error(c, 417, "invalid_request_error", NULL, 1, "unsupported Expect value");
            return 1;
        }
    }
    if (s->state != QL_SRV_READY && route != QL_ROUTE_HEALTH && route != QL_ROUTE_READY &&
        route != QL_ROUTE_METRICS) {
        ql_proto_error_t e;
        ql_proto_error_unavailable(&e, s->state == QL_SRV_LOADING ? "the model is still loading"
                                       : s->state == QL_SRV_FAULTED
                                           ? "the backend failed"
                                           : "the server is shutting down");
        c->keep_alive = c->keep_alive && s->state == QL_SRV_LOADING && !has_body;
        ql__http_reply_error(c, &e, s->state == QL_SRV_LOADING ? "Retry-After: 5\r\n" : NULL);
        return 1;
    }
    return 0;
}

static void conn_fail(ql_conn_t *c, int status, const char *why) {
    QL_LOG_DEBUG("conn %llu: %d %s", (unsigned long long)c->id, status, why);
    c->no_more = 1;
    if (c->started || c->req) { /* cannot happen: framing errors come before any answer */
        conn_close(c, why);
        return;
    }
    const char *type = status >= 500 ? "server_error" : "invalid_request_error";
    if (status == 413) {
        ql_proto_error_t e;
        ql_proto_error_too_large(&e, c->srv->cfg->max_request_bytes);
        c->keep_alive = 0;
        ql__http_reply_error(c, &e, NULL);
        return;
    }
    reply_plain_error(c, status, type, NULL, 1, "%s", why);
}

/* Whether the two bytes parsed last are CRLF: what must end a chunked body (llhttp 8 takes a
 * bare LF there). */
static int parsed_ends_crlf(const ql_conn_t *c) {
    char b[2];
    if (c->parsed >= 2)
        memcpy(b, c->in + c->parsed - 2, 2);
    else if (c->parsed == 1)
        b[0] = c->tail[1], b[1] = c->in[0];
    else
        memcpy(b, c->tail, 2);
    return b[0] == '\r' && b[1] == '\n';
}

/* Parses what `in` holds, as far as the connection's state allows. Never called from inside
 * api.c: an exchange that ends asks for it through schedule_resume. */
static void conn_process(ql_conn_t *c) {
    ql_srv_t *s = c->srv;
    /* NOTE(kick): after the headers-complete pause llhttp must run once more, with no new bytes,
     * to complete a body-less request */
    int kick = 0;
    while (!c->closing && !c->no_more && c->phase != PH_HANDLING && c->phase != PH_LINGER &&
           (c->parsed < c->in_len || kick)) {
        kick = 0;
        const char *start = c->in + c->parsed, *end = c->in + c->in_len;
        if (c->crlf_need && check_chunk_crlf(c, start, end) != 0) {
            conn_fail(c, 400, "chunk data not followed by CRLF");
            break;
        }
        c->exec_end = end;
        c->pause = PAUSE_NONE;
        llhttp_errno_t e = llhttp_execute(&c->parser, start, (size_t)(end - start));
        size_t used = e == HPE_OK ? (size_t)(end - start)
                                  : (size_t)(llhttp_get_error_pos(&c->parser) - start);
        c->parsed += used;
        if (e == HPE_OK) break;
        if (e == HPE_PAUSED_UPGRADE) { /* after an Upgrade request: the exchange closes */
            c->no_more = 1;
            break;
        }
        if (e != HPE_PAUSED) {
            if (e == HPE_USER && c->fail_status) {
                conn_fail(c, c->fail_status, c->fail_msg ? c->fail_msg : "request refused");
            } else {
                const char *why = llhttp_get_error_reason(&c->parser);
                char msg[160];
                snprintf(msg, sizeof msg, "malformed request: %s",
                         why && *why ? why : llhttp_errno_name(e));
                conn_fail(c, 400, msg);
            }
            break;
        }
        llhttp_resume(&c->parser);
        if (c->pause == PAUSE_BEGIN) {
            c->msg_start = c->parsed;
        } else if (c->pause == PAUSE_HEADERS) {
            kick = 1;
            if (on_head(c, c->in + c->msg_start, c->parsed - c->msg_start)) {
                c->skip_complete = 1; /* answered; a body-less request may keep the connection */
                if (!c->keep_alive) c->no_more = 1;
            }
        } else if (c->pause == PAUSE_COMPLETE) {
            if ((c->parser.flags & F_CHUNKED) && !parsed_ends_crlf(c)) {
                conn_fail(c, 400, "chunked body not ended by CRLF");
                break;
            }
            if (c->skip_complete) {
                c->skip_complete = 0;
                continue;
            }
            c->phase = PH_HANDLING;
            ql_exchange_t x = {c->route, c->body ? c->body : "", c->body_len, c->t_begin_ns};
            ql__api_handle(s, c, &x);
        }
    }
    if (c->closing) return;
    /* drop what is parsed (keeping a header block that is still arriving) */
    size_t keep_from = c->parsed;
    if (c->phase == PH_HEADERS && c->msg_start < keep_from) keep_from = c->msg_start;
    if (keep_from > 0) {
        if (keep_from >= 2)
            memcpy(c->tail, c->in + keep_from - 2, 2);
        else
            c->tail[0] = c->tail[1], c->tail[1] = c->in[0];
        memmove(c->in, c->in + keep_from, c->in_len - keep_from);
        c->in_len -= keep_from;
        c->parsed -= keep_from;
        c->msg_start -= QL_MIN(c->msg_start, keep_from);
    }
    if (c->phase == PH_HEADERS && c->in_len - c->msg_start > s->cfg->max_header_bytes) {
        c->no_more = 1;
        reply_plain_error(c, 431, "invalid_request_error", NULL, 1,
                          "request line and headers exceed %llu bytes (--max-header-bytes)",
                          (unsigned long long)s->cfg->max_header_bytes);
    }
}

static void on_resume_idle(uv_idle_t *h) {
    ql_srv_t *s = h->data;
    while (s->resume_head) {
        ql_conn_t *c = s->resume_head;
        s->resume_head = c->resume_next;
        c->resume_next = NULL;
        c->in_resume = 0;
        if (c->closing) continue;
        if (c->read_paused && !c->eof) {
            c->read_paused = 0;
            read_start(c);
        }
        conn_process(c);
    }
    uv_idle_stop(h);
}

static void schedule_resume(ql_conn_t *c) {
    if (c->in_resume || c->closing) return;
    c->in_resume = 1;
    c->resume_next = c->srv->resume_head;
    c->srv->resume_head = c;
    uv_idle_start(&c->srv->resume_idle, on_resume_idle);
}

/* ---- reading ---- */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    (void)suggested;
    ql_conn_t *c = h->data;
    *buf = uv_buf_init(c->srv->read_buf, QL_READ_BUF_BYTES);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
    ql_conn_t *c = st->data;
    if (c->closing) return;
    if (nread == 0) return;
    if (nread < 0) {
        c->eof = 1;
        uv_read_stop(st);
        if (nread != UV_EOF) {
            conn_close(c, uv_strerror((int)nread));
            return;
        }
        if (c->phase == PH_IDLE && (c->n_writes > 0 || c->out.len > 0)) {
            c->no_more = 1;
            conn_finish(c); /* finish writing the last response, then close */
            return;
        }
        /* a request in flight is cancelled: the client went away */
        conn_close(c, c->req ? "client went away" : "end of input");
        return;
    }
    if (c->phase == PH_LINGER) {
        c->linger_bytes += (size_t)nread;
        if (c->linger_bytes > LINGER_BYTES_MAX) conn_close(c, "linger limit");
        return;
    }
    if (c->no_more) return; /* after a refused request nothing more is parsed */
    size_t need = c->in_len + (size_t)nread;
    if (need > c->in_cap) {
        size_t cap = c->in_cap ? c->in_cap : 4096;
        while (cap < need) cap *= 2;
        c->in = ql_xrealloc(c->in, cap);
        c->in_cap = cap;
    }
    memcpy(c->in + c->in_len, buf->base, (size_t)nread);
    c->in_len += (size_t)nread;
    if (c->phase == PH_HANDLING) {
        /* pipelined input waits for the exchange to end; past a bound, stop reading */
        if (c->in_len > c->srv->cfg->max_header_bytes + QL_READ_BUF_BYTES) {
            uv_read_stop(st);
            c->read_paused = 1;
        }
        return;
    }
    conn_process(c);
}

static void read_start(ql_conn_t *c) {
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc != 0) conn_close(c, uv_strerror(rc));
}

/* ---- accepting ---- */

static void on_connection(uv_stream_t *server, int status) {
    ql_srv_t *s = server->data;
    if (status < 0) {
        QL_LOG_WARN("accept: %s", uv_strerror(status));
        return;
    }
    ql_conn_t *c = ql_xcalloc(1, sizeof *c);
    c->srv = s;
    c->id = ++s->next_conn_id;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        c->closing = 1;
        uv_close((uv_handle_t *)&c->tcp, on_closed);
        return;
    }
    list_add(s, c);
    s->metrics.conns_total++;
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, parser_settings());
    c->parser.data = c;
    c->keep_alive = 1;
    c->http_minor = 1;
    c->t_idle_ns = ql_time_ns();
    if (s->n_conns > s->cfg->max_connections) {
        s->metrics.conns_refused++;
        c->no_more = 1;
        reply_plain_error(c, 503, "server_error", "service_unavailable", 1,
                          "too many open connections (--max-connections %d)",
                          s->cfg->max_connections);
        return;
    }
    read_start(c);
}

int ql__http_listen(ql_srv_t *s, char *err, size_t errlen) {
    const char *host = s->cfg->host;
    if (strcmp(host, "localhost") == 0) host = "127.0.0.1";
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    int rc;
    if (strchr(host, ':'))
        rc = uv_ip6_addr(host, s->cfg->port, (struct sockaddr_in6 *)&ss);
    else
        rc = uv_ip4_addr(host, s->cfg->port, (struct sockaddr_in *)&ss);
    if (rc != 0) {
        snprintf(err, errlen, "--host %s: not an IPv4 or IPv6 address", s->cfg->host);
        return QL_EIO;
    }
    uv_tcp_init(s->loop, &s->listener);
    s->listener.data = s;
    s->listening = 1;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0) rc = uv_listen((uv_stream_t *)&s->listener, 511, on_connection);
    if (rc != 0) {
        snprintf(err, errlen, "cannot listen on %s:%d: %s", s->cfg->host, s->cfg->port,
                 uv_strerror(rc));
        return QL_EIO;
    }
    struct sockaddr_storage bound;
    int blen = (int)sizeof bound;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&bound, &blen);
    s->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return 0;
}

void ql__http_stop_listening(ql_srv_t *s) {
    if (!s->listening) return;
    s->listening = 0;
    uv_close((uv_handle_t *)&s->listener, NULL);
}

void ql__http_close_idle(ql_srv_t *s) {
    for (ql_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        if (c->phase == PH_IDLE && !c->req && c->in_len == c->parsed && !c->in_resume) {
            c->no_more = 1;
            conn_finish(c);
        }
    }
}

void ql__http_close_all(ql_srv_t *s) {
    while (s->conns) conn_close(s->conns, "server stopping");
}

static uint64_t secs_ns(int s) { return (uint64_t)s * 1000000000ull; }

void ql__http_tick(ql_srv_t *s, uint64_t now) {
    const ql_config_t *cfg = s->cfg;
    for (ql_conn_t *c = s->conns, *next; c; c = next) {
        next = c->next;
        int writing = c->n_writes > 0;
        if (writing && now - c->t_write_ns > secs_ns(cfg->idle_timeout_s)) {
            s->metrics.timeouts++;
            conn_close(c, "no write progress for --idle-timeout");
            continue;
        }
        switch (c->phase) {
        case PH_IDLE:
            if (!writing && !c->close_after && now - c->t_idle_ns > secs_ns(cfg->idle_timeout_s)) {
                s->metrics.timeouts++;
                conn_close(c, "idle");
            }
            break;
        case PH_HEADERS:
            if (now - c->t_begin_ns > secs_ns(cfg->header_timeout_s)) {
                s->metrics.timeouts++;
                c->no_more = 1;
                reply_plain_error(
                    c, 408, "invalid_request_error", "timeout", 1,
                    "the request's headers did not arrive within %d s (--header-timeout)",
                    cfg->header_timeout_s);
            }
            break;
        case PH_BODY:
            if (now - c->t_headers_ns > secs_ns(cfg->body_timeout_s)) {
                s->metrics.timeouts++;
                c->no_more = 1;
                reply_plain_error(c, 408, "invalid_request_error", "timeout", 1,
                                  "the request's body did not arrive within %d s (--body-timeout)",
                                  cfg->body_timeout_s);
            }
            break;
        case PH_HANDLING:
            if (cfg->request_timeout_s > 0 && c->req && !c->timed_out &&
                now - c->t_begin_ns > secs_ns(cfg->request_timeout_s)) {
                c->timed_out = 1;
                s->metrics.timeouts++;
                ql__api_timeout(c->req);
            }
            break;
        case PH_LINGER:
            if (now > c->linger_deadline_ns) conn_close(c, "linger done");
            break;
        }
    }
}
