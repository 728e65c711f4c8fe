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
/* Arrays of arrays nest at most this deep (an array of scalars has depth 1). */
#define QL_GGUF_MAX_ARRAY_DEPTH 8

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

/** Name of a value type ("u32", "f32", "string", "array"...), or NULL for an unknown id. */
QL_API const char *ql_gguf_type_name(int t);
/** Bytes of one value of a fixed-size type; 0 for STRING, ARRAY and unknown ids. */
QL_API size_t ql_gguf_type_size(int t);

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

/** Maps and validates `path` (read-only, MAP_PRIVATE; the descriptor is closed before return). On error writes one precise line into err (which key or
 *  tensor, at which file offset; for ql_gguf_open also the path, and strerror for open/mmap
 *  failures) and returns QL_EIO / QL_ENOENT (cannot open), QL_EFORMAT (malformed),
 *  QL_EUNSUPPORTED (unknown version or tensor type), QL_ENOMEM or QL_EINVAL (NULL argument);
 *  *out is then NULL. On success *out is owned by the caller: release with ql_gguf_free().
 *  Thread: any; the handle is immutable and may be shared by threads once opened. */
QL_API int ql_gguf_open(const char *path, ql_gguf_t **out, char *err, size_t errlen);
/** Same over a caller's buffer (fuzzing, tests); the buffer must outlive the handle. */
QL_API int ql_gguf_open_mem(const void *data, size_t size, ql_gguf_t **out, char *err, size_t errlen);
QL_API void ql_gguf_free(ql_gguf_t *g); /* NULL is a no-op */

QL_API uint32_t ql_gguf_version(const ql_gguf_t *g);
QL_API uint64_t ql_gguf_alignment(const ql_gguf_t *g);
/* File offset of the data section (a multiple of the alignment). A file without tensors may
 * end before its data section (llama.cpp's vocab-only files do): the offset can then exceed
 * the file size. */
QL_API uint64_t ql_gguf_data_offset(const ql_gguf_t *g);
QL_API uint64_t ql_gguf_file_size(const ql_gguf_t *g);

/* Metadata: keys are indexed 0..n-1 in file order. For an index out of range, ql_gguf_key
 * returns {NULL, 0}, ql_gguf_kv_type and ql_gguf_arr_type return (ql_gguf_type_t)-1 and
 * ql_gguf_arr_len returns 0. Thread: every read function may be called from any thread. */
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
 * representable) or QL_EINVAL (NULL argument). */
QL_API int ql_gguf_get_u32(const ql_gguf_t *g, const char *key, uint32_t *out);
QL_API int ql_gguf_get_i64(const ql_gguf_t *g, const char *key, int64_t *out);
QL_API int ql_gguf_get_f32(const ql_gguf_t *g, const char *key, float *out);
QL_API int ql_gguf_get_bool(const ql_gguf_t *g, const char *key, int *out);
QL_API int ql_gguf_get_str(const ql_gguf_t *g, const char *key, ql_gguf_str_t *out);

/* Array access by key index i. Element j of a numeric array as double/int64 (any numeric
 * element type), or of a string array. @return 0, QL_EINVAL (i not an array of that kind,
 * or j out of range). ql_gguf_arr_i64 takes integer and bool elements (QL_ERANGE for a
 * uint64 above INT64_MAX); ql_gguf_arr_f64 takes every numeric element type. String arrays
 * are indexed when the file is opened, so access is O(1). */
QL_API int ql_gguf_arr_i64(const ql_gguf_t *g, int64_t i, uint64_t j, int64_t *out);
QL_API int ql_gguf_arr_f64(const ql_gguf_t *g, int64_t i, uint64_t j, double *out);
QL_API int ql_gguf_arr_str(const ql_gguf_t *g, int64_t i, uint64_t j, ql_gguf_str_t *out);
/** Raw element data of a fixed-size numeric array (little-endian, packed, unaligned), or
 *  NULL when i is not such an array. */
QL_API const void *ql_gguf_arr_data(const ql_gguf_t *g, int64_t i);

/* Generic values, for walking any key at any depth (nested arrays included). A value is a
 * view into the mapping and lives as long as the handle. */
typedef struct ql_gguf_value_s {
    ql_gguf_type_t type;
    uint64_t offset;          /* file offset of the value's encoding */
    const void *data;         /* fixed-size scalar: its bytes (little-endian, unaligned);
                                 ARRAY: the first element's encoding (for fixed-size element
                                 types: the packed elements); STRING: NULL */
    ql_gguf_str_t str;        /* STRING only */
    ql_gguf_type_t arr_type;  /* ARRAY only: element type */
    uint64_t arr_len;         /* ARRAY only: number of elements */
    const uint8_t *_base;     /* private: the file, and a cursor over the elements */
    uint64_t _size, _j, _pos;
} ql_gguf_value_t;

/** The value of key i. @return 0 or QL_EINVAL (i out of range). */
QL_API int ql_gguf_kv_value(const ql_gguf_t *g, int64_t i, ql_gguf_value_t *out);
/** Element j of an array value. O(1) for fixed-size elements and for the next element after
 *  the previous call (*arr keeps a cursor, so walking j = 0, 1, 2... is linear overall); other
 *  orders walk from the start. @return 0 or QL_EINVAL (not an array, or j >= arr_len). */
QL_API int ql_gguf_value_elem(ql_gguf_value_t *arr, uint64_t j, ql_gguf_value_t *out);
/** An integer or bool value as int64. @return 0, QL_EFORMAT (other type) or QL_ERANGE (a
 *  uint64 above INT64_MAX). */
