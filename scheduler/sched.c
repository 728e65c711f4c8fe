/*
 * scheduler/sched.c — the scheduling policy (see scheduler.h): a waiting queue ordered by
 * (priority, arrival), a running list ordered by (priority, admission), and one step planned at
 * a time over the block manager. Sequence slots and the queue grow at ql_sched_add; planning a
 * step allocates nothing.
 */
#define QL_LOG_MODULE "sched"
#include "scheduler/scheduler.h"

#include <stdlib.h>
#include <string.h>

typedef struct sseq_s {
    int32_t used;            /* 0: the slot is free */
    ql_sched_state_t state;
    int32_t *tokens;         /* [cap] = n_prompt + max_tokens */
    int32_t n_tokens, n_prompt, max_tokens, cap;
    int32_t kv;              /* block manager sequence while running, else -1 */
    int32_t n_cached_prompt; /* -1 until the first admission */
    int32_t n_preemptions;
    int32_t n_forks_pending;
    int32_t priority;
    uint64_t arrival;        /* order of ql_sched_add; a fork keeps its parent's */
    uint32_t sub;            /* 0 for an added sequence, k for its k-th fork: breaks ties */
    uint64_t admit;          /* order of the latest admission (or fork) */
    int32_t step_tokens;     /* tokens fed in the pending step, 0 when none */
    int32_t n_draft;         /* drafts at tokens[n_tokens, n_tokens + n_draft) (spec) */
    int32_t verify_pending;  /* drafts fed by the last step, awaiting ql_sched_spec_commit */
    void *user;
} sseq_t;

struct ql_sched_s {
    ql_sched_limits_t lim;
    int32_t max_logits_rows;
    ql_kv_t *kv;

    sseq_t *seqs;            /* [n_seqs_cap] slots */
    int32_t n_seqs_cap;
    int32_t *free_ids;       /* [n_seqs_cap] stack of free slots */
    int32_t n_free_ids;

    int32_t *waiting;        /* [waiting_cap], sorted by (priority, arrival, sub) */
    int32_t n_waiting, waiting_cap;
    int32_t *running;        /* [max_num_seqs], sorted by (priority, admit) */
    int32_t n_running;
    int32_t n_slots_used;    /* running + their pending forks */

    uint64_t next_arrival, next_admit;
    uint64_t n_preemptions, n_steps;
    int step_pending;

    /* the step, sized at init */
    int32_t *b_tokens, *b_pos, *b_seq_of_token; /* [max_batched_tokens] */
    const int32_t **b_tables;                   /* [max_num_seqs] */
    int32_t *b_n_blocks, *b_seq_len, *b_logits_rows;
    ql_kv_copy_t *copies;
    ql_sched_item_t *items;
    int32_t *admitted, *preempted;
    ql_sched_step_t step;
};

static inline int32_t ceil_div(int32_t a, int32_t b) { return (int32_t)(((int64_t)a + b - 1) / b); }

static inline int seq_ok(const ql_sched_t *s, int32_t id) {
    return s && id >= 0 && id < s->n_seqs_cap && s->seqs[id].used;
}

/* waiting order: priority, then arrival, then fork ordinal */
static int waits_before(const sseq_t *a, const sseq_t *b) {
    if (a->priority != b->priority) return a->priority < b->priority;
    if (a->arrival != b->arrival) return a->arrival < b->arrival;
    return a->sub < b->sub;
}

/* running order: priority, then admission */
static int runs_before(const sseq_t *a, const sseq_t *b) {
    if (a->priority != b->priority) return a->priority < b->priority;
    return a->admit < b->admit;
}

/* ---- init / free ---- */

ql_sched_params_t ql_sched_params_default(void) {
    ql_sched_params_t p;
    memset(&p, 0, sizeof(p));
    p.max_num_seqs = 64;
    p.max_batched_tokens = 512;
    p.max_model_len = 0;
    p.max_logits_rows = 0;
    return p;
}

