/*
 * tests/unit/scheduler/test-scheduler.c — the scheduling policy (scheduler/scheduler.h), driven
 * step by step on one thread against the paged fake backend (fake-backend.h), whose outputs are
 * a pure function of each sequence's history as read back through its block table. The expected
 * greedy output of every request is computed independently from that function, so any fault of
 * paging, copy-on-write, prefix reuse, preemption or recompute shows up as a wrong token.
 *
 * Every step is checked: the token budget and max_num_seqs, the batch contract
 * (ql_batch_validate), items that start where the KV ends, logits rows exactly at the ends of
 * sequences, every running sequence served while the budget lasts, and the block manager's
 * invariants (ql_kv_check).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/core.h"
#include "fake-backend.h"
#include "scheduler/kv-cache.h"
#include "scheduler/scheduler.h"

#define V 1000       /* vocabulary */
#define EOS (V - 1)
#define MAXP 256     /* prompt tokens at most in these tests */
#define MAXO 64      /* output tokens at most */
#define MAXR 128     /* requests per harness */

/* ---- a single-threaded mini engine ---- */

typedef struct hreq_s {
    int32_t prompt[MAXP];
    int32_t n_prompt, max_tokens, priority;
    int32_t seq;             /* current scheduler id; -1 before add and after the end */
    int32_t out[MAXO];
    int32_t n_out;
    int32_t done;
    int32_t n_cached_prompt;
    int32_t admit_rank;      /* order of first admission, -1 before */
} hreq_t;

typedef struct harness_s {
    fake_be_t *fb;
    ql_kv_t *kv;
    ql_sched_t *s;
    float *logits;
    int32_t max_num_seqs, budget, max_model_len;
    hreq_t req[MAXR];
    int32_t n_req;
    int32_t n_admitted_total;
    int64_t n_steps;
    uint64_t n_preempted_seen;
} harness_t;

static harness_t *h_new(int32_t n_blocks, int32_t bs, int32_t max_num_seqs, int32_t budget,
                        int32_t max_model_len, int prefix) {
    harness_t *h = calloc(1, sizeof(*h));
    assert_non_null(h);
    h->fb = fake_be_new(V, n_blocks, bs, budget, max_num_seqs, max_model_len);
    h->fb->eos = EOS;
    h->fb->eos_mod = 16;
    h->fb->hi = V - 1;
    ql_kv_params_t kp = ql_kv_params_default();
    kp.n_blocks = n_blocks;
    kp.block_size = bs;
    kp.n_seq_max = max_num_seqs;
    kp.n_tokens_max = max_model_len;
    kp.prefix_cache = prefix;
    assert_int_equal(ql_kv_init(&kp, &h->kv), 0);
    ql_sched_params_t sp = {.max_num_seqs = max_num_seqs, .max_batched_tokens = budget,
                            .max_model_len = max_model_len};
    assert_int_equal(ql_sched_init(&sp, h->kv, &h->s), 0);
    h->logits = malloc((size_t)max_num_seqs * V * sizeof(float));
    assert_non_null(h->logits);
    h->max_num_seqs = max_num_seqs;
    h->budget = budget;
    h->max_model_len = max_model_len;
    return h;
}

static void h_free(harness_t *h) {
    ql_sched_free(h->s);
    assert_int_equal(ql_kv_check(h->kv), 0);
    ql_kv_free(h->kv);
    ql_backend_free(&h->fb->base);
    free(h->logits);
    free(h);
}

/* Adds request i (already filled) to the scheduler. */
static void h_add(harness_t *h, int32_t i) {
    hreq_t *r = &h->req[i];
    ql_sched_req_t sr = {.prompt = r->prompt, .n_prompt = r->n_prompt, .max_tokens = r->max_tokens,
                         .n_choices = 1, .priority = r->priority, .user = r};
    assert_int_equal(ql_sched_add(h->s, &sr, &r->seq), 0);
}

/* Fills request slot h->n_req with a prompt of n tokens drawn from `seed` and adds it. */
static int32_t h_submit(harness_t *h, int32_t n_prompt, int32_t max_tokens, int32_t priority, uint32_t seed) {
    int32_t i = h->n_req++;
    assert_true(i < MAXR && n_prompt <= MAXP && max_tokens <= MAXO);
    hreq_t *r = &h->req[i];
    memset(r, 0, sizeof(*r));
    r->n_prompt = n_prompt;
    r->max_tokens = max_tokens;
    r->priority = priority;
    r->admit_rank = -1;
    r->n_cached_prompt = -1;
    uint32_t x = seed * 2654435761u + 12345u;
    for (int32_t k = 0; k < n_prompt; k++) {
        x = x * 1103515245u + 12345u;
        r->prompt[k] = (int32_t)((x >> 8) % (V - 1));
    }
    h_add(h, i);
    return i;
}

