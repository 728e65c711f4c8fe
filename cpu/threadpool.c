/*
 * cpu/threadpool.c — the CPU backend's persistent thread pool: n − 1 pthreads plus the
 * caller run each task; a sense-reversing barrier separates the phases of a forward pass.
 *
 * NOTE(pool-wait): waits spin (with `pause`) for a bounded time, then sleep. A decode
 * step's phases are microseconds apart, so spinning is what keeps barriers cheap; but the
 * machine may be shared (or have fewer free cores than threads), and a spinning waiter
 * then holds the core the thread everyone waits for needs: after QL_POOL_BARRIER_SPINS
 * rounds a barrier waiter sleeps on a futex (Linux; elsewhere it yields), and the last
 * thread to arrive wakes the sleepers. Between runs a worker sleeps on a condition
 * variable after QL_POOL_IDLE_SPIN_NS.
 */
#define QL_LOG_MODULE "cpu"
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu-internal.h"

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#define QL_POOL_HAVE_FUTEX 1
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define QL_POOL_IDLE_SPIN_NS 2000000u /* 2 ms of spinning before a worker sleeps */
#define QL_POOL_BARRIER_SPINS 2000    /* pause rounds (~50-300 us) before a barrier waiter yields */

/* Cache-line separated counters: the barrier's count is hammered by every thread. */
typedef struct ql_pool_line_s {
    _Alignas(64) atomic_uint v;
} ql_pool_line_t;

typedef struct ql_pool_worker_s {
    ql_cpu_pool_t *pool;
    int ith;
    pthread_t tid;
} ql_pool_worker_t;

struct ql_cpu_pool_s {
    int n_threads;
    int n_started; /* workers created (n_threads - 1 on success) */
    ql_pool_worker_t *workers;

    ql_cpu_task_fn fn;
    void *ctx;
    ql_pool_line_t run_gen; /* bumped once per run */
    ql_pool_line_t n_done;  /* workers finished with the current run */
    ql_pool_line_t bar_count;
    ql_pool_line_t bar_gen; /* also the futex word barrier sleepers wait on */
    ql_pool_line_t bar_sleepers;
    ql_pool_line_t main_sleeping; /* the caller sleeps on n_done */
    atomic_int n_sleeping;
    atomic_int stop;

    pthread_mutex_t mu;
    pthread_cond_t cv;
};

/* Sleeps while *word == val (or returns at once if it already differs). */
void ql__cpu_futex_wait(atomic_uint *word, unsigned val) {
#ifdef QL_POOL_HAVE_FUTEX
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
#else
    (void)word, (void)val;
    sched_yield();
#endif
}

void ql__cpu_futex_wake(atomic_uint *word) {
#ifdef QL_POOL_HAVE_FUTEX
    syscall(SYS_futex, (unsigned *)word, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)word;
#endif
}

void ql__cpu_relax(void) {
    cpu_relax();
}

static void run_task(ql_cpu_pool_t *p, int ith) {
    p->fn(p->ctx, ith, p->n_threads);
}

static void *worker_main(void *arg) {
    ql_pool_worker_t *w = arg;
    ql_cpu_pool_t *p = w->pool;
    /* NOTE(pool-start): the pool is created with run_gen 0 and a run may begin before this
     * thread is scheduled, so start from 0, not from whatever run_gen is now. */
    unsigned seen = 0;
    for (;;) {
        /* spin for the next run, then sleep */
        uint64_t t0 = 0;
        unsigned spins = 0;
        while (atomic_load_explicit(&p->run_gen.v, memory_order_acquire) == seen &&
               !atomic_load(&p->stop)) {
            cpu_relax();
            if ((++spins & 1023u) != 0) continue;
            uint64_t now = ql_time_ns();
            if (t0 == 0) t0 = now;
            if (now - t0 < QL_POOL_IDLE_SPIN_NS) continue;
            pthread_mutex_lock(&p->mu);
            atomic_fetch_add(&p->n_sleeping, 1);
            while (atomic_load(&p->run_gen.v) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->cv, &p->mu);
            atomic_fetch_sub(&p->n_sleeping, 1);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->stop)) break;
        seen = atomic_load_explicit(&p->run_gen.v, memory_order_acquire);
        run_task(p, w->ith);
        atomic_fetch_add(&p->n_done.v, 1); /* seq_cst: pairs with main_sleeping */
        if (atomic_load(&p->main_sleeping.v)) ql__cpu_futex_wake(&p->n_done.v);
    }
    return NULL;
}

