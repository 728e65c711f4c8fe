/*
 * tests/unit/scheduler/test-sampling.c — host sampling (scheduler/sampling.h): parameter
 * checks, greedy, top-k/top-p/min-p against brute-force references, the penalty and bias
 * formulas, seeding, the sampled distribution (chi-square) and logprobs.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"
#include "scheduler/sampling.h"

/* ---- helpers ---- */

/* the test's own input generator (not the one under test) */
static uint64_t test_rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* uniform in [lo, hi) */
static float test_uniform(uint64_t *s, float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(test_rng_next(s) >> 11) / 9007199254740992.0);
}

static void fill_random(float *l, int32_t n, uint64_t seed, float lo, float hi) {
    uint64_t s = seed | 1;
    for (int32_t i = 0; i < n; i++) l[i] = test_uniform(&s, lo, hi);
}

static ql_sampler_ws_t *new_ws(int32_t n_vocab) {
    ql_sampler_ws_t *ws = NULL;
    assert_int_equal(ql_sampler_ws_init(n_vocab, &ws), 0);
    assert_non_null(ws);
    return ws;
}

static void init_ok(ql_sampler_t *s, const ql_sampling_params_t *p, int32_t n_vocab) {
    assert_int_equal(ql_sampler_init(s, p, n_vocab), 0);
}

static int32_t sample_one(ql_sampler_t *s, ql_sampler_ws_t *ws, const float *l,
                          const ql_sampling_history_t *h) {
    ql_sample_result_t r;
    assert_int_equal(ql_sampler_sample(s, ws, l, h, &r), 0);
    return r.token;
}

/* natural log of probabilities: logits whose softmax is exactly p (up to rounding) */
static void logits_from_probs(const double *p, float *l, int32_t n) {
    for (int32_t i = 0; i < n; i++) l[i] = (float)log(p[i]);
}