void ql_sched_free(ql_sched_t *s) {
    if (!s) return;
    for (int32_t i = 0; i < s->n_seqs_cap; i++) {
        if (!s->seqs[i].used) continue;
        if (s->seqs[i].kv >= 0) ql_kv_seq_close(s->kv, s->seqs[i].kv);
        free(s->seqs[i].tokens);
    }
    free(s->seqs);
    free(s->free_ids);
    free(s->waiting);
    free(s->running);
    free(s->b_tokens);
    free(s->b_pos);
    free(s->b_seq_of_token);
    free((void *)s->b_tables);
    free(s->b_n_blocks);
    free(s->b_seq_len);
    free(s->b_logits_rows);
    free(s->copies);
    free(s->items);
    free(s->admitted);
    free(s->preempted);
    free(s);
}

int ql_sched_init(const ql_sched_params_t *p, ql_kv_t *kv, ql_sched_t **out) {
    if (!p || !kv || !out) return QL_EINVAL;
    *out = NULL;
    ql_kv_stats_t ks;
    ql_kv_get_stats(kv, &ks);
    int32_t bs = ql_kv_block_size(kv);
    int32_t max_len = p->max_model_len;
    /* the manager's n_seq_max and n_tokens_max are not readable through kv-cache.h: its table
     * width bounds the second, the caller (who made both) guarantees both (scheduler.h) */
    int32_t max_rows = p->max_logits_rows ? p->max_logits_rows : p->max_num_seqs;
    if (p->max_num_seqs < 1 || p->max_batched_tokens < p->max_num_seqs || max_len < 2 ||
        max_len > ql_kv_max_blocks_per_seq(kv) * bs || max_rows < p->max_num_seqs)
        return QL_EINVAL;

    ql_sched_t *s = calloc(1, sizeof(*s));
    if (!s) return QL_ENOMEM;
    s->kv = kv;
    s->lim.max_num_seqs = p->max_num_seqs;
    s->lim.max_batched_tokens = p->max_batched_tokens;
    s->lim.max_model_len = max_len;
    s->lim.block_size = bs;
    s->lim.n_blocks = ks.n_blocks;
    s->max_logits_rows = max_rows;
    size_t nt = (size_t)p->max_batched_tokens, ns = (size_t)p->max_num_seqs;
    s->running = calloc(ns, sizeof(int32_t));
    s->b_tokens = calloc(nt, sizeof(int32_t));
    s->b_pos = calloc(nt, sizeof(int32_t));
    s->b_seq_of_token = calloc(nt, sizeof(int32_t));
    s->b_tables = calloc(ns, sizeof(*s->b_tables));
    s->b_n_blocks = calloc(ns, sizeof(int32_t));
    s->b_seq_len = calloc(ns, sizeof(int32_t));
    s->b_logits_rows = calloc((size_t)max_rows, sizeof(int32_t));
    s->copies = calloc(ns, sizeof(ql_kv_copy_t));
    s->items = calloc(ns, sizeof(ql_sched_item_t));
    s->admitted = calloc(ns, sizeof(int32_t));
    s->preempted = calloc(ns, sizeof(int32_t));
    if (!s->running || !s->b_tokens || !s->b_pos || !s->b_seq_of_token || !s->b_tables ||
        !s->b_n_blocks || !s->b_seq_len || !s->b_logits_rows || !s->copies || !s->items ||
        !s->admitted || !s->preempted) {
        ql_sched_free(s);
        return QL_ENOMEM;
    }
    *out = s;
    return 0;
}

/* ---- limits ---- */

int ql_sched_check_fit(const ql_sched_t *s, const ql_sched_req_t *r) {
    if (!s || !r || r->n_prompt < 1 || !r->prompt || r->max_tokens < 1 || r->n_choices < 1)
        return QL_EINVAL;
    if (r->n_choices > s->lim.max_num_seqs) return QL_EINVAL;
    int64_t total = (int64_t)r->n_prompt + r->max_tokens;
    if (total > s->lim.max_model_len) return QL_ERANGE;
    if (ceil_div((int32_t)total - 1, s->lim.block_size) > s->lim.n_blocks) return QL_ENOSPC;
    return 0;
}

