#!/bin/sh
# bench/peers/compare-forward.sh — quill's forward-pass benchmark beside llama.cpp's
# llama-bench on the same GGUF file and thread count (docs/BENCHMARKS.md). Each test
# (pp512, tg128; quill's tg also at batch 8 and 32) runs ROUNDS times, alternating the two
# programs, and with WAIT_IDLE=1 each run first waits (up to IDLE_WAIT_S seconds) for the
# machine to be idle, so that on a shared machine both are measured in the same conditions.
#
#   bench/peers/compare-forward.sh [BUILD_DIR]      # default build/
#   MODEL=path THREADS=2 ROUNDS=3 WAIT_IDLE=1 LLAMA_BENCH=path bench/peers/compare-forward.sh build
#
# llama-bench defaults to the one bench/peers/build-llama-bench.sh builds. Output: the raw
# lines of both tools, each preceded by the machine's busy share over the 5 s before it.
set -eu
BUILD="${1:-build}"
MODEL="${MODEL:-${QL_DEFAULT_MODEL:-$HOME/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf}}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
WAIT_IDLE="${WAIT_IDLE:-0}"
IDLE_WAIT_S="${IDLE_WAIT_S:-600}"
HERE="$(cd "$(dirname "$0")" && pwd)"
LLAMA_BENCH="${LLAMA_BENCH:-$("$HERE/build-llama-bench.sh")}"

# Percentage of CPU time spent busy over the next 5 seconds.
busy_pct() {
    a=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
    sleep 5
    b=$(awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
    echo "$a $b" | awk '{db = $3 - $1; di = $4 - $2; print int(100 * db / (db + di + 1))}'
}

settle() {
    waited=0
    while :; do
        b=$(busy_pct)
        if [ "$WAIT_IDLE" != 1 ] || [ "$b" -lt 8 ] || [ "$waited" -ge "$IDLE_WAIT_S" ]; then
            echo "# busy before the run: $b%"
            return
        fi
        waited=$((waited + 5))
    done
}

echo "## machine"
lscpu | head -n 20
echo "## model: $MODEL, threads: $THREADS"
i=1
while [ "$i" -le "$ROUNDS" ]; do
    echo "## round $i"
    settle
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 512 -n 0 -r 3 2>/dev/null | grep -E '^\| (llama|qwen)' || true
    settle
    "$BUILD/bench-forward" --model "$MODEL" --threads "$THREADS" --pp 512 --tg 0 --reps 3 | grep '^| pp'
    settle
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 0 -n 128 -r 3 2>/dev/null | grep -E '^\| (llama|qwen)' || true
    for bt in 1 8 32; do
        settle
        "$BUILD/bench-forward" --model "$MODEL" --threads "$THREADS" --pp 0 --tg 128 --batch "$bt" --reps 3 |
            grep '^| tg'
    done
    i=$((i + 1))
done
