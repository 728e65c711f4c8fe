/*
 * model/mkmodel.c — `quill mkmodel`: writes a Llama-family GGUF with deterministic random
 * weights and a small byte-level BPE vocabulary (see model/mkmodel.h).
 *
 * Sections: the named shapes and shape-file fields; weight types; the counter-based random
 * generator and the tensor fills; the vocabulary (GPT-2 byte mapping, a tiny BPE trainer over
 * a built-in text); the metadata and tensor table, written the way llama.cpp's
 * convert_hf_to_gguf.py writes them for these architectures.
 */
#define QL_LOG_MODULE "mkmodel"
#include "model/mkmodel.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- shapes ---- */

static const ql_mkmodel_shape_t k_shapes[] = {
    /* for unit and integration tests: every code path, milliseconds to write */
    {.name = "tiny", .arch = QL_MKMODEL_ARCH_LLAMA, .n_layer = 2, .n_embd = 64, .n_head = 4, .n_head_kv = 2,
     .n_ff = 128, .n_vocab = 512, .n_ctx = 512, .rope_freq_base = 10000.0f, .rms_eps = 1e-5f, .tied = 1},
    /* HuggingFaceTB/SmolLM2-135M-Instruct */
    {.name = "smollm2-135m", .arch = QL_MKMODEL_ARCH_LLAMA, .n_layer = 30, .n_embd = 576, .n_head = 9,
     .n_head_kv = 3, .n_ff = 1536, .n_vocab = 49152, .n_ctx = 8192, .rope_freq_base = 100000.0f,
     .rms_eps = 1e-5f, .tied = 1},
    /* meta-llama/Llama-3.2-1B-Instruct */
    {.name = "llama-3.2-1b", .arch = QL_MKMODEL_ARCH_LLAMA, .n_layer = 16, .n_embd = 2048, .n_head = 32,
     .n_head_kv = 8, .n_ff = 8192, .n_vocab = 128256, .n_ctx = 131072, .rope_freq_base = 500000.0f,
     .rms_eps = 1e-5f, .tied = 1, .rope_scaling_factor = 32.0f, .rope_scaling_low_freq_factor = 1.0f,
     .rope_scaling_high_freq_factor = 4.0f, .rope_scaling_orig_ctx = 8192},
    /* meta-llama/Llama-3.1-8B-Instruct (its config has llama3 rope scaling with factor 8) */
    {.name = "llama-3.1-8b", .arch = QL_MKMODEL_ARCH_LLAMA, .n_layer = 32, .n_embd = 4096, .n_head = 32,
     .n_head_kv = 8, .n_ff = 14336, .n_vocab = 128256, .n_ctx = 131072, .rope_freq_base = 500000.0f,
     .rms_eps = 1e-5f, .tied = 0, .rope_scaling_factor = 8.0f, .rope_scaling_low_freq_factor = 1.0f,
     .rope_scaling_high_freq_factor = 4.0f, .rope_scaling_orig_ctx = 8192},
};

const char *ql_mkmodel_shape_names(void) { return "tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b"; }

int ql_mkmodel_shape_get(const char *name, ql_mkmodel_shape_t *out) {
    if (!name || !out) return QL_EINVAL;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_shapes); i++) {
        if (strcmp(k_shapes[i].name, name) == 0) {
            *out = k_shapes[i];
            return 0;
        }
    }
    return QL_ENOENT;
}

void ql_mkmodel_shape_blank(ql_mkmodel_shape_t *s) {
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "custom");
    s->arch = QL_MKMODEL_ARCH_LLAMA;
    s->n_ctx = 2048;
    s->rope_freq_base = 10000.0f;
    s->rms_eps = 1e-5f;
    s->tied = 1;
}