void ql_sched_get_limits(const ql_sched_t *s, ql_sched_limits_t *out) { *out = s->lim; }

void ql_sched_get_counts(const ql_sched_t *s, ql_sched_counts_t *out) {
    memset(out, 0, sizeof(*out));
    out->n_running = s->n_running;
    out->n_waiting = s->n_waiting;
    out->n_slots_used = s->n_slots_used;
    out->n_preemptions = s->n_preemptions;
    out->n_steps = s->n_steps;
}

/* ---- sequence slots and lists ---- */

/* A free slot, growing the table when none is left. -1 on allocation failure. */
static int32_t slot_take(ql_sched_t *s) {
    if (s->n_free_ids == 0) {
        int32_t old = s->n_seqs_cap, cap = old ? old * 2 : 16;
        sseq_t *seqs = realloc(s->seqs, (size_t)cap * sizeof(*seqs));
        if (!seqs) return -1;
        s->seqs = seqs;
        int32_t *ids = realloc(s->free_ids, (size_t)cap * sizeof(*ids));
        if (!ids) return -1; /* seqs grew; harmless, the next call retries */
        s->free_ids = ids;
        memset(seqs + old, 0, (size_t)(cap - old) * sizeof(*seqs));
        for (int32_t i = cap - 1; i >= old; i--) /* low ids first */
            s->free_ids[s->n_free_ids++] = i;
        s->n_seqs_cap = cap;
    }
    int32_t id = s->free_ids[--s->n_free_ids];
    memset(&s->seqs[id], 0, sizeof(sseq_t));
    s->seqs[id].used = 1;
    s->seqs[id].kv = -1;
    return id;
}

static void slot_release(ql_sched_t *s, int32_t id) {
    free(s->seqs[id].tokens);
    memset(&s->seqs[id], 0, sizeof(sseq_t));
    s->free_ids[s->n_free_ids++] = id;
}

/* NOTE(queue-room): the queue always has room for every live sequence plus one, so that
 * preempting (which moves a running sequence to the queue) never allocates and never fails.
 * ql_sched_add and ql_sched_fork reserve it before a sequence is created. */
static int waiting_reserve(ql_sched_t *s) {
    int32_t need = s->n_waiting + s->n_running + 1;
    if (need <= s->waiting_cap) return 0;
    int32_t cap = s->waiting_cap ? s->waiting_cap : 16;
    while (cap < need) cap *= 2;
    int32_t *w = realloc(s->waiting, (size_t)cap * sizeof(*w));
    if (!w) return QL_ENOMEM;
    s->waiting = w;
    s->waiting_cap = cap;
    return 0;
}

/* note: call only if waiting_reserve() succeeded since the last sequence was created */
static void waiting_insert(ql_sched_t *s, int32_t id) {
    QL_ASSERT(s->n_waiting < s->waiting_cap);
    const sseq_t *q = &s->seqs[id];
    int32_t lo = 0, hi = s->n_waiting; /* first position whose sequence waits after q */
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (waits_before(&s->seqs[s->waiting[mid]], q)) lo = mid + 1;
        else hi = mid;
    }
    memmove(s->waiting + lo + 1, s->waiting + lo, (size_t)(s->n_waiting - lo) * sizeof(int32_t));
    s->waiting[lo] = id;
    s->n_waiting++;
    s->seqs[id].state = QL_SCHED_STATE_WAITING;
}

static void list_remove(int32_t *list, int32_t *n, int32_t id) {
    for (int32_t i = 0; i < *n; i++) {
        if (list[i] != id) continue;
        memmove(list + i, list + i + 1, (size_t)(*n - i - 1) * sizeof(int32_t));
        (*n)--;
        return;
    }
    QL_ASSERT(!"sequence not in its list");
}

