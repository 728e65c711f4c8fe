/*
 * scheduler/engine.c — the engine thread (see engine.h): inbox, one step at a time over the
 * scheduler and the backend, sampling, stop conditions, detokenization, output events.
 *
 * Locking: `mu` guards the inbox, the cancel list, the shutdown/accepting/healthy flags and the
 * published counters. Everything else (the live list, the scheduler, the block manager, the
 * backend, every request after it left the inbox) belongs to the engine thread, which never holds
 * `mu` while it computes or calls a callback.
 */
#define QL_LOG_MODULE "engine"
#include "scheduler/engine.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scheduler/detok.h"
#include "scheduler/kv-cache.h"
#include "scheduler/scheduler.h"
#include "scheduler/spec.h"

/* ---- requests ---- */

typedef struct ereq_s ereq_t;

typedef struct choice_s {
    ereq_t *req;
    int32_t index;
    int32_t seq;           /* scheduler sequence; -1 before the fork and after the end */
    ql_sampler_t sampler;  /* params.logit_bias = the request's biases, then its bans */
    int32_t bans_on;       /* the min_tokens bans are in params.n_logit_bias */
    ql_detok_t detok;
    ql_stop_t stop;
    int32_t n_generated;
    float spec_alpha;      /* measured acceptance of this choice's drafts (NOTE(spec)) */
    int32_t spec_n_seen;   /* drafted tokens whose outcome spec_alpha has taken in */
    int32_t spec_cand;     /* its index among this step's drafting choices (layerskip: its q
                              rows), -1 when it drafts nothing */
    int32_t dseq;          /* draft model: its sequence in the draft's block manager, or -1 */
    int32_t d_valid;       /* draft model: positions of that sequence whose KV holds known
                              tokens (the rest are drafts not yet verified) */
} choice_t;

struct ereq_s {
    ql_arena_t arena;       /* everything below that points somewhere lives in it */
    uint64_t handle;
    char *id;
    int32_t *prompt;
    int32_t n_prompt;
    int32_t max_tokens;     /* resolved: >= 1 */
    int32_t min_tokens;
    int32_t ignore_eos;
    int32_t priority;
    int32_t spec_k;         /* drafts per step at most for this request; 0: none */
    ql_sampling_params_t sampling;
    int32_t n_bias_user;    /* logit_bias[0, n_bias_user) the client's, then the bans */
    int32_t n_bias_all;
    ql_stop_str_t *stops;
    int32_t n_stops;
    int32_t *stop_ids;
    int32_t n_stop_ids;
    choice_t *choices;      /* [n_choices] */
    int32_t n_choices;
    int32_t n_live;         /* choices not ended */
    ql_finish_reason_t *reasons; /* [n_choices] */
    ql_engine_event_fn cb;
    void *ud;
    ql_engine_stats_t stats;
    int32_t admitted_once;
    int32_t done;           /* final event sent: freed after the current pass */
    ereq_t *next, *prev;    /* inbox (next only), live list, graveyard (next only) */
};

typedef struct cancel_s {
    struct cancel_s *next;
    uint64_t handle; /* 0: by id */
    char *id;
} cancel_t;

enum { SHUTDOWN_NONE = 0, SHUTDOWN_DRAIN = 1, SHUTDOWN_ABORT = 2 };

struct ql_engine_s {
    ql_backend_t *be;
    const ql_tok_t *tok;
    ql_engine_limits_t lim;
    ql_kv_t *kv;
    ql_sched_t *sched;
    ql_sampler_ws_t *ws;
    float *logits;           /* [max_num_seqs][n_vocab] */
    int32_t *eog;            /* [n_eog] end-of-generation ids inside the vocabulary */
    int32_t n_eog;
    int32_t *copy_src, *copy_dst; /* [max_num_seqs] */
    choice_t **item_choice;  /* [max_num_seqs] */
    int32_t max_logits_rows; /* rows of `logits` */

    /* speculative decoding (engine thread only) */
    int32_t spec_method, spec_k, spec_ngram_min, spec_ngram_max, spec_layers, spec_fixed_k;
    ql_spec_cost_t spec_cost;
    float spec_alpha_all;    /* acceptance over every choice, the prior of a new one */
    int32_t last_prefill_tokens;
    float *spec_p, *spec_r;  /* [n_vocab] verify scratch */
    int32_t *spec_buf;       /* [max_num_seqs][QL_SPEC_K_MAX] proposals */
    choice_t **spec_cand;    /* [max_num_seqs] */
    float *spec_alphas;      /* [max_num_seqs] */
    int32_t *spec_kmax, *spec_kplan; /* [max_num_seqs] */
    uint64_t spec_n_drafts, spec_n_draft_tokens, spec_n_accepted;
    /* layerskip (NOTE(layerskip)) */
    int32_t ls_per;          /* scratch blocks per drafting choice */
    int32_t ls_scratch0;     /* first scratch block id: [ls_scratch0, + max_num_seqs·ls_per) */
    int32_t ls_tbl_w;        /* entries of one draft block table */
    int32_t *ls_tables;      /* [max_num_seqs][ls_tbl_w] */
    const int32_t **ls_tptr; /* [max_num_seqs] */
    int32_t *ls_tokens, *ls_pos, *ls_seq, *ls_nblocks, *ls_seqlen, *ls_rows; /* [max_num_seqs] */
    int32_t *ls_base;        /* [max_num_seqs] the choice's known tokens when drafting began */
    int32_t *ls_cnb;         /* [max_num_seqs] entries of the choice's draft block table */
    int32_t n_layer;         /* the backend's layers */
    /* draft model (NOTE(draft-model)) */
    ql_backend_t *dbe;
    ql_kv_t *dkv;            /* the draft's block manager, over dbe's pool */
    double spec_draft_frac;  /* a drafted token's forward cost relative to the target's */
    int32_t d_batch_max;     /* tokens per draft forward */
    int32_t *d_tokens, *d_pos, *d_seq; /* [d_batch_max] */
    int32_t *d_rowof;        /* [max_num_seqs] the logits row of each drafting choice, or -1 */
    float *spec_q;           /* [max_num_seqs][spec_k][n_vocab] draft distributions */
    char *text;              /* the event text being built */
    size_t text_len, text_cap;

    /* engine thread only */
    ereq_t *live_head, *live_tail;
    ereq_t *graveyard;
    int32_t healthy_local;
    int fail_status;          /* once unhealthy: the status requests still in the inbox get */
    char fail_msg[160];
    uint64_t n_prompt_tokens, n_generation_tokens, n_steps;
    uint64_t n_finished, n_failed, n_cancelled;

    /* under mu */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ereq_t *inbox_head, *inbox_tail;
    int32_t n_inbox;
    cancel_t *cancels;
    int shutdown;
    int accepting;
    int healthy;
    int stopped;
    char unhealthy_msg[160];
    uint64_t next_handle;
    ql_engine_counters_t counters;

    pthread_t thread;
    int thread_started;
};

static void req_free(ereq_t *r) {
    if (!r) return;
    for (int32_t i = 0; i < r->n_choices && r->choices; i++) {
        ql_detok_free(&r->choices[i].detok);
        ql_stop_free(&r->choices[i].stop);
    }
    ql_arena_clear(&r->arena);
    free(r);
}

/* ---- defaults ---- */

ql_engine_request_t ql_engine_request_default(void) {
    ql_engine_request_t r;
    memset(&r, 0, sizeof(r));
    r.sampling = ql_sampling_params_default();
    r.n = 1;
    return r;
}

/* ---- events ---- */

static void text_reset(ql_engine_t *e) { e->text_len = 0; }

static void text_add(ql_engine_t *e, const char *s, size_t n) {
    if (n == 0) return;
    if (e->text_len + n > e->text_cap) {
        size_t cap = e->text_cap ? e->text_cap : 256;
        while (cap < e->text_len + n) cap *= 2;
        e->text = ql_xrealloc(e->text, cap);
        e->text_cap = cap;
    }
    memcpy(e->text + e->text_len, s, n);
    e->text_len += n;
}

static void event_init(ql_engine_event_t *ev, const ereq_t *r, ql_engine_event_kind_t kind) {
    memset(ev, 0, sizeof(*ev));
    ev->kind = kind;
    ev->handle = r->handle;
    ev->request_id = r->id;
    ev->user_data = r->ud;
}

static void live_unlink(ql_engine_t *e, ereq_t *r) {
    if (r->prev) r->prev->next = r->next;
    else e->live_head = r->next;
    if (r->next) r->next->prev = r->prev;
    else e->live_tail = r->prev;
    r->next = r->prev = NULL;
}

/* Drops every sequence the request holds and moves it to the graveyard (freed after the pass
 * that ended it, so that pointers taken earlier in the pass stay valid). */
/* A choice ended: its draft model sequence goes too. */
static void draft_close(ql_engine_t *e, choice_t *c) {
    if (c->dseq < 0) return;
    int rc = ql_kv_seq_close(e->dkv, c->dseq);
    QL_ASSERT(rc == 0);
    c->dseq = -1;
    c->d_valid = 0;
}

static void req_retire(ql_engine_t *e, ereq_t *r) {
    for (int32_t i = 0; i < r->n_choices; i++) {
        choice_t *c = &r->choices[i];
        draft_close(e, c);
        if (c->seq >= 0) {
            int rc = ql_sched_remove(e->sched, c->seq);
            QL_ASSERT(rc == 0);
            c->seq = -1;
        }
    }
    r->done = 1;
    live_unlink(e, r);
    r->next = e->graveyard;
    e->graveyard = r;
}

static void bury(ql_engine_t *e) {
    while (e->graveyard) {
        ereq_t *r = e->graveyard;
        e->graveyard = r->next;
        req_free(r);
    }
}

