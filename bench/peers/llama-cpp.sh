#!/bin/sh
# bench/peers/llama-cpp.sh — starts llama.cpp's `llama-server`, the serving peer `quill bench`
# compares quill with (bench/compare.sh, docs/BENCHMARKS.md), on the same GGUF file with the same
# per-request context, parallel slots and threads as the quill serve it is compared with:
#
#   quill serve --model M --threads T --max-model-len CTX --max-num-seqs SLOTS
#   llama-server -m M -t T -tb T -c CTX*SLOTS -np SLOTS --kv-unified -cb
#
# (llama-server's -c is the whole KV pool, shared by the slots with --kv-unified, so each request
# can use CTX tokens like quill's --max-model-len. NOTE(kv-unified): docs/BENCHMARKS.md was
# measured this way. llama-server's decode with many slots was very slow on the shared test
# machine (1.2 s a step at 32 slots against 9 ms at 1); one try with --no-kv-unified (a KV stream
# per slot) was slower still; the cause is not established.) llama-server is built once by
# llama-build.sh from the llama-cpp-python source distribution, outside the repository.
# It runs in the foreground (exec): stop it with SIGTERM / Ctrl-C.
#
#   PORT=8091 SLOTS=32 CTX=1280 bench/peers/llama-cpp.sh
#   MODEL=path THREADS=2 LLAMA_SERVER=path bench/peers/llama-cpp.sh [extra llama-server flags]
set -eu
HERE="$(cd "$(dirname "$0")" && pwd)"
MODEL="${MODEL:-${QL_DEFAULT_MODEL:-$HOME/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf}}"
PORT="${PORT:-8091}"
CTX="${CTX:-2048}"
SLOTS="${SLOTS:-1}"
THREADS="${THREADS:-2}"
if [ ! -f "$MODEL" ]; then
    echo "llama-cpp.sh: no model file $MODEL (set MODEL)" >&2
    exit 1
fi
BIN="${LLAMA_SERVER:-$("$HERE/llama-build.sh" llama-server)}"
exec "$BIN" -m "$MODEL" --host 127.0.0.1 --port "$PORT" -c "$((CTX * SLOTS))" -np "$SLOTS" \
    --kv-unified -cb -t "$THREADS" -tb "$THREADS" --no-webui "$@"
