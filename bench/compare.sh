#!/bin/sh
# bench/compare.sh — the same `quill bench` workload against `quill serve` and llama.cpp's
# `llama-server` (bench/peers/llama-cpp.sh) on the same GGUF file, context, slots and threads,
# in turns (A B A B ...), so that on a shared machine both systems see the same conditions.
# Prints each run's figures with the machine's load average and the server's CPU time during the
# run (output tokens per CPU second: a figure less sensitive to other load on a shared machine
# than the wall-clock ones), then each system's mean over the
# rounds and the ratios quill / llama-server. Results (JSON, one file per run) go to OUT.
#
#   bench/compare.sh [BUILD_DIR]                    # default build/
#   CONC="1 8 32" INPUT="256 1024" OUTPUT=128 ROUNDS=2 bench/compare.sh build
#   MODEL=path THREADS=2 NUM_PROMPTS=N OUT=/tmp/quill-compare WAIT_IDLE=1 bench/compare.sh build
#
# NUM_PROMPTS defaults to max(4, concurrency). Each server gets --max-num-seqs / -np equal
# to the concurrency and a per-request context of INPUT + OUTPUT + 64 tokens. With WAIT_IDLE=1
# each run first waits (up to IDLE_WAIT_S seconds) for a 5 s window with the CPUs less than
# IDLE_PCT % busy. A run that fails is reported and the others go on (exit status 1 at the end).
set -eu
BUILD="${1:-build}"
QUILL="$BUILD/quill"
MODEL="${MODEL:-${QL_DEFAULT_MODEL:-$HOME/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf}}"
THREADS="${THREADS:-2}"
CONC="${CONC:-1 8 32}"
INPUT="${INPUT:-256 1024}"
OUTPUT="${OUTPUT:-128}"
ROUNDS="${ROUNDS:-2}"
OUT="${OUT:-/tmp/quill-compare}"
QPORT="${QPORT:-8090}"
LPORT="${LPORT:-8091}"
WAIT_IDLE="${WAIT_IDLE:-0}"
IDLE_WAIT_S="${IDLE_WAIT_S:-300}"
IDLE_PCT="${IDLE_PCT:-15}"
TIMEOUT="${TIMEOUT:-1800}"
failed=0
SEED="${SEED:-1}"
HERE="$(cd "$(dirname "$0")" && pwd)"

if [ ! -x "$QUILL" ]; then echo "compare.sh: no $QUILL (build first)" >&2; exit 1; fi
if [ ! -f "$MODEL" ]; then echo "compare.sh: no model file $MODEL (set MODEL)" >&2; exit 1; fi
LLAMA_SERVER="${LLAMA_SERVER:-$("$HERE/peers/llama-build.sh" llama-server)}"
export LLAMA_SERVER
mkdir -p "$OUT"

QPID="" LPID=""
stop() {
    [ -n "$QPID" ] && kill "$QPID" 2>/dev/null && wait "$QPID" 2>/dev/null
    [ -n "$LPID" ] && kill "$LPID" 2>/dev/null && wait "$LPID" 2>/dev/null
    QPID="" LPID=""
}
trap 'stop' EXIT INT TERM

# wait_ready PORT PID: /health answers 200 within 120 s, while PID (the server) lives
wait_ready() {
    i=0
    while [ $i -lt 240 ]; do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "compare.sh: the server for port $1 exited (see $OUT/*.log)" >&2
            return 1
        fi
        if curl -sf -o /dev/null "http://127.0.0.1:$1/health"; then return 0; fi
        sleep 0.5
        i=$((i + 1))
    done
    echo "compare.sh: the server on port $1 did not become ready" >&2
    return 1
}

busy_pct() {
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
    sleep 5
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
    echo "$a $b" | awk '{db = $3 - $1; di = $4 - $2; print int(100 * db / (db + di + 1))}'
}

