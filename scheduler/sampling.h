/*
 * scheduler/sampling.h — host sampling: turns one row of logits into one token id.
 *
 * The reference for both backends (the CUDA sampler is tested against it). The engine thread
 * owns one workspace (ql_sampler_ws_t, sized for the vocabulary once) and each request embeds
 * one ql_sampler_t (its parameters and its own random generator); sampling a token allocates
 * nothing.
 *
 * Order of operations on a logits row l[n_vocab] (the order vLLM uses):
 *
 *   1. repetition penalty   over prompt + output tokens, each distinct token once:
 *                           l = l > 0 ? l / r : l * r                   (CTRL / HF / llama.cpp)
 *   2. frequency, presence  over output tokens only, c = times the token was generated:
 *                           l -= c * frequency + (c > 0) * presence     (OpenAI)
 *   3. logit_bias           l += bias; a bias of -100 bans the token (l = -inf)
 *   4. temperature          0: greedy, the argmax of l (ties: the lowest id); steps 5-7 skipped.
 *                           otherwise l /= temperature
 *   5. top-k                keep the k largest (ties: lower id first)
 *   6. top-p                keep the smallest prefix, in descending order, whose probability
 *                           (softmax over what is kept so far) is >= top_p
 *   7. min-p                keep tokens with p >= min_p * p_max
 *   8. sample               one uniform draw u in [0,1) from the request's generator; the token
 *                           is the first kept candidate whose cumulative probability exceeds u.
 *
 * NOTE(penalty-scope): the repetition penalty counts the prompt and presence/frequency do not,
 * as in vLLM. Presence and frequency are OpenAI's, whose formula counts tokens "sampled prior to
 * the current position": counting the prompt would penalise the words of a question its answer
 * should repeat, and every chat-template token. The repetition penalty is HF's, applied to the
 * whole input_ids (prompt included) since the CTRL paper.
 *
 * NOTE(logprobs): reported logprobs are the log-softmax of the RAW logits (before penalties,
 * bias, temperature and truncation), as OpenAI and vLLM (logprobs_mode "raw_logprobs", the
 * default) report them: they describe the model, they are comparable across requests with
 * different sampling settings, and the chosen token's logprob is finite even when top-k or a
 * penalty would have given it zero. ql_sampler_probs() gives the processed distribution.
 */
#ifndef QL_SCHEDULER_SAMPLING_H
#define QL_SCHEDULER_SAMPLING_H

#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* OpenAI's cap on top_logprobs (vLLM's default max_logprobs is the same). */
#define QL_SAMPLING_TOP_LOGPROBS_MAX 20
/* OpenAI's range for logit_bias values; QL_SAMPLING_BIAS_MIN bans the token outright. */
#define QL_SAMPLING_BIAS_MIN (-100.0f)
#define QL_SAMPLING_BIAS_MAX 100.0f
/* OpenAI's range for presence_penalty and frequency_penalty. */
#define QL_SAMPLING_PENALTY_ABS_MAX 2.0f

typedef struct ql_logit_bias_s {
    int32_t token;  /* in [0, n_vocab) */
    float bias;     /* in [-100, 100]; -100 bans the token; entries for one token add up */
} ql_logit_bias_t;

/* Sampling parameters of one request. Start from ql_sampling_params_default(): the all-zero
 * struct is not valid (top_p = 0). */
typedef struct ql_sampling_params_s {
    float temperature;         /* >= 0; 0 = greedy. Default 1 */
    int32_t top_k;             /* >= 0; 0 = off. Default 0 */
    float top_p;               /* (0, 1]; 1 = off. Default 1 */
    float min_p;               /* [0, 1]; 0 = off. Default 0 */
    float repetition_penalty;  /* > 0; 1 = off. Default 1 */
    float presence_penalty;    /* [-2, 2]; 0 = off. Default 0 */
    float frequency_penalty;   /* [-2, 2]; 0 = off. Default 0 */
    uint64_t seed;             /* the request's generator starts from this. Default 0 */
    int32_t logprobs;          /* 0 or 1: report the chosen token's logprob. Default 0 */
    int32_t top_logprobs;      /* [0, 20]; > 0 needs logprobs = 1. Default 0 */
    const ql_logit_bias_t *logit_bias; /* [n_logit_bias], borrowed: must outlive the sampler */
    int32_t n_logit_bias;      /* >= 0 */
} ql_sampling_params_t;

/** The defaults above (OpenAI's: temperature 1, everything else off). Thread: any. */
QL_API ql_sampling_params_t ql_sampling_params_default(void);

/** Checks `p` for a vocabulary of `n_vocab` tokens.
 *  @return 0; QL_EINVAL for a value outside its documented range, a non-finite float, or
 *  top_logprobs > 0 without logprobs; QL_ERANGE for a logit_bias token outside [0, n_vocab).
 *  Thread: any. */
QL_API int ql_sampling_params_validate(const ql_sampling_params_t *p, int32_t n_vocab);

/* ---- per-request state ---- */

/* One request's sampler: embed it in the request (no allocation). Fields starting with `_`
 * are private. */
