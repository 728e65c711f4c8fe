#!/usr/bin/env bash
# scripts/install-deps.sh — installs what quill needs to build and test on Debian/Ubuntu,
# and nothing when it is all there (quiet then). Runs as root, or through sudo.
set -euo pipefail

# Debian packages: compiler and build tools, the C libraries quill links, llhttp's sources,
# and python3 (pip fetches the default model; tools/reference builds llama.cpp through it).
pkgs=(build-essential cmake pkg-config git unzip ca-certificates curl
      libuv1-dev libjansson-dev libcmocka-dev node-llhttp python3 python3-pip python3-venv)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null; then
    echo "install-deps: not a Debian/Ubuntu system; install by hand: ${missing[*]}" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
