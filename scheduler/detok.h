/*
 * scheduler/detok.h — incremental detokenization: turns a request's generated token ids, one
 * at a time, into text deltas that are never a broken UTF-8 sequence and that add up to exactly
 * the text of the whole output.
 *
 * Used by the engine thread (engine.c) for every choice of every request; the deltas then go
 * through the stop-string matcher (stop.h) before the caller sees them.
 *
 * NOTE(detok-space): generated ids continue the prompt, so no piece ever loses a leading space:
 * the concatenated deltas equal ql_tok_decode(ids, QL_TOK_CONTINUATION). This is what
 * llama.cpp's server streams (token_to_piece with lstrip 0 for every generated token); the space
 * that SentencePiece's encoder put in front of the prompt belongs to the prompt, and the first
 * generated piece "▁Hello" really is " Hello". Decoding each piece on its own is exact for both
 * vocabularies quill reads: byte-level BPE pieces are bytes, SPM pieces are bytes after the
 * U+2581 -> space and <0xXX> -> byte maps, and neither depends on the neighbouring tokens.
 *
 * UTF-8: a piece may end inside a character (byte tokens, a character split over two tokens).
 * Those trailing bytes (ql_utf8_incomplete_tail(), at most 3) are held until the next piece
 * completes them. Bytes that no continuation could make valid are released as they are (the
 * whole output holds them too); the HTTP layer replaces invalid bytes with U+FFFD when it writes
 * JSON. At the end of the output (ql_detok_flush) a tail that is still incomplete is released as
 * one U+FFFD, as a decoder with errors="replace" would: a delta is never a cut character.
 *
 * Memory: the held bytes plus the longest piece so far; grows a few times, then never allocates.
 * Thread: a ql_detok_t is used by one thread at a time; the tokenizer is immutable and shared.
 */
#ifndef QL_SCHEDULER_DETOK_H
#define QL_SCHEDULER_DETOK_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "model/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The U+FFFD replacement character, UTF-8. */
#define QL_DETOK_REPLACEMENT "\xEF\xBF\xBD"

/* One output's detokenizer: embed it (fields are private). */
typedef struct ql_detok_s {
    const ql_tok_t *_tok;
    uint32_t _flags;  /* QL_TOK_RENDER_SPECIAL or 0 */
    char _tail[4];    /* [_held]: the start of a character not complete yet */
    size_t _held;     /* 0..3 */
    char *_buf;       /* [_cap]: the last delta returned */
    size_t _cap;
    uint64_t _n_bytes; /* bytes released so far */
} ql_detok_t;

/** Prepares `d` for a new output over `tok` (borrowed: it must outlive `d`). `flags` is 0 or
 *  QL_TOK_RENDER_SPECIAL (control tokens rendered as their text; without it they add nothing,
 *  as llama.cpp's server does by default). Allocates nothing. Thread: any. */
QL_API void ql_detok_init(ql_detok_t *d, const ql_tok_t *tok, uint32_t flags);

/** Appends token `id` and returns in *text / *len the bytes that became final: the held tail
 *  plus the piece, less the new incomplete tail. *text is borrowed until the next call on `d`
 *  (not NUL-terminated; *len may be 0).
 *  @return 0; QL_ERANGE (id outside the vocabulary: nothing appended, *len = 0); QL_EINVAL
 *  (NULL argument). Allocation failure aborts (ql_xrealloc): the buffer holds one piece.
 *  Thread: the one using `d`. */
QL_API int ql_detok_push(ql_detok_t *d, int32_t id, const char **text, size_t *len);

/** Ends the output: returns the held incomplete tail as one U+FFFD (or nothing when none is
 *  held), borrowed as in ql_detok_push. `d` may then be pushed to again (a new output).
 *  Thread: the one using `d`. */
QL_API void ql_detok_flush(ql_detok_t *d, const char **text, size_t *len);

/** Bytes released so far (pushes and flushes). Thread: the one using `d`. */
QL_API uint64_t ql_detok_n_bytes(const ql_detok_t *d);

/** Frees the buffer; `d` may be freed twice or re-initialised. */
QL_API void ql_detok_free(ql_detok_t *d);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_DETOK_H */
