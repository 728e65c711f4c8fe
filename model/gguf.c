/*
 * model/gguf.c — the GGUF (v2, v3) reader: maps a file (or takes a caller's buffer), validates
 * every byte of its header, metadata and tensor directory once, and then serves read-only
 * views into the mapping. model/hparams.c, the tokenizer and `quill inspect` read models
 * through it; the writer lives in gguf-write.c.
 *
 * Layout (little-endian):
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv
 *   n_kv x     { string key, u32 type, value }
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 type, u64 offset }
 *   padding to the alignment, then the data section (tensor offsets are relative to it)
 * where a string is u64 length + bytes and an array value is u32 element type, u64 count,
 * elements.
 *
 * NOTE(hostile): every file is hostile. Each read is checked against the bytes left before
 * it happens; each count is checked against the least number of bytes its elements occupy
 * before anything is allocated for it, so every allocation is bounded by the file size and
 * parsing takes time linear in it. Errors name the key or tensor and the file offset.
 */
#define QL_LOG_MODULE "gguf"
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "quill reads GGUF (little-endian) on little-endian hosts only"
#endif

/* Least bytes a key/value pair occupies: key length, an empty key, type, a 1-byte value. */
#define KV_MIN_BYTES 13u
/* Least bytes a tensor info occupies: name length, n_dims, one dimension, type, offset. */
#define TENSOR_INFO_MIN_BYTES 32u
/* Least bytes an element of an array of arrays occupies: element type and count. */
#define ARRAY_MIN_BYTES 12u
/* Least bytes a string occupies: its length. */
#define STRING_MIN_BYTES 8u
/* How much of a key or tensor name an error message quotes. */
#define ERR_NAME_CHARS 64

typedef struct kv_s {
    ql_gguf_str_t key;
    uint64_t key_off;        /* file offset of the key's length field */
    uint64_t val_off;        /* file offset of the value's encoding */
    ql_gguf_type_t type;
    ql_gguf_type_t arr_type; /* ARRAY: element type */
    uint64_t arr_len;        /* ARRAY: element count */
    uint64_t arr_off;        /* ARRAY: file offset of the first element */
    uint64_t *str_offs;      /* STRING arrays: [arr_len] file offset of each element */
} kv_t;

/* A sorted index from a name to its position: entries ordered by (name, position). */
typedef struct name_ent_s {
    const char *ptr;
    uint64_t len;
    int64_t i;
} name_ent_t;

typedef struct index_s {
    name_ent_t *ents; /* [n] */
    int64_t n;
} index_t;

struct ql_gguf_s {
    const uint8_t *base; /* [size] the mapping or the caller's buffer */
    uint64_t size;
    int mapped;          /* 1: munmap at free */
    uint32_t version;
    uint64_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    int64_t n_tensors;
    kv_t *kvs;                   /* [n_kv] */
    ql_gguf_tensor_t *tensors;   /* [n_tensors] */
    index_t kv_index;
    index_t tensor_index;
};

/* ---- type facts ---- */

static const struct {
    const char *name;
    size_t size;
} k_types[] = {
    [QL_GGUF_TYPE_UINT8] = {"u8", 1},     [QL_GGUF_TYPE_INT8] = {"i8", 1},
    [QL_GGUF_TYPE_UINT16] = {"u16", 2},   [QL_GGUF_TYPE_INT16] = {"i16", 2},
    [QL_GGUF_TYPE_UINT32] = {"u32", 4},   [QL_GGUF_TYPE_INT32] = {"i32", 4},
    [QL_GGUF_TYPE_FLOAT32] = {"f32", 4},  [QL_GGUF_TYPE_BOOL] = {"bool", 1},
    [QL_GGUF_TYPE_STRING] = {"string", 0}, [QL_GGUF_TYPE_ARRAY] = {"array", 0},
    [QL_GGUF_TYPE_UINT64] = {"u64", 8},   [QL_GGUF_TYPE_INT64] = {"i64", 8},
    [QL_GGUF_TYPE_FLOAT64] = {"f64", 8},
};

static int type_known(uint32_t t) { return t < QL_ARRAY_LEN(k_types); }

const char *ql_gguf_type_name(int t) {
    return t >= 0 && type_known((uint32_t)t) ? k_types[t].name : NULL;
}

size_t ql_gguf_type_size(int t) {
    return t >= 0 && type_known((uint32_t)t) ? k_types[t].size : 0;
}

/* ---- strings ---- */

