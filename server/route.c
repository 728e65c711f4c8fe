/*
 * server/route.c — the request target made canonical, the route table, API-key checks and CORS.
 *
 * NOTE(deny-by-default): routing and authentication read the same canonical path, computed once
 * (ql__route_target): percent-decoding, "//", "." and ".." and the absolute form all resolve
 * before either looks. Every route needs a key except the two listed open (/health, /ready), and
 * so does every path that is no route (404 comes only after the key is checked: an unauthorised
 * client learns nothing about which paths exist). An attacker who finds a spelling that reaches a
 * protected route also finds it checked.
 */
#define QL_LOG_MODULE "route"
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "server/server-internal.h"

/* ---- canonical targets ---- */

static int hexval(int ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

int ql__route_target(const char *t, size_t n, ql_target_t *out) {
    memset(out, 0, sizeof *out);
    if (!t || n == 0) return QL_EINVAL;
    if (memchr(t, '#', n)) return QL_EINVAL;
    size_t i = 0;
    if (t[0] != '/') {
        /* absolute-form (RFC 9112 3.2.2): the path after the authority is what counts */
        size_t skip;
        if (n >= 7 && strncasecmp(t, "http://", 7) == 0)
            skip = 7;
        else if (n >= 8 && strncasecmp(t, "https://", 8) == 0)
            skip = 8;
        else
            return QL_EINVAL; /* authority-form, asterisk-form, garbage */
        i = skip;
        while (i < n && t[i] != '/' && t[i] != '?') i++;
        if (i == skip) return QL_EINVAL; /* no authority */
    }
    size_t end = i;
    while (end < n && t[end] != '?') end++;

    /* decode into segments; a decoded '/' separates like a literal one */
    char seg[256];
    size_t seg_len = 0;
    size_t stack[64]; /* start offsets of the segments in out->path */
    int depth = 0;
    size_t len = 0; /* of out->path, without a NUL */
    int overflow = 0;
    for (size_t k = i; k <= end; k++) {
        int ch;
        int sep = 0;
        if (k == end) {
            sep = 1;
            ch = 0;
        } else if (t[k] == '%') {
            if (k + 2 >= end) return QL_EINVAL;
            int hi = hexval((unsigned char)t[k + 1]);
            int lo = hexval((unsigned char)t[k + 2]);
            if (hi < 0 || lo < 0) return QL_EINVAL;
            ch = hi * 16 + lo;
            k += 2;
            if (ch == '/') sep = 1;
        } else {
            ch = (unsigned char)t[k];
            if (ch == '/') sep = 1;
        }
        if (!sep) {
            if (ch < 0x20 || ch == 0x7f) return QL_EINVAL;
            if (seg_len + 1 >= sizeof seg)
                overflow = 1;
            else
                seg[seg_len++] = (char)ch;
            continue;
        }
        /* a segment ended */
        if (seg_len == 0 || (seg_len == 1 && seg[0] == '.')) {
            /* empty or ".": nothing */
        } else if (seg_len == 2 && seg[0] == '.' && seg[1] == '.') {
            if (depth > 0) len = stack[--depth];
        } else if (depth >= (int)QL_ARRAY_LEN(stack) || len + 1 + seg_len >= sizeof out->path) {
            overflow = 1;
        } else {
            stack[depth++] = len;
            out->path[len++] = '/';
            memcpy(out->path + len, seg, seg_len);
            len += seg_len;
        }
        seg_len = 0;
    }
    if (len == 0) out->path[len++] = '/';
    out->path[len] = '\0';
    out->too_long = overflow;
    return 0;
}

/* ---- routes ---- */

typedef struct route_def_s {
    const char *path;
    ql_route_t route;
    const char *method;
    int open; /* reachable without an API key */
} route_def_t;

static const route_def_t k_routes[] = {
    {"/health", QL_ROUTE_HEALTH, "GET", 1},
    {"/ready", QL_ROUTE_READY, "GET", 1},
    {"/metrics", QL_ROUTE_METRICS, "GET", 0},
    {"/v1/models", QL_ROUTE_MODELS, "GET", 0},
    {"/v1/completions", QL_ROUTE_COMPLETIONS, "POST", 0},
    {"/v1/chat/completions", QL_ROUTE_CHAT, "POST", 0},
    {"/tokenize", QL_ROUTE_TOKENIZE, "POST", 0},
    {"/detokenize", QL_ROUTE_DETOKENIZE, "POST", 0},
};

ql_route_t ql__route_find(const char *path) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_routes); i++)
        if (strcmp(path, k_routes[i].path) == 0) return k_routes[i].route;
    return QL_ROUTE_NONE;
}

const char *ql__route_method(ql_route_t r) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_routes); i++)
        if (k_routes[i].route == r) return k_routes[i].method;
    return "GET";
}

int ql__route_open(ql_route_t r) {
    for (size_t i = 0; i < QL_ARRAY_LEN(k_routes); i++)
        if (k_routes[i].route == r) return k_routes[i].open;
    return 0; /* no route: deny by default */
}

/* ---- API keys ---- */

/* NOTE(constant-time): the time taken depends on the configured key's length only, never on
 * how many leading bytes of the candidate match; every key is compared, with no early exit. */
static unsigned ct_differs(const unsigned char *cand, size_t cand_len, const unsigned char *key,
                           size_t key_len) {
    unsigned d = cand_len != key_len;
    for (size_t i = 0; i < key_len; i++) {
        unsigned char c = i < cand_len ? cand[i] : 0;
        d |= (unsigned)(c ^ key[i]);
    }
    return d;
}

int ql__route_auth(const ql_config_t *cfg, const char *authz, size_t n, int *sent) {
    *sent = 0;
    if (cfg->api_keys.n == 0) return 1;
    if (!authz || n < 7 || strncasecmp(authz, "Bearer ", 7) != 0) return 0;
    size_t i = 7;
    while (i < n && (authz[i] == ' ' || authz[i] == '\t')) i++;
    if (i == n) return 0;
    *sent = 1;
    const unsigned char *tok = (const unsigned char *)authz + i;
    size_t tok_len = n - i;
    unsigned ok = 0;
    for (int k = 0; k < cfg->api_keys.n; k++) {
        const char *key = cfg->api_keys.v[k];
        ok |= ct_differs(tok, tok_len, (const unsigned char *)key, strlen(key)) == 0;
    }
    return ok != 0;
}

/* ---- CORS ---- */

int ql__route_cors(const ql_config_t *cfg, const char *origin, size_t n, char *out, size_t cap) {
    out[0] = '\0';
    if (!origin || n == 0 || cfg->cors_origins.n == 0) return 0;
    for (int k = 0; k < cfg->cors_origins.n; k++) {
        const char *o = cfg->cors_origins.v[k];
        if (strcmp(o, "*") == 0) {
            snprintf(out, cap, "Access-Control-Allow-Origin: *\r\n");
            return 1;
        }
        if (strlen(o) == n && memcmp(o, origin, n) == 0) {
            if (n + 64 > cap) return 0;
            snprintf(out, cap, "Access-Control-Allow-Origin: %.*s\r\nVary: Origin\r\n", (int)n,
                     origin);
            return 1;
        }
    }
    return 0;
}
