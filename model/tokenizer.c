/*
 * model/tokenizer.c — the vocabulary: loading and checking tokenizer.* from a GGUF file, the
 * lookup tables (text -> id, merge pair -> rank), llama.cpp's special-token rules, special-token
 * matching in input text, the public encode/decode API. The algorithms live in
 * tokenizer-bpe.c (pre-tokenizers, byte-level BPE) and tokenizer-spm.c (SentencePiece BPE).
 *
 * Reference: llama.cpp's llama-vocab.cpp (read for behaviour, not copied). Where quill differs
 * on purpose it says so in a NOTE.
 */
#define QL_LOG_MODULE "tok"
#include "model/tokenizer-internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Text longer than this is refused (offsets inside the encoder are 32-bit). */
#define TEXT_LEN_MAX ((size_t)1 << 30)
/* Vocabulary limits, far above any real one (the largest have ~260k tokens, a few MiB of
 * text); they keep every table size and offset within 32 bits. */
#define VOCAB_MAX ((uint64_t)1 << 28)
#define TEXT_BYTES_MAX ((uint64_t)1 << 29)

/* ---- small helpers ---- */


/* A token text made printable for an error message. */
typedef struct shown_s {
    char s[96];
} shown_t;
static shown_t show(const char *p, size_t n) {
    shown_t r;
    ql_gguf_str_t s = {p, n};
    ql_gguf_str_escape(s, 40, r.s, sizeof r.s);
    return r;
}

int ql__tok_grow(void **p, size_t *cap, size_t n, size_t elem) {
    if (n <= *cap) return 0;
    size_t want = *cap ? *cap : 64;
    while (want < n) {
        if (want > SIZE_MAX / 2) return QL_ENOMEM;
        want *= 2;
    }
    size_t bytes;
    if (ql_size_mul(want, elem, &bytes) != 0) return QL_ENOMEM;
    void *q = realloc(*p, bytes);
    if (q == NULL) return QL_ENOMEM;
    *p = q;
    *cap = want;
    return 0;
}

void ql__tok_scratch_free(ql__tok_scratch_t *sc) {
    free(sc->pre_block);
    free(sc->sym);
    free(sc->heap);
    free(sc->buf);
    memset(sc, 0, sizeof *sc);
}

static uint64_t mix64(uint64_t h) {
    /* splitmix64's finalizer: spreads every input bit over the low bits the masks keep. */
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return h;
}

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ull;
    }
    return mix64(h);
}

/* Table sizes: a power of two >= n. Callers bound n (VOCAB_MAX, TEXT_BYTES_MAX) so the
 * result fits the uint32_t masks. */
static uint32_t pow2_at_least(uint64_t n) {
    QL_ASSERT(n <= ((uint64_t)1 << 31));
    uint64_t c = 16;
    while (c < n) c *= 2;
    return (uint32_t)c;
}

static const char *tok_text(const ql_tok_t *tok, int32_t id, size_t *len) {
    uint32_t a = tok->text_off[id], b = tok->text_off[id + 1];
    *len = b - a - 1;
    return tok->text + a;
}

static int is_ascii_space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* ---- text -> id ---- */

int32_t ql__tok_map_find(const ql_tok_t *tok, const char *s, size_t n) {
    if (n == 0 || n > tok->max_token_len) return -1;
    uint32_t i = (uint32_t)hash_bytes(s, n) & tok->map.mask;
    for (;;) {
        int32_t id = tok->map.slot[i];
        if (id < 0) return -1;
        size_t len;
        const char *t = tok_text(tok, id, &len);
        if (len == n && memcmp(t, s, n) == 0) return id;
        i = (i + 1) & tok->map.mask;
    }
}

/* Inserts id; returns -1, or the id already holding the same text. */
static int32_t map_insert(ql_tok_t *tok, int32_t id) {
    size_t n;
    const char *s = tok_text(tok, id, &n);
    uint32_t i = (uint32_t)hash_bytes(s, n) & tok->map.mask;
    for (;;) {
        int32_t other = tok->map.slot[i];
        if (other < 0) {
            tok->map.slot[i] = id;
            return -1;
        }
        size_t len;
        const char *t = tok_text(tok, other, &len);
        if (len == n && memcmp(t, s, n) == 0) return other;
        i = (i + 1) & tok->map.mask;
    }
}

/* ---- merges ---- */

const ql__tok_merge_t *ql__tok_merge_find(const ql_tok_t *tok, int32_t left, int32_t right) {
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    uint32_t i = (uint32_t)mix64(key) & tok->merges_mask;
    for (;;) {
        const ql__tok_merge_t *m = &tok->merges[i];
        if (m->key == key) return m;
        if (m->key == UINT64_MAX) return NULL;
        i = (i + 1) & tok->merges_mask;
    }
}

/* ---- GPT-2 bytes <-> unicode ---- */

/* GPT-2 keeps the printable Latin-1 bytes as themselves and maps the other 68 (controls, space,
 * DEL, C1 controls, NBSP, soft hyphen) in order to U+0100.. U+0143. */
static int gpt2_keeps(unsigned b) { return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE); }

uint32_t ql__tok_gpt2_byte_to_cpt(uint8_t b) {
    if (gpt2_keeps(b)) return b;
    if (b <= 0x20) return 0x100 + b;                /* 33 of them */
    if (b >= 0x7F && b <= 0xA0) return 0x121 + (b - 0x7F); /* 34 */
    return 0x143;                                   /* 0xAD */
}

int ql__tok_gpt2_cpt_to_byte(uint32_t cpt) {
    if (cpt < 0x100) return gpt2_keeps(cpt) ? (int)cpt : -1;
    if (cpt <= 0x120) return (int)(cpt - 0x100);
    if (cpt <= 0x142) return (int)(0x7F + (cpt - 0x121));
    if (cpt == 0x143) return 0xAD;
    return -1;
}

/* ---- loading: the pieces ---- */

typedef struct loader_s {
    const ql_gguf_t *g;
    ql_tok_t *tok;
    char *err;
    size_t errlen;
} loader_t;

/* Reads an optional token id key into *dst (-1 when absent or negative). An id out of range
 * fails when `required_valid`, else is dropped with a warning. */
