/*
 * scheduler/scheduler.h — the scheduling policy: which sequences run in the next engine step,
 * how many tokens each feeds, and the batch the backend computes.
 *
 * Pure bookkeeping over the block manager (kv-cache.h): no threads, no backend calls, so it is
 * tested step by step (tests/unit/scheduler/test-scheduler.c). The engine thread (engine.h)
 * drives it:
 *
 *   ql_sched_add(request)           a new sequence joins the waiting queue
 *   ql_sched_schedule(&step)        plan one step: reserve KV slots, build step.batch
 *   backend copy_blocks(step.copies) then forward(step.batch)   (the engine)
 *   ql_sched_step_done()            the KV is written: ql_kv_seq_set_computed for each item
 *   ql_sched_fork / push_token      for each item with a logits row: sample (the engine), then
 *                                   append the token (or fork the request's other choices)
 *   ql_sched_remove(seq)            finished, cancelled or failed: free everything it held
 *
 * Policy (iteration-level batching, as vLLM's v1 scheduler):
 *   - A sequence is its known tokens: the prompt, then every token sampled so far. A running
 *     sequence feeds, each step, the tokens whose KV is not computed yet: a prefill chunk, or the
 *     one token sampled last step (a decode). Logits are wanted only when the chunk reaches the
 *     last known token; a chunk that stops short of it (chunked prefill) continues next step.
 *   - Running sequences are served first, oldest admission first, within max_batched_tokens
 *     tokens per step: a partially prefilled sequence continues before anything new is admitted.
 *   - Waiting sequences are then admitted, in order of (priority, arrival) — lower priority
 *     values first, FCFS among equals — while max_num_seqs, the token budget and the free KV
 *     blocks allow. The queue is strict: when its head does not fit, nothing behind it is tried.
 *     Admission reuses the longest cached prefix (ql_kv_seq_open), so a hit costs no compute.
 *   - When a running sequence needs a block and none is free, the running sequence with the
 *     highest priority value admitted last (with equal priorities: the most recently admitted)
 *     is preempted: its blocks are freed (computed full blocks stay in the prefix cache) and it
 *     goes back to the waiting queue, ahead of everything that arrived after it, to recompute
 *     prompt + generated tokens when readmitted. Nothing is admitted in a step that preempted.
 *     The oldest running sequence therefore always progresses, and every sequence that fits the
 *     pool alone (ql_sched_check_fit) completes: a request never fails for lack of KV space.
 *   - A request with n > 1 choices is one sequence until its prompt is computed; it reserves n
 *     of max_num_seqs at admission, and the engine forks the other choices from it
 *     (ql_sched_fork) when the prompt's logits arrive, sharing the prompt's blocks.
 *
 * Ids: sequences are small integers >= 0, reused after ql_sched_remove.
 * Thread: every function is for the engine thread only, except ql_sched_check_fit and
 * ql_sched_get_limits, which read what ql_sched_init fixed and may be called from any thread.
 */
#ifndef QL_SCHEDULER_SCHEDULER_H
#define QL_SCHEDULER_SCHEDULER_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "core/core.h"
#include "scheduler/kv-cache.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ql_sched_s ql_sched_t; /* opaque */

typedef struct ql_sched_params_s {
    int32_t max_num_seqs;       /* sequences running at once (each choice counts), >= 1;
                                   <= the block manager's n_seq_max. Default 64 */
    int32_t max_batched_tokens; /* tokens per step, prefill chunks and decodes together;
                                   >= max_num_seqs (every running sequence can decode each
                                   step). Default 512 */
    int32_t max_model_len;      /* tokens of one sequence, prompt + output, >= 2; <= the block
                                   manager's n_tokens_max. Required (default 0: invalid) */
    int32_t max_logits_rows;    /* logits rows per step (one per sequence, plus one per drafted
                                   token of a speculative verify); 0: max_num_seqs. Must be
                                   >= max_num_seqs */
} ql_sched_params_t;

