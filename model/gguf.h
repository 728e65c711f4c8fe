/*
 * model/gguf.h — GGUF (v2 and v3) reader over mmap, and the writer quill mkmodel uses.
 *
 * Every file is hostile: counts, lengths, offsets and dimensions are checked for overflow
 * and against the file size before use, and nothing is allocated in proportion to a
 * claimed count before that count is proven to fit in the file. Strings point into the
 * mapping and are NOT NUL-terminated (ql_gguf_str_t); the map lives until ql_gguf_free().
 */
#ifndef QL_MODEL_GGUF_H
#define QL_MODEL_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "model/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QL_GGUF_MAX_DIMS 4
#define QL_GGUF_DEFAULT_ALIGNMENT 32

/* Metadata value types (on the wire). */
typedef enum ql_gguf_type_e {
    QL_GGUF_TYPE_UINT8 = 0,
    QL_GGUF_TYPE_INT8 = 1,
    QL_GGUF_TYPE_UINT16 = 2,
    QL_GGUF_TYPE_INT16 = 3,
    QL_GGUF_TYPE_UINT32 = 4,
    QL_GGUF_TYPE_INT32 = 5,
    QL_GGUF_TYPE_FLOAT32 = 6,
    QL_GGUF_TYPE_BOOL = 7,
    QL_GGUF_TYPE_STRING = 8,
    QL_GGUF_TYPE_ARRAY = 9,
    QL_GGUF_TYPE_UINT64 = 10,
    QL_GGUF_TYPE_INT64 = 11,
    QL_GGUF_TYPE_FLOAT64 = 12,
} ql_gguf_type_t;

typedef struct ql_gguf_str_s {
    const char *ptr; /* into the mapping; not NUL-terminated */
    uint64_t len;
} ql_gguf_str_t;

typedef struct ql_gguf_s ql_gguf_t; /* opaque */

typedef struct ql_gguf_tensor_s {
    ql_gguf_str_t name;
    int n_dims;
    int64_t ne[QL_GGUF_MAX_DIMS]; /* ne[0] = elements per row (fastest); unused dims are 1 */
    ql_dtype_t type;
    uint64_t offset;              /* from the start of the data section */
    uint64_t size;                /* bytes */
    const void *data;             /* into the mapping */
} ql_gguf_tensor_t;

/* ---- reading ---- */

/** Maps and validates `path`. On error writes one precise line into err (which key or
 *  tensor, at which file offset) and returns QL_EIO / QL_ENOENT (cannot open), QL_EFORMAT
 *  (malformed), QL_EUNSUPPORTED (unknown version or tensor type) or QL_ENOMEM. On success
 *  *out is owned by the caller: release with ql_gguf_free(). */
QL_API int ql_gguf_open(const char *path, ql_gguf_t **out, char *err, size_t errlen);
/** Same over a caller's buffer (fuzzing, tests); the buffer must outlive the handle. */
QL_API int ql_gguf_open_mem(const void *data, size_t size, ql_gguf_t **out, char *err, size_t errlen);
QL_API void ql_gguf_free(ql_gguf_t *g); /* NULL is a no-op */

QL_API uint32_t ql_gguf_version(const ql_gguf_t *g);
QL_API uint64_t ql_gguf_alignment(const ql_gguf_t *g);
QL_API uint64_t ql_gguf_data_offset(const ql_gguf_t *g); /* file offset of the data section */
QL_API uint64_t ql_gguf_file_size(const ql_gguf_t *g);

/* Metadata: keys are indexed 0..n-1 in file order. */
QL_API int64_t ql_gguf_n_kv(const ql_gguf_t *g);
/** Index of `key`, or -1. */
QL_API int64_t ql_gguf_find_key(const ql_gguf_t *g, const char *key);
QL_API ql_gguf_str_t ql_gguf_key(const ql_gguf_t *g, int64_t i);
QL_API ql_gguf_type_t ql_gguf_kv_type(const ql_gguf_t *g, int64_t i);
/** For an array value: its element type and length (nested arrays: QL_GGUF_TYPE_ARRAY). */
QL_API ql_gguf_type_t ql_gguf_arr_type(const ql_gguf_t *g, int64_t i);
QL_API uint64_t ql_gguf_arr_len(const ql_gguf_t *g, int64_t i);