/* The final ERROR event. */
static void req_fail(ql_engine_t *e, ereq_t *r, int status, const char *fmt, ...) QL_PRINTF(4, 5);
static void req_fail(ql_engine_t *e, ereq_t *r, int status, const char *fmt, ...) {
    if (r->done) return;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    req_retire(e, r);
    r->stats.t_finish_ns = ql_time_ns();
    if (status == QL_ECANCELED) e->n_cancelled++;
    else e->n_failed++;
    if (status == QL_ECANCELED) QL_RLOG_DEBUG(r->id, "ends: %s", msg);
    else QL_RLOG_WARN(r->id, "fails: %s (%s)", msg, ql_strerror(status));
    ql_engine_event_t ev;
    event_init(&ev, r, QL_ENGINE_EVENT_ERROR);
    ev.stats = r->stats;
    ev.status = status;
    ev.message = msg;
    r->cb(&ev, r->ud);
}

/* The final FINISHED event. */
static void req_finish(ql_engine_t *e, ereq_t *r) {
    req_retire(e, r);
    r->stats.t_finish_ns = ql_time_ns();
    e->n_finished++;
    ql_engine_event_t ev;
    event_init(&ev, r, QL_ENGINE_EVENT_FINISHED);
    ev.n_choices = r->n_choices;
    ev.finish_reasons = r->reasons;
    ev.stats = r->stats;
    r->cb(&ev, r->ud);
}

static void fail_all(ql_engine_t *e, int status, const char *msg) {
    while (e->live_head) req_fail(e, e->live_head, status, "%s", msg);
}

/* ---- counters ---- */

/* Publishes the engine thread's view. note: call only with mu held. */
static void publish_locked(ql_engine_t *e) {
    ql_sched_counts_t sc;
    ql_kv_stats_t ks;
    ql_sched_get_counts(e->sched, &sc);
    ql_kv_get_stats(e->kv, &ks);
    ql_engine_counters_t *c = &e->counters;
    c->n_running = sc.n_running;
    c->n_waiting = sc.n_waiting + e->n_inbox;
    c->kv_blocks_total = ks.n_blocks;
    c->kv_blocks_used = ks.n_blocks_used;
    c->kv_blocks_cached = ks.n_blocks_cached;
    c->prefix_queries_tokens = ks.prefix_queries_tokens;
    c->prefix_hits_tokens = ks.prefix_hits_tokens;
    c->n_preemptions = sc.n_preemptions;
    c->n_prompt_tokens = e->n_prompt_tokens;
    c->n_generation_tokens = e->n_generation_tokens;
    c->n_steps = e->n_steps;
    c->n_requests_finished = e->n_finished;
    c->n_requests_failed = e->n_failed;
    c->n_requests_cancelled = e->n_cancelled;
    c->spec_num_drafts = e->spec_n_drafts;
    c->spec_draft_tokens = e->spec_n_draft_tokens;
    c->spec_accepted_tokens = e->spec_n_accepted;
    if (e->dkv) {
        ql_kv_stats_t ds;
        ql_kv_get_stats(e->dkv, &ds);
        c->spec_draft_kv_blocks_used = ds.n_blocks_used;
        /* the O(pool) invariant check once the thread is done (tests read it then) */
        if (e->stopped) c->spec_draft_kv_check = ql_kv_check(e->dkv);
    }
    c->healthy = e->healthy;
    c->stopped = e->stopped;
}

void ql_engine_get_counters(ql_engine_t *e, ql_engine_counters_t *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->counters;
    pthread_mutex_unlock(&e->mu);
}

int ql_engine_healthy(ql_engine_t *e) {
    pthread_mutex_lock(&e->mu);
    int h = e->healthy;
    pthread_mutex_unlock(&e->mu);
    return h;
}

void ql_engine_get_limits(const ql_engine_t *e, ql_engine_limits_t *out) { *out = e->lim; }

/* Marks the engine unhealthy (the backend failed) and stops accepting requests. Requests
 * accepted before this but still in the inbox end later with the same status and message. */
static void go_unhealthy(ql_engine_t *e, int status, const char *msg) {
    e->healthy_local = 0;
    e->fail_status = status;
    snprintf(e->fail_msg, sizeof(e->fail_msg), "%s", msg);
    pthread_mutex_lock(&e->mu);
    e->healthy = 0;
    e->accepting = 0;
    snprintf(e->unhealthy_msg, sizeof(e->unhealthy_msg), "%s", msg);
    pthread_mutex_unlock(&e->mu);
    QL_LOG_ERROR("engine unhealthy: %s", msg);
}

/* ---- one choice's token ---- */

static int is_stop_id(const ereq_t *r, int32_t tok) {
    for (int32_t i = 0; i < r->n_stop_ids; i++)
        if (r->stop_ids[i] == tok) return 1;
    return 0;
}

/* Emits token `tok` of choice c, already appended to its scheduler sequence (which now holds
 * n_tokens_after tokens): stop conditions, detokenization, the OUTPUT event, and the choice's
 * retirement (the request's with its last choice) when it ended. Returns 1 when the choice
 * ended or the request failed. */
static int emit_token(ql_engine_t *e, choice_t *c, int32_t tok, const ql_sample_result_t *res,
                      int32_t n_tokens_after) {
    ereq_t *r = c->req;
    int rc;
    c->n_generated++;
    r->stats.n_completion_tokens++;
    e->n_generation_tokens++;
    if (!r->stats.t_first_token_ns) r->stats.t_first_token_ns = ql_time_ns();

    text_reset(e);
    ql_finish_reason_t finish = QL_FINISH_REASON_NONE;
    int matched = 0;
    if ((!r->ignore_eos && ql_tok_is_eog(e->tok, tok)) || is_stop_id(r, tok)) {
        finish = QL_FINISH_REASON_STOP; /* the token adds no text */
    } else {
        const char *d = "", *o;
        size_t dn = 0, on;
        if (ql_detok_push(&c->detok, tok, &d, &dn) != 0) dn = 0; /* past the tokenizer's vocab */
        rc = ql_stop_push(&c->stop, d, dn, c->n_generated >= r->min_tokens, &o, &on, NULL);
        if (rc < 0) {
            req_fail(e, r, QL_EINTERNAL, "stop matcher: %s", ql_strerror(rc));
            return 1;
        }
        text_add(e, o, on);
        if (rc == 1) {
            finish = QL_FINISH_REASON_STOP;
            matched = 1;
        }
    }
    if (finish == QL_FINISH_REASON_NONE &&
        (c->n_generated >= r->max_tokens || n_tokens_after >= e->lim.max_model_len))
        finish = QL_FINISH_REASON_LENGTH;
    if (finish != QL_FINISH_REASON_NONE && !matched) {
        const char *o;
        size_t on;
        ql_stop_flush(&c->stop, &o, &on);
        text_add(e, o, on);
        ql_detok_flush(&c->detok, &o, &on);
        text_add(e, o, on);
    }

    ql_engine_event_t ev;
    event_init(&ev, r, QL_ENGINE_EVENT_OUTPUT);
    ev.choice = c->index;
    ev.tokens = &tok;
    ev.n_tokens = 1;
    ev.logprobs = r->sampling.logprobs ? res : NULL;
    ev.text = e->text_len ? e->text : "";
    ev.text_len = e->text_len;
    ev.finish_reason = finish;
    r->cb(&ev, r->ud);

    if (finish == QL_FINISH_REASON_NONE) return 0;
    r->reasons[c->index] = finish;
    draft_close(e, c);
    rc = ql_sched_remove(e->sched, c->seq);
    QL_ASSERT(rc == 0);
    c->seq = -1;
    if (--r->n_live == 0) req_finish(e, r);
    return 1;
}

/* NOTE(min-tokens): the bans are the tail of the validated bias array; dropping them leaves a
 * valid prefix (sampling.h allows lowering n_logit_bias between calls). The bias count in force
 * once `n_generated` tokens are out. */
static int32_t bias_count_at(const ereq_t *r, const choice_t *c, int32_t n_generated) {
    (void)c;
    return n_generated >= r->min_tokens ? r->n_bias_user : r->n_bias_all;
}

/* Samples choice c's next token from `row`, applies the stop conditions, emits its OUTPUT event
 * and, when it ended, retires the choice (and the request with its last choice). */
static void sample_choice(ql_engine_t *e, choice_t *c, const float *row) {
    ereq_t *r = c->req;
    if (r->done || c->seq < 0) return;
    ql_sched_seq_info_t info;
    int rc = ql_sched_seq_info(e->sched, c->seq, &info);
    QL_ASSERT(rc == 0);
    if (c->bans_on && c->n_generated >= r->min_tokens) {
        c->sampler.params.n_logit_bias = bias_count_at(r, c, c->n_generated);
        c->bans_on = 0;
    }
    ql_sampling_history_t hist = {
        .tokens = info.tokens, .n_tokens = info.n_tokens, .n_prompt = info.n_prompt};
    ql_sample_result_t res;
    rc = ql_sampler_sample(&c->sampler, e->ws, row, &hist, &res);
    if (rc != 0) {
        req_fail(e, r, rc, rc == QL_ERANGE ? "no token can be sampled: every token is banned"
                                           : "sampling failed (logits hold NaN or inf?)");
        return;
    }
    const int32_t tok = res.token;
    rc = ql_sched_push_token(e->sched, c->seq, tok);
    if (rc != 0) {
        req_fail(e, r, QL_EINTERNAL, "scheduler refused token (%s)", ql_strerror(rc));
        return;
    }
    emit_token(e, c, tok, &res, info.n_tokens + 1);
}

/* ---- speculative decoding ---- */

