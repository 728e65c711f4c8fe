/*
 * model/tokenizer.h — text <-> token ids for the vocabularies GGUF files carry:
 *   - "gpt2":  byte-level BPE (GPT-2 style) with llama.cpp's pre-tokenizers
 *              (tokenizer.ggml.pre: gpt-2, starcoder, smollm, deepseek-coder, llama3 / llama-bpe,
 *              default);
 *   - "llama": SentencePiece BPE (Llama 2, Phi-3) with byte fallback.
 * The goal is llama.cpp's ids exactly; tests/unit/model/test-tokenizer.c checks goldens made by
 * llama.cpp (tools/reference/gen-tokenize.py).
 *
 * Used by `quill tokenize`, the HTTP server's /tokenize and /detokenize, prompt building
 * (ql_tok_find() for chat markup), and the scheduler's streaming detokenizer (ql_tok_piece()
 * with ql_utf8_incomplete_tail(), model/unicode.h).
 *
 * Ownership and threads: ql_tok_init_from_gguf() copies everything it needs, so the GGUF handle
 * may be freed right after. Every function takes a non-NULL handle, except that ql_tok_free()
 * accepts NULL and encode/piece/decode report QL_EINVAL for it. A ql_tok_t is immutable once built: every function below may be
 * called concurrently from any thread on the same handle. Encoding allocates scratch memory in
 * proportion to its input and frees it before returning; nothing else allocates.
 *
 * NOTE(tok-status): output buffers belong to the caller, but instead of llama.cpp's "return
 * -(needed)" these functions return a status (0 or QL_E*) and report sizes through an out
 * parameter, with QL_ENOSPC meaning "too small, *n_out says how much is needed". A bare
 * -(needed) could not be told apart from a QL_E* code (a needed size of 2 reads as
 * QL_ENOMEM), and a caller that grows its buffer to -ret would loop on a real error.
 */
#ifndef QL_MODEL_TOKENIZER_H
#define QL_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "model/gguf.h"
#include "model/unicode.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ql_tok_s ql_tok_t; /* opaque */

/* Which algorithm the vocabulary uses (tokenizer.ggml.model). */
typedef enum ql_tok_vocab_e {
    QL_TOK_VOCAB_BPE = 1, /* "gpt2": byte-level BPE, merges by rank */
    QL_TOK_VOCAB_SPM = 2, /* "llama": SentencePiece BPE, merges by score, <0xXX> byte fallback */
} ql_tok_vocab_t;

/* Token types, the values of tokenizer.ggml.token_type (GGUF). */
typedef enum ql_tok_type_e {
    QL_TOK_TYPE_UNDEFINED = 0, /* treated as NORMAL */
    QL_TOK_TYPE_NORMAL = 1,
    QL_TOK_TYPE_UNKNOWN = 2,
    QL_TOK_TYPE_CONTROL = 3,      /* <s>, <|im_end|>...: never produced from plain text */
    QL_TOK_TYPE_USER_DEFINED = 4, /* added tokens: matched literally in any text */
    QL_TOK_TYPE_UNUSED = 5,
    QL_TOK_TYPE_BYTE = 6, /* SPM <0xXX> */
} ql_tok_type_t;

/* ---- flags ---- */

/* ql_tok_encode: add BOS / EOS where the vocabulary asks for them (tokenizer.ggml.add_bos_token,
 * add_eos_token; an SPM vocabulary adds BOS unless told otherwise). */
#define QL_TOK_ADD_SPECIAL 0x1u
/* ql_tok_encode: text that spells a control or unknown token ("<|im_start|>") becomes that
 * token. Without it such text is tokenized as plain text. User-defined tokens are matched
 * either way, as llama.cpp and Hugging Face do. */
#define QL_TOK_PARSE_SPECIAL 0x2u
/* ql_tok_piece / ql_tok_decode: render control and unknown tokens as their text; without it
 * they produce no bytes. User-defined tokens are always rendered. */
#define QL_TOK_RENDER_SPECIAL 0x4u
/* ql_tok_decode: the ids continue an earlier sequence, so the space that SPM encoding put in
 * front of the text is not there to remove (see ql_tok_decode). */
