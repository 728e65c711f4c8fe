/*
 * scheduler/spec.h — speculative decoding's pure parts: the n-gram (prompt lookup) drafter,
 * lossless verification of drafted tokens against the target's logits, and the cost model
 * that decides how many tokens each sequence drafts in a step (load awareness).
 *
 * The engine (engine.c) drives them around one step: it asks each decoding sequence for
 * drafts (this file's n-gram lookup, or a draft forward), hands them to the scheduler
 * (ql_sched_set_draft), which feeds them with the last known token as one verify chunk; after
 * the forward it calls ql_spec_verify on the chunk's logits rows and commits the accepted
 * prefix (ql_sched_spec_commit), which rolls the rest back.
 *
 * Verification (Leviathan et al. 2023; Chen et al. 2023): for drafted token x_i proposed from
 * the draft distribution q_i, with the target's distribution p_i after the same history,
 *   accept x_i with probability min(1, p_i(x_i) / q_i(x_i));
 *   on the first rejection, sample from normalize(max(0, p_i - q_i)) and stop;
 *   if every draft is accepted, sample a bonus token from p_{k}.
 * The emitted tokens are distributed exactly as sampling the target one token at a time. p and
 * q are both the sampler's processed distribution (ql_sampler_probs: penalties, logit_bias,
 * temperature, top-k, top-p, min-p), each over its own history. A drafter with no distribution
 * (n-gram) proposes deterministically: q is one-hot on x. At temperature 0 p is one-hot on the
 * argmax, so a draft is accepted exactly when it equals the target's greedy token (the verify
 * calls the sampler itself there: the output is token for token the non-speculative one).
 *
 * Thread: everything here runs on the caller's thread, with no state of its own besides the
 * caller's structures.
 */
#ifndef QL_SCHEDULER_SPEC_H
#define QL_SCHEDULER_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"
#include "scheduler/sampling.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QL_SPEC_K_MAX 16     /* drafted tokens per sequence and step at most */
#define QL_SPEC_PLAN_MAX 256 /* sequences ql_spec_plan gives drafts to at most (NOTE(plan-cap)) */

/* ---- n-gram lookup ---- */

/** Prompt lookup: finds the most recent earlier occurrence of the sequence's last n tokens,
 *  for n from n_max down to n_min (the longest match wins), and proposes up to k of the tokens
 *  that followed it. `tokens` [n_tokens] is the prompt followed by the output so far.
 *  @return the number of tokens written to out[0, k) (0: no match). Thread: any. */
QL_API int32_t ql_spec_ngram_propose(const int32_t *tokens, int32_t n_tokens, int32_t n_min,
                                     int32_t n_max, int32_t k, int32_t *out);

/* ---- verification ---- */

/* One sequence's verify. Rows and distributions are [n_vocab] each. */
typedef struct ql_spec_verify_s {
    const float *const *rows;     /* [n_draft + 1] target logits: rows[i] follows draft i-1
                                     (rows[0] follows the last known token) */
    const int32_t *draft;         /* [n_draft] drafted tokens */
    const float *const *q;        /* [n_draft] draft distributions (processed, summing to 1),
                                     or NULL: a deterministic drafter (one-hot q) */
    int32_t n_draft;              /* >= 0 */
    const int32_t *tokens;        /* history: [n_prompt] prompt, then the outputs so far, then
                                     the drafts: tokens[n_known + i] = draft[i] */
    int32_t n_known;              /* prompt + outputs before the drafts */
    int32_t n_prompt;
    const int32_t *n_logit_bias;  /* [n_draft + 1] the sampler's n_logit_bias at each position
                                     (min_tokens bans lift as outputs accumulate), or NULL */
} ql_spec_verify_t;

/** Verifies one sequence's drafts with the sampler `s` (whose generator draws the accept tests
 *  and the samples), writing the emitted tokens: out[0, *n_accepted) are the accepted drafts and
 *  out[*n_accepted] the token sampled after them (the correction, or the bonus token when every
 *  draft was accepted): *n_accepted + 1 tokens. `p` and `r` are scratch rows [n_vocab].
 *  @return 0, or the sampler's error (QL_ERANGE: nothing can be sampled at some position;
 *  QL_EINTERNAL: NaN or +inf in a row; QL_EINVAL). Thread: the one using `s` and `ws`. */
QL_API int ql_spec_verify(ql_sampler_t *s, ql_sampler_ws_t *ws, const ql_spec_verify_t *v,
                          float *p, float *r, int32_t *out, int32_t *n_accepted);

/** The token a draw u in [0, 1) picks from probs [n] (summing to about 1), walking ids in order;
 *  the last token of non-zero probability when rounding leaves u past the sum; -1 when every
 *  entry is 0. For drafts sampled from a draft distribution. Thread: any. */
QL_API int32_t ql_spec_sample_probs(const float *probs, int32_t n, double u);

/* ---- load awareness: how many tokens to draft ---- */

/* NOTE(spec-cost): a step's time is modelled as t0 + c·N for N tokens in the batch: t0 streams
 * the weights (fixed per forward), c is each token's compute. At low load t0 dominates and
 * drafted tokens ride almost free; at saturation each drafted token costs as much as a decoded
 * one. Both are fitted online by least squares over the recent steps (exponential forgetting),
 * starting from a prior. */
typedef struct ql_spec_cost_s {
    double t0_s, c_s;            /* the current fit, seconds */
    double sw, sx, sy, sxx, sxy; /* decayed sums of (N, t) */
    double _prior_t0, _prior_c;  /* the prior, always in the fit with a small weight */
} ql_spec_cost_t;

/** Starts the model at (t0_s, c_s) with the weight of a few steps. Thread: the caller's. */
QL_API void ql_spec_cost_init(ql_spec_cost_t *m, double t0_s, double c_s);
/** Adds one step of n_tokens tokens that took `seconds`. */
QL_API void ql_spec_cost_observe(ql_spec_cost_t *m, int32_t n_tokens, double seconds);

/** Chooses k[i] in [0, k_max[i]] for n sequences whose drafts are each accepted with
 *  probability alpha[i], in a step that already feeds n_base tokens and yields n_base_out
 *  output tokens: drafts are added one at a time to the sequence whose next draft is most
 *  likely to be accepted (alpha^(k+1)), while that expected gain per second added (c to verify
 *  it, plus draft_s seconds to draft it) beats the step's current output per second. Under
 *  saturation (t0 << c·N) no draft pays unless alpha ~ 1, so k falls to 0. Sequences past the
 *  first QL_SPEC_PLAN_MAX get k = 0. Thread: any. */
QL_API void ql_spec_plan(const ql_spec_cost_t *m, int32_t n_base, double n_base_out, int32_t n,
                         const float *alpha, const int32_t *k_max, double draft_s,
                         int32_t *k);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_SPEC_H */
