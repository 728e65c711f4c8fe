/*
 * core/alloc.c — allocation helpers: ql_x* (die on OOM, for small fixed sizes), the arena
 * (bump allocator freed all at once) and a monotonic clock.
 */
#include "core/core.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

void *ql_xmalloc(size_t size) {
    void *p = malloc(size ? size : 1);
    if (!p) ql_abort(__FILE__, __LINE__, "out of memory allocating %zu bytes", size);
    return p;
}

void *ql_xcalloc(size_t n, size_t size) {
    size_t total;
    if (ql_size_mul(n, size, &total) != 0)
        ql_abort(__FILE__, __LINE__, "allocation size overflow: %zu x %zu", n, size);
    void *p = calloc(total ? n : 1, total ? size : 1);
    if (!p) ql_abort(__FILE__, __LINE__, "out of memory allocating %zu bytes", total);
    return p;
}

void *ql_xrealloc(void *p, size_t size) {
    void *q = realloc(p, size ? size : 1);
    if (!q) ql_abort(__FILE__, __LINE__, "out of memory reallocating %zu bytes", size);
    return q;
}

char *ql_xstrndup(const char *s, size_t n) {
    char *d = ql_xmalloc(n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *ql_xstrdup(const char *s) { return ql_xstrndup(s, strlen(s)); }

/* ---- arena ---- */

struct ql_arena_chunk_s {
    ql_arena_chunk_t *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
};

#define QL_ARENA_ALIGN 16u

void ql_arena_init(ql_arena_t *a, size_t chunk_size) {
    a->_head = NULL;
    a->_chunk_size = chunk_size ? chunk_size : 4096;
}

void *ql_arena_alloc(ql_arena_t *a, size_t size) {
    size_t need = (size + QL_ARENA_ALIGN - 1) & ~(size_t)(QL_ARENA_ALIGN - 1);
    if (need < size) return NULL;
    ql_arena_chunk_t *c = a->_head;
    if (!c || c->cap - c->used < need) {
        size_t cap = a->_chunk_size;
        while (cap < need) {
            if (cap > SIZE_MAX / 2) return NULL;
            cap *= 2;
        }
        if (cap > SIZE_MAX - sizeof(*c)) return NULL;
        c = malloc(sizeof(*c) + cap);
        if (!c) return NULL;
        c->cap = cap;
        c->used = 0;
        c->next = a->_head;
        a->_head = c;
        /* later chunks grow so many small allocations make few chunks */
        if (a->_chunk_size < ((size_t)64 << 20)) a->_chunk_size *= 2;
    }
    void *p = c->data + c->used;
    c->used += need;
    return p;
}

char *ql_arena_strndup(ql_arena_t *a, const char *s, size_t n) {
    if (n == SIZE_MAX) return NULL;
    char *d = ql_arena_alloc(a, n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

void ql_arena_clear(ql_arena_t *a) {
    ql_arena_chunk_t *c = a->_head;
    while (c) {
        ql_arena_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    a->_head = NULL;
}

uint64_t ql_time_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