static int32_t ref_argmax(const float *l, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

/* reference order: logit descending, id ascending */
static const float *g_cmp_logits;
static int ref_cmp(const void *a, const void *b) {
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    if (g_cmp_logits[x] != g_cmp_logits[y]) return g_cmp_logits[x] > g_cmp_logits[y] ? -1 : 1;
    return (x > y) - (x < y);
}

static int32_t *ref_sorted_ids(const float *l, int32_t n) {
    int32_t *ids = malloc((size_t)n * sizeof(*ids));
    assert_non_null(ids);
    for (int32_t i = 0; i < n; i++) ids[i] = i;
    g_cmp_logits = l;
    qsort(ids, (size_t)n, sizeof(*ids), ref_cmp);
    return ids;
}

/* ---- parameters ---- */

static void expect_invalid(const ql_sampling_params_t *p, int32_t n_vocab, int code) {
    ql_sampler_t s;
    assert_int_equal(ql_sampling_params_validate(p, n_vocab), code);
    assert_int_equal(ql_sampler_init(&s, p, n_vocab), code);
}

static void test_params_default_and_rejected(void **state) {
    (void)state;
    const int32_t V = 100;
    ql_sampling_params_t d = ql_sampling_params_default();
    assert_true(d.temperature == 1.0f && d.top_p == 1.0f && d.repetition_penalty == 1.0f);
    assert_int_equal(ql_sampling_params_validate(&d, V), 0);
    assert_int_equal(ql_sampling_params_validate(NULL, V), QL_EINVAL);
    assert_int_equal(ql_sampling_params_validate(&d, 0), QL_EINVAL);
    ql_sampling_params_t z;
    memset(&z, 0, sizeof(z));
    expect_invalid(&z, V, QL_EINVAL); /* all-zero: top_p = 0 */

    ql_sampling_params_t p;
#define BAD(field, value, code)                                                      \
    do {                                                                             \
        p = d;                                                                       \
        p.field = (value);                                                           \
        expect_invalid(&p, V, code);                                                 \
    } while (0)
    BAD(temperature, -0.01f, QL_EINVAL);
    BAD(temperature, NAN, QL_EINVAL);
    BAD(temperature, INFINITY, QL_EINVAL);
    BAD(top_k, -1, QL_EINVAL);
    BAD(top_p, 0.0f, QL_EINVAL);
    BAD(top_p, -0.5f, QL_EINVAL);
    BAD(top_p, 1.0001f, QL_EINVAL);
    BAD(top_p, NAN, QL_EINVAL);
    BAD(min_p, -0.01f, QL_EINVAL);
    BAD(min_p, 1.01f, QL_EINVAL);
    BAD(min_p, NAN, QL_EINVAL);
    BAD(repetition_penalty, 0.0f, QL_EINVAL);
    BAD(repetition_penalty, -1.0f, QL_EINVAL);
    BAD(repetition_penalty, INFINITY, QL_EINVAL);
    BAD(presence_penalty, 2.01f, QL_EINVAL);
    BAD(presence_penalty, -2.01f, QL_EINVAL);
    BAD(frequency_penalty, NAN, QL_EINVAL);
    BAD(frequency_penalty, -3.0f, QL_EINVAL);
    BAD(logprobs, 2, QL_EINVAL);
    BAD(top_logprobs, -1, QL_EINVAL);
    BAD(top_logprobs, QL_SAMPLING_TOP_LOGPROBS_MAX + 1, QL_EINVAL);
    BAD(top_logprobs, 3, QL_EINVAL); /* without logprobs */
    BAD(n_logit_bias, -1, QL_EINVAL);
    BAD(n_logit_bias, 1, QL_EINVAL); /* with logit_bias NULL */
#undef BAD

    /* the edges of each range are accepted */
    p = d;
    p.temperature = 0.0f;
    p.top_p = 1.0f;
    p.min_p = 1.0f;
    p.presence_penalty = -2.0f;
    p.frequency_penalty = 2.0f;
    p.logprobs = 1;
    p.top_logprobs = QL_SAMPLING_TOP_LOGPROBS_MAX;
    assert_int_equal(ql_sampling_params_validate(&p, V), 0);

    ql_logit_bias_t b[2] = {{3, -100.0f}, {4, 100.0f}};
    p = d;
    p.logit_bias = b;
    p.n_logit_bias = 2;
    assert_int_equal(ql_sampling_params_validate(&p, V), 0);
    b[1].bias = 100.5f;
    expect_invalid(&p, V, QL_EINVAL);
    b[1].bias = NAN;
    expect_invalid(&p, V, QL_EINVAL);
    b[1].bias = 1.0f;
    b[1].token = V; /* one past the vocabulary */
    expect_invalid(&p, V, QL_ERANGE);
    b[1].token = -1;
    expect_invalid(&p, V, QL_ERANGE);

    assert_int_equal(ql_sampler_init(NULL, &d, V), QL_EINVAL);
    ql_sampler_ws_t *ws = (ql_sampler_ws_t *)&p; /* any non-NULL value: must be overwritten */
    assert_int_equal(ql_sampler_ws_init(0, &ws), QL_EINVAL);
    assert_null(ws);
    assert_int_equal(ql_sampler_ws_init(V, NULL), QL_EINVAL);
    ql_sampler_ws_free(NULL);
}

static void test_sample_bad_inputs(void **state) {
    (void)state;
    const int32_t V = 64;
    float l[64];
    fill_random(l, V, 7, -4.0f, 4.0f);
    ql_sampler_ws_t *ws = new_ws(V);
    ql_sampler_ws_t *ws_other = new_ws(V + 1);
    ql_sampling_params_t p = ql_sampling_params_default();
    p.repetition_penalty = 1.2f;
    ql_sampler_t s;
    init_ok(&s, &p, V);
    uint64_t rng0[4];
    memcpy(rng0, s._rng, sizeof(rng0));
    ql_sample_result_t r;
    int32_t toks[3] = {1, 2, 3};
    ql_sampling_history_t h = {toks, 3, 1};
    float probs[64];

    assert_int_equal(ql_sampler_sample(&s, ws, l, NULL, &r), QL_EINVAL); /* penalty, no history */
    assert_int_equal(ql_sampler_sample(&s, ws_other, l, &h, &r), QL_EINVAL);
    assert_int_equal(ql_sampler_sample(&s, NULL, l, &h, &r), QL_EINVAL);
    assert_int_equal(ql_sampler_sample(&s, ws, NULL, &h, &r), QL_EINVAL);
    assert_int_equal(ql_sampler_sample(&s, ws, l, &h, NULL), QL_EINVAL);
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h, NULL), QL_EINVAL);
    h.n_prompt = 4; /* > n_tokens */
    assert_int_equal(ql_sampler_sample(&s, ws, l, &h, &r), QL_EINVAL);
    h.n_prompt = -1;
    assert_int_equal(ql_sampler_sample(&s, ws, l, &h, &r), QL_EINVAL);
    h.n_prompt = 1;
    toks[2] = V; /* a token outside the vocabulary */
    assert_int_equal(ql_sampler_sample(&s, ws, l, &h, &r), QL_EINVAL);
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h, probs), QL_EINVAL);
    toks[2] = 3;
    l[5] = NAN;
    assert_int_equal(ql_sampler_sample(&s, ws, l, &h, &r), QL_EINTERNAL);
    l[5] = INFINITY;
    assert_int_equal(ql_sampler_sample(&s, ws, l, &h, &r), QL_EINTERNAL);
    l[5] = 0.0f;
    /* no error advanced the generator */
    assert_memory_equal(rng0, s._rng, sizeof(rng0));
    /* and the history scratch was left clean: the same call now succeeds twice alike */
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h, probs), 0);
    float probs2[64];
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h, probs2), 0);
    assert_memory_equal(probs, probs2, sizeof(probs));

    /* every token -inf, or banned: nothing to sample */
    float all_inf[64];
    for (int i = 0; i < V; i++) all_inf[i] = -INFINITY;
    ql_sampling_params_t g = ql_sampling_params_default();
    init_ok(&s, &g, V);
    assert_int_equal(ql_sampler_sample(&s, ws, all_inf, NULL, &r), QL_ERANGE);
    g.temperature = 0.0f;
    init_ok(&s, &g, V);
    assert_int_equal(ql_sampler_sample(&s, ws, all_inf, NULL, &r), QL_ERANGE);
    assert_int_equal(ql_sampler_probs(&s, ws, all_inf, NULL, probs), QL_ERANGE);
    ql_logit_bias_t ban[64];
    for (int i = 0; i < V; i++) ban[i] = (ql_logit_bias_t){i, -100.0f};
    g = ql_sampling_params_default();
    g.logit_bias = ban;
    g.n_logit_bias = V;
    init_ok(&s, &g, V);
    assert_int_equal(ql_sampler_sample(&s, ws, l, NULL, &r), QL_ERANGE);

    ql_sampler_ws_free(ws);
    ql_sampler_ws_free(ws_other);
}

