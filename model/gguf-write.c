/*
 * model/gguf-write.c — the GGUF v3 writer: buffers metadata and tensor infos in memory and
 * streams tensor data from fill callbacks, one tensor at a time, into a temporary file that
 * is renamed over the destination on success. `quill mkmodel` and the tests write models
 * with it; model/gguf.c reads them back.
 */
#define QL_LOG_MODULE "gguf"
#include "model/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "quill writes GGUF (little-endian) on little-endian hosts only"
#endif

#define GGUF_VERSION 3

/* A growable byte buffer; `oom` is sticky so a sequence of appends is checked once. */
typedef struct buf_s {
    uint8_t *p;
    size_t len, cap;
    int oom;
} buf_t;

typedef struct wtensor_s {
    char *name;
    ql_dtype_t type;
    int n_dims;
    int64_t ne[QL_GGUF_MAX_DIMS];
    uint64_t size;   /* bytes */
    uint64_t offset; /* in the data section; set at write time */
    ql_gguf_fill_fn fill;
    void *ud;
} wtensor_t;

struct ql_gguf_writer_s {
    buf_t kv;           /* the encoded key/value pairs, in order */
    int64_t n_kv;
    char **keys;        /* [n_kv] for the duplicate check */
    size_t keys_cap;
    wtensor_t *tensors; /* [n_tensors] */
    int64_t n_tensors;
    size_t tensors_cap;
    uint64_t alignment;
};

/* ---- buffer ---- */