static int read_id(loader_t *L, const char *key, int32_t *dst, int required_valid) {
    int64_t v;
    int rc = ql_gguf_get_i64(L->g, key, &v);
    if (rc == QL_ENOENT) return 0;
    if (rc != 0) {
        ql_errf(L->err, L->errlen, "%s: not an integer", key);
        return QL_EFORMAT;
    }
    if (v < 0) { /* some converters write -1 for "none" */
        *dst = -1;
        return 0;
    }
    if (v >= L->tok->n_vocab) {
        if (required_valid) {
            ql_errf(L->err, L->errlen, "%s = %lld is out of range (the vocabulary has %d tokens)", key,
                    (long long)v, L->tok->n_vocab);
            return QL_EFORMAT;
        }
        QL_LOG_WARN("%s = %lld is out of range (%d tokens): ignored", key, (long long)v, L->tok->n_vocab);
        *dst = -1;
        return 0;
    }
    *dst = (int32_t)v;
    return 0;
}

static int read_bool(loader_t *L, const char *key, int *dst) {
    int v;
    int rc = ql_gguf_get_bool(L->g, key, &v);
    if (rc == QL_ENOENT) return 0;
    if (rc != 0) {
        ql_errf(L->err, L->errlen, "%s: not a bool", key);
        return QL_EFORMAT;
    }
    *dst = v != 0;
    return 0;
}

static int load_tokens(loader_t *L) {
    ql_tok_t *tok = L->tok;
    const char *key = "tokenizer.ggml.tokens";
    int64_t ki = ql_gguf_find_key(L->g, key);
    if (ki < 0) {
        ql_errf(L->err, L->errlen, "no %s key", key);
        return QL_ENOENT;
    }
    if (ql_gguf_kv_type(L->g, ki) != QL_GGUF_TYPE_ARRAY || ql_gguf_arr_type(L->g, ki) != QL_GGUF_TYPE_STRING) {
        ql_errf(L->err, L->errlen, "%s: not an array of strings", key);
        return QL_EFORMAT;
    }
    uint64_t n = ql_gguf_arr_len(L->g, ki);
    if (n == 0) {
        ql_errf(L->err, L->errlen, "%s: empty vocabulary", key);
        return QL_EFORMAT;
    }
    if (n > VOCAB_MAX) {
        ql_errf(L->err, L->errlen, "%s: %llu tokens is more than quill supports", key, (unsigned long long)n);
        return QL_ERANGE;
    }
    tok->n_vocab = (int32_t)n;

    /* Pass 1: sizes. Every text is bounded by the file, but the sum must fit 32-bit offsets. */
    uint64_t total = 0, max_len = 0;
    for (uint64_t j = 0; j < n; j++) {
        ql_gguf_str_t s;
        if (ql_gguf_arr_str(L->g, ki, j, &s) != 0) {
            ql_errf(L->err, L->errlen, "%s[%llu]: unreadable", key, (unsigned long long)j);
            return QL_EFORMAT;
        }
        total += s.len + 1;
        if (s.len > max_len) max_len = s.len;
    }
    if (total > TEXT_BYTES_MAX) {
        ql_errf(L->err, L->errlen, "%s: %llu bytes of token text is more than quill supports", key,
                (unsigned long long)total);
        return QL_ERANGE;
    }
    tok->max_token_len = (uint32_t)max_len;
    tok->text = malloc(total);
    tok->text_off = malloc((n + 1) * sizeof *tok->text_off);
    tok->type = malloc(n);
    tok->attr = calloc(n, 1);
    tok->map.mask = pow2_at_least(2 * n) - 1;
    tok->map.slot = malloc(((size_t)tok->map.mask + 1) * sizeof *tok->map.slot);
    if (!tok->text || !tok->text_off || !tok->type || !tok->attr || !tok->map.slot) return QL_ENOMEM;
    memset(tok->map.slot, 0xFF, ((size_t)tok->map.mask + 1) * sizeof *tok->map.slot);

    /* Pass 2: copy, index, and reject duplicates (llama.cpp asserts there are none). */
    uint32_t off = 0;
    uint64_t n_empty = 0;
    tok->text_off[0] = 0;
    for (uint64_t j = 0; j < n; j++) {
        ql_gguf_str_t s;
        ql_gguf_arr_str(L->g, ki, j, &s);
        memcpy(tok->text + off, s.ptr, s.len);
        off += (uint32_t)s.len;
        tok->text[off++] = '\0';
        tok->text_off[j + 1] = off;
        tok->type[j] = QL_TOK_TYPE_NORMAL;
        if (s.len == 0) { /* never matched, renders as nothing */
            n_empty++;
            continue;
        }
        int32_t dup = map_insert(tok, (int32_t)j);
        if (dup >= 0) {
            ql_errf(L->err, L->errlen, "%s[%llu] '%s' repeats token %d", key, (unsigned long long)j,
                    show(s.ptr, s.len).s, dup);
            return QL_EFORMAT;
        }
    }
    if (n_empty) QL_LOG_WARN("%s: %llu empty token(s)", key, (unsigned long long)n_empty);
    return 0;
}

static int load_types_scores(loader_t *L) {
    ql_tok_t *tok = L->tok;
    const char *key = "tokenizer.ggml.token_type";
    int64_t ki = ql_gguf_find_key(L->g, key);
    if (ki >= 0) {
        if (ql_gguf_kv_type(L->g, ki) != QL_GGUF_TYPE_ARRAY || ql_gguf_arr_len(L->g, ki) != (uint64_t)tok->n_vocab) {
            ql_errf(L->err, L->errlen, "%s: not an array of %d integers", key, tok->n_vocab);
            return QL_EFORMAT;
        }
        for (int32_t j = 0; j < tok->n_vocab; j++) {
            int64_t t;
            if (ql_gguf_arr_i64(L->g, ki, (uint64_t)j, &t) != 0) {
                ql_errf(L->err, L->errlen, "%s[%d]: not an integer", key, j);
                return QL_EFORMAT;
            }
            if (t < QL_TOK_TYPE_UNDEFINED || t > QL_TOK_TYPE_BYTE) {
                ql_errf(L->err, L->errlen, "%s[%d] = %lld: not a token type (0..6)", key, j, (long long)t);
                return QL_EFORMAT;
            }
            tok->type[j] = (uint8_t)(t == QL_TOK_TYPE_UNDEFINED ? QL_TOK_TYPE_NORMAL : t);
        }
    }

    key = "tokenizer.ggml.scores";
    ki = ql_gguf_find_key(L->g, key);
    if (ki < 0) {
        if (tok->vocab == QL_TOK_VOCAB_SPM) QL_LOG_WARN("no %s: every merge scores 0", key);
        return 0;
    }
    if (ql_gguf_kv_type(L->g, ki) != QL_GGUF_TYPE_ARRAY || ql_gguf_arr_len(L->g, ki) != (uint64_t)tok->n_vocab) {
        ql_errf(L->err, L->errlen, "%s: not an array of %d numbers", key, tok->n_vocab);
        return QL_EFORMAT;
    }
    if (tok->vocab != QL_TOK_VOCAB_SPM) return 0; /* BPE merges by rank: scores unused */
    tok->score = malloc((size_t)tok->n_vocab * sizeof *tok->score);
    if (!tok->score) return QL_ENOMEM;
    for (int32_t j = 0; j < tok->n_vocab; j++) {
        double v;
        if (ql_gguf_arr_f64(L->g, ki, (uint64_t)j, &v) != 0) {
            ql_errf(L->err, L->errlen, "%s[%d]: not a number", key, j);
            return QL_EFORMAT;
        }
        if (!isfinite(v) || fabs(v) > 3.0e38) {
            ql_errf(L->err, L->errlen, "%s[%d] = %g: not a finite float", key, j, v);
            return QL_EFORMAT;
        }
        tok->score[j] = (float)v;
    }
    return 0;
}