/* ---- greedy ---- */

static void test_greedy_argmax_and_ties(void **state) {
    (void)state;
    const int32_t V = 5000;
    float *l = malloc(V * sizeof(*l));
    assert_non_null(l);
    ql_sampler_ws_t *ws = new_ws(V);
    ql_sampling_params_t p = ql_sampling_params_default();
    p.temperature = 0.0f;
    ql_sampler_t s;
    init_ok(&s, &p, V);
    uint64_t rng0[4];
    memcpy(rng0, s._rng, sizeof(rng0));
    for (uint64_t seed = 1; seed <= 20; seed++) {
        fill_random(l, V, seed, -10.0f, 10.0f);
        assert_int_equal(sample_one(&s, ws, l, NULL), ref_argmax(l, V));
    }
    /* greedy draws nothing from the generator */
    assert_memory_equal(rng0, s._rng, sizeof(rng0));
    /* ties: the lowest id wins, wherever the tied maxima sit */
    fill_random(l, V, 99, -10.0f, 10.0f);
    l[4321] = 50.0f;
    l[17] = 50.0f;
    l[V - 1] = 50.0f;
    assert_int_equal(sample_one(&s, ws, l, NULL), 17);
    for (int32_t i = 0; i < V; i++) l[i] = 1.0f;
    assert_int_equal(sample_one(&s, ws, l, NULL), 0);
    /* -inf entries are never picked while a finite one exists */
    for (int32_t i = 0; i < V; i++) l[i] = -INFINITY;
    l[V - 2] = -1e30f;
    assert_int_equal(sample_one(&s, ws, l, NULL), V - 2);
    /* probs at temperature 0: all the mass on the greedy token */
    float *probs = malloc(V * sizeof(*probs));
    assert_non_null(probs);
    assert_int_equal(ql_sampler_probs(&s, ws, l, NULL, probs), 0);
    for (int32_t i = 0; i < V; i++) assert_true(probs[i] == (i == V - 2 ? 1.0f : 0.0f));
    free(probs);
    free(l);
    ql_sampler_ws_free(ws);
}

/* The vectorized scans (sampling.c NOTE(lanes), NOTE(plain-greedy)): for every row length
 * around the 16-float step and every position of the max, plain greedy (no penalty, no bias)
 * and greedy through the general path (a bias on another token) give the reference argmax, the
 * lowest id on ties across a vector boundary and in the tail, and a NaN or +inf anywhere is
 * QL_EINTERNAL, -inf everywhere QL_ERANGE. */
static void test_greedy_scan_edges(void **state) {
    (void)state;
    enum { N_MAX = 53 };
    float l[N_MAX];
    for (int32_t n = 1; n <= N_MAX; n++) {
        ql_sampler_ws_t *ws = new_ws(n);
        ql_sampling_params_t plain = ql_sampling_params_default(), biased;
        plain.temperature = 0.0f;
        biased = plain;
        ql_logit_bias_t b = {0, 0.5f};
        biased.logit_bias = &b;
        biased.n_logit_bias = 1;
        ql_sampler_t sp, sb;
        init_ok(&sp, &plain, n);
        init_ok(&sb, &biased, n);
        for (int32_t at = 0; at < n; at++) {
            fill_random(l, n, (uint64_t)(n * 100 + at), -10.0f, -1.0f);
            l[at] = 5.0f;
            assert_int_equal(sample_one(&sp, ws, l, NULL), at);
            assert_int_equal(sample_one(&sb, ws, l, NULL), at == 0 ? 0 : ref_argmax(l, n));
            if (at + 17 < n) { /* a tie one vector step later: the lower id */
                l[at + 17] = 5.0f;
                assert_int_equal(sample_one(&sp, ws, l, NULL), at);
            }
            ql_sample_result_t r;
            l[at] = NAN;
            assert_int_equal(ql_sampler_sample(&sp, ws, l, NULL, &r), QL_EINTERNAL);
            assert_int_equal(ql_sampler_sample(&sb, ws, l, NULL, &r), QL_EINTERNAL);
            l[at] = INFINITY;
            assert_int_equal(ql_sampler_sample(&sp, ws, l, NULL, &r), QL_EINTERNAL);
        }
        ql_sample_result_t r;
        for (int32_t i = 0; i < n; i++) l[i] = -INFINITY;
        assert_int_equal(ql_sampler_sample(&sp, ws, l, NULL, &r), QL_ERANGE);
        l[n - 1] = -1e30f;
        assert_int_equal(sample_one(&sp, ws, l, NULL), n - 1);
        ql_sampler_ws_free(ws);
    }
}

