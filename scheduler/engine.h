/*
 * scheduler/engine.h — the engine thread: owns the scheduler (scheduler.h), the block manager
 * (kv-cache.h) and the backend, and turns submitted requests into streams of output events.
 *
 * Flow: any thread submits a request (prompt token ids, sampling and stop parameters, a
 * callback) into the inbox, a mutex-protected list; the engine thread wakes (condition
 * variable: it sleeps whenever it has nothing to do, it never spins), moves new requests into
 * the scheduler's waiting queue, applies cancellations, and runs steps: one batch per step
 * (prefill chunks and decode tokens of every running sequence), then for each sequence that got
 * logits: sampling (sampling.h), stop conditions (stop.h), incremental detokenization
 * (detok.h), and one OUTPUT event through the request's callback.
 *
 * Guarantees:
 *   - Every accepted request (ql_engine_submit returned 0) ends in exactly one final event:
 *     FINISHED (every choice ended with a finish reason) or ERROR (a status and a message:
 *     cancelled, shut down, the backend failed). Nothing is delivered for it afterwards.
 *   - Events of one request arrive in order, on the engine thread; the callback is never called
 *     with the engine's lock held, so it may call ql_engine_submit, ql_engine_cancel and
 *     ql_engine_get_counters (not ql_engine_free).
 *   - A cancellation takes effect at the start of the next step (at most one step after the
 *     call) and frees every KV block the request held.
 *   - Text deltas never cut a UTF-8 character and never contain any part of a stop string;
 *     their concatenation is the detokenized output (see detok.h and stop.h for the edges).
 *   - A request that cannot ever fit (prompt + max_tokens > max_model_len, or more KV blocks
 *     than the pool) is refused by ql_engine_submit, never accepted and failed later; one that
 *     fits is never failed for lack of KV space (preemption and recompute, scheduler.h).
 *   - If the backend fails, every request in flight ends with an ERROR carrying its status, the
 *     engine reports itself unhealthy and refuses new requests.
 *
 * Stop conditions of a choice, checked after each sampled token, in this order:
 *   1. an end-of-generation token (EOS, end of turn: ql_tok_is_eog) unless ignore_eos, or one
 *      of stop_token_ids: "stop"; the token counts as a completion token but adds no text;
 *   2. a stop string (stop.h): "stop"; the text before it is emitted, nothing after;
 *   3. max_tokens output tokens, or the sequence reaching max_model_len: "length".
 *   While fewer than min_tokens tokens are generated, end-of-generation tokens (unless
 *   ignore_eos) and stop_token_ids are banned before sampling (logit bias -inf: reported
 *   logprobs stay the raw model's, sampling.h NOTE(logprobs)), and stop strings do not match.
 *
 * Threads: ql_engine_init/ql_engine_free from one controlling thread; submit, cancel,
 * shutdown, get_counters, healthy from any thread. The backend and the tokenizer are borrowed
 * and must outlive the engine; the backend is used by the engine thread only.
 */
#ifndef QL_SCHEDULER_ENGINE_H
#define QL_SCHEDULER_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "core/core.h"
#include "model/tokenizer.h"
#include "scheduler/sampling.h"
#include "scheduler/stop.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ql_engine_s ql_engine_t; /* opaque */

/* Zero fields take the documented default. */
typedef struct ql_engine_params_s {
    int32_t max_num_seqs;       /* sequences running at once (each choice counts). Default 64;
                                   capped by the backend's n_seqs_max and n_logits_max, and by
                                   max_batched_tokens */
    int32_t max_batched_tokens; /* tokens per step. Default and cap: the backend's
                                   n_batch_tokens_max */
    int32_t max_model_len;      /* prompt + output tokens of one sequence. Default: the
                                   backend's n_ctx_max; capped by it and by the KV pool
                                   (n_blocks * block_size, with a warning) */
    int32_t disable_prefix_cache; /* 1: no prefix caching (--no-prefix-cache) */
    uint64_t prefix_hash_seed;  /* seeds the prefix-cache hash (prefix-cache.h NOTE(collisions)) */
    /* speculative decoding (spec.h; NOTE(spec) in engine.c) */
    int32_t spec_method;        /* ql_engine_spec_t; default none */
    int32_t spec_k;             /* drafted tokens per sequence and step at most, 1..16.
                                   Default 4. The backend's n_logits_max must leave rows for
                                   them (max_num_seqs · (1 + spec_k)), else fewer are drafted */
    int32_t spec_ngram_min;     /* ngram: shortest n-gram matched. Default 1 */
    int32_t spec_ngram_max;     /* ngram: longest n-gram matched. Default 3 */
    int32_t spec_layers;        /* layerskip: the draft runs the first L layers. Default 4 */
    int32_t spec_fixed_k;       /* 1: always draft spec_k (no load adaptation; for tests and
                                   benchmarks of the mechanics) */
    ql_backend_t *draft_backend; /* QL_ENGINE_SPEC_DRAFT: the draft model's backend, borrowed
                                   like `be` (same n_vocab; the caller checks the vocabularies
                                   match token for token). Its own KV pool holds the draft's
                                   KV; its n_seqs_max and n_logits_max must reach max_num_seqs */
} ql_engine_params_t;