/* What ql_sched_add takes. */
typedef struct ql_sched_req_s {
    const int32_t *prompt; /* [n_prompt] token ids, copied */
    int32_t n_prompt;      /* >= 1 */
    int32_t max_tokens;    /* output tokens at most, >= 1 */
    int32_t n_choices;     /* >= 1: the sequences the request becomes (ql_sched_fork) */
    int32_t priority;      /* lower runs first; equal priorities in order of ql_sched_add */
    void *user;            /* the caller's, returned by ql_sched_seq_info */
} ql_sched_req_t;

typedef enum ql_sched_state_e {
    QL_SCHED_STATE_WAITING = 1, /* in the queue (new, or preempted): holds no KV */
    QL_SCHED_STATE_RUNNING = 2, /* admitted: holds a KV sequence */
} ql_sched_state_t;

typedef struct ql_sched_seq_info_s {
    ql_sched_state_t state;
    const int32_t *tokens;   /* [n_tokens]: prompt then output; borrowed until the next call
                                that changes this sequence */
    int32_t n_tokens;
    int32_t n_prompt;
    int32_t max_tokens;
    int32_t n_computed;      /* tokens whose KV is written (0 while waiting) */
    int32_t n_cached_prompt; /* prompt tokens the prefix cache served at the first admission
                                (kept across preemptions, for usage); -1 before it */
    int32_t n_preemptions;   /* times this sequence was preempted */
    int32_t n_forks_pending; /* choices still to fork from it */
    int32_t n_draft;         /* drafted tokens set for the next step (ql_sched_set_draft), or,
                                between a verify step and ql_sched_spec_commit, the drafts the
                                step fed; they follow the known tokens: tokens[n_tokens ..
                                n_tokens + n_draft) */
    int32_t verify_pending;  /* 1 between a verify step and ql_sched_spec_commit */
    const int32_t *block_table; /* [n_blocks] its KV blocks while running (kv-cache.h), else
                                   NULL; for drafting forwards that read its KV */
    int32_t n_blocks;
    int32_t priority;
    void *user;
} ql_sched_seq_info_t;

/* One sequence's part of a step; items[i] is sequence i of step.batch. */
typedef struct ql_sched_item_s {
    int32_t seq;        /* scheduler sequence id */
    int32_t pos;        /* first position fed: the tokens' KV computed before the step */
    int32_t n_tokens;   /* tokens fed, positions [pos, pos + n_tokens); 1 for a decode */
    int32_t logits_row; /* row of the forward's logits for the last known token, or -1 when the
                           chunk stops short of it. In a verify (n_draft > 0) the last known
                           token is the first fed, and rows logits_row + 1 .. logits_row +
                           n_draft hold the logits after each drafted token */
    int32_t n_draft;    /* drafted tokens fed after the last known token (speculative verify):
                           n_tokens = 1 + n_draft; 0 otherwise */
} ql_sched_item_t;

/* One step as planned. Every array is owned by the scheduler and valid until the next
 * ql_sched_schedule or ql_sched_free. */
typedef struct ql_sched_step_s {
    ql_batch_t batch;            /* for ql_backend_forward; its block tables are the block
                                    manager's rows */
    const ql_kv_copy_t *copies;  /* [n_copies] copy-on-write copies, to apply in this order
                                    before the forward (a later copy may write a block an
                                    earlier one read: see ql_sched_copy_runs) */
    int32_t n_copies;
    const ql_sched_item_t *items; /* [n_items] = batch.n_seqs */
    int32_t n_items;
    const int32_t *admitted;     /* [n_admitted] sequences admitted this step */
    int32_t n_admitted;
    const int32_t *preempted;    /* [n_preempted] sequences preempted this step (now waiting) */
    int32_t n_preempted;
    int32_t n_prefill_tokens;    /* tokens of prompts and of recomputed outputs */
    int32_t n_decode_tokens;     /* items that fed just the token sampled last step */
    int32_t n_draft_tokens;      /* drafted tokens fed by verify items */
} ql_sched_step_t;

