#!/bin/sh
# bench/peers/compare-forward.sh — quill's forward-pass benchmark beside llama.cpp's
# llama-bench on the same GGUF file and thread count, alternating the two for ROUNDS rounds
# so that both see the same machine conditions (docs/BENCHMARKS.md).
#
#   bench/peers/compare-forward.sh [BUILD_DIR]      # default build/
#   MODEL=path THREADS=2 ROUNDS=3 LLAMA_BENCH=path bench/peers/compare-forward.sh build-cpu
#
# llama-bench defaults to the one bench/peers/build-llama-bench.sh builds.
set -eu
BUILD="${1:-build}"
MODEL="${MODEL:-${QL_DEFAULT_MODEL:-$HOME/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf}}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
HERE="$(cd "$(dirname "$0")" && pwd)"
LLAMA_BENCH="${LLAMA_BENCH:-$("$HERE/build-llama-bench.sh")}"

echo "## machine"
lscpu | head -n 20
echo "## model: $MODEL, threads: $THREADS"
uptime
i=1
while [ "$i" -le "$ROUNDS" ]; do
    echo "## round $i: llama.cpp"
    "$LLAMA_BENCH" -m "$MODEL" -t "$THREADS" -p 512 -n 128 -r 3 2>/dev/null | grep -E '^\| (model|llama|qwen)' || true
    echo "## round $i: quill"
    "$BUILD/bench-forward" --model "$MODEL" --threads "$THREADS" --pp 512 --tg 128 --batch 1,8,32 --reps 3
    i=$((i + 1))
done
uptime
