/*
 * proto/text.c — the output side's plumbing: the growable buffer, UTF-8 decoding and repair,
 * and writing a jansson tree as compact JSON (optionally framed as an SSE event).
 */
#define QL_LOG_MODULE "proto"
#include <stdlib.h>
#include <string.h>

#include "proto/proto-internal.h"

/* ---- buffer ---- */

void ql_proto_buf_init(ql_proto_buf_t *b) {
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void ql_proto_buf_free(ql_proto_buf_t *b) {
    if (!b) return;
    free(b->data);
    ql_proto_buf_init(b);
}

int ql_proto_buf_append(ql_proto_buf_t *b, const void *p, size_t len) {
    size_t need;
    if (ql_size_add(b->len, len, &need) || ql_size_add(need, 1, &need)) return QL_EOVERFLOW;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need) {
            if (cap > SIZE_MAX / 2) {
                cap = need;
                break;
            }
            cap *= 2;
        }
        char *d = realloc(b->data, cap);
        if (!d) return QL_ENOMEM;
        b->data = d;
        b->cap = cap;
    }
    if (len) memcpy(b->data + b->len, p, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

/* ---- UTF-8 ---- */

/* NOTE(utf8-tables): well-formed sequences are those of the Unicode Standard's Table 3-7. The
 * second byte's range depends on the lead (E0: A0..BF excludes overlongs, ED: 80..9F excludes
 * surrogates, F0: 90..BF overlongs, F4: 80..8F beyond U+10FFFF); later bytes are 80..BF. */
size_t ql__proto_utf8_next(const unsigned char *s, size_t len, int *valid, uint32_t *cp) {
    unsigned c = s[0];
    *valid = 1;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    uint32_t v;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
        v = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *valid = 0; /* a continuation byte, C0, C1 or F5..FF: never a lead */
        return 1;
    }
    size_t i = 1;
    for (; i < n && i < len; i++) {
        unsigned b = s[i];
        if (b < lo || b > hi) break;
        v = (v << 6) | (b & 0x3F);
        lo = 0x80;
        hi = 0xBF;
    }
    if (i < n) {
        *valid = 0; /* maximal subpart: the lead and the continuations that were valid */
        return i;
    }
    *cp = v;
    return n;
}

int ql__proto_utf8_valid(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (u[i] < 0x80) { /* fast path for ASCII */
            i++;
            continue;
        }
        int ok;
        uint32_t cp;
        i += ql__proto_utf8_next(u + i, len - i, &ok, &cp);
        if (!ok) return 0;
    }
    return 1;
}

size_t ql_proto_utf8_chars(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, n = 0;
    while (i < len) {
        int ok;
        uint32_t cp;
        i += ql__proto_utf8_next(u + i, len - i, &ok, &cp);
        n++;
    }
    return n;
}

size_t ql_proto_utf8_complete_prefix(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        int ok;
        uint32_t cp;
        size_t k = ql__proto_utf8_next(u + i, len - i, &ok, &cp);
        /* an ill-formed unit that reaches the end may still be completed by later bytes */
        if (!ok && i + k == len && k > 0 && u[i] >= 0xC2 && u[i] <= 0xF4) return i;
        i += k;
    }
    return len;
}

static const char k_replacement[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

json_t *ql__proto_json_text(const char *s, size_t len) {
    if (len == 0) return json_string("");
    if (ql__proto_utf8_valid(s, len)) return json_stringn_nocheck(s, len);
    /* NOTE(utf8-out): each ill-formed unit (1..3 bytes) becomes 3 bytes, so 3 * len bounds it */
    size_t cap;
    if (ql_size_mul(len, 3, &cap)) return NULL;
    char *r = malloc(cap);
    if (!r) return NULL;
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, o = 0;
    while (i < len) {
        int ok;
        uint32_t cp;
        size_t k = ql__proto_utf8_next(u + i, len - i, &ok, &cp);
        if (ok) {
            memcpy(r + o, s + i, k);
            o += k;
        } else {
            memcpy(r + o, k_replacement, 3);
            o += 3;
        }
        i += k;
    }
    json_t *j = json_stringn_nocheck(r, o);
    free(r);
    return j;
}

/* ---- jansson glue ---- */

int ql__proto_set(json_t *obj, const char *key, json_t *val) {
    if (!val) return QL_ENOMEM;
    return json_object_set_new_nocheck(obj, key, val) ? QL_ENOMEM : 0;
}

int ql__proto_push(json_t *arr, json_t *val) {
    if (!val) return QL_ENOMEM;
    return json_array_append_new(arr, val) ? QL_ENOMEM : 0;
}

static int dump_cb(const char *buffer, size_t size, void *data) {
    return ql_proto_buf_append(data, buffer, size) ? -1 : 0;
}

/* NOTE(reals): the only reals written are logprobs, already rounded to the shortest decimal
 * that reads back as the same float (response.c); 9 significant digits print that decimal
 * exactly, where jansson's default 17 would print 0.1 as 0.10000000000000001. */
int ql__proto_dump(const json_t *j, const char *prefix, const char *suffix, ql_proto_buf_t *out) {
    size_t len0 = out->len;
    int rc = 0;
    if (prefix) rc = ql_proto_buf_append(out, prefix, strlen(prefix));
    if (!rc && json_dump_callback(j, dump_cb, out, JSON_COMPACT | JSON_REAL_PRECISION(9)) != 0)
        rc = QL_ENOMEM;
    if (!rc && suffix) rc = ql_proto_buf_append(out, suffix, strlen(suffix));
    if (rc) {
        if (rc != QL_ENOMEM) rc = QL_ENOMEM;
        out->len = len0;
        if (out->data) out->data[len0] = '\0';
    }
    return rc;
}