int ql_gguf_str_eq(ql_gguf_str_t s, const char *c) {
    if (!c || (!s.ptr && s.len)) return 0;
    size_t n = strlen(c);
    return s.len == n && (n == 0 || memcmp(s.ptr, c, n) == 0);
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 when it is not one. */
static size_t utf8_len(const uint8_t *p, uint64_t left) {
    size_t n;
    uint32_t cp;
    if (p[0] < 0x80) return 1;
    if ((p[0] & 0xE0) == 0xC0) n = 2, cp = p[0] & 0x1F;
    else if ((p[0] & 0xF0) == 0xE0) n = 3, cp = p[0] & 0x0F;
    else if ((p[0] & 0xF8) == 0xF0) n = 4, cp = p[0] & 0x07;
    else return 0;
    if (left < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    /* overlong forms, surrogates and values past U+10FFFF are not valid UTF-8 */
    static const uint32_t k_min[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < k_min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return n;
}

char *ql_gguf_str_escape(ql_gguf_str_t s, size_t max_chars, char *buf, size_t n) {
    if (!buf || n == 0) return buf;
    const uint8_t *p = (const uint8_t *)s.ptr;
    uint64_t len = p ? s.len : 0;
    size_t o = 0, chars = 0;
    uint64_t i = 0;
    /* NOTE(escape-room): 4 bytes for the widest piece (\xNN or a UTF-8 sequence), 3 for a
     * possible "...", 1 for the NUL: a piece is written only when all of them still fit. */
    while (i < len) {
        char piece[8];
        size_t plen, step = 1;
        uint8_t c = p[i];
        if (chars == max_chars) break;
        if (c == '\n') plen = (size_t)snprintf(piece, sizeof(piece), "\\n");
        else if (c == '\t') plen = (size_t)snprintf(piece, sizeof(piece), "\\t");
        else if (c == '\r') plen = (size_t)snprintf(piece, sizeof(piece), "\\r");
        else if (c == '\\') plen = (size_t)snprintf(piece, sizeof(piece), "\\\\");
        else if (c >= 0x20 && c < 0x7F) piece[0] = (char)c, plen = 1;
        else if (c >= 0x80 && (step = utf8_len(p + i, len - i)) > 0) {
            memcpy(piece, p + i, step);
            plen = step;
        } else {
            plen = (size_t)snprintf(piece, sizeof(piece), "\\x%02X", c);
            step = 1;
        }
        if (o + plen + 3 + 1 > n) break;
        memcpy(buf + o, piece, plen);
        o += plen;
        i += step;
        chars++;
    }
    if (i < len && o + 3 + 1 <= n) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    buf[o] = '\0';
    return buf;
}

/* ---- bounded reading ---- */

typedef struct rd_s {
    const uint8_t *base;
    uint64_t size;
    uint64_t pos;
    char *err;         /* NULL: no messages (walking already validated data) */
    size_t errlen;
    char ctx[384];     /* what is being read: "key 3 'general.name' (at offset 120)" */
} rd_t;

static int rd_fail(rd_t *r, int code, const char *fmt, ...) QL_PRINTF(3, 4);
static int rd_fail(rd_t *r, int code, const char *fmt, ...) {
    if (!r->err || r->errlen == 0) return code;
    size_t o = 0;
    if (r->ctx[0]) {
        int k = snprintf(r->err, r->errlen, "%s: ", r->ctx);
        o = k < 0 ? 0 : QL_MIN((size_t)k, r->errlen - 1);
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err + o, r->errlen - o, fmt, ap);
    va_end(ap);
    return code;
}

static uint64_t rd_left(const rd_t *r) { return r->size - r->pos; }

/* Checks that n bytes are left for `what`. */
static int rd_need(rd_t *r, uint64_t n, const char *what) {
    if (n <= rd_left(r)) return 0;
    return rd_fail(r, QL_EFORMAT,
                   "truncated: %s at offset %llu needs %llu bytes, only %llu left in the file",
                   what, (unsigned long long)r->pos, (unsigned long long)n,
                   (unsigned long long)rd_left(r));
}

static int rd_u32(rd_t *r, uint32_t *v, const char *what) {
    int rc = rd_need(r, 4, what);
    if (rc) return rc;
    memcpy(v, r->base + r->pos, 4);
    r->pos += 4;
    return 0;
}

static int rd_u64(rd_t *r, uint64_t *v, const char *what) {
    int rc = rd_need(r, 8, what);
    if (rc) return rc;
    memcpy(v, r->base + r->pos, 8);
    r->pos += 8;
    return 0;
}

static int rd_str(rd_t *r, ql_gguf_str_t *s, const char *what) {
    uint64_t len, at = r->pos;
    int rc = rd_u64(r, &len, what);
    if (rc) return rc;
    if (len > rd_left(r)) {
        return rd_fail(r, QL_EFORMAT,
                       "truncated: %s at offset %llu has length %llu, only %llu bytes left in the file",
                       what, (unsigned long long)at, (unsigned long long)len,
                       (unsigned long long)rd_left(r));
    }
    s->ptr = (const char *)(r->base + r->pos);
    s->len = len;
    r->pos += len;
    return 0;
}

/* Checks that `count` elements of at least `min_bytes` each can fit in what is left. */
static int rd_count(rd_t *r, uint64_t count, uint64_t min_bytes, uint64_t at, const char *what) {
    if (count <= rd_left(r) / min_bytes) return 0;
    return rd_fail(r, QL_EFORMAT,
                   "%s count %llu at offset %llu cannot fit: each needs at least %llu bytes and "
                   "only %llu are left in the file",
                   what, (unsigned long long)count, (unsigned long long)at,
                   (unsigned long long)min_bytes, (unsigned long long)rd_left(r));
}

/* Reads (and validates) one value of type t, leaving r->pos after it. `depth` is the number
 * of arrays around it. When `str_offs` is non-NULL and the value is an array of strings,
 * *str_offs receives a malloc'd index of its elements' offsets (owned by the caller). */
static int rd_value(rd_t *r, uint32_t t, int depth, uint64_t **str_offs) {
    uint64_t at = r->pos;
    if (!type_known(t)) return rd_fail(r, QL_EFORMAT, "unknown value type %u", t);
    if (t == QL_GGUF_TYPE_STRING) {
        ql_gguf_str_t s;
        return rd_str(r, &s, "string value");
    }
    if (t != QL_GGUF_TYPE_ARRAY) {
        int rc = rd_need(r, k_types[t].size, "value");
        if (rc) return rc;
        if (t == QL_GGUF_TYPE_BOOL && r->base[r->pos] > 1)
            return rd_fail(r, QL_EFORMAT, "bool value %u at offset %llu (must be 0 or 1)",
                           r->base[r->pos], (unsigned long long)r->pos);
        r->pos += k_types[t].size;
        return 0;
    }
    if (depth + 1 > QL_GGUF_MAX_ARRAY_DEPTH)
        return rd_fail(r, QL_EFORMAT, "arrays nested more than %d deep at offset %llu",
                       QL_GGUF_MAX_ARRAY_DEPTH, (unsigned long long)at);
    uint32_t et;
    uint64_t n;
    int rc = rd_u32(r, &et, "array element type");
    if (rc) return rc;
    if (!type_known(et))
        return rd_fail(r, QL_EFORMAT, "unknown array element type %u at offset %llu", et,
                       (unsigned long long)at);
    uint64_t n_at = r->pos;
    if ((rc = rd_u64(r, &n, "array length"))) return rc;
    if (et == QL_GGUF_TYPE_STRING || et == QL_GGUF_TYPE_ARRAY) {
        uint64_t min = et == QL_GGUF_TYPE_STRING ? STRING_MIN_BYTES : ARRAY_MIN_BYTES;
        if ((rc = rd_count(r, n, min, n_at, "array element"))) return rc;
        uint64_t *offs = NULL;
        if (str_offs && et == QL_GGUF_TYPE_STRING && n > 0) {
            /* bounded: n <= bytes left / 8, so the index is no larger than the file */
            offs = malloc((size_t)n * sizeof(*offs));
            if (!offs) return rd_fail(r, QL_ENOMEM, "out of memory indexing %llu strings", (unsigned long long)n);
        }
        for (uint64_t j = 0; j < n; j++) {
            if (offs) offs[j] = r->pos;
            if ((rc = rd_value(r, et, depth + 1, NULL))) {
                free(offs);
                return rc;
            }
        }
        if (str_offs) *str_offs = offs;
        return 0;
    }
    /* fixed-size elements: n * size bytes, overflow-checked against what is left */
    uint64_t es = k_types[et].size;
    if (n > rd_left(r) / es)
        return rd_fail(r, QL_EFORMAT,
                       "truncated: array of %llu %s at offset %llu needs %llu-byte elements, only "
                       "%llu bytes left in the file",
                       (unsigned long long)n, k_types[et].name, (unsigned long long)at,
                       (unsigned long long)es, (unsigned long long)rd_left(r));
    if (et == QL_GGUF_TYPE_BOOL) {
        for (uint64_t j = 0; j < n; j++)
            if (r->base[r->pos + j] > 1)
                return rd_fail(r, QL_EFORMAT, "bool element %llu is %u at offset %llu (must be 0 or 1)",
                               (unsigned long long)j, r->base[r->pos + j],
                               (unsigned long long)(r->pos + j));
    }
    r->pos += n * es;
    return 0;
}

/* ---- the name index ---- */

/* NOTE(name-index): names are found by binary search in an array sorted with heapsort. A
 * hash table could be flooded by a hostile file whose names all collide (quadratic time on
 * open), and a quicksort could be fed its worst case; heapsort is O(n log n) whatever the
 * names are. Sorting also puts duplicates side by side. */

static int name_cmp(const char *a, uint64_t an, const char *b, uint64_t bn) {
    uint64_t n = QL_MIN(an, bn);
    int c = n ? memcmp(a, b, (size_t)n) : 0;
    if (c) return c;
    return an < bn ? -1 : an > bn;
}

static int ent_cmp(const name_ent_t *a, const name_ent_t *b) {
    int c = name_cmp(a->ptr, a->len, b->ptr, b->len);
    return c ? c : (a->i < b->i ? -1 : a->i > b->i);
}

static void sift_down(name_ent_t *a, int64_t root, int64_t n) {
    for (;;) {
        int64_t child = 2 * root + 1;
        if (child >= n) return;
        if (child + 1 < n && ent_cmp(&a[child], &a[child + 1]) < 0) child++;
        if (ent_cmp(&a[root], &a[child]) >= 0) return;
        name_ent_t tmp = a[root];
        a[root] = a[child];
        a[child] = tmp;
        root = child;
    }
}

static void heap_sort(name_ent_t *a, int64_t n) {
    for (int64_t i = n / 2; i-- > 0;) sift_down(a, i, n);
    for (int64_t end = n - 1; end > 0; end--) {
        name_ent_t tmp = a[0];
        a[0] = a[end];
        a[end] = tmp;
        sift_down(a, 0, end);
    }
}

/* Sorts names[0..n) into ix. Returns 0, or QL_EFORMAT with *dup / *first set to the
 * positions of the earliest repeated name (in file order) and of its first occurrence. */
static int index_build(index_t *ix, const ql_gguf_str_t *names, size_t stride, int64_t n, int64_t *dup,
                       int64_t *first) {
    ix->n = n;
    for (int64_t i = 0; i < n; i++) {
        const ql_gguf_str_t *s = (const ql_gguf_str_t *)((const char *)names + (size_t)i * stride);
        ix->ents[i] = (name_ent_t){s->ptr, s->len, i};
    }
    heap_sort(ix->ents, n);
    *dup = -1;
    for (int64_t k = 1; k < n; k++) {
        const name_ent_t *a = &ix->ents[k - 1], *b = &ix->ents[k];
        if (name_cmp(a->ptr, a->len, b->ptr, b->len) == 0 && (*dup < 0 || b->i < *dup)) {
            /* a run of equal names is ordered by position: its head is the first occurrence */
            int64_t h = k - 1;
            while (h > 0 && name_cmp(ix->ents[h - 1].ptr, ix->ents[h - 1].len, b->ptr, b->len) == 0) h--;
            *dup = b->i;
            *first = ix->ents[h].i;
        }
    }
    return *dup < 0 ? 0 : QL_EFORMAT;
}

/* The position of the first entry named (p, n), or -1. */
static int64_t index_find(const index_t *ix, const char *p, uint64_t n) {
    int64_t lo = 0, hi = ix->n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (name_cmp(ix->ents[mid].ptr, ix->ents[mid].len, p, n) < 0) lo = mid + 1;
        else hi = mid;
    }
    if (lo < ix->n && name_cmp(ix->ents[lo].ptr, ix->ents[lo].len, p, n) == 0) return ix->ents[lo].i;
    return -1;
}

/* ---- parsing ---- */

static void set_ctx(rd_t *r, const char *what, int64_t i, ql_gguf_str_t name, uint64_t at) {
    char esc[ERR_NAME_CHARS * 4 + 8];
    ql_gguf_str_escape(name, ERR_NAME_CHARS, esc, sizeof(esc));
    snprintf(r->ctx, sizeof(r->ctx), "%s %lld '%s' (at offset %llu)", what, (long long)i, esc,
             (unsigned long long)at);
}

static int parse_header(ql_gguf_t *g, rd_t *r, uint64_t *n_tensors, uint64_t *n_kv) {
    snprintf(r->ctx, sizeof(r->ctx), "header");
    if (r->size == 0) return rd_fail(r, QL_EFORMAT, "empty file (0 bytes): not a GGUF file");
    if (r->size < 4 || memcmp(r->base, "GGUF", 4) != 0) {
        char esc[40];
        ql_gguf_str_t m = {(const char *)r->base, QL_MIN(r->size, 4)};
        return rd_fail(r, QL_EFORMAT, "not a GGUF file: magic '%s' at offset 0, expected 'GGUF'",
                       ql_gguf_str_escape(m, 4, esc, sizeof(esc)));
    }
    r->pos = 4;
    uint32_t v;
    int rc = rd_u32(r, &v, "version");
    if (rc) return rc;
    if (v == 1)
        return rd_fail(r, QL_EUNSUPPORTED,
                       "GGUF version 1 (32-bit counts) is not supported: only versions 2 and 3");
    if (v != 2 && v != 3) {
        uint32_t sw = __builtin_bswap32(v);
        if (sw >= 1 && sw <= 3)
            return rd_fail(r, QL_EUNSUPPORTED,
                           "big-endian GGUF (version %u, byte-swapped) is not supported", sw);
        return rd_fail(r, QL_EUNSUPPORTED, "unknown GGUF version %u (supported: 2 and 3)", v);
    }
    g->version = v;
    if ((rc = rd_u64(r, n_tensors, "tensor count"))) return rc;
    if ((rc = rd_u64(r, n_kv, "metadata key count"))) return rc;
    /* NOTE(counts): both counts are proven to fit before anything is sized by them. */
    if ((rc = rd_count(r, *n_kv, KV_MIN_BYTES, 16, "metadata key"))) return rc;
    uint64_t kv_min = *n_kv * KV_MIN_BYTES;
    if (*n_tensors > (rd_left(r) - kv_min) / TENSOR_INFO_MIN_BYTES)
        return rd_fail(r, QL_EFORMAT,
                       "tensor count %llu at offset 8 cannot fit: each tensor info needs at least %u "
                       "bytes and only %llu are left after the metadata",
                       (unsigned long long)*n_tensors, TENSOR_INFO_MIN_BYTES,
                       (unsigned long long)(rd_left(r) - kv_min));
    return 0;
}

static int parse_kvs(ql_gguf_t *g, rd_t *r) {
    for (int64_t i = 0; i < g->n_kv; i++) {
        kv_t *kv = &g->kvs[i];
        ql_gguf_str_t none = {"", 0};
        kv->key_off = r->pos;
        set_ctx(r, "key", i, none, r->pos);
        int rc = rd_str(r, &kv->key, "key");
        if (rc) return rc;
        set_ctx(r, "key", i, kv->key, kv->key_off);
        uint32_t t;
        if ((rc = rd_u32(r, &t, "value type"))) return rc;
        if (!type_known(t)) return rd_fail(r, QL_EFORMAT, "unknown value type %u", t);
        kv->type = (ql_gguf_type_t)t;
        kv->val_off = r->pos;
        if (t == QL_GGUF_TYPE_ARRAY) {
            /* peek at the element type and count; rd_value validates them again */
            if ((rc = rd_need(r, 12, "array header"))) return rc;
            uint32_t et;
            memcpy(&et, r->base + r->pos, 4);
            memcpy(&kv->arr_len, r->base + r->pos + 4, 8);
            kv->arr_type = (ql_gguf_type_t)et;
            kv->arr_off = r->pos + 12;
        }
        if ((rc = rd_value(r, t, 0, t == QL_GGUF_TYPE_ARRAY ? &kv->str_offs : NULL))) return rc;
    }
    int64_t dup, first;
    if (index_build(&g->kv_index, &g->kvs[0].key, sizeof(kv_t), g->n_kv, &dup, &first) != 0) {
        set_ctx(r, "key", dup, g->kvs[dup].key, g->kvs[dup].key_off);
        return rd_fail(r, QL_EFORMAT, "duplicate key (first at offset %llu)",
                       (unsigned long long)g->kvs[first].key_off);
    }
    return 0;
}

/* general.alignment: any unsigned integer type, a nonzero power of two. */
static int parse_alignment(ql_gguf_t *g, rd_t *r) {
    g->alignment = QL_GGUF_DEFAULT_ALIGNMENT;
    int64_t i = ql_gguf_find_key(g, "general.alignment");
    if (i < 0) return 0;
    const kv_t *kv = &g->kvs[i];
    set_ctx(r, "key", i, kv->key, kv->key_off);
    ql_gguf_value_t v;
    int64_t a;
    ql_gguf_kv_value(g, i, &v);
    int rc = ql_gguf_value_i64(&v, &a);
    if (rc == QL_ERANGE) return rd_fail(r, QL_EFORMAT, "alignment is larger than 2^63");
    if (rc != 0 || kv->type == QL_GGUF_TYPE_BOOL)
        return rd_fail(r, QL_EFORMAT, "alignment has type %s, expected an unsigned integer (u32)",
                       k_types[kv->type].name);
    if (a <= 0 || (a & (a - 1)) != 0)
        return rd_fail(r, QL_EFORMAT, "alignment %lld is not a nonzero power of two", (long long)a);
    g->alignment = (uint64_t)a;
    return 0;
}

static int parse_tensor_infos(ql_gguf_t *g, rd_t *r, uint64_t *info_offs) {
    for (int64_t i = 0; i < g->n_tensors; i++) {
        ql_gguf_tensor_t *t = &g->tensors[i];
        ql_gguf_str_t none = {"", 0};
        uint64_t at = r->pos;
        info_offs[i] = at;
        set_ctx(r, "tensor", i, none, at);
        int rc = rd_str(r, &t->name, "tensor name");
        if (rc) return rc;
        set_ctx(r, "tensor", i, t->name, at);
        uint32_t nd;
        if ((rc = rd_u32(r, &nd, "n_dims"))) return rc;
        if (nd < 1 || nd > QL_GGUF_MAX_DIMS)
            return rd_fail(r, QL_EFORMAT, "n_dims %u at offset %llu (must be 1..%d)", nd,
                           (unsigned long long)(r->pos - 4), QL_GGUF_MAX_DIMS);
        t->n_dims = (int)nd;
        for (int d = 0; d < QL_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne;
            if ((rc = rd_u64(r, &ne, "dimension"))) return rc;
            if (ne == 0 || ne > (uint64_t)INT64_MAX)
                return rd_fail(r, QL_EFORMAT, "dimension %u is %lld at offset %llu (must be positive)",
                               d, (long long)ne, (unsigned long long)(r->pos - 8));
            t->ne[d] = (int64_t)ne;
        }
        uint32_t type;
        if ((rc = rd_u32(r, &type, "tensor type"))) return rc;
        if (type >= QL_DTYPE_COUNT || ql_dtype_block_bytes((int)type) == 0 ||
            ql_dtype_block_elems((int)type) <= 0)
            return rd_fail(r, QL_EUNSUPPORTED, "unknown or unsupported tensor type %u at offset %llu",
                           type, (unsigned long long)(r->pos - 4));
        t->type = (ql_dtype_t)type;
        if ((rc = rd_u64(r, &t->offset, "tensor data offset"))) return rc;

        /* NOTE(tensor-size): elements = prod(ne) must fit int64; bytes = row bytes * rows
         * must fit uint64 and size_t. ggml requires ne[0] to be whole blocks. */
        int64_t nel = t->ne[0];
        for (int d = 1; d < QL_GGUF_MAX_DIMS; d++) {
            if (nel > INT64_MAX / t->ne[d])
                return rd_fail(r, QL_EFORMAT, "element count overflows: shape [%lld, %lld, %lld, %lld]",
                               (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                               (long long)t->ne[3]);
            nel *= t->ne[d];
        }
        int64_t blk = ql_dtype_block_elems((int)type);
        if (t->ne[0] % blk != 0)
            return rd_fail(r, QL_EFORMAT, "row length ne[0] = %lld is not a multiple of %s's block size %lld",
                           (long long)t->ne[0], ql_dtype_name((int)type), (long long)blk);
        size_t row, bytes;
        if (ql_dtype_row_bytes((int)type, t->ne[0], &row) != 0 ||
            ql_size_mul(row, (size_t)(nel / t->ne[0]), &bytes) != 0)
            return rd_fail(r, QL_EFORMAT, "tensor size overflows: %lld elements of %s",
                           (long long)nel, ql_dtype_name((int)type));
        t->size = bytes;
        if (t->offset % g->alignment != 0)
            return rd_fail(r, QL_EFORMAT, "data offset %llu is not a multiple of the alignment %llu",
                           (unsigned long long)t->offset, (unsigned long long)g->alignment);
    }
    int64_t dup, first;
    if (index_build(&g->tensor_index, &g->tensors[0].name, sizeof(ql_gguf_tensor_t), g->n_tensors, &dup,
                    &first) != 0) {
        set_ctx(r, "tensor", dup, g->tensors[dup].name, info_offs[dup]);
        return rd_fail(r, QL_EFORMAT, "duplicate tensor name (first at offset %llu)",
                       (unsigned long long)info_offs[first]);
    }
    return 0;
}

/* The data section starts at the first aligned offset after the tensor infos; every tensor
 * lies inside the file. */
static int place_tensors(ql_gguf_t *g, rd_t *r, const uint64_t *info_offs) {
    snprintf(r->ctx, sizeof(r->ctx), "data section");
    uint64_t end = r->pos, a = g->alignment;
    if (end > UINT64_MAX - (a - 1))
        return rd_fail(r, QL_EFORMAT, "aligning offset %llu to %llu overflows", (unsigned long long)end,
                       (unsigned long long)a);
    g->data_offset = (end + a - 1) / a * a;
    if (g->n_tensors == 0) return 0;
    if (g->data_offset > g->size)
        return rd_fail(r, QL_EFORMAT, "starts at offset %llu, past the end of the file (%llu bytes)",
                       (unsigned long long)g->data_offset, (unsigned long long)g->size);
    uint64_t avail = g->size - g->data_offset;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        ql_gguf_tensor_t *t = &g->tensors[i];
        if (t->offset > avail || t->size > avail - t->offset) {
            set_ctx(r, "tensor", i, t->name, info_offs[i]);
            return rd_fail(r, QL_EFORMAT,
                           "data [%llu, +%llu bytes) runs past the end of the file (%llu bytes; "
                           "data section at offset %llu)",
                           (unsigned long long)t->offset, (unsigned long long)t->size,
                           (unsigned long long)g->size, (unsigned long long)g->data_offset);
        }
        t->data = g->base + g->data_offset + t->offset;
    }
    return 0;
}

static int parse(ql_gguf_t *g, char *err, size_t errlen) {
    rd_t r = {.base = g->base, .size = g->size, .err = err, .errlen = errlen};
    uint64_t n_tensors = 0, n_kv = 0, *info_offs = NULL;
    int rc = parse_header(g, &r, &n_tensors, &n_kv);
    if (rc) return rc;
    /* bounded by the file size (rd_count above) */
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    g->kvs = calloc((size_t)QL_MAX(n_kv, 1), sizeof(*g->kvs));
    g->tensors = calloc((size_t)QL_MAX(n_tensors, 1), sizeof(*g->tensors));
    info_offs = calloc((size_t)QL_MAX(n_tensors, 1), sizeof(*info_offs));
    g->kv_index.ents = calloc((size_t)QL_MAX(n_kv, 1), sizeof(name_ent_t));
    g->tensor_index.ents = calloc((size_t)QL_MAX(n_tensors, 1), sizeof(name_ent_t));
    if (!g->kvs || !g->tensors || !info_offs || !g->kv_index.ents || !g->tensor_index.ents) {
        rc = rd_fail(&r, QL_ENOMEM, "out of memory for %llu keys and %llu tensors",
                     (unsigned long long)n_kv, (unsigned long long)n_tensors);
        goto out;
    }
    if ((rc = parse_kvs(g, &r))) goto out;
    if ((rc = parse_alignment(g, &r))) goto out;
    if ((rc = parse_tensor_infos(g, &r, info_offs))) goto out;
    rc = place_tensors(g, &r, info_offs);
out:
    free(info_offs);
    return rc;
}

/* ---- open / free ---- */


static int open_common(ql_gguf_t *g, ql_gguf_t **out, char *err, size_t errlen) {
    int rc = parse(g, err, errlen);
    if (rc) {
        ql_gguf_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

int ql_gguf_open_mem(const void *data, size_t size, ql_gguf_t **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!out || (!data && size)) {
        ql_errf(err, errlen, "ql_gguf_open_mem: NULL argument");
        return QL_EINVAL;
    }
    *out = NULL;
    ql_gguf_t *g = calloc(1, sizeof(*g));
    if (!g) {
        ql_errf(err, errlen, "out of memory");
        return QL_ENOMEM;
    }
    static const uint8_t k_empty[1];
    g->base = data ? data : k_empty;
    g->size = size;
    return open_common(g, out, err, errlen);
}

int ql_gguf_open(const char *path, ql_gguf_t **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!path || !out) {
        ql_errf(err, errlen, "ql_gguf_open: NULL argument");
        return QL_EINVAL;
    }
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        ql_errf(err, errlen, "cannot open %s: %s", path, strerror(e));
        return e == ENOENT ? QL_ENOENT : QL_EIO;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        ql_errf(err, errlen, "cannot stat %s: %s", path, strerror(e));
        return QL_EIO;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        ql_errf(err, errlen, "cannot read %s: %s", path,
                S_ISDIR(st.st_mode) ? strerror(EISDIR) : "not a regular file");
        return QL_EIO;
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        ql_errf(err, errlen, "cannot map %s: %llu bytes do not fit in memory", path,
                (unsigned long long)st.st_size);
        return QL_ENOMEM;
    }
    ql_gguf_t *g = calloc(1, sizeof(*g));
    if (!g) {
        close(fd);
        ql_errf(err, errlen, "out of memory");
        return QL_ENOMEM;
    }
    static const uint8_t k_empty[1];
    g->base = k_empty;
    g->size = (uint64_t)st.st_size;
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            free(g);
            ql_errf(err, errlen, "cannot map %s (%llu bytes): %s", path, (unsigned long long)st.st_size,
                    strerror(e));
            return e == ENOMEM ? QL_ENOMEM : QL_EIO;
        }
        g->base = p;
        g->mapped = 1;
    }
    close(fd);
    char msg[384];
    msg[0] = '\0';
    int rc = open_common(g, out, msg, sizeof(msg));
    if (rc) ql_errf(err, errlen, "%s: %s", path, msg);
    return rc;
}