/* note: call only if n_running < max_num_seqs */
static void running_insert(ql_sched_t *s, int32_t id) {
    QL_ASSERT(s->n_running < s->lim.max_num_seqs);
    const sseq_t *q = &s->seqs[id];
    int32_t i = s->n_running;
    while (i > 0 && runs_before(q, &s->seqs[s->running[i - 1]])) i--;
    memmove(s->running + i + 1, s->running + i, (size_t)(s->n_running - i) * sizeof(int32_t));
    s->running[i] = id;
    s->n_running++;
    s->seqs[id].state = QL_SCHED_STATE_RUNNING;
}

/* ---- adding, forking, removing ---- */

int ql_sched_add(ql_sched_t *s, const ql_sched_req_t *r, int32_t *seq_out) {
    if (!seq_out) return QL_EINVAL;
    int rc = ql_sched_check_fit(s, r);
    if (rc != 0) return rc;
    if (s->step_pending) return QL_ESTATE;
    if (waiting_reserve(s) != 0) return QL_ENOMEM;
    int32_t cap = r->n_prompt + r->max_tokens;
    int32_t *tokens = malloc((size_t)cap * sizeof(int32_t));
    if (!tokens) return QL_ENOMEM;
    int32_t id = slot_take(s);
    if (id < 0) {
        free(tokens);
        return QL_ENOMEM;
    }
    sseq_t *q = &s->seqs[id];
    memcpy(tokens, r->prompt, (size_t)r->n_prompt * sizeof(int32_t));
    q->tokens = tokens;
    q->cap = cap;
    q->n_tokens = q->n_prompt = r->n_prompt;
    q->max_tokens = r->max_tokens;
    q->n_cached_prompt = -1;
    q->n_forks_pending = r->n_choices - 1;
    q->priority = r->priority;
    q->arrival = s->next_arrival++;
    q->user = r->user;
    waiting_insert(s, id);
    *seq_out = id;
    return 0;
}

int ql_sched_fork(ql_sched_t *s, int32_t seq, void *user, int32_t *child_out) {
    if (!seq_ok(s, seq) || !child_out || s->seqs[seq].state != QL_SCHED_STATE_RUNNING)
        return QL_EINVAL;
    const sseq_t *p = &s->seqs[seq];
    if (s->step_pending || p->n_forks_pending < 1 || p->n_tokens != p->n_prompt ||
        ql_kv_seq_n_computed(s->kv, p->kv) != p->n_tokens)
        return QL_ESTATE;
    if (waiting_reserve(s) != 0) return QL_ENOMEM;
    int32_t *tokens = malloc((size_t)p->cap * sizeof(int32_t));
    if (!tokens) return QL_ENOMEM;
    int32_t id = slot_take(s); /* may move s->seqs */
    if (id < 0) {
        free(tokens);
        return QL_ENOMEM;
    }
    sseq_t *par = &s->seqs[seq], *c = &s->seqs[id];
    int32_t kv_child;
    int rc = ql_kv_seq_fork(s->kv, par->kv, &kv_child);
    if (rc != 0) { /* the reservation makes this impossible: n_seq_max >= max_num_seqs */
        free(tokens);
        slot_release(s, id);
        return rc == QL_ENOSPC ? QL_EINTERNAL : rc;
    }
    memcpy(tokens, par->tokens, (size_t)par->n_tokens * sizeof(int32_t));
    c->tokens = tokens;
    c->cap = par->cap;
    c->n_tokens = par->n_tokens;
    c->n_prompt = par->n_prompt;
    c->max_tokens = par->max_tokens;
    c->kv = kv_child;
    c->n_cached_prompt = par->n_cached_prompt;
    c->priority = par->priority;
    c->arrival = par->arrival;
    c->sub = (uint32_t)par->n_forks_pending; /* distinct per child */
    c->admit = s->next_admit++;
    c->user = user;
    par->n_forks_pending--;
    /* the parent's reservation covered this slot: n_slots_used is unchanged */
    running_insert(s, id);
    *child_out = id;
    return 0;
}