/* The greedy output the fake backend defines for a prompt: independent of any scheduling. */
static int32_t ref_output(const fake_be_t *fb, const int32_t *prompt, int32_t n_prompt, int32_t max_tokens,
                          int32_t *out) {
    int32_t hist[MAXP + MAXO];
    memcpy(hist, prompt, (size_t)n_prompt * sizeof(int32_t));
    int32_t n = 0;
    while (n < max_tokens) {
        int32_t t = fake_next(fb, hist, n_prompt + n);
        hist[n_prompt + n] = t;
        out[n++] = t;
        if (t == EOS) break;
    }
    return n;
}

static void apply_copies(harness_t *h, const ql_sched_step_t *st) {
    for (int32_t i = 0; i < st->n_copies;) {
        int32_t len = ql_sched_copy_runs(st->copies + i, st->n_copies - i);
        int32_t src[64], dst[64];
        assert_true(len >= 1 && len <= 64);
        for (int32_t k = 0; k < len; k++) {
            src[k] = st->copies[i + k].src;
            dst[k] = st->copies[i + k].dst;
        }
        assert_int_equal(ql_backend_copy_blocks(&h->fb->base, src, dst, len), 0);
        i += len;
    }
}

/* Remaining tokens to feed for every running sequence, before a step. */
typedef struct pre_s {
    int32_t seq, remaining;
} pre_t;

/* One step with every check; the step is returned for extra assertions. */
static ql_sched_step_t h_step(harness_t *h) {
    /* what runs before the step */
    pre_t pre[256];
    int32_t n_pre = 0;
    for (int32_t i = 0; i < h->n_req; i++) {
        hreq_t *r = &h->req[i];
        if (r->done || r->seq < 0) continue;
        ql_sched_seq_info_t in;
        assert_int_equal(ql_sched_seq_info(h->s, r->seq, &in), 0);
        if (in.state == QL_SCHED_STATE_RUNNING) pre[n_pre++] = (pre_t){r->seq, in.n_tokens - in.n_computed};
    }
    ql_sched_step_t st;
    assert_int_equal(ql_sched_schedule(h->s, &st), 0);
    h->n_preempted_seen += (uint64_t)st.n_preempted;
    if (st.n_items == 0) return st;
    h->n_steps++;
    const ql_batch_t *b = &st.batch;
    assert_int_equal(b->n_seqs, st.n_items);
    assert_true(b->n_tokens <= h->budget);
    assert_true(b->n_seqs <= h->max_num_seqs);
    ql_sched_counts_t sc;
    ql_sched_get_counts(h->s, &sc);
    assert_true(sc.n_slots_used <= h->max_num_seqs);
    assert_true(sc.n_running <= h->max_num_seqs);
    char err[256];
    if (ql_batch_validate(b, ql_backend_info(&h->fb->base), err, sizeof err) != 0) fail_msg("batch: %s", err);
    int32_t t = 0, n_logits = 0;
    for (int32_t i = 0; i < st.n_items; i++) {
        const ql_sched_item_t *it = &st.items[i];
        ql_sched_seq_info_t in;
        assert_int_equal(ql_sched_seq_info(h->s, it->seq, &in), 0);
        assert_int_equal(in.state, QL_SCHED_STATE_RUNNING);
        assert_int_equal(in.n_computed, it->pos); /* starts where the KV ends */
        assert_true(it->n_tokens >= 1 && it->pos + it->n_tokens <= in.n_tokens);
        for (int32_t k = 0; k < it->n_tokens; k++, t++) {
            assert_int_equal(b->seq_of_token[t], i);
            assert_int_equal(b->pos[t], it->pos + k);
            assert_int_equal(b->tokens[t], in.tokens[it->pos + k]);
        }
        if (it->pos + it->n_tokens == in.n_tokens) {
            assert_int_equal(it->logits_row, n_logits);
            assert_int_equal(b->logits_rows[n_logits], t - 1);
            n_logits++;
        } else {
            assert_int_equal(it->logits_row, -1);
        }
    }
    assert_int_equal(t, b->n_tokens);
    assert_int_equal(n_logits, b->n_logits);
    /* every running sequence with something to feed is served while the budget lasts */
    if (st.n_preempted == 0 && b->n_tokens < h->budget) {
        for (int32_t k = 0; k < n_pre; k++) {
            if (pre[k].remaining == 0) continue;
            int found = 0;
            for (int32_t i = 0; i < st.n_items; i++) found |= st.items[i].seq == pre[k].seq;
            assert_true(found);
        }
    }
    for (int32_t i = 0; i < st.n_admitted; i++) {
        ql_sched_seq_info_t in;
        assert_int_equal(ql_sched_seq_info(h->s, st.admitted[i], &in), 0);
        hreq_t *r = in.user;
        if (r->admit_rank < 0) {
            r->admit_rank = h->n_admitted_total++;
            r->n_cached_prompt = in.n_cached_prompt;
        }
        assert_int_equal(in.n_cached_prompt, r->n_cached_prompt); /* kept across preemptions */
    }

    apply_copies(h, &st);
    assert_int_equal(ql_backend_forward(&h->fb->base, b, h->logits), 0);
    assert_int_equal(ql_sched_step_done(h->s), 0);
    for (int32_t i = 0; i < st.n_items; i++) {
        const ql_sched_item_t *it = &st.items[i];
        if (it->logits_row < 0) continue;
        ql_sched_seq_info_t in;
        assert_int_equal(ql_sched_seq_info(h->s, it->seq, &in), 0);
        hreq_t *r = in.user;
        int32_t tok = fake_argmax(h->logits + (size_t)it->logits_row * V, V);
        assert_int_equal(ql_sched_push_token(h->s, it->seq, tok), 0);
        r->out[r->n_out++] = tok;
        if (tok == EOS || r->n_out == r->max_tokens) {
            assert_int_equal(ql_sched_remove(h->s, r->seq), 0);
            r->seq = -1;
            r->done = 1;
        }
    }
    if (ql_kv_check(h->kv) != 0) fail_msg("kv invariants broken after step %lld", (long long)h->n_steps);
    return st;
}