#define QL_TOK_CONTINUATION 0x8u

/* ---- lifetime ---- */

/** Builds a tokenizer from the tokenizer.* keys of `g` (tokens, token_type, scores, merges,
 *  the special token ids, add_bos/add_eos/add_space_prefix, pre). Everything is checked: an id
 *  out of range, a merge naming a missing token, a duplicate token text, a malformed <0xXX>
 *  token, a non-finite score or an unknown model or pre-tokenizer name fails with one line in
 *  err naming the key and the index or value at fault.
 *  The end-of-generation set (ql_tok_is_eog) follows llama.cpp: EOS, EOT, EOM and tokens whose
 *  text is one of the known end-of-turn markers (<|im_end|>, <|eot_id|>, <|end|>, </s>...).
 *  @return 0; QL_EINVAL (NULL argument); QL_ENOENT (no tokenizer.ggml.model / tokens);
 *  QL_EFORMAT (malformed or inconsistent data); QL_EUNSUPPORTED (model other than gpt2/llama,
 *  or an unknown tokenizer.ggml.pre); QL_ERANGE (vocabulary too large); QL_ENOMEM.
 *  On success *out is owned by the caller: release with ql_tok_free(). Thread: any. */
QL_API int ql_tok_init_from_gguf(const ql_gguf_t *g, ql_tok_t **out, char *err, size_t errlen);
QL_API void ql_tok_free(ql_tok_t *tok); /* NULL is a no-op */

/* ---- vocabulary ---- */

QL_API int32_t ql_tok_n_vocab(const ql_tok_t *tok);
QL_API ql_tok_vocab_t ql_tok_vocab(const ql_tok_t *tok);
/** The pre-tokenizer in use, as a canonical name: "gpt2", "starcoder" (also smollm and the other
 *  names llama.cpp splits digits one by one for), "deepseek-coder", "llama3", "default"; "" for
 *  SPM. Static storage. */
QL_API const char *ql_tok_pre_name(const ql_tok_t *tok);

/* Special ids, or -1 when the vocabulary has none. */
QL_API int32_t ql_tok_bos(const ql_tok_t *tok);
QL_API int32_t ql_tok_eos(const ql_tok_t *tok);
/** End of turn: tokenizer.ggml.eot_token_id, else the first token found among <|eot_id|>,
 *  <|im_end|>, <|end|>, <end_of_turn>, <|endoftext|>, ... (in that order). */
QL_API int32_t ql_tok_eot(const ql_tok_t *tok);
QL_API int32_t ql_tok_unk(const ql_tok_t *tok);
QL_API int32_t ql_tok_pad(const ql_tok_t *tok);
/** Whether QL_TOK_ADD_SPECIAL adds BOS / EOS. */
QL_API int ql_tok_add_bos(const ql_tok_t *tok);
QL_API int ql_tok_add_eos(const ql_tok_t *tok);

/** 1 when generating `id` ends generation (EOS, EOT, <|im_end|>, ...), else 0 (also for an id
 *  out of range). O(1). */
QL_API int ql_tok_is_eog(const ql_tok_t *tok, int32_t id);
/** The end-of-generation ids, ascending: *ids is borrowed (valid until ql_tok_free).
 *  @return their number. */
QL_API size_t ql_tok_eog_ids(const ql_tok_t *tok, const int32_t **ids);

/** The id of the token whose vocabulary text is exactly text[0..len) (any type: "<|im_start|>",
 *  "Ġthe", "<0x0A>"), or -1. O(len). */
QL_API int32_t ql_tok_find(const ql_tok_t *tok, const char *text, size_t len);
/** The token's vocabulary text as stored in the GGUF file (byte-level BPE: in GPT-2's stand-in
 *  characters, "Ġworld"; SPM: with U+2581), NUL-terminated, its length in *len (a text may hold
 *  a NUL byte). Borrowed until ql_tok_free; NULL for an id out of range. `len` may be NULL. */
QL_API const char *ql_tok_text(const ql_tok_t *tok, int32_t id, size_t *len);
/** The token's type (after llama.cpp's fix-ups: a token named like an end-of-turn marker is
 *  CONTROL), or -1 for an id out of range. */
