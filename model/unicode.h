/*
 * model/unicode.h — the little Unicode the tokenizers need: UTF-8 decoding the way
 * llama.cpp does it, code point classes (\p{L}, \p{N}, \p{P}, \s ...) from a table generated
 * by tools/gen-unicode-data.py, and ql_utf8_incomplete_tail() for streaming detokenization.
 *
 * Everything here is pure and reentrant: no state, callable from any thread.
 */
#ifndef QL_MODEL_UNICODE_H
#define QL_MODEL_UNICODE_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Code point classes. Exactly one of the category bits is set for every code point up to
 * U+10FFFF (UNDEFINED = unassigned, Cn); WHITESPACE is Unicode's White_Space property and
 * comes on top of SEPARATOR or CONTROL. The values are written into model/unicode-data.c by
 * tools/gen-unicode-data.py: change both together. */
typedef enum ql_ucd_flag_e {
    QL_UCD_UNDEFINED = 0x0001,   /* Cn */
    QL_UCD_NUMBER = 0x0002,      /* \p{N} */
    QL_UCD_LETTER = 0x0004,      /* \p{L} */
    QL_UCD_SEPARATOR = 0x0008,   /* \p{Z} */
    QL_UCD_MARK = 0x0010,        /* \p{M} */
    QL_UCD_PUNCTUATION = 0x0020, /* \p{P} */
    QL_UCD_SYMBOL = 0x0040,      /* \p{S} */
    QL_UCD_CONTROL = 0x0080,     /* \p{C} other than Cn: Cc, Cf, Cs, Co */
    QL_UCD_WHITESPACE = 0x0100,  /* \s */
} ql_ucd_flag_t;

/** The QL_UCD_* flags of code point `cpt`; above U+10FFFF: QL_UCD_UNDEFINED. O(log runs). */
QL_API unsigned ql_ucd_flags(uint32_t cpt);

/** Decodes one code point from s[0..len) (len >= 1) into *cpt and returns the number of
 *  bytes it took (1..4).
 *  NOTE(utf8-lenient): this mirrors llama.cpp's unicode_cpt_from_utf8 so that quill splits
 *  text exactly as llama.cpp does: the lead byte gives the length, each continuation byte
 *  must be 10xxxxxx, and overlong forms and surrogates are accepted as the value they
 *  spell. A byte that does not start a complete sequence of that shape is invalid: then
 *  *cpt = 0xFFFD (what llama.cpp substitutes) and the return value is 1, so the caller
 *  always advances and never loses a byte (tokenizers keep the original bytes). */
QL_API int ql_utf8_decode(const char *s, size_t len, uint32_t *cpt);

/** Writes the UTF-8 encoding of `cpt` (<= 0x10FFFF; surrogates encoded as-is) into out[0..4)
 *  and returns its length 1..4, or 0 when cpt > 0x10FFFF. */
QL_API int ql_utf8_encode(uint32_t cpt, char out[4]);

/** How many trailing bytes of buf[0..len) are the start of a UTF-8 sequence that is not
 *  complete yet (0..3): a streaming detokenizer emits buf[0..len - n) now and keeps the last n
 *  bytes until more tokens arrive. Only a lead byte whose sequence is cut by the end of the
 *  buffer counts, with its continuation bytes so far; anything else (complete sequences,
 *  invalid bytes, stray continuation bytes) returns 0, because waiting would never make it
 *  valid. Strict: C0, C1 and F5..FF are never leads, and E0/ED/F0/F4 constrain the second
 *  byte as RFC 3629 says, so an impossible prefix is released at once. Thread: any. */
QL_API size_t ql_utf8_incomplete_tail(const char *buf, size_t len);

/** 1 when buf[0..len) is valid UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing
 *  above U+10FFFF), else 0. */
QL_API int ql_utf8_valid(const char *buf, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* QL_MODEL_UNICODE_H */
