/*
 * core/core.h — quill's foundation: status codes, logging, always-on asserts
 * and allocation helpers. Every other module includes this; it includes only libc.
 */
#ifndef QL_CORE_H
#define QL_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define QL_API __attribute__((visibility("default")))
#define QL_PRINTF(fmt_idx, arg_idx) __attribute__((format(printf, fmt_idx, arg_idx)))
#define QL_NORETURN __attribute__((noreturn))
#define QL_UNUSED __attribute__((unused))
#else
#define QL_API
#define QL_PRINTF(fmt_idx, arg_idx)
#define QL_NORETURN
#define QL_UNUSED
#endif

#define QL_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define QL_MIN(a, b) ((a) < (b) ? (a) : (b))
#define QL_MAX(a, b) ((a) > (b) ? (a) : (b))

/* ---- status codes ---- */

/* Functions return 0 on success and a negative QL_E* on failure. Positive values are
 * reserved for documented non-fatal outcomes. Values are stable: append only. */
typedef enum ql_status_e {
    QL_OK = 0,
    QL_EINVAL = -1,       /* invalid argument */
    QL_ENOMEM = -2,       /* out of memory */
    QL_EIO = -3,          /* I/O error (errno has details) */
    QL_ENOENT = -4,       /* no such file or entry */
    QL_EFORMAT = -5,      /* malformed input file or data */
    QL_EUNSUPPORTED = -6, /* valid but not supported by this build */
    QL_ERANGE = -7,       /* value out of range */
    QL_ENOSPC = -8,       /* no space left in a fixed pool (KV blocks, queue) */
    QL_ECUDA = -9,        /* CUDA or cuBLAS error */
    QL_ECANCELED = -10,   /* operation cancelled */
    QL_ETIMEDOUT = -11,   /* timed out */
    QL_EBUSY = -12,       /* resource busy, try later */
    QL_ENOTIMPL = -13,    /* not implemented yet */
    QL_EOVERFLOW = -14,   /* arithmetic overflow in a size computation */
    QL_ESTATE = -15,      /* call not valid in the object's current state */
    QL_EINTERNAL = -16,   /* internal error (a bug) */
} ql_status_t;

/** Returns a static, human-readable string for a status code; never NULL. Thread: any. */
QL_API const char *ql_strerror(int status);

/** Writes one formatted line into a caller's error buffer err[errlen] (truncated to fit; NULL
 *  or a zero length is a no-op): how functions that take (char *err, size_t errlen) report. */
QL_API void ql_errf(char *err, size_t errlen, const char *fmt, ...) QL_PRINTF(3, 4);
QL_API void ql_verrf(char *err, size_t errlen, const char *fmt, va_list ap);

/* ---- logging ---- */

typedef enum ql_log_level_e {
    QL_LOG_LEVEL_ERROR = 0,
    QL_LOG_LEVEL_WARN = 1,
    QL_LOG_LEVEL_INFO = 2,
    QL_LOG_LEVEL_DEBUG = 3,
} ql_log_level_t;

/** Sets the threshold: messages above it are dropped. Thread: any (atomic). */
QL_API void ql_log_set_level(ql_log_level_t level);
QL_API ql_log_level_t ql_log_get_level(void);
/** Parses "error", "warn", "info" or "debug". @return 0 or QL_EINVAL. */
QL_API int ql_log_level_parse(const char *s, ql_log_level_t *out);
QL_API const char *ql_log_level_name(ql_log_level_t level);

/** Where log lines go: defaults to stderr. `fn` receives one complete line without the
 *  trailing newline. Pass NULL to restore stderr. Used by tests to capture output. */
typedef void (*ql_log_sink_fn)(ql_log_level_t level, const char *line, void *ud);
QL_API void ql_log_set_sink(ql_log_sink_fn fn, void *ud);

/** Writes one line: "<time> <LEVEL> [<module>] <func>: [req <id>] <message>".
 *  `req_id` may be NULL (not on a request path). Thread: any; lines never interleave. */
QL_API void ql_log_write(ql_log_level_t level, const char *module, const char *func,
                         const char *req_id, const char *fmt, ...) QL_PRINTF(5, 6);
QL_API void ql_log_vwrite(ql_log_level_t level, const char *module, const char *func,
                          const char *req_id, const char *fmt, va_list ap);

/* Each .c file defines QL_LOG_MODULE before including core.h to tag its lines. */
#ifndef QL_LOG_MODULE
#define QL_LOG_MODULE "quill"
#endif