int ql_sched_remove(ql_sched_t *s, int32_t seq) {
    if (!seq_ok(s, seq)) return QL_EINVAL;
    sseq_t *q = &s->seqs[seq];
    if (q->state == QL_SCHED_STATE_RUNNING) {
        list_remove(s->running, &s->n_running, seq);
        s->n_slots_used -= 1 + q->n_forks_pending;
        int rc = ql_kv_seq_close(s->kv, q->kv);
        QL_ASSERT(rc == 0);
    } else {
        list_remove(s->waiting, &s->n_waiting, seq);
    }
    slot_release(s, seq);
    return 0;
}

int ql_sched_push_token(ql_sched_t *s, int32_t seq, int32_t token) {
    if (!seq_ok(s, seq) || s->seqs[seq].state != QL_SCHED_STATE_RUNNING) return QL_EINVAL;
    sseq_t *q = &s->seqs[seq];
    if (s->step_pending || q->verify_pending || ql_kv_seq_n_computed(s->kv, q->kv) != q->n_tokens)
        return QL_ESTATE;
    if (q->n_tokens - q->n_prompt >= q->max_tokens) return QL_ERANGE;
    q->tokens[q->n_tokens++] = token;
    q->n_draft = 0; /* they followed the old last token */
    return 0;
}

int ql_sched_seq_info(const ql_sched_t *s, int32_t seq, ql_sched_seq_info_t *out) {
    if (!seq_ok(s, seq) || !out) return QL_EINVAL;
    const sseq_t *q = &s->seqs[seq];
    memset(out, 0, sizeof(*out));
    out->state = q->state;
    out->tokens = q->tokens;
    if (q->kv >= 0) out->block_table = ql_kv_seq_block_table(s->kv, q->kv, &out->n_blocks);
    out->n_tokens = q->n_tokens;
    out->n_prompt = q->n_prompt;
    out->max_tokens = q->max_tokens;
    out->n_computed = q->kv >= 0 ? ql_kv_seq_n_computed(s->kv, q->kv) : 0;
    out->n_cached_prompt = q->n_cached_prompt;
    out->n_preemptions = q->n_preemptions;
    out->n_forks_pending = q->n_forks_pending;
    out->n_draft = q->verify_pending ? q->verify_pending : q->n_draft;
    out->verify_pending = q->verify_pending > 0;
    out->priority = q->priority;
    out->user = q->user;
    return 0;
}

/* ---- planning a step ---- */

/* Frees a running sequence's KV and puts it back in the queue (recompute on readmission). */
static void preempt(ql_sched_t *s, int32_t id) {
    sseq_t *q = &s->seqs[id];
    list_remove(s->running, &s->n_running, id);
    s->n_slots_used -= 1 + q->n_forks_pending;
    int rc = ql_kv_seq_close(s->kv, q->kv);
    QL_ASSERT(rc == 0);
    q->kv = -1;
    q->n_draft = 0;
    q->verify_pending = 0;
    q->n_preemptions++;
    s->n_preemptions++;
    waiting_insert(s, id); /* NOTE(queue-room) */
    s->preempted[s->step.n_preempted++] = id;
}

/* Adds sequence `id` to the step with `n` tokens starting at its KV's current end (already
 * appended). */