static int h_all_done(const harness_t *h) {
    for (int32_t i = 0; i < h->n_req; i++)
        if (!h->req[i].done) return 0;
    return 1;
}

static void h_run(harness_t *h, int64_t max_steps) {
    for (int64_t k = 0; k < max_steps && !h_all_done(h); k++) h_step(h);
    assert_true(h_all_done(h));
}

static void h_assert_outputs(const harness_t *h) {
    for (int32_t i = 0; i < h->n_req; i++) {
        const hreq_t *r = &h->req[i];
        int32_t ref[MAXO];
        int32_t n = ref_output(h->fb, r->prompt, r->n_prompt, r->max_tokens, ref);
        if (n != r->n_out || memcmp(ref, r->out, (size_t)n * sizeof(int32_t)) != 0) {
            int32_t k = 0;
            while (k < n && k < r->n_out && ref[k] == r->out[k]) k++;
            fail_msg("request %d: %d tokens, expected %d (first difference at %d)", (int)i, (int)r->n_out,
                     (int)n, (int)k);
        }
    }
}

static void h_assert_empty(const harness_t *h) {
    ql_kv_stats_t ks;
    ql_kv_get_stats(h->kv, &ks);
    assert_int_equal(ks.n_blocks_used, 0);
    assert_int_equal(ks.n_seqs, 0);
    assert_int_equal(ks.n_blocks_free + ks.n_blocks_cached, ks.n_blocks);
    ql_sched_counts_t sc;
    ql_sched_get_counts(h->s, &sc);
    assert_int_equal(sc.n_running, 0);
    assert_int_equal(sc.n_waiting, 0);
    assert_int_equal(sc.n_slots_used, 0);
    assert_int_equal(ql_kv_check(h->kv), 0);
}

/* ---- tests ---- */