void ql_gguf_free(ql_gguf_t *g) {
    if (!g) return;
    if (g->kvs)
        for (int64_t i = 0; i < g->n_kv; i++) free(g->kvs[i].str_offs);
    free(g->kvs);
    free(g->tensors);
    free(g->kv_index.ents);
    free(g->tensor_index.ents);
    if (g->mapped) munmap((void *)g->base, (size_t)g->size);
    free(g);
}

/* ---- file facts ---- */

uint32_t ql_gguf_version(const ql_gguf_t *g) { return g ? g->version : 0; }
uint64_t ql_gguf_alignment(const ql_gguf_t *g) { return g ? g->alignment : 0; }
uint64_t ql_gguf_data_offset(const ql_gguf_t *g) { return g ? g->data_offset : 0; }
uint64_t ql_gguf_file_size(const ql_gguf_t *g) { return g ? g->size : 0; }

/* ---- metadata ---- */

int64_t ql_gguf_n_kv(const ql_gguf_t *g) { return g ? g->n_kv : 0; }

static const kv_t *kv_at(const ql_gguf_t *g, int64_t i) {
    return g && i >= 0 && i < g->n_kv ? &g->kvs[i] : NULL;
}

int64_t ql_gguf_find_key(const ql_gguf_t *g, const char *key) {
    if (!g || !key) return -1;
    return index_find(&g->kv_index, key, strlen(key));
}

