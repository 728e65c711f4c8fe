/*
 * bench/client.c — the HTTP/1.1 client of `quill bench`: one connection per request
 * (Connection: close), the response framed by llhttp (Content-Length, chunked or until EOF),
 * an event stream cut into `data:` payloads as the bytes arrive, each stamped with the time of
 * the read that brought it. Runs on the caller's libuv loop; never blocks it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "bench/bench-internal.h"

/* ---- the target URL ---- */

int ql__bench_parse_url(const char *url, ql__bench_target_t *t, char *err, size_t errlen) {
    memset(t, 0, sizeof(*t));
    if (!url || strncasecmp(url, "http://", 7) != 0) {
        ql_errf(err, errlen, "--base-url: '%s' is not an http:// URL (expected http://HOST[:PORT][/PREFIX])",
                url ? url : "");
        return QL_EINVAL;
    }
    const char *p = url + 7;
    const char *host = p, *host_end;
    if (*p == '[') {
        host = p + 1;
        host_end = strchr(host, ']');
        if (!host_end) {
            ql_errf(err, errlen, "--base-url: '%s': unterminated [IPv6] host", url);
            return QL_EINVAL;
        }
        p = host_end + 1;
    } else {
        while (*p && *p != ':' && *p != '/') p++;
        host_end = p;
    }
    size_t hn = (size_t)(host_end - host);
    if (hn == 0 || hn >= sizeof(t->host)) {
        ql_errf(err, errlen, "--base-url: '%s' has %s host", url, hn ? "too long a" : "no");
        return QL_EINVAL;
    }
    memcpy(t->host, host, hn);
    t->port = 80;
    if (*p == ':') {
        p++;
        char *end;
        long port = strtol(p, &end, 10);
        if (end == p || port < 1 || port > 65535 || (*end && *end != '/')) {
            ql_errf(err, errlen, "--base-url: '%s' has a bad port (expected 1..65535)", url);
            return QL_EINVAL;
        }
        t->port = (int)port;
        p = end;
    }
    size_t pn = strlen(p);
    while (pn > 0 && p[pn - 1] == '/') pn--;
    if (pn >= sizeof(t->prefix)) {
        ql_errf(err, errlen, "--base-url: '%s': the path is too long", url);
        return QL_EINVAL;
    }
    for (size_t i = 0; i < pn; i++) {
        if ((unsigned char)p[i] <= ' ' || p[i] == '?' || p[i] == '#' || (unsigned char)p[i] >= 0x7f) {
            ql_errf(err, errlen, "--base-url: '%s': the path may not hold spaces, '?', '#' or non-ASCII", url);
            return QL_EINVAL;
        }
    }
    memcpy(t->prefix, p, pn);
    int v6 = strchr(t->host, ':') != NULL;
    snprintf(t->host_header, sizeof(t->host_header), "%s%s%s:%d", v6 ? "[" : "", t->host, v6 ? "]" : "",
             t->port);
    return 0;
}

int ql__bench_resolve(uv_loop_t *loop, ql__bench_target_t *t, char *err, size_t errlen) {
    uv_getaddrinfo_t req;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[16];
    snprintf(port, sizeof(port), "%d", t->port);
    int rc = uv_getaddrinfo(loop, &req, NULL, t->host, port, &hints);
    if (rc != 0 || !req.addrinfo) {
        ql_errf(err, errlen, "cannot resolve '%s': %s", t->host, uv_strerror(rc ? rc : UV_EAI_NONAME));
        if (req.addrinfo) uv_freeaddrinfo(req.addrinfo);
        return QL_EIO;
    }
    memcpy(&t->addr, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    uv_freeaddrinfo(req.addrinfo);
    return 0;
}

/* ---- one exchange ---- */

static void on_close(uv_handle_t *h) {
    ql__bench_call_t *c = h->data;
    if (--c->n_open == 0) c->on_done(c);
}

static void finish(ql__bench_call_t *c, const char *fmt, ...) QL_PRINTF(2, 3);
static void finish(ql__bench_call_t *c, const char *fmt, ...) {
    if (c->closing) return;
    c->closing = 1;
    c->t_end_ns = ql_time_ns();
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        ql_verrf(c->err, sizeof(c->err), fmt, ap);
        va_end(ap);
        c->failed = 1;
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_close);
    uv_close((uv_handle_t *)&c->tcp, on_close);
}

/* Cuts the buffered stream bytes into lines; each `data:` line is one payload. */
static void drain_stream(ql__bench_call_t *c) {
    size_t start = 0;
    for (;;) {
        char *nl = c->body.len > start ? memchr(c->body.data + start, '\n', c->body.len - start) : NULL;
        if (!nl) break;
        size_t end = (size_t)(nl - c->body.data), len = end - start;
        const char *line = c->body.data + start;
        if (len > 0 && line[len - 1] == '\r') len--;
        if (len >= 5 && memcmp(line, "data:", 5) == 0) {
            const char *d = line + 5;
            size_t dn = len - 5;
            if (dn > 0 && *d == ' ') d++, dn--;
            c->n_events++;
            if (dn == 6 && memcmp(d, "[DONE]", 6) == 0) c->saw_done = 1;
            else if (c->on_event && !c->closing) c->on_event(c, d, dn, c->t_read_ns);
        }
        start = end + 1;
    }
    if (start > 0) {
        memmove(c->body.data, c->body.data + start, c->body.len - start);
        c->body.len -= start;
        c->body.data[c->body.len] = '\0';
    }
}

/* NOTE(stream-detect): a 200 answer to a streamed request is read as an event stream whatever
 * its Content-Type says and however its body is cut into chunks or segments; a body that never
 * holds a `data:` line is reported by the caller (n_events stays 0, `head` shows its start). */
