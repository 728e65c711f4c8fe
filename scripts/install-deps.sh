#!/usr/bin/env bash
# scripts/install-deps.sh — installs what quill needs to build and test on Debian/Ubuntu,
# and nothing when it is all there (quiet then). Runs as root, or through sudo.
set -euo pipefail

# Debian packages: compiler and build tools, the C libraries quill links, llhttp (below),
# and python3 (pip fetches the default model; tools/reference builds llama.cpp through it).
pkgs=(build-essential cmake pkg-config git unzip ca-certificates curl
      libuv1-dev libjansson-dev libcmocka-dev python3 python3-pip python3-venv)

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# NOTE(llhttp-package): Debian 12 ships llhttp only as node-llhttp, whose C sources
# (/usr/share/llhttp) CMake compiles in; Debian 13 and Ubuntu 24.04 build it as a library,
# libllhttp-dev, and their node-llhttp no longer carries the C files. Either will do.
llhttp_found() {
    [ -e /usr/share/llhttp/llhttp.c ] && return 0
    [ -e /usr/include/llhttp.h ] && compgen -G '/usr/lib/*/libllhttp.so' >/dev/null
}
need_llhttp=0
llhttp_found || need_llhttp=1
[ ${#missing[@]} -eq 0 ] && [ $need_llhttp -eq 0 ] && exit 0
wanted="${missing[*]}"
if [ $need_llhttp -eq 1 ]; then wanted+="${wanted:+ }llhttp (libllhttp-dev or node-llhttp)"; fi

if [ ! -r /etc/debian_version ] || ! command -v apt-get >/dev/null; then
    echo "install-deps: not a Debian/Ubuntu system; install by hand: $wanted" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: $wanted" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
if [ $need_llhttp -eq 1 ]; then
    if apt-cache show libllhttp-dev >/dev/null 2>&1; then missing+=(libllhttp-dev); else missing+=(node-llhttp); fi
fi
echo "install-deps: installing ${missing[*]}" >&2
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
