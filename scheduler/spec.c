/*
 * scheduler/spec.c — speculative decoding's pure parts (see spec.h): n-gram lookup, lossless
 * verification over the host sampler's processed distributions, and the step cost model that
 * sizes each sequence's drafts.
 */
#define QL_LOG_MODULE "spec"
#include "scheduler/spec.h"

#include <math.h>
#include <string.h>

/* ---- n-gram lookup ---- */

int32_t ql_spec_ngram_propose(const int32_t *tokens, int32_t n_tokens, int32_t n_min,
                              int32_t n_max, int32_t k, int32_t *out) {
    if (!tokens || !out || k <= 0 || n_min < 1 || n_max < n_min) return 0;
    for (int32_t ng = QL_MIN(n_max, n_tokens - 1); ng >= n_min; ng--) {
        const int32_t *suffix = tokens + n_tokens - ng;
        /* the most recent occurrence that has at least one token after it, the suffix itself
         * excluded */
        for (int32_t j = n_tokens - ng - 1; j >= 0; j--) {
            if (tokens[j] != suffix[0] || memcmp(tokens + j, suffix, (size_t)ng * 4) != 0)
                continue;
            const int32_t from = j + ng; /* <= n_tokens - 1 */
            /* NOTE(ngram-period): past the end of the sequence the continuation reads the
             * proposal itself, as if it were appended: a repeating pattern (a b a b ...)
             * proposes k tokens, not just the one left before the end */
            for (int32_t i = 0; i < k; i++)
                out[i] = from + i < n_tokens ? tokens[from + i] : out[from + i - n_tokens];
            return k;
        }
    }
    return 0;
}

/* ---- verification ---- */

/* The first token whose cumulative weight exceeds u·z, walking ids in order; the last token of
 * non-zero weight when rounding leaves u·z at z. */
static int32_t walk(const float *w, int32_t n, double z, double u) {
    double target = u * z, cum = 0.0;
    int32_t tok = -1;
    for (int32_t t = 0; t < n; t++) {
        if (w[t] <= 0.0f) continue;
        cum += w[t];
        tok = t;
        if (target < cum) break;
    }
    return tok;
}

int ql_spec_verify(ql_sampler_t *s, ql_sampler_ws_t *ws, const ql_spec_verify_t *v, float *p,
                   float *r, int32_t *out, int32_t *n_accepted) {
    if (!s || !ws || !v || !p || !r || !out || !n_accepted || !v->rows || v->n_draft < 0 ||
        (v->n_draft > 0 && !v->draft) || !v->tokens || v->n_known < v->n_prompt)
        return QL_EINVAL;
    const int32_t n_vocab = s->_n_vocab;
    for (int32_t i = 0; i < v->n_draft; i++)
        if (v->draft[i] < 0 || v->draft[i] >= n_vocab) return QL_EINVAL;
    /* the logprobs the engine reports are computed apart (ql_sampler_logprobs): none here */
    const ql_sampling_params_t saved = s->params;
    s->params.logprobs = 0;
    s->params.top_logprobs = 0;
    const int greedy = s->params.temperature == 0.0f;
    int rc = 0;
    int32_t i = 0;
    for (;; i++) {
        if (v->n_logit_bias) s->params.n_logit_bias = v->n_logit_bias[i];
        const ql_sampling_history_t hist = {
            .tokens = v->tokens, .n_tokens = v->n_known + i, .n_prompt = v->n_prompt};
        const int last = i == v->n_draft;
        if (greedy || last) {
            /* the bonus token, or greedy: exactly what decoding without drafts samples here */
            ql_sample_result_t res;
            rc = ql_sampler_sample(s, ws, v->rows[i], &hist, &res);
            if (rc != 0) break;
            out[i] = res.token;
            if (last || res.token != v->draft[i]) break;
            continue;
        }
        const int32_t x = v->draft[i];
        rc = ql_sampler_probs(s, ws, v->rows[i], &hist, p);
        if (rc != 0) break;
        const float *q = v->q ? v->q[i] : NULL;
        const double qx = q ? (double)q[x] : 1.0;
        const double u = ql_sampler_uniform(s);
        if (qx > 0.0 && u * qx < (double)p[x]) { /* u < p(x) / q(x) */
            out[i] = x;
            continue;
        }
        /* rejected: sample from normalize(max(0, p - q)) */
        double z = 0.0;
        for (int32_t t = 0; t < n_vocab; t++) {
            const float qt = q ? q[t] : (t == x ? 1.0f : 0.0f);
            const float d = p[t] - qt;
            r[t] = d > 0.0f ? d : 0.0f;
            z += r[t];
        }
        const float *w = r;
        if (!(z > 0.0)) { /* p <= q everywhere: only when p == q, where rejection cannot happen
                             but for rounding; p is the right answer then */
            w = p;
            z = 0.0;
            for (int32_t t = 0; t < n_vocab; t++) z += p[t];
        }
        out[i] = walk(w, n_vocab, z, ql_sampler_uniform(s));
        QL_ASSERT(out[i] >= 0);
        break;
    }
    s->params = saved;
    if (rc != 0) return rc;
    *n_accepted = i;
    return 0;
}

