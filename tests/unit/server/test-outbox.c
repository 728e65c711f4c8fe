/*
 * tests/unit/server/test-outbox.c — the engine → loop handoff (server/outbox.c): order, no
 * duplicates, and, with a producer thread linking while the loop takes, that no node is handed
 * out twice, without news, or lost (NOTE(outbox-links): the use after free `quill serve` had).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "server/outbox.h"

typedef struct tnode_s {
    ql_outbox_node_t node; /* first, as in api.c's sub */
    int id;
    long produced;  /* under the lock */
    long seen;      /* what the taker had read, under the lock */
    int in_list;    /* the taker's own list */
    struct tnode_s *list_next;
} tnode_t;

typedef struct {
    tnode_t *head, *tail;
    int order[64];
    int n_order;
    int n_nodes; /* how many exist: a take that hands out more went round a cycle */
    int n_taken; /* in this take */
    const char *error;
} taker_t;

static void take_fn(ql_outbox_node_t *n, void *ud) {
    taker_t *t = ud;
    tnode_t *x = (tnode_t *)n;
    /* the main thread: a failure here ends the test rather than spin on a cycle */
    if (++t->n_taken > t->n_nodes) fail_msg("one take handed out more nodes than exist (a cycle)");
    if (x->in_list) t->error = "a node was handed out twice in one take";
    if (x->produced <= x->seen) t->error = "a node was handed out with nothing new";
    if (n->linked || n->next) t->error = "a taken node is still linked";
    x->seen = x->produced;
    x->in_list = 1;
    x->list_next = NULL;
    if (t->tail)
        t->tail->list_next = x;
    else
        t->head = x;
    t->tail = x;
    if (t->n_order < 64) t->order[t->n_order++] = x->id;
}

/* What the loop does after ql_outbox_take returns: walk its own list, lock-free. */
static int drain_list(taker_t *t) {
    int n = 0;
    for (tnode_t *x = t->head, *nx; x; x = nx) {
        if (++n > t->n_nodes) fail_msg("the taker's list has a cycle");
        nx = x->list_next;
        x->list_next = NULL;
        x->in_list = 0;
    }
    t->head = t->tail = NULL;
    t->n_order = 0;
    t->n_taken = 0;
    return n;
}

static void produce(ql_outbox_t *o, tnode_t *x) {
    ql_outbox_lock(o);
    x->produced++;
    ql_outbox_link_locked(o, &x->node);
    ql_outbox_unlock(o);
}

static void test_order_and_no_duplicates(void **state) {
    (void)state;
    ql_outbox_t o;
    assert_int_equal(ql_outbox_init(&o), 0);
    tnode_t x[3];
    memset(x, 0, sizeof x);
    for (int i = 0; i < 3; i++) x[i].id = i;
    taker_t t;
    memset(&t, 0, sizeof t);
    t.n_nodes = 3;
    assert_int_equal(ql_outbox_take(&o, take_fn, &t), 0);

    produce(&o, &x[1]);
    produce(&o, &x[0]);
    produce(&o, &x[1]); /* linked already: stays where it was */
    produce(&o, &x[2]);
    assert_int_equal(ql_outbox_take(&o, take_fn, &t), 3);
    assert_null(t.error);
    assert_int_equal(t.order[0], 1);
    assert_int_equal(t.order[1], 0);
    assert_int_equal(t.order[2], 2);
    assert_int_equal(x[1].seen, 2);
    assert_int_equal(drain_list(&t), 3);

    /* taken nodes link again, and only what spoke since is taken */
    produce(&o, &x[2]);
    ql_outbox_lock(&o);
    assert_int_equal(ql_outbox_link_locked(&o, &x[2].node), 0);
    ql_outbox_unlock(&o);
    assert_int_equal(ql_outbox_take(&o, take_fn, &t), 1);
    assert_null(t.error);
    assert_int_equal(t.order[0], 2);
    drain_list(&t);
    assert_int_equal(ql_outbox_take(&o, take_fn, &t), 0);
    ql_outbox_destroy(&o);
}

#define N_NODES 6
#define N_EVENTS 3000000

typedef struct {
    ql_outbox_t o;
    tnode_t x[N_NODES];
    int done; /* under the lock */
} shared_t;

static void producer(void *arg) {
    shared_t *sh = arg;
    uint64_t r = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < N_EVENTS; i++) {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        produce(&sh->o, &sh->x[r % N_NODES]);
    }
    ql_outbox_lock(&sh->o);
    sh->done = 1;
    ql_outbox_unlock(&sh->o);
}

static void test_producer_thread(void **state) {
    (void)state;
    static shared_t sh;
    memset(&sh, 0, sizeof sh);
    assert_int_equal(ql_outbox_init(&sh.o), 0);
    for (int i = 0; i < N_NODES; i++) sh.x[i].id = i;
    uv_thread_t th;
    assert_int_equal(uv_thread_create(&th, producer, &sh), 0);
    taker_t t;
    memset(&t, 0, sizeof t);
    t.n_nodes = N_NODES;
    long takes = 0, handed = 0;
    for (;;) {
        ql_outbox_lock(&sh.o);
        int done = sh.done;
        ql_outbox_unlock(&sh.o);
        handed += ql_outbox_take(&sh.o, take_fn, &t);
        takes++;
        if (t.error) break;
        drain_list(&t);
        if (done) break;
    }
    uv_thread_join(&th);
    if (t.error) fail_msg("%s (after %ld takes)", t.error, takes);
    /* the last take began after the producer's last link */
    assert_int_equal(ql_outbox_take(&sh.o, take_fn, &t), 0);
    long produced = 0;
    for (int i = 0; i < N_NODES; i++) {
        produced += sh.x[i].produced;
        if (sh.x[i].seen != sh.x[i].produced)
            fail_msg("node %d: %ld events, %ld taken: lost", i, sh.x[i].produced, sh.x[i].seen);
        assert_false(sh.x[i].node.linked);
    }
    assert_int_equal(produced, N_EVENTS);
    assert_true(handed >= 1 && handed <= N_EVENTS);
    ql_outbox_destroy(&sh.o);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_no_duplicates),
        cmocka_unit_test(test_producer_thread),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