static int load_pre(loader_t *L) {
    ql_tok_t *tok = L->tok;
    if (tok->vocab != QL_TOK_VOCAB_BPE) return 0;
    const char *key = "tokenizer.ggml.pre";
    ql_gguf_str_t s;
    int rc = ql_gguf_get_str(L->g, key, &s);
    if (rc == QL_ENOENT || (rc == 0 && s.len == 0)) {
        /* As llama.cpp: an old file without the key gets the "default" splitter, loudly. */
        QL_LOG_WARN("no %s: using the 'default' pre-tokenizer; tokenization may be poor", key);
        tok->pre = QL__TOK_PRE_DEFAULT;
        return 0;
    }
    if (rc != 0) {
        ql_errf(L->err, L->errlen, "%s: not a string", key);
        return QL_EFORMAT;
    }
    /* The names llama.cpp gives each regex set; only sets quill implements are listed.
     * NOTE(tok-pre): an unknown name is an error, as in llama.cpp: guessing a splitter would
     * silently produce ids the model was not trained on. */
    static const struct {
        const char *name;
        ql__tok_pre_t pre;
    } k_names[] = {
        {"default", QL__TOK_PRE_DEFAULT},
        {"gpt-2", QL__TOK_PRE_GPT2},
        {"gpt2", QL__TOK_PRE_GPT2},
        {"phi-2", QL__TOK_PRE_GPT2},
        {"starcoder", QL__TOK_PRE_STARCODER},
        {"smollm", QL__TOK_PRE_STARCODER},
        {"refact", QL__TOK_PRE_STARCODER},
        {"command-r", QL__TOK_PRE_STARCODER},
        {"codeshell", QL__TOK_PRE_STARCODER},
        {"exaone", QL__TOK_PRE_STARCODER},
        {"minerva-7b", QL__TOK_PRE_STARCODER},
        {"deepseek-coder", QL__TOK_PRE_DEEPSEEK_CODER},
        {"llama3", QL__TOK_PRE_LLAMA3},
        {"llama-v3", QL__TOK_PRE_LLAMA3},
        {"llama-bpe", QL__TOK_PRE_LLAMA3},
    };
    for (size_t i = 0; i < QL_ARRAY_LEN(k_names); i++) {
        if (ql_gguf_str_eq(s, k_names[i].name)) {
            tok->pre = k_names[i].pre;
            if (tok->pre == QL__TOK_PRE_LLAMA3) {
                tok->ignore_merges = 1;
                tok->add_bos = 1; /* llama.cpp's default for llama3; the key may override it */
            }
            return 0;
        }
    }
    ql_errf(L->err, L->errlen,
            "%s '%s' is not a pre-tokenizer quill knows (supported: default, gpt-2, starcoder, smollm, "
            "deepseek-coder, llama3/llama-bpe)",
            key, show(s.ptr, s.len).s);
    return QL_EUNSUPPORTED;
}

