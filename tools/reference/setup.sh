#!/usr/bin/env bash
# tools/reference/setup.sh — creates (or checks) the Python venv the reference scripts run in:
# llama-cpp-python (which builds llama.cpp from source, CPU only), gguf, numpy and jinja2.
# The venv lives outside the repository and is never committed. Idempotent: a venv that
# already holds the pinned versions is left alone. Prints the venv's python on the last line.
#   QUILL_REFVENV  venv folder (default: ~/.cache/quill/refvenv, under $QUILL_CACHE if set)
set -euo pipefail

# Pinned: what decides the fixtures' contents (llama.cpp's tokenizer, jinja2's rendering).
PINNED=("llama-cpp-python==0.3.36" "jinja2==3.1.6")
OTHERS=(gguf numpy)
CACHE="${QUILL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quill}"
VENV="${QUILL_REFVENV:-$CACHE/refvenv}"
PY="$VENV/bin/python"

ready() {
    [ -x "$PY" ] && "$PY" - "${PINNED[@]}" <<'PY' >/dev/null 2>&1
import sys, importlib.metadata as md
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    assert md.version(name) == want, spec
import llama_cpp, gguf, numpy, jinja2  # noqa: F401
PY
}

if ready; then
    echo "$PY"
    exit 0
fi

if [ ! -x "$PY" ]; then
    echo "setup: creating $VENV" >&2
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" || {
        echo "setup: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
        exit 1
    }
fi
"$PY" -m pip install --quiet --disable-pip-version-check --upgrade pip >&2
# NOTE(build): llama-cpp-python compiles llama.cpp with CMake and a C++ compiler; this takes
# several minutes once. CMAKE_ARGS keeps it CPU-only so it builds on any machine.
echo "setup: installing ${PINNED[*]} ${OTHERS[*]} (builds llama.cpp: a few minutes)" >&2
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_CUDA=OFF}" \
    "$PY" -m pip install --quiet --disable-pip-version-check "${PINNED[@]}" "${OTHERS[@]}" >&2
if ! ready; then
    echo "setup: $VENV still lacks a working ${PINNED[*]}" >&2
    exit 1
fi
echo "$PY"