static int set_err(char *err, size_t errlen, int rc, const char *fmt, ...) QL_PRINTF(4, 5);
static int set_err(char *err, size_t errlen, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ql_verrf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/* Shape-file fields: integers (with their accepted range) and floats map onto the struct. */
typedef struct field_s {
    const char *key;
    size_t offset;
    char kind; /* 'i' int64, 'f' float, 'b' bool, 's' arch, 'n' name */
    double min, max;
} field_t;

#define F_OFF(f) offsetof(ql_mkmodel_shape_t, f)
/* NOTE(shape-limits): the maxima keep every size computation far from overflow and every
 * value inside the u32 GGUF keys; they are not limits of any real model. */
static const field_t k_fields[] = {
    {"n_layer", F_OFF(n_layer), 'i', 1, 4096},
    {"n_embd", F_OFF(n_embd), 'i', 1, 1 << 20},
    {"n_head", F_OFF(n_head), 'i', 1, 1 << 14},
    {"n_head_kv", F_OFF(n_head_kv), 'i', 1, 1 << 14},
    {"n_ff", F_OFF(n_ff), 'i', 1, 1 << 22},
    {"n_vocab", F_OFF(n_vocab), 'i', 259, 1 << 24},
    {"n_ctx", F_OFF(n_ctx), 'i', 1, 4294967295.0},
    {"rope_freq_base", F_OFF(rope_freq_base), 'f', 1e-3, 1e12},
    {"rms_eps", F_OFF(rms_eps), 'f', 1e-12, 1.0},
    {"tied", F_OFF(tied), 'b', 0, 1},
    {"arch", F_OFF(arch), 's', 0, 0},
    {"name", F_OFF(name), 'n', 0, 0},
    {"rope_scaling_factor", F_OFF(rope_scaling_factor), 'f', 0, 1e6},
    {"rope_scaling_low_freq_factor", F_OFF(rope_scaling_low_freq_factor), 'f', 0, 1e6},
    {"rope_scaling_high_freq_factor", F_OFF(rope_scaling_high_freq_factor), 'f', 0, 1e6},
    {"rope_scaling_orig_ctx", F_OFF(rope_scaling_orig_ctx), 'i', 0, 4294967295.0},
    {"rope_scaling_yarn", F_OFF(rope_scaling_yarn), 'b', 0, 1},
};

const char *ql_mkmodel_shape_fields(void) {
    return "n_layer, n_embd, n_head, n_head_kv, n_ff, n_vocab, n_ctx, rope_freq_base, rms_eps, tied, arch, "
           "name, rope_scaling_factor, rope_scaling_low_freq_factor, rope_scaling_high_freq_factor, "
           "rope_scaling_orig_ctx, rope_scaling_yarn";
}

static const field_t *find_field(const char *key, char *err, size_t errlen) {
    for (size_t i = 0; key && i < QL_ARRAY_LEN(k_fields); i++)
        if (strcmp(k_fields[i].key, key) == 0) return &k_fields[i];
    set_err(err, errlen, QL_ENOENT, "unknown field '%s' (fields: %s)", key ? key : "(null)", ql_mkmodel_shape_fields());
    return NULL;
}

static const char *kind_text(char kind) {
    switch (kind) {
    case 'i': return "an integer";
    case 'f': return "a number";
    case 'b': return "true or false";
    case 's': return "\"llama\", \"qwen2\" or \"qwen3\"";
    default: return "a string";
    }
}

int ql_mkmodel_shape_set_num(ql_mkmodel_shape_t *s, const char *key, double v, char *err, size_t errlen) {
    if (!s) return QL_EINVAL;
    const field_t *f = find_field(key, err, errlen);
    if (!f) return QL_ENOENT;
    if (f->kind != 'i' && f->kind != 'f')
        return set_err(err, errlen, QL_EINVAL, "field '%s' must be %s, not a number", key, kind_text(f->kind));
    if (!(v >= f->min && v <= f->max)) /* NaN fails too */
        return set_err(err, errlen, QL_EINVAL, "field '%s' is %g, outside %g..%g", key, v, f->min, f->max);
    if (f->kind == 'i') {
        if (v != floor(v)) return set_err(err, errlen, QL_EINVAL, "field '%s' is %g, not an integer", key, v);
        *(int64_t *)((char *)s + f->offset) = (int64_t)v;
    } else {
        *(float *)((char *)s + f->offset) = (float)v;
    }
    return 0;
}

int ql_mkmodel_shape_set_str(ql_mkmodel_shape_t *s, const char *key, const char *v, char *err, size_t errlen) {
    if (!s || !v) return QL_EINVAL;
    const field_t *f = find_field(key, err, errlen);
    if (!f) return QL_ENOENT;
    if (f->kind == 's') {
        if (strcmp(v, "llama") == 0) s->arch = QL_MKMODEL_ARCH_LLAMA;
        else if (strcmp(v, "qwen2") == 0) s->arch = QL_MKMODEL_ARCH_QWEN2;
        else if (strcmp(v, "qwen3") == 0) s->arch = QL_MKMODEL_ARCH_QWEN3;
        else return set_err(err, errlen, QL_EINVAL, "field 'arch' is \"%s\" (accepted: llama, qwen2, qwen3)", v);
        return 0;
    }
    if (f->kind == 'n') {
        size_t n = strlen(v);
        if (n == 0 || n >= sizeof(s->name))
            return set_err(err, errlen, QL_EINVAL, "field 'name' must have 1..%zu characters", sizeof(s->name) - 1);
        memcpy(s->name, v, n + 1);
        return 0;
    }
    return set_err(err, errlen, QL_EINVAL, "field '%s' must be %s, not a string", key, kind_text(f->kind));
}

int ql_mkmodel_shape_set_bool(ql_mkmodel_shape_t *s, const char *key, int v, char *err, size_t errlen) {
    if (!s) return QL_EINVAL;
    const field_t *f = find_field(key, err, errlen);
    if (!f) return QL_ENOENT;
    if (f->kind != 'b')
        return set_err(err, errlen, QL_EINVAL, "field '%s' must be %s, not a bool", key, kind_text(f->kind));
    *(int *)((char *)s + f->offset) = v ? 1 : 0; /* every 'b' field is an int */
    return 0;
}

/* A shape file may leave n_head_kv out: then every head has its own K and V. */
static ql_mkmodel_shape_t normalized(const ql_mkmodel_shape_t *s) {
    ql_mkmodel_shape_t n = *s;
    if (n.n_head_kv == 0) n.n_head_kv = n.n_head;
    return n;
}

int ql_mkmodel_shape_check(const ql_mkmodel_shape_t *shape, ql_dtype_t wtype, char *err, size_t errlen) {
    if (!shape) return set_err(err, errlen, QL_EINVAL, "no shape");
    ql_mkmodel_shape_t norm = normalized(shape);
    const ql_mkmodel_shape_t *s = &norm;
    /* every integer and float field within its range; 0 means a required size was not set */
    for (size_t i = 0; i < QL_ARRAY_LEN(k_fields); i++) {
        const field_t *f = &k_fields[i];
        double v;
        if (f->kind == 'i') v = (double)*(const int64_t *)((const char *)s + f->offset);
        else if (f->kind == 'f') v = *(const float *)((const char *)s + f->offset);
        else continue;
        if (f->kind == 'i' && v == 0 && f->min > 0)
            return set_err(err, errlen, QL_EINVAL, "field '%s' is missing", f->key);
        if (!(v >= f->min && v <= f->max))
            return set_err(err, errlen, QL_EINVAL, "field '%s' is %g, outside %g..%g", f->key, v, f->min, f->max);
    }
    if (s->arch != QL_MKMODEL_ARCH_LLAMA && s->arch != QL_MKMODEL_ARCH_QWEN2 && s->arch != QL_MKMODEL_ARCH_QWEN3)
        return set_err(err, errlen, QL_EINVAL, "field 'arch' is %d (accepted: llama, qwen2, qwen3)", s->arch);
    if (!memchr(s->name, '\0', sizeof(s->name)) || !s->name[0])
        return set_err(err, errlen, QL_EINVAL, "field 'name' is empty or too long");
    if (s->n_embd % s->n_head != 0)
        return set_err(err, errlen, QL_EINVAL, "field 'n_embd' (%lld) is not a multiple of n_head (%lld)",
                       (long long)s->n_embd, (long long)s->n_head);
    if ((s->n_embd / s->n_head) % 2 != 0)
        return set_err(err, errlen, QL_EINVAL, "field 'n_embd': the head size n_embd / n_head = %lld must be even (rope)",
                       (long long)(s->n_embd / s->n_head));
    if (s->n_head % s->n_head_kv != 0)
        return set_err(err, errlen, QL_EINVAL, "field 'n_head' (%lld) is not a multiple of n_head_kv (%lld)",
                       (long long)s->n_head, (long long)s->n_head_kv);
    if (s->rope_scaling_yarn && s->rope_scaling_factor == 0.0f)
        return set_err(err, errlen, QL_EINVAL, "field 'rope_scaling_yarn' needs rope_scaling_factor >= 1");
    if (s->rope_scaling_factor != 0.0f) {
        if (s->rope_scaling_factor < 1.0f)
            return set_err(err, errlen, QL_EINVAL, "field 'rope_scaling_factor' is %g: 0 (none) or >= 1",
                           (double)s->rope_scaling_factor);
        if (!s->rope_scaling_yarn &&
            !(s->rope_scaling_high_freq_factor > s->rope_scaling_low_freq_factor && s->rope_scaling_low_freq_factor > 0))
            return set_err(err, errlen, QL_EINVAL,
                           "field 'rope_scaling_high_freq_factor' must exceed rope_scaling_low_freq_factor > 0");
        if (s->rope_scaling_orig_ctx < 1)
            return set_err(err, errlen, QL_EINVAL, "field 'rope_scaling_orig_ctx' is missing (rope scaling is on)");
    }
    /* every row (ne[0]) must hold whole blocks: n_embd for all but ffn_down, n_ff for it */
    ql_dtype_t et = ql_mkmodel_embd_type(wtype);
    int64_t be = QL_MAX(ql_dtype_block_elems(wtype), ql_dtype_block_elems(et));
    if (be <= 0) return set_err(err, errlen, QL_EINVAL, "unknown weight type %d", (int)wtype);
    if (s->n_embd % be != 0)
        return set_err(err, errlen, QL_EINVAL, "field 'n_embd' (%lld) is not a multiple of %s's block of %lld",
                       (long long)s->n_embd, ql_dtype_name(wtype), (long long)be);
    if (s->n_ff % be != 0)
        return set_err(err, errlen, QL_EINVAL, "field 'n_ff' (%lld) is not a multiple of %s's block of %lld",
                       (long long)s->n_ff, ql_dtype_name(wtype), (long long)be);
    return 0;
}

/* ---- weight types ---- */

static const ql_dtype_t k_wtypes[] = {QL_DTYPE_F32,  QL_DTYPE_F16,  QL_DTYPE_BF16, QL_DTYPE_Q8_0,
                                      QL_DTYPE_Q4_0, QL_DTYPE_Q4_1, QL_DTYPE_Q5_0, QL_DTYPE_Q5_1};

const char *ql_mkmodel_type_names(void) { return "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1"; }

int ql_mkmodel_type_parse(const char *name, ql_dtype_t *out) {
    ql_dtype_t t;
    if (!out || ql_dtype_parse(name, &t) != 0) return QL_EINVAL;
    for (size_t i = 0; i < QL_ARRAY_LEN(k_wtypes); i++) {
        if (k_wtypes[i] == t) {
            *out = t;
            return 0;
        }
    }
    return QL_EINVAL;
}

ql_dtype_t ql_mkmodel_embd_type(ql_dtype_t wtype) {
    switch (wtype) {
    case QL_DTYPE_F32:
    case QL_DTYPE_F16:
    case QL_DTYPE_BF16: return wtype;
    default: return QL_DTYPE_Q8_0;
    }
}

/* llama_ftype as llama.cpp writes general.file_type */
static uint32_t file_type(ql_dtype_t wtype) {
    switch (wtype) {
    case QL_DTYPE_F32: return 0;   /* LLAMA_FTYPE_ALL_F32 */
    case QL_DTYPE_F16: return 1;   /* MOSTLY_F16 */
    case QL_DTYPE_Q4_0: return 2;  /* MOSTLY_Q4_0 */
    case QL_DTYPE_Q4_1: return 3;  /* MOSTLY_Q4_1 */
    case QL_DTYPE_Q8_0: return 7;  /* MOSTLY_Q8_0 */
    case QL_DTYPE_Q5_0: return 8;  /* MOSTLY_Q5_0 */
    case QL_DTYPE_Q5_1: return 9;  /* MOSTLY_Q5_1 */
    case QL_DTYPE_BF16: return 32; /* MOSTLY_BF16 */
    default: return 0;
    }
}

/* ---- deterministic random weights ---- */

/* NOTE(mkmodel-rng): splitmix64's output function over a counter: stateless, so any element
 * (or block) of any tensor is computed on its own from (seed, tensor index, counter), and
 * tensors can be generated independently, in any order and in chunks. */
#define GOLDEN_GAMMA 0x9e3779b97f4a7c15ull

static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t tensor_key(uint64_t seed, int64_t index) {
    return mix64(mix64(seed ^ 0x71756c6c6d6b6d6full) + (uint64_t)index * GOLDEN_GAMMA);
}

static inline uint64_t rand_at(uint64_t key, uint64_t counter) { return mix64(key + (counter + 1) * GOLDEN_GAMMA); }

typedef enum gen_kind_e {
    GEN_NOISE,      /* uniform, mean `center`, standard deviation `std` */
    GEN_ROPE_FREQS, /* Llama 3 rope scaling factors, computed */
} gen_kind_t;

typedef struct gen_s {
    const struct ql_mkmodel_s *m;
    gen_kind_t kind;
    ql_dtype_t type;
    int64_t n;     /* elements */
    uint64_t size; /* bytes */
    uint64_t key;
    float center, std;
    /* token_embd / output: rows (ne[0] = row_len elements each) from rows_loud on belong to
     * unused tokens and get std / 16 (NOTE(mkmodel-quiet-unused)); INT64_MAX elsewhere */
    int64_t row_len, rows_loud;
} gen_t;

struct ql_mkmodel_s {
    ql_mkmodel_params_t _p;
    ql_gguf_writer_t *_w;
    gen_t *_gens; /* one per tensor */
    int64_t _n_tensors;
    uint64_t _data_bytes;
    int64_t _n_merges;
    int64_t _n_tokens_used; /* control + byte + merged tokens; the rest are unused */
};

/* Quantized blocks are drawn directly: uniform quants and a per-block scale jittered by
 * +-25% around std / (standard deviation of the uniform quant levels), with the zero point
 * (q4_1, q5_1: the min) centring the levels. Values: (q - centre) * d, std ~ `std`. */
static void fill_quant(const gen_t *g, uint8_t *b) {
    int64_t nb = g->n / ql_dtype_block_elems(g->type);
    size_t bb = ql_dtype_block_bytes(g->type);
    /* std of a uniform variable over L levels: sqrt((L^2 - 1) / 12) */
    int levels = g->type == QL_DTYPE_Q8_0 ? 256 : (g->type == QL_DTYPE_Q5_0 || g->type == QL_DTYPE_Q5_1) ? 32 : 16;
    float d_base = g->std / sqrtf(((float)levels * (float)levels - 1.0f) / 12.0f);
    int64_t be = ql_dtype_block_elems(g->type);
    for (int64_t j = 0; j < nb; j++, b += bb) {
        uint64_t c = (uint64_t)j * 8; /* up to 8 random words per block */
        uint64_t r0 = rand_at(g->key, c);
        float quiet = j * be / g->row_len >= g->rows_loud ? 1.0f / 16 : 1.0f;
        float d = quiet * d_base * (0.75f + 0.5f * (float)(r0 >> 40) * 0x1p-24f);
        uint16_t dh = ql_fp32_to_fp16(d), mh = 0;
        uint8_t *qs;
        size_t n_qs;
        switch (g->type) {
        case QL_DTYPE_Q8_0: qs = b + 2, n_qs = 32; break;
        case QL_DTYPE_Q4_0: qs = b + 2, n_qs = 16; break;
        case QL_DTYPE_Q4_1:
            mh = ql_fp32_to_fp16(-7.5f * ql_fp16_to_fp32(dh));
            qs = b + 4, n_qs = 16;
            break;
        case QL_DTYPE_Q5_0:
            memcpy(b + 2, &r0, 4); /* qh: the low 32 bits of r0 (the scale used the top 24) */
            qs = b + 6, n_qs = 16;
            break;
        default: /* QL_DTYPE_Q5_1 */
            mh = ql_fp32_to_fp16(-15.5f * ql_fp16_to_fp32(dh));
            memcpy(b + 4, &r0, 4);
            qs = b + 8, n_qs = 16;
            break;
        }
        memcpy(b, &dh, 2);
        if (g->type == QL_DTYPE_Q4_1 || g->type == QL_DTYPE_Q5_1) memcpy(b + 2, &mh, 2);
        for (size_t k = 0; k < n_qs; k += 8) {
            uint64_t r = rand_at(g->key, c + 1 + k / 8);
            memcpy(qs + k, &r, 8); /* NOTE(endian): little-endian hosts only, as the writer */
        }
    }
}

/* Llama 3's frequency-dependent rope scaling, as convert_hf_to_gguf.py computes
 * rope_freqs.weight: 1 for short wavelengths, `factor` for long ones, and a smooth blend
 * between, over head_dim / 2 frequencies. */
static void fill_rope_freqs(const gen_t *g, float *out) {
    const ql_mkmodel_shape_t *s = &g->m->_p.shape;
    int64_t head_dim = s->n_embd / s->n_head;
    double factor = s->rope_scaling_factor, lo = s->rope_scaling_low_freq_factor;
    double hi = s->rope_scaling_high_freq_factor, orig = (double)s->rope_scaling_orig_ctx;
    double low_freq_wavelen = orig / lo, high_freq_wavelen = orig / hi;
    for (int64_t i = 0; i < g->n; i++) {
        /* float32 like the script's torch.arange(0, dim, 2, dtype=float32) / dim */
        float expo = (float)(2 * i) / (float)head_dim;
        double freq = 1.0 / pow((double)s->rope_freq_base, (double)expo);
        double wavelen = 2.0 * 3.14159265358979323846 / freq;
        double f;
        if (wavelen < high_freq_wavelen) {
            f = 1.0;
        } else if (wavelen > low_freq_wavelen) {
            f = factor;
        } else {
            double smooth = (orig / wavelen - lo) / (hi - lo);
            f = 1.0 / ((1.0 - smooth) / factor + smooth);
        }
        out[i] = (float)f;
    }
}

static int fill_gen(const gen_t *g, void *buf, size_t size) {
    if (!buf || size != g->size) return QL_EINVAL;
    if (g->kind == GEN_ROPE_FREQS) {
        fill_rope_freqs(g, buf);
        return 0;
    }
    if (ql_dtype_block_elems(g->type) > 1) {
        fill_quant(g, buf);
        return 0;
    }
    /* uniform on [-a, a] has std a / sqrt(3). Elements 2k and 2k+1 take the two 32-bit
     * halves of random word k (24 bits each), rows at a time so the quiet factor is per row;
     * f16/bf16 are converted from an f32 chunk by the reference quantizer. */
    float half_width = g->std * 1.7320508f;
    size_t elem_bytes = ql_dtype_block_bytes(g->type);
    float chunk[256];
    int64_t n_rows = g->n / g->row_len;
    for (int64_t r = 0; r < n_rows; r++) {
        float a = r >= g->rows_loud ? half_width / 16 : half_width;
        for (int64_t c0 = 0; c0 < g->row_len; c0 += (int64_t)QL_ARRAY_LEN(chunk)) {
            int64_t i0 = r * g->row_len + c0, n = QL_MIN((int64_t)QL_ARRAY_LEN(chunk), g->row_len - c0);
            for (int64_t k = 0; k < n; k++) {
                uint64_t i = (uint64_t)(i0 + k);
                uint64_t word = rand_at(g->key, i >> 1);
                uint32_t half = (uint32_t)(i & 1 ? word >> 32 : word);
                chunk[k] = g->center + a * ((float)(half >> 8) * 0x1p-23f - 1.0f);
            }
            int rc = ql_quantize_row(g->type, chunk, (uint8_t *)buf + (size_t)i0 * elem_bytes, n);
            QL_ASSERT(rc == 0);
        }
    }
    return 0;
}

static int fill_cb(void *ud, int64_t index, void *buf, size_t size) {
    (void)index;
    return fill_gen(ud, buf, size);
}

/* ---- vocabulary ---- */

/* NOTE(bpe-corpus): the merges are learned from this text, written for quill, so that common
 * English words, code keywords and punctuation get their own tokens and a prompt tokenizes
 * into fewer tokens than bytes. Its exact content only changes which merges exist. */
static const char k_corpus[] =
    "The quick brown fox jumps over the lazy dog. A server answers requests from many clients at "
    "the same time, and each request asks the model to continue a piece of text. The model reads "
    "the prompt, one token after another, and then writes new tokens until it reaches the end or "
    "the limit that the client asked for. When the cache is full, the scheduler waits for a "
    "sequence to finish before it starts the next one.\n\n"
    "In the morning the baker opens the shop and the smell of fresh bread fills the street. "
    "Children walk to school, their parents talk about the weather, and the old man on the corner "
    "reads the newspaper as he has done every day for thirty years. It is a quiet town, but there "
    "is always something happening if you know where to look.\n\n"
    "What is the capital of France? The capital of France is Paris. How many days are there in a "
    "week? There are seven days in a week. Can you write a short poem about the sea? The sea is "
    "wide and the sea is deep, it sings to the shore while the sailors sleep.\n\n"
    "User: Hello! How are you today?\nAssistant: I am doing well, thank you for asking. How can I "
    "help you?\nUser: Please explain what a function is.\nAssistant: A function is a named block "
    "of code that takes some input, does some work, and returns a result.\n\n"
    "int main(int argc, char **argv) {\n    if (argc < 2) {\n        return 1;\n    }\n"
    "    for (int i = 0; i < argc; i++) {\n        printf(\"%s\\n\", argv[i]);\n    }\n"
    "    return 0;\n}\n\n"
    "static int add(const int *a, const int *b, size_t n) {\n    int sum = 0;\n"
    "    for (size_t i = 0; i < n; i++) sum += a[i] * b[i];\n    return sum;\n}\n\n"
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "for name in [\"alice\", \"bob\", \"carol\"]:\n    print(f\"hello, {name}!\")\n\n"
    "class Request:\n    def __init__(self, prompt, max_tokens=16):\n        self.prompt = prompt\n"
    "        self.max_tokens = max_tokens\n\n"
    "{\"model\": \"quill\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}], "
    "\"max_tokens\": 32, \"temperature\": 0.7, \"stream\": true}\n\n"
    "The numbers 0 1 2 3 4 5 6 7 8 9 10 11 12 100 256 1024 2048 4096 and 3.14159 appear in many "
    "programs; so do words like return, const, static, while, break, continue, import, and print. "
    "Write clear code, test it well, and measure before you optimize. The best time to fix a bug "
    "is before it ships; the second best time is now.\n\n"
    "A river begins as rain on a mountain. The water gathers in small streams that run between "
    "stones and roots, then joins other streams until it becomes strong enough to carry boats. "
    "Along its banks people built villages, mills and bridges, and later factories and railways. "
    "Today the river is cleaner than it was fifty years ago, and fish have come back to places "
    "where nobody had seen them for a long time.\n\n"
    "To make a simple soup, cut two onions, three carrots and a few potatoes into small pieces. "
    "Warm some oil in a large pot, add the onions and cook them slowly until they are soft and "
    "golden. Add the other vegetables, cover them with water or stock, and let everything simmer "
    "for about twenty minutes. Season with salt and pepper, and serve it hot with bread.\n\n"
    "Question: Why is the sky blue during the day?\nAnswer: Sunlight contains every colour. When "
    "it passes through the air, the short blue waves are scattered in all directions much more "
    "than the long red ones, so blue light reaches our eyes from every part of the sky.\n\n"
    "Question: What does a compiler do?\nAnswer: A compiler translates a program written in one "
    "language, such as C, into another, usually the machine code that a processor can execute. "
    "It checks the program for errors, chooses how to store each variable, and tries to make "
    "the result fast and small.\n\n"
    "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\n"
    "typedef struct node {\n    struct node *next;\n    char *value;\n} node_t;\n\n"
    "node_t *list_push(node_t *head, const char *value) {\n    node_t *n = malloc(sizeof(*n));\n"
    "    if (n == NULL) return NULL;\n    n->value = strdup(value);\n    n->next = head;\n"
    "    return n;\n}\n\n"
    "import json\nimport sys\n\n\ndef load(path):\n    with open(path) as f:\n"
    "        return json.load(f)\n\n\nif __name__ == \"__main__\":\n"
    "    data = load(sys.argv[1])\n    for key, value in sorted(data.items()):\n"
    "        print(key, value)\n\n"
    "Dear team, thank you all for the work on the new release. The tests pass, the documentation "
    "is up to date, and the first users have already sent kind messages. Next week we will look "
    "at memory use on large inputs and at the error messages, which should say exactly what went "
    "wrong and what to do about it. Please write down any problem you find, even a small one.\n";

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the other 68 to U+0100 + n in
 * byte order. Token order: the printable ones first, then the rest (the order of GPT-2's bs
 * list, which byte-level vocabularies such as SmolLM2's keep). */
static int byte_is_printable(int b) { return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255); }

static void byte_mapping(uint32_t cp[256], int order[256]) {
    int n = 0, k = 0;
    for (int b = 0; b < 256; b++)
        if (byte_is_printable(b)) cp[b] = (uint32_t)b, order[k++] = b;
    for (int b = 0; b < 256; b++)
        if (!byte_is_printable(b)) cp[b] = 256u + (uint32_t)n++, order[k++] = b;
}

typedef struct vtok_s {
    uint8_t *bytes;
    size_t len;
} vtok_t;

typedef struct vocab_s {
    vtok_t *toks; /* the learned tokens, ids FIRST_BYTE_TOKEN..; byte tokens first */
    int64_t n_toks;
    int64_t (*merges)[2];
    int64_t n_merges;
} vocab_t;

typedef struct word_s {
    int64_t *ids;
    int64_t n;
    int64_t count;
} word_t;

static int is_alpha(uint8_t c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80; }
static int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static int is_space(uint8_t c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

/* Splits text the way GPT-2's pre-tokenizer roughly does: " ?letters", single digits,
 * " ?punctuation", whitespace runs (leaving one space to lead the next word). */
static size_t next_piece(const uint8_t *t, size_t n, size_t i) {
    size_t j = i;
    if (is_digit(t[j])) return j + 1;
    if (is_space(t[j])) {
        while (j < n && is_space(t[j])) j++;
        if (j == n || t[j - 1] != ' ' || is_digit(t[j])) return j;
        /* the run's last space leads the word or punctuation that follows */
        if (j - 1 > i) return j - 1;
        j = i + 1;
    }
    if (is_alpha(t[j])) {
        while (j < n && is_alpha(t[j])) j++;
        return j;
    }
    while (j < n && !is_alpha(t[j]) && !is_digit(t[j]) && !is_space(t[j])) j++;
    return j > i ? j : i + 1;
}

/* Open-addressing counts of adjacent pairs, rebuilt per merge. */
typedef struct pair_table_s {
    uint64_t *keys; /* (a << 32 | b) + 1; 0 = empty */
    int64_t *counts;
    size_t cap;
} pair_table_t;

static void pairs_add(pair_table_t *pt, uint64_t key, int64_t count) {
    size_t h = (size_t)(mix64(key) & (pt->cap - 1));
    while (pt->keys[h] && pt->keys[h] != key + 1) h = (h + 1) & (pt->cap - 1);
    pt->keys[h] = key + 1;
    pt->counts[h] += count;
}

static void vocab_free(vocab_t *v) {
    for (int64_t i = 0; i < v->n_toks; i++) free(v->toks[i].bytes);
    free(v->toks);
    free(v->merges);
    memset(v, 0, sizeof(*v));
}

/* Trains up to max_merges merges over k_corpus: repeatedly joins the most frequent adjacent
 * pair (ties: the smallest pair of ids, so the result is deterministic), stopping when every
 * piece of the corpus is a single token. Once no pair occurs twice the merges memorise the
 * corpus's remaining words, which is what a larger corpus would have taught anyway. A merge
 * whose bytes equal an existing token reuses it. */
static int vocab_train(vocab_t *v, int64_t max_merges) {
    const uint8_t *t = (const uint8_t *)k_corpus;
    size_t n = sizeof(k_corpus) - 1;
    int rc = QL_ENOMEM;
    uint32_t cp[256];
    int order[256], byte_id[256];
    byte_mapping(cp, order);
    memset(v, 0, sizeof(*v));
    word_t *words = NULL;
    int64_t n_words = 0;
    pair_table_t pt = {0};
    size_t n_symbols = 0;

    v->toks = calloc((size_t)(256 + max_merges), sizeof(vtok_t));
    v->merges = calloc((size_t)QL_MAX(max_merges, 1), sizeof(*v->merges));
    words = calloc(n, sizeof(word_t)); /* at most one word per byte */
    if (!v->toks || !v->merges || !words) goto done;
    for (int k = 0; k < 256; k++) {
        v->toks[k].bytes = malloc(1);
        if (!v->toks[k].bytes) goto done;
        v->toks[k].bytes[0] = (uint8_t)order[k];
        v->toks[k].len = 1;
        byte_id[order[k]] = k;
        v->n_toks++;
    }
    /* distinct pieces with their counts (quadratic lookup: the corpus is a few KiB) */
    for (size_t i = 0; i < n;) {
        size_t j = next_piece(t, n, i);
        int64_t w = 0;
        for (; w < n_words; w++) {
            if ((size_t)words[w].n != j - i) continue;
            int64_t k = 0;
            while (k < words[w].n && words[w].ids[k] == byte_id[t[i + (size_t)k]]) k++;
            if (k == words[w].n) break;
        }
        if (w == n_words) {
            words[w].ids = malloc((j - i) * sizeof(int64_t));
            if (!words[w].ids) goto done;
            for (size_t k = i; k < j; k++) words[w].ids[k - i] = byte_id[t[k]];
            words[w].n = (int64_t)(j - i);
            n_words++;
            n_symbols += j - i;
        }
        words[w].count++;
        i = j;
    }
    for (pt.cap = 64; pt.cap < 2 * n_symbols; pt.cap *= 2) {}
    pt.keys = calloc(pt.cap, sizeof(uint64_t));
    pt.counts = calloc(pt.cap, sizeof(int64_t));
    if (!pt.keys || !pt.counts) goto done;

    while (v->n_merges < max_merges) {
        memset(pt.keys, 0, pt.cap * sizeof(uint64_t));
        memset(pt.counts, 0, pt.cap * sizeof(int64_t));
        for (int64_t w = 0; w < n_words; w++)
            for (int64_t k = 0; k + 1 < words[w].n; k++)
                pairs_add(&pt, (uint64_t)words[w].ids[k] << 32 | (uint64_t)words[w].ids[k + 1], words[w].count);
        uint64_t best = 0;
        int64_t best_count = 0;
        for (size_t h = 0; h < pt.cap; h++) {
            if (!pt.keys[h]) continue;
            if (pt.counts[h] > best_count || (pt.counts[h] == best_count && pt.keys[h] < best)) {
                best = pt.keys[h];
                best_count = pt.counts[h];
            }
        }
        if (best_count == 0) break; /* every piece is one token */
        int64_t a = (int64_t)((best - 1) >> 32), b = (int64_t)((best - 1) & 0xffffffffu);
        size_t len = v->toks[a].len + v->toks[b].len;
        uint8_t *bytes = malloc(len);
        if (!bytes) goto done;
        memcpy(bytes, v->toks[a].bytes, v->toks[a].len);
        memcpy(bytes + v->toks[a].len, v->toks[b].bytes, v->toks[b].len);
        int64_t id = -1;
        for (int64_t k = 256; k < v->n_toks && id < 0; k++)
            if (v->toks[k].len == len && memcmp(v->toks[k].bytes, bytes, len) == 0) id = k;
        if (id < 0) {
            id = v->n_toks++;
            v->toks[id].bytes = bytes;
            v->toks[id].len = len;
        } else {
            free(bytes);
        }
        v->merges[v->n_merges][0] = a;
        v->merges[v->n_merges][1] = b;
        v->n_merges++;
        for (int64_t w = 0; w < n_words; w++) {
            int64_t o = 0;
            for (int64_t k = 0; k < words[w].n; k++) {
                if (k + 1 < words[w].n && words[w].ids[k] == a && words[w].ids[k + 1] == b) {
                    words[w].ids[o++] = id;
                    k++;
                } else {
                    words[w].ids[o++] = words[w].ids[k];
                }
            }
            words[w].n = o;
        }
    }
    rc = 0;
done:
    for (int64_t w = 0; w < n_words; w++) free(words[w].ids);
    free(words);
    free(pt.keys);
    free(pt.counts);
    if (rc) vocab_free(v);
    return rc;
}

/* The token's text as the vocabulary stores it: each byte as its mapped code point, UTF-8. */
static char *token_text(const vtok_t *tok) {
    uint32_t cp[256];
    int order[256];
    byte_mapping(cp, order);
    char *s = malloc(tok->len * 2 + 1);
    if (!s) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < tok->len; i++) {
        uint32_t c = cp[tok->bytes[i]];
        if (c < 0x80) {
            s[o++] = (char)c;
        } else { /* all mapped code points are below U+0800: two bytes */
            s[o++] = (char)(0xc0 | (c >> 6));
            s[o++] = (char)(0x80 | (c & 0x3f));
        }
    }
    s[o] = '\0';
    return s;
}

/* ---- the model ---- */

static const char k_chat_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* GGUF token types (llama_token_type) */
#define TOKEN_TYPE_NORMAL 1
#define TOKEN_TYPE_CONTROL 3
#define TOKEN_TYPE_UNUSED 5

static int add_vocab(ql_mkmodel_t *m, char *err, size_t errlen) {
    const ql_mkmodel_shape_t *s = &m->_p.shape;
    int64_t n_vocab = s->n_vocab;
    int64_t max_merges = QL_MIN((int64_t)QL_MKMODEL_MERGES_MAX, n_vocab - QL_MKMODEL_N_SPECIAL - 256);
    vocab_t v;
    int rc = vocab_train(&v, max_merges);
    if (rc) return set_err(err, errlen, rc, "out of memory training the vocabulary");
    char **tokens = calloc((size_t)n_vocab, sizeof(char *));
    int32_t *types = calloc((size_t)n_vocab, sizeof(int32_t));
    char **merges = calloc((size_t)QL_MAX(v.n_merges, 1), sizeof(char *));
    rc = QL_ENOMEM;
    if (!tokens || !types || !merges) goto done;
    static const char *const specials[QL_MKMODEL_N_SPECIAL] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    for (int64_t i = 0; i < n_vocab; i++) {
        int64_t k = i - QL_MKMODEL_FIRST_BYTE_TOKEN;
        if (i < QL_MKMODEL_N_SPECIAL) {
            tokens[i] = ql_xstrdup(specials[i]);
            types[i] = TOKEN_TYPE_CONTROL;
        } else if (k < v.n_toks) {
            tokens[i] = token_text(&v.toks[k]);
            types[i] = TOKEN_TYPE_NORMAL;
        } else {
            char name[48];
            snprintf(name, sizeof(name), "<|unused_%lld|>", (long long)(k - v.n_toks));
            tokens[i] = ql_xstrdup(name);
            types[i] = TOKEN_TYPE_UNUSED;
        }
        if (!tokens[i]) goto done;
    }
    for (int64_t i = 0; i < v.n_merges; i++) {
        const char *a = tokens[QL_MKMODEL_FIRST_BYTE_TOKEN + v.merges[i][0]];
        const char *b = tokens[QL_MKMODEL_FIRST_BYTE_TOKEN + v.merges[i][1]];
        size_t la = strlen(a), lb = strlen(b);
        merges[i] = malloc(la + lb + 2);
        if (!merges[i]) goto done;
        memcpy(merges[i], a, la);
        merges[i][la] = ' ';
        memcpy(merges[i] + la + 1, b, lb + 1);
    }
    ql_gguf_writer_t *w = m->_w;
    rc = ql_gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2");
    if (!rc) rc = ql_gguf_writer_set_str(w, "tokenizer.ggml.pre", "smollm");
    if (!rc) rc = ql_gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, (uint64_t)n_vocab);
    if (!rc) rc = ql_gguf_writer_set_arr(w, "tokenizer.ggml.token_type", QL_GGUF_TYPE_INT32, types, (uint64_t)n_vocab);
    if (!rc) rc = ql_gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", (const char *const *)merges, (uint64_t)v.n_merges);
    if (!rc) rc = ql_gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", QL_MKMODEL_TOKEN_IM_START);
    if (!rc) rc = ql_gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", QL_MKMODEL_TOKEN_IM_END);
    if (!rc) rc = ql_gguf_writer_set_u32(w, "tokenizer.ggml.unknown_token_id", QL_MKMODEL_TOKEN_ENDOFTEXT);
    if (!rc) rc = ql_gguf_writer_set_u32(w, "tokenizer.ggml.padding_token_id", QL_MKMODEL_TOKEN_IM_END);
    if (!rc) rc = ql_gguf_writer_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
    if (!rc) rc = ql_gguf_writer_set_str(w, "tokenizer.chat_template", k_chat_template);
    if (rc) set_err(err, errlen, rc, "declaring the vocabulary: %s", ql_strerror(rc));
    m->_n_merges = v.n_merges;
    m->_n_tokens_used = QL_MKMODEL_N_SPECIAL + v.n_toks;
done:
    if (rc == QL_ENOMEM) set_err(err, errlen, rc, "out of memory building the vocabulary");
    for (int64_t i = 0; tokens && i < n_vocab; i++) free(tokens[i]);
    for (int64_t i = 0; merges && i < v.n_merges; i++) free(merges[i]);
    free(tokens);
    free(types);
    free(merges);
    vocab_free(&v);
    return rc;
}