/* Typed getters by key. Integers convert between widths when the value fits; floats accept
 * float32/float64. @return 0, QL_ENOENT (no key), QL_EFORMAT (wrong type or not
 * representable). */
QL_API int ql_gguf_get_u32(const ql_gguf_t *g, const char *key, uint32_t *out);
QL_API int ql_gguf_get_i64(const ql_gguf_t *g, const char *key, int64_t *out);
QL_API int ql_gguf_get_f32(const ql_gguf_t *g, const char *key, float *out);
QL_API int ql_gguf_get_bool(const ql_gguf_t *g, const char *key, int *out);
QL_API int ql_gguf_get_str(const ql_gguf_t *g, const char *key, ql_gguf_str_t *out);

/* Array access by key index i. Element j of a numeric array as double/int64 (any numeric
 * element type), or of a string array. @return 0, QL_EINVAL (i not an array of that kind,
 * or j out of range). String arrays are indexed once, lazily, so access is O(1). */
QL_API int ql_gguf_arr_i64(const ql_gguf_t *g, int64_t i, uint64_t j, int64_t *out);
QL_API int ql_gguf_arr_f64(const ql_gguf_t *g, int64_t i, uint64_t j, double *out);
QL_API int ql_gguf_arr_str(const ql_gguf_t *g, int64_t i, uint64_t j, ql_gguf_str_t *out);
/** Raw element data of a fixed-size numeric array (little-endian, packed). */
QL_API const void *ql_gguf_arr_data(const ql_gguf_t *g, int64_t i);

/* Tensors, in file order. */
QL_API int64_t ql_gguf_n_tensors(const ql_gguf_t *g);
QL_API const ql_gguf_tensor_t *ql_gguf_tensor(const ql_gguf_t *g, int64_t i);
/** The tensor named `name`, or NULL. */
QL_API const ql_gguf_tensor_t *ql_gguf_find_tensor(const ql_gguf_t *g, const char *name);

/** Helper: 1 when s equals the C string c. */
QL_API int ql_gguf_str_eq(ql_gguf_str_t s, const char *c);

/* ---- writing ---- */

typedef struct ql_gguf_writer_s ql_gguf_writer_t; /* opaque */

/** Starts a GGUF v3 file in memory (metadata and tensor infos are buffered; tensor data is
 *  streamed at ql_gguf_writer_write()). */
QL_API ql_gguf_writer_t *ql_gguf_writer_init(void);
QL_API void ql_gguf_writer_free(ql_gguf_writer_t *w);

QL_API int ql_gguf_writer_set_u32(ql_gguf_writer_t *w, const char *key, uint32_t v);
QL_API int ql_gguf_writer_set_i32(ql_gguf_writer_t *w, const char *key, int32_t v);
QL_API int ql_gguf_writer_set_u64(ql_gguf_writer_t *w, const char *key, uint64_t v);
QL_API int ql_gguf_writer_set_f32(ql_gguf_writer_t *w, const char *key, float v);
QL_API int ql_gguf_writer_set_bool(ql_gguf_writer_t *w, const char *key, int v);
QL_API int ql_gguf_writer_set_str(ql_gguf_writer_t *w, const char *key, const char *v);
/** Array of fixed-size elements of type `elem` (not STRING/ARRAY), `n` of them at `data`. */
QL_API int ql_gguf_writer_set_arr(ql_gguf_writer_t *w, const char *key, ql_gguf_type_t elem,
                                  const void *data, uint64_t n);
QL_API int ql_gguf_writer_set_arr_str(ql_gguf_writer_t *w, const char *key,
                                      const char *const *v, uint64_t n);
/** Declares a tensor; its bytes come from `fill(ud, index, buf, size)` at write time so a
 *  multi-GiB model is never held in memory. */
typedef int (*ql_gguf_fill_fn)(void *ud, int64_t index, void *buf, size_t size);
QL_API int ql_gguf_writer_add_tensor(ql_gguf_writer_t *w, const char *name, ql_dtype_t type,
                                     int n_dims, const int64_t *ne, ql_gguf_fill_fn fill, void *ud);
/** Writes the file (to a temporary name, renamed on success). @return 0, QL_EIO or the
 *  first error a fill callback returned. */
QL_API int ql_gguf_writer_write(ql_gguf_writer_t *w, const char *path, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_GGUF_H */