static void test_top_k1_and_tiny_temperature_equal_greedy(void **state) {
    (void)state;
    const int32_t V = 3000;
    float *l = malloc(V * sizeof(*l));
    assert_non_null(l);
    ql_sampler_ws_t *ws = new_ws(V);
    const float temps[] = {0.1f, 1.0f, 2.0f, 50.0f};
    for (size_t ti = 0; ti < QL_ARRAY_LEN(temps); ti++) {
        ql_sampling_params_t p = ql_sampling_params_default();
        p.temperature = temps[ti];
        p.top_k = 1;
        p.seed = ti;
        ql_sampler_t s;
        init_ok(&s, &p, V);
        for (uint64_t seed = 1; seed <= 30; seed++) {
            fill_random(l, V, seed * 31 + ti, -5.0f, 5.0f);
            assert_int_equal(sample_one(&s, ws, l, NULL), ref_argmax(l, V));
        }
    }
    /* a temperature so small that (l - max) / T is -inf for all but the max: greedy again */
    ql_sampling_params_t p = ql_sampling_params_default();
    p.temperature = 1e-30f;
    ql_sampler_t s;
    init_ok(&s, &p, V);
    for (uint64_t seed = 1; seed <= 10; seed++) {
        fill_random(l, V, seed, -5.0f, 5.0f);
        assert_int_equal(sample_one(&s, ws, l, NULL), ref_argmax(l, V));
    }
    free(l);
    ql_sampler_ws_free(ws);
}

/* ---- truncation ---- */

/* five tokens of probability .5 .2 .15 .1 .05, shuffled over ids */
static const int32_t k5_ids[5] = {3, 0, 4, 1, 2};           /* id of the i-th most likely */
static const double k5_p[5] = {0.5, 0.2, 0.15, 0.1, 0.05};

static void k5_logits(float *l) {
    double p[5];
    for (int i = 0; i < 5; i++) p[k5_ids[i]] = k5_p[i];
    logits_from_probs(p, l, 5);
}

/* kept = the `n_keep` most likely of k5; checks probs renormalised over them */
static void assert_k5_kept(const float *probs, int n_keep) {
    double z = 0.0;
    for (int i = 0; i < n_keep; i++) z += k5_p[i];
    for (int i = 0; i < 5; i++) {
        double want = i < n_keep ? k5_p[i] / z : 0.0;
        assert_float_equal(probs[k5_ids[i]], want, 1e-6);
        if (i >= n_keep) assert_true(probs[k5_ids[i]] == 0.0f);
    }
}

static void k5_check(float top_p, int32_t top_k, float min_p, int n_keep) {
    float l[5], probs[5];
    k5_logits(l);
    ql_sampler_ws_t *ws = new_ws(5);
    ql_sampling_params_t p = ql_sampling_params_default();
    p.top_p = top_p;
    p.top_k = top_k;
    p.min_p = min_p;
    ql_sampler_t s;
    init_ok(&s, &p, 5);
    assert_int_equal(ql_sampler_probs(&s, ws, l, NULL, probs), 0);
    assert_k5_kept(probs, n_keep);
    /* sampling only ever returns kept tokens */
    for (int i = 0; i < 200; i++) {
        int32_t t = sample_one(&s, ws, l, NULL);
        assert_true(probs[t] > 0.0f);
    }
    ql_sampler_ws_free(ws);
}

static void test_top_p_min_p_small(void **state) {
    (void)state;
    /* top-p: the smallest prefix with mass >= p (boundaries avoided: the sums are rounded) */
    k5_check(0.45f, 0, 0.0f, 1);
    k5_check(0.55f, 0, 0.0f, 2);
    k5_check(0.69f, 0, 0.0f, 2);
    k5_check(0.71f, 0, 0.0f, 3);
    k5_check(0.84f, 0, 0.0f, 3);
    k5_check(0.86f, 0, 0.0f, 4);
    k5_check(0.96f, 0, 0.0f, 5);
    k5_check(1.0f, 0, 0.0f, 5);
    /* top-k */
    k5_check(1.0f, 1, 0.0f, 1);
    k5_check(1.0f, 3, 0.0f, 3);
    k5_check(1.0f, 5, 0.0f, 5);
    k5_check(1.0f, 9, 0.0f, 5);
    /* top-p after top-k: mass is measured on the renormalised top-3 (.5 .2 .15)/.85 */
    k5_check(0.80f, 3, 0.0f, 2); /* .7/.85 = .82 >= .80 */
    k5_check(0.83f, 3, 0.0f, 3);
    /* min-p: keep p >= min_p * p_max = min_p * .5 */
    k5_check(1.0f, 0, 0.25f, 3); /* >= .125 */
    k5_check(1.0f, 0, 0.35f, 2); /* >= .175 */
    k5_check(1.0f, 0, 0.15f, 4); /* >= .075 */
    k5_check(1.0f, 0, 1.0f, 1);  /* only the max */
    /* min-p after top-p */
    k5_check(0.86f, 0, 0.25f, 3);
}

