/*
 * model/tokenizer-bpe.c — byte-level BPE (GPT-2 style): the pre-tokenizers that cut text into
 * words, and the merge loop that turns each word's bytes into tokens by merge rank.
 *
 * The pre-tokenizers are llama.cpp's regex lists (llama-vocab.cpp, llm_tokenizer_bpe), written
 * by hand over the code point classes of model/unicode.h, with llama.cpp's semantics: the
 * regexes of a list are applied one after another, each one cutting every piece the previous
 * ones made into its matches and the text between them. The GPT-2 and llama3 regexes follow
 * llama.cpp's hand-written versions (unicode.cpp, unicode_regex_split_custom_*), which is what
 * llama.cpp actually runs for them.
 *
 * NOTE(tok-bytes): llama.cpp turns each invalid UTF-8 byte into U+FFFD before splitting and so
 * loses it. quill classifies such a byte as U+FFFD (same split) but keeps the byte itself, so
 * any byte string comes back from decode(encode(s)) exactly.
 */
#define QL_LOG_MODULE "tok"
#include "model/tokenizer-internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- splitting ---- */

#define OUT_OF_RANGE 0xFFFFFFFFu

/* One stage over one piece [ini, end) of the code points: emits piece ends into out. */
typedef struct split_s {
    const uint32_t *cpt;
    const uint16_t *fl;
    size_t ini, end;
    uint32_t *out;
    size_t n_out;
    size_t prev; /* end of the last piece emitted */
} split_t;

/* Class and value of code point i, as seen from inside the current piece: nothing outside it. */
static inline unsigned F(const split_t *s, size_t i) { return i >= s->ini && i < s->end ? s->fl[i] : 0; }
static inline uint32_t C(const split_t *s, size_t i) { return i >= s->ini && i < s->end ? s->cpt[i] : OUT_OF_RANGE; }

static inline void add(split_t *s, size_t e) {
    if (e > s->prev) {
        s->out[s->n_out++] = (uint32_t)e;
        s->prev = e;
    }
}

enum { WS = QL_UCD_WHITESPACE, LET = QL_UCD_LETTER, NUM = QL_UCD_NUMBER, PUN = QL_UCD_PUNCTUATION };

/* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
static void stage_gpt2(split_t *s) {
    size_t pos = s->ini;
    while (pos < s->end) {
        uint32_t c = C(s, pos);
        unsigned f = F(s, pos);
        if (c == '\'' && pos + 1 < s->end) {
            uint32_t c1 = C(s, pos + 1);
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                add(s, pos += 2);
                continue;
            }
            if (pos + 2 < s->end) {
                uint32_t c2 = C(s, pos + 2);
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                    add(s, pos += 3);
                    continue;
                }
            }
        }
        unsigned f2 = c == ' ' ? F(s, pos + 1) : f;
        if (f2 & LET) { /* ' ?\p{L}+' */
            pos += c == ' ';
            while (F(s, pos) & LET) pos++;
            add(s, pos);
            continue;
        }
        if (f2 & NUM) { /* ' ?\p{N}+' */
            pos += c == ' ';
            while (F(s, pos) & NUM) pos++;
            add(s, pos);
            continue;
        }
        if (!(f2 & (WS | LET | NUM)) && f2) { /* ' ?[^\s\p{L}\p{N}]+' */
            pos += c == ' ';
            while (!(F(s, pos) & (WS | LET | NUM)) && F(s, pos)) pos++;
            add(s, pos);
            continue;
        }
        size_t n_ws = 0;
        while (F(s, pos + n_ws) & WS) n_ws++;
        if (n_ws > 1 && pos + n_ws < s->end) { /* '\s+(?!\S)': leave the last one to the next word */
            add(s, pos += n_ws - 1);
            continue;
        }
        if (n_ws > 0) { /* '\s+' */
            add(s, pos += n_ws);
            continue;
        }
        add(s, ++pos); /* no match: one code point alone */
    }
}

static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
 * \s*[\r\n]+|\s+(?!\S)|\s+
 * NOTE(tok-lower): ASCII lower-casing is exact here: no code point outside ASCII lower-cases to
 * one of s t r e v m l d (tools/gen-unicode-data.py checks it). */
