#!/bin/sh
# bench/peers/llama-build.sh — builds llama.cpp targets (llama-bench, llama-server), the peers
# quill's benchmarks are compared with (docs/BENCHMARKS.md), from the llama.cpp sources
# vendored in the llama-cpp-python source distribution. The build lives OUTSIDE the
# repository (default ~/.cache/quill/llama.cpp-build) and is never committed.
#
#   bench/peers/llama-build.sh llama-server     # prints the binary's path on success
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 QL_PEER_DIR=/some/dir JOBS=2 bench/peers/llama-build.sh llama-bench
#
# llama.cpp is configured with its defaults (GGML_NATIVE=ON: -march=native, so it uses every
# SIMD extension of the build machine, OpenMP threads), with one exception: on a CPU with AMX,
# -march=native turns on ggml's AMX matmul, which crashed (SIGSEGV in
# ggml_backend_amx_mul_mat) on the KVM guest docs/BENCHMARKS.md was measured on. There the
# script lists the CPU's x86 extensions explicitly instead (AVX2, FMA, F16C, AVX-VNNI, AVX512
# F/BW/VL/DQ/CD, VNNI, VBMI, BF16: everything -march=native would use for these kernels
# except AMX); QL_LLAMA_NATIVE=1 forces plain native. The server target is configured too
# (LLAMA_BUILD_SERVER=ON) so that one build directory serves both peers.
set -eu

TARGET="${1:?usage: llama-build.sh llama-bench|llama-server}"
VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DIR="${QL_PEER_DIR:-$HOME/.cache/quill/llama.cpp-build}"
JOBS="${JOBS:-2}"
PIP="${PIP:-python3 -m pip}"

mkdir -p "$DIR"
cd "$DIR"
SDIST="llama_cpp_python-$VER.tar.gz"
if [ ! -f "$SDIST" ]; then
    echo "llama-build: downloading the llama-cpp-python $VER source distribution" >&2
    $PIP download --no-deps --no-binary :all: "llama-cpp-python==$VER" -d . >&2
fi
SRC="$DIR/llama_cpp_python-$VER/vendor/llama.cpp"
if [ ! -f "$SRC/CMakeLists.txt" ]; then
    tar xzf "$SDIST"
fi
ARCH_FLAGS=""
BUILD="$DIR/build-$VER"
if [ "${QL_LLAMA_NATIVE:-0}" != 1 ] && grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
    has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
    ARCH_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=$(has bmi2)
        -DGGML_AVX_VNNI=$(has avx_vnni) -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VNNI=$(has avx512_vnni)
        -DGGML_AVX512_VBMI=$(has avx512vbmi) -DGGML_AVX512_BF16=$(has avx512_bf16)
        -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    BUILD="$DIR/build-$VER-noamx"
fi
# Built once: the sources never change, and llama.cpp's build step would try (and, offline,
# fail harmlessly) to download its web UI each time. QL_LLAMA_REBUILD=1 runs the build anyway.
if [ "${QL_LLAMA_REBUILD:-0}" != 1 ] && [ -x "$BUILD/bin/$TARGET" ]; then
    echo "$BUILD/bin/$TARGET"
    exit 0
fi
if [ ! -f "$BUILD/CMakeCache.txt" ] || ! grep -q '^LLAMA_BUILD_SERVER:BOOL=ON' "$BUILD/CMakeCache.txt"; then
    # shellcheck disable=SC2086
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON $ARCH_FLAGS >&2
fi
cmake --build "$BUILD" --target "$TARGET" -j "$JOBS" >&2
BIN="$BUILD/bin/$TARGET"
test -x "$BIN"
echo "$BIN"