static int add_metadata(ql_mkmodel_t *m, char *err, size_t errlen) {
    const ql_mkmodel_shape_t *s = &m->_p.shape;
    ql_gguf_writer_t *w = m->_w;
    const char *arch = s->arch == QL_MKMODEL_ARCH_QWEN2 ? "qwen2" : s->arch == QL_MKMODEL_ARCH_QWEN3 ? "qwen3" : "llama";
    char key[128], name[128];
    int rc = 0;
#define KEY(suffix) (snprintf(key, sizeof(key), "%s." suffix, arch), key)
    snprintf(name, sizeof(name), "quill-random %s", s->name);
    /* the order of llama.cpp's convert_hf_to_gguf.py */
    if (!rc) rc = ql_gguf_writer_set_str(w, "general.architecture", arch);
    if (!rc) rc = ql_gguf_writer_set_str(w, "general.type", "model");
    if (!rc) rc = ql_gguf_writer_set_str(w, "general.name", name);
    if (!rc) rc = ql_gguf_writer_set_u32(w, KEY("block_count"), (uint32_t)s->n_layer);
    if (!rc) rc = ql_gguf_writer_set_u32(w, KEY("context_length"), (uint32_t)s->n_ctx);
    if (!rc) rc = ql_gguf_writer_set_u32(w, KEY("embedding_length"), (uint32_t)s->n_embd);
    if (!rc) rc = ql_gguf_writer_set_u32(w, KEY("feed_forward_length"), (uint32_t)s->n_ff);
    if (!rc) rc = ql_gguf_writer_set_u32(w, KEY("attention.head_count"), (uint32_t)s->n_head);
    if (!rc) rc = ql_gguf_writer_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)s->n_head_kv);
    if (!rc) rc = ql_gguf_writer_set_f32(w, KEY("rope.freq_base"), s->rope_freq_base);
    if (!rc && s->rope_scaling_yarn) { /* as convert writes a YaRN rope_scaling block */
        rc = ql_gguf_writer_set_str(w, KEY("rope.scaling.type"), "yarn");
        if (!rc) rc = ql_gguf_writer_set_f32(w, KEY("rope.scaling.factor"), s->rope_scaling_factor);
        if (!rc)
            rc = ql_gguf_writer_set_u32(w, KEY("rope.scaling.original_context_length"),
                                        (uint32_t)s->rope_scaling_orig_ctx);
    }
    if (!rc) rc = ql_gguf_writer_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), s->rms_eps);
    if (!rc) rc = ql_gguf_writer_set_u32(w, "general.file_type", file_type(m->_p.wtype));
    if (!rc) rc = ql_gguf_writer_set_u32(w, KEY("vocab_size"), (uint32_t)s->n_vocab);
    /* convert writes the rope dimension for Llama (its head size); Qwen2 leaves it implied;
     * Qwen3, whose head size need not be n_embd / n_head, writes the key and value lengths */
    if (!rc && s->arch == QL_MKMODEL_ARCH_LLAMA)
        rc = ql_gguf_writer_set_u32(w, KEY("rope.dimension_count"), (uint32_t)(s->n_embd / s->n_head));
    if (!rc && s->arch == QL_MKMODEL_ARCH_QWEN3)
        rc = ql_gguf_writer_set_u32(w, KEY("attention.key_length"), (uint32_t)(s->n_embd / s->n_head));
    if (!rc && s->arch == QL_MKMODEL_ARCH_QWEN3)
        rc = ql_gguf_writer_set_u32(w, KEY("attention.value_length"), (uint32_t)(s->n_embd / s->n_head));