static int load_merges(loader_t *L) {
    ql_tok_t *tok = L->tok;
    const char *key = "tokenizer.ggml.merges";
    int64_t ki = ql_gguf_find_key(L->g, key);
    if (ki < 0) {
        ql_errf(L->err, L->errlen, "no %s key (a gpt2 tokenizer needs its merges)", key);
        return QL_ENOENT;
    }
    if (ql_gguf_kv_type(L->g, ki) != QL_GGUF_TYPE_ARRAY || ql_gguf_arr_type(L->g, ki) != QL_GGUF_TYPE_STRING) {
        ql_errf(L->err, L->errlen, "%s: not an array of strings", key);
        return QL_EFORMAT;
    }
    uint64_t n = ql_gguf_arr_len(L->g, ki);
    if (n > VOCAB_MAX) {
        ql_errf(L->err, L->errlen, "%s: %llu merges is more than quill supports", key, (unsigned long long)n);
        return QL_ERANGE;
    }
    tok->n_merges = (int32_t)n;
    tok->merges_mask = pow2_at_least(2 * n) - 1;
    tok->merges = malloc(((size_t)tok->merges_mask + 1) * sizeof *tok->merges);
    char *cat = malloc((size_t)tok->max_token_len + 1);
    if (!tok->merges || !cat) {
        free(cat);
        return QL_ENOMEM;
    }
    for (size_t i = 0; i <= tok->merges_mask; i++) tok->merges[i].key = UINT64_MAX;

    int rc = 0;
    uint64_t n_dup = 0;
    for (uint64_t j = 0; j < n && rc == 0; j++) {
        ql_gguf_str_t s;
        if (ql_gguf_arr_str(L->g, ki, j, &s) != 0) {
            ql_errf(L->err, L->errlen, "%s[%llu]: unreadable", key, (unsigned long long)j);
            rc = QL_EFORMAT;
            break;
        }
        /* "left right", split at the first space after the first byte (as llama.cpp does, so a
         * left side that is itself " " still parses). */
        uint64_t sp = 1;
        while (sp < s.len && s.ptr[sp] != ' ') sp++;
        if (s.len < 3 || sp >= s.len - 1) {
            ql_errf(L->err, L->errlen, "%s[%llu] '%s': not two tokens separated by a space", key,
                    (unsigned long long)j, show(s.ptr, s.len).s);
            rc = QL_EFORMAT;
            break;
        }
        int32_t a = ql__tok_map_find(tok, s.ptr, sp);
        int32_t b = ql__tok_map_find(tok, s.ptr + sp + 1, s.len - sp - 1);
        int32_t m = -1;
        if (a >= 0 && b >= 0 && s.len - 1 <= tok->max_token_len) {
            memcpy(cat, s.ptr, sp);
            memcpy(cat + sp, s.ptr + sp + 1, s.len - sp - 1);
            m = ql__tok_map_find(tok, cat, s.len - 1);
        }
        if (a < 0 || b < 0 || m < 0) {
            const char *what = a < 0 ? "left side" : b < 0 ? "right side" : "result";
            ql_errf(L->err, L->errlen, "%s[%llu] '%s': its %s is not a token", key, (unsigned long long)j,
                    show(s.ptr, s.len).s, what);
            rc = QL_EFORMAT;
            break;
        }
        uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
        uint32_t i = (uint32_t)mix64(k) & tok->merges_mask;
        while (tok->merges[i].key != UINT64_MAX && tok->merges[i].key != k) i = (i + 1) & tok->merges_mask;
        if (tok->merges[i].key == k) { /* keep the first (lowest) rank, as llama.cpp's emplace does */
            n_dup++;
            continue;
        }
        tok->merges[i].key = k;
        tok->merges[i].rank = (int32_t)j;
        tok->merges[i].id = m;
    }
    free(cat);
    if (rc == 0 && n_dup) QL_LOG_WARN("%s: %llu repeated pair(s) ignored", key, (unsigned long long)n_dup);
    return rc;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static int load_bytes(loader_t *L) {
    ql_tok_t *tok = L->tok;
    for (int b = 0; b < 256; b++) tok->byte_tok[b] = -1;
    if (tok->vocab == QL_TOK_VOCAB_BPE) {
        int missing = 0;
        for (int b = 0; b < 256; b++) {
            char u[4];
            int n = ql_utf8_encode(ql__tok_gpt2_byte_to_cpt((uint8_t)b), u);
            tok->byte_tok[b] = ql__tok_map_find(tok, u, (size_t)n);
            missing += tok->byte_tok[b] < 0;
        }
        if (missing)
            QL_LOG_DEBUG("byte-level vocabulary lacks %d of the 256 byte tokens: encoding drops those bytes",
                         missing);
        return 0;
    }
    /* SPM: every BYTE token must be <0xXX>; it stands for that byte. */
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        if (tok->type[id] != QL_TOK_TYPE_BYTE) continue;
        size_t n;
        const char *t = tok_text(tok, id, &n);
        int hi = n == 6 ? hexval(t[3]) : -1, lo = n == 6 ? hexval(t[4]) : -1;
        if (n != 6 || memcmp(t, "<0x", 3) != 0 || t[5] != '>' || hi < 0 || lo < 0) {
            ql_errf(L->err, L->errlen, "tokenizer.ggml.tokens[%d] '%s' has type byte but is not <0xXX>", id,
                    show(t, n).s);
            return QL_EFORMAT;
        }
        int b = hi * 16 + lo;
        if (tok->byte_tok[b] < 0) tok->byte_tok[b] = id;
    }
    for (int b = 0; b < 256; b++) { /* llama.cpp's fallback: the one-byte token */
        if (tok->byte_tok[b] >= 0) continue;
        char c = (char)b;
        tok->byte_tok[b] = ql__tok_map_find(tok, &c, 1);
    }
    return 0;
}

/* ---- llama.cpp's special-token rules ---- */

/* NOTE(tok-eog): llama.cpp finds end-of-turn, FIM and end-of-generation tokens by their text
 * when the metadata does not name them, and forces such tokens to CONTROL (so plain text never
 * produces them and they do not render). These are its lists (llama-vocab.cpp, as of
 * llama-cpp-python 0.3.36, checked against it with synthetic vocabularies). Where several
 * candidates exist llama.cpp takes whichever its hash map yields first; quill takes the first
 * in list order (so SmolLM2's EOT is <|im_end|> where llama.cpp reports <|endoftext|>; both
 * are end-of-generation either way). */
static const char *const k_eot_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>", "<end_of_utterance>",
};
static const char *const k_eom_texts[] = {"<|eom_id|>"};
static const char *const k_fim_pre_texts[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "begin\xef\xbd\x9c>",
    "<PRE>", "\xe2\x96\x81<PRE>", "<|code_prefix|>",
};
static const char *const k_fim_suf_texts[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>",
    "<SUF>", "\xe2\x96\x81<SUF>", "<|code_suffix|>",
};
static const char *const k_fim_mid_texts[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\xef\xbd\x9c" "fim\xe2\x96\x81" "end\xef\xbd\x9c>",
    "<MID>", "\xe2\x96\x81<MID>", "<|code_middle|>",
};
static const char *const k_fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>"};
static const char *const k_fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"};
static const char *const k_fim_sep_texts[] = {"<|file_sep|>"};
static const char *const k_eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "[EOS]", "</s>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>",
};

static int32_t find_cstr(const ql_tok_t *tok, const char *s) { return ql__tok_map_find(tok, s, strlen(s)); }

static void force_control(ql_tok_t *tok, int32_t id) {
    if (tok->type[id] != QL_TOK_TYPE_CONTROL) {
        size_t n;
        const char *t = tok_text(tok, id, &n);
        QL_LOG_DEBUG("token %d '%s' looks like a control token: typed CONTROL", id, show(t, n).s);
        tok->type[id] = QL_TOK_TYPE_CONTROL;
    }
}

/* The id the metadata names, else the first text of the list found (forced CONTROL). */
static int32_t detect(ql_tok_t *tok, int32_t from_meta, const char *const *texts, size_t n_texts) {
    if (from_meta >= 0) return from_meta;
    for (size_t i = 0; i < n_texts; i++) {
        int32_t id = find_cstr(tok, texts[i]);
        if (id >= 0) {
            force_control(tok, id);
            return id;
        }
    }
    return -1;
}