/* Counts for metrics and tests. */
typedef struct ql_sched_counts_s {
    int32_t n_running;       /* sequences holding KV */
    int32_t n_waiting;       /* sequences in the queue */
    int32_t n_slots_used;    /* of max_num_seqs: running sequences plus their pending forks */
    uint64_t n_preemptions;  /* total so far */
    uint64_t n_steps;        /* ql_sched_schedule calls that planned a step */
} ql_sched_counts_t;

/* The limits fixed at init (after defaults). */
typedef struct ql_sched_limits_s {
    int32_t max_num_seqs;
    int32_t max_batched_tokens;
    int32_t max_model_len;
    int32_t block_size;
    int32_t n_blocks;        /* the whole pool */
} ql_sched_limits_t;

/** The defaults documented in ql_sched_params_t. Thread: any. */
QL_API ql_sched_params_t ql_sched_params_default(void);

/** Creates a scheduler over `kv`, which it borrows (it must outlive the scheduler) and drives:
 *  nothing else may open or change sequences in it.
 *  note: call only if kv was made with n_seq_max >= max_num_seqs and n_tokens_max >=
 *  max_model_len (kv-cache.h does not expose them; the engine creates both from one set of
 *  limits). Allocates the step arrays here (about 12 bytes per batched token and 50 per
 *  sequence).
 *  On success *out is owned by the caller: release it with ql_sched_free().
 *  @return 0, QL_EINVAL (NULL, a value out of range, max_model_len wider than the block
 *  manager's tables) or QL_ENOMEM. Thread: any. */
QL_API int ql_sched_init(const ql_sched_params_t *p, ql_kv_t *kv, ql_sched_t **out);
/** Frees the scheduler and every sequence's memory; closes their KV sequences. NULL is a
 *  no-op. */
QL_API void ql_sched_free(ql_sched_t *s);

/** Whether a request can ever run: n_prompt + max_tokens <= max_model_len, its longest KV
 *  (n_prompt + max_tokens - 1 tokens: the last sampled token is never fed) fits the whole
 *  block pool, and n_choices <= max_num_seqs.
 *  @return 0; QL_EINVAL (a field out of range, n_choices > max_num_seqs); QL_ERANGE (longer than
 *  max_model_len); QL_ENOSPC (more blocks than the pool holds). Thread: any. */
QL_API int ql_sched_check_fit(const ql_sched_t *s, const ql_sched_req_t *r);

/** Adds a request's sequence to the waiting queue (it is admitted by a later
 *  ql_sched_schedule). Copies the prompt into a buffer of n_prompt + max_tokens tokens.
 *  @return 0 with *seq_out set; as ql_sched_check_fit; QL_ESTATE (between ql_sched_schedule and
 *  ql_sched_step_done); QL_ENOMEM. */
QL_API int ql_sched_add(ql_sched_t *s, const ql_sched_req_t *r, int32_t *seq_out);

/** Plans one step (see the policy above) and reserves its KV slots; step->batch is ready for
 *  the backend once the copies are applied. step->n_items = 0 when nothing can run (no
 *  sequence, or none with a token to feed). Must be followed by ql_sched_step_done() once the
 *  forward pass has written the KV (or, if the forward failed, by ql_sched_remove() of every
 *  item's sequence: their KV cannot be trusted).
 *  @return 0; QL_ESTATE (a step is already pending); QL_EINTERNAL (the block manager refused
 *  what its own counts allowed: a bug). */
QL_API int ql_sched_schedule(ql_sched_t *s, ql_sched_step_t *step);

/** Records that the pending step's forward pass is complete: every item's KV positions
 *  [pos, pos + n_tokens) are computed (ql_kv_seq_set_computed; full blocks enter the prefix
 *  cache). Items whose sequence was removed since are skipped.
 *  @return 0; QL_ESTATE (no step pending). */
QL_API int ql_sched_step_done(ql_sched_t *s);

/** Appends a sampled token to a running sequence (it is fed at the next step).
 *  @return 0; QL_EINVAL (not a running sequence); QL_ERANGE (max_tokens output tokens already);
 *  QL_ESTATE (a step is pending, or the sequence's KV is not complete up to its last token). */
QL_API int ql_sched_push_token(ql_sched_t *s, int32_t seq, int32_t token);