ql_gguf_str_t ql_gguf_key(const ql_gguf_t *g, int64_t i) {
    const kv_t *kv = kv_at(g, i);
    ql_gguf_str_t none = {NULL, 0};
    return kv ? kv->key : none;
}

ql_gguf_type_t ql_gguf_kv_type(const ql_gguf_t *g, int64_t i) {
    const kv_t *kv = kv_at(g, i);
    return kv ? kv->type : (ql_gguf_type_t)-1;
}

ql_gguf_type_t ql_gguf_arr_type(const ql_gguf_t *g, int64_t i) {
    const kv_t *kv = kv_at(g, i);
    return kv && kv->type == QL_GGUF_TYPE_ARRAY ? kv->arr_type : (ql_gguf_type_t)-1;
}

uint64_t ql_gguf_arr_len(const ql_gguf_t *g, int64_t i) {
    const kv_t *kv = kv_at(g, i);
    return kv && kv->type == QL_GGUF_TYPE_ARRAY ? kv->arr_len : 0;
}

/* Decodes a fixed-size scalar of type t at p into *iv (integers and bools, exactly; *u64_big
 * is set instead when a uint64 exceeds INT64_MAX) and *fv (every numeric type); either may
 * be NULL. Returns 0 for an integer or bool, 1 for a float, QL_EFORMAT for other types. */