typedef enum ql_engine_spec_e {
    QL_ENGINE_SPEC_NONE = 0,
    QL_ENGINE_SPEC_DRAFT = 1,     /* a second, smaller model (draft_backend) */
    QL_ENGINE_SPEC_NGRAM = 2,     /* prompt lookup in the sequence's own tokens */
    QL_ENGINE_SPEC_LAYERSKIP = 3, /* the target's first spec_layers layers and its head */
} ql_engine_spec_t;

typedef enum ql_engine_event_kind_e {
    QL_ENGINE_EVENT_OUTPUT = 1,   /* one choice's new tokens, logprobs and text; finish_reason set
                                     when the choice ended with them */
    QL_ENGINE_EVENT_FINISHED = 2, /* final: every choice ended; usage and timing */
    QL_ENGINE_EVENT_ERROR = 3,    /* final: the request failed or was cancelled */
} ql_engine_event_kind_t;

/* Usage and timing of one request, in the final event. Times are ql_time_ns() values;
 * 0 = did not happen. */
typedef struct ql_engine_stats_s {
    int32_t n_prompt_tokens;
    int32_t n_cached_prompt_tokens; /* served by the prefix cache at the first admission (a
                                       preempted and recomputed request keeps this count) */
    int32_t n_completion_tokens;    /* every choice, end-of-generation tokens included */
    int32_t n_preemptions;          /* of any of its sequences */
    int32_t n_draft_tokens;         /* speculative tokens drafted and verified */
    int32_t n_accepted_tokens;      /* of those, accepted (each an output token) */
    uint64_t t_submit_ns;           /* accepted by ql_engine_submit */
    uint64_t t_scheduled_ns;        /* first admitted into a step (queue time = this - submit) */
    uint64_t t_first_token_ns;      /* first output token sampled */
    uint64_t t_finish_ns;           /* the final event */
} ql_engine_stats_t;

/* An event, borrowed for the duration of the callback (copy what you keep). */
typedef struct ql_engine_event_s {
    ql_engine_event_kind_t kind;
    uint64_t handle;                /* as ql_engine_submit returned it */
    const char *request_id;         /* NUL-terminated */
    void *user_data;                /* the request's */
    /* OUTPUT */
    int32_t choice;                 /* which choice, [0, n) */
    const int32_t *tokens;          /* [n_tokens] sampled this step (1 without speculation) */
    int32_t n_tokens;
    const ql_sample_result_t *logprobs; /* [n_tokens] when the request asked for logprobs
                                       (sampling.logprobs), else NULL */
    const char *text;               /* [text_len] the text delta, not NUL-terminated, may be
                                       empty (held back: a cut character, a possible stop) */
    size_t text_len;
    ql_finish_reason_t finish_reason; /* NONE, or why this choice just ended */
    /* FINISHED */
    int32_t n_choices;
    const ql_finish_reason_t *finish_reasons; /* [n_choices] */
    /* FINISHED and ERROR */
    ql_engine_stats_t stats;
    /* ERROR */
    int status;                     /* QL_ECANCELED (cancelled, engine shut down), the backend's
                                       status, QL_ERANGE (no token could be sampled),
                                       QL_EINTERNAL, QL_ENOMEM */
    const char *message;            /* NUL-terminated, one line */
} ql_engine_event_t;