#define QL_LOG_AT(lvl, req, ...)                                                     \
    do {                                                                             \
        if ((int)(lvl) <= (int)ql_log_get_level())                                   \
            ql_log_write((lvl), QL_LOG_MODULE, __func__, (req), __VA_ARGS__);        \
    } while (0)
#define QL_LOG_ERROR(...) QL_LOG_AT(QL_LOG_LEVEL_ERROR, NULL, __VA_ARGS__)
#define QL_LOG_WARN(...) QL_LOG_AT(QL_LOG_LEVEL_WARN, NULL, __VA_ARGS__)
#define QL_LOG_INFO(...) QL_LOG_AT(QL_LOG_LEVEL_INFO, NULL, __VA_ARGS__)
#define QL_LOG_DEBUG(...) QL_LOG_AT(QL_LOG_LEVEL_DEBUG, NULL, __VA_ARGS__)
/* Request-path variants: the first argument is the request id string. */
#define QL_RLOG_ERROR(req, ...) QL_LOG_AT(QL_LOG_LEVEL_ERROR, (req), __VA_ARGS__)
#define QL_RLOG_WARN(req, ...) QL_LOG_AT(QL_LOG_LEVEL_WARN, (req), __VA_ARGS__)
#define QL_RLOG_INFO(req, ...) QL_LOG_AT(QL_LOG_LEVEL_INFO, (req), __VA_ARGS__)
#define QL_RLOG_DEBUG(req, ...) QL_LOG_AT(QL_LOG_LEVEL_DEBUG, (req), __VA_ARGS__)

/* ---- asserts ---- */

/** Called by ql_abort() after printing the message, before abort(). A test may install a
 *  hook that longjmps out; the default (NULL) just aborts. */
typedef void (*ql_abort_hook_fn)(const char *file, int line, const char *msg);
QL_API void ql_set_abort_hook(ql_abort_hook_fn hook);

/** Prints "file:line: msg" to the log and aborts (after the hook, if one is set). */
QL_API QL_NORETURN void ql_abort(const char *file, int line, const char *fmt, ...) QL_PRINTF(3, 4);

/* NOTE(assert): QL_ASSERT guards invariants and stays on under NDEBUG. Never use it for
 * client input or runtime conditions: those return a status. */
#define QL_ASSERT(x)                                                                 \
    do {                                                                             \
        if (!(x)) ql_abort(__FILE__, __LINE__, "assertion failed: %s", #x);          \
    } while (0)
#ifdef QL_DEBUG_CHECKS
#define QL_DEBUG_ASSERT(x) QL_ASSERT(x)
#else
#define QL_DEBUG_ASSERT(x) ((void)0)
#endif

/* ---- allocation ---- */

/* ql_x* allocators die (ql_abort) on OOM: for small fixed-size allocations only. Large or
 * client-sized buffers use plain malloc and return QL_ENOMEM. All accept size 0. */
QL_API void *ql_xmalloc(size_t size);
QL_API void *ql_xcalloc(size_t n, size_t size);
QL_API void *ql_xrealloc(void *p, size_t size);
QL_API char *ql_xstrdup(const char *s);
QL_API char *ql_xstrndup(const char *s, size_t n);

/** Overflow-checked size arithmetic: returns 0 and stores the result, or QL_EOVERFLOW. */
static inline int ql_size_mul(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return QL_EOVERFLOW;
    *out = a * b;
    return 0;
}
static inline int ql_size_add(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return QL_EOVERFLOW;
    *out = a + b;
    return 0;
}

/* ---- arena ---- */

/* A bump allocator for per-request and per-load memory: allocations are freed all at once.
 * Chunks grow geometrically; an allocation never moves. */
typedef struct ql_arena_chunk_s ql_arena_chunk_t;
typedef struct ql_arena_s {
    ql_arena_chunk_t *_head;
    size_t _chunk_size;
} ql_arena_t;

QL_API void ql_arena_init(ql_arena_t *a, size_t chunk_size);
/** Returns `size` bytes aligned to 16, or NULL when malloc fails. */
QL_API void *ql_arena_alloc(ql_arena_t *a, size_t size);
QL_API char *ql_arena_strndup(ql_arena_t *a, const char *s, size_t n);
/** Frees every chunk; the arena may be reused. */
QL_API void ql_arena_clear(ql_arena_t *a);

/* ---- time ---- */

/** Monotonic time in nanoseconds. */
QL_API uint64_t ql_time_ns(void);

/* ---- version ---- */

QL_API const char *ql_version(void);
QL_API const char *ql_git_commit(void);

#ifdef __cplusplus
}
#endif

#endif /* QL_CORE_H */
