/*
 * scheduler/detok.c — incremental detokenization (see detok.h): pieces joined, an incomplete
 * UTF-8 tail held back until the next piece.
 */
#define QL_LOG_MODULE "detok"
#include "scheduler/detok.h"

#include <stdlib.h>
#include <string.h>

#include "model/unicode.h"

void ql_detok_init(ql_detok_t *d, const ql_tok_t *tok, uint32_t flags) {
    memset(d, 0, sizeof(*d));
    d->_tok = tok;
    d->_flags = flags & QL_TOK_RENDER_SPECIAL;
}

int ql_detok_push(ql_detok_t *d, int32_t id, const char **text, size_t *len) {
    if (!d || !text || !len || !d->_tok) return QL_EINVAL;
    *text = "";
    *len = 0;
    const char *piece;
    size_t n;
    int rc = ql_tok_piece(d->_tok, id, d->_flags, &piece, &n);
    if (rc != 0) return rc;
    size_t total = d->_held + n;
    if (total >= d->_cap) { /* >=: the buffer exists even for an empty piece */
        size_t cap = d->_cap ? d->_cap : 64;
        while (cap <= total) cap *= 2;
        d->_buf = ql_xrealloc(d->_buf, cap);
        d->_cap = cap;
    }
    memcpy(d->_buf, d->_tail, d->_held);
    memcpy(d->_buf + d->_held, piece, n);
    size_t tail = ql_utf8_incomplete_tail(d->_buf, total);
    QL_ASSERT(tail < sizeof(d->_tail));
    memcpy(d->_tail, d->_buf + total - tail, tail);
    d->_held = tail;
    *text = d->_buf;
    *len = total - tail;
    d->_n_bytes += *len;
    return 0;
}

void ql_detok_flush(ql_detok_t *d, const char **text, size_t *len) {
    *text = "";
    *len = 0;
    if (d->_held == 0) return;
    d->_held = 0;
    *text = QL_DETOK_REPLACEMENT;
    *len = sizeof(QL_DETOK_REPLACEMENT) - 1;
    d->_n_bytes += *len;
}

uint64_t ql_detok_n_bytes(const ql_detok_t *d) { return d->_n_bytes; }

void ql_detok_free(ql_detok_t *d) {
    if (!d) return;
    free(d->_buf);
    d->_buf = NULL;
    d->_cap = 0;
    d->_held = 0;
}