typedef struct ql_sampler_s {
    ql_sampling_params_t params; /* read-only after ql_sampler_init, except that
                                    params.n_logit_bias may be lowered between calls (a prefix
                                    of a validated array stays valid: the engine lifts its
                                    min_tokens bans that way) */
    int32_t _n_vocab;
    uint64_t _rng[4];            /* xoshiro256** state, seeded by splitmix64(params.seed) */
} ql_sampler_t;

/** Validates `p` (as ql_sampling_params_validate) and initialises `s` from it: the generator
 *  starts from p->seed, so two samplers with one seed draw the same sequence.
 *  `p->logit_bias` is borrowed and must outlive `s`. On error `s` is left unusable.
 *  @return 0, QL_EINVAL or QL_ERANGE. Thread: any; `s` is then used by one thread at a time. */
QL_API int ql_sampler_init(ql_sampler_t *s, const ql_sampling_params_t *p, int32_t n_vocab);

/** The next uniform double in [0, 1) from the request's generator (53 random bits); for the
 *  speculative decoder's accept/reject draws. Thread: the one using `s`. */
QL_API double ql_sampler_uniform(ql_sampler_t *s);

/* ---- per-engine workspace ---- */

typedef struct ql_sampler_ws_s ql_sampler_ws_t; /* opaque */

/** Allocates the scratch buffers for rows of `n_vocab` logits (24 bytes per token).
 *  On success *out is owned by the caller: release it with ql_sampler_ws_free().
 *  @return 0, QL_EINVAL (n_vocab < 1) or QL_ENOMEM. Thread: any; the workspace is then used
 *  by one thread at a time, for any number of requests. */
QL_API int ql_sampler_ws_init(int32_t n_vocab, ql_sampler_ws_t **out);
QL_API void ql_sampler_ws_free(ql_sampler_ws_t *ws); /* NULL is a no-op */

/* ---- sampling ---- */

/* The token history the penalties read: tokens[0, n_prompt) are the prompt and
 * tokens[n_prompt, n_tokens) the tokens generated so far. Borrowed for the call only. */
typedef struct ql_sampling_history_s {
    const int32_t *tokens; /* [n_tokens]; may be NULL when n_tokens = 0 */
    int32_t n_tokens;
    int32_t n_prompt;      /* 0 <= n_prompt <= n_tokens */
} ql_sampling_history_t;

typedef struct ql_sample_result_s {
    int32_t token;        /* the sampled token */
    float logprob;        /* its raw logprob, when params.logprobs; else 0 */
    int32_t n_top;        /* = params.top_logprobs (or n_vocab when smaller) */
    /* the n_top most likely tokens by raw logprob, descending (ties: lower id first) */
    int32_t top_tokens[QL_SAMPLING_TOP_LOGPROBS_MAX];  /* [n_top] */
    float top_logprobs[QL_SAMPLING_TOP_LOGPROBS_MAX];  /* [n_top] */
} ql_sample_result_t;

/** Samples one token from `logits` [n_vocab] (not modified) with s->params, drawing from the
 *  request's generator once unless temperature is 0. `hist` may be NULL only when no penalty is on.
 *  @return 0; QL_EINVAL (a NULL argument, a workspace for another vocabulary size, a bad
 *  history or a history token outside [0, n_vocab)); QL_ERANGE when no token can be sampled
 *  (every token banned or -inf); QL_EINTERNAL when `logits` holds a NaN or +inf (a backend
 *  bug). On error *out is unspecified and the generator has not advanced.
 *  Thread: the one using `s` and `ws`. */
QL_API int ql_sampler_sample(ql_sampler_t *s, ql_sampler_ws_t *ws, const float *logits,
                             const ql_sampling_history_t *hist, ql_sample_result_t *out);

/** Writes to probs [n_vocab] the distribution step 8 samples from (after steps 1-7): zero for
 *  every token that was cut, the kept ones summing to 1. At temperature 0, probability 1 on
 *  the greedy token. Does not advance the generator. For speculative decoding (p and q of the
 *  accept test) and for testing other samplers against this one.
 *  @return as ql_sampler_sample. Thread: the one using `s` and `ws`. */
QL_API int ql_sampler_probs(const ql_sampler_t *s, ql_sampler_ws_t *ws, const float *logits,
                            const ql_sampling_history_t *hist, float *probs);

/** Fills out->logprob with `token`'s raw logprob in `logits` [n_vocab] and out->top_* with the
 *  params.top_logprobs most likely tokens, as ql_sampler_sample reports them when
 *  params.logprobs is set; out->token = token. For tokens chosen elsewhere (an accepted
 *  speculative draft). @return 0; QL_EINVAL (NULL, token outside the vocabulary);
 *  QL_EINTERNAL (NaN or +inf in the row). Thread: the one using `s`. */
QL_API int ql_sampler_logprobs(const ql_sampler_t *s, const float *logits, int32_t token,
                               ql_sample_result_t *out);

#ifdef __cplusplus
}
#endif

#endif /* QL_SCHEDULER_SAMPLING_H */