static int load_specials(loader_t *L) {
    ql_tok_t *tok = L->tok;
    int rc;
    int32_t fim[6] = {-1, -1, -1, -1, -1, -1}; /* pre suf mid pad rep sep */
    static const char *const k_fim_keys[6] = {
        "tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.fim_mid_token_id",
        "tokenizer.ggml.fim_pad_token_id", "tokenizer.ggml.fim_rep_token_id", "tokenizer.ggml.fim_sep_token_id",
    };
    if ((rc = read_id(L, "tokenizer.ggml.eot_token_id", &tok->eot, 1)) != 0) return rc;
    if ((rc = read_id(L, "tokenizer.ggml.eom_token_id", &tok->eom, 1)) != 0) return rc;
    for (int i = 0; i < 6; i++)
        if ((rc = read_id(L, k_fim_keys[i], &fim[i], 0)) != 0) return rc;

    tok->eot = detect(tok, tok->eot, k_eot_texts, QL_ARRAY_LEN(k_eot_texts));
    tok->eom = detect(tok, tok->eom, k_eom_texts, QL_ARRAY_LEN(k_eom_texts));
    fim[0] = detect(tok, fim[0], k_fim_pre_texts, QL_ARRAY_LEN(k_fim_pre_texts));
    fim[1] = detect(tok, fim[1], k_fim_suf_texts, QL_ARRAY_LEN(k_fim_suf_texts));
    fim[2] = detect(tok, fim[2], k_fim_mid_texts, QL_ARRAY_LEN(k_fim_mid_texts));
    fim[3] = detect(tok, fim[3], k_fim_pad_texts, QL_ARRAY_LEN(k_fim_pad_texts));
    fim[4] = detect(tok, fim[4], k_fim_rep_texts, QL_ARRAY_LEN(k_fim_rep_texts));
    fim[5] = detect(tok, fim[5], k_fim_sep_texts, QL_ARRAY_LEN(k_fim_sep_texts));

    for (size_t i = 0; i < QL_ARRAY_LEN(k_eog_texts); i++) {
        int32_t id = find_cstr(tok, k_eog_texts[i]);
        if (id < 0) continue;
        force_control(tok, id);
        tok->attr[id] |= QL__TOK_ATTR_EOG;
    }
    int32_t extra[] = {tok->eos, tok->eot, tok->eom, fim[3], fim[4], fim[5]};
    for (size_t i = 0; i < QL_ARRAY_LEN(extra); i++)
        if (extra[i] >= 0) tok->attr[extra[i]] |= QL__TOK_ATTR_EOG;

    /* llama.cpp: in gpt-oss's (o200k_harmony) and solar-open's vocabularies <|end|> ends a
     * message, not the generation; recognised by <|return|>/<|call|> or <|calls|>/<|flush|>. */
    int32_t end = find_cstr(tok, "<|end|>");
    if (end >= 0) {
        int32_t ret = find_cstr(tok, "<|return|>"), call = find_cstr(tok, "<|call|>");
        int32_t calls = find_cstr(tok, "<|calls|>"), flush = find_cstr(tok, "<|flush|>");
        int has_call = call >= 0 || calls >= 0;
        if ((ret >= 0 && has_call) || (has_call && flush >= 0)) {
            tok->attr[end] &= (uint8_t)~QL__TOK_ATTR_EOG;
            tok->type[end] = QL_TOK_TYPE_USER_DEFINED;
        }
    }

    size_t n_eog = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) n_eog += (tok->attr[id] & QL__TOK_ATTR_EOG) != 0;
    tok->eog = malloc((n_eog ? n_eog : 1) * sizeof *tok->eog);
    if (!tok->eog) return QL_ENOMEM;
    for (int32_t id = 0; id < tok->n_vocab; id++)
        if (tok->attr[id] & QL__TOK_ATTR_EOG) tok->eog[tok->n_eog++] = id;

    /* llama.cpp's Phi-3 rule (by model name): special tokens swallow the whitespace after them,
     * except <unk>, <s> and <|endoftext|>. */
    ql_gguf_str_t name;
    if (ql_gguf_get_str(L->g, "general.name", &name) == 0) {
        char low[128];
        size_t n = name.len < sizeof low - 1 ? (size_t)name.len : sizeof low - 1;
        for (size_t i = 0; i < n; i++) {
            char c = name.ptr[i];
            low[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        low[n] = '\0';
        if (strstr(low, "phi-3") || strstr(low, "phi3")) {
            for (int32_t id = 0; id < tok->n_vocab; id++) {
                int t = tok->type[id];
                if (t == QL_TOK_TYPE_CONTROL || t == QL_TOK_TYPE_USER_DEFINED || t == QL_TOK_TYPE_UNKNOWN)
                    tok->attr[id] |= QL__TOK_ATTR_RSTRIP;
            }
            static const char *const k_keep[] = {"<unk>", "<s>", "<|endoftext|>"};
            for (size_t i = 0; i < QL_ARRAY_LEN(k_keep); i++) {
                int32_t id = find_cstr(tok, k_keep[i]);
                if (id >= 0) tok->attr[id] &= (uint8_t)~QL__TOK_ATTR_RSTRIP;
            }
        }
    }
    return 0;
}

/* ---- special-token matching: candidates and trie ---- */

static int cmp_special(const void *a, const void *b, const ql_tok_t *tok) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = tok->text_off[x + 1] - tok->text_off[x], ly = tok->text_off[y + 1] - tok->text_off[y];
    if (lx != ly) return lx > ly ? -1 : 1;
    return (x > y) - (x < y);
}

/* qsort has no context argument in C11: a merge sort that takes the tokenizer. */
static void sort_special(int32_t *v, int32_t *tmp, size_t n, const ql_tok_t *tok) {
    if (n < 2) return;
    size_t h = n / 2;
    sort_special(v, tmp, h, tok);
    sort_special(v + h, tmp, n - h, tok);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n) tmp[k++] = cmp_special(&v[j], &v[i], tok) < 0 ? v[j++] : v[i++];
    while (i < h) tmp[k++] = v[i++];
    while (j < n) tmp[k++] = v[j++];
    memcpy(v, tmp, n * sizeof *v);
}

static uint32_t edge_slot(const ql_tok_t *tok, uint32_t node, uint8_t byte) {
    uint32_t i = (uint32_t)mix64((uint64_t)node << 8 | byte) & tok->edges_mask;
    while (tok->edges[i].node != UINT32_MAX && (tok->edges[i].node != node || tok->edges[i].byte != byte))
        i = (i + 1) & tok->edges_mask;
    return i;
}