static int decode_num(uint32_t t, const uint8_t *p, int64_t *iv, double *fv, int *u64_big) {
    int is_int = 1;
    int64_t i = 0;
    double f = 0;
    *u64_big = 0;
    switch (t) {
    case QL_GGUF_TYPE_UINT8: { uint8_t v; memcpy(&v, p, 1); i = v; break; }
    case QL_GGUF_TYPE_INT8: { int8_t v; memcpy(&v, p, 1); i = v; break; }
    case QL_GGUF_TYPE_BOOL: { uint8_t v; memcpy(&v, p, 1); i = v != 0; break; }
    case QL_GGUF_TYPE_UINT16: { uint16_t v; memcpy(&v, p, 2); i = v; break; }
    case QL_GGUF_TYPE_INT16: { int16_t v; memcpy(&v, p, 2); i = v; break; }
    case QL_GGUF_TYPE_UINT32: { uint32_t v; memcpy(&v, p, 4); i = v; break; }
    case QL_GGUF_TYPE_INT32: { int32_t v; memcpy(&v, p, 4); i = v; break; }
    case QL_GGUF_TYPE_INT64: { int64_t v; memcpy(&v, p, 8); i = v; break; }
    case QL_GGUF_TYPE_UINT64: {
        uint64_t v;
        memcpy(&v, p, 8);
        *u64_big = v > (uint64_t)INT64_MAX;
        if (iv) *iv = *u64_big ? INT64_MAX : (int64_t)v;
        if (fv) *fv = (double)v;
        return 0;
    }
    case QL_GGUF_TYPE_FLOAT32: { float v; memcpy(&v, p, 4); f = v; is_int = 0; break; }
    case QL_GGUF_TYPE_FLOAT64: { double v; memcpy(&v, p, 8); f = v; is_int = 0; break; }
    default: return QL_EFORMAT;
    }
    if (is_int) f = (double)i;
    if (iv) *iv = is_int ? i : 0;
    if (fv) *fv = f;
    return is_int ? 0 : 1; /* 1: a float (not an integer) */
}