#undef KEY
    if (rc) return set_err(err, errlen, rc, "declaring the metadata: %s", ql_strerror(rc));
    if ((rc = add_vocab(m, err, errlen)) != 0) return rc;
    rc = ql_gguf_writer_set_u32(w, "general.quantization_version", 2);
    if (!rc) rc = ql_gguf_writer_set_u32(w, "general.alignment", QL_GGUF_DEFAULT_ALIGNMENT);
    if (rc) return set_err(err, errlen, rc, "declaring the metadata: %s", ql_strerror(rc));
    return 0;
}

/* Declares one tensor: ne[0] is the row (input) dimension. */
static int add_tensor(ql_mkmodel_t *m, const char *name, ql_dtype_t type, int n_dims, int64_t ne0, int64_t ne1,
                      gen_kind_t kind, float center, float std, char *err, size_t errlen) {
    int64_t i = m->_n_tensors;
    gen_t *g = &m->_gens[i];
    int64_t ne[2] = {ne0, ne1};
    size_t row;
    int rc = ql_dtype_row_bytes(type, ne0, &row);
    uint64_t size = (uint64_t)row * (uint64_t)(n_dims > 1 ? ne1 : 1);
    if (!rc) rc = ql_gguf_writer_add_tensor(m->_w, name, type, n_dims, ne, fill_cb, g);
    if (rc) return set_err(err, errlen, rc, "declaring tensor '%s': %s", name, ql_strerror(rc));
    *g = (gen_t){.m = m, .kind = kind, .type = type, .n = ne0 * (n_dims > 1 ? ne1 : 1), .size = size,
                 .key = tensor_key(m->_p.seed, i), .center = center, .std = std, .row_len = ne0,
                 .rows_loud = INT64_MAX};
    /* NOTE(mkmodel-quiet-unused): a random model's logits are noise, and most of a large
     * vocabulary is padding; shrinking the unused tokens' rows of the output projection
     * (token_embd when tied) keeps greedy and sampled text on real tokens, so a random
     * model prints words rather than nothing. Their input embeddings are never looked up. */
    if (strcmp(name, "token_embd.weight") == 0 || strcmp(name, "output.weight") == 0)
        g->rows_loud = m->_n_tokens_used;
    m->_n_tensors++;
    m->_data_bytes += size;
    return 0;
}

