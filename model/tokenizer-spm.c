/*
 * model/tokenizer-spm.c — SentencePiece BPE (Llama 2, Phi-3): spaces become U+2581, the text is
 * cut into UTF-8 characters, and adjacent pieces whose concatenation is a token merge, the
 * highest-scoring first; a piece left that is not a token falls back to its bytes (<0xXX>).
 * As llama.cpp's llm_tokenizer_spm_session, without pre-tokenization: merges may cross spaces.
 */
#define QL_LOG_MODULE "tok"
#include "model/tokenizer-internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct sym_s {
    int32_t id;         /* token of the text so far, or -1 */
    int32_t prev, next; /* neighbours, -1 at the ends */
    uint32_t start;     /* offset into the escaped text */
    uint32_t n;         /* bytes; 0 once merged into its left neighbour */
} sym_t;

typedef struct bigram_s {
    float score;
    int32_t left, right;
    uint32_t size; /* left.n + right.n when queued: stale once either changed */
    int32_t id;
} bigram_t;

/* Max-heap on score, the leftmost among equals (llama.cpp's llm_bigram_spm::comparator).
 * Scores are finite (checked at load), so the order is total. */
static int bg_before(const bigram_t *a, const bigram_t *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static void heap_push(bigram_t *h, size_t *n, bigram_t v) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!bg_before(&v, &h[p])) break;
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
        if (c + 1 < *n && bg_before(&h[c + 1], &h[c])) c++;
        if (!bg_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void try_pair(const ql_tok_t *tok, const char *text, const sym_t *sym, int32_t l, int32_t r, bigram_t *heap,
                     size_t *n_heap) {
    if (l < 0 || r < 0) return;
    uint32_t size = sym[l].n + sym[r].n;
    int32_t id = ql__tok_map_find(tok, text + sym[l].start, size); /* -1 when longer than any token */
    if (id < 0) return;
    float score = tok->score ? tok->score[id] : 0.0f;
    heap_push(heap, n_heap, (bigram_t){score, l, r, size, id});
}

/* Length of the character at t[0..n): the lead byte's length (by its high nibble, as llama.cpp's
 * unicode_len_utf8) when that many bytes follow and all are continuation bytes, else 1.
 * NOTE(tok-spm-invalid): llama.cpp takes the lead byte's length blindly, so an invalid lead
 * swallows the next character ("\xCF " takes half of the U+2581 a space became, and the space
 * comes back as U+2581's bytes). Cutting a broken sequence byte by byte instead keeps
 * decode(encode(s)) == s for any bytes; the ids differ from llama.cpp's only on invalid UTF-8,
 * where its own are lossy. */
static size_t char_len(const unsigned char *t, size_t n) {
    static const uint8_t k_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    size_t c = k_len[t[0] >> 4];
    if (c > n) return 1;
    for (size_t k = 1; k < c; k++)
        if ((t[k] & 0xC0) != 0x80) return 1;
    return c;
}

int ql__tok_spm_encode(const ql_tok_t *tok, const char *text, size_t len, int prefix_space, ql__tok_scratch_t *sc,
                       ql__tok_out_t *o) {
    /* Escape: ' ' -> U+2581 (3 bytes), with the prefix space first. */
    size_t n_sp = 0;
    for (size_t i = 0; i < len; i++) n_sp += text[i] == ' ';
    size_t n = len + 2 * n_sp + (prefix_space ? 3 : 0); /* len <= 1 GiB: no overflow */
    if (n == 0) return 0;
    if (ql__tok_grow((void **)&sc->buf, &sc->cap_buf, n, 1) != 0) return QL_ENOMEM;
    char *t = sc->buf;
    size_t k = 0;
    if (prefix_space) {
        memcpy(t, "\xe2\x96\x81", 3);
        k = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(t + k, "\xe2\x96\x81", 3);
            k += 3;
        } else {
            t[k++] = text[i];
        }
    }
    QL_ASSERT(k == n);

    if (ql__tok_grow(&sc->sym, &sc->cap_sym, n, sizeof(sym_t)) != 0) return QL_ENOMEM;
    if (ql__tok_grow(&sc->heap, &sc->cap_heap, 3 * n, sizeof(bigram_t)) != 0) return QL_ENOMEM;
    sym_t *sym = sc->sym;
    bigram_t *heap = sc->heap;
    size_t n_sym = 0, n_heap = 0;
    for (size_t i = 0; i < n;) {
        size_t c = char_len((const unsigned char *)t + i, n - i);
        sym[n_sym] = (sym_t){ql__tok_map_find(tok, t + i, c), (int32_t)n_sym - 1, -1, (uint32_t)i, (uint32_t)c};
        if (n_sym > 0) sym[n_sym - 1].next = (int32_t)n_sym;
        n_sym++;
        i += c;
    }
    for (size_t i = 1; i < n_sym; i++) try_pair(tok, t, sym, (int32_t)i - 1, (int32_t)i, heap, &n_heap);
    while (n_heap > 0) {
        bigram_t b = heap_pop(heap, &n_heap);
        sym_t *l = &sym[b.left], *r = &sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size) continue; /* stale */
        l->id = b.id;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        try_pair(tok, t, sym, l->prev, b.left, heap, &n_heap);
        try_pair(tok, t, sym, b.left, l->next, heap, &n_heap);
    }
    for (int32_t i = 0; i != -1; i = sym[i].next) {
        if (sym[i].id >= 0) {
            ql__tok_emit(o, sym[i].id);
            continue;
        }
        /* Byte fallback; without a byte token, <unk>; without <unk>, nothing (llama.cpp would
         * throw here). */
        for (uint32_t j = 0; j < sym[i].n; j++) {
            int32_t id = tok->byte_tok[(unsigned char)t[sym[i].start + j]];
            if (id < 0) id = tok->unk;
            if (id >= 0) ql__tok_emit(o, id);
        }
    }
    return 0;
}
