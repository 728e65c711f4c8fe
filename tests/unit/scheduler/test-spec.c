/*
 * tests/unit/scheduler/test-spec.c — speculative decoding's parts (scheduler/spec.c and the
 * scheduler's draft/commit hooks): n-gram lookup, lossless verification (chi-square of the
 * emitted tokens against the target distribution, for one-hot and full draft distributions,
 * shaped by top-k and temperature alike), greedy acceptance, the cost model's choice of k at low
 * and high load, and rollback: after a verify and its commit the block manager is exactly as if
 * the accepted tokens had been decoded one at a time and the rejected ones never existed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include <cmocka.h>

#include "core/core.h"
#include "scheduler/kv-cache.h"
#include "scheduler/sampling.h"
#include "scheduler/scheduler.h"
#include "scheduler/spec.h"

/* ---- n-gram lookup ---- */

static void test_ngram(void **state) {
    (void)state;
    int32_t out[8];
    /* the longest suffix match wins: "1 2 3" occurs at 0, "2 3" also at 5 (more recent) */
    const int32_t t1[] = {1, 2, 3, 4, 5, 2, 3, 9, 1, 2, 3};
    assert_int_equal(ql_spec_ngram_propose(t1, 11, 1, 3, 2, out), 2);
    assert_int_equal(out[0], 4);
    assert_int_equal(out[1], 5);
    /* with n_max 2 the most recent "2 3" is the one at 5 */
    assert_int_equal(ql_spec_ngram_propose(t1, 11, 1, 2, 2, out), 2);
    assert_int_equal(out[0], 9);
    assert_int_equal(out[1], 1);
    /* no match at all */
    const int32_t t2[] = {1, 2, 3, 4};
    assert_int_equal(ql_spec_ngram_propose(t2, 4, 1, 3, 4, out), 0);
    /* a period: the continuation runs into the proposal itself */
    const int32_t t3[] = {7, 8, 7, 8};
    assert_int_equal(ql_spec_ngram_propose(t3, 4, 1, 3, 5, out), 5);
    const int32_t want3[] = {7, 8, 7, 8, 7};
    assert_memory_equal(out, want3, sizeof(want3));
    /* n_min above every match: nothing */
    assert_int_equal(ql_spec_ngram_propose(t1, 11, 4, 4, 2, out), 0);
    /* bad arguments */
    assert_int_equal(ql_spec_ngram_propose(t1, 11, 1, 3, 0, out), 0);
    assert_int_equal(ql_spec_ngram_propose(NULL, 11, 1, 3, 2, out), 0);
    assert_int_equal(ql_spec_ngram_propose(t1, 1, 1, 3, 2, out), 0);
}

/* ---- verification ---- */

#define V 8

/* chi-square statistic of counts against expected probabilities (cells with p = 0 must be 0) */
static double chi2(const int *counts, const double *p, int n, int total, int *dof) {
    double x = 0.0;
    *dof = -1;
    for (int i = 0; i < n; i++) {
        if (p[i] <= 0.0) {
            if (counts[i] != 0)
                fail_msg("token %d has p = 0 but was emitted %d times", i, counts[i]);
            continue;
        }
        double e = p[i] * total;
        x += (counts[i] - e) * (counts[i] - e) / e;
        (*dof)++;
    }
    return x;
}

/* 0.999 quantiles of chi-square for 1..15 degrees of freedom: a correct sampler fails one run
 * in a thousand per assertion (the seeds are fixed, so a run either always passes or never) */
static const double k_chi2_999[16] = {0,     10.83, 13.82, 16.27, 18.47, 20.52, 22.46, 24.32,
                                      26.12, 27.88, 29.59, 31.26, 32.91, 34.53, 36.12, 37.70};

typedef struct vcase_s {
    const char *name;
    float temperature;
    int32_t top_k;
    int one_hot; /* 1: a deterministic draft (n-gram) d0, d1; else drafts drawn from q */
    int32_t d0, d1;
    int cut;     /* 1: d0 is outside what top-k keeps: never accepted */
} vcase_t;

/* Emits the first token of a verify with 2 drafts N times and compares its distribution with
 * the target's processed distribution at that position; also the second token given that the
 * first draft was accepted. */