static void test_params_and_fit(void **state) {
    (void)state;
    ql_kv_params_t kp = ql_kv_params_default();
    kp.n_blocks = 8;
    kp.block_size = 4;
    kp.n_seq_max = 4;
    kp.n_tokens_max = 64;
    ql_kv_t *kv = NULL;
    assert_int_equal(ql_kv_init(&kp, &kv), 0);
    ql_sched_t *s = NULL;
    ql_sched_params_t p = ql_sched_params_default();
    assert_int_equal(ql_sched_init(&p, kv, &s), QL_EINVAL); /* max_model_len required */
    p.max_model_len = 64;
    p.max_num_seqs = 4;
    p.max_batched_tokens = 3; /* < max_num_seqs */
    assert_int_equal(ql_sched_init(&p, kv, &s), QL_EINVAL);
    p.max_batched_tokens = 16;
    p.max_model_len = 65; /* wider than the tables */
    assert_int_equal(ql_sched_init(&p, kv, &s), QL_EINVAL);
    p.max_model_len = 64;
    assert_int_equal(ql_sched_init(NULL, kv, &s), QL_EINVAL);
    assert_int_equal(ql_sched_init(&p, kv, &s), 0);

    int32_t prompt[64] = {0};
    ql_sched_req_t r = {.prompt = prompt, .n_prompt = 10, .max_tokens = 20, .n_choices = 1};
    assert_int_equal(ql_sched_check_fit(s, &r), 0);  /* 29 KV tokens <= 32 */
    r.max_tokens = 23;                                /* 32 KV tokens: exactly the pool */
    assert_int_equal(ql_sched_check_fit(s, &r), 0);
    r.max_tokens = 24;                                /* 33: more blocks than the pool */
    assert_int_equal(ql_sched_check_fit(s, &r), QL_ENOSPC);
    r.max_tokens = 55;                                /* 65 > max_model_len */
    assert_int_equal(ql_sched_check_fit(s, &r), QL_ERANGE);
    r.max_tokens = 5;
    r.n_choices = 5;                                  /* > max_num_seqs */
    assert_int_equal(ql_sched_check_fit(s, &r), QL_EINVAL);
    r.n_choices = 1;
    r.n_prompt = 0;
    assert_int_equal(ql_sched_check_fit(s, &r), QL_EINVAL);
    r.n_prompt = 10;
    r.max_tokens = 0;
    assert_int_equal(ql_sched_check_fit(s, &r), QL_EINVAL);
    /* add refuses with the same codes and queues nothing */
    int32_t id = -1;
    r.max_tokens = 24;
    assert_int_equal(ql_sched_add(s, &r, &id), QL_ENOSPC);
    r.max_tokens = 55;
    assert_int_equal(ql_sched_add(s, &r, &id), QL_ERANGE);
    ql_sched_counts_t c;
    ql_sched_get_counts(s, &c);
    assert_int_equal(c.n_waiting, 0);
    /* nothing to do: an empty step, nothing pending */
    ql_sched_step_t st;
    assert_int_equal(ql_sched_schedule(s, &st), 0);
    assert_int_equal(st.n_items, 0);
    assert_int_equal(ql_sched_step_done(s), QL_ESTATE);
    ql_sched_free(s);
    ql_kv_free(kv);
}

/* A 100-token prompt with a 32-token budget: chunks 32, 32, 32, 4 and logits on the last only;
 * a request arriving meanwhile waits for the chunks, then shares the budget with the decode. */
static void test_chunked_prefill(void **state) {
    (void)state;
    harness_t *h = h_new(64, 16, 4, 32, 512, 1);
    int32_t a = h_submit(h, 100, 8, 0, 1);
    h->fb->eos = -1; /* no early EOS: the schedule below is exact */
    int32_t want[4][2] = {{0, 32}, {32, 32}, {64, 32}, {96, 4}};
    for (int k = 0; k < 4; k++) {
        if (k == 1) h_submit(h, 10, 4, 0, 2); /* arrives while A is in its prefill */
        ql_sched_step_t st = h_step(h);
        if (k < 3) {
            assert_int_equal(st.n_items, 1); /* A's chunk takes the whole budget: B waits */
            assert_int_equal(st.items[0].pos, want[k][0]);
            assert_int_equal(st.items[0].n_tokens, want[k][1]);
            assert_int_equal(st.items[0].logits_row, -1);
            assert_int_equal(st.batch.n_logits, 0);
            assert_int_equal(st.n_prefill_tokens, 32);
        } else {
            /* A's last chunk (logits), then B admitted with what is left: 28 >= 10 */
            assert_int_equal(st.n_items, 2);
            assert_int_equal(st.items[0].seq, h->req[a].seq >= 0 ? h->req[a].seq : st.items[0].seq);
            assert_int_equal(st.items[0].pos, 96);
            assert_int_equal(st.items[0].n_tokens, 4);
            assert_int_equal(st.items[0].logits_row, 0);
            assert_int_equal(st.items[1].pos, 0);
            assert_int_equal(st.items[1].n_tokens, 10);
            assert_int_equal(st.items[1].logits_row, 1);
            assert_int_equal(st.n_admitted, 1);
        }
    }
    /* now both decode: one token each */
    ql_sched_step_t st = h_step(h);
    assert_int_equal(st.n_items, 2);
    assert_int_equal(st.batch.n_tokens, 2);
    assert_int_equal(st.n_decode_tokens, 2);
    h_run(h, 100);
    h_assert_outputs(h);
    h_assert_empty(h);
    h_free(h);
}