/* NOTE(spec): around each step the engine
 *   1. (spec_propose) for every choice in decode state whose request speculates, finds drafts
 *      (n-gram lookup in its own tokens), then sizes them with the cost model (spec.h
 *      NOTE(spec-cost)): the step's fitted time against each choice's measured acceptance
 *      (spec_alpha), unless spec_fixed_k; hands them to the scheduler (ql_sched_set_draft);
 *   2. the scheduler feeds the last token and the drafts as one chunk with logits on every row;
 *   3. (spec_verify) accepts a prefix of the drafts losslessly (ql_spec_verify), commits it
 *      (ql_sched_spec_commit: rejected positions rolled back) and emits the accepted tokens and
 *      the one sampled after them, one OUTPUT event each, through the same stop conditions as
 *      ordinary decoding.
 * A choice's acceptance is an exponential average over its drafted tokens; until it has
 * drafted, it is the engine's average at that step (so one burst's requests learn from each
 * other's first verifies instead of each exploring from the prior); a choice that stopped drafting drifts
 * back towards that average, so it is tried again. */
#define SPEC_ALPHA_PRIOR 0.6f
#define SPEC_ALPHA_RATE 0.15f   /* weight of one drafted token's outcome */
#define SPEC_ALPHA_RETURN 0.02f /* per step without drafts, towards the engine's average */
#define SPEC_ALPHA_ALL_RATE 0.05f /* the engine's average, over every choice's drafted tokens */

static void spec_note(ql_engine_t *e, choice_t *c, int32_t n_draft, int32_t n_accepted) {
    for (int32_t i = 0; i < n_draft && i <= n_accepted; i++) {
        const float x = i < n_accepted ? 1.0f : 0.0f;
        c->spec_alpha += SPEC_ALPHA_RATE * (x - c->spec_alpha);
        c->spec_n_seen++;
        e->spec_alpha_all += SPEC_ALPHA_ALL_RATE * (x - e->spec_alpha_all);
    }
}

/* NOTE(layerskip): the draft is the target's first spec_layers layers and its own final norm and
 * head (ql_batch_t.n_layers), run k times, one token per drafting choice each round. The draft
 * reads the layers' KV of the known tokens from the choice's own blocks (the target computed
 * exactly that KV: no second cache for them), and writes the drafts' KV into scratch blocks
 * outside the block manager (the block holding the last known token is first copied there, so
 * its earlier slots are readable), so drafting never touches a block a sequence owns. The
 * verify then recomputes every layer at the drafted positions in the sequence's own blocks;
 * the scratch blocks are simply overwritten next step: rolling the draft back costs nothing. */

/* Picks drafting choice i's draft r from the draft's logits `row` (its history: the `base`
 * known tokens, then drafts 0..r-1): the greedy token, or a sample from q, which is processed as
 * p will be (same parameters, same bans at this position) and kept for the verify. Hands the
 * drafts so far to the scheduler. @return 0, or -1: no draft here (stop this choice's drafts). */
static int draft_pick(ql_engine_t *e, int32_t i, int32_t r, int32_t base, const float *row) {
    choice_t *c = e->spec_cand[i];
    ereq_t *rq = c->req;
    const size_t n_vocab = (size_t)e->lim.n_vocab;
    int32_t *d = e->spec_buf + (size_t)i * QL_SPEC_K_MAX;
    ql_sched_seq_info_t info;
    ql_sched_seq_info(e->sched, c->seq, &info); /* tokens then the drafts so far */
    const ql_sampling_history_t hist = {
        .tokens = info.tokens, .n_tokens = base + r, .n_prompt = info.n_prompt};
    const ql_sampling_params_t saved = c->sampler.params;
    c->sampler.params.logprobs = 0;
    c->sampler.params.top_logprobs = 0;
    c->sampler.params.n_logit_bias =
        c->bans_on ? bias_count_at(rq, c, c->n_generated + r) : rq->n_bias_user;
    int32_t tok = -1;
    int rc;
    if (c->sampler.params.temperature == 0.0f) {
        ql_sample_result_t res;
        rc = ql_sampler_sample(&c->sampler, e->ws, row, &hist, &res);
        tok = res.token;
    } else {
        float *q = e->spec_q + ((size_t)i * e->spec_k + r) * n_vocab;
        rc = ql_sampler_probs(&c->sampler, e->ws, row, &hist, q);
        if (rc == 0)
            tok = ql_spec_sample_probs(q, (int32_t)n_vocab, ql_sampler_uniform(&c->sampler));
    }
    c->sampler.params = saved;
    if (rc != 0 || tok < 0) return -1;
    d[r] = tok;
    return ql_sched_set_draft(e->sched, c->seq, d, r + 1) == r + 1 ? 0 : -1;
}

/* NOTE(draft-model): a second model drafts. Each drafting choice has a sequence in the draft's
 * own block manager (dkv, over the draft backend's pool, no prefix cache) holding the draft's
 * KV of its known tokens: round 0 feeds what the draft has not seen yet (the whole prompt the
 * first time, then the tokens accepted since), the next rounds one draft each. After the
 * verify, the draft's sequence is truncated to the positions that hold known tokens (the
 * accepted drafts stay: their KV is the draft's KV of those very tokens), so rollback is the
 * same truncation as the target's. A choice whose catch-up does not fit this step's draft batch
 * catches up over several steps and drafts once it is level; one the draft's pool cannot hold
 * drops its draft sequence and does not speculate until blocks free up. */
static void spec_draft_model(ql_engine_t *e, int32_t n) {
    const size_t n_vocab = (size_t)e->lim.n_vocab;
    int32_t k_max = 0;
    for (int32_t i = 0; i < n; i++) k_max = QL_MAX(k_max, e->spec_kplan[i]);
    int rc = 0;
    for (int32_t r = 0; r < k_max && rc == 0; r++) {
        int32_t nt = 0, ns = 0, budget = e->d_batch_max;
        for (int32_t i = 0; i < n; i++) {
            e->d_rowof[i] = -1;
            if (e->spec_kplan[i] <= r) continue;
            choice_t *c = e->spec_cand[i];
            ql_sched_seq_info_t info;
            ql_sched_seq_info(e->sched, c->seq, &info);
            const int32_t base = e->ls_base[i];
            if (r == 0 && c->dseq < 0) {
                if (ql_kv_seq_open(e->dkv, NULL, 0, &c->dseq) != 0) {
                    c->dseq = -1;
                    e->spec_kplan[i] = 0;
                    continue;
                }
                c->d_valid = 0;
            }
            int32_t have = ql_kv_seq_n_tokens(e->dkv, c->dseq);
            if (r == 0 && have > c->d_valid) { /* drafts of a step that verified none */
                ql_kv_seq_truncate(e->dkv, c->dseq, c->d_valid);
                have = c->d_valid;
            }
            /* feed: round 0 the known tokens the draft lacks, later rounds the last draft */
            const int32_t from = r == 0 ? have : base - 1 + r;
            int32_t cnt = r == 0 ? base - have : 1;
            if (cnt > budget - (n - i - 1) || cnt <= 0) { /* catch up partly, draft later */
                cnt = QL_MIN(cnt, budget - (n - i - 1));
                e->spec_kplan[i] = 0;
                if (cnt <= 0) continue;
            }
            ql_kv_copy_t cp;
            const int32_t *src = info.tokens + from; /* drafts follow the known tokens there */
            int arc = ql_kv_seq_append(e->dkv, c->dseq, src, cnt, &cp);
            if (arc != 0) { /* the draft's pool is full: give this choice's draft KV back */
                draft_close(e, c);
                e->spec_kplan[i] = 0;
                continue;
            }
            QL_ASSERT(cp.src < 0); /* a private sequence, never forked: no copy-on-write */
            int32_t nb;
            const int32_t *tbl = ql_kv_seq_block_table(e->dkv, c->dseq, &nb);
            for (int32_t j = 0; j < cnt; j++) {
                e->d_tokens[nt + j] = src[j];
                e->d_pos[nt + j] = from + j;
                e->d_seq[nt + j] = ns;
            }
            e->ls_tptr[ns] = tbl;
            e->ls_nblocks[ns] = nb;
            e->ls_seqlen[ns] = from + cnt;
            e->ls_cnb[ns] = i; /* which choice */
            if (e->spec_kplan[i] > r) {
                e->d_rowof[i] = ns;
                e->ls_rows[ns] = nt + cnt - 1;
            } else {
                e->ls_rows[ns] = -1;
            }
            nt += cnt;
            budget -= cnt;
            ns++;
        }
        if (ns == 0) break;
        /* logits rows: the sequences that draft, in order */
        int32_t nl = 0;
        for (int32_t j = 0; j < ns; j++)
            if (e->ls_rows[j] >= 0) {
                e->d_rowof[e->ls_cnb[j]] = nl;
                e->ls_rows[nl++] = e->ls_rows[j];
            }
        ql_batch_t b = {.n_tokens = nt, .tokens = e->d_tokens, .pos = e->d_pos,
                        .seq_of_token = e->d_seq, .n_seqs = ns, .block_tables = e->ls_tptr,
                        .n_blocks = e->ls_nblocks, .seq_len = e->ls_seqlen,
                        .logits_rows = e->ls_rows, .n_logits = nl};
        rc = ql_backend_forward(e->dbe, &b, e->logits);
        if (rc != 0) break;
        for (int32_t j = 0; j < ns; j++) {
            choice_t *c = e->spec_cand[e->ls_cnb[j]];
            int src = ql_kv_seq_set_computed(e->dkv, c->dseq, e->ls_seqlen[j]);
            QL_ASSERT(src == 0);
            if (r == 0) c->d_valid = QL_MIN(e->ls_seqlen[j], e->ls_base[e->ls_cnb[j]]);
        }
        for (int32_t i = 0; i < n; i++) {
            if (e->d_rowof[i] < 0 || e->spec_kplan[i] <= r) continue;
            const float *row = e->logits + (size_t)e->d_rowof[i] * n_vocab;
            if (draft_pick(e, i, r, e->ls_base[i], row) != 0) e->spec_kplan[i] = r;
            else e->spec_cand[i]->spec_cand = i;
        }
    }
    if (rc != 0) { /* the verify's forward may meet the same failure and report it */
        QL_LOG_WARN("draft model forward failed (%s): no drafts this step", ql_strerror(rc));
        for (int32_t i = 0; i < n; i++) {
            ql_sched_set_draft(e->sched, e->spec_cand[i]->seq, NULL, 0);
            e->spec_cand[i]->spec_cand = -1;
            draft_close(e, e->spec_cand[i]); /* its draft KV is not to be trusted */
        }
    }
}