/* large vocabulary: the histogram path against a brute-force sort */
static void test_truncation_large_vocab(void **state) {
    (void)state;
    const int32_t V = 49152;
    float *l = malloc(V * sizeof(*l));
    float *probs = malloc(V * sizeof(*probs));
    assert_non_null(l);
    assert_non_null(probs);
    ql_sampler_ws_t *ws = new_ws(V);
    for (uint64_t seed = 1; seed <= 6; seed++) {
        fill_random(l, V, seed, -12.0f, 12.0f);
        if (seed == 2) { /* coarse values: many exact ties, broken by id */
            for (int32_t i = 0; i < V; i++) l[i] = floorf(l[i]);
        }
        if (seed == 3) { /* a flat row: everything in few buckets */
            for (int32_t i = 0; i < V; i++) l[i] *= 1e-3f;
        }
        int32_t *order = ref_sorted_ids(l, V);
        const float temp = seed == 4 ? 0.5f : 1.0f;
        /* softmax at `temp` in double, in the reference order */
        double z = 0.0;
        for (int32_t i = 0; i < V; i++) z += exp((double)(l[order[i]] - l[order[0]]) / temp);

        /* top-k */
        const int32_t ks[] = {1, 2, 40, 1000};
        for (size_t ki = 0; ki < QL_ARRAY_LEN(ks); ki++) {
            ql_sampling_params_t p = ql_sampling_params_default();
            p.temperature = temp;
            p.top_k = ks[ki];
            ql_sampler_t s;
            init_ok(&s, &p, V);
            assert_int_equal(ql_sampler_probs(&s, ws, l, NULL, probs), 0);
            const double top = l[order[0]];
            double zk = 0.0;
            for (int32_t i = 0; i < ks[ki]; i++) zk += exp((l[order[i]] - top) / temp);
            for (int32_t i = 0; i < V; i++) {
                int32_t id = order[i];
                if (i < ks[ki])
                    assert_float_equal(probs[id], exp((l[id] - top) / temp) / zk, 1e-6);
                else
                    assert_true(probs[id] == 0.0f);
            }
        }
        /* top-p */
        const float ps[] = {0.05f, 0.5f, 0.9f, 0.999f};
        for (size_t pi = 0; pi < QL_ARRAY_LEN(ps); pi++) {
            ql_sampling_params_t p = ql_sampling_params_default();
            p.temperature = temp;
            p.top_p = ps[pi];
            ql_sampler_t s;
            init_ok(&s, &p, V);
            assert_int_equal(ql_sampler_probs(&s, ws, l, NULL, probs), 0);
            double cum = 0.0;
            int32_t keep = V;
            for (int32_t i = 0; i < V; i++) {
                cum += exp((double)(l[order[i]] - l[order[0]]) / temp) / z;
                if (cum >= ps[pi]) {
                    keep = i + 1;
                    /* the reference's own rounding must not decide the cut */
                    assert_true(cum - ps[pi] > 1e-9);
                    break;
                }
            }
            int32_t n_kept = 0;
            double sum = 0.0;
            for (int32_t i = 0; i < V; i++) {
                int32_t id = order[i];
                if (i < keep) {
                    assert_true(probs[id] > 0.0f);
                } else {
                    assert_true(probs[id] == 0.0f);
                }
                n_kept += probs[id] > 0.0f;
                sum += probs[id];
            }
            assert_int_equal(n_kept, keep);
            assert_float_equal(sum, 1.0, 1e-5);
        }
        free(order);
    }
    free(l);
    free(probs);
    ql_sampler_ws_free(ws);
}

/* ---- penalties and bias ---- */

/* processed logits, up to a shared constant, from probs at temperature 1 (no truncation):
 * l'_i - l'_ref = log(p_i / p_ref) */
static double rel_logit(const float *probs, int i, int ref) {
    return log((double)probs[i] / (double)probs[ref]);
}

