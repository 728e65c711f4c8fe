/*
 * model/hparams.h — a Llama-family model's hyper-parameters and its weights table, read from
 * an open GGUF (model/gguf.h). Supported architectures: `llama` (Llama 2/3, SmolLM2, Mistral),
 * `qwen2` (Llama plus Q/K/V biases, NEOX-style RoPE) and `qwen3` (qwen2's RoPE, no biases, an
 * RMSNorm over each head of Q and of K before RoPE). The CPU and CUDA backends size
 * their buffers from ql_hparams_t and find every weight through ql_weights_t.
 *
 * NOTE(gguf-shapes): a GGUF tensor's ne[0] is its input dimension (row length): a linear
 * layer mapping n_in -> n_out has ne = {n_in, n_out}, i.e. n_out rows of n_in elements.
 */
#ifndef QL_MODEL_HPARAMS_H
#define QL_MODEL_HPARAMS_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "model/gguf.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ql_arch_e {
    QL_ARCH_LLAMA = 0,
    QL_ARCH_QWEN2 = 1,
    QL_ARCH_QWEN3 = 2,
} ql_arch_t;

typedef enum ql_rope_scaling_e {
    QL_ROPE_SCALING_NONE = 0,
    QL_ROPE_SCALING_LINEAR = 1, /* positions divided by the factor */
    QL_ROPE_SCALING_YARN = 2,
} ql_rope_scaling_t;

/* Which elements RoPE rotates together within a head of head_dim. */
typedef enum ql_rope_layout_e {
    /* (x[2i], x[2i+1]): llama. llama.cpp's converter permuted the Q/K rows of the Hugging
     * Face checkpoint so that ggml's plain ("NORM") RoPE applies. */
    QL_ROPE_LAYOUT_ADJACENT = 0,
    /* (x[i], x[i + head_dim/2]): qwen2 and qwen3, ggml's NEOX mode (no permutation at
     * conversion). */
    QL_ROPE_LAYOUT_HALVES = 1,
} ql_rope_layout_t;

typedef struct ql_hparams_s {
    ql_arch_t arch;
    const char *arch_name;        /* "llama", "qwen2" or "qwen3" (static string) */
    uint32_t n_embd;              /* model width */
    uint32_t n_layer;
    uint32_t n_head;              /* query heads */
    uint32_t n_head_kv;           /* key/value heads (GQA: divides n_head) */
    uint32_t head_dim;            /* <arch>.attention.key_length, else n_embd / n_head */
    uint32_t n_ff;                /* feed-forward width */
    uint32_t n_vocab;             /* tokenizer.ggml.tokens length, else <arch>.vocab_size */
    uint32_t n_ctx_train;         /* <arch>.context_length */
    float rope_freq_base;         /* theta; 10000 when absent */
    ql_rope_scaling_t rope_scaling;
    float rope_scaling_factor;    /* 1 when none */
    uint32_t rope_scaling_orig_ctx; /* original context length (yarn); 0 when absent */
    float rope_attn_factor;       /* <arch>.rope.scaling.attn_factor: cos and sin are multiplied
                                     by it (llama.cpp's rope attn_factor); 1 when absent */
    int has_rope_freqs;           /* Llama 3.1: a `rope_freqs.weight` [head_dim/2] tensor of
                                     per-frequency divisors */
    float rms_eps;                /* RMSNorm epsilon */
    int tied_embeddings;          /* 1: no output.weight, logits use token_embd */
    ql_rope_layout_t rope_layout;
    int has_qkv_bias;             /* attn_{q,k,v}.bias in every layer: always for qwen2; for
                                     llama and qwen3 when blk.0.attn_q.bias exists */
    int has_qk_norm;              /* qwen3: attn_{q,k}_norm, an RMSNorm (rms_eps) of each head
                                     of Q and of K, weighted, between the projection and RoPE */
} ql_hparams_t;

/** Reads the hyper-parameters of the model in `g` (borrowed; the result holds no pointer
 *  into it). On error writes one line into err naming the key (or the architecture) and
 *  returns QL_EUNSUPPORTED (an architecture or feature quill does not run, e.g. "gpt2" or
 *  partial rotary) or QL_EFORMAT (a key missing, of the wrong type, or out of range).
 *  @return 0, QL_EINVAL (NULL argument), QL_EFORMAT or QL_EUNSUPPORTED. Thread: any. */