/* One seat: requests run one at a time in (priority, arrival) order. */
static void test_fcfs_and_priority(void **state) {
    (void)state;
    harness_t *h = h_new(64, 16, 1, 64, 512, 0);
    int32_t prio[6] = {0, 0, -1, 0, 5, -1};
    for (int i = 0; i < 6; i++) h_submit(h, 5 + i, 2, prio[i], 100 + (uint32_t)i);
    h_run(h, 100);
    /* expected: priority -1 first (2, then 5), then 0 in arrival order (0, 1, 3), then 5 (4) */
    int32_t expect[6] = {2, 5, 0, 1, 3, 4};
    for (int k = 0; k < 6; k++) assert_int_equal(h->req[expect[k]].admit_rank, k);
    h_assert_outputs(h);
    h_free(h);

    /* a later arrival with a better priority overtakes the queue but not a running request */
    h = h_new(64, 16, 1, 64, 512, 0);
    h_submit(h, 20, 4, 3, 1);
    h_step(h); /* request 0 runs */
    h_submit(h, 20, 4, 3, 2);
    h_submit(h, 20, 4, 0, 3);
    h_run(h, 100);
    assert_int_equal(h->req[0].admit_rank, 0);
    assert_int_equal(h->req[2].admit_rank, 1);
    assert_int_equal(h->req[1].admit_rank, 2);
    h_free(h);
}

/* Random arrivals with a mix of prompt lengths: every step checked, outputs exact. */
static void run_random(int32_t n_blocks, int32_t bs, int32_t max_num_seqs, int32_t budget, int prefix,
                       uint32_t seed, int expect_preemptions) {
    harness_t *h = h_new(n_blocks, bs, max_num_seqs, budget, 512, prefix);
    uint32_t x = seed;
    int32_t n_total = 60;
    int32_t pool_tokens = n_blocks * bs;
    for (int64_t k = 0; k < 20000 && !(h->n_req == n_total && h_all_done(h)); k++) {
        x = x * 1103515245u + 12345u;
        int n_new = (int)((x >> 16) % 3);
        for (int j = 0; j < n_new && h->n_req < n_total; j++) {
            x = x * 1103515245u + 12345u;
            int32_t np = 1 + (int32_t)((x >> 8) % 120);
            int32_t mt = 1 + (int32_t)((x >> 20) % 40);
            if (np + mt - 1 > pool_tokens) np = pool_tokens - mt + 1;
            /* some prompts share a prefix with an earlier one */
            int32_t i = h_submit(h, np, mt, (int32_t)((x >> 28) % 2), x);
            if ((x >> 4) % 3 == 0 && i > 0) {
                hreq_t *r = &h->req[i], *o = &h->req[(x >> 10) % (uint32_t)i];
                int32_t share = QL_MIN(o->n_prompt, r->n_prompt - 1);
                assert_int_equal(ql_sched_remove(h->s, r->seq), 0);
                memcpy(r->prompt, o->prompt, (size_t)share * sizeof(int32_t));
                h_add(h, i);
            }
        }
        h_step(h);
    }
    assert_int_equal(h->n_req, n_total);
    h_run(h, 20000);
    h_assert_outputs(h);
    h_assert_empty(h);
    if (expect_preemptions) assert_true(h->n_preempted_seen > 0);
    ql_kv_stats_t ks;
    ql_kv_get_stats(h->kv, &ks);
    printf("    pool %d x %d, prefix %s: %lld steps, %llu preemptions, %llu copies, %llu/%llu prompt "
           "tokens from the cache\n",
           (int)n_blocks, (int)bs, prefix ? "on" : "off", (long long)h->n_steps,
           (unsigned long long)h->n_preempted_seen, (unsigned long long)ks.n_copies,
           (unsigned long long)ks.prefix_hits_tokens, (unsigned long long)ks.prefix_queries_tokens);
    ql_sched_counts_t sc;
    ql_sched_get_counts(h->s, &sc);
    assert_int_equal(sc.n_preemptions, h->n_preempted_seen);
    h_free(h);
}