static const kv_t *kv_by_key(const ql_gguf_t *g, const char *key, int *rc) {
    if (!g || !key) {
        *rc = QL_EINVAL;
        return NULL;
    }
    int64_t i = ql_gguf_find_key(g, key);
    *rc = i < 0 ? QL_ENOENT : 0;
    return i < 0 ? NULL : &g->kvs[i];
}

int ql_gguf_get_i64(const ql_gguf_t *g, const char *key, int64_t *out) {
    int rc, big;
    const kv_t *kv = kv_by_key(g, key, &rc);
    if (!kv) return rc;
    if (!out) return QL_EINVAL;
    if (kv->type == QL_GGUF_TYPE_BOOL || kv->type == QL_GGUF_TYPE_STRING || kv->type == QL_GGUF_TYPE_ARRAY)
        return QL_EFORMAT;
    int64_t v;
    if (decode_num(kv->type, g->base + kv->val_off, &v, NULL, &big) != 0 || big) return QL_EFORMAT;
    *out = v;
    return 0;
}

int ql_gguf_get_u32(const ql_gguf_t *g, const char *key, uint32_t *out) {
    int64_t v;
    if (!out) return QL_EINVAL;
    int rc = ql_gguf_get_i64(g, key, &v);
    if (rc) return rc;
    if (v < 0 || v > (int64_t)UINT32_MAX) return QL_EFORMAT;
    *out = (uint32_t)v;
    return 0;
}