static void stage_llama3(split_t *s) {
    size_t pos = s->ini;
    while (pos < s->end) {
        uint32_t c = C(s, pos);
        unsigned f = F(s, pos);
        if (c == '\'' && pos + 1 < s->end) {
            uint32_t c1 = ascii_lower(C(s, pos + 1));
            if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
                add(s, pos += 2);
                continue;
            }
            if (pos + 2 < s->end) {
                uint32_t c2 = ascii_lower(C(s, pos + 2));
                if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
                    add(s, pos += 3);
                    continue;
                }
            }
        }
        if (!(c == '\r' || c == '\n' || (f & NUM))) { /* [^\r\n\p{L}\p{N}]?\p{L}+ */
            if ((f & LET) || (F(s, pos + 1) & LET)) {
                pos++;
                while (F(s, pos) & LET) pos++;
                add(s, pos);
                continue;
            }
        }
        if (f & NUM) { /* \p{N}{1,3} */
            size_t ini = pos;
            while (F(s, pos) & NUM) {
                if (++pos - ini >= 3) {
                    add(s, pos);
                    ini = pos;
                }
            }
            add(s, pos);
            continue;
        }
        unsigned f2 = c == ' ' ? F(s, pos + 1) : f;
        if (!(f2 & (WS | LET | NUM)) && f) { /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
            pos += c == ' ';
            while (!(F(s, pos) & (WS | LET | NUM)) && F(s, pos)) pos++;
            while (C(s, pos) == '\r' || C(s, pos) == '\n') pos++;
            add(s, pos);
            continue;
        }
        size_t n_ws = 0, last_rn = 0;
        while (F(s, pos + n_ws) & WS) {
            uint32_t c2 = C(s, pos + n_ws);
            if (c2 == '\r' || c2 == '\n') last_rn = pos + n_ws + 1;
            n_ws++;
        }
        if (last_rn > 0) { /* \s*[\r\n]+ */
            add(s, pos = last_rn);
            continue;
        }
        if (n_ws > 1 && pos + n_ws < s->end) { /* \s+(?!\S) */
            add(s, pos += n_ws - 1);
            continue;
        }
        if (n_ws > 0) { /* \s+ */
            add(s, pos += n_ws);
            continue;
        }
        add(s, ++pos);
    }
}

/* A regex that only finds matches (regex_iterator semantics: leftmost match, then search again
 * after it; the text between matches becomes pieces too). `match` returns the match length at
 * pos, 0 for none. */
typedef size_t (*match_fn)(const split_t *s, size_t pos);

static void stage_matches(split_t *s, match_fn match) {
    size_t pos = s->ini;
    while (pos < s->end) {
        size_t m = match(s, pos);
        if (m == 0) {
            pos++;
            continue;
        }
        add(s, pos);
        add(s, pos += m);
    }
    add(s, s->end);
}

/* \p{N} */
static size_t m_number(const split_t *s, size_t pos) { return (F(s, pos) & NUM) ? 1 : 0; }
/* \p{N}+ */
static size_t m_numbers(const split_t *s, size_t pos) {
    size_t p = pos;
    while (F(s, p) & NUM) p++;
    return p - pos;
}
/* [\r\n] */
static size_t m_crlf(const split_t *s, size_t pos) { return C(s, pos) == '\r' || C(s, pos) == '\n'; }
/* \s?X+ for a class X */
static size_t ws_opt_run(const split_t *s, size_t pos, unsigned cls) {
    size_t p = pos;
    if ((F(s, p) & WS) && (F(s, p + 1) & cls)) p++;
    else if (!(F(s, p) & cls)) return 0;
    while (F(s, p) & cls) p++;
    return p - pos;
}
static size_t m_ws_letters(const split_t *s, size_t pos) { return ws_opt_run(s, pos, LET); }
static size_t m_ws_punct(const split_t *s, size_t pos) { return ws_opt_run(s, pos, PUN); }
/* [一-龥ࠀ-一가-퟿]+ : U+4E00..U+9FA5, U+0800..U+4E00, U+AC00..U+D7FF. llama.cpp matches it on
 * text where non-ASCII whitespace was replaced by \v, so whitespace never matches. */
static int is_cjk(const split_t *s, size_t i) {
    uint32_t c = C(s, i);
    return ((c >= 0x0800 && c <= 0x9FA5) || (c >= 0xAC00 && c <= 0xD7FF)) && !(F(s, i) & WS);
}
static size_t m_cjk(const split_t *s, size_t pos) {
    size_t p = pos;
    while (is_cjk(s, p)) p++;
    return p - pos;
}
/* [\p{P}\$\+<=>\^~\|]+ */
static size_t m_punct_syms(const split_t *s, size_t pos) {
    size_t p = pos;
    for (;;) {
        uint32_t c = C(s, p);
        if ((F(s, p) & PUN) || (c < 0x80 && c && strchr("$+<=>^~|", (int)c))) p++;
        else break;
    }
    return p - pos;
}
/* [0-9][0-9][0-9] */
static size_t m_3digits(const split_t *s, size_t pos) {
    for (size_t k = 0; k < 3; k++)
        if (C(s, pos + k) < '0' || C(s, pos + k) > '9') return 0;
    return 3;
}