/* Drafts with the target's first layers for e->spec_cand[0, n) (k planned in spec_kplan). */
static void spec_draft_layerskip(ql_engine_t *e, int32_t n) {
    const int32_t bs = e->lim.block_size;
    const size_t n_vocab = (size_t)e->lim.n_vocab;
    int32_t n_copy = 0, k_max = 0;
    for (int32_t i = 0; i < n; i++) {
        choice_t *c = e->spec_cand[i];
        int32_t k = e->spec_kplan[i];
        if (k <= 0) continue;
        ql_sched_seq_info_t info;
        int rc = ql_sched_seq_info(e->sched, c->seq, &info);
        QL_ASSERT(rc == 0);
        const int32_t p0 = info.n_tokens - 1, b0 = p0 / bs, off = p0 % bs;
        int32_t *tbl = e->ls_tables + (size_t)i * e->ls_tbl_w;
        memcpy(tbl, info.block_table, (size_t)b0 * sizeof(int32_t));
        const int32_t nsb = (off + k + bs - 1) / bs;
        QL_ASSERT(nsb <= e->ls_per && b0 + nsb <= e->ls_tbl_w);
        for (int32_t j = 0; j < nsb; j++) tbl[b0 + j] = e->ls_scratch0 + i * e->ls_per + j;
        if (off > 0) {
            e->copy_src[n_copy] = info.block_table[b0];
            e->copy_dst[n_copy++] = tbl[b0];
        }
        e->ls_cnb[i] = b0 + nsb;
        e->ls_base[i] = info.n_tokens;
        c->spec_cand = i;
        k_max = QL_MAX(k_max, k);
    }
    if (k_max == 0) return;
    /* every destination is a scratch block and no scratch block is a source: one call */
    int rc = n_copy ? ql_backend_copy_blocks(e->be, e->copy_src, e->copy_dst, n_copy) : 0;
    for (int32_t r = 0; r < k_max && rc == 0; r++) {
        int32_t nt = 0;
        for (int32_t i = 0; i < n; i++) {
            if (e->spec_kplan[i] <= r) continue;
            choice_t *c = e->spec_cand[i];
            const int32_t *d = e->spec_buf + (size_t)i * QL_SPEC_K_MAX;
            ql_sched_seq_info_t info;
            ql_sched_seq_info(e->sched, c->seq, &info);
            e->ls_tokens[nt] = r == 0 ? info.tokens[info.n_tokens - 1] : d[r - 1];
            e->ls_pos[nt] = e->ls_base[i] - 1 + r;
            e->ls_seq[nt] = nt;
            e->ls_seqlen[nt] = e->ls_base[i] + r;
            e->ls_rows[nt] = nt;
            e->ls_tptr[nt] = e->ls_tables + (size_t)i * e->ls_tbl_w;
            e->ls_nblocks[nt] = e->ls_cnb[i];
            nt++;
        }
        ql_batch_t b = {.n_tokens = nt, .tokens = e->ls_tokens, .pos = e->ls_pos,
                        .seq_of_token = e->ls_seq, .n_seqs = nt, .block_tables = e->ls_tptr,
                        .n_blocks = e->ls_nblocks, .seq_len = e->ls_seqlen,
                        .logits_rows = e->ls_rows, .n_logits = nt, .n_layers = e->spec_layers};
        rc = ql_backend_forward(e->be, &b, e->logits);
        if (rc != 0) break;
        int32_t t = 0;
        for (int32_t i = 0; i < n; i++) {
            if (e->spec_kplan[i] <= r) continue;
            const float *row = e->logits + (size_t)t++ * n_vocab;
            if (draft_pick(e, i, r, e->ls_base[i], row) != 0) e->spec_kplan[i] = r;
        }
    }
    if (rc != 0) { /* the verify's forward will meet the same failure and report it */
        QL_LOG_WARN("layerskip draft forward failed (%s): no drafts this step", ql_strerror(rc));
        for (int32_t i = 0; i < n; i++) {
            ql_sched_set_draft(e->sched, e->spec_cand[i]->seq, NULL, 0);
            e->spec_cand[i]->spec_cand = -1;
        }
    }
}

static void spec_propose(ql_engine_t *e) {
    const int layerskip = e->spec_method == QL_ENGINE_SPEC_LAYERSKIP;
    int32_t n_cand = 0, n_decode = 0;
    for (ereq_t *r = e->live_head; r; r = r->next) {
        if (r->done) continue;
        for (int32_t i = 0; i < r->n_choices; i++) {
            choice_t *c = &r->choices[i];
            c->spec_cand = -1;
            if (c->seq < 0) continue;
            ql_sched_seq_info_t info;
            if (ql_sched_seq_info(e->sched, c->seq, &info) != 0) continue;
            if (info.state != QL_SCHED_STATE_RUNNING || info.n_tokens <= info.n_prompt ||
                info.n_computed != info.n_tokens - 1 || info.verify_pending)
                continue;
            n_decode++;
            int32_t room = info.max_tokens - (info.n_tokens - info.n_prompt) - 1;
            int32_t kmax = QL_MIN(r->spec_k, room);
            if (kmax <= 0 || n_cand >= e->lim.max_num_seqs) continue;
            int32_t found = kmax;
            if (!layerskip) {
                int32_t *buf = e->spec_buf + (size_t)n_cand * QL_SPEC_K_MAX;
                found = ql_spec_ngram_propose(info.tokens, info.n_tokens, e->spec_ngram_min,
                                              e->spec_ngram_max, kmax, buf);
                if (found <= 0) {
                    c->spec_alpha += SPEC_ALPHA_RETURN * (e->spec_alpha_all - c->spec_alpha);
                    continue;
                }
            }
            /* no outcome of its own yet: the engine's current average, not the one it had
             * when the request arrived (a burst's requests all arrive at the prior; the
             * first verifies of any of them then hold the rest back) */
            if (c->spec_n_seen == 0) c->spec_alpha = e->spec_alpha_all;
            e->spec_cand[n_cand] = c;
            e->spec_kmax[n_cand] = found;
            e->spec_alphas[n_cand] = c->spec_alpha;
            n_cand++;
        }
    }
    if (n_cand == 0) return;
    if (e->spec_fixed_k) {
        for (int32_t i = 0; i < n_cand; i++) e->spec_kplan[i] = e->spec_kmax[i];
    } else {
        /* a layerskip draft token costs its share of a forward of spec_layers layers */
        double draft_s = 0.0;
        if (e->spec_draft_frac > 0.0)
            draft_s = e->spec_draft_frac * (e->spec_cost.c_s + e->spec_cost.t0_s / (double)n_cand);
        ql_spec_plan(&e->spec_cost, n_decode + e->last_prefill_tokens, (double)n_decode, n_cand,
                     e->spec_alphas, e->spec_kmax, draft_s, e->spec_kplan);
    }
    for (int32_t i = 0; i < n_cand; i++) {
        choice_t *c = e->spec_cand[i];
        if (e->spec_kplan[i] <= 0)
            c->spec_alpha += SPEC_ALPHA_RETURN * (e->spec_alpha_all - c->spec_alpha);
    }
    if (layerskip) {
        spec_draft_layerskip(e, n_cand);
        return;
    }
    if (e->spec_method == QL_ENGINE_SPEC_DRAFT) {
        for (int32_t i = 0; i < n_cand; i++) {
            ql_sched_seq_info_t info;
            ql_sched_seq_info(e->sched, e->spec_cand[i]->seq, &info);
            e->ls_base[i] = info.n_tokens;
        }
        spec_draft_model(e, n_cand);
        return;
    }
    for (int32_t i = 0; i < n_cand; i++) {
        choice_t *c = e->spec_cand[i];
        if (e->spec_kplan[i] <= 0) continue;
        int32_t rc = ql_sched_set_draft(e->sched, c->seq, e->spec_buf + (size_t)i * QL_SPEC_K_MAX,
                                        e->spec_kplan[i]);
        if (rc < 0) QL_LOG_DEBUG("draft refused (%s)", ql_strerror(rc));
    }
}

