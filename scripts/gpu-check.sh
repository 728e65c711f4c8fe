#!/usr/bin/env bash
# scripts/gpu-check.sh OUTDIR — everything a session on a GPU machine runs first, in under
# 8 minutes on an H100, each step under its own timeout and the whole under a deadline; a
# step that fails is logged and the script goes on, so the logs tell everything at once:
#
#   OUTDIR/device.txt    nvidia-smi, the toolkit, the machine
#   OUTDIR/build.log     configure (CUDA on, the card's architecture) and build
#   OUTDIR/tests.log     the GPU tests (ctest -L gpu: device, kernels against the CPU
#                        reference, the whole model CUDA vs CPU, a device fault), the CPU-only
#                        CUDA tests, and quill serve --backend cuda (tests/integration/test_cuda.py)
#   OUTDIR/mkmodel.log   `quill mkmodel` of the smollm2-135m (f16) and llama-3.1-8b (q4_0,
#                        dequantized to f16 at upload) shapes, into a temporary folder
#   OUTDIR/bench.log     bench-gpu on both: prefill tok/s, decode tok/s at batch 1, 8, 64, 256,
#                        the batch-1 bandwidth bound; smollm2 again without CUDA graphs
#   OUTDIR/bench-kernels.log  bench-cuda-kernels: the kernels alone against the DRAM peak
#   OUTDIR/results.json  each step's status and seconds, and every bench run's figures (each
#                        run's JSON is written to a temporary folder and merged here when it
#                        parses: a run killed mid-write is left out, not a broken results.json)
#   OUTDIR/summary.txt   one line per step
# That is 8 files, the most the device machine's `run` returns (extra files are left out):
# add a file here only in place of another.
#
# Environment: QL_GPU_CHECK_BUILD (build folder, default build-gpu-check), QL_GPU_CHECK_JOBS
# (default nproc), QL_GPU_CHECK_DEADLINE_S (default 470), QL_GPU_CHECK_BIG (the large shape,
# default llama-3.1-8b; a small one tries the script out), CUDA_ARCH (default: the card's
# compute capability, else CMake's default list). Uses .devdeps/ (../shared/device/README.md)
# when present. Exit status: 0 when every step passed, 1 otherwise, 2 on bad usage.
set -u