/** Called on the engine thread, for every event of a request (see the guarantees above). Keep it
 *  short: the engine's next step waits for it (the server copies the event and wakes its loop). */
typedef void (*ql_engine_event_fn)(const ql_engine_event_t *ev, void *user_data);

/* A request. Everything is copied by ql_engine_submit; nothing is borrowed after it returns. */
typedef struct ql_engine_request_s {
    const char *id;                 /* for logs and ql_engine_cancel_id; NULL: "" */
    const int32_t *prompt;          /* [n_prompt] token ids in [0, n_vocab) */
    int32_t n_prompt;               /* >= 1 */
    ql_sampling_params_t sampling;  /* validated (sampling.h); logit_bias copied. Choice i draws
                                       from seed + i. logprobs/top_logprobs: per-token logprobs */
    int32_t n;                      /* choices, 1..max_num_seqs; 0 means 1 */
    int32_t max_tokens;             /* output tokens per choice, >= 1; <= 0: until the context
                                       is full (max_model_len - n_prompt) */
    int32_t min_tokens;             /* >= 0; <= max_tokens when that is set */
    int32_t ignore_eos;             /* 1: end-of-generation tokens neither stop nor are banned */
    const ql_stop_str_t *stop;      /* [n_stop] stop strings, each non-empty */
    int32_t n_stop;
    const int32_t *stop_token_ids;  /* [n_stop_token_ids] in [0, n_vocab) */
    int32_t n_stop_token_ids;
    int32_t priority;               /* lower is served first; equal: first come first served */
    int32_t render_special;         /* 1: control tokens appear in the text as their text */
    int32_t spec_tokens;            /* speculation for this request: 0 = the engine's setting,
                                       -1 = none, 1..16 = at most this many drafts per step
                                       (capped by the engine's spec_k) */
    ql_engine_event_fn on_event;    /* required */
    void *user_data;                /* passed to on_event */
} ql_engine_request_t;

/** A request with every field at its default: n 1, sampling ql_sampling_params_default(),
 *  max_tokens 0 (to the context), the rest zero/NULL. Thread: any. */
QL_API ql_engine_request_t ql_engine_request_default(void);

/* Counters for /metrics, as a consistent snapshot (vLLM's names in comments). */
typedef struct ql_engine_counters_s {
    int32_t n_running;               /* num_requests_running: sequences in the running set */
    int32_t n_waiting;               /* num_requests_waiting: sequences queued, inbox included */
    int32_t kv_blocks_total;
    int32_t kv_blocks_used;          /* kv_cache_usage_perc = used / total */
    int32_t kv_blocks_cached;        /* unreferenced, kept for prefix hits */
    uint64_t prefix_queries_tokens;  /* prefix_cache_queries */
    uint64_t prefix_hits_tokens;     /* prefix_cache_hits */
    uint64_t n_preemptions;          /* num_preemptions */
    uint64_t n_prompt_tokens;        /* prompt_tokens: prompt tokens of admitted requests */
    uint64_t n_generation_tokens;    /* generation_tokens: tokens sampled */
    uint64_t n_steps;                /* forward passes */
    uint64_t n_requests_finished;    /* final event FINISHED */
    uint64_t n_requests_failed;      /* final event ERROR, cancellations excluded */
    uint64_t n_requests_cancelled;   /* final event ERROR with QL_ECANCELED */
    uint64_t spec_num_drafts;        /* spec_decode_num_drafts: verifies (sequence-steps with
                                        drafts) */
    uint64_t spec_draft_tokens;      /* spec_decode_num_draft_tokens */
    uint64_t spec_accepted_tokens;   /* spec_decode_num_accepted_tokens */
    int32_t spec_draft_kv_blocks_used; /* the draft model's KV blocks held by sequences (0
                                        without a draft model) */
    int32_t spec_draft_kv_check;     /* once stopped: 0 when the draft's block manager passes
                                        ql_kv_check (QL_EINTERNAL otherwise) */
    int32_t healthy;                 /* 0 after a backend failure */
    int32_t stopped;                 /* 1 once the engine thread has exited */
} ql_engine_counters_t;