QL_API int ql_hparams_read(const ql_gguf_t *g, ql_hparams_t *out, char *err, size_t errlen);

/** Bytes a printed summary needs at most. */
#define QL_HPARAMS_SUMMARY_MAX 512
/** Writes a one-line summary ("llama n_embd=576 n_layer=30 ...") into buf. @return buf. */
QL_API char *ql_hparams_summary(const ql_hparams_t *hp, char *buf, size_t n);

/* ---- weights ---- */

/* Every pointer is borrowed from the ql_gguf_t the table was built from and lives as long
 * as it. Shapes are GGUF ne order: {row length, rows}. q_dim = n_head * head_dim,
 * kv_dim = n_head_kv * head_dim. */
typedef struct ql_layer_weights_s {
    const ql_gguf_tensor_t *attn_norm;   /* f32 {n_embd} */
    const ql_gguf_tensor_t *attn_q;      /* {n_embd, q_dim} */
    const ql_gguf_tensor_t *attn_k;      /* {n_embd, kv_dim} */
    const ql_gguf_tensor_t *attn_v;      /* {n_embd, kv_dim} */
    const ql_gguf_tensor_t *attn_output; /* {q_dim, n_embd} */
    const ql_gguf_tensor_t *attn_q_bias; /* f32 {q_dim}; NULL unless has_qkv_bias */
    const ql_gguf_tensor_t *attn_k_bias; /* f32 {kv_dim}; NULL unless has_qkv_bias */
    const ql_gguf_tensor_t *attn_v_bias; /* f32 {kv_dim}; NULL unless has_qkv_bias */
    const ql_gguf_tensor_t *attn_q_norm; /* f32 {head_dim}; NULL unless has_qk_norm */
    const ql_gguf_tensor_t *attn_k_norm; /* f32 {head_dim}; NULL unless has_qk_norm */
    const ql_gguf_tensor_t *ffn_norm;    /* f32 {n_embd} */
    const ql_gguf_tensor_t *ffn_gate;    /* {n_embd, n_ff} */
    const ql_gguf_tensor_t *ffn_up;      /* {n_embd, n_ff} */
    const ql_gguf_tensor_t *ffn_down;    /* {n_ff, n_embd} */
} ql_layer_weights_t;

typedef struct ql_weights_s {
    const ql_gguf_tensor_t *token_embd;  /* {n_embd, n_vocab} */
    const ql_gguf_tensor_t *output_norm; /* f32 {n_embd} */
    const ql_gguf_tensor_t *output;      /* {n_embd, n_vocab}; NULL when tied (use token_embd) */
    const ql_gguf_tensor_t *rope_freqs;  /* f32 {head_dim / 2}; NULL unless has_rope_freqs */
    ql_layer_weights_t *layers;          /* [n_layer], owned */
    uint32_t n_layer;
} ql_weights_t;

/** Finds every weight of the model described by `hp` (from ql_hparams_read on the same
 *  `g`) and checks its shape against the hyper-parameters, and that norms, biases and
 *  rope_freqs are f32. On error writes one line into err naming the tensor, the expected
 *  and the actual shape (or type), and returns QL_EFORMAT (a tensor missing or misshapen) or
 *  QL_EUNSUPPORTED (a per-layer `blk.*` tensor the forward pass would ignore, e.g. an
 *  attn_output.bias or a layer past block_count). On success *out owns its layer array:
 *  release it with ql_weights_free().
 *  @return 0, QL_EINVAL (NULL argument), QL_EFORMAT, QL_EUNSUPPORTED or QL_ENOMEM. Thread: any. */
QL_API int ql_weights_init(const ql_gguf_t *g, const ql_hparams_t *hp, ql_weights_t *out, char *err,
                           size_t errlen);
/** Frees the layer array and zeroes *w; NULL and a zeroed table are no-ops. */
QL_API void ql_weights_free(ql_weights_t *w);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_HPARAMS_H */