static void add_item(ql_sched_t *s, int32_t id, int32_t pos, int32_t n, int32_t n_draft) {
    sseq_t *q = &s->seqs[id];
    ql_sched_step_t *st = &s->step;
    ql_batch_t *b = &st->batch;
    int32_t i = st->n_items++;
    int32_t nb;
    s->b_tables[i] = ql_kv_seq_block_table(s->kv, q->kv, &nb);
    s->b_n_blocks[i] = nb;
    s->b_seq_len[i] = pos + n;
    for (int32_t k = 0; k < n; k++) {
        s->b_tokens[b->n_tokens + k] = q->tokens[pos + k];
        s->b_pos[b->n_tokens + k] = pos + k;
        s->b_seq_of_token[b->n_tokens + k] = i;
    }
    int32_t row = -1;
    if (n_draft > 0) { /* a verify: logits after the last known token and after each draft */
        row = b->n_logits;
        for (int32_t k = 0; k < n; k++) s->b_logits_rows[b->n_logits++] = b->n_tokens + k;
    } else if (pos + n == q->n_tokens) {
        row = b->n_logits++;
        s->b_logits_rows[row] = b->n_tokens + n - 1;
    }
    b->n_tokens += n;
    b->n_seqs++;
    s->items[i] = (ql_sched_item_t){
        .seq = id, .pos = pos, .n_tokens = n, .logits_row = row, .n_draft = n_draft};
    q->step_tokens = n;
    if (n_draft > 0) {
        st->n_decode_tokens += 1;
        st->n_draft_tokens += n_draft;
    } else if (n == 1 && pos >= q->n_prompt && pos == q->n_tokens - 1) {
        st->n_decode_tokens += 1;
    } else {
        st->n_prefill_tokens += n;
    }
}

static void note_copy(ql_sched_t *s, const ql_kv_copy_t *c) {
    if (c->src < 0) return;
    QL_ASSERT(s->step.n_copies < s->lim.max_num_seqs); /* one append per sequence per step */
    s->copies[s->step.n_copies++] = *c;
}

/* Serves running sequences, oldest admission first; preempts from the back when blocks run
 * out. Returns the token budget left, or a negative status. */
static int32_t schedule_running(ql_sched_t *s, int32_t budget) {
    for (int32_t i = 0; i < s->n_running && budget > 0;) {
        int32_t id = s->running[i];
        sseq_t *q = &s->seqs[id];
        if (q->verify_pending) { /* the engine did not commit: roll every draft back */
            QL_LOG_WARN("sequence %d: verify not committed; drafts rolled back", (int)id);
            int rc = ql_sched_spec_commit(s, id, 0);
            QL_ASSERT(rc == 0);
        }
        int32_t pos = ql_kv_seq_n_tokens(s->kv, q->kv);
        int32_t n = QL_MIN(q->n_tokens - pos, budget);
        if (n <= 0) { /* nothing to feed: a fork waiting for its first token */
            i++;
            continue;
        }
        int32_t n_draft = 0;
        if (q->n_draft > 0 && n == 1 && pos == q->n_tokens - 1) {
            /* NOTE(draft-budget): one token kept for each running sequence behind this one;
             * drafts use only the logits rows beyond one per seat (max_num_seqs); drafts that
             * do not fit the free blocks are dropped rather than preempting anyone for them */
            int32_t behind = s->n_running - i - 1;
            int32_t rows_left =
                s->max_logits_rows - s->lim.max_num_seqs - s->step.n_draft_tokens;
            n_draft = QL_MIN(q->n_draft, QL_MIN(budget - 1 - behind, rows_left));
            if (n_draft > 0) {
                int32_t need = ql_kv_seq_blocks_needed(s->kv, q->kv, 1 + n_draft);
                if (need < 0 || need > ql_kv_n_blocks_available(s->kv)) n_draft = 0;
            }
            n_draft = QL_MAX(n_draft, 0);
            n += n_draft;
        }
        q->n_draft = 0;
        int self_preempted = 0;
        for (;;) {
            int32_t need = ql_kv_seq_blocks_needed(s->kv, q->kv, n);
            if (need < 0) return QL_EINTERNAL;
            if (need <= ql_kv_n_blocks_available(s->kv)) break;
            int32_t victim = s->running[s->n_running - 1];
            preempt(s, victim);
            if (victim == id) {
                self_preempted = 1;
                break;
            }
        }
        if (self_preempted) break; /* it was the last one: nothing after it */
        ql_kv_copy_t copy;
        int rc = ql_kv_seq_append(s->kv, q->kv, q->tokens + pos, n, &copy);
        if (rc != 0) {
            QL_LOG_ERROR("append of %d tokens refused (%d) after the pool said yes", (int)n, rc);
            return QL_EINTERNAL;
        }
        note_copy(s, &copy);
        add_item(s, id, pos, n, n_draft);
        budget -= n;
        i++;
    }
    return budget;
}

