/*
 * scheduler/stop.c — stop strings over streamed text (see stop.h). Pending text is short (the
 * longest stop string plus one delta), so matching is a plain scan.
 */
#define QL_LOG_MODULE "stop"
#include "scheduler/stop.h"

#include <stdlib.h>
#include <string.h>

const char *ql_finish_reason_name(ql_finish_reason_t r) {
    switch (r) {
    case QL_FINISH_REASON_STOP: return "stop";
    case QL_FINISH_REASON_LENGTH: return "length";
    default: return NULL;
    }
}

int ql_stop_init(ql_stop_t *st, const ql_stop_str_t *stops, int32_t n) {
    if (!st) return QL_EINVAL;
    memset(st, 0, sizeof(*st));
    if (n < 0 || (n > 0 && !stops)) return QL_EINVAL;
    for (int32_t i = 0; i < n; i++) {
        if (!stops[i].text || stops[i].len == 0) return QL_EINVAL;
        st->_len_max = QL_MAX(st->_len_max, stops[i].len);
    }
    st->_stops = stops;
    st->_n = n;
    return 0;
}

static void grow(char **buf, size_t *cap, size_t need) {
    if (need <= *cap && *buf) return;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    *buf = ql_xrealloc(*buf, c);
    *cap = c;
}

/* The earliest position in p[0, n) where a whole stop string starts; -1 when none. */
static int64_t find_match(const ql_stop_t *st, const char *p, size_t n, int32_t *which) {
    for (size_t i = 0; i < n; i++) {
        for (int32_t s = 0; s < st->_n; s++) {
            const ql_stop_str_t *x = &st->_stops[s];
            if (x->len <= n - i && p[i] == x->text[0] && memcmp(p + i, x->text, x->len) == 0) {
                *which = s;
                return (int64_t)i;
            }
        }
    }
    return -1;
}

/* The longest suffix of p[0, n) that is a proper prefix of some stop string. */
static size_t held_suffix(const ql_stop_t *st, const char *p, size_t n) {
    if (st->_len_max == 0) return 0;
    size_t k = QL_MIN(n, st->_len_max - 1);
    for (; k > 0; k--) {
        for (int32_t s = 0; s < st->_n; s++) {
            const ql_stop_str_t *x = &st->_stops[s];
            if (x->len > k && memcmp(p + n - k, x->text, k) == 0) return k;
        }
    }
    return 0;
}

/* Copies p[0, n) into the out buffer. */
static const char *release(ql_stop_t *st, const char *p, size_t n) {
    grow(&st->_out, &st->_out_cap, n + 1);
    memcpy(st->_out, p, n);
    return st->_out;
}

int ql_stop_push(ql_stop_t *st, const char *text, size_t len, int match, const char **out,
                 size_t *out_len, int32_t *which) {
    if (!st || !out || !out_len || (len > 0 && !text)) return QL_EINVAL;
    *out = "";
    *out_len = 0;
    if (st->_matched) return QL_ESTATE;
    if (st->_n == 0) { /* nothing to hold: pass the text through */
        *out = len ? release(st, text, len) : "";
        *out_len = len;
        return 0;
    }
    size_t n = st->_n_pending + len;
    grow(&st->_pending, &st->_pending_cap, n + 1);
    if (len) memcpy(st->_pending + st->_n_pending, text, len);
    if (match) {
        int32_t w = -1;
        int64_t at = find_match(st, st->_pending, n, &w);
        if (at >= 0) {
            *out = release(st, st->_pending, (size_t)at);
            *out_len = (size_t)at;
            if (which) *which = w;
            st->_n_pending = 0;
            st->_matched = 1;
            return 1;
        }
    }
    size_t k = held_suffix(st, st->_pending, n);
    *out = release(st, st->_pending, n - k);
    *out_len = n - k;
    memmove(st->_pending, st->_pending + (n - k), k);
    st->_n_pending = k;
    return 0;
}

void ql_stop_flush(ql_stop_t *st, const char **out, size_t *out_len) {
    *out = "";
    *out_len = 0;
    if (st->_matched || st->_n_pending == 0) return;
    *out = release(st, st->_pending, st->_n_pending);
    *out_len = st->_n_pending;
    st->_n_pending = 0;
}

size_t ql_stop_n_held(const ql_stop_t *st) { return st->_n_pending; }

void ql_stop_free(ql_stop_t *st) {
    if (!st) return;
    free(st->_pending);
    free(st->_out);
    st->_pending = st->_out = NULL;
    st->_pending_cap = st->_out_cap = st->_n_pending = 0;
}
