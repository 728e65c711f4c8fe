#!/usr/bin/env bash
# scripts/test-venv.sh — the Python the integration tests run with: a venv outside the repository
# (~/.cache/quill/testvenv, or $QUILL_CACHE/testvenv) holding the official `openai` SDK from PyPI,
# made on first use. Prints the venv's python on the last line; exits 1 (saying why) when it
# cannot be made, and the tests that need the SDK then skip.
set -euo pipefail
PKG="openai==3.57.0"
CACHE="${QUILL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quill}"
VENV="$CACHE/testvenv"
mkdir -p "$CACHE"
exec 9>"$CACHE/testvenv.lock"
flock -w 600 9 || { echo "test-venv: could not lock $CACHE/testvenv.lock" >&2; exit 1; }
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import openai" 2>/dev/null; then
    echo "$VENV/bin/python"
    exit 0
fi
echo "test-venv: installing $PKG into $VENV (once)" >&2
rm -rf "$VENV"
if ! python3 -m venv "$VENV" >"$CACHE/testvenv.log" 2>&1; then
    echo "test-venv: python3 -m venv failed (install python3-venv: scripts/install-deps.sh); see $CACHE/testvenv.log" >&2
    exit 1
fi
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$PKG" >>"$CACHE/testvenv.log" 2>&1; then
    echo "test-venv: pip could not install $PKG (is PyPI reachable?); see $CACHE/testvenv.log" >&2
    rm -rf "$VENV"
    exit 1
fi
echo "$VENV/bin/python"