static int build_trie(ql_tok_t *tok) {
    uint32_t n = 0;
    uint64_t bytes = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        int t = tok->type[id];
        uint32_t len = tok->text_off[id + 1] - tok->text_off[id] - 1;
        if (len > 0 && (t == QL_TOK_TYPE_CONTROL || t == QL_TOK_TYPE_USER_DEFINED || t == QL_TOK_TYPE_UNKNOWN)) {
            n++;
            bytes += len;
        }
    }
    tok->n_special = n;
    tok->special = malloc((n ? n : 1) * sizeof *tok->special);
    int32_t *tmp = malloc((n ? n : 1) * sizeof *tmp);
    tok->n_nodes = 1;
    tok->trie_rank = malloc((size_t)(bytes + 1) * sizeof *tok->trie_rank);
    tok->edges_mask = pow2_at_least(2 * bytes + 2) - 1;
    tok->edges = malloc(((size_t)tok->edges_mask + 1) * sizeof *tok->edges);
    if (!tok->special || !tmp || !tok->trie_rank || !tok->edges) {
        free(tmp);
        return QL_ENOMEM;
    }
    n = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        int t = tok->type[id];
        uint32_t len = tok->text_off[id + 1] - tok->text_off[id] - 1;
        if (len > 0 && (t == QL_TOK_TYPE_CONTROL || t == QL_TOK_TYPE_USER_DEFINED || t == QL_TOK_TYPE_UNKNOWN))
            tok->special[n++] = id;
    }
    sort_special(tok->special, tmp, n, tok);
    free(tmp);

    for (size_t i = 0; i <= tok->edges_mask; i++) tok->edges[i].node = UINT32_MAX;
    tok->trie_rank[0] = -1;
    for (uint32_t r = 0; r < n; r++) {
        size_t len;
        const unsigned char *t = (const unsigned char *)tok_text(tok, tok->special[r], &len);
        tok->special_first[t[0]] = 1;
        uint32_t node = 0;
        for (size_t k = 0; k < len; k++) {
            uint32_t i = edge_slot(tok, node, t[k]);
            if (tok->edges[i].node == UINT32_MAX) {
                tok->edges[i].node = node;
                tok->edges[i].byte = t[k];
                tok->edges[i].child = tok->n_nodes;
                tok->trie_rank[tok->n_nodes++] = -1;
            }
            node = tok->edges[i].child;
        }
        tok->trie_rank[node] = (int32_t)r;
    }
    return 0;
}

/* ---- pieces ---- */

static int build_pieces(ql_tok_t *tok) {
    /* A piece is never longer than its text (a stand-in character or U+2581 is 1-3 bytes for
     * one byte out; <0xXX> is 6 for 1). */
    tok->piece = malloc(tok->text_off[tok->n_vocab] ? tok->text_off[tok->n_vocab] : 1);
    tok->piece_off = malloc(((size_t)tok->n_vocab + 1) * sizeof *tok->piece_off);
    if (!tok->piece || !tok->piece_off) return QL_ENOMEM;
    uint32_t o = 0;
    for (int32_t id = 0; id < tok->n_vocab; id++) {
        tok->piece_off[id] = o;
        size_t n;
        const char *t = tok_text(tok, id, &n);
        int type = tok->type[id];
        if (type == QL_TOK_TYPE_UNUSED) continue;
        if (type == QL_TOK_TYPE_CONTROL || type == QL_TOK_TYPE_UNKNOWN || type == QL_TOK_TYPE_USER_DEFINED) {
            memcpy(tok->piece + o, t, n);
            o += (uint32_t)n;
            continue;
        }
        if (tok->vocab == QL_TOK_VOCAB_SPM) {
            if (type == QL_TOK_TYPE_BYTE) {
                tok->piece[o++] = (char)(hexval(t[3]) * 16 + hexval(t[4]));
                continue;
            }
            for (size_t i = 0; i < n;) { /* U+2581 -> ' ' */
                if (n - i >= 3 && memcmp(t + i, "\xe2\x96\x81", 3) == 0) {
                    tok->piece[o++] = ' ';
                    i += 3;
                } else {
                    tok->piece[o++] = t[i++];
                }
            }
            continue;
        }
        /* Byte-level BPE: each character stands for one byte.
         * NOTE(tok-gpt2-unmapped): a character outside GPT-2's table (a vocabulary that is not
         * purely byte-level) is copied as its UTF-8; llama.cpp writes "[UNK_BYTE_0x...]". */
        for (size_t i = 0; i < n;) {
            uint32_t cpt;
            int k = ql_utf8_decode(t + i, n - i, &cpt);
            int b = ql__tok_gpt2_cpt_to_byte(cpt);
            if (b >= 0 && k == (cpt < 0x80 ? 1 : 2)) { /* the shortest encoding of a table character */
                tok->piece[o++] = (char)b;
            } else {
                memcpy(tok->piece + o, t + i, (size_t)k);
                o += (uint32_t)k;
            }
            i += (size_t)k;
        }
    }
    tok->piece_off[tok->n_vocab] = o;
    return 0;
}

/* ---- init / free ---- */

void ql_tok_free(ql_tok_t *tok) {
    if (tok == NULL) return;
    free(tok->text);
    free(tok->text_off);
    free(tok->piece);
    free(tok->piece_off);
    free(tok->score);
    free(tok->type);
    free(tok->attr);
    free(tok->map.slot);
    free(tok->merges);
    free(tok->special);
    free(tok->edges);
    free(tok->trie_rank);
    free(tok->eog);
    free(tok);
}

int ql_tok_init_from_gguf(const ql_gguf_t *g, ql_tok_t **out, char *err, size_t errlen) {
    if (err && errlen) err[0] = '\0';
    if (g == NULL || out == NULL) {
        ql_errf(err, errlen, "ql_tok_init_from_gguf: NULL argument");
        return QL_EINVAL;
    }
    *out = NULL;
    int rc;
    ql_tok_t *tok = ql_xcalloc(1, sizeof *tok);
    tok->bos = tok->eos = tok->eot = tok->eom = tok->unk = tok->pad = -1;
    loader_t L = {g, tok, err, errlen};

    ql_gguf_str_t model;
    rc = ql_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc != 0) {
        ql_errf(err, errlen, rc == QL_ENOENT ? "no tokenizer.ggml.model key" : "tokenizer.ggml.model: not a string");
        rc = rc == QL_ENOENT ? QL_ENOENT : QL_EFORMAT;
        goto fail;
    }
    if (ql_gguf_str_eq(model, "gpt2")) {
        tok->vocab = QL_TOK_VOCAB_BPE;
    } else if (ql_gguf_str_eq(model, "llama")) {
        tok->vocab = QL_TOK_VOCAB_SPM;
        tok->add_bos = 1;
        tok->add_space_prefix = 1;
    } else {
        ql_errf(err, errlen, "tokenizer.ggml.model '%s' is not supported (quill reads gpt2 and llama)",
                show(model.ptr, model.len).s);
        rc = QL_EUNSUPPORTED;
        goto fail;
    }
    if ((rc = load_tokens(&L)) != 0) goto fail;
    if ((rc = load_types_scores(&L)) != 0) goto fail;
    if ((rc = load_pre(&L)) != 0) goto fail;

    if (tok->vocab == QL_TOK_VOCAB_SPM) { /* llama.cpp's defaults for SentencePiece */
        if (tok->n_vocab > 2) {
            tok->unk = 0;
            tok->bos = 1;
            tok->eos = 2;
        }
    }
    if ((rc = read_id(&L, "tokenizer.ggml.bos_token_id", &tok->bos, 1)) != 0) goto fail;
    if ((rc = read_id(&L, "tokenizer.ggml.eos_token_id", &tok->eos, 1)) != 0) goto fail;
    if ((rc = read_id(&L, "tokenizer.ggml.unknown_token_id", &tok->unk, 1)) != 0) goto fail;
    if ((rc = read_id(&L, "tokenizer.ggml.padding_token_id", &tok->pad, 0)) != 0) goto fail;
    if ((rc = read_bool(&L, "tokenizer.ggml.add_bos_token", &tok->add_bos)) != 0) goto fail;
    if ((rc = read_bool(&L, "tokenizer.ggml.add_eos_token", &tok->add_eos)) != 0) goto fail;
    if (tok->vocab == QL_TOK_VOCAB_SPM &&
        (rc = read_bool(&L, "tokenizer.ggml.add_space_prefix", &tok->add_space_prefix)) != 0)
        goto fail;
    if (tok->add_bos && tok->bos < 0) {
        ql_errf(err, errlen, "tokenizer.ggml.add_bos_token is set but the vocabulary has no BOS token");
        rc = QL_EFORMAT;
        goto fail;
    }
    if (tok->add_eos && tok->eos < 0) {
        ql_errf(err, errlen, "tokenizer.ggml.add_eos_token is set but the vocabulary has no EOS token");
        rc = QL_EFORMAT;
        goto fail;
    }

    if (tok->vocab == QL_TOK_VOCAB_BPE && (rc = load_merges(&L)) != 0) goto fail;
    if ((rc = load_bytes(&L)) != 0) goto fail;
    if ((rc = load_specials(&L)) != 0) goto fail;
    if ((rc = build_trie(tok)) != 0) goto fail;
    if ((rc = build_pieces(tok)) != 0) goto fail;

    QL_LOG_DEBUG("tokenizer: %s, %d tokens, %d merges, pre %s, %u special-matchable, %zu end-of-generation",
                 tok->vocab == QL_TOK_VOCAB_BPE ? "byte-level BPE" : "SentencePiece BPE", tok->n_vocab,
                 tok->n_merges, ql_tok_pre_name(tok), tok->n_special, tok->n_eog);
    *out = tok;
    return 0;