static void test_penalty_formulas(void **state) {
    (void)state;
    enum { V = 8 };
    const float l[V] = {0.0f, 2.0f, -2.0f, 3.0f, -1.0f, 1.5f, 0.5f, -3.0f};
    /* prompt: 1 2 1; output: 3 3 4 2 */
    const int32_t toks[] = {1, 2, 1, 3, 3, 4, 2};
    const ql_sampling_history_t h = {toks, 7, 3};
    const float rep = 1.3f, pres = 0.4f, freq = 0.25f;
    ql_sampler_ws_t *ws = new_ws(V);
    ql_sampling_params_t p = ql_sampling_params_default();
    p.repetition_penalty = rep;
    p.presence_penalty = pres;
    p.frequency_penalty = freq;
    ql_sampler_t s;
    init_ok(&s, &p, V);
    float probs[V];
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h, probs), 0);
    /* token 0 is not in the history: it is the reference, its logit stays 0 */
    double want[V];
    want[0] = 0.0;
    want[1] = 2.0 / rep;                        /* prompt only: repetition only */
    want[2] = -2.0 * rep - (1 * freq + pres);   /* prompt and output once */
    want[3] = 3.0 / rep - (2 * freq + pres);    /* output twice */
    want[4] = -1.0 * rep - (1 * freq + pres);   /* output once, negative logit */
    want[5] = 1.5;
    want[6] = 0.5;
    want[7] = -3.0;
    for (int i = 1; i < V; i++) assert_float_equal(rel_logit(probs, i, 0), want[i], 1e-5);

    /* the whole history as prompt: presence and frequency see nothing, repetition does */
    const ql_sampling_history_t h_prompt = {toks, 7, 7};
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h_prompt, probs), 0);
    assert_float_equal(rel_logit(probs, 3, 0), 3.0 / rep, 1e-5);
    assert_float_equal(rel_logit(probs, 4, 0), -1.0 * rep, 1e-5);

    /* negative presence/frequency favour repeats (OpenAI allows [-2, 2]) */
    p = ql_sampling_params_default();
    p.presence_penalty = -0.5f;
    p.frequency_penalty = -1.0f;
    init_ok(&s, &p, V);
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h, probs), 0);
    assert_float_equal(rel_logit(probs, 3, 0), 3.0 + 2 * 1.0 + 0.5, 1e-5);
    assert_float_equal(rel_logit(probs, 1, 0), 2.0, 1e-5); /* prompt-only: untouched */

    /* greedy sees the penalties: token 3 (the argmax) falls to 3 - 2 * 1 = 1, below token 1 */
    p = ql_sampling_params_default();
    p.temperature = 0.0f;
    p.frequency_penalty = 1.0f;
    init_ok(&s, &p, V);
    assert_int_equal(sample_one(&s, ws, l, &h), 1);
    const ql_sampling_history_t empty = {NULL, 0, 0};
    assert_int_equal(sample_one(&s, ws, l, &empty), 3);
    ql_sampler_ws_free(ws);
}

static void test_logit_bias(void **state) {
    (void)state;
    enum { V = 8 };
    const float l[V] = {0.0f, 2.0f, -2.0f, 3.0f, -1.0f, 1.5f, 0.5f, -3.0f};
    ql_sampler_ws_t *ws = new_ws(V);
    ql_sampler_t s;
    float probs[V];

    /* greedy: banning the argmax gives the runner-up */
    ql_logit_bias_t ban3 = {3, -100.0f};
    ql_sampling_params_t p = ql_sampling_params_default();
    p.temperature = 0.0f;
    p.logit_bias = &ban3;
    p.n_logit_bias = 1;
    init_ok(&s, &p, V);
    assert_int_equal(sample_one(&s, ws, l, NULL), 1);

    /* a ban is exact: at temperature 2 (the bias would be only -50 after it) and with a
     * negative frequency penalty pulling the other way, the token never comes back */
    const int32_t toks[] = {3, 3};
    const ql_sampling_history_t h = {toks, 2, 0};
    p.temperature = 2.0f;
    p.frequency_penalty = -2.0f;
    init_ok(&s, &p, V);
    assert_int_equal(ql_sampler_probs(&s, ws, l, &h, probs), 0);
    assert_true(probs[3] == 0.0f);
    for (int i = 0; i < 500; i++) assert_int_not_equal(sample_one(&s, ws, l, &h), 3);

    /* a bias adds to the logit; two entries for one token add up */
    ql_logit_bias_t b[3] = {{7, 2.5f}, {5, -0.75f}, {7, 1.0f}};
    p = ql_sampling_params_default();
    p.logit_bias = b;
    p.n_logit_bias = 3;
    init_ok(&s, &p, V);
    assert_int_equal(ql_sampler_probs(&s, ws, l, NULL, probs), 0);
    assert_float_equal(rel_logit(probs, 7, 0), -3.0 + 3.5, 1e-5);
    assert_float_equal(rel_logit(probs, 5, 0), 1.5 - 0.75, 1e-5);
    assert_float_equal(rel_logit(probs, 3, 0), 3.0, 1e-5);

    /* lowering n_logit_bias between calls keeps a valid prefix: the engine lifts its
     * min_tokens bans (the tail of the array) this way */
    ql_logit_bias_t two[2] = {{5, 1.0f}, {3, -100.0f}};
    p = ql_sampling_params_default();
    p.temperature = 0.0f;
    p.logit_bias = two;
    p.n_logit_bias = 2;
    init_ok(&s, &p, V);
    assert_int_equal(sample_one(&s, ws, l, NULL), 5); /* 3 banned; 5: 1.5 + 1 > 2 */
    s.params.n_logit_bias = 1;
    assert_int_equal(sample_one(&s, ws, l, NULL), 3); /* the ban is lifted, the bias stays */
    assert_int_equal(ql_sampler_probs(&s, ws, l, NULL, probs), 0);
    assert_true(probs[3] == 1.0f);

    /* +100 makes a token all but certain */
    ql_logit_bias_t up = {7, 100.0f};
    p = ql_sampling_params_default();
    p.logit_bias = &up;
    p.n_logit_bias = 1;
    init_ok(&s, &p, V);
    for (int i = 0; i < 100; i++) assert_int_equal(sample_one(&s, ws, l, NULL), 7);
    ql_sampler_ws_free(ws);
}

