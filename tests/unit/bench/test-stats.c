/*
 * tests/unit/bench/test-stats.c — bench/stats.c: percentiles (numpy's linear interpolation),
 * summaries, TPOT, goodput and the arrival process, against values computed by hand.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "bench/bench.h"

#define EPS 1e-9

static void test_percentile(void **state) {
    (void)state;
    const double v[] = {1, 2, 3, 4};
    /* rank = (n - 1) p / 100: p50 -> 1.5 -> 2.5; p90 -> 2.7 -> 3.7; p99 -> 2.97 -> 3.97 */
    assert_true(fabs(ql_bench_percentile(v, 4, 50) - 2.5) < EPS);
    assert_true(fabs(ql_bench_percentile(v, 4, 90) - 3.7) < EPS);
    assert_true(fabs(ql_bench_percentile(v, 4, 99) - 3.97) < EPS);
    assert_true(fabs(ql_bench_percentile(v, 4, 0) - 1) < EPS);
    assert_true(fabs(ql_bench_percentile(v, 4, 100) - 4) < EPS);
    const double w[] = {10, 20, 40, 80, 160};
    /* p25 -> rank 1 -> 20 exactly; p60 -> rank 2.4 -> 40 + 0.4 * 40 = 56 */
    assert_true(fabs(ql_bench_percentile(w, 5, 25) - 20) < EPS);
    assert_true(fabs(ql_bench_percentile(w, 5, 60) - 56) < EPS);
    const double one[] = {7};
    assert_true(fabs(ql_bench_percentile(one, 1, 99) - 7) < EPS);
    assert_true(ql_bench_percentile(NULL, 0, 50) == 0.0);
}

static void test_dist(void **state) {
    (void)state;
    double v[] = {4, 1, 3, 2}; /* unsorted: dist sorts */
    ql_bench_dist_t d;
    ql_bench_dist(v, 4, &d);
    assert_int_equal(d.n, 4);
    assert_true(fabs(d.mean - 2.5) < EPS);
    assert_true(fabs(d.median - 2.5) < EPS);
    assert_true(fabs(d.std - sqrt(1.25)) < EPS); /* population: ((1.5^2 + 0.5^2) * 2) / 4 */
    assert_true(fabs(d.p90 - 3.7) < EPS);
    assert_true(fabs(d.p99 - 3.97) < EPS);
    assert_true(d.min == 1 && d.max == 4);
    assert_true(v[0] == 1 && v[3] == 4);
    double odd[] = {5, 1, 9};
    ql_bench_dist(odd, 3, &d);
    assert_true(fabs(d.median - 5) < EPS && fabs(d.mean - 5) < EPS);
    ql_bench_dist(NULL, 0, &d);
    assert_int_equal(d.n, 0);
    assert_true(d.mean == 0 && d.p99 == 0);
}

static void test_tpot(void **state) {
    (void)state;
    /* 10 tokens: the 9 after the first took 1000 - 100 ms */
    assert_true(fabs(ql_bench_tpot(1000, 100, 10) - 100) < EPS);
    assert_true(fabs(ql_bench_tpot(250, 50, 2) - 200) < EPS);
    assert_true(ql_bench_tpot(300, 300, 1) == 0.0);
    assert_true(ql_bench_tpot(300, 300, 0) == 0.0);
}

static void test_good(void **state) {
    (void)state;
    const double ttft[] = {100, 200, 300, 400};
    const double tpot[] = {50, 10, 30, 0};
    assert_int_equal(ql_bench_good(ttft, tpot, 4, 0, 0), 4);          /* no SLO: all good */
    assert_int_equal(ql_bench_good(ttft, tpot, 4, 250, 0), 2);        /* TTFT <= 250: 100, 200 */
    assert_int_equal(ql_bench_good(ttft, tpot, 4, 300, 0), 3);        /* the bound is inclusive */
    assert_int_equal(ql_bench_good(ttft, tpot, 4, 0, 30), 3);         /* TPOT <= 30: 10, 30, 0 */
    assert_int_equal(ql_bench_good(ttft, tpot, 4, 250, 30), 1);       /* both: only the second */
    assert_int_equal(ql_bench_good(ttft, tpot, 4, 50, 100), 0);
    const double nan_ttft[] = {NAN};
    const double zero[] = {0};
    assert_int_equal(ql_bench_good(nan_ttft, zero, 1, 1000, 0), 0);   /* NaN never meets an SLO */
}

static void test_arrivals(void **state) {
    (void)state;
    enum { N = 20000 };
    double *t = malloc(N * sizeof(double));
    /* rate 0: all at once */
    ql_bench_arrivals(0, 1, 1, 8, t);
    for (int i = 0; i < 8; i++) assert_true(t[i] == 0.0);
    /* Poisson at 10/s: gaps average 0.1 s with a coefficient of variation of 1 (exponential);
     * gamma of shape 4: the same mean, CV 1/sqrt(4) = 0.5; shape 0.25: CV 2 */
    const double shapes[] = {1, 4, 0.25};
    const double cvs[] = {1, 0.5, 2};
    for (int s = 0; s < 3; s++) {
        ql_bench_arrivals(10, shapes[s], 42, N, t);
        assert_true(t[0] == 0.0);
        double sum = 0, ss = 0;
        for (int i = 1; i < N; i++) {
            double g = t[i] - t[i - 1];
            assert_true(g >= 0);
            sum += g;
            ss += g * g;
        }
        double mean = sum / (N - 1), var = ss / (N - 1) - mean * mean, cv = sqrt(var) / mean;
        assert_true(fabs(mean - 0.1) < 0.1 * (s == 2 ? 0.06 : 0.03));
        assert_true(fabs(cv - cvs[s]) < cvs[s] * 0.06);
    }
    /* the same seed gives the same schedule, another seed another */
    double a[16], b[16], c[16];
    ql_bench_arrivals(5, 1, 7, 16, a);
    ql_bench_arrivals(5, 1, 7, 16, b);
    ql_bench_arrivals(5, 1, 8, 16, c);
    int same = 1, differ = 0;
    for (int i = 0; i < 16; i++) same &= a[i] == b[i], differ |= a[i] != c[i];
    assert_true(same && differ);
    free(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_percentile), cmocka_unit_test(test_dist),     cmocka_unit_test(test_tpot),
        cmocka_unit_test(test_good),       cmocka_unit_test(test_arrivals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