QL_API int ql_gguf_value_i64(const ql_gguf_value_t *v, int64_t *out);
/** Any numeric or bool value as double. @return 0 or QL_EFORMAT. */
QL_API int ql_gguf_value_f64(const ql_gguf_value_t *v, double *out);

/* Tensors, in file order. */
QL_API int64_t ql_gguf_n_tensors(const ql_gguf_t *g);
QL_API const ql_gguf_tensor_t *ql_gguf_tensor(const ql_gguf_t *g, int64_t i);
/** The tensor named `name`, or NULL. */
QL_API const ql_gguf_tensor_t *ql_gguf_find_tensor(const ql_gguf_t *g, const char *name);

/** Helper: 1 when s equals the C string c. */
QL_API int ql_gguf_str_eq(ql_gguf_str_t s, const char *c);
/** Writes s into buf (always NUL-terminated when n > 0) for display on one line: valid UTF-8
 *  is kept, control characters, backslashes and invalid bytes become \n, \t, \\ or \xNN,
 *  and after `max_chars` characters the text is cut and ends with "...".
 *  @return buf. */
QL_API char *ql_gguf_str_escape(ql_gguf_str_t s, size_t max_chars, char *buf, size_t n);

/* ---- writing ---- */

typedef struct ql_gguf_writer_s ql_gguf_writer_t; /* opaque */

/** Starts a GGUF v3 file in memory (metadata and tensor infos are buffered; tensor data is
 *  streamed at ql_gguf_writer_write()). Tensor data is aligned to 32 bytes unless
 *  "general.alignment" is set (as a uint32 power of two). Release with
 *  ql_gguf_writer_free() (NULL is a no-op); dies on OOM (ql_xcalloc). Thread: one at a time.
 *
 *  The set_* and add_tensor functions copy their arguments and return 0, QL_EINVAL (NULL or
 *  empty key or name, a key or tensor name set twice, a bad type, dims or array) or
 *  QL_ENOMEM. A key is written once: setting it again is QL_EINVAL, not a replacement. */
QL_API ql_gguf_writer_t *ql_gguf_writer_init(void);
QL_API void ql_gguf_writer_free(ql_gguf_writer_t *w);

QL_API int ql_gguf_writer_set_u32(ql_gguf_writer_t *w, const char *key, uint32_t v);
QL_API int ql_gguf_writer_set_i32(ql_gguf_writer_t *w, const char *key, int32_t v);
QL_API int ql_gguf_writer_set_u64(ql_gguf_writer_t *w, const char *key, uint64_t v);
QL_API int ql_gguf_writer_set_f32(ql_gguf_writer_t *w, const char *key, float v);
QL_API int ql_gguf_writer_set_bool(ql_gguf_writer_t *w, const char *key, int v);
QL_API int ql_gguf_writer_set_str(ql_gguf_writer_t *w, const char *key, const char *v);
/** A scalar of any fixed-size type (not STRING/ARRAY): ql_gguf_type_size(type) bytes at v. */
QL_API int ql_gguf_writer_set_scalar(ql_gguf_writer_t *w, const char *key, ql_gguf_type_t type,
                                     const void *v);
/** Array of fixed-size elements of type `elem` (not STRING/ARRAY), `n` of them at `data`. */
QL_API int ql_gguf_writer_set_arr(ql_gguf_writer_t *w, const char *key, ql_gguf_type_t elem,
                                  const void *data, uint64_t n);
QL_API int ql_gguf_writer_set_arr_str(ql_gguf_writer_t *w, const char *key,
                                      const char *const *v, uint64_t n);
/** Any array, nested ones included (at most QL_GGUF_MAX_ARRAY_DEPTH deep): `n` elements of
 *  type `type` at `data`, which holds them packed for fixed-size types, as `const char *[n]`
 *  for STRING, and as `ql_gguf_arr_desc_t[n]` for ARRAY. */
typedef struct ql_gguf_arr_desc_s {
    ql_gguf_type_t type;
    const void *data;
    uint64_t n;
} ql_gguf_arr_desc_t;
QL_API int ql_gguf_writer_set_arr_desc(ql_gguf_writer_t *w, const char *key, const ql_gguf_arr_desc_t *arr);
/** Declares a tensor; its bytes come from `fill(ud, index, buf, size)` at write time so a
 *  multi-GiB model is never held in memory (only the largest tensor is). `index` counts
 *  tensors from 0 in the order they were added; `fill` must write all `size` bytes and
 *  return 0 or a negative QL_E*. A NULL fill writes zeros. `ne` has n_dims (1..4) positive
 *  dimensions, ne[0] a multiple of the type's block size; QL_EOVERFLOW when the size does
 *  not fit. `ud` is borrowed until ql_gguf_writer_write() returns. */
typedef int (*ql_gguf_fill_fn)(void *ud, int64_t index, void *buf, size_t size);
QL_API int ql_gguf_writer_add_tensor(ql_gguf_writer_t *w, const char *name, ql_dtype_t type,
                                     int n_dims, const int64_t *ne, ql_gguf_fill_fn fill, void *ud);
/** Writes the file (to a temporary name in the same folder, renamed on success; nothing is
 *  left behind on failure). May be called again. On error writes one line into err.
 *  @return 0, QL_EINVAL, QL_EIO, QL_ENOMEM or the first error a fill callback returned
 *  (a positive return from fill counts as QL_EINVAL). */
QL_API int ql_gguf_writer_write(ql_gguf_writer_t *w, const char *path, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_GGUF_H */