int ql_cpu_pool_init(int n_threads, ql_cpu_pool_t **out) {
    if (!out) return QL_EINVAL;
    *out = NULL;
    if (n_threads <= 0) n_threads = ql_cpu_count();
    if (n_threads > 1024) return QL_EINVAL;
    ql_cpu_pool_t *p = aligned_alloc(64, (sizeof(*p) + 63) / 64 * 64);
    if (!p) return QL_ENOMEM;
    memset(p, 0, sizeof(*p));
    p->n_threads = n_threads;
    atomic_init(&p->run_gen.v, 0);
    atomic_init(&p->n_done.v, 0);
    atomic_init(&p->bar_count.v, 0);
    atomic_init(&p->bar_gen.v, 0);
    atomic_init(&p->bar_sleepers.v, 0);
    atomic_init(&p->main_sleeping.v, 0);
    atomic_init(&p->n_sleeping, 0);
    atomic_init(&p->stop, 0);
    if (pthread_mutex_init(&p->mu, NULL) != 0) {
        free(p);
        return QL_ENOMEM;
    }
    if (pthread_cond_init(&p->cv, NULL) != 0) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return QL_ENOMEM;
    }
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof(*p->workers));
        if (!p->workers) goto fail;
        for (int i = 0; i < n_threads - 1; i++) {
            p->workers[i].pool = p;
            p->workers[i].ith = i + 1;
            if (pthread_create(&p->workers[i].tid, NULL, worker_main, &p->workers[i]) != 0)
                goto fail;
            p->n_started++;
        }
    }
    *out = p;
    return 0;
fail:
    ql_cpu_pool_free(p);
    return QL_ENOMEM;
}

void ql_cpu_pool_free(ql_cpu_pool_t *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->n_started; i++) pthread_join(p->workers[i].tid, NULL);
    free(p->workers);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int ql_cpu_pool_n_threads(const ql_cpu_pool_t *p) {
    return p ? p->n_threads : 1;
}

void ql_cpu_pool_run(ql_cpu_pool_t *p, ql_cpu_task_fn fn, void *ctx) {
    QL_ASSERT(p && fn);
    if (p->n_threads == 1) {
        fn(ctx, 0, 1);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->n_done.v, 0, memory_order_relaxed);
    atomic_fetch_add(&p->run_gen.v, 1); /* seq_cst: pairs with n_sleeping below */
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    run_task(p, 0);
    const unsigned want = (unsigned)p->n_threads - 1;
    unsigned spins = 0, done;
    while ((done = atomic_load_explicit(&p->n_done.v, memory_order_acquire)) != want) {
        if (++spins <= QL_POOL_BARRIER_SPINS) {
            cpu_relax();
            continue;
        }
        atomic_store(&p->main_sleeping.v, 1);
        if (atomic_load(&p->n_done.v) == done) ql__cpu_futex_wait(&p->n_done.v, done);
        atomic_store(&p->main_sleeping.v, 0);
    }
}

void ql_cpu_pool_barrier(ql_cpu_pool_t *p) {
    const unsigned nth = (unsigned)p->n_threads;
    if (nth == 1) return;
    const unsigned gen = atomic_load_explicit(&p->bar_gen.v, memory_order_relaxed);
    if (atomic_fetch_add_explicit(&p->bar_count.v, 1, memory_order_acq_rel) == nth - 1) {
        atomic_store_explicit(&p->bar_count.v, 0, memory_order_relaxed);
        atomic_fetch_add(&p->bar_gen.v, 1); /* seq_cst: pairs with bar_sleepers below */
        if (atomic_load(&p->bar_sleepers.v) > 0) ql__cpu_futex_wake(&p->bar_gen.v);
        return;
    }
    unsigned spins = 0;
    while (atomic_load_explicit(&p->bar_gen.v, memory_order_acquire) == gen) {
        if (++spins <= QL_POOL_BARRIER_SPINS) {
            cpu_relax();
            continue;
        }
        atomic_fetch_add(&p->bar_sleepers.v, 1);
        if (atomic_load(&p->bar_gen.v) == gen) ql__cpu_futex_wait(&p->bar_gen.v, gen);
        atomic_fetch_sub(&p->bar_sleepers.v, 1);
    }
}