/* NOTE(mkmodel-scale): linear weights and the embedding have std 0.02 (the usual init), so
 * activations stay O(1) through the residual stream; norms are 1 +- 0.1 and biases small. */
#define WEIGHT_STD 0.02f
#define NORM_STD 0.05f

static int add_tensors(ql_mkmodel_t *m, char *err, size_t errlen) {
    const ql_mkmodel_shape_t *s = &m->_p.shape;
    ql_dtype_t wt = m->_p.wtype, et = ql_mkmodel_embd_type(wt);
    int64_t head_dim = s->n_embd / s->n_head, n_q = s->n_head * head_dim, n_kv = s->n_head_kv * head_dim;
    char name[96];
    int rc;
    if (s->rope_scaling_factor != 0.0f && !s->rope_scaling_yarn &&
        (rc = add_tensor(m, "rope_freqs.weight", QL_DTYPE_F32, 1, head_dim / 2, 1, GEN_ROPE_FREQS, 0, 0, err, errlen)))
        return rc;
    if ((rc = add_tensor(m, "token_embd.weight", et, 2, s->n_embd, s->n_vocab, GEN_NOISE, 0, WEIGHT_STD, err, errlen)))
        return rc;
    for (int64_t l = 0; l < s->n_layer; l++) {
        static const struct {
            const char *suffix;
            int is_norm, is_bias, n_dims;
            char in, out; /* 'e' n_embd, 'q' n_q, 'k' n_kv, 'f' n_ff, 'h' head_dim */
        } k[] = {
            /* is_norm 2: qwen3's per-head q/k norms, in the order its converter writes them */
            {"attn_norm.weight", 1, 0, 1, 'e', 0},   {"attn_q.weight", 0, 0, 2, 'e', 'q'},
            {"attn_q.bias", 0, 1, 1, 'q', 0},        {"attn_k.weight", 0, 0, 2, 'e', 'k'},
            {"attn_k.bias", 0, 1, 1, 'k', 0},        {"attn_v.weight", 0, 0, 2, 'e', 'k'},
            {"attn_v.bias", 0, 1, 1, 'k', 0},        {"attn_q_norm.weight", 2, 0, 1, 'h', 0},
            {"attn_k_norm.weight", 2, 0, 1, 'h', 0}, {"attn_output.weight", 0, 0, 2, 'q', 'e'},
            {"ffn_norm.weight", 1, 0, 1, 'e', 0},    {"ffn_gate.weight", 0, 0, 2, 'e', 'f'},
            {"ffn_up.weight", 0, 0, 2, 'e', 'f'},    {"ffn_down.weight", 0, 0, 2, 'f', 'e'},
        };
        for (size_t j = 0; j < QL_ARRAY_LEN(k); j++) {
            if (k[j].is_bias && s->arch != QL_MKMODEL_ARCH_QWEN2) continue;
            if (k[j].is_norm == 2 && s->arch != QL_MKMODEL_ARCH_QWEN3) continue;
            int64_t dim[2];
            char c[2] = {k[j].in, k[j].out};
            for (int d = 0; d < 2; d++)
                dim[d] = c[d] == 'e'   ? s->n_embd
                         : c[d] == 'q' ? n_q
                         : c[d] == 'k' ? n_kv
                         : c[d] == 'f' ? s->n_ff
                         : c[d] == 'h' ? head_dim
                                       : 1;
            snprintf(name, sizeof(name), "blk.%lld.%s", (long long)l, k[j].suffix);
            int plain = k[j].is_norm || k[j].is_bias;
            rc = add_tensor(m, name, plain ? QL_DTYPE_F32 : wt, k[j].n_dims, dim[0], dim[1], GEN_NOISE,
                            k[j].is_norm ? 1.0f : 0.0f, k[j].is_norm ? NORM_STD : WEIGHT_STD, err, errlen);
            if (rc) return rc;
        }
    }
    if ((rc = add_tensor(m, "output_norm.weight", QL_DTYPE_F32, 1, s->n_embd, 1, GEN_NOISE, 1.0f, NORM_STD, err, errlen)))
        return rc;
    if (!s->tied &&
        (rc = add_tensor(m, "output.weight", et, 2, s->n_embd, s->n_vocab, GEN_NOISE, 0, WEIGHT_STD, err, errlen)))
        return rc;
    return 0;
}