fail:
    if (rc == QL_ENOMEM && err && errlen && err[0] == '\0') ql_errf(err, errlen, "out of memory loading the vocabulary");
    ql_tok_free(tok);
    return rc;
}

/* ---- accessors ---- */

int32_t ql_tok_n_vocab(const ql_tok_t *tok) { return tok->n_vocab; }
ql_tok_vocab_t ql_tok_vocab(const ql_tok_t *tok) { return tok->vocab; }

const char *ql_tok_pre_name(const ql_tok_t *tok) {
    switch (tok->pre) {
    case QL__TOK_PRE_DEFAULT: return "default";
    case QL__TOK_PRE_GPT2: return "gpt2";
    case QL__TOK_PRE_STARCODER: return "starcoder";
    case QL__TOK_PRE_DEEPSEEK_CODER: return "deepseek-coder";
    case QL__TOK_PRE_LLAMA3: return "llama3";
    case QL__TOK_PRE_NONE: break;
    }
    return "";
}

int32_t ql_tok_bos(const ql_tok_t *tok) { return tok->bos; }
int32_t ql_tok_eos(const ql_tok_t *tok) { return tok->eos; }
int32_t ql_tok_eot(const ql_tok_t *tok) { return tok->eot; }
int32_t ql_tok_unk(const ql_tok_t *tok) { return tok->unk; }
int32_t ql_tok_pad(const ql_tok_t *tok) { return tok->pad; }
int ql_tok_add_bos(const ql_tok_t *tok) { return tok->add_bos; }
int ql_tok_add_eos(const ql_tok_t *tok) { return tok->add_eos; }

int ql_tok_is_eog(const ql_tok_t *tok, int32_t id) {
    return id >= 0 && id < tok->n_vocab && (tok->attr[id] & QL__TOK_ATTR_EOG) != 0;
}

size_t ql_tok_eog_ids(const ql_tok_t *tok, const int32_t **ids) {
    *ids = tok->eog;
    return tok->n_eog;
}

int32_t ql_tok_find(const ql_tok_t *tok, const char *text, size_t len) {
    if (tok == NULL || (text == NULL && len > 0)) return -1;
    return ql__tok_map_find(tok, text, len);
}

const char *ql_tok_text(const ql_tok_t *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->n_vocab) {
        if (len) *len = 0;
        return NULL;
    }
    size_t n;
    const char *t = tok_text(tok, id, &n);
    if (len) *len = n;
    return t;
}

int ql_tok_type(const ql_tok_t *tok, int32_t id) {
    if (id < 0 || id >= tok->n_vocab) return -1;
    return tok->type[id];
}

/* ---- encoding ---- */

/* One special-token occurrence: candidate `rank` (index into tok->special) at byte `pos`. */
typedef struct occ_s {
    uint32_t rank;
    uint32_t pos;
} occ_t;

