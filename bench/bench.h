/*
 * bench/bench.h — `quill bench`, the serving benchmark: a libuv + llhttp client that loads any
 * OpenAI-compatible server with streamed completions or chat requests and measures it the way
 * vLLM's `bench serve` does (TTFT, TPOT, ITL, e2e latency, throughputs, goodput). server/'s
 * cmd-bench.c calls ql_bench_cmd; the statistics helpers are public for their unit tests.
 *
 * Where it sits: above proto/ (request bodies and stream chunks as plain C values: jansson stays
 * inside proto/) and core/; beside server/ (the only other module with libuv and llhttp).
 */
#ifndef QL_BENCH_H
#define QL_BENCH_H

#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "core/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** Runs the benchmark `cfg` describes (the bench_* fields, seed, request_timeout_s) and prints
 *  the table on stdout, progress on stderr, and the JSON file when cfg->bench_out is set.
 *  @return the process exit status: 0, 1 (the server failed us: unreachable, errors, any
 *  failed request) or 2 (bad usage: a --base-url that is not http://HOST[:PORT][/PREFIX]).
 *  Thread: runs its own libuv loop on the calling thread. */
QL_API int ql_bench_cmd(const ql_config_t *cfg);

/* ---- statistics (bench/stats.c), defined as vLLM's benchmarks/serve.py computes them ---- */

/* One metric's summary, in the unit of its samples. All 0 when n is 0. */
typedef struct ql_bench_dist_s {
    size_t n;
    double mean, median, std; /* std: population (numpy's default, ddof 0) */
    double p90, p99;
    double min, max;
} ql_bench_dist_t;

/** The p-th percentile (p in [0, 100]) of sorted[0..n) (ascending) with linear interpolation
 *  between closest ranks: numpy.percentile's default. 0 when n is 0. */
QL_API double ql_bench_percentile(const double *sorted, size_t n, double p);

/** Sorts v[0..n) in place and fills *out. */
QL_API void ql_bench_dist(double *v, size_t n, ql_bench_dist_t *out);

/** A request's time per output token after the first: (e2e - ttft) / (n_out - 1); 0 when
 *  n_out <= 1 (vLLM counts such a request's TPOT as 0 for goodput and leaves it out of the
 *  TPOT statistics). */
QL_API double ql_bench_tpot(double e2e, double ttft, int64_t n_out);

/** How many of n requests meet every given SLO: ttft[i] <= slo_ttft and tpot[i] <= slo_tpot
 *  (same unit; an SLO <= 0 is not checked). Goodput is this count over the duration. */
QL_API size_t ql_bench_good(const double *ttft, const double *tpot, size_t n, double slo_ttft,
                            double slo_tpot);

/** Arrival times t_s[0..n) in seconds from the start: t_s[0] = 0 and gaps drawn from a gamma
 *  distribution of shape `burstiness` and mean 1/rate (burstiness 1: a Poisson process), as
 *  vLLM's --request-rate/--burstiness; rate <= 0: every t_s is 0 (all at once). Deterministic
 *  for a given seed. */
QL_API void ql_bench_arrivals(double rate, double burstiness, uint64_t seed, size_t n, double *t_s);

/** The RNG every random choice uses (splitmix64): the next 64 bits of *state. */
QL_API uint64_t ql_bench_rand(uint64_t *state);

#ifdef __cplusplus
}
#endif

#endif /* QL_BENCH_H */
