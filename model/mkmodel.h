/*
 * model/mkmodel.h — random-weight Llama-family models (`quill mkmodel`): a named shape or
 * one described field by field, written as a GGUF file that llama.cpp and quill load, with
 * deterministic weights (same seed, same bytes) and a small trained byte-level BPE
 * vocabulary with ChatML control tokens, so that text works end to end.
 *
 * Weights: linear layers std ~0.02 in the chosen type, norms ~1 (F32), the token embedding
 * (and an untied output) in the chosen type for f32/f16/bf16 and q8_0 for the quantized
 * types. Every tensor is generated on its own from (seed, tensor index, element or block
 * index), so the writer streams a multi-GiB model tensor by tensor.
 */
#ifndef QL_MODEL_MKMODEL_H
#define QL_MODEL_MKMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "model/gguf.h"
#include "model/quant.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ql_mkmodel_arch_e {
    QL_MKMODEL_ARCH_LLAMA = 0,
    QL_MKMODEL_ARCH_QWEN2 = 1, /* Llama plus q/k/v biases */
    QL_MKMODEL_ARCH_QWEN3 = 2, /* qwen2's RoPE, no biases, per-head q/k RMSNorm weights */
} ql_mkmodel_arch_t;

/* Fixed token ids of every generated vocabulary. */
#define QL_MKMODEL_TOKEN_ENDOFTEXT 0 /* <|endoftext|>: unknown token */
#define QL_MKMODEL_TOKEN_IM_START 1  /* <|im_start|>: bos */
#define QL_MKMODEL_TOKEN_IM_END 2    /* <|im_end|>: eos and padding */
#define QL_MKMODEL_N_SPECIAL 3
#define QL_MKMODEL_FIRST_BYTE_TOKEN 3 /* 256 byte tokens follow, in GPT-2's byte order */
#define QL_MKMODEL_MERGES_MAX 1000    /* merges trained at most (fewer if the vocabulary is small) */

typedef struct ql_mkmodel_shape_s {
    char name[64];       /* shape name; general.name is "quill-random <name>" */
    int arch;            /* ql_mkmodel_arch_t */
    int64_t n_layer;
    int64_t n_embd;
    int64_t n_head;      /* head_dim = n_embd / n_head */
    int64_t n_head_kv;
    int64_t n_ff;
    int64_t n_vocab;     /* >= 259: 3 control tokens + 256 byte tokens, then merges, unused */
    int64_t n_ctx;       /* <arch>.context_length */
    float rope_freq_base;
    float rms_eps;
    int tied;            /* 1: no output.weight, the output projection is token_embd */
    /* Llama 3 rope scaling, written as the rope_freqs.weight tensor (as llama.cpp's convert
     * does); factor 0 = none. */
    float rope_scaling_factor;
    float rope_scaling_low_freq_factor;
    float rope_scaling_high_freq_factor;
    int64_t rope_scaling_orig_ctx;
    /* 1: YaRN instead (rope.scaling.type "yarn" with the factor and original context, no
     * rope_freqs.weight; the freq factors are not used) */
    int rope_scaling_yarn;
} ql_mkmodel_shape_t;

/** "tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b": the named shapes, for messages. */
QL_API const char *ql_mkmodel_shape_names(void);
/** Fills *out with the named shape. @return 0, QL_ENOENT (unknown name) or QL_EINVAL. */
QL_API int ql_mkmodel_shape_get(const char *name, ql_mkmodel_shape_t *out);

/** The starting point of a shape file: every size 0 (required), arch llama, n_head_kv 0
 *  (= n_head), rope_freq_base 10000, rms_eps 1e-5, n_ctx 2048, tied 1, no rope scaling. */
QL_API void ql_mkmodel_shape_blank(ql_mkmodel_shape_t *s);
/** "n_layer, n_embd, ...": the fields a shape file may hold, for messages. */
QL_API const char *ql_mkmodel_shape_fields(void);
/** Sets field `key` from a shape file. Integer fields take integral numbers in range, float
 *  fields numbers, `tied` a bool, `arch` "llama", "qwen2" or "qwen3", `name` a string. On error
 *  writes one line naming the field into err. @return 0, QL_ENOENT (unknown field: the line
 *  lists the known ones) or QL_EINVAL (wrong kind or out of range). */
QL_API int ql_mkmodel_shape_set_num(ql_mkmodel_shape_t *s, const char *key, double v, char *err, size_t errlen);
QL_API int ql_mkmodel_shape_set_str(ql_mkmodel_shape_t *s, const char *key, const char *v, char *err,
                                    size_t errlen);
QL_API int ql_mkmodel_shape_set_bool(ql_mkmodel_shape_t *s, const char *key, int v, char *err, size_t errlen);
/** Checks a complete shape for weight type `wtype`: every size set and consistent (n_embd a
 *  multiple of n_head with an even head size, n_head a multiple of n_head_kv, rows a
 *  multiple of the type's block). On error writes one line naming the field.
 *  @return 0 or QL_EINVAL. */
QL_API int ql_mkmodel_shape_check(const ql_mkmodel_shape_t *s, ql_dtype_t wtype, char *err, size_t errlen);

/** "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1": the accepted weight types. */
QL_API const char *ql_mkmodel_type_names(void);
/** Parses one of ql_mkmodel_type_names(). @return 0 or QL_EINVAL. */
QL_API int ql_mkmodel_type_parse(const char *name, ql_dtype_t *out);
/** The type token_embd (and an untied output) get for linear-layer type `wtype`. */
QL_API ql_dtype_t ql_mkmodel_embd_type(ql_dtype_t wtype);

typedef struct ql_mkmodel_params_s {
    ql_mkmodel_shape_t shape;
    uint64_t seed;
    ql_dtype_t wtype; /* linear layers */
} ql_mkmodel_params_t;

typedef struct ql_mkmodel_s ql_mkmodel_t; /* opaque */

/** Checks `p`, trains the vocabulary and declares every key and tensor on a GGUF writer.
 *  On success *out is owned by the caller: release with ql_mkmodel_free(). On error writes
 *  one line into err. @return 0, QL_EINVAL (bad shape or type) or QL_ENOMEM. */
QL_API int ql_mkmodel_init(const ql_mkmodel_params_t *p, ql_mkmodel_t **out, char *err, size_t errlen);
QL_API void ql_mkmodel_free(ql_mkmodel_t *m); /* NULL is a no-op */
/** Generates and writes the model to `path` (replaced atomically). On error writes one line
 *  (the path and errno text for I/O) into err. @return 0, QL_EIO or QL_ENOMEM. */
QL_API int ql_mkmodel_write(ql_mkmodel_t *m, const char *path, char *err, size_t errlen);

/** The writer holding the declared model, borrowed until ql_mkmodel_free(). */
QL_API ql_gguf_writer_t *ql_mkmodel_writer(ql_mkmodel_t *m);
QL_API int64_t ql_mkmodel_n_tensors(const ql_mkmodel_t *m);
/** Bytes of all tensor data (without alignment padding). */
QL_API uint64_t ql_mkmodel_data_bytes(const ql_mkmodel_t *m);
/** Number of BPE merges the vocabulary holds (<= QL_MKMODEL_MERGES_MAX). */
QL_API int64_t ql_mkmodel_n_merges(const ql_mkmodel_t *m);
/** Generates tensor i's bytes into buf[size] (size = the tensor's byte size), exactly what
 *  ql_mkmodel_write() writes. @return 0 or QL_EINVAL. */
QL_API int ql_mkmodel_tensor_data(const ql_mkmodel_t *m, int64_t i, void *buf, size_t size);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_MKMODEL_H */