/* Admits waiting sequences in queue order while seats, budget and blocks allow. */
static int schedule_waiting(ql_sched_t *s, int32_t budget) {
    const int32_t bs = s->lim.block_size;
    while (s->n_waiting > 0 && budget > 0) {
        int32_t id = s->waiting[0];
        sseq_t *q = &s->seqs[id];
        int32_t seats = 1 + q->n_forks_pending;
        if (s->n_slots_used + seats > s->lim.max_num_seqs) break;
        ql_kv_probe_t pr;
        if (ql_kv_prefix_probe(s->kv, q->tokens, q->n_tokens, &pr) != 0) return QL_EINTERNAL;
        int32_t cached = pr.n_tokens_cached;
        int32_t n = QL_MIN(q->n_tokens - cached, budget);
        int32_t need = ceil_div(cached + n, bs) - cached / bs + pr.n_blocks_reclaimed;
        if (need > ql_kv_n_blocks_available(s->kv)) break;
        int32_t kvs;
        int rc = ql_kv_seq_open(s->kv, q->tokens, q->n_tokens, &kvs);
        if (rc != 0) {
            QL_LOG_ERROR("kv open refused (%d) with %d of %d seats used", rc,
                         (int)s->n_slots_used, (int)s->lim.max_num_seqs);
            return QL_EINTERNAL;
        }
        QL_ASSERT(ql_kv_seq_n_tokens(s->kv, kvs) == cached);
        ql_kv_copy_t copy;
        rc = ql_kv_seq_append(s->kv, kvs, q->tokens + cached, n, &copy);
        if (rc != 0) {
            ql_kv_seq_close(s->kv, kvs);
            QL_LOG_ERROR("append of %d tokens refused (%d) at admission", (int)n, rc);
            return QL_EINTERNAL;
        }
        note_copy(s, &copy);
        q->kv = kvs;
        if (q->n_cached_prompt < 0) q->n_cached_prompt = QL_MIN(cached, q->n_prompt);
        q->admit = s->next_admit++;
        s->n_waiting--;
        memmove(s->waiting, s->waiting + 1, (size_t)s->n_waiting * sizeof(int32_t));
        running_insert(s, id);
        s->n_slots_used += seats;
        s->admitted[s->step.n_admitted++] = id;
        add_item(s, id, cached, n, 0);
        budget -= n;
    }
    return 0;
}

int ql_sched_schedule(ql_sched_t *s, ql_sched_step_t *step) {
    if (!s || !step) return QL_EINVAL;
    if (s->step_pending) return QL_ESTATE;
    ql_sched_step_t *st = &s->step;
    memset(st, 0, sizeof(*st));
    st->batch.tokens = s->b_tokens;
    st->batch.pos = s->b_pos;
    st->batch.seq_of_token = s->b_seq_of_token;
    st->batch.block_tables = s->b_tables;
    st->batch.n_blocks = s->b_n_blocks;
    st->batch.seq_len = s->b_seq_len;
    st->batch.logits_rows = s->b_logits_rows;
    st->copies = s->copies;
    st->items = s->items;
    st->admitted = s->admitted;
    st->preempted = s->preempted;

    int32_t budget = schedule_running(s, s->lim.max_batched_tokens);
    int rc = budget < 0 ? budget : 0;
    if (rc == 0 && st->n_preempted == 0) rc = schedule_waiting(s, budget);
    if (st->n_items > 0) {
        s->step_pending = 1;
        s->n_steps++;
    }
    *step = *st;
    return rc;
}