typedef enum stage_e {
    ST_END = 0,
    ST_GPT2,
    ST_LLAMA3,
    ST_NUMBER,
    ST_NUMBERS,
    ST_CRLF,
    ST_WS_LETTERS,
    ST_WS_PUNCT,
    ST_CJK,
    ST_PUNCT_SYMS,
    ST_3DIGITS,
} stage_t;

/* llama.cpp's regex list for each pre-tokenizer, in order. */
static const stage_t *stages_of(ql__tok_pre_t pre) {
    static const stage_t k_default[] = {ST_PUNCT_SYMS, ST_GPT2, ST_NUMBERS, ST_3DIGITS, ST_END};
    static const stage_t k_gpt2[] = {ST_GPT2, ST_END};
    static const stage_t k_starcoder[] = {ST_NUMBER, ST_GPT2, ST_END};
    static const stage_t k_deepseek_coder[] = {ST_CRLF, ST_WS_LETTERS, ST_WS_PUNCT, ST_CJK, ST_NUMBER, ST_END};
    static const stage_t k_llama3[] = {ST_LLAMA3, ST_END};
    switch (pre) {
    case QL__TOK_PRE_GPT2: return k_gpt2;
    case QL__TOK_PRE_STARCODER: return k_starcoder;
    case QL__TOK_PRE_DEEPSEEK_CODER: return k_deepseek_coder;
    case QL__TOK_PRE_LLAMA3: return k_llama3;
    case QL__TOK_PRE_DEFAULT:
    case QL__TOK_PRE_NONE: break;
    }
    return k_default;
}

int ql__tok_pre_split(ql__tok_pre_t pre, const char *text, size_t len, ql__tok_scratch_t *sc,
                      const uint32_t **ends) {
    *ends = NULL;
    if (len == 0) return 0;
    /* One block for the five per-code-point arrays; each holds at most one entry per byte,
     * plus one. */
    size_t need = len + 1;
    if (need > sc->cap_cpt) {
        size_t per = 4 * sizeof(uint32_t) + sizeof(uint16_t), bytes;
        if (ql_size_mul(need, per, &bytes) != 0) return QL_ENOMEM;
        void *block = malloc(bytes);
        if (block == NULL) return QL_ENOMEM;
        free(sc->pre_block);
        sc->pre_block = block;
        sc->cap_cpt = need;
        sc->cpt = block;
        sc->cpt_off = sc->cpt + need;
        sc->ends_a = sc->cpt_off + need;
        sc->ends_b = sc->ends_a + need;
        sc->flags = (uint16_t *)(sc->ends_b + need);
    }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        uint32_t c;
        int k = ql_utf8_decode(text + i, len - i, &c);
        sc->cpt[n] = c;
        sc->flags[n] = (uint16_t)ql_ucd_flags(c);
        sc->cpt_off[n] = (uint32_t)i;
        i += (size_t)k;
    }
    sc->cpt_off[n] = (uint32_t)len;

    uint32_t *in = sc->ends_a, *out = sc->ends_b;
    size_t n_in = 1;
    in[0] = (uint32_t)n;
    for (const stage_t *st = stages_of(pre); *st != ST_END; st++) {
        split_t s = {sc->cpt, sc->flags, 0, 0, out, 0, 0};
        size_t start = 0;
        for (size_t j = 0; j < n_in; j++) {
            s.ini = start;
            s.end = in[j];
            s.prev = start;
            switch (*st) {
            case ST_GPT2: stage_gpt2(&s); break;
            case ST_LLAMA3: stage_llama3(&s); break;
            case ST_NUMBER: stage_matches(&s, m_number); break;
            case ST_NUMBERS: stage_matches(&s, m_numbers); break;
            case ST_CRLF: stage_matches(&s, m_crlf); break;
            case ST_WS_LETTERS: stage_matches(&s, m_ws_letters); break;
            case ST_WS_PUNCT: stage_matches(&s, m_ws_punct); break;
            case ST_CJK: stage_matches(&s, m_cjk); break;
            case ST_PUNCT_SYMS: stage_matches(&s, m_punct_syms); break;
            case ST_3DIGITS: stage_matches(&s, m_3digits); break;
            case ST_END: break;
            }
            QL_ASSERT(s.prev == s.end); /* every stage covers its piece exactly */
            start = in[j];
        }
        uint32_t *t = in;
        in = out;
        out = t;
        n_in = s.n_out;
    }
    for (size_t j = 0; j < n_in; j++) in[j] = sc->cpt_off[in[j]]; /* code points -> bytes */
    *ends = in;
    return (int)n_in;
}

/* ---- merging ---- */