static void test_random_big_pool(void **state) {
    (void)state;
    run_random(512, 16, 8, 64, 1, 7, 0);
    run_random(512, 16, 8, 64, 0, 8, 0);
}

/* A pool a few sequences wide: preemption storms, every request completes with the output it
 * has alone (so recompute is exact), nothing leaks. */
static void test_preemption_tiny_pool(void **state) {
    (void)state;
    run_random(12, 16, 8, 64, 1, 11, 1);
    run_random(12, 16, 8, 64, 0, 12, 1);
    run_random(40, 4, 6, 24, 1, 13, 1);
    run_random(40, 4, 6, 24, 0, 14, 1);
}

/* The victim is the running sequence admitted last (or with the highest priority value), it
 * goes back to the front of the queue, and nothing is admitted in a step that preempted. */
static void test_preemption_victim(void **state) {
    (void)state;
    harness_t *h = h_new(6, 4, 4, 64, 64, 0);
    h->fb->eos = -1;
    int32_t a = h_submit(h, 8, 17, 0, 1), b = h_submit(h, 8, 17, 0, 2), c = h_submit(h, 8, 17, 0, 3);
    ql_sched_step_t st = h_step(h); /* all three prompts: 6 blocks, the whole pool */
    assert_int_equal(st.n_admitted, 3);
    int32_t d = h_submit(h, 3, 2, 0, 4); /* waits behind the preempted one */
    int32_t c_seq = h->req[c].seq;
    st = h_step(h); /* A needs block 3 for position 8: C (admitted last) goes */
    assert_int_equal(st.n_preempted, 1);
    assert_int_equal(st.preempted[0], c_seq);
    assert_int_equal(st.n_admitted, 0);
    ql_sched_seq_info_t in;
    assert_int_equal(ql_sched_seq_info(h->s, c_seq, &in), 0);
    assert_int_equal(in.state, QL_SCHED_STATE_WAITING);
    assert_int_equal(in.n_preemptions, 1);
    assert_int_equal(in.n_tokens, 9); /* prompt + its first token: all recomputed */
    (void)a;
    (void)b;
    h_run(h, 1000);
    /* C is readmitted before D, which arrived after it */
    assert_true(h->req[c].admit_rank < h->req[d].admit_rank);
    h_assert_outputs(h);
    h_assert_empty(h);
    h_free(h);

    /* with priorities the victim is the worst priority, even if admitted first */
    h = h_new(6, 4, 4, 64, 64, 0);
    h->fb->eos = -1;
    int32_t lo = h_submit(h, 8, 17, 5, 1);
    h_submit(h, 8, 17, 0, 2);
    h_submit(h, 8, 17, 0, 3);
    h_step(h);
    int32_t lo_seq = h->req[lo].seq;
    st = h_step(h);
    assert_int_equal(st.n_preempted, 1);
    assert_int_equal(st.preempted[0], lo_seq);
    h_run(h, 1000);
    h_assert_outputs(h);
    h_free(h);
}

/* Prefix-cache hits become cached prompt tokens and skip their compute. */
static void test_prefix_hits(void **state) {
    (void)state;
    harness_t *h = h_new(64, 16, 4, 256, 512, 1);
    h->fb->eos = -1;
    int32_t a = h_submit(h, 64, 4, 0, 1);
    h_run(h, 100);
    assert_int_equal(h->req[a].n_cached_prompt, 0);
    /* B shares A's first 48 tokens; C is A's prompt again */
    int32_t b = h->n_req++;
    hreq_t *rb = &h->req[b];
    memset(rb, 0, sizeof(*rb));
    memcpy(rb->prompt, h->req[a].prompt, 48 * sizeof(int32_t));
    for (int k = 48; k < 70; k++) rb->prompt[k] = 7 + k;
    rb->n_prompt = 70;
    rb->max_tokens = 4;
    rb->admit_rank = -1;
    h_add(h, b);
    ql_sched_step_t st = h_step(h);
    assert_int_equal(st.n_items, 1);
    assert_int_equal(st.items[0].pos, 48); /* the cached blocks are not fed */
    assert_int_equal(st.items[0].n_tokens, 22);
    assert_int_equal(rb->n_cached_prompt, 48);
    int32_t c = h->n_req++;
    h->req[c] = h->req[a];
    h->req[c].n_out = 0;
    h->req[c].done = 0;
    h->req[c].admit_rank = -1;
    h_add(h, c);
    h_run(h, 100);
    /* NOTE(last-block): a 64-token prompt reuses floor(63 / 16) = 3 blocks */
    assert_int_equal(h->req[c].n_cached_prompt, 48);
    h_assert_outputs(h);
    h_free(h);
}

