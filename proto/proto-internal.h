/*
 * proto/proto-internal.h — helpers shared by proto/'s files (not part of the public API):
 * UTF-8 repair and the jansson glue every writer uses. Includes jansson: never include this
 * outside proto/ (tests may, for white-box checks).
 */
#ifndef QL_PROTO_INTERNAL_H
#define QL_PROTO_INTERNAL_H

#include <jansson.h>

#include "proto/proto.h"

/* The UTF-8 sequence at s[0..len) (len >= 1): returns how many bytes the next unit takes and
 * sets *valid. A valid character takes 1..4 bytes; an ill-formed unit is a maximal subpart (a
 * valid lead byte with its valid continuations, cut short) or a single byte, and becomes one
 * U+FFFD. *cp receives the code point of a valid character. */
size_t ql__proto_utf8_next(const unsigned char *s, size_t len, int *valid, uint32_t *cp);

/* 1 when s[0..len) is valid UTF-8. */
int ql__proto_utf8_valid(const char *s, size_t len);

/* A JSON string of s[0..len) with ill-formed UTF-8 repaired (NOTE(utf8-out) in proto.h); s may
 * be NULL when len is 0. Returns a new reference, or NULL on OOM. */
json_t *ql__proto_json_text(const char *s, size_t len);

/* Sets obj[key] = val, stealing `val`; returns 0 or QL_ENOMEM (val NULL or the set failed). */
int ql__proto_set(json_t *obj, const char *key, json_t *val);
/* Appends `val` to array `arr`, stealing it; returns 0 or QL_ENOMEM. */
int ql__proto_push(json_t *arr, json_t *val);

/* Appends `j` (borrowed) as compact JSON, framed as `prefix` JSON `suffix` (either may be NULL).
 * Returns 0 or QL_ENOMEM; on failure `out` is unchanged. */
int ql__proto_dump(const json_t *j, const char *prefix, const char *suffix, ql_proto_buf_t *out);

/* The error object {"error":{...}} as a new reference, or NULL on OOM. */
json_t *ql__proto_error_obj(const ql_proto_error_t *e);

#endif /* QL_PROTO_INTERNAL_H */