if [ $# -ne 1 ] || [ -z "$1" ]; then
    echo "usage: scripts/gpu-check.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" || { echo "gpu-check: cannot create $1" >&2; exit 2; }
OUT=$(cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
BUILD=${QL_GPU_CHECK_BUILD:-build-gpu-check}
case $BUILD in /*) BUILD_ABS=$BUILD ;; *) BUILD_ABS=$ROOT/$BUILD ;; esac
JOBS=${QL_GPU_CHECK_JOBS:-$(nproc 2>/dev/null || echo 4)}
T0=$(date +%s)
DEADLINE=$((T0 + ${QL_GPU_CHECK_DEADLINE_S:-470}))
TMP=$(mktemp -d "${TMPDIR:-/tmp}/quill-gpu-check.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
STEPS="$TMP/steps"
: >"$STEPS"
FAILED=0

say() { echo "gpu-check: $*" | tee -a "$OUT/summary.txt"; }
: >"$OUT/summary.txt"

# step NAME LOG MAX_S RESERVE_S CMD...: runs CMD under `timeout`, for at most MAX_S seconds and
# never into the last RESERVE_S seconds before the deadline (kept for the steps after it).
# Output is appended to LOG; the status and duration are recorded for results.json.
step() {
    local name=$1 log=$2 max=$3 reserve=$4
    shift 4
    local now left lim rc t
    now=$(date +%s)
    left=$((DEADLINE - now - reserve))
    lim=$max
    [ "$left" -lt "$lim" ] && lim=$left
    if [ "$lim" -lt 5 ]; then
        say "$name: skipped, out of time"
        echo "$name skipped 0" >>"$STEPS"
        FAILED=1
        return 99
    fi
    echo "==== $name ($(date -u +%H:%M:%S), limit ${lim}s): $*" >>"$log"
    t=$(date +%s)
    timeout -k 10 "$lim" "$@" >>"$log" 2>&1
    rc=$?
    t=$(($(date +%s) - t))
    echo "==== $name: exit $rc after ${t}s" >>"$log"
    if [ $rc -eq 0 ]; then
        say "$name: ok (${t}s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        say "$name: TIMED OUT after ${t}s (see $(basename "$log"))"
        FAILED=1
    else
        say "$name: FAILED, exit $rc (see $(basename "$log"))"
        FAILED=1
    fi
    echo "$name $rc $t" >>"$STEPS"
    return $rc
}

# ---- the device ----
{
    echo "date: $(date -u)"
    echo "host: $(uname -a)"
    echo "cpus: $(nproc 2>/dev/null)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null) $(git status --porcelain 2>/dev/null | wc -l) changed files"
    echo
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 30 nvidia-smi
        echo
        timeout 30 nvidia-smi --query-gpu=name,compute_cap,memory.total,clocks.max.memory,driver_version --format=csv
    else
        echo "nvidia-smi: not found"
    fi
    echo
    NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    [ -x "$NVCC" ] && "$NVCC" --version || echo "nvcc: not found"
    cmake --version | head -n 1
} >"$OUT/device.txt" 2>&1

HAVE_GPU=0
if command -v nvidia-smi >/dev/null 2>&1 && timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    HAVE_GPU=1
    say "device: $(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
else
    say "no device: nvidia-smi finds no GPU; GPU steps skip (the tests say why)"
fi

ARCH=${CUDA_ARCH:-}
if [ -z "$ARCH" ] && [ $HAVE_GPU -eq 1 ]; then
    ARCH=$(timeout 30 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
        head -n 1 | tr -d ' .')
fi

# ---- build ----
CM_ARGS=(-S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DQL_CUDA=ON)
[ -n "$ARCH" ] && CM_ARGS+=("-DCMAKE_CUDA_ARCHITECTURES=$ARCH")
if [ -d .devdeps ]; then
    CM_ARGS+=("-DCMAKE_PREFIX_PATH=$ROOT/.devdeps")
    export LD_LIBRARY_PATH="$ROOT/.devdeps/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    say "using .devdeps/"
fi
export PATH="$PATH:/usr/local/cuda/bin"
: >"$OUT/build.log"
BUILT=0
# only what the steps below run: the CUDA tests (tests/CMakeLists.txt's cuda-tests), quill,
# the two benchmarks (the whole tree would spend the device's minutes compiling CPU tests)
TARGETS=(quill bench-gpu bench-cuda-kernels cuda-tests)
if step configure "$OUT/build.log" 60 400 cmake "${CM_ARGS[@]}" &&
    step build "$OUT/build.log" 240 230 cmake --build "$BUILD" -j "$JOBS" --target "${TARGETS[@]}"; then
    BUILT=1
else
    # the benchmark and mkmodel may still build when something else (a test) does not
    step build-bench "$OUT/build.log" 120 220 cmake --build "$BUILD" -j "$JOBS" --target quill bench-gpu bench-cuda-kernels &&
        BUILT=1
fi
grep -q 'QL_CUDA:BOOL=ON' "$BUILD/CMakeCache.txt" 2>/dev/null ||
    say "WARNING: the build has no CUDA (QL_CUDA is off: nvcc missing?)"

# ---- models, made while the tests run (CPU work beside GPU work) ----
: >"$OUT/mkmodel.log"
SMOL="$TMP/smollm2-135m-f16.gguf"
BIG_SHAPE=${QL_GPU_CHECK_BIG:-llama-3.1-8b}
BIG="$TMP/$BIG_SHAPE-q4_0.gguf"
MK_PID=
if [ $BUILT -eq 1 ] && [ $HAVE_GPU -eq 1 ] && [ -x "$BUILD/quill" ]; then
    (
        STEPS="$TMP/mk-steps" # this subshell's records, merged below
        : >"$STEPS"
        step mkmodel-smollm2 "$OUT/mkmodel.log" 60 200 "$BUILD/quill" mkmodel --shape smollm2-135m --type f16 -o "$SMOL"
        step mkmodel-8b "$OUT/mkmodel.log" 180 110 "$BUILD/quill" mkmodel --shape "$BIG_SHAPE" --type q4_0 -o "$BIG"
    ) &
    MK_PID=$!
fi

# ---- tests ----
: >"$OUT/tests.log"
# ctest in the build folder: `ctest --test-dir` needs CMake 3.20, the project asks for 3.18
CTEST_IN_BUILD=(bash -c 'cd "$0" && exec ctest "$@"' "$BUILD_ABS")
if [ $BUILT -eq 1 ] && [ -f "$BUILD/CTestTestfile.cmake" ]; then
    # verbose: the tests print their measured errors (logits vs the CPU, kernel tolerances),
    # and a device test that skips says why only in its output
    step tests-gpu "$OUT/tests.log" 150 120 "${CTEST_IN_BUILD[@]}" -L gpu -LE integration -V -j 1
    # a skipped cmocka test counts as passed: with a GPU in nvidia-smi, a skip is a failure
    if [ $HAVE_GPU -eq 1 ] && grep -q 'SKIP: no CUDA device present' "$OUT/tests.log"; then
        say "tests-gpu: WARNING: the tests found no CUDA device although nvidia-smi lists one" \
            "(a driver older than the toolkit? see device.txt and tests.log)"
        FAILED=1
    fi
    step tests-cuda-cpu "$OUT/tests.log" 30 110 "${CTEST_IN_BUILD[@]}" -R '^cuda' -LE gpu --output-on-failure
    # quill serve on the device, and a real device fault through the server; straight with
    # python3 (run.sh would first try to pip-install the openai SDK, which these tests do not use)
    if [ -x "$BUILD/quill" ] && [ $HAVE_GPU -eq 1 ]; then
        step tests-serve-cuda "$OUT/tests.log" 90 100 env PYTHONDONTWRITEBYTECODE=1 python3 \
            tests/integration/test_cuda.py "$BUILD_ABS/quill"
    fi
else
    say "tests: skipped (no test build)"
    echo "tests skipped 0" >>"$STEPS"
fi

if [ -n "$MK_PID" ]; then
    wait "$MK_PID"
    # the subshell's step records (its FAILED is its own: read them back)
    if [ -f "$TMP/mk-steps" ]; then
        grep '^mkmodel' "$TMP/mk-steps" >>"$STEPS"
        grep '^mkmodel' "$TMP/mk-steps" | awk '$2 != 0 { bad = 1 } END { exit bad }' || FAILED=1
    else
        FAILED=1
    fi
fi

# ---- benchmark ----
: >"$OUT/bench.log"
BENCH="$BUILD/bench-gpu"
if [ $HAVE_GPU -eq 1 ] && [ -x "$BENCH" ]; then
    [ -f "$SMOL" ] && step bench-smollm2 "$OUT/bench.log" 60 90 "$BENCH" --model "$SMOL" --json "$TMP/bench-smollm2-135m.json"
    [ -f "$BIG" ] && step bench-8b "$OUT/bench.log" 150 45 "$BENCH" --model "$BIG" --json "$TMP/bench-$BIG_SHAPE.json"
    # the kernels alone (bench/bench-cuda-kernels.c), then smollm2 without graphs
    [ -x "$BUILD/bench-cuda-kernels" ] && step bench-kernels "$OUT/bench-kernels.log" 25 20 "$BUILD/bench-cuda-kernels" 20
    [ -f "$SMOL" ] && step bench-smollm2-eager "$OUT/bench.log" 20 0 env QL_CUDA_GRAPHS=0 "$BENCH" --model "$SMOL" --batch 1,64 --reps 2 --json "$TMP/bench-smollm2-135m-eager.json"
    [ -f "$SMOL" ] && [ -f "$BIG" ] || say "bench: a model is missing (see mkmodel.log)"
else
    say "bench: skipped ($([ $HAVE_GPU -eq 1 ] && echo "bench-gpu was not built" || echo "no device"))"
    echo "bench skipped 0" >>"$STEPS"
fi

# ---- results.json ----
{
    printf '{\n "date": "%s",\n "device": "%s",\n "have_gpu": %s,\n "seconds": %d,\n "steps": [' \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        "$( [ $HAVE_GPU -eq 1 ] && timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1 || echo none)" \
        "$( [ $HAVE_GPU -eq 1 ] && echo true || echo false)" "$(($(date +%s) - T0))"
    sep=""
    while read -r name rc secs; do
        printf '%s\n  {"name": "%s", "status": "%s", "exit": %s, "seconds": %s}' "$sep" "$name" \
            "$(case $rc in 0) echo ok ;; skipped) echo skipped ;; 124 | 137) echo timeout ;; *) echo failed ;; esac)" \
            "$( [ "$rc" = skipped ] && echo null || echo "$rc")" "$secs"
        sep=","
    done <"$STEPS"
    printf '],\n "bench": ['
    sep=""
    for f in "$TMP"/bench-*.json; do
        [ -s "$f" ] || continue
        # a run killed while writing leaves a truncated file: keep results.json valid JSON
        ! command -v python3 >/dev/null 2>&1 ||
            python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$f" 2>/dev/null || {
            echo "gpu-check: $(basename "$f") does not parse: left out of results.json" >>"$OUT/summary.txt"
            continue
        }
        printf '%s\n  ' "$sep"
        cat "$f"
        sep=","
    done
    printf ']\n}\n'
} >"$OUT/results.json"

say "done in $(($(date +%s) - T0))s: $( [ $FAILED -eq 0 ] && echo "every step passed" || echo "some steps FAILED or were skipped")"
exit $FAILED