/* Removing sequences at every stage (waiting, mid-prefill, decoding, inside a pending step)
 * frees all they held. */
static void test_remove_frees_everything(void **state) {
    (void)state;
    harness_t *h = h_new(64, 4, 4, 16, 256, 1);
    h->fb->eos = -1;
    int32_t a = h_submit(h, 40, 30, 0, 1); /* long prefill: 16-token chunks */
    int32_t b = h_submit(h, 5, 30, 0, 2);
    int32_t c = h_submit(h, 5, 30, 0, 3);
    h_step(h);
    h_step(h); /* A mid-prefill, B and C waiting */
    ql_sched_seq_info_t in;
    assert_int_equal(ql_sched_seq_info(h->s, h->req[a].seq, &in), 0);
    assert_true(in.n_computed > 0 && in.n_computed < 40);
    assert_int_equal(ql_sched_seq_info(h->s, h->req[c].seq, &in), 0);
    assert_int_equal(in.state, QL_SCHED_STATE_WAITING);
    assert_int_equal(ql_sched_remove(h->s, h->req[c].seq), 0); /* waiting */
    h->req[c].seq = -1;
    h->req[c].done = 1;
    assert_int_equal(ql_sched_remove(h->s, h->req[a].seq), 0); /* mid-prefill */
    h->req[a].seq = -1;
    h->req[a].done = 1;
    assert_int_equal(ql_kv_check(h->kv), 0);
    for (int k = 0; k < 3; k++) h_step(h); /* B decodes */
    /* inside a pending step: scheduled, then removed before step_done */
    ql_sched_step_t st;
    assert_int_equal(ql_sched_schedule(h->s, &st), 0);
    assert_int_equal(st.n_items, 1);
    int32_t dummy = -1;
    ql_sched_req_t sr = {.prompt = h->req[b].prompt, .n_prompt = 3, .max_tokens = 2, .n_choices = 1};
    assert_int_equal(ql_sched_add(h->s, &sr, &dummy), QL_ESTATE); /* no add while pending */
    assert_int_equal(ql_sched_schedule(h->s, &st), QL_ESTATE);
    assert_int_equal(ql_sched_remove(h->s, h->req[b].seq), 0);
    h->req[b].seq = -1;
    h->req[b].done = 1;
    assert_int_equal(ql_sched_step_done(h->s), 0); /* skips the removed item */
    h_assert_empty(h);
    assert_int_equal(ql_sched_remove(h->s, 0), QL_EINVAL);
    h_free(h);
}

/* n > 1: one prefill, then forks share the prompt's blocks; the last block is partial, so the
 * choices' first decodes copy it (copy-on-write). Each choice's continuation must equal a fresh
 * run of prompt + its first token. */