int ql_sched_step_done(ql_sched_t *s) {
    if (!s) return QL_EINVAL;
    if (!s->step_pending) return QL_ESTATE;
    for (int32_t i = 0; i < s->step.n_items; i++) {
        const ql_sched_item_t *it = &s->items[i];
        if (!seq_ok(s, it->seq)) continue; /* removed since */
        sseq_t *q = &s->seqs[it->seq];
        if (q->state != QL_SCHED_STATE_RUNNING || q->step_tokens == 0) continue;
        q->step_tokens = 0;
        /* a verify: only the last known token's KV is final; the drafts' wait for the commit
         * (NOTE(rollback) in ql_sched_spec_commit) */
        int32_t done = it->n_draft > 0 ? it->pos + 1 : it->pos + it->n_tokens;
        q->verify_pending = it->n_draft;
        int rc = ql_kv_seq_set_computed(s->kv, q->kv, done);
        QL_ASSERT(rc == 0);
    }
    s->step_pending = 0;
    return 0;
}

/* ---- speculative decoding ---- */

int32_t ql_sched_set_draft(ql_sched_t *s, int32_t seq, const int32_t *tokens, int32_t n_draft) {
    if (!seq_ok(s, seq) || s->seqs[seq].state != QL_SCHED_STATE_RUNNING || n_draft < 0 ||
        (n_draft > 0 && !tokens))
        return QL_EINVAL;
    sseq_t *q = &s->seqs[seq];
    if (s->step_pending || q->verify_pending || q->n_tokens <= q->n_prompt ||
        ql_kv_seq_n_tokens(s->kv, q->kv) != q->n_tokens - 1 ||
        ql_kv_seq_n_computed(s->kv, q->kv) != q->n_tokens - 1)
        return QL_ESTATE;
    /* accepting every draft and sampling one more token must stay within max_tokens (and so
     * within the token buffer, which holds n_prompt + max_tokens) */
    int32_t room = q->max_tokens - (q->n_tokens - q->n_prompt) - 1;
    n_draft = QL_MIN(n_draft, QL_MAX(room, 0));
    if (n_draft > 0) memcpy(q->tokens + q->n_tokens, tokens, (size_t)n_draft * sizeof(int32_t));
    q->n_draft = n_draft;
    return n_draft;
}

/* NOTE(rollback): the verify step appended the drafts' slots and wrote their KV, but step_done
 * marked only the last known token computed. The commit truncates the block manager's sequence
 * to the accepted length first (blocks holding only rejected positions go back to the free list,
 * a shared tail block keeps its other owners) and only then marks the accepted positions
 * computed: a rejected draft's block is never registered in the prefix cache, so the pool's
 * counts, the table's length and the stored token ids are those of a sequence that decoded the
 * accepted tokens one at a time. */
int ql_sched_spec_commit(ql_sched_t *s, int32_t seq, int32_t n_accepted) {
    if (!seq_ok(s, seq) || s->seqs[seq].state != QL_SCHED_STATE_RUNNING) return QL_EINVAL;
    sseq_t *q = &s->seqs[seq];
    if (s->step_pending || q->verify_pending <= 0) return QL_ESTATE;
    if (n_accepted < 0 || n_accepted > q->verify_pending) return QL_EINVAL;
    int32_t keep = q->n_tokens + n_accepted; /* tokens with KV */
    int rc = ql_kv_seq_truncate(s->kv, q->kv, keep);
    if (rc == 0) rc = ql_kv_seq_set_computed(s->kv, q->kv, keep);
    if (rc != 0) return QL_EINTERNAL;
    q->n_tokens = keep; /* the accepted drafts already sit there */
    q->verify_pending = 0;
    q->n_draft = 0;
    return 0;
}

/* ---- copies ---- */

int32_t ql_sched_copy_runs(const ql_kv_copy_t *copies, int32_t n) {
    if (!copies || n <= 0) return 0;
    int32_t len = 1;
    for (; len < n; len++) {
        const ql_kv_copy_t *c = &copies[len];
        int conflict = 0;
        for (int32_t j = 0; j < len && !conflict; j++)
            conflict = c->dst == copies[j].src || c->dst == copies[j].dst ||
                       c->src == copies[j].dst;
        if (conflict) break;
    }
    return len;
}