static int cmp_occ(const void *a, const void *b) {
    const occ_t *x = a, *y = b;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int cmp_occ_pos(const void *a, const void *b) {
    const occ_t *x = a, *y = b;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

static int matchable(const ql_tok_t *tok, int32_t id, int parse_special) {
    int t = tok->type[id];
    return t == QL_TOK_TYPE_USER_DEFINED || (parse_special && (t == QL_TOK_TYPE_CONTROL || t == QL_TOK_TYPE_UNKNOWN));
}

/* Encodes a run of plain text. `*prev_special` tracks SPM's "a space goes in front of text that
 * starts the input or follows a special token". */
static int encode_raw(const ql_tok_t *tok, const char *text, size_t len, int *prev_special,
                      ql__tok_scratch_t *sc, ql__tok_out_t *o) {
    int rc;
    if (tok->vocab == QL_TOK_VOCAB_BPE) {
        rc = ql__tok_bpe_encode(tok, text, len, sc, o);
    } else {
        rc = ql__tok_spm_encode(tok, text, len, tok->add_space_prefix && *prev_special, sc, o);
    }
    *prev_special = 0;
    return rc;
}

/* NOTE(tok-special-order): special tokens are matched the way llama.cpp's
 * tokenizer_st_partition does: candidates in order of decreasing length, each taking its
 * leftmost non-overlapping occurrences in the text not yet claimed by a longer one. Found with
 * one pass over the text through the trie, then resolved in that order. */
static int encode_with_specials(const ql_tok_t *tok, const char *text, size_t len, int parse_special,
                                ql__tok_scratch_t *sc, ql__tok_out_t *o) {
    int prev_special = 1;
    occ_t *occ = NULL;
    size_t n_occ = 0, cap_occ = 0;
    uint8_t *claimed = NULL;
    int rc = 0;

    const unsigned char *s = (const unsigned char *)text;
    for (size_t p = 0; p < len && tok->n_special; p++) {
        if (!tok->special_first[s[p]]) continue;
        uint32_t node = 0;
        for (size_t k = p; k < len; k++) {
            uint32_t i = edge_slot(tok, node, s[k]);
            if (tok->edges[i].node == UINT32_MAX) break;
            node = tok->edges[i].child;
            int32_t r = tok->trie_rank[node];
            if (r >= 0 && matchable(tok, tok->special[r], parse_special)) {
                if ((rc = ql__tok_grow((void **)&occ, &cap_occ, n_occ + 1, sizeof *occ)) != 0) goto done;
                occ[n_occ++] = (occ_t){(uint32_t)r, (uint32_t)p};
            }
        }
    }
    if (n_occ == 0) {
        rc = len ? encode_raw(tok, text, len, &prev_special, sc, o) : 0;
        goto done;
    }

    /* Resolve: 1 = covered by an accepted token, 2 = whitespace a token stripped. */
    claimed = calloc(len, 1);
    if (!claimed) {
        rc = QL_ENOMEM;
        goto done;
    }
    qsort(occ, n_occ, sizeof *occ, cmp_occ);
    size_t n_acc = 0;
    for (size_t i = 0; i < n_occ; i++) {
        int32_t id = tok->special[occ[i].rank];
        size_t p = occ[i].pos, n = tok->text_off[id + 1] - tok->text_off[id] - 1, k;
        for (k = 0; k < n && !claimed[p + k]; k++) {}
        if (k < n) continue; /* overlaps a longer token, or an earlier occurrence of itself */
        memset(claimed + p, 1, n);
        if (tok->attr[id] & QL__TOK_ATTR_RSTRIP)
            for (k = p + n; k < len && !claimed[k] && is_ascii_space(s[k]); k++) claimed[k] = 2;
        if (tok->attr[id] & QL__TOK_ATTR_LSTRIP)
            for (k = p; k > 0 && !claimed[k - 1] && is_ascii_space(s[k - 1]); k--) claimed[k - 1] = 2;
        occ[n_acc++] = occ[i];
    }
    qsort(occ, n_acc, sizeof *occ, cmp_occ_pos);

    size_t p = 0;
    for (size_t i = 0; i <= n_acc && rc == 0; i++) {
        size_t stop = i < n_acc ? occ[i].pos : len;
        while (p < stop && rc == 0) { /* the unclaimed runs before the next token */
            while (p < stop && claimed[p]) p++;
            size_t q = p;
            while (q < stop && !claimed[q]) q++;
            if (q > p) rc = encode_raw(tok, text + p, q - p, &prev_special, sc, o);
            p = q;
        }
        if (i < n_acc && rc == 0) {
            int32_t id = tok->special[occ[i].rank];
            ql__tok_emit(o, id);
            prev_special = 1;
            p = occ[i].pos + (tok->text_off[id + 1] - tok->text_off[id] - 1);
        }
    }
done:
    free(occ);
    free(claimed);
    return rc;
}

int ql_tok_encode(const ql_tok_t *tok, const char *text, size_t len, uint32_t flags, int32_t *ids,
                  size_t n_ids_max, size_t *n_ids) {
    if (n_ids) *n_ids = 0;
    if (tok == NULL || n_ids == NULL || (text == NULL && len > 0) || (ids == NULL && n_ids_max > 0) ||
        (flags & ~(QL_TOK_ADD_SPECIAL | QL_TOK_PARSE_SPECIAL)))
        return QL_EINVAL;
    if (len > TEXT_LEN_MAX) return QL_ERANGE;

    ql__tok_out_t o = {ids, n_ids_max, 0};
    ql__tok_scratch_t sc;
    memset(&sc, 0, sizeof sc);
    int add = (flags & QL_TOK_ADD_SPECIAL) != 0;
    if (add && tok->add_bos) ql__tok_emit(&o, tok->bos);
    int rc = encode_with_specials(tok, text, len, (flags & QL_TOK_PARSE_SPECIAL) != 0, &sc, &o);
    if (add && tok->add_eos) ql__tok_emit(&o, tok->eos);
    ql__tok_scratch_free(&sc);
    if (rc != 0) return rc;
    *n_ids = o.n;
    return o.n > n_ids_max ? QL_ENOSPC : 0;
}

/* ---- decoding ---- */

static void piece_of(const ql_tok_t *tok, int32_t id, uint32_t flags, const char **p, size_t *n) {
    int t = tok->type[id];
    if (!(flags & QL_TOK_RENDER_SPECIAL) && (t == QL_TOK_TYPE_CONTROL || t == QL_TOK_TYPE_UNKNOWN)) {
        *p = "";
        *n = 0;
        return;
    }
    *p = tok->piece + tok->piece_off[id];
    *n = tok->piece_off[id + 1] - tok->piece_off[id];
}

int ql_tok_piece(const ql_tok_t *tok, int32_t id, uint32_t flags, const char **bytes, size_t *len) {
    if (tok == NULL || bytes == NULL || len == NULL) return QL_EINVAL;
    if (id < 0 || id >= tok->n_vocab) {
        *bytes = "";
        *len = 0;
        return QL_ERANGE;
    }
    piece_of(tok, id, flags, bytes, len);
    return 0;
}

int ql_tok_decode(const ql_tok_t *tok, const int32_t *ids, size_t n_ids, uint32_t flags, char *buf,
                  size_t size, size_t *n_bytes) {
    if (n_bytes) *n_bytes = 0;
    if (tok == NULL || n_bytes == NULL || (ids == NULL && n_ids > 0) || (buf == NULL && size > 0)) return QL_EINVAL;
    int strip = tok->vocab == QL_TOK_VOCAB_SPM && tok->add_space_prefix && !(flags & QL_TOK_CONTINUATION);
    size_t total = 0;
    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->n_vocab) {
            *n_bytes = total;
            return QL_ERANGE;
        }
        const char *p;
        size_t n;
        piece_of(tok, id, flags, &p, &n);
        if (n == 0) continue;
        if (strip) {
            if (tok->type[id] == QL_TOK_TYPE_NORMAL && p[0] == ' ') {
                p++;
                n--;
            }
            strip = 0;
        }
        if (total < size) memcpy(buf + total, p, QL_MIN(n, size - total));
        total += n;
    }
    *n_bytes = total;
    return total > size ? QL_ENOSPC : 0;
}