static void test_fork_copy_on_write(void **state) {
    (void)state;
    harness_t *h = h_new(64, 4, 4, 64, 256, 1);
    h->fb->eos = -1;
    int32_t prompt[10];
    for (int k = 0; k < 10; k++) prompt[k] = 50 + 3 * k;
    int32_t seqs[3], outs[3][16], n_out[3] = {0, 0, 0};
    ql_sched_req_t sr = {.prompt = prompt, .n_prompt = 10, .max_tokens = 12, .n_choices = 3};
    assert_int_equal(ql_sched_add(h->s, &sr, &seqs[0]), 0);
    int32_t other = -1;
    ql_sched_req_t so = {.prompt = prompt, .n_prompt = 6, .max_tokens = 3, .n_choices = 2};
    assert_int_equal(ql_sched_add(h->s, &so, &other), 0); /* needs 2 seats: waits */
    int done = 0, forked = 0;
    for (int step = 0; step < 100 && !done; step++) {
        ql_sched_step_t st;
        assert_int_equal(ql_sched_schedule(h->s, &st), 0);
        if (st.n_items == 0) break;
        ql_sched_counts_t sc;
        ql_sched_get_counts(h->s, &sc);
        assert_true(sc.n_slots_used <= 4);
        apply_copies(h, &st);
        assert_int_equal(ql_backend_forward(&h->fb->base, &st.batch, h->logits), 0);
        assert_int_equal(ql_sched_step_done(h->s), 0);
        for (int32_t i = 0; i < st.n_items; i++) {
            const ql_sched_item_t *it = &st.items[i];
            if (it->logits_row < 0) continue;
            const float *row = h->logits + (size_t)it->logits_row * V;
            if (it->seq == other) {
                ql_sched_seq_info_t in;
                assert_int_equal(ql_sched_seq_info(h->s, other, &in), 0);
                assert_int_equal(ql_sched_remove(h->s, other), 0); /* drops its fork too */
                other = -1;
                continue;
            }
            int32_t g = fake_argmax(row, V);
            if (!forked && it->seq == seqs[0]) {
                /* fork before the first token; the children read the same row */
                ql_sched_seq_info_t in;
                assert_int_equal(ql_sched_seq_info(h->s, seqs[0], &in), 0);
                assert_int_equal(in.n_forks_pending, 2);
                assert_int_equal(ql_sched_fork(h->s, seqs[0], NULL, &seqs[1]), 0);
                assert_int_equal(ql_sched_fork(h->s, seqs[0], NULL, &seqs[2]), 0);
                assert_int_equal(ql_sched_fork(h->s, seqs[0], NULL, &other), QL_ESTATE); /* none left */
                for (int j = 0; j < 3; j++) {
                    int32_t tok = (g + j) % (V - 1);
                    assert_int_equal(ql_sched_push_token(h->s, seqs[j], tok), 0);
                    outs[j][n_out[j]++] = tok;
                }
                forked = 1;
                continue;
            }
            for (int j = 0; j < 3; j++) {
                if (it->seq != seqs[j]) continue;
                assert_int_equal(ql_sched_push_token(h->s, seqs[j], g), 0);
                outs[j][n_out[j]++] = g;
                if (n_out[j] == 12) {
                    assert_int_equal(ql_sched_remove(h->s, seqs[j]), 0);
                    seqs[j] = -1;
                }
            }
        }
        assert_int_equal(ql_kv_check(h->kv), 0);
        done = seqs[0] < 0 && seqs[1] < 0 && seqs[2] < 0;
    }
    assert_true(done);
    assert_true(h->fb->n_copies >= 2); /* two of the three writers copied the shared block */
    for (int j = 0; j < 3; j++) {
        int32_t p2[11], ref[16];
        memcpy(p2, prompt, sizeof(prompt));
        p2[10] = outs[j][0];
        int32_t n = ref_output(h->fb, p2, 11, 11, ref);
        assert_int_equal(n, 11);
        assert_memory_equal(ref, outs[j] + 1, 11 * sizeof(int32_t));
    }
    if (other >= 0) assert_int_equal(ql_sched_remove(h->s, other), 0);
    h_assert_empty(h);
    h_free(h);
}

static void test_copy_runs(void **state) {
    (void)state;
    ql_kv_copy_t c[4] = {{1, 2}, {3, 4}, {5, 1}, {6, 7}};
    assert_int_equal(ql_sched_copy_runs(c, 0), 0);
    assert_int_equal(ql_sched_copy_runs(c, 4), 2);     /* {5 -> 1} writes what {1 -> 2} reads */
    assert_int_equal(ql_sched_copy_runs(c + 2, 2), 2);
    ql_kv_copy_t d[3] = {{1, 2}, {2, 3}, {4, 5}};       /* reads what an earlier one wrote */
    assert_int_equal(ql_sched_copy_runs(d, 3), 1);
    ql_kv_copy_t e[2] = {{1, 2}, {3, 2}};               /* two writes of one block */
    assert_int_equal(ql_sched_copy_runs(e, 2), 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_params_and_fit),
        cmocka_unit_test(test_chunked_prefill),
        cmocka_unit_test(test_fcfs_and_priority),
        cmocka_unit_test(test_random_big_pool),
        cmocka_unit_test(test_preemption_tiny_pool),
        cmocka_unit_test(test_preemption_victim),
        cmocka_unit_test(test_prefix_hits),
        cmocka_unit_test(test_remove_frees_everything),
        cmocka_unit_test(test_fork_copy_on_write),
        cmocka_unit_test(test_copy_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