/* NOTE(tok-missing-byte): a byte the vocabulary has no token for (SmolLM2 lacks 21 of 256:
 * some C0 controls, C0/C1, F1/F2, F5..FF) cannot merge and is dropped, as llama.cpp drops it.
 * Emitting <unk> instead would be worse where, as in SmolLM2, <unk> is <|endoftext|>. */
typedef struct sym_s {
    int32_t id;         /* token of the bytes so far, -1 when the vocabulary lacks the byte */
    int32_t prev, next; /* neighbours in the word, -1 at the ends */
    uint32_t n;         /* bytes; 0 once merged into its left neighbour */
} sym_t;

typedef struct bigram_s {
    int32_t rank;
    int32_t left, right;
    uint32_t size; /* left.n + right.n when queued: stale once either changed */
    int32_t id;    /* the merged token */
} bigram_t;

/* Min-heap on (rank, left): the lowest rank merges first, the leftmost among equals (as
 * llama.cpp's llm_bigram_bpe::comparator). */
static int bg_less(const bigram_t *a, const bigram_t *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static void heap_push(bigram_t *h, size_t *n, bigram_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_less(&v, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = v;
}

static bigram_t heap_pop(bigram_t *h, size_t *n) {
    bigram_t top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && bg_less(&h[c + 1], &h[c])) c++;
        if (!bg_less(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void try_pair(const ql_tok_t *tok, const sym_t *sym, int32_t l, int32_t r, bigram_t *heap, size_t *n_heap) {
    if (l < 0 || r < 0 || sym[l].id < 0 || sym[r].id < 0) return;
    const ql__tok_merge_t *m = ql__tok_merge_find(tok, sym[l].id, sym[r].id);
    if (m == NULL) return;
    heap_push(heap, n_heap, (bigram_t){m->rank, l, r, sym[l].n + sym[r].n, m->id});
}

/* One word (bytes w[0..n)): starts from one symbol per byte, merges by rank. */
static int bpe_word(const ql_tok_t *tok, const unsigned char *w, size_t n, ql__tok_scratch_t *sc, ql__tok_out_t *o) {
    if (n == 1) {
        if (tok->byte_tok[w[0]] >= 0) ql__tok_emit(o, tok->byte_tok[w[0]]);
        return 0;
    }
    if (tok->ignore_merges) { /* llama3: a word that is a whole token is taken as is */
        if (ql__tok_grow((void **)&sc->buf, &sc->cap_buf, 2 * n, 1) != 0) return QL_ENOMEM;
        size_t k = 0;
        for (size_t i = 0; i < n; i++) k += (size_t)ql_utf8_encode(ql__tok_gpt2_byte_to_cpt(w[i]), sc->buf + k);
        int32_t id = ql__tok_map_find(tok, sc->buf, k);
        if (id >= 0) {
            ql__tok_emit(o, id);
            return 0;
        }
    }
    if (ql__tok_grow(&sc->sym, &sc->cap_sym, n, sizeof(sym_t)) != 0) return QL_ENOMEM;
    /* At most n - 1 pairs to start with and two more per merge (n - 1 merges at most). */
    if (ql__tok_grow(&sc->heap, &sc->cap_heap, 3 * n, sizeof(bigram_t)) != 0) return QL_ENOMEM;
    sym_t *sym = sc->sym;
    bigram_t *heap = sc->heap;
    size_t n_heap = 0;
    for (size_t i = 0; i < n; i++)
        sym[i] = (sym_t){tok->byte_tok[w[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 1};
    for (size_t i = 1; i < n; i++) try_pair(tok, sym, (int32_t)i - 1, (int32_t)i, heap, &n_heap);
    while (n_heap > 0) {
        bigram_t b = heap_pop(heap, &n_heap);
        sym_t *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->id = b.id;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        try_pair(tok, sym, l->prev, b.left, heap, &n_heap);
        try_pair(tok, sym, b.left, l->next, heap, &n_heap);
    }
    for (int32_t i = 0; i != -1; i = sym[i].next)
        if (sym[i].id >= 0) ql__tok_emit(o, sym[i].id);
    return 0;
}

int ql__tok_bpe_encode(const ql_tok_t *tok, const char *text, size_t len, ql__tok_scratch_t *sc, ql__tok_out_t *o) {
    const uint32_t *ends;
    int n = ql__tok_pre_split(tok->pre, text, len, sc, &ends);
    if (n < 0) return n;
    size_t start = 0;
    for (int i = 0; i < n; i++) {
        int rc = bpe_word(tok, (const unsigned char *)text + start, ends[i] - start, sc, o);
        if (rc != 0) return rc;
        start = ends[i];
    }
    return 0;
}