/* A verify item's logits arrived: rows[0, n_draft] of choice c. */
static void spec_verify(ql_engine_t *e, choice_t *c, const ql_sched_item_t *it) {
    ereq_t *r = c->req;
    if (r->done || c->seq < 0) return;
    ql_sched_seq_info_t info;
    int rc = ql_sched_seq_info(e->sched, c->seq, &info);
    QL_ASSERT(rc == 0 && info.verify_pending && info.n_draft == it->n_draft);
    const int32_t k = it->n_draft;
    const size_t n_vocab = (size_t)e->lim.n_vocab;
    const float *rows[QL_SPEC_K_MAX + 1];
    int32_t nbias[QL_SPEC_K_MAX + 1], out[QL_SPEC_K_MAX + 1];
    for (int32_t i = 0; i <= k; i++) {
        rows[i] = e->logits + (size_t)(it->logits_row + i) * n_vocab;
        nbias[i] = c->bans_on ? bias_count_at(r, c, c->n_generated + i) : r->n_bias_user;
    }
    const float *qrows[QL_SPEC_K_MAX];
    const int use_q = e->spec_q && c->spec_cand >= 0 && c->sampler.params.temperature > 0.0f;
    for (int32_t i = 0; use_q && i < k; i++)
        qrows[i] = e->spec_q + ((size_t)c->spec_cand * e->spec_k + i) * n_vocab;
    ql_spec_verify_t v = {.rows = rows,
                          .draft = info.tokens + info.n_tokens,
                          .q = use_q ? qrows : NULL,
                          .n_draft = k,
                          .tokens = info.tokens,
                          .n_known = info.n_tokens,
                          .n_prompt = info.n_prompt,
                          .n_logit_bias = nbias};
    int32_t m = 0;
    rc = ql_spec_verify(&c->sampler, e->ws, &v, e->spec_p, e->spec_r, out, &m);
    if (rc != 0) {
        req_fail(e, r, rc, rc == QL_ERANGE ? "no token can be sampled: every token is banned"
                                           : "sampling failed (logits hold NaN or inf?)");
        return;
    }
    r->stats.n_draft_tokens += k;
    r->stats.n_accepted_tokens += m;
    e->spec_n_drafts++;
    e->spec_n_draft_tokens += (uint64_t)k;
    e->spec_n_accepted += (uint64_t)m;
    spec_note(e, c, k, m);
    if (c->dseq >= 0) { /* the draft model's KV: the same rollback (NOTE(draft-model)) */
        int32_t have = ql_kv_seq_n_tokens(e->dkv, c->dseq);
        c->d_valid = QL_MIN(have, info.n_tokens + m);
        int trc = ql_kv_seq_truncate(e->dkv, c->dseq, c->d_valid);
        QL_ASSERT(trc == 0);
    }
    rc = ql_sched_spec_commit(e->sched, c->seq, m);
    if (rc == 0) rc = ql_sched_push_token(e->sched, c->seq, out[m]);
    if (rc != 0) {
        req_fail(e, r, QL_EINTERNAL, "scheduler refused the verified tokens (%s)",
                 ql_strerror(rc));
        return;
    }
    for (int32_t j = 0; j <= m; j++) {
        ql_sample_result_t res = {.token = out[j]};
        if (r->sampling.logprobs && ql_sampler_logprobs(&c->sampler, rows[j], out[j], &res) != 0) {
            req_fail(e, r, QL_EINTERNAL, "sampling failed (logits hold NaN or inf?)");
            return;
        }
        if (emit_token(e, c, out[j], &res, info.n_tokens + j + 1)) return;
    }
}

/* A sequence got logits: fork the request's other choices first when its prompt just
 * completed, then sample every choice that reads this row. */
static void on_logits(ql_engine_t *e, choice_t *c, const float *row) {
    ereq_t *r = c->req;
    if (r->done || c->seq < 0) return;
    ql_sched_seq_info_t info;
    int rc = ql_sched_seq_info(e->sched, c->seq, &info);
    QL_ASSERT(rc == 0);
    if (info.n_forks_pending == 0) {
        sample_choice(e, c, row);
        return;
    }
    for (int32_t i = 1; i < r->n_choices; i++) {
        choice_t *k = &r->choices[i];
        if (k->seq >= 0) continue;
        rc = ql_sched_fork(e->sched, c->seq, k, &k->seq);
        if (rc != 0) {
            k->seq = -1;
            req_fail(e, r, rc == QL_ENOMEM ? QL_ENOMEM : QL_EINTERNAL,
                     "fork of choice %d failed (%s)", (int)i, ql_strerror(rc));
            return;
        }
    }
    for (int32_t i = 0; i < r->n_choices && !r->done; i++) sample_choice(e, &r->choices[i], row);
}

/* ---- one step ---- */

static int apply_copies(ql_engine_t *e, const ql_kv_copy_t *copies, int32_t n) {
    for (int32_t i = 0; i < n;) {
        int32_t len = ql_sched_copy_runs(copies + i, n - i);
        for (int32_t k = 0; k < len; k++) {
            e->copy_src[k] = copies[i + k].src;
            e->copy_dst[k] = copies[i + k].dst;
        }
        int rc = ql_backend_copy_blocks(e->be, e->copy_src, e->copy_dst, len);
        if (rc != 0) return rc;
        i += len;
    }
    return 0;
}

static void step(ql_engine_t *e) {
    ql_sched_step_t st;
    memset(&st, 0, sizeof(st));
    if (e->spec_method != QL_ENGINE_SPEC_NONE) spec_propose(e);
    int rc = ql_sched_schedule(e->sched, &st);
    if (rc != 0) {
        char msg[96];
        snprintf(msg, sizeof(msg), "scheduler error: %s", ql_strerror(rc));
        go_unhealthy(e, QL_EINTERNAL, msg); /* first: a client told of the error finds it so */
        fail_all(e, QL_EINTERNAL, msg);
        if (st.n_items > 0) ql_sched_step_done(e->sched); /* every item's sequence is gone */
        return;
    }
    if (st.n_items == 0) {
        /* NOTE(progress): with the fit check at submit, an idle pool always admits the head of
         * the queue; reaching this is a bug, and failing beats spinning */
        QL_LOG_ERROR("no sequence can run although requests are live: failing them");
        fail_all(e, QL_EINTERNAL, "scheduler made no progress");
        return;
    }
    const uint64_t now = ql_time_ns();
    for (int32_t i = 0; i < st.n_admitted; i++) {
        ql_sched_seq_info_t info;
        ql_sched_seq_info(e->sched, st.admitted[i], &info);
        choice_t *c = info.user;
        ereq_t *r = c->req;
        if (!r->stats.t_scheduled_ns) r->stats.t_scheduled_ns = now;
        if (!r->admitted_once && c->index == 0) {
            r->admitted_once = 1;
            r->stats.n_cached_prompt_tokens = info.n_cached_prompt;
            e->n_prompt_tokens += (uint64_t)r->n_prompt;
        }
    }
    for (int32_t i = 0; i < st.n_preempted; i++) {
        ql_sched_seq_info_t info;
        ql_sched_seq_info(e->sched, st.preempted[i], &info);
        choice_t *c = info.user;
        c->req->stats.n_preemptions++;
        QL_RLOG_DEBUG(c->req->id, "choice %d preempted (%d tokens to recompute)", (int)c->index,
                      (int)info.n_tokens);
    }
    rc = apply_copies(e, st.copies, st.n_copies);
    const uint64_t t_fwd = ql_time_ns();
    if (rc == 0) rc = ql_backend_forward(e->be, &st.batch, e->logits);
    if (rc == 0 && e->spec_method != QL_ENGINE_SPEC_NONE) {
        ql_spec_cost_observe(&e->spec_cost, st.batch.n_tokens,
                             (double)(ql_time_ns() - t_fwd) * 1e-9);
        e->last_prefill_tokens = st.n_prefill_tokens;
    }
    if (rc != 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "backend %s failed: %s", st.n_copies ? "step" : "forward",
                 ql_strerror(rc));
        go_unhealthy(e, rc, msg); /* first: a client told of the error finds it so */
        fail_all(e, rc, msg);
        ql_sched_step_done(e->sched); /* every item's sequence is gone: nothing is computed */
        return;
    }
    rc = ql_sched_step_done(e->sched);
    QL_ASSERT(rc == 0);
    e->n_steps++;
    /* the choices first: handling one item may retire requests and free sequence ids */
    for (int32_t i = 0; i < st.n_items; i++) {
        e->item_choice[i] = NULL;
        if (st.items[i].logits_row < 0) continue;
        ql_sched_seq_info_t info;
        ql_sched_seq_info(e->sched, st.items[i].seq, &info);
        e->item_choice[i] = info.user;
    }
    const size_t n_vocab = (size_t)e->lim.n_vocab;
    for (int32_t i = 0; i < st.n_items; i++) {
        choice_t *c = e->item_choice[i];
        if (!c || c->seq != st.items[i].seq) continue;
        if (st.items[i].n_draft > 0) spec_verify(e, c, &st.items[i]);
        else on_logits(e, c, e->logits + (size_t)st.items[i].logits_row * n_vocab);
    }
}

/* ---- the inbox ---- */

static void take_inbox(ql_engine_t *e, ereq_t *list) {
    while (list) {
        ereq_t *r = list;
        list = r->next;
        r->next = NULL;
        r->prev = e->live_tail;
        if (e->live_tail) e->live_tail->next = r;
        else e->live_head = r;
        e->live_tail = r;
        for (int32_t i = 0; i < r->n_choices; i++) r->choices[i].spec_alpha = e->spec_alpha_all;
        ql_sched_req_t sr = {.prompt = r->prompt,
                             .n_prompt = r->n_prompt,
                             .max_tokens = r->max_tokens,
                             .n_choices = r->n_choices,
                             .priority = r->priority,
                             .user = &r->choices[0]};
        int rc = ql_sched_add(e->sched, &sr, &r->choices[0].seq);
        if (rc != 0) {
            r->choices[0].seq = -1;
            req_fail(e, r, rc, "could not queue the request (%s)", ql_strerror(rc));
        }
    }
}

static void apply_cancels(ql_engine_t *e, cancel_t *list) {
    while (list) {
        cancel_t *c = list;
        list = c->next;
        for (ereq_t *r = e->live_head, *nx; r; r = nx) {
            nx = r->next;
            if (c->handle ? r->handle == c->handle : strcmp(r->id, c->id) == 0)
                req_fail(e, r, QL_ECANCELED, "cancelled");
        }
        free(c->id);
        free(c);
    }
}