static void buf_put(buf_t *b, const void *p, size_t n) {
    if (b->oom) return;
    if (n > SIZE_MAX - b->len) {
        b->oom = 1;
        return;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void buf_u32(buf_t *b, uint32_t v) { buf_put(b, &v, 4); }
static void buf_u64(buf_t *b, uint64_t v) { buf_put(b, &v, 8); }
static void buf_str(buf_t *b, const char *s) {
    size_t n = strlen(s);
    buf_u64(b, n);
    buf_put(b, s, n);
}

/* ---- lifetime ---- */

ql_gguf_writer_t *ql_gguf_writer_init(void) {
    ql_gguf_writer_t *w = ql_xcalloc(1, sizeof(*w));
    w->alignment = QL_GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void ql_gguf_writer_free(ql_gguf_writer_t *w) {
    if (!w) return;
    for (int64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (int64_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w->kv.p);
    free(w);
}

/* ---- metadata ---- */

/* Checks the key, appends it and the type; the caller appends the value and then calls
 * end_kv. On error nothing is appended. */
static int begin_kv(ql_gguf_writer_t *w, const char *key, ql_gguf_type_t type, size_t *mark) {
    if (!w || !key || !key[0]) return QL_EINVAL;
    for (int64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0) return QL_EINVAL;
    if ((size_t)w->n_kv == w->keys_cap) {
        size_t cap = w->keys_cap ? w->keys_cap * 2 : 32;
        char **k = realloc(w->keys, cap * sizeof(*k));
        if (!k) return QL_ENOMEM;
        w->keys = k;
        w->keys_cap = cap;
    }
    *mark = w->kv.len;
    buf_str(&w->kv, key);
    buf_u32(&w->kv, (uint32_t)type);
    return w->kv.oom ? QL_ENOMEM : 0;
}

/* Commits the pair (rc == 0) or rolls the buffer back to `mark`. */
static int end_kv(ql_gguf_writer_t *w, const char *key, size_t mark, int rc) {
    char *k = NULL;
    if (rc == 0 && !w->kv.oom && !(k = strdup(key))) rc = QL_ENOMEM;
    if (rc == 0 && w->kv.oom) rc = QL_ENOMEM;
    if (rc != 0) {
        w->kv.len = mark;
        w->kv.oom = 0;
        return rc;
    }
    w->keys[w->n_kv++] = k;
    return 0;
}

int ql_gguf_writer_set_scalar(ql_gguf_writer_t *w, const char *key, ql_gguf_type_t type, const void *v) {
    size_t sz = ql_gguf_type_size((int)type), mark;
    if (sz == 0 || !v) return QL_EINVAL;
    int is_align = key && strcmp(key, "general.alignment") == 0;
    uint32_t align = 0;
    if (is_align) {
        /* NOTE(alignment): the reader takes any unsigned integer here, but llama.cpp wants a
         * u32, so the writer only produces that. */
        if (type != QL_GGUF_TYPE_UINT32) return QL_EINVAL;
        memcpy(&align, v, 4);
        if (align == 0 || (align & (align - 1)) != 0) return QL_EINVAL;
    }
    int rc = begin_kv(w, key, type, &mark);
    if (rc) return rc;
    buf_put(&w->kv, v, sz);
    rc = end_kv(w, key, mark, 0);
    if (rc == 0 && is_align) w->alignment = align;
    return rc;
}

int ql_gguf_writer_set_u32(ql_gguf_writer_t *w, const char *key, uint32_t v) {
    return ql_gguf_writer_set_scalar(w, key, QL_GGUF_TYPE_UINT32, &v);
}
int ql_gguf_writer_set_i32(ql_gguf_writer_t *w, const char *key, int32_t v) {
    return ql_gguf_writer_set_scalar(w, key, QL_GGUF_TYPE_INT32, &v);
}
int ql_gguf_writer_set_u64(ql_gguf_writer_t *w, const char *key, uint64_t v) {
    return ql_gguf_writer_set_scalar(w, key, QL_GGUF_TYPE_UINT64, &v);
}
int ql_gguf_writer_set_f32(ql_gguf_writer_t *w, const char *key, float v) {
    return ql_gguf_writer_set_scalar(w, key, QL_GGUF_TYPE_FLOAT32, &v);
}
int ql_gguf_writer_set_bool(ql_gguf_writer_t *w, const char *key, int v) {
    uint8_t b = v != 0;
    return ql_gguf_writer_set_scalar(w, key, QL_GGUF_TYPE_BOOL, &b);
}

int ql_gguf_writer_set_str(ql_gguf_writer_t *w, const char *key, const char *v) {
    size_t mark;
    if (!v) return QL_EINVAL;
    int rc = begin_kv(w, key, QL_GGUF_TYPE_STRING, &mark);
    if (rc) return rc;
    buf_str(&w->kv, v);
    return end_kv(w, key, mark, 0);
}

/* Appends an array's encoding (element type, count, elements); checks types, NULLs and the
 * nesting depth. */
static int put_array(buf_t *b, const ql_gguf_arr_desc_t *a, int depth) {
    if (!a || depth > QL_GGUF_MAX_ARRAY_DEPTH || !ql_gguf_type_name((int)a->type)) return QL_EINVAL;
    if (a->n > 0 && !a->data) return QL_EINVAL;
    buf_u32(b, (uint32_t)a->type);
    buf_u64(b, a->n);
    size_t es = ql_gguf_type_size((int)a->type), bytes;
    if (es > 0) {
        if (a->n > SIZE_MAX || ql_size_mul(es, (size_t)a->n, &bytes) != 0) return QL_ENOMEM;
        if (a->type == QL_GGUF_TYPE_BOOL)
            for (uint64_t j = 0; j < a->n; j++)
                if (((const uint8_t *)a->data)[j] > 1) return QL_EINVAL;
        buf_put(b, a->data, bytes);
        return 0;
    }
    for (uint64_t j = 0; j < a->n; j++) {
        if (a->type == QL_GGUF_TYPE_STRING) {
            const char *s = ((const char *const *)a->data)[j];
            if (!s) return QL_EINVAL;
            buf_str(b, s);
        } else {
            int rc = put_array(b, &((const ql_gguf_arr_desc_t *)a->data)[j], depth + 1);
            if (rc) return rc;
        }
        if (b->oom) return QL_ENOMEM;
    }
    return 0;
}

int ql_gguf_writer_set_arr_desc(ql_gguf_writer_t *w, const char *key, const ql_gguf_arr_desc_t *arr) {
    size_t mark;
    if (!arr) return QL_EINVAL;
    int rc = begin_kv(w, key, QL_GGUF_TYPE_ARRAY, &mark);
    if (rc) return rc;
    return end_kv(w, key, mark, put_array(&w->kv, arr, 1));
}

int ql_gguf_writer_set_arr(ql_gguf_writer_t *w, const char *key, ql_gguf_type_t elem, const void *data,
                           uint64_t n) {
    if (ql_gguf_type_size((int)elem) == 0) return QL_EINVAL;
    ql_gguf_arr_desc_t a = {elem, data, n};
    return ql_gguf_writer_set_arr_desc(w, key, &a);
}

int ql_gguf_writer_set_arr_str(ql_gguf_writer_t *w, const char *key, const char *const *v, uint64_t n) {
    ql_gguf_arr_desc_t a = {QL_GGUF_TYPE_STRING, v, n};
    return ql_gguf_writer_set_arr_desc(w, key, &a);
}

/* ---- tensors ---- */

int ql_gguf_writer_add_tensor(ql_gguf_writer_t *w, const char *name, ql_dtype_t type, int n_dims,
                              const int64_t *ne, ql_gguf_fill_fn fill, void *ud) {
    if (!w || !name || !name[0] || !ne || n_dims < 1 || n_dims > QL_GGUF_MAX_DIMS) return QL_EINVAL;
    if ((int)type < 0 || type >= QL_DTYPE_COUNT || ql_dtype_block_bytes((int)type) == 0) return QL_EINVAL;
    for (int64_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0) return QL_EINVAL;
    wtensor_t t = {.type = type, .n_dims = n_dims, .fill = fill, .ud = ud};
    int64_t rows = 1;
    for (int d = 0; d < QL_GGUF_MAX_DIMS; d++) {
        t.ne[d] = d < n_dims ? ne[d] : 1;
        if (t.ne[d] <= 0) return QL_EINVAL;
        if (d > 0) {
            if (rows > INT64_MAX / t.ne[d]) return QL_EOVERFLOW;
            rows *= t.ne[d];
        }
    }
    size_t row, size;
    int rc = ql_dtype_row_bytes((int)type, t.ne[0], &row);
    if (rc) return rc == QL_EOVERFLOW ? QL_EOVERFLOW : QL_EINVAL;
    if (rows > 0 && (uint64_t)rows > SIZE_MAX) return QL_EOVERFLOW;
    if (ql_size_mul(row, (size_t)rows, &size) != 0) return QL_EOVERFLOW;
    t.size = size;
    if ((size_t)w->n_tensors == w->tensors_cap) {
        size_t cap = w->tensors_cap ? w->tensors_cap * 2 : 64;
        wtensor_t *p = realloc(w->tensors, cap * sizeof(*p));
        if (!p) return QL_ENOMEM;
        w->tensors = p;
        w->tensors_cap = cap;
    }
    if (!(t.name = strdup(name))) return QL_ENOMEM;
    w->tensors[w->n_tensors++] = t;
    return 0;
}

/* ---- writing ---- */


/* Writes all n bytes, retrying short writes and EINTR. Returns 0 or -1 (errno set). */
static int write_all(int fd, const void *p, size_t n) {
    const uint8_t *q = p;
    while (n > 0) {
        ssize_t k = write(fd, q, n);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        q += k;
        n -= (size_t)k;
    }
    return 0;
}

static int write_pad(int fd, uint64_t pos, uint64_t align) {
    static const uint8_t k_zeros[256];
    uint64_t pad = (align - pos % align) % align;
    while (pad > 0) {
        size_t k = (size_t)QL_MIN(pad, sizeof(k_zeros));
        if (write_all(fd, k_zeros, k) != 0) return -1;
        pad -= k;
    }
    return 0;
}

/* Lays out the data section and encodes the header and tensor infos into *head. */
static int build_head(ql_gguf_writer_t *w, buf_t *head, size_t *max_size) {
    uint64_t off = 0, a = w->alignment;
    *max_size = 0;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        wtensor_t *t = &w->tensors[i];
        t->offset = off;
        uint64_t end = off + t->size; /* sizes fit size_t each; the sum is checked */
        if (end < off || end > UINT64_MAX - a) return QL_EOVERFLOW;
        off = (end + a - 1) / a * a;
        if (t->size > *max_size) *max_size = (size_t)t->size;
    }
    buf_put(head, "GGUF", 4);
    buf_u32(head, GGUF_VERSION);
    buf_u64(head, (uint64_t)w->n_tensors);
    buf_u64(head, (uint64_t)w->n_kv);
    buf_put(head, w->kv.p, w->kv.len);
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        buf_str(head, t->name);
        buf_u32(head, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims; d++) buf_u64(head, (uint64_t)t->ne[d]);
        buf_u32(head, (uint32_t)t->type);
        buf_u64(head, t->offset);
    }
    return head->oom ? QL_ENOMEM : 0;
}

int ql_gguf_writer_write(ql_gguf_writer_t *w, const char *path, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!w || !path || !path[0]) {
        ql_errf(err, errlen, "ql_gguf_writer_write: NULL writer or empty path");
        return QL_EINVAL;
    }
    buf_t head = {0};
    uint8_t *data = NULL;
    size_t max_size;
    int fd = -1, rc = build_head(w, &head, &max_size);
    char tmp[4096];
    tmp[0] = '\0';
    if (rc) {
        ql_errf(err, errlen, "%s: %s building the header", path, ql_strerror(rc));
        goto fail;
    }
    if (max_size > 0 && !(data = malloc(max_size))) {
        rc = QL_ENOMEM;
        ql_errf(err, errlen, "%s: out of memory for a %zu-byte tensor buffer", path, max_size);
        goto fail;
    }
    /* NOTE(tmp-name): O_EXCL on a name unique to this process and moment, in the same folder
     * so rename() is atomic; 0666 lets the umask decide the final permissions. */
    for (int attempt = 0; fd < 0; attempt++) {
        int k = snprintf(tmp, sizeof(tmp), "%s.%ld.%llu.tmp", path, (long)getpid(),
                         (unsigned long long)ql_time_ns());
        if (k < 0 || (size_t)k >= sizeof(tmp)) {
            rc = QL_EINVAL;
            tmp[0] = '\0';
            ql_errf(err, errlen, "%s: path too long", path);
            goto fail;
        }
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (fd < 0 && (errno != EEXIST || attempt == 8)) {
            int e = errno;
            tmp[0] = '\0';
            rc = QL_EIO;
            ql_errf(err, errlen, "cannot create a temporary file next to %s: %s", path, strerror(e));
            goto fail;
        }
    }
    if (write_all(fd, head.p, head.len) != 0 || write_pad(fd, head.len, w->alignment) != 0) goto io_fail;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        if (t->fill) {
            rc = t->fill(t->ud, i, data, (size_t)t->size);
            if (rc != 0) {
                if (rc > 0) rc = QL_EINVAL;
                ql_errf(err, errlen, "%s: filling tensor %lld '%s' failed: %s", path, (long long)i, t->name,
                        ql_strerror(rc));
                goto fail;
            }
        } else if (t->size > 0) {
            memset(data, 0, (size_t)t->size);
        }
        if (write_all(fd, data, (size_t)t->size) != 0 || write_pad(fd, t->offset + t->size, w->alignment) != 0)
            goto io_fail;
    }
    if (fsync(fd) != 0) goto io_fail;
    if (close(fd) != 0) {
        fd = -1;
        goto io_fail;
    }
    fd = -1;
    if (rename(tmp, path) != 0) {
        int e = errno;
        rc = QL_EIO;
        ql_errf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(e));
        goto fail;
    }
    free(head.p);
    free(data);
    return 0;

io_fail: {
    int e = errno;
    rc = QL_EIO;
    ql_errf(err, errlen, "cannot write %s: %s", tmp, strerror(e));
}
fail:
    if (fd >= 0) close(fd);
    if (tmp[0]) unlink(tmp);
    free(head.p);
    free(data);
    return rc;
}