/* ---- the generator ---- */

static void test_seed_determinism(void **state) {
    (void)state;
    const int32_t V = 1000, N = 300;
    float *l = malloc(V * sizeof(*l));
    assert_non_null(l);
    fill_random(l, V, 5, -2.0f, 2.0f);
    ql_sampler_ws_t *ws = new_ws(V);
    int32_t a[300], b[300], c[300];
    ql_sampling_params_t p = ql_sampling_params_default();
    p.top_p = 0.95f;
    p.seed = 42;
    ql_sampler_t s1, s2, s3;
    init_ok(&s1, &p, V);
    for (int i = 0; i < N; i++) a[i] = sample_one(&s1, ws, l, NULL);
    /* the same seed again, interleaved with another request on the same workspace */
    init_ok(&s1, &p, V);
    p.seed = 43;
    init_ok(&s2, &p, V);
    for (int i = 0; i < N; i++) {
        b[i] = sample_one(&s1, ws, l, NULL);
        c[i] = sample_one(&s2, ws, l, NULL);
    }
    assert_memory_equal(a, b, sizeof(a));
    int n_diff = 0;
    for (int i = 0; i < N; i++) n_diff += a[i] != c[i];
    /* the most likely token has p < 0.01, so equal draws are rare: most positions differ */
    assert_true(n_diff > N / 2);
    /* a third sampler on seed 43 repeats the second */
    init_ok(&s3, &p, V);
    for (int i = 0; i < N; i++) assert_int_equal(sample_one(&s3, ws, l, NULL), c[i]);

    /* uniform draws lie in [0, 1) and are not stuck */
    double lo = 1.0, hi = 0.0;
    for (int i = 0; i < 10000; i++) {
        double u = ql_sampler_uniform(&s3);
        assert_true(u >= 0.0 && u < 1.0);
        lo = u < lo ? u : lo;
        hi = u > hi ? u : hi;
    }
    assert_true(lo < 0.001 && hi > 0.999);
    free(l);
    ql_sampler_ws_free(ws);
}

/* ---- the sampled distribution ---- */

/* NOTE(chi-square): under a correct sampler, Pearson's X^2 = sum (O - E)^2 / E over K
 * categories with every E >= 5 follows chi^2 with K - 1 degrees of freedom. The bound is its
 * 1 - 1e-6 quantile by the Wilson-Hilferty approximation, (z = 4.7534 for 1e-6)
 *     q = df * (1 - 2/(9 df) + z sqrt(2/(9 df)))^3,
 * so a correct sampler fails with probability about 1e-6 whatever the seed; the seed is fixed
 * so the test is deterministic, and the bound was not fitted to it. */
static double chi2_bound(int df) {
    const double z = 4.7534;
    double a = 2.0 / (9.0 * df);
    double c = 1.0 - a + z * sqrt(a);
    return df * c * c * c;
}

static void chi_square_run(const float *l, int32_t V, const ql_sampling_params_t *p,
                           const double *expect /* [V], zeros for cut tokens */, int N) {
    ql_sampler_ws_t *ws = new_ws(V);
    ql_sampler_t s;
    init_ok(&s, p, V);
    int *count = calloc((size_t)V, sizeof(*count));
    assert_non_null(count);
    for (int i = 0; i < N; i++) count[sample_one(&s, ws, l, NULL)]++;
    double x2 = 0.0;
    int k = 0;
    for (int32_t i = 0; i < V; i++) {
        if (expect[i] == 0.0) {
            assert_int_equal(count[i], 0);
            continue;
        }
        double e = expect[i] * N;
        assert_true(e >= 5.0); /* the chi-square approximation holds */
        x2 += (count[i] - e) * (count[i] - e) / e;
        k++;
    }
    double bound = chi2_bound(k - 1);
    print_message("chi-square: X^2 = %.2f, df = %d, bound = %.2f\n", x2, k - 1, bound);
    assert_true(x2 < bound);
    free(count);
    ql_sampler_ws_free(ws);
}