/** Forks one more choice from `seq`, right after the step that computed its prompt and before
 *  its first token is pushed: the child shares every KV block, tokens, priority and cached-prompt
 *  count, and counts as admitted now (it is preempted before its parent). Uses one of the
 *  slots the parent reserved (n_forks_pending decreases). `user` is the child's.
 *  @return 0 with *child_out set; QL_EINVAL (not a running sequence); QL_ESTATE (no fork
 *  pending, a step pending, a token already pushed, or KV not computed); QL_ENOMEM. */
QL_API int ql_sched_fork(ql_sched_t *s, int32_t seq, void *user, int32_t *child_out);

/** Removes a sequence, waiting or running: closes its KV sequence (its blocks become free or
 *  cached), drops its pending forks' reservation, frees its memory. The id may be reused.
 *  @return 0 or QL_EINVAL (no such sequence). */
QL_API int ql_sched_remove(ql_sched_t *s, int32_t seq);

/* ---- speculative decoding (scheduler/spec.h proposes and verifies) ----
 *
 * A running sequence in decode state (every known token but the last has its KV) may carry
 * drafted tokens into the next step: ql_sched_set_draft stores them after its known tokens.
 * ql_sched_schedule then feeds the last known token and the drafts as one chunk (a verify) and
 * asks logits for every one of them, when the token budget, the logits rows and the free KV
 * blocks allow; otherwise it drops the drafts (never preempts for them) and feeds one token.
 * Drafts never take the budget the other running sequences need to decode: a sequence's drafts
 * get at most what is left after one token for each running sequence behind it.
 * After the step, the sequence waits for ql_sched_spec_commit(n_accepted): the accepted drafts
 * become known tokens, the rejected positions are rolled back from the block manager before
 * their KV is marked computed (they never enter the prefix cache) and the sequence is exactly
 * as if it had decoded the accepted tokens one step at a time; the engine then pushes the
 * token sampled after them (ql_sched_push_token) as usual. */

/** Sets the drafted tokens (borrowed for the call) `seq` feeds in the next step, replacing any
 *  earlier ones; n_draft = 0 clears them. The drafts are capped so that accepting all of them
 *  plus one more token stays within max_tokens.
 *  @return the number of drafts kept (>= 0); QL_EINVAL (not a running sequence, n_draft < 0,
 *  tokens NULL with n_draft > 0); QL_ESTATE (a step or a verify is pending, or the sequence is
 *  not in decode state: prefill left, or no token sampled yet). */
QL_API int32_t ql_sched_set_draft(ql_sched_t *s, int32_t seq, const int32_t *tokens,
                                  int32_t n_draft);

/** Ends a verify: the first n_accepted drafts the step fed become known tokens (their KV is
 *  computed), the rest are rolled back (ql_kv_seq_truncate, then set_computed).
 *  @return 0; QL_EINVAL (not a running sequence, n_accepted outside [0, drafts fed]);
 *  QL_ESTATE (no verify pending for it, or the step is not done). */
QL_API int ql_sched_spec_commit(ql_sched_t *s, int32_t seq, int32_t n_accepted);

/** Fills *out for a sequence. @return 0 or QL_EINVAL (no such sequence). */
QL_API int ql_sched_seq_info(const ql_sched_t *s, int32_t seq, ql_sched_seq_info_t *out);

/** Fills *out with the current counts. Thread: the engine thread (the engine publishes them to
 *  other threads). */
QL_API void ql_sched_get_counts(const ql_sched_t *s, ql_sched_counts_t *out);
/** Fills *out with the limits fixed at init. Thread: any. */
QL_API void ql_sched_get_limits(const ql_sched_t *s, ql_sched_limits_t *out);

/** Splits copies[0, n) into runs that one ql_backend_copy_blocks call each may perform in any
 *  order: a run ends before a copy whose destination an earlier copy of the run reads or
 *  writes, or whose source it writes. Returns the length of the run starting at copies[0]
 *  (n > 0), 0 for n = 0. Thread: any. */
QL_API int32_t ql_sched_copy_runs(const ql_kv_copy_t *copies, int32_t n);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_SCHEDULER_H */