static void *engine_main(void *arg) {
    ql_engine_t *e = arg;
    pthread_mutex_lock(&e->mu);
    for (;;) {
        while (!e->inbox_head && !e->cancels && e->shutdown == SHUTDOWN_NONE && !e->live_head)
            pthread_cond_wait(&e->cv, &e->mu);
        if (e->shutdown == SHUTDOWN_DRAIN && !e->inbox_head && !e->cancels && !e->live_head) break;
        ereq_t *in = e->inbox_head;
        cancel_t *cl = e->cancels;
        e->inbox_head = e->inbox_tail = NULL;
        e->n_inbox = 0;
        e->cancels = NULL;
        int mode = e->shutdown;
        pthread_mutex_unlock(&e->mu);

        take_inbox(e, in);
        apply_cancels(e, cl);
        if (mode == SHUTDOWN_ABORT) fail_all(e, QL_ECANCELED, "engine shut down");
        else if (e->live_head && e->healthy_local) step(e);
        else if (e->live_head) fail_all(e, e->fail_status, e->fail_msg);
        bury(e);

        pthread_mutex_lock(&e->mu);
        publish_locked(e);
        if (mode == SHUTDOWN_ABORT) break;
    }
    e->stopped = 1;
    e->accepting = 0;
    publish_locked(e);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- init / free ---- */

static void spec_free(ql_engine_t *e) {
    free(e->spec_p);
    free(e->spec_r);
    free(e->spec_buf);
    free(e->spec_cand);
    free(e->spec_alphas);
    free(e->spec_kmax);
    free(e->spec_kplan);
    free(e->ls_tables);
    free((void *)e->ls_tptr);
    free(e->ls_tokens);
    free(e->ls_pos);
    free(e->ls_seq);
    free(e->ls_nblocks);
    free(e->ls_seqlen);
    free(e->ls_rows);
    free(e->ls_base);
    free(e->ls_cnb);
    free(e->spec_q);
    ql_kv_free(e->dkv);
    free(e->d_tokens);
    free(e->d_pos);
    free(e->d_seq);
    free(e->d_rowof);
}

int ql_engine_init(const ql_engine_params_t *p, ql_backend_t *be, const ql_tok_t *tok,
                   ql_engine_t **out, char *err, size_t errlen) {
    ql_errf(err, errlen, "%s", "");
    if (!p || !be || !tok || !out) {
        ql_errf(err, errlen, "engine: NULL argument");
        return QL_EINVAL;
    }
    *out = NULL;
    const ql_backend_info_t *bi = ql_backend_info(be);
    if (p->max_num_seqs < 0 || p->max_batched_tokens < 0 || p->max_model_len < 0 ||
        (p->disable_prefix_cache != 0 && p->disable_prefix_cache != 1)) {
        ql_errf(err, errlen, "engine: a parameter is negative or out of range");
        return QL_EINVAL;
    }
    if (p->spec_method < QL_ENGINE_SPEC_NONE || p->spec_method > QL_ENGINE_SPEC_LAYERSKIP ||
        p->spec_k < 0 || p->spec_k > QL_SPEC_K_MAX || p->spec_ngram_min < 0 ||
        p->spec_ngram_max < 0 || p->spec_layers < 0) {
        ql_errf(err, errlen, "engine: a speculative decoding parameter is out of range");
        return QL_EINVAL;
    }
    const ql_backend_info_t *dbi = p->draft_backend ? ql_backend_info(p->draft_backend) : NULL;
    if ((p->spec_method == QL_ENGINE_SPEC_DRAFT) != (dbi != NULL)) {
        ql_errf(err, errlen, "engine: a draft backend goes with spec_method draft, and only then");
        return QL_EINVAL;
    }
    if (dbi && dbi->n_vocab != bi->n_vocab) {
        ql_errf(err, errlen, "engine: the draft model's vocabulary (%d tokens) differs from the "
                             "target's (%d)", (int)dbi->n_vocab, (int)bi->n_vocab);
        return QL_EINVAL;
    }
    const int32_t spec_k = p->spec_method ? (p->spec_k ? p->spec_k : 4) : 0;
    const int32_t spec_layers = p->spec_layers ? p->spec_layers : 4;
    if (p->spec_method == QL_ENGINE_SPEC_LAYERSKIP && spec_layers >= bi->kv.n_layer) {
        ql_errf(err, errlen, "engine: layerskip needs fewer draft layers (%d) than the model's %d",
                (int)spec_layers, (int)bi->kv.n_layer);
        return QL_EINVAL;
    }
    if (bi->n_vocab < 1 || bi->n_seqs_max < 1 || bi->n_logits_max < 1 ||
        bi->n_batch_tokens_max < 1 || bi->kv.block_size < 1 || bi->kv.n_blocks < 1 ||
        bi->n_ctx_max < 2) {
        ql_errf(err, errlen, "engine: backend '%s' reports unusable limits",
                bi->name ? bi->name : "?");
        return QL_EINVAL;
    }
    ql_engine_limits_t lim;
    memset(&lim, 0, sizeof(lim));
    lim.n_vocab = bi->n_vocab;
    lim.block_size = bi->kv.block_size;
    lim.n_blocks = bi->kv.n_blocks;
    /* one logits row per sequence at most, one token per sequence at least */
    lim.max_num_seqs = p->max_num_seqs ? p->max_num_seqs : 64;
    lim.max_num_seqs = QL_MIN(lim.max_num_seqs, QL_MIN(bi->n_seqs_max, bi->n_logits_max));
    lim.max_batched_tokens = p->max_batched_tokens ? p->max_batched_tokens : bi->n_batch_tokens_max;
    lim.max_batched_tokens = QL_MIN(lim.max_batched_tokens, bi->n_batch_tokens_max);
    lim.max_num_seqs = QL_MIN(lim.max_num_seqs, lim.max_batched_tokens);
    /* layerskip's scratch blocks (NOTE(layerskip)) come off the end of the pool */
    int32_t ls_per = 0;
    if (p->spec_method == QL_ENGINE_SPEC_LAYERSKIP) {
        ls_per = (lim.block_size - 1 + spec_k + lim.block_size - 1) / lim.block_size;
        int64_t n_scratch = (int64_t)lim.max_num_seqs * ls_per;
        if (n_scratch >= lim.n_blocks) {
            ql_errf(err, errlen, "engine: layerskip's %lld scratch KV blocks leave none of the %d",
                    (long long)n_scratch, (int)lim.n_blocks);
            return QL_EINVAL;
        }
        lim.n_blocks -= (int32_t)n_scratch;
    }
    lim.max_model_len = p->max_model_len ? p->max_model_len : bi->n_ctx_max;
    lim.max_model_len = QL_MIN(lim.max_model_len, bi->n_ctx_max);
    if (dbi) { /* the draft must hold every sequence and batch the target does */
        lim.max_num_seqs = QL_MIN(lim.max_num_seqs, QL_MIN(dbi->n_seqs_max, dbi->n_logits_max));
        lim.max_num_seqs = QL_MIN(lim.max_num_seqs, dbi->n_batch_tokens_max); /* a round's tokens */
        if (dbi->n_ctx_max < lim.max_model_len) {
            QL_LOG_WARN("max_model_len %d capped by the draft model's context (%d)",
                        (int)lim.max_model_len, (int)dbi->n_ctx_max);
            lim.max_model_len = dbi->n_ctx_max;
        }
    }
    int64_t pool_tokens = (int64_t)lim.n_blocks * bi->kv.block_size;
    if (lim.max_model_len > pool_tokens + 1) {
        if (lim.max_model_len <= (int64_t)bi->kv.n_blocks * bi->kv.block_size + 1)
            QL_LOG_INFO("max_model_len %d capped to %lld: layerskip's scratch blocks come off a "
                        "pool sized for the full context", (int)lim.max_model_len,
                        (long long)pool_tokens + 1);
        else
            QL_LOG_WARN("max_model_len %d exceeds what the KV pool holds (%lld tokens): capped",
                        (int)lim.max_model_len, (long long)pool_tokens);
        lim.max_model_len = (int32_t)(pool_tokens + 1); /* the last token is never fed */
    }
    if (lim.max_model_len < 2) {
        ql_errf(err, errlen, "engine: max_model_len %d leaves no room to generate",
                (int)lim.max_model_len);
        return QL_EINVAL;
    }

    ql_engine_t *e = calloc(1, sizeof(*e));
    if (!e) return QL_ENOMEM;
    e->be = be;
    e->tok = tok;
    e->lim = lim;
    e->healthy_local = 1;
    e->healthy = 1;
    e->spec_method = p->spec_method;
    e->spec_k = spec_k;
    e->n_layer = bi->kv.n_layer;
    e->ls_per = ls_per;
    e->ls_scratch0 = lim.n_blocks;
    e->dbe = p->draft_backend;
    if (p->spec_method == QL_ENGINE_SPEC_LAYERSKIP)
        e->spec_draft_frac = (double)spec_layers / (double)bi->kv.n_layer;
    else if (dbi && bi->weight_bytes > 0)
        e->spec_draft_frac = (double)dbi->weight_bytes / (double)bi->weight_bytes;
    e->spec_ngram_min = p->spec_ngram_min ? p->spec_ngram_min : 1;
    e->spec_ngram_max = QL_MAX(p->spec_ngram_max ? p->spec_ngram_max : 3, e->spec_ngram_min);
    e->spec_layers = spec_layers;
    e->spec_fixed_k = p->spec_fixed_k != 0;
    e->spec_alpha_all = SPEC_ALPHA_PRIOR;
    /* NOTE(spec-prior): SmolLM2-135M on two cores of this project's CPU: ~2.4 ms a step plus
     * ~0.65 ms a token (docs/BENCHMARKS.md); the fit replaces it within a few dozen steps */
    ql_spec_cost_init(&e->spec_cost, 2.4e-3, 0.65e-3);
    /* logits rows: one per sequence, plus the drafts' when speculating */
    e->max_logits_rows = lim.max_num_seqs;
    if (e->spec_k > 0) {
        int64_t want = (int64_t)lim.max_num_seqs * (1 + e->spec_k);
        want = QL_MIN(want, (int64_t)QL_MIN(bi->n_logits_max, lim.max_batched_tokens));
        e->max_logits_rows = (int32_t)QL_MAX(want, (int64_t)lim.max_num_seqs);
        if (e->max_logits_rows == lim.max_num_seqs)
            QL_LOG_WARN("speculative decoding: the backend returns %d logits rows per step, "
                        "none left for drafts", (int)bi->n_logits_max);
    }
    lim.spec_method = e->spec_method;
    lim.spec_k = e->spec_k;
    e->lim = lim;
    e->accepting = 1;
    e->next_handle = 1;
    int rc = QL_ENOMEM;

    ql_kv_params_t kp = ql_kv_params_default();
    kp.n_blocks = lim.n_blocks;
    kp.block_size = lim.block_size;
    kp.n_seq_max = lim.max_num_seqs;
    kp.n_tokens_max = lim.max_model_len;
    kp.prefix_cache = p->disable_prefix_cache ? 0 : 1;
    kp.hash_seed = p->prefix_hash_seed;
    if ((rc = ql_kv_init(&kp, &e->kv)) != 0) goto fail;
    ql_sched_params_t sp = {.max_num_seqs = lim.max_num_seqs,
                            .max_batched_tokens = lim.max_batched_tokens,
                            .max_model_len = lim.max_model_len,
                            .max_logits_rows = e->max_logits_rows};
    if ((rc = ql_sched_init(&sp, e->kv, &e->sched)) != 0) goto fail;
    if ((rc = ql_sampler_ws_init(lim.n_vocab, &e->ws)) != 0) goto fail;
    rc = QL_ENOMEM;
    size_t n_logits;
    if (ql_size_mul((size_t)e->max_logits_rows, (size_t)lim.n_vocab, &n_logits) != 0) goto fail;
    e->logits = malloc(n_logits * sizeof(float));
    e->copy_src = calloc((size_t)lim.max_num_seqs, sizeof(int32_t));
    e->copy_dst = calloc((size_t)lim.max_num_seqs, sizeof(int32_t));
    e->item_choice = calloc((size_t)lim.max_num_seqs, sizeof(choice_t *));
    const int32_t *eog;
    size_t n_eog = ql_tok_eog_ids(tok, &eog);
    e->eog = calloc(n_eog + 1, sizeof(int32_t));
    if (!e->logits || !e->copy_src || !e->copy_dst || !e->item_choice || !e->eog) goto fail;
    if (e->spec_k > 0) {
        const size_t ns = (size_t)lim.max_num_seqs;
        e->spec_p = malloc((size_t)lim.n_vocab * sizeof(float));
        e->spec_r = malloc((size_t)lim.n_vocab * sizeof(float));
        e->spec_buf = calloc(ns * QL_SPEC_K_MAX, sizeof(int32_t));
        e->spec_cand = calloc(ns, sizeof(choice_t *));
        e->spec_alphas = calloc(ns, sizeof(float));
        e->spec_kmax = calloc(ns, sizeof(int32_t));
        e->spec_kplan = calloc(ns, sizeof(int32_t));
        if (!e->spec_p || !e->spec_r || !e->spec_buf || !e->spec_cand || !e->spec_alphas ||
            !e->spec_kmax || !e->spec_kplan)
            goto fail;
    }
    if (e->spec_method == QL_ENGINE_SPEC_DRAFT) {
        ql_kv_params_t dp = ql_kv_params_default();
        dp.n_blocks = dbi->kv.n_blocks;
        dp.block_size = dbi->kv.block_size;
        dp.n_seq_max = lim.max_num_seqs;
        dp.n_tokens_max = lim.max_model_len;
        dp.prefix_cache = 0;
        if ((rc = ql_kv_init(&dp, &e->dkv)) != 0) goto fail;
        rc = QL_ENOMEM;
        e->d_batch_max = dbi->n_batch_tokens_max;
        e->d_tokens = calloc((size_t)e->d_batch_max, sizeof(int32_t));
        e->d_pos = calloc((size_t)e->d_batch_max, sizeof(int32_t));
        e->d_seq = calloc((size_t)e->d_batch_max, sizeof(int32_t));
        e->d_rowof = calloc((size_t)lim.max_num_seqs, sizeof(int32_t));
        if (!e->d_tokens || !e->d_pos || !e->d_seq || !e->d_rowof) goto fail;
    }
    if (e->spec_method == QL_ENGINE_SPEC_LAYERSKIP || e->spec_method == QL_ENGINE_SPEC_DRAFT) {
        const size_t ns = (size_t)lim.max_num_seqs;
        e->ls_tbl_w = e->spec_method == QL_ENGINE_SPEC_LAYERSKIP
                          ? (lim.max_model_len + lim.block_size - 1) / lim.block_size + ls_per
                          : 1;
        e->ls_tables = calloc(ns * (size_t)e->ls_tbl_w, sizeof(int32_t));
        e->ls_tptr = calloc(ns, sizeof(*e->ls_tptr));
        e->ls_tokens = calloc(ns, sizeof(int32_t));
        e->ls_pos = calloc(ns, sizeof(int32_t));
        e->ls_seq = calloc(ns, sizeof(int32_t));
        e->ls_nblocks = calloc(ns, sizeof(int32_t));
        e->ls_seqlen = calloc(ns, sizeof(int32_t));
        e->ls_rows = calloc(ns, sizeof(int32_t));
        e->ls_base = calloc(ns, sizeof(int32_t));
        e->ls_cnb = calloc(ns, sizeof(int32_t));
        size_t nq;
        if (ql_size_mul(ns * (size_t)e->spec_k, (size_t)lim.n_vocab, &nq) != 0) goto fail;
        e->spec_q = malloc(nq * sizeof(float));
        if (!e->ls_tables || !e->ls_tptr || !e->ls_tokens || !e->ls_pos || !e->ls_seq ||
            !e->ls_nblocks || !e->ls_seqlen || !e->ls_rows || !e->ls_base || !e->ls_cnb ||
            !e->spec_q)
            goto fail;
    }
    for (size_t i = 0; i < n_eog; i++)
        if (eog[i] >= 0 && eog[i] < lim.n_vocab) e->eog[e->n_eog++] = eog[i];

    if (pthread_mutex_init(&e->mu, NULL) != 0) goto fail;
    if (pthread_cond_init(&e->cv, NULL) != 0) {
        pthread_mutex_destroy(&e->mu);
        goto fail;
    }
    pthread_mutex_lock(&e->mu);
    publish_locked(e);
    pthread_mutex_unlock(&e->mu);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        pthread_cond_destroy(&e->cv);
        pthread_mutex_destroy(&e->mu);
        rc = QL_EIO;
        ql_errf(err, errlen, "engine: cannot start the engine thread");
        goto fail;
    }
    e->thread_started = 1;
    QL_LOG_INFO("engine: backend %s, max_num_seqs %d, max_batched_tokens %d, max_model_len %d, "
                "%d KV blocks of %d tokens, prefix cache %s, speculation %s (k %d)",
                bi->name ? bi->name : "?", (int)lim.max_num_seqs, (int)lim.max_batched_tokens,
                (int)lim.max_model_len, (int)lim.n_blocks, (int)lim.block_size,
                kp.prefix_cache ? "on" : "off",
                e->spec_method == QL_ENGINE_SPEC_NGRAM       ? "ngram"
                : e->spec_method == QL_ENGINE_SPEC_LAYERSKIP ? "layerskip"
                : e->spec_method == QL_ENGINE_SPEC_DRAFT     ? "draft model"
                                                             : "off",
                (int)e->spec_k);
    *out = e;
    return 0;

fail:
    if (err && errlen && !err[0]) ql_errf(err, errlen, "engine: %s", ql_strerror(rc));
    ql_sched_free(e->sched);
    ql_kv_free(e->kv);
    ql_sampler_ws_free(e->ws);
    free(e->logits);
    free(e->copy_src);
    free(e->copy_dst);
    free(e->item_choice);
    spec_free(e);
    free(e->eog);
    free(e);
    return rc;
}

