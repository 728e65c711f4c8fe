#!/usr/bin/env bash
# scripts/test-deploy.sh — `make test-deploy`: checks deploy/ on a machine without a docker
# engine and without access to any registry but Debian's archive and PyPI:
#   1. a local Debian base image: a minbase rootfs from debootstrap, imported with podman
#      (cached: the podman image, and its tarball under ~/.cache/quill/deploy/);
#   2. deploy/Dockerfile's CPU-only variant built on it with `podman build --isolation chroot`,
#      target `test`: the CMake build, the unit tests, then deploy/test-image.sh inside the
#      runtime image (only quill and what it links, non-root, quill serve, HEALTHCHECK...);
#      then the default target, whose metadata (user, entrypoint, port, healthcheck) is checked,
#      and QL_CUDA=ON on a base without nvcc, which must be refused with its reason;
#   3. every YAML file under deploy/ linted (yamllint), and the manifests checked by
#      scripts/check-deploy.py: deploy/k8s/ against the Kubernetes schemas (kubernetes-validate),
#      k8s and compose against quill's own options, routes and metrics; yamllint and
#      kubernetes-validate come from PyPI, in a venv under ~/.cache/quill.
# Runs as root (or through sudo for apt). Environment:
#   QUILL_CACHE         cache folder (default ~/.cache/quill)
#   QL_DEPLOY_SUITE     Debian release of the base image (default: this machine's, else bookworm)
#   QL_DEBIAN_MIRROR    (default http://deb.debian.org/debian)
#   QL_DEPLOY_BAKE      1 (default): build with BAKE_MODEL=1, so the image test serves the default
#                       model; 0: a random-weight tiny model instead (no model download)
#   QL_DEPLOY_REFRESH   1: remake the base image
#   JOBS                compile jobs inside the build (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${QUILL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/quill}"
DCACHE="$CACHE/deploy"
host_suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
SUITE="${QL_DEPLOY_SUITE:-${host_suite:-bookworm}}"
MIRROR="${QL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BAKE="${QL_DEPLOY_BAKE:-1}"
JOBS="${JOBS:-2}"
BASE_IMG="localhost/quill-deploy-base:$SUITE"
TEST_IMG="localhost/quill-deploy-test:latest"
RUN_IMG="localhost/quill:cpu-test"
# pinned: a new release can change what passes
PIP_PKGS=(kubernetes-validate==1.37.0 yamllint==1.38.0)

t0=$(date +%s)
step() { echo "test-deploy: [$(($(date +%s) - t0))s] $*" >&2; }
die() { echo "test-deploy: FAIL: $*" >&2; exit 1; }

mkdir -p "$DCACHE"
exec 9>"$DCACHE/lock"
flock -w 1800 9 || die "could not lock $DCACHE/lock (another test-deploy runs?)"

# ---- 0. tools ----
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "needs root or sudo (apt, debootstrap, podman)"
    SUDO="sudo"
fi
need=()
command -v podman >/dev/null || need+=(podman)
command -v debootstrap >/dev/null || need+=(debootstrap)
python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
    command -v apt-get >/dev/null || die "not a Debian/Ubuntu system; install by hand: ${need[*]}"
    step "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq >/dev/null
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PODMAN=($SUDO podman)

# ---- 1. the base image ----
tarball="$DCACHE/$SUITE-minbase.tar"
if [ "${QL_DEPLOY_REFRESH:-0}" = 1 ]; then
    rm -f "$tarball"
    "${PODMAN[@]}" rmi -f "$BASE_IMG" >/dev/null 2>&1 || true
fi
if ! "${PODMAN[@]}" image exists "$BASE_IMG"; then
    if [ ! -s "$tarball" ]; then
        step "debootstrap --variant=minbase $SUITE from $MIRROR (once; cached in $tarball)"
        root=$(mktemp -d "$DCACHE/rootfs.XXXXXX")
        trap '$SUDO rm -rf "$root"' EXIT
        if ! $SUDO debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" \
            >"$DCACHE/debootstrap.log" 2>&1; then
            tail -n 5 "$DCACHE/debootstrap.log" >&2
            die "debootstrap failed (see $DCACHE/debootstrap.log)"
        fi
        $SUDO rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
        $SUDO tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
        mv "$tarball.tmp" "$tarball"
        $SUDO rm -rf "$root"
        trap - EXIT
    fi
    step "podman import $tarball as $BASE_IMG"
    "${PODMAN[@]}" import --quiet --change 'CMD ["/bin/bash"]' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" "$BASE_IMG" >/dev/null