QL_API int ql_tok_type(const ql_tok_t *tok, int32_t id);

/* ---- encoding ---- */

/** Tokenizes text[0..len) with `flags` (QL_TOK_ADD_SPECIAL, QL_TOK_PARSE_SPECIAL), giving
 *  llama.cpp's ids for valid UTF-8. Any bytes are accepted: invalid UTF-8 is kept byte for byte
 *  (byte-level BPE) or goes to <0xXX> tokens (SPM), where llama.cpp would substitute U+FFFD
 *  or mis-cut it. A byte a byte-level vocabulary has no token for is dropped, as llama.cpp
 *  drops it (SmolLM2 lacks 21 bytes that valid text almost never holds: some C0 controls,
 *  C0, C1, F1, F2, F5..FF).
 *  Writes at most n_ids_max ids and stores the number of ids the whole text makes in *n_ids.
 *  `ids` may be NULL when n_ids_max is 0 (to size a buffer).
 *  @return 0; QL_ENOSPC (n_ids_max < *n_ids: ids holds the first n_ids_max); QL_EINVAL (NULL
 *  argument, unknown flag); QL_ERANGE (len above 1 GiB); QL_ENOMEM (scratch memory).
 *  Thread: any. */
QL_API int ql_tok_encode(const ql_tok_t *tok, const char *text, size_t len, uint32_t flags,
                         int32_t *ids, size_t n_ids_max, size_t *n_ids);

/* ---- decoding ---- */

/** The bytes token `id` stands for, exactly: byte-level BPE tokens are mapped back through
 *  GPT-2's byte<->unicode table, SPM tokens get U+2581 turned into spaces and <0xXX> into the
 *  byte; user-defined tokens are their text; control and unknown tokens are their text with
 *  QL_TOK_RENDER_SPECIAL and empty without; unused tokens are empty. No space is ever
 *  stripped. The piece may end inside a UTF-8 sequence (a byte token, or half a character):
 *  streaming output joins pieces and holds back ql_utf8_incomplete_tail() bytes.
 *  *bytes is borrowed until ql_tok_free (not NUL-terminated). Flags other than
 *  QL_TOK_RENDER_SPECIAL are ignored.
 *  @return 0, QL_ERANGE (id out of range: *bytes = "", *len = 0) or QL_EINVAL (NULL argument). */
QL_API int ql_tok_piece(const ql_tok_t *tok, int32_t id, uint32_t flags, const char **bytes, size_t *len);

/** Detokenizes ids[0..n_ids): the pieces joined (no clean-up of spaces before punctuation:
 *  llama.cpp's clean_spaces would break the round trip). For an SPM vocabulary that adds a space
 *  prefix (tokenizer.ggml.add_space_prefix, on by default), one leading space is removed from
 *  the first piece that produces bytes when that token is a normal token, undoing what
 *  encoding added, unless QL_TOK_CONTINUATION says the ids continue an earlier sequence.
 *  So, encoding without QL_TOK_ADD_SPECIAL/QL_TOK_PARSE_SPECIAL, decode(encode(s)) == s
 *  - byte-level BPE: for every byte string s whose bytes all have a normal token (all 256 in
 *    GPT-2's vocabulary; see ql_tok_encode for the few others lack);
 *  - SPM with byte fallback: for every byte string s that holds no U+2581 (encoding turns
 *    spaces into U+2581, so an actual U+2581 comes back as a space) and no user-defined
 *    token's text (text after such a token gets a space prefix, as in llama.cpp; Llama 2's and
 *    Phi-3's vocabularies have none).
 *  Writes at most `size` bytes (no NUL) and stores the full length in *n_bytes.
 *  @return 0; QL_ENOSPC (size < *n_bytes: buf holds the first `size` bytes); QL_ERANGE (an id out
 *  of range: *n_bytes counts the bytes before it); QL_EINVAL (NULL argument). Thread: any. */
QL_API int ql_tok_decode(const ql_tok_t *tok, const int32_t *ids, size_t n_ids, uint32_t flags,
                         char *buf, size_t size, size_t *n_bytes);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_TOKENIZER_H */