static int on_headers_complete(llhttp_t *p) {
    ql__bench_call_t *c = p->data;
    c->status = llhttp_get_status_code(p);
    c->is_stream = c->status == 200 && c->on_event != NULL;
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
    ql__bench_call_t *c = p->data;
    size_t room = sizeof(c->head) - 1 - c->n_head;
    size_t k = len < room ? len : room;
    memcpy(c->head + c->n_head, at, k);
    c->n_head += k;
    c->head[c->n_head] = '\0';
    if (ql_proto_buf_append(&c->body, at, len) != 0) return HPE_USER;
    if (c->is_stream) drain_stream(c);
    return 0;
}

static int on_message_complete(llhttp_t *p) {
    ql__bench_call_t *c = p->data;
    c->complete = 1;
    return HPE_PAUSED;
}

static const llhttp_settings_t k_settings = {
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
    (void)h;
    (void)hint;
    static const size_t k_read = 65536;
    buf->base = malloc(k_read);
    buf->len = buf->base ? k_read : 0;
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
    ql__bench_call_t *c = s->data;
    if (c->closing) {
        free(buf->base);
        return;
    }
    c->t_read_ns = ql_time_ns();
    if (n > 0) {
        llhttp_errno_t e = llhttp_execute(&c->parser, buf->base, (size_t)n);
        free(buf->base);
        if (e == HPE_PAUSED || c->complete) {
            if (c->is_stream) drain_stream(c);
            finish(c, NULL);
        } else if (e != HPE_OK) {
            finish(c, "bad HTTP response from %s: %s", c->target->host_header, llhttp_errno_name(e));
        }
        return;
    }
    free(buf->base);
    if (n == 0) return;
    if (n == UV_EOF) {
        llhttp_errno_t e = llhttp_finish(&c->parser);
        if (c->complete || e == HPE_PAUSED) finish(c, NULL);
        else if (c->status == 0) finish(c, "%s closed the connection before answering", c->target->host_header);
        else finish(c, "%s closed the connection mid-response (HTTP %d)", c->target->host_header, c->status);
        return;
    }
    finish(c, "read from %s: %s", c->target->host_header, uv_strerror((int)n));
}

static void on_write(uv_write_t *w, int status) {
    ql__bench_call_t *c = w->data;
    if (status < 0 && !c->closing) finish(c, "write to %s: %s", c->target->host_header, uv_strerror(status));
}

static void on_connect(uv_connect_t *req, int status) {
    ql__bench_call_t *c = req->data;
    if (c->closing) return;
    if (status < 0) {
        finish(c, "cannot connect to %s: %s", c->target->host_header, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_buf_t b = uv_buf_init(c->req.data, (unsigned)c->req.len);
    c->write.data = c;
    int rc = uv_write(&c->write, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    if (rc == 0) rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc < 0) finish(c, "write to %s: %s", c->target->host_header, uv_strerror(rc));
}

static void on_timeout(uv_timer_t *t) {
    ql__bench_call_t *c = t->data;
    finish(c, "no complete response from %s within %llu s (--request-timeout)", c->target->host_header,
           (unsigned long long)(c->target->timeout_ms / 1000));
}

int ql__bench_call_start(uv_loop_t *loop, ql__bench_call_t *c, const ql__bench_target_t *t,
                         const char *method, const char *path, const char *body, size_t body_len,
                         ql__bench_event_fn on_event, ql__bench_done_fn on_done, void *ud) {
    memset(c, 0, sizeof(*c));
    c->target = t;
    c->on_event = on_event;
    c->on_done = on_done;
    c->ud = ud;
    char head[1024];
    char auth[300] = "";
    if (t->api_key) snprintf(auth, sizeof(auth), "Authorization: Bearer %s\r\n", t->api_key);
    int hn = snprintf(head, sizeof(head),
                      "%s %s%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: quill-bench\r\nAccept: */*\r\n%s"
                      "Connection: close\r\n",
                      method, t->prefix, path, t->host_header, auth);
    if (hn < 0 || (size_t)hn >= sizeof(head)) return QL_EINVAL;
    int rc = ql_proto_buf_append(&c->req, head, (size_t)hn);
    if (!rc && body) {
        char cl[96];
        int cn = snprintf(cl, sizeof(cl), "Content-Type: application/json\r\nContent-Length: %zu\r\n", body_len);
        rc = ql_proto_buf_append(&c->req, cl, (size_t)cn);
    }
    if (!rc) rc = ql_proto_buf_append(&c->req, "\r\n", 2);
    if (!rc && body) rc = ql_proto_buf_append(&c->req, body, body_len);
    if (rc) {
        ql_proto_buf_free(&c->req);
        return rc;
    }
    llhttp_init(&c->parser, HTTP_RESPONSE, &k_settings);
    c->parser.data = c;
    if ((rc = uv_tcp_init(loop, &c->tcp)) != 0) {
        ql_proto_buf_free(&c->req);
        return rc;
    }
    c->tcp.data = c;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    c->n_open = 2;
    c->connect.data = c;
    rc = uv_tcp_connect(&c->connect, &c->tcp, (const struct sockaddr *)&t->addr, on_connect);
    if (rc < 0) {
        /* the callback contract: report through on_done like any other failure */
        finish(c, "cannot connect to %s: %s", t->host_header, uv_strerror(rc));
        return 0;
    }
    if (t->timeout_ms) uv_timer_start(&c->timer, on_timeout, t->timeout_ms, 0);
    return 0;
}

void ql__bench_call_free(ql__bench_call_t *c) {
    if (!c) return;
    ql_proto_buf_free(&c->req);
    ql_proto_buf_free(&c->body);
}