fi

# ---- 2. the image, CPU-only, on the base image ----
build=("${PODMAN[@]}" build --isolation chroot --format docker --pull=never -f deploy/Dockerfile
       --build-arg "BASE_BUILD=$BASE_IMG" --build-arg "BASE_RUN=$BASE_IMG"
       --build-arg QL_CUDA=OFF --build-arg "JOBS=$JOBS" --build-arg "BAKE_MODEL=$BAKE")
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || true)
[ -z "$commit" ] || build+=(--build-arg "QL_COMMIT=$commit")
# BAKE_MODEL's pip download trusts what this machine's pip trusts (a TLS-intercepting proxy's CA)
ca="${PIP_CERT:-${REQUESTS_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}}"
[ ! -s "$ca" ] || build+=(--secret "id=pip-ca,src=$ca")
step "podman build --target test (QL_CUDA=OFF, BAKE_MODEL=$BAKE): build, unit tests, test-image.sh"
if ! nice "${build[@]}" --build-arg "TEST_RUN=$(date +%s)" --target test -t "$TEST_IMG" . \
    >"$DCACHE/build.log" 2>&1; then
    tail -n 60 "$DCACHE/build.log" >&2
    die "podman build --target test (log: $DCACHE/build.log)"
fi
grep -E '^test-image: ' "$DCACHE/build.log" >&2 || true
grep -q '^test-image: all passed' "$DCACHE/build.log" || die "test-image.sh did not report success"

step "podman build (the default target, the image users get)"
if ! nice "${build[@]}" -t "$RUN_IMG" . >"$DCACHE/build-run.log" 2>&1; then
    tail -n 30 "$DCACHE/build-run.log" >&2
    die "podman build of the default target (log: $DCACHE/build-run.log)"
fi
fmt='{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.ExposedPorts}}'
fmt+='|{{json .Config.Healthcheck.Test}}'
meta=$("${PODMAN[@]}" image inspect --format "$fmt" "$RUN_IMG")
echo "test-deploy: image $RUN_IMG: $meta" >&2
IFS='|' read -r user entry ports health <<<"$meta"
[ "$user" = quill ] || die "the image's user is '$user', expected quill"
[ "$entry" = '["quill","serve"]' ] || die "the image's entrypoint is $entry"
[[ $ports == *'"8000/tcp"'* ]] || die "the image does not expose 8000: $ports"
[[ $health == *quill-healthcheck* ]] || die "the image has no HEALTHCHECK: $health"
# the runtime image is the test image minus the test's own files
"${PODMAN[@]}" image exists "$TEST_IMG" || die "no test image"

step "podman build --build-arg QL_CUDA=ON on a base without nvcc: refused, saying why"
if nice "${build[@]}" --build-arg QL_CUDA=ON --target build . >"$DCACHE/build-cuda.log" 2>&1; then
    die "QL_CUDA=ON built on a base image without nvcc (log: $DCACHE/build-cuda.log)"
fi
grep -q '^deploy: QL_CUDA=ON needs nvcc in BASE_BUILD' "$DCACHE/build-cuda.log" \
    || { tail -n 20 "$DCACHE/build-cuda.log" >&2; die "QL_CUDA=ON without nvcc: another failure"; }

# ---- 3. manifests ----
VENV="$CACHE/deployvenv"
if [ "$(cat "$VENV/.quill-packages" 2>/dev/null)" != "${PIP_PKGS[*]}" ]; then
    step "pip install ${PIP_PKGS[*]} into $VENV (once)"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || die "python3 -m venv failed"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PIP_PKGS[@]}" \
        >"$DCACHE/pip.log" 2>&1 \
        || { tail -n 5 "$DCACHE/pip.log" >&2; die "pip install (is PyPI reachable?)"; }
    echo "${PIP_PKGS[*]}" >"$VENV/.quill-packages"
fi
step "yamllint deploy/"
"$VENV/bin/yamllint" --strict -c deploy/yamllint.yaml deploy/ || die "yamllint"
step "deploy/k8s, deploy/compose.yaml: kubernetes-validate; quill's options, routes, metrics"
"$VENV/bin/python" scripts/check-deploy.py || die "deploy/'s manifests (scripts/check-deploy.py)"
step "all passed"