# cpu_s PID: CPU seconds (user + system, all threads) the process has used so far
cpu_s() {
    awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

wait_idle() {
    [ "$WAIT_IDLE" = 1 ] || return 0
    t=0
    while [ $t -lt "$IDLE_WAIT_S" ]; do
        [ "$(busy_pct)" -lt "$IDLE_PCT" ] && return 0
        t=$((t + 5))
    done
}

for in_len in $INPUT; do
    for c in $CONC; do
        ctx=$((in_len + OUTPUT + 64))
        n="${NUM_PROMPTS:-$((c > 4 ? c : 4))}"
        "$QUILL" serve --model "$MODEL" --port "$QPORT" --threads "$THREADS" --max-model-len "$ctx" \
            --max-num-seqs "$c" --log-level warn >"$OUT/quill-serve.log" 2>&1 &
        QPID=$!
        PORT="$LPORT" SLOTS="$c" CTX="$ctx" THREADS="$THREADS" MODEL="$MODEL" \
            "$HERE/peers/llama-cpp.sh" --log-disable >"$OUT/llama-server.log" 2>&1 &
        LPID=$!
        wait_ready "$QPORT" "$QPID"
        wait_ready "$LPORT" "$LPID"
        r=1
        while [ "$r" -le "$ROUNDS" ]; do
            for sys in quill llama; do
                port=$QPORT pid=$QPID
                [ "$sys" = llama ] && port=$LPORT pid=$LPID
                wait_idle
                f="$OUT/$sys-in$in_len-c$c-r$r.json"
                load=$(cut -d' ' -f1-3 /proc/loadavg)
                cpu0=$(cpu_s "$pid")
                "$QUILL" bench --base-url "http://127.0.0.1:$port" --input-len "$in_len" --output-len "$OUTPUT" \
                    --num-prompts "$n" --max-concurrency "$c" --seed "$SEED" --request-timeout "$TIMEOUT" \
                    --out "$f" >"$f.txt" 2>"$f.err" ||
                    { echo "compare.sh: $sys in $in_len c $c round $r failed: $(tail -n 1 "$f.err")"; failed=1; rm -f "$f"; continue; }
                cpu=$(echo "$cpu0 $(cpu_s "$pid")" | awk '{ print $2 - $1 }')
                echo "load $load" >>"$f.txt"
                python3 - "$f" "$sys" "$in_len" "$c" "$r" "$load" "$cpu" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
# the server's CPU time during the run (warm-up included): output tokens per CPU second
d["server_cpu_s"] = float(sys.argv[7])
d["output_per_cpu_s"] = d["total_output_tokens"] / d["server_cpu_s"] if d["server_cpu_s"] > 0 else 0.0
json.dump(d, open(sys.argv[1], "w"))
print(f"{sys.argv[2]:6} in {sys.argv[3]:>4} c {sys.argv[4]:>2} round {sys.argv[5]}: "
      f"out {d['output_throughput']:7.1f} tok/s  req {d['request_throughput']:6.2f}/s  "
      f"TTFT p50 {d['median_ttft_ms']:8.1f} ms  TPOT p50 {d['median_tpot_ms']:6.1f} ms  "
      f"ITL p50 {d['median_itl_ms']:6.1f} ms  E2EL p50 {d['median_e2el_ms']:8.1f} ms  "
      f"server CPU {d['server_cpu_s']:.1f} s ({d['output_per_cpu_s']:.1f} out tok/CPU-s)  (load {sys.argv[6]})")
PY
            done
            r=$((r + 1))
        done
        stop
        python3 - "$OUT" "$in_len" "$c" "$ROUNDS" <<'PY'
import json, sys
out, in_len, c, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
keys = ["output_throughput", "request_throughput", "median_ttft_ms", "median_tpot_ms", "median_itl_ms",
        "p99_ttft_ms", "p99_tpot_ms", "median_e2el_ms", "output_per_cpu_s"]
mean = {}
for sysname in ("quill", "llama"):
    runs = []
    for r in range(1, rounds + 1):
        try:
            runs.append(json.load(open(f"{out}/{sysname}-in{in_len}-c{c}-r{r}.json")))
        except OSError:
            pass
    if not runs:
        print(f"== input {in_len}, concurrency {c}: no complete {sysname} run ==")
        sys.exit(0)
    mean[sysname] = {k: sum(r[k] for r in runs) / len(runs) for k in keys}
print(f"== input {in_len}, concurrency {c}, mean of the complete rounds ==")
print(f"{'metric':22} {'quill':>10} {'llama-server':>13} {'quill/llama':>12}")
for k in keys:
    q, l = mean["quill"][k], mean["llama"][k]
    print(f"{k:22} {q:10.2f} {l:13.2f} {q / l if l else float('nan'):12.2f}")
PY
    done
done
exit "$failed"