int ql_gguf_get_f32(const ql_gguf_t *g, const char *key, float *out) {
    int rc;
    const kv_t *kv = kv_by_key(g, key, &rc);
    if (!kv) return rc;
    if (!out) return QL_EINVAL;
    if (kv->type == QL_GGUF_TYPE_FLOAT32) {
        memcpy(out, g->base + kv->val_off, 4);
        return 0;
    }
    if (kv->type == QL_GGUF_TYPE_FLOAT64) {
        double d;
        memcpy(&d, g->base + kv->val_off, 8);
        /* NOTE(f64-narrowing): a finite double beyond float's range is not representable;
         * infinities and NaN convert as themselves. */
        if (isfinite(d) && fabs(d) > FLT_MAX) return QL_EFORMAT;
        *out = (float)d;
        return 0;
    }
    return QL_EFORMAT;
}

int ql_gguf_get_bool(const ql_gguf_t *g, const char *key, int *out) {
    int rc;
    const kv_t *kv = kv_by_key(g, key, &rc);
    if (!kv) return rc;
    if (!out) return QL_EINVAL;
    if (kv->type != QL_GGUF_TYPE_BOOL) return QL_EFORMAT;
    *out = g->base[kv->val_off] != 0;
    return 0;
}

int ql_gguf_get_str(const ql_gguf_t *g, const char *key, ql_gguf_str_t *out) {
    int rc;
    const kv_t *kv = kv_by_key(g, key, &rc);
    if (!kv) return rc;
    if (!out) return QL_EINVAL;
    if (kv->type != QL_GGUF_TYPE_STRING) return QL_EFORMAT;
    uint64_t len;
    memcpy(&len, g->base + kv->val_off, 8);
    out->ptr = (const char *)(g->base + kv->val_off + 8);
    out->len = len;
    return 0;
}

/* ---- arrays ---- */

static const kv_t *fixed_arr(const ql_gguf_t *g, int64_t i, uint64_t j) {
    const kv_t *kv = kv_at(g, i);
    if (!kv || kv->type != QL_GGUF_TYPE_ARRAY || j >= kv->arr_len) return NULL;
    if (kv->arr_type == QL_GGUF_TYPE_STRING || kv->arr_type == QL_GGUF_TYPE_ARRAY) return NULL;
    return kv;
}

