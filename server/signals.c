/*
 * server/signals.c — the server's life after start-up: SIGTERM/SIGINT and draining, a backend
 * fault, the tick timer (timeouts, readiness), and the end of the loop.
 *
 * Drain (first SIGTERM or SIGINT): the listener closes (new connections are refused by the
 * kernel), idle keep-alive connections close, new requests on open connections get 503, the
 * engine stops accepting and lets what it holds finish (ql_engine_shutdown(e, 1)). When every
 * request has ended and every connection is closed, the loop ends and the process exits 0.
 * After --shutdown-timeout (or at a second signal) whatever still runs is aborted: the engine
 * ends each request with an error, which its client receives as a 503 body or an SSE error event
 * followed by [DONE]; five seconds later any connection still open is closed.
 *
 * Fault (the backend failed: api.c sees an engine error while ql_engine_healthy() is 0): the
 * engine has already failed every request in flight; the server stops accepting, answers
 * /ready with 503 (and pipelined requests already read with 503), closes connections as their
 * exchanges end, and exits 1.
 */
#define QL_LOG_MODULE "serve"
#include <signal.h>
#include <string.h>

#include "server/server-internal.h"

#define STOP_GRACE_NS (5ull * 1000000000ull)

static void close_handle(uv_handle_t *h) {
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Every request is over and every connection closed: close the loop's own handles so uv_run
 * returns. */
static void srv_end(ql_srv_t *s) {
    if (s->state != QL_SRV_STOPPING) s->state = QL_SRV_STOPPING;
    ql__http_stop_listening(s);
    ql__signals_close(s);
}

void ql__signals_close(ql_srv_t *s) {
    close_handle((uv_handle_t *)&s->tick);
    close_handle((uv_handle_t *)&s->sig_term);
    close_handle((uv_handle_t *)&s->sig_int);
    close_handle((uv_handle_t *)&s->outbox_async);
    close_handle((uv_handle_t *)&s->resume_idle);
}

static void begin_stop(ql_srv_t *s, uint64_t now) {
    if (!s->aborted) {
        s->aborted = 1;
        if (s->engine) ql_engine_shutdown(s->engine, 0);
        s->t_stop_deadline_ns = now + STOP_GRACE_NS;
    }
}

void ql__srv_drain(ql_srv_t *s, const char *why) {
    uint64_t now = ql_time_ns();
    switch (s->state) {
    case QL_SRV_LOADING:
        QL_LOG_INFO("%s while loading: stopping once the model is loaded", why);
        s->state = QL_SRV_STOPPING;
        ql__http_stop_listening(s);
        ql__http_close_all(s);
        return;
    case QL_SRV_READY:
        QL_LOG_INFO("%s: draining (no new requests; in-flight ones have %d s to finish)", why,
                    s->cfg->shutdown_timeout_s);
        s->state = QL_SRV_DRAINING;
        s->t_drain_deadline_ns = now + (uint64_t)s->cfg->shutdown_timeout_s * 1000000000ull;
        ql__http_stop_listening(s);
        ql__http_close_idle(s);
        if (s->engine) ql_engine_shutdown(s->engine, 1);
        return;
    case QL_SRV_DRAINING:
    case QL_SRV_FAULTED:
        QL_LOG_INFO("%s again: aborting what still runs", why);
        s->t_drain_deadline_ns = now;
        begin_stop(s, now);
        return;
    case QL_SRV_STOPPING: return;
    }
}

void ql__srv_fault(ql_srv_t *s, const char *why) {
    if (s->state == QL_SRV_FAULTED || s->state == QL_SRV_STOPPING) return;
    QL_LOG_ERROR("the backend failed (%s): failing in-flight requests, /ready is 503, exiting 1",
                 why);
    s->exit_code = 1;
    s->state = QL_SRV_FAULTED;
    uint64_t now = ql_time_ns();
    s->t_drain_deadline_ns = now;
    begin_stop(s, now);
    ql__http_stop_listening(s);
    ql__http_close_idle(s);
}

static void on_signal(uv_signal_t *h, int signum) {
    ql__srv_drain(h->data, signum == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_tick(uv_timer_t *t) {
    ql_srv_t *s = t->data;
    uint64_t now = ql_time_ns();
    ql__http_update_date(s);
    ql__http_tick(s, now);
    if (s->engine) {
        ql_engine_counters_t k;
        ql_engine_get_counters(s->engine, &k);
        if (k.n_steps != s->last_steps || k.n_running + k.n_waiting == 0) {
            s->last_steps = k.n_steps;
            s->t_last_progress_ns = now;
        }
        if (s->state == QL_SRV_READY && !k.healthy) ql__srv_fault(s, "engine reports unhealthy");
    }
    switch (s->state) {
    case QL_SRV_DRAINING:
    case QL_SRV_FAULTED:
        if (now >= s->t_drain_deadline_ns && !s->aborted) {
            QL_LOG_WARN("--shutdown-timeout passed with %d request(s) in flight: aborting them",
                        s->n_reqs);
            begin_stop(s, now);
        }
        if (s->aborted && now >= s->t_stop_deadline_ns && s->n_conns > 0) {
            QL_LOG_WARN("closing %d connection(s) that are still open", s->n_conns);
            ql__http_close_all(s);
        }
        if (s->n_reqs == 0 && s->n_conns == 0) srv_end(s);
        break;
    case QL_SRV_STOPPING:
        if (s->n_reqs == 0) {
            ql__http_close_all(s);
            srv_end(s);
        }
        break;
    default: break;
    }
}

int ql__signals_init(ql_srv_t *s) {
    if (uv_timer_init(s->loop, &s->tick) != 0) return QL_EIO;
    s->tick.data = s;
    if (uv_timer_start(&s->tick, on_tick, QL_TICK_MS, QL_TICK_MS) != 0) return QL_EIO;
    if (uv_signal_init(s->loop, &s->sig_term) != 0 || uv_signal_init(s->loop, &s->sig_int) != 0)
        return QL_EIO;
    s->sig_term.data = s;
    s->sig_int.data = s;
    if (uv_signal_start(&s->sig_term, on_signal, SIGTERM) != 0 ||
        uv_signal_start(&s->sig_int, on_signal, SIGINT) != 0)
        return QL_EIO;
    return 0;
}
