#!/usr/bin/env bash
# tests/integration/run.sh TEST.py QUILL [--asan]: one integration test file, run with the venv
# that has the openai SDK (scripts/test-venv.sh makes it on first use), else with python3 (the
# SDK tests then skip, saying why). Exit 77 means skipped (CTest's SKIP_RETURN_CODE).
set -u
export PYTHONDONTWRITEBYTECODE=1 # nothing written into the source tree
here=$(cd "$(dirname "$0")" && pwd)
py=$("$here/../../scripts/test-venv.sh" | tail -n 1) || py=""
if [ -z "$py" ] || [ ! -x "$py" ]; then
    echo "integration: no venv with the openai SDK; running with python3" >&2
    py=python3
fi
cd "$here" && exec "$py" -W ignore "$here/$1" "${@:2}"
