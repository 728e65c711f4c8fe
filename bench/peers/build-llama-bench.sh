#!/bin/sh
# bench/peers/build-llama-bench.sh — builds llama.cpp's `llama-bench`, the peer quill's
# forward-pass benchmark is compared with (docs/BENCHMARKS.md), from the llama.cpp sources
# vendored in the llama-cpp-python source distribution. The build lives OUTSIDE the
# repository (default ~/.cache/quill/llama.cpp-build) and is never committed.
#
#   bench/peers/build-llama-bench.sh            # prints the llama-bench path on success
#   LLAMA_CPP_PYTHON_VERSION=0.3.36 QL_PEER_DIR=/some/dir JOBS=2 bench/peers/build-llama-bench.sh
#
# llama.cpp is configured with its defaults (GGML_NATIVE=ON: -march=native, so it uses every
# SIMD extension of the build machine, OpenMP threads), only the llama-bench target, with one
# exception: on a CPU with AMX, -march=native turns on ggml's AMX matmul, which crashed
# (SIGSEGV in ggml_backend_amx_mul_mat) on the KVM guest docs/BENCHMARKS.md was measured on.
# There the script lists the CPU's x86 extensions explicitly instead (AVX2, FMA, F16C,
# AVX-VNNI, AVX512 F/BW/VL/DQ/CD, VNNI, VBMI, BF16: everything -march=native would use for
# these kernels except AMX); QL_LLAMA_NATIVE=1 forces plain native.
set -eu

VER="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DIR="${QL_PEER_DIR:-$HOME/.cache/quill/llama.cpp-build}"
JOBS="${JOBS:-2}"
PIP="${PIP:-python3 -m pip}"

mkdir -p "$DIR"
cd "$DIR"
SDIST="llama_cpp_python-$VER.tar.gz"
if [ ! -f "$SDIST" ]; then
    echo "build-llama-bench: downloading the llama-cpp-python $VER source distribution" >&2
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
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    # shellcheck disable=SC2086
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF $ARCH_FLAGS >&2
fi
cmake --build "$BUILD" --target llama-bench -j "$JOBS" >&2
BIN="$BUILD/bin/llama-bench"
test -x "$BIN"
echo "$BIN"
