/*
 * bench/stats.c — the numbers `quill bench` reports: percentiles, summaries, TPOT, goodput, and
 * the arrival process. Plain C with no I/O, unit-tested with hand-computed values
 * (tests/unit/bench/test-stats.c).
 */
#include <math.h>
#include <stdlib.h>

#include "bench/bench.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double ql_bench_percentile(const double *sorted, size_t n, double p) {
    if (n == 0) return 0.0;
    if (p <= 0) return sorted[0];
    if (p >= 100) return sorted[n - 1];
    /* NOTE(percentile): numpy's "linear" method: rank (n - 1) * p / 100, interpolated. */
    double rank = (double)(n - 1) * p / 100.0;
    size_t lo = (size_t)floor(rank);
    size_t hi = lo + 1 < n ? lo + 1 : lo;
    double frac = rank - (double)lo;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

void ql_bench_dist(double *v, size_t n, ql_bench_dist_t *out) {
    *out = (ql_bench_dist_t){.n = n};
    if (n == 0) return;
    qsort(v, n, sizeof(*v), cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++) sum += v[i];
    out->mean = sum / (double)n;
    double ss = 0;
    for (size_t i = 0; i < n; i++) ss += (v[i] - out->mean) * (v[i] - out->mean);
    out->std = sqrt(ss / (double)n);
    out->median = ql_bench_percentile(v, n, 50);
    out->p90 = ql_bench_percentile(v, n, 90);
    out->p99 = ql_bench_percentile(v, n, 99);
    out->min = v[0];
    out->max = v[n - 1];
}

double ql_bench_tpot(double e2e, double ttft, int64_t n_out) {
    if (n_out <= 1) return 0.0;
    return (e2e - ttft) / (double)(n_out - 1);
}

size_t ql_bench_good(const double *ttft, const double *tpot, size_t n, double slo_ttft, double slo_tpot) {
    size_t good = 0;
    for (size_t i = 0; i < n; i++) {
        if (slo_ttft > 0 && !(ttft[i] <= slo_ttft)) continue;
        if (slo_tpot > 0 && !(tpot[i] <= slo_tpot)) continue;
        good++;
    }
    return good;
}

uint64_t ql_bench_rand(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in (0, 1) */
static double uniform(uint64_t *s) {
    return ((double)(ql_bench_rand(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static double normal(uint64_t *s) {
    double u1 = uniform(s), u2 = uniform(s);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* NOTE(gamma): Marsaglia and Tsang's method for shape >= 1; shape < 1 draws shape + 1 and
 * scales by U^(1/shape) (their boost). */
static double gamma_draw(uint64_t *s, double shape) {
    if (shape < 1.0) return gamma_draw(s, shape + 1.0) * pow(uniform(s), 1.0 / shape);
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x, v;
        do {
            x = normal(s);
            v = 1.0 + c * x;
        } while (v <= 0);
        v = v * v * v;
        double u = uniform(s);
        if (u < 1.0 - 0.0331 * x * x * x * x) return d * v;
        if (log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) return d * v;
    }
}

void ql_bench_arrivals(double rate, double burstiness, uint64_t seed, size_t n, double *t_s) {
    uint64_t s = seed;
    double t = 0;
    for (size_t i = 0; i < n; i++) {
        if (rate <= 0) {
            t_s[i] = 0;
            continue;
        }
        /* vLLM: the first request goes at once; gaps have mean 1/rate: scale 1/(rate*shape) */
        if (i > 0) t += gamma_draw(&s, burstiness) / (rate * burstiness);
        t_s[i] = t;
    }
}