static void run_verify_case(const vcase_t *vc) {
    const float logits0[V] = {2.0f, 1.5f, 0.3f, -0.4f, 1.0f, -2.0f, 0.7f, 0.0f};
    const float logits1[V] = {-1.0f, 0.4f, 1.8f, 0.2f, -0.3f, 1.1f, 0.0f, 0.9f};
    const float logits2[V] = {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 3.0f};
    const float *rows[3] = {logits0, logits1, logits2};
    /* the draft distributions: deliberately unlike p */
    const float qa[V] = {0.05f, 0.05f, 0.3f, 0.2f, 0.1f, 0.1f, 0.1f, 0.1f};
    const float qb[V] = {0.3f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f, 0.1f};
    const float *qs[2] = {qa, qb};

    ql_sampling_params_t sp = ql_sampling_params_default();
    sp.temperature = vc->temperature;
    sp.top_k = vc->top_k;
    ql_sampler_ws_t *ws = NULL;
    assert_int_equal(ql_sampler_ws_init(V, &ws), 0);
    /* the target's distributions, from the same processing */
    float p0[V], p1[V];
    ql_sampler_t ref;
    assert_int_equal(ql_sampler_init(&ref, &sp, V), 0);
    assert_int_equal(ql_sampler_probs(&ref, ws, logits0, NULL, p0), 0);
    assert_int_equal(ql_sampler_probs(&ref, ws, logits1, NULL, p1), 0);

    const int N = 40000;
    int c0[V] = {0}, c1[V] = {0}, n1 = 0, acc = 0, rej = 0, bonus = 0;
    uint64_t draw = 12345;
    float p[V], r[V];
    for (int n = 0; n < N; n++) {
        ql_sampler_t s;
        sp.seed = (uint64_t)n;
        assert_int_equal(ql_sampler_init(&s, &sp, V), 0);
        int32_t draft[2];
        if (vc->one_hot) {
            draft[0] = vc->d0; /* a fixed proposal, as the n-gram drafter makes */
            draft[1] = vc->d1;
        } else { /* drawn from q with a generator of the test's own */
            for (int i = 0; i < 2; i++) {
                draw = draw * 6364136223846793005ull + 1442695040888963407ull;
                double u = (double)(draw >> 11) / 9007199254740992.0, cum = 0;
                draft[i] = V - 1;
                for (int t = 0; t < V; t++) {
                    cum += qs[i][t];
                    if (u < cum) {
                        draft[i] = t;
                        break;
                    }
                }
            }
        }
        int32_t hist[4] = {draft[0], draft[1]};
        ql_spec_verify_t v = {.rows = rows,
                              .draft = draft,
                              .q = vc->one_hot ? NULL : qs,
                              .n_draft = 2,
                              .tokens = hist,
                              .n_known = 0,
                              .n_prompt = 0};
        int32_t out[3], m = -1;
        assert_int_equal(ql_spec_verify(&s, ws, &v, p, r, out, &m), 0);
        assert_true(m >= 0 && m <= 2);
        for (int i = 0; i < m; i++) assert_int_equal(out[i], draft[i]);
        c0[out[0]]++;
        if (m >= 1) {
            c1[out[1]]++;
            n1++;
        }
        if (m == 2) bonus++;
        acc += m;
        rej += m < 2;
    }
    int dof;
    double x0 = chi2(c0, (const double[V]){p0[0], p0[1], p0[2], p0[3], p0[4], p0[5], p0[6], p0[7]},
                     V, N, &dof);
    printf("    %s: first token chi2 %.2f (%d dof), accepted %d, rejected %d, bonus %d\n",
           vc->name, x0, dof, acc, rej, bonus);
    assert_true(dof >= 1 && dof < 16);
    assert_true(x0 < k_chi2_999[dof]);
    /* the second token, over the runs that accepted the first draft: still p1 */
    if (n1 > 500) {
        double x1 = chi2(c1, (const double[V]){p1[0], p1[1], p1[2], p1[3], p1[4], p1[5], p1[6],
                                               p1[7]},
                         V, n1, &dof);
        printf("    %s: second token chi2 %.2f (%d dof) over %d\n", vc->name, x1, dof, n1);
        assert_true(x1 < k_chi2_999[dof]);
    }
    if (vc->cut) assert_int_equal(acc, 0); /* p(d0) = 0: top-k shaped p */
    else assert_true(acc > 0 && rej > 0);   /* both paths taken */
    ql_sampler_ws_free(ws);
}

