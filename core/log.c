/*
 * core/log.c — leveled logging to stderr (or a sink set by tests). One line per call,
 * written with a single fputs under a mutex so concurrent lines never interleave.
 */
#include "core/core.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static _Atomic int g_level = QL_LOG_LEVEL_INFO;
/* NOTE(log-globals): the log threshold and sink are process-wide by nature (stderr is);
 * they are the only mutable globals in quill besides the abort hook. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static ql_log_sink_fn g_sink;
static void *g_sink_ud;

static const char *const k_names[] = {"error", "warn", "info", "debug"};

void ql_log_set_level(ql_log_level_t level) {
    if ((int)level < QL_LOG_LEVEL_ERROR) level = QL_LOG_LEVEL_ERROR;
    if ((int)level > QL_LOG_LEVEL_DEBUG) level = QL_LOG_LEVEL_DEBUG;
    atomic_store(&g_level, (int)level);
}

ql_log_level_t ql_log_get_level(void) { return (ql_log_level_t)atomic_load(&g_level); }

const char *ql_log_level_name(ql_log_level_t level) {
    if ((int)level < 0 || (int)level >= (int)QL_ARRAY_LEN(k_names)) return "?";
    return k_names[level];
}

int ql_log_level_parse(const char *s, ql_log_level_t *out) {
    if (!s || !out) return QL_EINVAL;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_names); i++) {
        if (strcasecmp(s, k_names[i]) == 0) {
            *out = (ql_log_level_t)i;
            return 0;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = QL_LOG_LEVEL_WARN;
        return 0;
    }
    return QL_EINVAL;
}

void ql_log_set_sink(ql_log_sink_fn fn, void *ud) {
    pthread_mutex_lock(&g_mu);
    g_sink = fn;
    g_sink_ud = ud;
    pthread_mutex_unlock(&g_mu);
}

void ql_log_vwrite(ql_log_level_t level, const char *module, const char *func,
                   const char *req_id, const char *fmt, va_list ap) {
    static const char *const upper[] = {"ERROR", "WARN ", "INFO ", "DEBUG"};
    char line[2048];
    size_t n = 0;

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int w = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s [%s] %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000L,
                     upper[(unsigned)level < 4 ? (unsigned)level : 0], module ? module : "?",
                     func ? func : "?");
    if (w > 0) n = QL_MIN((size_t)w, sizeof(line) - 1);
    if (req_id && n < sizeof(line) - 1) {
        w = snprintf(line + n, sizeof(line) - n, "[req %s] ", req_id);
        if (w > 0) n = QL_MIN(n + (size_t)w, sizeof(line) - 1);
    }
    if (n < sizeof(line) - 1) {
        w = vsnprintf(line + n, sizeof(line) - n, fmt, ap);
        if (w > 0) n = QL_MIN(n + (size_t)w, sizeof(line) - 1);
    }
    /* one line: strip trailing newlines a caller may have added */
    while (n > 0 && line[n - 1] == '\n') line[--n] = '\0';

    pthread_mutex_lock(&g_mu);
    if (g_sink) {
        g_sink(level, line, g_sink_ud);
    } else {
        line[n] = '\n';
        fwrite(line, 1, n + 1, stderr);
        fflush(stderr);
    }
    pthread_mutex_unlock(&g_mu);
}

void ql_log_write(ql_log_level_t level, const char *module, const char *func,
                  const char *req_id, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ql_log_vwrite(level, module, func, req_id, fmt, ap);
    va_end(ap);
}