int ql_gguf_arr_i64(const ql_gguf_t *g, int64_t i, uint64_t j, int64_t *out) {
    const kv_t *kv = fixed_arr(g, i, j);
    if (!kv || !out) return QL_EINVAL;
    int64_t v;
    int big;
    if (decode_num(kv->arr_type, g->base + kv->arr_off + j * k_types[kv->arr_type].size, &v, NULL, &big) != 0)
        return QL_EINVAL;
    if (big) return QL_ERANGE;
    *out = v;
    return 0;
}

int ql_gguf_arr_f64(const ql_gguf_t *g, int64_t i, uint64_t j, double *out) {
    const kv_t *kv = fixed_arr(g, i, j);
    if (!kv || !out) return QL_EINVAL;
    int big;
    decode_num(kv->arr_type, g->base + kv->arr_off + j * k_types[kv->arr_type].size, NULL, out, &big);
    return 0;
}

int ql_gguf_arr_str(const ql_gguf_t *g, int64_t i, uint64_t j, ql_gguf_str_t *out) {
    const kv_t *kv = kv_at(g, i);
    if (!kv || !out || kv->type != QL_GGUF_TYPE_ARRAY || kv->arr_type != QL_GGUF_TYPE_STRING ||
        j >= kv->arr_len)
        return QL_EINVAL;
    uint64_t off = kv->str_offs[j], len;
    memcpy(&len, g->base + off, 8);
    out->ptr = (const char *)(g->base + off + 8);
    out->len = len;
    return 0;
}

const void *ql_gguf_arr_data(const ql_gguf_t *g, int64_t i) {
    const kv_t *kv = kv_at(g, i);
    if (!kv || kv->type != QL_GGUF_TYPE_ARRAY || kv->arr_type == QL_GGUF_TYPE_STRING ||
        kv->arr_type == QL_GGUF_TYPE_ARRAY)
        return NULL;
    return g->base + kv->arr_off;
}

/* ---- generic values ---- */

/* Fills *v for the value of type t whose encoding starts at file offset `at` (validated). */
static void value_at(const uint8_t *base, uint64_t size, uint32_t t, uint64_t at, ql_gguf_value_t *v) {
    memset(v, 0, sizeof(*v));
    v->type = (ql_gguf_type_t)t;
    v->offset = at;
    v->_base = base;
    v->_size = size;
    v->arr_type = (ql_gguf_type_t)-1;
    if (t == QL_GGUF_TYPE_STRING) {
        memcpy(&v->str.len, base + at, 8);
        v->str.ptr = (const char *)(base + at + 8);
    } else if (t == QL_GGUF_TYPE_ARRAY) {
        uint32_t et;
        memcpy(&et, base + at, 4);
        memcpy(&v->arr_len, base + at + 4, 8);
        v->arr_type = (ql_gguf_type_t)et;
        v->data = base + at + 12;
        v->_pos = at + 12;
    } else {
        v->data = base + at;
    }
}

int ql_gguf_kv_value(const ql_gguf_t *g, int64_t i, ql_gguf_value_t *out) {
    const kv_t *kv = kv_at(g, i);
    if (!kv || !out) return QL_EINVAL;
    value_at(g->base, g->size, kv->type, kv->val_off, out);
    return 0;
}

int ql_gguf_value_elem(ql_gguf_value_t *arr, uint64_t j, ql_gguf_value_t *out) {
    if (!arr || !out || arr->type != QL_GGUF_TYPE_ARRAY || j >= arr->arr_len || !arr->_base) return QL_EINVAL;
    uint32_t et = arr->arr_type;
    uint64_t first = arr->offset + 12;
    size_t es = ql_gguf_type_size((int)et);
    if (es > 0) {
        value_at(arr->_base, arr->_size, et, first + j * es, out);
        return 0;
    }
    /* variable-size elements: walk from the cursor (or the start) with the validating reader */
    if (j < arr->_j) {
        arr->_j = 0;
        arr->_pos = first;
    }
    rd_t r = {.base = arr->_base, .size = arr->_size, .pos = arr->_pos};
    while (arr->_j < j) {
        if (rd_value(&r, et, 1, NULL) != 0) return QL_EINVAL; /* cannot happen: validated at open */
        arr->_j++;
        arr->_pos = r.pos;
    }
    value_at(arr->_base, arr->_size, et, arr->_pos, out);
    return 0;
}

int ql_gguf_value_i64(const ql_gguf_value_t *v, int64_t *out) {
    if (!v || !out || !v->data || v->type == QL_GGUF_TYPE_ARRAY) return QL_EFORMAT;
    int64_t i;
    int big;
    if (decode_num(v->type, v->data, &i, NULL, &big) != 0) return QL_EFORMAT;
    if (big) return QL_ERANGE;
    *out = i;
    return 0;
}

int ql_gguf_value_f64(const ql_gguf_value_t *v, double *out) {
    if (!v || !out || !v->data || v->type == QL_GGUF_TYPE_ARRAY) return QL_EFORMAT;
    int big;
    if (decode_num(v->type, v->data, NULL, out, &big) < 0) return QL_EFORMAT;
    return 0;
}

/* ---- tensors ---- */

int64_t ql_gguf_n_tensors(const ql_gguf_t *g) { return g ? g->n_tensors : 0; }

const ql_gguf_tensor_t *ql_gguf_tensor(const ql_gguf_t *g, int64_t i) {
    return g && i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const ql_gguf_tensor_t *ql_gguf_find_tensor(const ql_gguf_t *g, const char *name) {
    if (!g || !name) return NULL;
    int64_t i = index_find(&g->tensor_index, name, strlen(name));
    return i < 0 ? NULL : &g->tensors[i];
}
