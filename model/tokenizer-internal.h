/*
 * model/tokenizer-internal.h — what tokenizer.c (vocabulary, special tokens, API),
 * tokenizer-bpe.c (pre-tokenizers, byte-level BPE) and tokenizer-spm.c (SentencePiece BPE)
 * share. Tests may include it for white-box checks of the pre-tokenizers.
 */
#ifndef QL_MODEL_TOKENIZER_INTERNAL_H
#define QL_MODEL_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "model/tokenizer.h"

/* Pre-tokenizers (byte-level BPE only): llama.cpp's regex lists, implemented by hand. */
typedef enum ql__tok_pre_e {
    QL__TOK_PRE_NONE = 0,       /* SPM */
    QL__TOK_PRE_DEFAULT,        /* llama.cpp's fallback for a BPE vocabulary without a name */
    QL__TOK_PRE_GPT2,           /* gpt-2 */
    QL__TOK_PRE_STARCODER,      /* starcoder, smollm, ...: digits one by one, then gpt2 */
    QL__TOK_PRE_DEEPSEEK_CODER, /* deepseek-coder */
    QL__TOK_PRE_LLAMA3,         /* llama3, llama-bpe */
} ql__tok_pre_t;

/* Per-token attribute bits (tok->attr[id]), on top of the type (tok->type[id]). */
enum {
    QL__TOK_ATTR_EOG = 0x01,    /* ends generation */
    QL__TOK_ATTR_LSTRIP = 0x02, /* matched as special: swallows ASCII whitespace on its left */
    QL__TOK_ATTR_RSTRIP = 0x04, /* ... and on its right (llama.cpp's Phi-3 rule) */
};

/* token text -> id: open addressing over ids, keyed by the text in tok->text. */
typedef struct ql__tok_map_s {
    int32_t *slot; /* [mask + 1], -1 = empty */
    uint32_t mask;
} ql__tok_map_t;

/* (left id, right id) -> merge rank and merged id (BPE). */
typedef struct ql__tok_merge_s {
    uint64_t key; /* (uint64)left << 32 | right; UINT64_MAX = empty */
    int32_t rank;
    int32_t id;
} ql__tok_merge_t;

/* A byte trie over the texts of the tokens special-token matching may find, with the edges in
 * a hash table: (node, byte) -> child. */
typedef struct ql__tok_edge_s {
    uint32_t node; /* UINT32_MAX = empty */
    uint32_t child;
    uint8_t byte;
} ql__tok_edge_t;

struct ql_tok_s {
    ql_tok_vocab_t vocab;
    ql__tok_pre_t pre;
    int32_t n_vocab;

    /* Per token, [n_vocab]. */
    char *text;          /* every token's text, each followed by a NUL */
    uint32_t *text_off;  /* [n_vocab + 1]: text of id i = text + text_off[i], length off[i+1]-off[i]-1 */
    char *piece;         /* decoded bytes of every token (see ql_tok_piece), no separators */
    uint32_t *piece_off; /* [n_vocab + 1] */
    float *score;        /* SPM merge priority; NULL for BPE */
    uint8_t *type;       /* ql_tok_type_t */
    uint8_t *attr;       /* QL__TOK_ATTR_* */
    uint32_t max_token_len; /* longest token text, bytes */

    ql__tok_map_t map;

    ql__tok_merge_t *merges; /* [merges_mask + 1], BPE only */
    uint32_t merges_mask;
    int32_t n_merges;

    /* The token of each byte: BPE: the token spelling GPT-2's unicode stand-in for the byte;
     * SPM: <0xXX> (or the one-byte token). -1 when the vocabulary lacks it. */
    int32_t byte_tok[256];

    /* Special-token matching: the candidates sorted by text length, longest first (ties: lower
     * id first), and the trie; trie_rank[node] = index into special[] of the token ending at
     * node, or -1. */
    int32_t *special;
    uint32_t n_special;
    ql__tok_edge_t *edges;
    uint32_t edges_mask;
    int32_t *trie_rank;
    uint32_t n_nodes;
    uint8_t special_first[256]; /* 1 when some candidate starts with that byte */

    int32_t bos, eos, eot, eom, unk, pad;
    int add_bos, add_eos;
    int add_space_prefix; /* SPM: a space goes in front of the text (and after each special) */
    int ignore_merges;    /* BPE llama3: a pre-token that is a whole token is taken as is */

    int32_t *eog; /* ascending */
    size_t n_eog;
};

/* ---- scratch for one encode call ---- */

/* Growable arrays the encoders share; freed by ql__tok_scratch_free. All sizes are counts. */
typedef struct ql__tok_scratch_s {
    /* pre-tokenizer, per code point of the current fragment: views into pre_block */
    void *pre_block;
    size_t cap_cpt;
    uint32_t *cpt;
    uint32_t *cpt_off; /* byte offset of each code point, plus one past the end */
    uint32_t *ends_a, *ends_b; /* chunk ends (code point index), two lists a stage maps between */
    uint16_t *flags;
    /* merging, per symbol */
    void *sym;
    size_t cap_sym;
    void *heap;
    size_t cap_heap;
    char *buf; /* SPM escaped text, BPE encoded word */
    size_t cap_buf;
} ql__tok_scratch_t;

/* Output sink: ids go to out[0..cap) and are counted past it. */
typedef struct ql__tok_out_s {
    int32_t *ids;
    size_t cap;
    size_t n;
} ql__tok_out_t;

static inline void ql__tok_emit(ql__tok_out_t *o, int32_t id) {
    if (o->n < o->cap) o->ids[o->n] = id;
    o->n++;
}

/* Grows *p to hold at least n elements of size elem. @return 0 or QL_ENOMEM. */
int ql__tok_grow(void **p, size_t *cap, size_t n, size_t elem);
void ql__tok_scratch_free(ql__tok_scratch_t *sc);

/* Looks up the token with text s[0..n). @return its id or -1. */
int32_t ql__tok_map_find(const ql_tok_t *tok, const char *s, size_t n);

/* The rank and result of merging left and right (BPE), or NULL. */
const ql__tok_merge_t *ql__tok_merge_find(const ql_tok_t *tok, int32_t left, int32_t right);

/* GPT-2's bytes_to_unicode(): the code point standing for byte b, and back (-1: none). */
uint32_t ql__tok_gpt2_byte_to_cpt(uint8_t b);
int ql__tok_gpt2_cpt_to_byte(uint32_t cpt);

/* Splits text[0..len) into pre-tokens: stores the end offset (bytes) of each in (*ends)[0..n)
 * and returns n >= 0, or QL_ENOMEM. *ends points into the scratch. */
int ql__tok_pre_split(ql__tok_pre_t pre, const char *text, size_t len, ql__tok_scratch_t *sc,
                      const uint32_t **ends);

/* Tokenizes one run of plain text (no special tokens in it) and emits the ids. */
int ql__tok_bpe_encode(const ql_tok_t *tok, const char *text, size_t len, ql__tok_scratch_t *sc,
                       ql__tok_out_t *out);
/* `prefix_space`: put a space in front first (add_space_prefix at the start or after a special). */
int ql__tok_spm_encode(const ql_tok_t *tok, const char *text, size_t len, int prefix_space,
                       ql__tok_scratch_t *sc, ql__tok_out_t *out);

#endif /* QL_MODEL_TOKENIZER_INTERNAL_H */
