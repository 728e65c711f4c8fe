/*
 * tests/unit/cpu/test-threadpool.c — the persistent pool: every thread runs every task
 * once with its own index, the barrier orders the phases of a task (what each thread wrote
 * before it is seen by all after it), runs back to back and after the workers went to
 * sleep, more threads than cores, and clean shutdown.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "cpu/cpu.h"

#define MAX_T 8
#define PHASES 8

typedef struct job_s {
    ql_cpu_pool_t *pool;
    atomic_int calls;
    int seen[MAX_T];
    int slot[MAX_T]; /* written by thread i in each phase */
    int bad;         /* a thread saw a stale slot */
    int nth_seen;
} job_t;

static void task(void *ctx, int ith, int nth) {
    job_t *j = ctx;
    atomic_fetch_add(&j->calls, 1);
    j->seen[ith]++;
    if (ith == 0) j->nth_seen = nth;
    for (int ph = 1; ph <= PHASES; ph++) {
        j->slot[ith] = ph;
        ql_cpu_pool_barrier(j->pool);
        for (int i = 0; i < nth; i++)
            if (j->slot[i] != ph) j->bad = 1;
        ql_cpu_pool_barrier(j->pool); /* nobody starts the next phase before all have read */
    }
}

static void run_many(int n_threads, int runs, int sleep_every) {
    ql_cpu_pool_t *pool = NULL;
    assert_int_equal(ql_cpu_pool_init(n_threads, &pool), 0);
    const int nth = ql_cpu_pool_n_threads(pool);
    assert_true(nth >= 1 && nth <= MAX_T);
    job_t j;
    memset(&j, 0, sizeof(j));
    j.pool = pool;
    atomic_init(&j.calls, 0);
    for (int r = 0; r < runs; r++) {
        ql_cpu_pool_run(pool, task, &j);
        if (sleep_every && r % sleep_every == 0) {
            /* long enough for the workers to stop spinning and sleep */
            struct timespec ts = {0, 5 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    assert_int_equal(atomic_load(&j.calls), runs * nth);
    for (int i = 0; i < nth; i++) assert_int_equal(j.seen[i], runs);
    assert_int_equal(j.bad, 0);
    assert_int_equal(j.nth_seen, nth);
    ql_cpu_pool_free(pool);
}

static void test_pool_runs(void **state) {
    (void)state;
    for (int n = 1; n <= 4; n++) run_many(n, 100, 0);
}

static void test_pool_sleep_wake(void **state) {
    (void)state;
    run_many(3, 12, 1); /* every run after an idle gap: the condition-variable path */
}

static void test_pool_oversubscribed(void **state) {
    (void)state;
    run_many(MAX_T, 50, 0); /* more threads than this machine's cores: yields, no livelock */
}

static void test_pool_defaults(void **state) {
    (void)state;
    ql_cpu_pool_t *pool = NULL;
    assert_int_equal(ql_cpu_pool_init(0, &pool), 0);
    assert_int_equal(ql_cpu_pool_n_threads(pool), ql_cpu_count());
    ql_cpu_pool_free(pool);
    ql_cpu_pool_free(NULL);
    assert_int_equal(ql_cpu_pool_init(2, NULL), QL_EINVAL);
    assert_int_equal(ql_cpu_pool_init(100000, &pool), QL_EINVAL);
    /* a pool created and freed without ever running */
    assert_int_equal(ql_cpu_pool_init(3, &pool), 0);
    ql_cpu_pool_free(pool);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pool_defaults),
        cmocka_unit_test(test_pool_runs),
        cmocka_unit_test(test_pool_sleep_wake),
        cmocka_unit_test(test_pool_oversubscribed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