/* The limits in force, after defaults and caps. */
typedef struct ql_engine_limits_s {
    int32_t max_num_seqs;
    int32_t max_batched_tokens;
    int32_t max_model_len;
    int32_t n_vocab;
    int32_t block_size;
    int32_t n_blocks;
    int32_t spec_method;    /* ql_engine_spec_t in force */
    int32_t spec_k;         /* 0 without speculation */
} ql_engine_limits_t;

/** Builds the block manager (from the backend's KV layout), the scheduler and the sampler
 *  workspace, and starts the engine thread. `be` and `tok` are borrowed: both must outlive the
 *  engine, and nothing else may use `be` until ql_engine_free returns. On error writes one line
 *  into err (may be NULL).
 *  On success *out is owned by the caller: release it with ql_engine_free().
 *  @return 0, QL_EINVAL (NULL argument, a parameter out of range, a backend whose limits cannot
 *  hold one sequence), QL_ENOMEM, or QL_EIO (the thread could not be started). Thread: the
 *  controlling thread. */
QL_API int ql_engine_init(const ql_engine_params_t *p, ql_backend_t *be, const ql_tok_t *tok,
                          ql_engine_t **out, char *err, size_t errlen);

/** Submits a request: validates it, copies it into the inbox and wakes the engine. On success
 *  *handle (may be NULL) gets a non-zero id for ql_engine_cancel, and the callback will be called
 *  until exactly one final event; on error the callback is never called and err (may be NULL)
 *  holds one line for the client.
 *  @return 0; QL_EINVAL (a field out of range: bad sampling parameters, token ids outside the
 *  vocabulary, empty stop string, min_tokens > max_tokens, n too large, no callback);
 *  QL_ERANGE (context_length_exceeded: prompt + max_tokens > max_model_len, or a prompt that
 *  leaves no room to generate; min_tokens beyond the room left when max_tokens is unset);
 *  QL_ENOSPC (context_length_exceeded: more KV blocks than the whole pool; not reached while
 *  max_model_len is capped by the pool, as ql_engine_init does, so such a request gets
 *  QL_ERANGE); QL_ESTATE (shutting down, or unhealthy); QL_ENOMEM.
 *  Thread: any. */
QL_API int ql_engine_submit(ql_engine_t *e, const ql_engine_request_t *r, uint64_t *handle,
                            char *err, size_t errlen);

/** Asks the engine to cancel a request: it ends with an ERROR event (QL_ECANCELED) at the start
 *  of the next step and frees its KV blocks. A request that already ended (or an unknown handle)
 *  is ignored. Asynchronous: returns at once.
 *  @return 0, QL_EINVAL (NULL engine or handle 0). Thread: any (also from the callback). */
QL_API int ql_engine_cancel(ql_engine_t *e, uint64_t handle);

/** As ql_engine_cancel, for every live request whose id equals `id`.
 *  @return 0, QL_EINVAL (NULL argument). Thread: any. */
QL_API int ql_engine_cancel_id(ql_engine_t *e, const char *id);

/** Stops accepting requests (submit returns QL_ESTATE from now on). With drain = 1 the requests
 *  in flight run to completion, then the engine thread exits; with drain = 0 every request in
 *  flight ends at the next step with an ERROR (QL_ECANCELED, "engine shut down"). May be called
 *  again to turn a drain into an abort. Returns at once: ql_engine_free waits for the thread;
 *  ql_engine_get_counters says when it has stopped. Thread: any. */
QL_API void ql_engine_shutdown(ql_engine_t *e, int drain);

/** A snapshot of the counters, taken under the engine's lock (published after every step and
 *  every change of the inbox). Thread: any. */
QL_API void ql_engine_get_counters(ql_engine_t *e, ql_engine_counters_t *out);

/** 1 while the backend has not failed, else 0. Thread: any. */
QL_API int ql_engine_healthy(ql_engine_t *e);

/** The limits in force. Thread: any (fixed at init). */
QL_API void ql_engine_get_limits(const ql_engine_t *e, ql_engine_limits_t *out);

/** Aborts whatever is in flight (as ql_engine_shutdown(e, 0), unless a drain already finished),
 *  waits for the engine thread to exit (every request has had its final event by then), and
 *  frees everything. NULL is a no-op. Thread: the controlling thread, never the callback. */
QL_API void ql_engine_free(ql_engine_t *e);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_ENGINE_H */
