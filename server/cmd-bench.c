/*
 * server/cmd-bench.c — `quill bench`: the serving benchmark (bench/). The one quill binary
 * carries it; the work is bench/'s.
 */
#include "bench/bench.h"
#include "server/cmd.h"

int ql_cmd_bench(const ql_config_t *cfg) { return ql_bench_cmd(cfg); }