static void test_distribution_chi_square(void **state) {
    (void)state;
    enum { V = 16 };
    const int N = 200000;
    float l[V];
    for (int i = 0; i < V; i++) l[i] = 0.25f * (float)((i * 7) % V); /* p from .004 to .22 */
    double expect[V];

    /* temperature 1: softmax */
    double z = 0.0;
    for (int i = 0; i < V; i++) z += exp((double)l[i]);
    for (int i = 0; i < V; i++) expect[i] = exp((double)l[i]) / z;
    ql_sampling_params_t p = ql_sampling_params_default();
    p.seed = 1234;
    chi_square_run(l, V, &p, expect, N);

    /* temperature 0.7 and top-k 6: softmax(l / 0.7) over the six largest */
    int32_t *order = ref_sorted_ids(l, V);
    z = 0.0;
    for (int i = 0; i < V; i++) expect[i] = 0.0;
    for (int i = 0; i < 6; i++) z += exp((double)l[order[i]] / 0.7);
    for (int i = 0; i < 6; i++) expect[order[i]] = exp((double)l[order[i]] / 0.7) / z;
    free(order);
    p.temperature = 0.7f;
    p.top_k = 6;
    p.seed = 99;
    chi_square_run(l, V, &p, expect, N);
}

/* ---- logprobs ---- */

static void test_logprobs(void **state) {
    (void)state;
    enum { V = 8 };
    const float l[V] = {0.0f, 2.0f, -2.0f, 3.0f, 2.0f, 1.5f, 0.5f, -3.0f};
    double z = 0.0;
    for (int i = 0; i < V; i++) z += exp((double)l[i]);
    ql_sampler_ws_t *ws = new_ws(V);
    ql_sampler_t s;
    ql_sample_result_t r;

    /* off by default */
    ql_sampling_params_t p = ql_sampling_params_default();
    init_ok(&s, &p, V);
    assert_int_equal(ql_sampler_sample(&s, ws, l, NULL, &r), 0);
    assert_int_equal(r.n_top, 0);
    assert_true(r.logprob == 0.0f);

    /* all alternatives (top_logprobs 20 > V): sorted, ties by id, softmax sums to 1 */
    p.logprobs = 1;
    p.top_logprobs = 20;
    init_ok(&s, &p, V);
    assert_int_equal(ql_sampler_sample(&s, ws, l, NULL, &r), 0);
    assert_int_equal(r.n_top, V);
    const int32_t want_order[V] = {3, 1, 4, 5, 6, 0, 2, 7};
    double sum = 0.0;
    for (int i = 0; i < V; i++) {
        assert_int_equal(r.top_tokens[i], want_order[i]);
        assert_float_equal(r.top_logprobs[i], (double)l[want_order[i]] - log(z), 1e-5);
        if (i > 0) assert_true(r.top_logprobs[i] <= r.top_logprobs[i - 1]);
        sum += exp((double)r.top_logprobs[i]);
    }
    assert_float_equal(sum, 1.0, 1e-5);
    assert_float_equal(r.logprob, (double)l[r.token] - log(z), 1e-5);

    /* raw, not processed: penalties, bias, temperature and top-k change what is sampled but
     * not the reported numbers; the chosen token's logprob stays finite */
    const int32_t toks[] = {3, 3, 1};
    const ql_sampling_history_t h = {toks, 3, 0};
    ql_logit_bias_t b = {7, 10.0f};
    p.temperature = 0.3f;
    p.top_k = 1;
    p.top_logprobs = 3;
    p.frequency_penalty = 2.0f;
    p.logit_bias = &b;
    p.n_logit_bias = 1;
    init_ok(&s, &p, V);
    assert_int_equal(ql_sampler_sample(&s, ws, l, &h, &r), 0);
    assert_int_equal(r.token, 7); /* -3 + 10: the processed argmax */
    assert_float_equal(r.logprob, -3.0 - log(z), 1e-5);
    assert_int_equal(r.n_top, 3);
    assert_int_equal(r.top_tokens[0], 3);
    assert_int_equal(r.top_tokens[1], 1);
    assert_int_equal(r.top_tokens[2], 4);
    assert_float_equal(r.top_logprobs[0], 3.0 - log(z), 1e-5);

    /* greedy reports them too; top_logprobs 0 gives the chosen token only */
    p = ql_sampling_params_default();
    p.temperature = 0.0f;
    p.logprobs = 1;
    init_ok(&s, &p, V);
    assert_int_equal(ql_sampler_sample(&s, ws, l, NULL, &r), 0);
    assert_int_equal(r.token, 3);
    assert_int_equal(r.n_top, 0);
    assert_float_equal(r.logprob, 3.0 - log(z), 1e-5);
    ql_sampler_ws_free(ws);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_default_and_rejected),
        cmocka_unit_test(test_sample_bad_inputs),
        cmocka_unit_test(test_greedy_argmax_and_ties),
        cmocka_unit_test(test_greedy_scan_edges),
        cmocka_unit_test(test_top_k1_and_tiny_temperature_equal_greedy),
        cmocka_unit_test(test_top_p_min_p_small),
        cmocka_unit_test(test_truncation_large_vocab),
        cmocka_unit_test(test_penalty_formulas),
        cmocka_unit_test(test_logit_bias),
        cmocka_unit_test(test_seed_determinism),
        cmocka_unit_test(test_distribution_chi_square),
        cmocka_unit_test(test_logprobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