void ql_engine_shutdown(ql_engine_t *e, int drain) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    e->accepting = 0;
    int mode = drain ? SHUTDOWN_DRAIN : SHUTDOWN_ABORT;
    if (mode > e->shutdown) e->shutdown = mode;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

void ql_engine_free(ql_engine_t *e) {
    if (!e) return;
    if (e->thread_started) {
        ql_engine_shutdown(e, 0);
        pthread_join(e->thread, NULL);
    }
    QL_ASSERT(!e->live_head && !e->inbox_head && !e->graveyard);
    while (e->cancels) {
        cancel_t *c = e->cancels;
        e->cancels = c->next;
        free(c->id);
        free(c);
    }
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->mu);
    ql_sched_free(e->sched);
    ql_kv_free(e->kv);
    ql_sampler_ws_free(e->ws);
    free(e->logits);
    free(e->copy_src);
    free(e->copy_dst);
    free(e->item_choice);
    spec_free(e);
    free(e->eog);
    free(e->text);
    free(e);
}

/* ---- submit / cancel ---- */

static void *arena_copy(ql_arena_t *a, const void *src, size_t n) {
    void *p = ql_arena_alloc(a, n ? n : 1);
    if (p && n) memcpy(p, src, n);
    return p;
}

int ql_engine_submit(ql_engine_t *e, const ql_engine_request_t *q, uint64_t *handle, char *err,
                     size_t errlen) {
    ql_errf(err, errlen, "%s", "");
    if (handle) *handle = 0;
    if (!e || !q) return QL_EINVAL;
    const ql_engine_limits_t *L = &e->lim;
    if (!q->on_event) {
        ql_errf(err, errlen, "no event callback");
        return QL_EINVAL;
    }
    if (!q->prompt || q->n_prompt < 1) {
        ql_errf(err, errlen, "the prompt is empty");
        return QL_EINVAL;
    }
    for (int32_t i = 0; i < q->n_prompt; i++) {
        if (q->prompt[i] < 0 || q->prompt[i] >= L->n_vocab) {
            ql_errf(err, errlen, "prompt token %d is %d, outside the vocabulary [0, %d)", (int)i,
                    (int)q->prompt[i], (int)L->n_vocab);
            return QL_EINVAL;
        }
    }
    int32_t n = q->n ? q->n : 1;
    if (n < 1 || n > L->max_num_seqs) {
        ql_errf(err, errlen, "n = %d is outside [1, %d]", (int)q->n, (int)L->max_num_seqs);
        return QL_EINVAL;
    }
    int rc = ql_sampling_params_validate(&q->sampling, L->n_vocab);
    if (rc != 0) {
        ql_errf(err, errlen, "%s", rc == QL_ERANGE ? "a logit_bias token is outside the vocabulary"
                                                   : "a sampling parameter is out of range");
        return QL_EINVAL;
    }
    if (q->min_tokens < 0 || (q->max_tokens > 0 && q->min_tokens > q->max_tokens)) {
        ql_errf(err, errlen, "min_tokens %d must be in [0, max_tokens %d]", (int)q->min_tokens,
                (int)q->max_tokens);
        return QL_EINVAL;
    }
    if (q->n_stop < 0 || (q->n_stop > 0 && !q->stop) || q->n_stop_token_ids < 0 ||
        (q->n_stop_token_ids > 0 && !q->stop_token_ids)) {
        ql_errf(err, errlen, "bad stop list");
        return QL_EINVAL;
    }
    for (int32_t i = 0; i < q->n_stop; i++) {
        if (!q->stop[i].text || q->stop[i].len == 0) {
            ql_errf(err, errlen, "stop sequence %d is empty", (int)i);
            return QL_EINVAL;
        }
    }
    for (int32_t i = 0; i < q->n_stop_token_ids; i++) {
        if (q->stop_token_ids[i] < 0 || q->stop_token_ids[i] >= L->n_vocab) {
            ql_errf(err, errlen, "stop token id %d is outside the vocabulary",
                    (int)q->stop_token_ids[i]);
            return QL_EINVAL;
        }
    }
    if (q->spec_tokens < -1 || q->spec_tokens > QL_SPEC_K_MAX) {
        ql_errf(err, errlen, "num_speculative_tokens %d is outside [-1, %d]", (int)q->spec_tokens,
                QL_SPEC_K_MAX);
        return QL_EINVAL;
    }
    int32_t max_tokens = q->max_tokens;
    if (max_tokens <= 0) {
        if (q->n_prompt >= L->max_model_len) {
            ql_errf(err, errlen,
                    "This model's maximum context length is %d tokens. However, your prompt has %d "
                    "tokens, which leaves no room to generate.",
                    (int)L->max_model_len, (int)q->n_prompt);
            return QL_ERANGE;
        }
        max_tokens = L->max_model_len - q->n_prompt;
        if (q->min_tokens > max_tokens) {
            ql_errf(err, errlen, "min_tokens %d exceeds the %d tokens left in the context",
                    (int)q->min_tokens, (int)max_tokens);
            return QL_ERANGE;
        }
    }
    ql_sched_req_t sr = {.prompt = q->prompt, .n_prompt = q->n_prompt, .max_tokens = max_tokens,
                         .n_choices = n};
    rc = ql_sched_check_fit(e->sched, &sr);
    if (rc == QL_ERANGE) {
        ql_errf(err, errlen,
                "This model's maximum context length is %d tokens. However, you requested %lld "
                "tokens (%d in the prompt, %d for the completion).",
                (int)L->max_model_len, (long long)q->n_prompt + max_tokens, (int)q->n_prompt,
                (int)max_tokens);
        return rc;
    }
    if (rc == QL_ENOSPC) {
        ql_errf(err, errlen,
                "The request needs up to %lld tokens of KV cache, more than the whole pool holds "
                "(%lld tokens); lower max_tokens or the prompt.",
                (long long)q->n_prompt + max_tokens - 1, (long long)L->n_blocks * L->block_size);
        return rc;
    }
    if (rc != 0) {
        ql_errf(err, errlen, "invalid request");
        return rc;
    }

    /* ---- the copy: one arena per request ---- */
    ereq_t *r = calloc(1, sizeof(*r));
    if (!r) return QL_ENOMEM;
    ql_arena_init(&r->arena, 4096);
    ql_arena_t *a = &r->arena;
    const char *id = q->id ? q->id : "";
    const int bans = q->min_tokens > 0;
    int32_t n_bans = bans ? (q->ignore_eos ? 0 : e->n_eog) + q->n_stop_token_ids : 0;
    int32_t n_bias = q->sampling.n_logit_bias + n_bans;
    r->id = ql_arena_strndup(a, id, strlen(id));
    r->prompt = arena_copy(a, q->prompt, (size_t)q->n_prompt * sizeof(int32_t));
    ql_logit_bias_t *bias = ql_arena_alloc(a, (size_t)(n_bias ? n_bias : 1) * sizeof(*bias));
    r->stops = ql_arena_alloc(a, (size_t)(q->n_stop ? q->n_stop : 1) * sizeof(ql_stop_str_t));
    r->stop_ids = arena_copy(a, q->stop_token_ids, (size_t)q->n_stop_token_ids * sizeof(int32_t));
    r->choices = ql_arena_alloc(a, (size_t)n * sizeof(choice_t));
    r->reasons = ql_arena_alloc(a, (size_t)n * sizeof(ql_finish_reason_t));
    if (!r->id || !r->prompt || !bias || !r->stops || !r->stop_ids || !r->choices || !r->reasons)
        goto nomem;
    for (int32_t i = 0; i < q->n_stop; i++) {
        char *t = arena_copy(a, q->stop[i].text, q->stop[i].len);
        if (!t) goto nomem;
        r->stops[i].text = t;
        r->stops[i].len = q->stop[i].len;
    }
    if (q->sampling.n_logit_bias > 0)
        memcpy(bias, q->sampling.logit_bias, (size_t)q->sampling.n_logit_bias * sizeof(*bias));
    int32_t nb = q->sampling.n_logit_bias;
    if (bans) {
        if (!q->ignore_eos)
            for (int32_t i = 0; i < e->n_eog; i++)
                bias[nb++] = (ql_logit_bias_t){e->eog[i], QL_SAMPLING_BIAS_MIN};
        for (int32_t i = 0; i < q->n_stop_token_ids; i++)
            bias[nb++] = (ql_logit_bias_t){q->stop_token_ids[i], QL_SAMPLING_BIAS_MIN};
    }
    QL_ASSERT(nb == n_bias);
    r->n_prompt = q->n_prompt;
    r->max_tokens = max_tokens;
    r->min_tokens = q->min_tokens;
    r->ignore_eos = q->ignore_eos != 0;
    r->priority = q->priority;
    r->spec_k = q->spec_tokens < 0    ? 0
                : q->spec_tokens == 0 ? L->spec_k
                                      : QL_MIN(q->spec_tokens, L->spec_k);
    r->sampling = q->sampling;
    r->sampling.logit_bias = bias;
    r->sampling.n_logit_bias = n_bias;
    r->n_bias_user = q->sampling.n_logit_bias;
    r->n_bias_all = n_bias;
    r->n_stops = q->n_stop;
    r->n_stop_ids = q->n_stop_token_ids;
    r->n_choices = n;
    r->n_live = n;
    r->cb = q->on_event;
    r->ud = q->user_data;
    r->stats.n_prompt_tokens = q->n_prompt;
    memset(r->choices, 0, (size_t)n * sizeof(choice_t));
    for (int32_t i = 0; i < n; i++) {
        choice_t *c = &r->choices[i];
        c->req = r;
        c->index = i;
        c->seq = -1;
        c->spec_alpha = SPEC_ALPHA_PRIOR;
        c->dseq = -1;
        r->reasons[i] = QL_FINISH_REASON_NONE;
        ql_sampling_params_t sp = r->sampling;
        sp.seed = q->sampling.seed + (uint64_t)i;
        rc = ql_sampler_init(&c->sampler, &sp, L->n_vocab);
        QL_ASSERT(rc == 0); /* validated above; the bans are ids inside the vocabulary */
        c->bans_on = bans;
        if (!bans) c->sampler.params.n_logit_bias = r->n_bias_user;
        ql_detok_init(&c->detok, e->tok, q->render_special ? QL_TOK_RENDER_SPECIAL : 0);
        rc = ql_stop_init(&c->stop, r->stops, r->n_stops);
        QL_ASSERT(rc == 0);
    }
    r->stats.t_submit_ns = ql_time_ns();

    pthread_mutex_lock(&e->mu);
    if (!e->accepting) {
        int healthy = e->healthy;
        if (healthy) ql_errf(err, errlen, "the engine is shutting down");
        else ql_errf(err, errlen, "the engine is unhealthy: %s", e->unhealthy_msg);
        pthread_mutex_unlock(&e->mu);
        req_free(r);
        return QL_ESTATE;
    }
    r->handle = e->next_handle++;
    if (e->inbox_tail) e->inbox_tail->next = r;
    else e->inbox_head = r;
    e->inbox_tail = r;
    e->n_inbox++;
    e->counters.n_waiting++;
    if (handle) *handle = r->handle;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    QL_RLOG_DEBUG(r->id, "submitted: %d prompt tokens, max_tokens %d, n %d", (int)r->n_prompt,
                  (int)r->max_tokens, (int)n);
    return 0;

nomem:
    req_free(r);
    ql_errf(err, errlen, "out of memory");
    return QL_ENOMEM;
}

static int push_cancel(ql_engine_t *e, uint64_t handle, const char *id) {
    cancel_t *c = ql_xcalloc(1, sizeof(*c));
    c->handle = handle;
    c->id = id ? ql_xstrdup(id) : NULL;
    pthread_mutex_lock(&e->mu);
    if (e->stopped) { /* nothing left to cancel */
        pthread_mutex_unlock(&e->mu);
        free(c->id);
        free(c);
        return 0;
    }
    c->next = e->cancels;
    e->cancels = c;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int ql_engine_cancel(ql_engine_t *e, uint64_t handle) {
    if (!e || handle == 0) return QL_EINVAL;
    return push_cancel(e, handle, NULL);
}

int ql_engine_cancel_id(ql_engine_t *e, const char *id) {
    if (!e || !id) return QL_EINVAL;
    return push_cancel(e, 0, id);
}
