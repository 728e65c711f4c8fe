/*
 * scheduler/stop.h — stop strings over streamed text: text that may be the start of a stop
 * string is held back until it is known not to be, so no part of a stop string is ever emitted,
 * however the model's tokens cut it.
 *
 * The engine thread (engine.c) feeds every text delta of a choice (after incremental
 * detokenization, detok.h) through one ql_stop_t and emits only what comes out. The other stop
 * conditions (EOS and end-of-turn tokens, stop token ids, max_tokens, min_tokens, the context)
 * are token-level and live in the engine; ql_finish_reason_t names their outcome.
 *
 * Rule, at every push (pending = held text + the new text):
 *   1. when matching is on, the earliest occurrence of any stop string in pending ends the
 *      output: the text before it is released, the stop string and everything after it dropped
 *      (OpenAI: "the returned text will not contain the stop sequence"). At one position the
 *      first listed stop string wins;
 *   2. otherwise the longest suffix of pending that is a proper prefix of some stop string is
 *      held, and the rest released.
 * Matching is off while the output is shorter than min_tokens: vLLM's rule, where stop strings
 * do not count until then; a stop string completed then is ordinary text (released), a proper
 * prefix is still held so it can complete later.
 *
 * NOTE(stop-utf8): stop strings are valid UTF-8 (the HTTP layer parsed them from JSON), so a
 * match or a held suffix starts at a lead or ASCII byte: released text never ends inside a
 * character that was whole in pending.
 *
 * Memory: pending and the released text, each at most the longest stop string plus the
 * longest delta; grows a few times, then never allocates. Thread: one thread at a time.
 */
#ifndef QL_SCHEDULER_STOP_H
#define QL_SCHEDULER_STOP_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Why a choice ended, as OpenAI's finish_reason names it. Values are stable (append only). */
typedef enum ql_finish_reason_e {
    QL_FINISH_REASON_NONE = 0,   /* not finished */
    QL_FINISH_REASON_STOP = 1,   /* "stop": EOS / end of turn, a stop string, a stop token id */
    QL_FINISH_REASON_LENGTH = 2, /* "length": max_tokens, or the model's context is full */
} ql_finish_reason_t;

/** "stop", "length"; NULL for NONE or an unknown value. Thread: any. */
QL_API const char *ql_finish_reason_name(ql_finish_reason_t r);

/* A stop string: text[0, len), len >= 1, not NUL-terminated. */
typedef struct ql_stop_str_s {
    const char *text;
    size_t len;
} ql_stop_str_t;

/* The matcher of one choice: embed it (fields are private). */
typedef struct ql_stop_s {
    const ql_stop_str_t *_stops; /* [_n], borrowed */
    int32_t _n;
    size_t _len_max;             /* the longest stop string */
    char *_pending;              /* [_pending_cap]: held text, [0, _n_pending) */
    size_t _n_pending, _pending_cap;
    char *_out;                  /* [_out_cap]: the last text released */
    size_t _out_cap;
    int _matched;
} ql_stop_t;

/** Prepares `st` for stop strings stops[0, n) (n may be 0: everything is released at once).
 *  `stops` and the texts are borrowed and must outlive `st`. Allocates nothing.
 *  @return 0, or QL_EINVAL (NULL with n > 0, a NULL or empty stop string). Thread: any. */
QL_API int ql_stop_init(ql_stop_t *st, const ql_stop_str_t *stops, int32_t n);

/** Feeds text[0, len) (a detokenized delta). `match` is 0 while stop strings must not end the
 *  output yet (min_tokens), else 1. The releasable text goes to *out / *out_len, borrowed until
 *  the next call on `st` (not NUL-terminated; may be empty).
 *  @return 0 (go on); 1 when a stop string matched: *out is the text before it and *which (when
 *  not NULL) the index of the stop string; the matcher is then finished. QL_ESTATE after a
 *  match; QL_EINVAL for a NULL argument. Allocation failure aborts (ql_xrealloc).
 *  Thread: the one using `st`. */
QL_API int ql_stop_push(ql_stop_t *st, const char *text, size_t len, int match, const char **out,
                        size_t *out_len, int32_t *which);

/** Releases the held text (the output ended for another reason: it is not a stop string) into
 *  *out / *out_len, borrowed as above. Nothing after a match. Thread: the one using `st`. */
QL_API void ql_stop_flush(ql_stop_t *st, const char **out, size_t *out_len);

/** Bytes held back now (a suffix that may start a stop string). Thread: the one using `st`. */
QL_API size_t ql_stop_n_held(const ql_stop_t *st);

/** Frees the buffers; `st` may be freed twice. */
QL_API void ql_stop_free(ql_stop_t *st);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_STOP_H */