static void test_verify_distribution(void **state) {
    (void)state;
    const vcase_t cases[] = {
        {"one-hot, T=1", 1.0f, 0, 1, 2, 5, 0},
        {"drawn from q, T=1", 1.0f, 0, 0, 0, 0, 0},
        {"drawn from q, T=0.7, top-k 5", 0.7f, 5, 0, 0, 0, 0},
        {"one-hot, T=1.3, top-k 4", 1.3f, 4, 1, 1, 2, 0},
        {"one-hot outside top-k 4", 1.3f, 4, 1, 2, 5, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) run_verify_case(&cases[i]);
}

static void test_verify_greedy(void **state) {
    (void)state;
    const float l0[V] = {0, 1, 5, 0, 0, 0, 0, 0}; /* argmax 2 */
    const float l1[V] = {0, 0, 0, 0, 0, 0, 7, 0}; /* argmax 6 */
    const float l2[V] = {9, 0, 0, 0, 0, 0, 0, 0}; /* argmax 0 */
    const float *rows[3] = {l0, l1, l2};
    ql_sampling_params_t sp = ql_sampling_params_default();
    sp.temperature = 0.0f;
    ql_sampler_ws_t *ws = NULL;
    assert_int_equal(ql_sampler_ws_init(V, &ws), 0);
    ql_sampler_t s;
    assert_int_equal(ql_sampler_init(&s, &sp, V), 0);
    float p[V], r[V];
    int32_t out[3], m;
    int32_t d_all[2] = {2, 6}, d_first[2] = {2, 5}, d_none[2] = {3, 6};
    ql_spec_verify_t v = {.rows = rows, .n_draft = 2, .n_known = 0, .n_prompt = 0};
    v.draft = d_all;
    v.tokens = d_all;
    assert_int_equal(ql_spec_verify(&s, ws, &v, p, r, out, &m), 0);
    assert_int_equal(m, 2);
    assert_int_equal(out[2], 0); /* the bonus token */
    v.draft = d_first;
    v.tokens = d_first;
    assert_int_equal(ql_spec_verify(&s, ws, &v, p, r, out, &m), 0);
    assert_int_equal(m, 1);
    assert_int_equal(out[1], 6); /* the target's token replaces the rejected draft */
    v.draft = d_none;
    v.tokens = d_none;
    assert_int_equal(ql_spec_verify(&s, ws, &v, p, r, out, &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(out[0], 2);
    /* logit_bias shapes p: banning token 2 at position 0 rejects a draft of 2 */
    ql_logit_bias_t ban = {2, QL_SAMPLING_BIAS_MIN};
    sp.logit_bias = &ban;
    sp.n_logit_bias = 1;
    assert_int_equal(ql_sampler_init(&s, &sp, V), 0);
    int32_t nb[3] = {1, 0, 0};
    v.draft = d_all;
    v.tokens = d_all;
    v.n_logit_bias = nb;
    assert_int_equal(ql_spec_verify(&s, ws, &v, p, r, out, &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(out[0], 1);
    assert_int_equal(s.params.n_logit_bias, 1); /* restored */
    /* errors */
    int32_t bad[2] = {V, 0};
    v.draft = bad;
    assert_int_equal(ql_spec_verify(&s, ws, &v, p, r, out, &m), QL_EINVAL);
    assert_int_equal(ql_spec_verify(&s, ws, NULL, p, r, out, &m), QL_EINVAL);
    const float nan_row[V] = {NAN, 0, 0, 0, 0, 0, 0, 0};
    const float *nan_rows[3] = {nan_row, l1, l2};
    v.rows = nan_rows;
    v.draft = d_all;
    assert_int_equal(ql_spec_verify(&s, ws, &v, p, r, out, &m), QL_EINTERNAL);
    ql_sampler_ws_free(ws);
}

/* ---- the cost model ---- */

static void test_plan(void **state) {
    (void)state;
    ql_spec_cost_t m;
    ql_spec_cost_init(&m, 2.4e-3, 0.65e-3);
    /* a fit from steps following t = 3 ms + 0.5 ms per token */
    for (int i = 0; i < 200; i++) {
        int n = 1 + (i * 7) % 64;
        ql_spec_cost_observe(&m, n, 3e-3 + 0.5e-3 * n);
    }
    assert_true(fabs(m.t0_s - 3e-3) < 0.3e-3);
    assert_true(fabs(m.c_s - 0.5e-3) < 0.05e-3);
    float alpha[64];
    int32_t kmax[64], k[64];
    /* one sequence, good acceptance: draft the most */
    alpha[0] = 0.8f;
    kmax[0] = 4;
    ql_spec_plan(&m, 1, 1.0, 1, alpha, kmax, 0.0, k);
    assert_int_equal(k[0], 4);
    /* one sequence, poor acceptance: fewer */
    alpha[0] = 0.1f;
    ql_spec_plan(&m, 1, 1.0, 1, alpha, kmax, 0.0, k);
    assert_true(k[0] <= 1);
    /* 64 sequences (saturation): nothing pays at 0.8 */
    for (int i = 0; i < 64; i++) {
        alpha[i] = 0.8f;
        kmax[i] = 4;
    }
    ql_spec_plan(&m, 64, 64.0, 64, alpha, kmax, 0.0, k);
    for (int i = 0; i < 64; i++) assert_int_equal(k[i], 0);
    /* ... unless acceptance is near certain */
    for (int i = 0; i < 64; i++) alpha[i] = 0.999f;
    ql_spec_plan(&m, 64, 64.0, 64, alpha, kmax, 0.0, k);
    int total = 0;
    for (int i = 0; i < 64; i++) total += k[i];
    assert_true(total > 0);
    /* more than QL_SPEC_PLAN_MAX sequences: the rest draft nothing */
    float al[300];
    int32_t km[300], kk[300];
    for (int i = 0; i < 300; i++) {
        al[i] = 0.9999f;
        km[i] = 4;
        kk[i] = 7;
    }
    ql_spec_cost_t lowload;
    ql_spec_cost_init(&lowload, 1.0, 1e-6); /* t0 dwarfs every token: drafts are free */
    ql_spec_plan(&lowload, 300, 300.0, 300, al, km, 0.0, kk);
    assert_int_equal(kk[0], 4);
    assert_int_equal(kk[QL_SPEC_PLAN_MAX - 1], 4);
    for (int i = QL_SPEC_PLAN_MAX; i < 300; i++) assert_int_equal(kk[i], 0);
    /* bad observations are ignored */
    double t0 = m.t0_s;
    ql_spec_cost_observe(&m, 0, 1.0);
    ql_spec_cost_observe(&m, 4, NAN);
    ql_spec_cost_observe(&m, 4, -1.0);
    assert_true(m.t0_s == t0);
}

/* ---- rollback ---- */

typedef struct rig_s {
    ql_kv_t *kv;
    ql_sched_t *s;
    int32_t seq;
} rig_t;

static void rig_init(rig_t *g, const int32_t *prompt, int32_t n_prompt) {
    ql_kv_params_t kp = ql_kv_params_default();
    kp.n_blocks = 24;
    kp.block_size = 4;
    kp.n_seq_max = 2;
    kp.n_tokens_max = 64;
    assert_int_equal(ql_kv_init(&kp, &g->kv), 0);
    ql_sched_params_t sp = ql_sched_params_default();
    sp.max_num_seqs = 2;
    sp.max_batched_tokens = 64;
    sp.max_model_len = 64;
    sp.max_logits_rows = 2 * 9;
    assert_int_equal(ql_sched_init(&sp, g->kv, &g->s), 0);
    ql_sched_req_t r = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = 40, .n_choices = 1};
    assert_int_equal(ql_sched_add(g->s, &r, &g->seq), 0);
    ql_sched_step_t st;
    assert_int_equal(ql_sched_schedule(g->s, &st), 0);
    assert_int_equal(st.n_items, 1);
    assert_int_equal(ql_sched_step_done(g->s), 0);
}

static void rig_free(rig_t *g) {
    ql_sched_free(g->s);
    ql_kv_free(g->kv);
}

/* one ordinary decode step: feed the last token, push `tok` */
static void rig_decode(rig_t *g, int32_t tok) {
    ql_sched_step_t st;
    assert_int_equal(ql_sched_schedule(g->s, &st), 0);
    assert_int_equal(st.n_items, 1);
    assert_int_equal(st.items[0].n_tokens, 1);
    assert_int_equal(ql_sched_step_done(g->s), 0);
    assert_int_equal(ql_sched_push_token(g->s, g->seq, tok), 0);
}

/* both block managers hold the same state for their sequence */
static void assert_same_kv(const rig_t *a, const rig_t *b) {
    assert_int_equal(ql_kv_check(a->kv), 0);
    assert_int_equal(ql_kv_check(b->kv), 0);
    ql_kv_stats_t sa, sb;
    ql_kv_get_stats(a->kv, &sa);
    ql_kv_get_stats(b->kv, &sb);
    assert_int_equal(sa.n_blocks_free, sb.n_blocks_free);
    assert_int_equal(sa.n_blocks_used, sb.n_blocks_used);
    assert_int_equal(sa.n_blocks_cached, sb.n_blocks_cached);
    ql_sched_seq_info_t ia, ib;
    assert_int_equal(ql_sched_seq_info(a->s, a->seq, &ia), 0);
    assert_int_equal(ql_sched_seq_info(b->s, b->seq, &ib), 0);
    assert_int_equal(ia.n_tokens, ib.n_tokens);
    assert_int_equal(ia.n_computed, ib.n_computed);
    assert_memory_equal(ia.tokens, ib.tokens, (size_t)ia.n_tokens * sizeof(int32_t));
    int32_t na, nb;
    const int32_t *ta = ql_kv_seq_block_table(a->kv, a->seq, &na);
    const int32_t *tb = ql_kv_seq_block_table(b->kv, b->seq, &nb);
    assert_int_equal(na, nb);
    /* the token ids stored for every computed position */
    int32_t kvn = ql_kv_seq_n_tokens(a->kv, a->seq);
    assert_int_equal(kvn, ql_kv_seq_n_tokens(b->kv, b->seq));
    for (int32_t pos = 0; pos < kvn; pos++)
        assert_int_equal(ql_kv_block_tokens(a->kv, ta[pos / 4])[pos % 4],
                         ql_kv_block_tokens(b->kv, tb[pos / 4])[pos % 4]);
}

static void rollback_case(int32_t n_prompt, int32_t k, int32_t m) {
    int32_t prompt[16];
    for (int i = 0; i < n_prompt; i++) prompt[i] = 100 + i;
    const int32_t drafts[8] = {201, 202, 203, 204, 205, 206, 207, 208};
    const int32_t after = 300; /* the token sampled after the accepted drafts */
    rig_t a, b;
    rig_init(&a, prompt, n_prompt);
    rig_init(&b, prompt, n_prompt);
    assert_int_equal(ql_sched_push_token(a.s, a.seq, 50), 0);
    assert_int_equal(ql_sched_push_token(b.s, b.seq, 50), 0);
    /* a: decodes the m accepted drafts and the next token one step at a time */
    for (int32_t i = 0; i < m; i++) rig_decode(&a, drafts[i]);
    rig_decode(&a, after);
    /* b: one verify of k drafts, m accepted */
    assert_int_equal(ql_sched_set_draft(b.s, b.seq, drafts, k), k);
    ql_sched_step_t st;
    assert_int_equal(ql_sched_schedule(b.s, &st), 0);
    assert_int_equal(st.n_items, 1);
    assert_int_equal(st.items[0].n_draft, k);
    assert_int_equal(st.items[0].n_tokens, 1 + k);
    assert_int_equal(st.batch.n_logits, 1 + k);
    assert_int_equal(st.n_draft_tokens, k);
    for (int32_t i = 0; i <= k; i++)
        assert_int_equal(st.batch.logits_rows[st.items[0].logits_row + i], i);
    assert_int_equal(ql_sched_step_done(b.s), 0);
    /* nothing else may happen to it before the commit */
    assert_int_equal(ql_sched_push_token(b.s, b.seq, after), QL_ESTATE);
    assert_int_equal(ql_sched_spec_commit(b.s, b.seq, k + 1), QL_EINVAL);
    assert_int_equal(ql_sched_spec_commit(b.s, b.seq, m), 0);
    assert_int_equal(ql_sched_spec_commit(b.s, b.seq, m), QL_ESTATE);
    assert_int_equal(ql_sched_push_token(b.s, b.seq, after), 0);
    assert_same_kv(&a, &b);
    /* and both go on the same */
    rig_decode(&a, 400);
    rig_decode(&b, 400);
    assert_same_kv(&a, &b);
    /* released: the prefix cache holds the same number of blocks */
    assert_int_equal(ql_sched_remove(a.s, a.seq), 0);
    assert_int_equal(ql_sched_remove(b.s, b.seq), 0);
    ql_kv_stats_t sa, sb;
    ql_kv_get_stats(a.kv, &sa);
    ql_kv_get_stats(b.kv, &sb);
    assert_int_equal(sa.n_blocks_cached, sb.n_blocks_cached);
    assert_int_equal(sa.n_blocks_free, sb.n_blocks_free);
    rig_free(&a);
    rig_free(&b);
}

static void test_rollback(void **state) {
    (void)state;
    /* prompt lengths put the drafts inside one block, across one and across two boundaries */
    for (int32_t n_prompt = 3; n_prompt <= 8; n_prompt++)
        for (int32_t k = 1; k <= 8; k++)
            for (int32_t m = 0; m <= k; m++) rollback_case(n_prompt, k, m);
}

static void test_draft_limits(void **state) {
    (void)state;
    int32_t prompt[5] = {1, 2, 3, 4, 5};
    rig_t g;
    rig_init(&g, prompt, 5);
    const int32_t d[8] = {9, 9, 9, 9, 9, 9, 9, 9};
    /* no token sampled yet: not in decode state */
    assert_int_equal(ql_sched_set_draft(g.s, g.seq, d, 2), QL_ESTATE);
    assert_int_equal(ql_sched_push_token(g.s, g.seq, 7), 0);
    assert_int_equal(ql_sched_set_draft(g.s, g.seq, NULL, 2), QL_EINVAL);
    assert_int_equal(ql_sched_set_draft(g.s, g.seq, d, -1), QL_EINVAL);
    assert_int_equal(ql_sched_set_draft(g.s, 99, d, 2), QL_EINVAL);
    assert_int_equal(ql_sched_spec_commit(g.s, g.seq, 0), QL_ESTATE); /* no verify */
    /* max_tokens 40, 1 generated: at most 38 drafts (38 accepted + 1 sampled = 40) */
    int32_t many[40];
    for (int i = 0; i < 40; i++) many[i] = 9;
    assert_int_equal(ql_sched_set_draft(g.s, g.seq, many, 40), 38);
    /* the logits rows (18 = 2 seats + 16) cap the drafts the step feeds */
    ql_sched_step_t st;
    assert_int_equal(ql_sched_schedule(g.s, &st), 0);
    assert_int_equal(st.items[0].n_draft, 16);
    assert_int_equal(ql_sched_step_done(g.s), 0);
    assert_int_equal(ql_sched_spec_commit(g.s, g.seq, 3), 0);
    assert_int_equal(ql_sched_push_token(g.s, g.seq, 8), 0);
    /* cleared drafts feed one token */
    assert_int_equal(ql_sched_set_draft(g.s, g.seq, d, 2), 2);
    assert_int_equal(ql_sched_set_draft(g.s, g.seq, d, 0), 0);
    assert_int_equal(ql_sched_schedule(g.s, &st), 0);
    assert_int_equal(st.items[0].n_tokens, 1);
    assert_int_equal(st.items[0].n_draft, 0);
    assert_int_equal(ql_sched_step_done(g.s), 0);
    assert_int_equal(ql_kv_check(g.kv), 0);
    rig_free(&g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ngram),
        cmocka_unit_test(test_verify_distribution),
        cmocka_unit_test(test_verify_greedy),
        cmocka_unit_test(test_plan),
        cmocka_unit_test(test_rollback),
        cmocka_unit_test(test_draft_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
