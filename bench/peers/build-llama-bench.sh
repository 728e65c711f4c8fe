#!/bin/sh
# bench/peers/build-llama-bench.sh — builds llama.cpp's `llama-bench` (the forward-pass peer of
# docs/BENCHMARKS.md, used by compare-forward.sh) and prints its path: llama-build.sh does the
# work (the source distribution, the cached build outside the repository, the no-AMX flags).
set -eu
exec "$(cd "$(dirname "$0")" && pwd)/llama-build.sh" llama-bench