int ql_mkmodel_init(const ql_mkmodel_params_t *p, ql_mkmodel_t **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (!p || !out) return set_err(err, errlen, QL_EINVAL, "ql_mkmodel_init: NULL argument");
    *out = NULL;
    ql_dtype_t t;
    const char *tname = ql_dtype_name(p->wtype);
    if (!tname || ql_mkmodel_type_parse(tname, &t) != 0)
        return set_err(err, errlen, QL_EINVAL, "weight type %s is not supported (accepted: %s)", tname ? tname : "?",
                       ql_mkmodel_type_names());
    int rc = ql_mkmodel_shape_check(&p->shape, p->wtype, err, errlen);
    if (rc) return rc;
    ql_mkmodel_t *m = ql_xcalloc(1, sizeof(*m));
    m->_p = *p;
    m->_p.shape = normalized(&p->shape);
    m->_w = ql_gguf_writer_init();
    /* at most: rope_freqs, token_embd, 12 per layer, output_norm, output */
    size_t max_tensors = 4 + 12 * (size_t)p->shape.n_layer;
    m->_gens = calloc(max_tensors, sizeof(gen_t));
    if (!m->_gens) {
        rc = set_err(err, errlen, QL_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = add_metadata(m, err, errlen)) != 0) goto fail;
    if ((rc = add_tensors(m, err, errlen)) != 0) goto fail;
    QL_ASSERT((size_t)m->_n_tensors <= max_tensors);
    *out = m;
    return 0;
fail:
    ql_mkmodel_free(m);
    return rc;
}

void ql_mkmodel_free(ql_mkmodel_t *m) {
    if (!m) return;
    ql_gguf_writer_free(m->_w);
    free(m->_gens);
    free(m);
}

int ql_mkmodel_write(ql_mkmodel_t *m, const char *path, char *err, size_t errlen) {
    if (!m || !path) return set_err(err, errlen, QL_EINVAL, "ql_mkmodel_write: NULL argument");
    return ql_gguf_writer_write(m->_w, path, err, errlen);
}

ql_gguf_writer_t *ql_mkmodel_writer(ql_mkmodel_t *m) { return m ? m->_w : NULL; }
int64_t ql_mkmodel_n_tensors(const ql_mkmodel_t *m) { return m ? m->_n_tensors : 0; }
uint64_t ql_mkmodel_data_bytes(const ql_mkmodel_t *m) { return m ? m->_data_bytes : 0; }
int64_t ql_mkmodel_n_merges(const ql_mkmodel_t *m) { return m ? m->_n_merges : 0; }

int ql_mkmodel_tensor_data(const ql_mkmodel_t *m, int64_t i, void *buf, size_t size) {
    if (!m || i < 0 || i >= m->_n_tensors) return QL_EINVAL;
    return fill_gen(&m->_gens[i], buf, size);
}