int32_t ql_spec_sample_probs(const float *probs, int32_t n, double u) {
    if (!probs || n <= 0) return -1;
    double z = 0.0;
    for (int32_t t = 0; t < n; t++) z += probs[t] > 0.0f ? probs[t] : 0.0f;
    if (!(z > 0.0)) return -1;
    return walk(probs, n, z, u);
}

/* ---- the cost model ---- */

#define COST_DECAY 0.97     /* per observed step: the fit follows the last ~30 steps */
#define COST_PRIOR_W 2.0    /* the prior's weight, in steps, never decayed */
#define COST_PRIOR_N1 1.0   /* the prior's two points: N = 1 and N = 32 tokens */
#define COST_PRIOR_N2 32.0

typedef struct prior_s {
    double t0, c;
} prior_t;

static void fit(ql_spec_cost_t *m, prior_t pr) {
    const double x1 = COST_PRIOR_N1, x2 = COST_PRIOR_N2, w = COST_PRIOR_W;
    const double y1 = pr.t0 + pr.c * x1, y2 = pr.t0 + pr.c * x2;
    double sw = m->sw + 2 * w, sx = m->sx + w * (x1 + x2), sy = m->sy + w * (y1 + y2);
    double sxx = m->sxx + w * (x1 * x1 + x2 * x2), sxy = m->sxy + w * (x1 * y1 + x2 * y2);
    double var = sxx - sx * sx / sw, cov = sxy - sx * sy / sw;
    double c = var > 0.0 ? cov / var : pr.c;
    if (!(c > 1e-9)) c = 1e-9;
    double t0 = (sy - c * sx) / sw;
    if (!(t0 >= 0.0)) t0 = 0.0;
    m->t0_s = t0;
    m->c_s = c;
}

void ql_spec_cost_init(ql_spec_cost_t *m, double t0_s, double c_s) {
    memset(m, 0, sizeof(*m));
    m->t0_s = t0_s > 0.0 ? t0_s : 0.0;
    m->c_s = c_s > 1e-9 ? c_s : 1e-9;
    m->_prior_t0 = m->t0_s;
    m->_prior_c = m->c_s;
}

static prior_t prior_of(const ql_spec_cost_t *m) {
    return (prior_t){m->_prior_t0, m->_prior_c};
}

void ql_spec_cost_observe(ql_spec_cost_t *m, int32_t n_tokens, double seconds) {
    if (!m || n_tokens < 1 || !(seconds > 0.0) || !isfinite(seconds)) return;
    const double x = n_tokens, y = seconds;
    m->sw = m->sw * COST_DECAY + 1.0;
    m->sx = m->sx * COST_DECAY + x;
    m->sy = m->sy * COST_DECAY + y;
    m->sxx = m->sxx * COST_DECAY + x * x;
    m->sxy = m->sxy * COST_DECAY + x * y;
    fit(m, prior_of(m));
}

void ql_spec_plan(const ql_spec_cost_t *m, int32_t n_base, double n_base_out, int32_t n,
                  const float *alpha, const int32_t *k_max, double draft_s, int32_t *k) {
    if (n <= 0) return;
    for (int32_t i = 0; i < n; i++) k[i] = 0;
    /* NOTE(plan-cap): the greedy scan is O(n) per draft added; beyond QL_SPEC_PLAN_MAX
     * sequences (a load at which drafting does not pay on any backend we have) the rest draft
     * nothing, which bounds a step's planning at a few hundred thousand comparisons */
    n = QL_MIN(n, QL_SPEC_PLAN_MAX);
    double gain[QL_SPEC_PLAN_MAX];
    double T = m->t0_s + m->c_s * (double)QL_MAX(n_base, 1);
    double G = n_base_out > 1e-9 ? n_base_out : 1e-9;
    const double dc = m->c_s + (draft_s > 0.0 ? draft_s : 0.0);
    for (int32_t i = 0; i < n; i++) gain[i] = alpha[i]; /* alpha^(k+1) */
    for (;;) {
        int32_t best = -1;
        double g_best = 0.0;
        for (int32_t i = 0; i < n; i++) {
            if (k[i] >= k_max[i]) continue;
            const double g = gain[i];
            if (g > g_best) {
                g_best = g;
                best = i;
            }
        }
        if (best < 0 || !(g_best * T > G * dc)) break;
        k[best]++;
        gain[best] *= alpha[best];
        G += g_best;
        T += dc;
    }
}
