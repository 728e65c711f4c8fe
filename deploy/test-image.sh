#!/bin/bash
# deploy/test-image.sh — runs inside the image (the Dockerfile's `test` stage, which is the
# runtime stage plus this script) as the image's user: the runtime holds quill and what it
# links and nothing else, and quill serve works there as the image starts it (environment
# defaults, API key from the environment, the HEALTHCHECK script, /ready, /metrics, a
# completion, SIGTERM drain). Any failure exits 1 and fails the image build.
set -euo pipefail

fail() { echo "test-image: FAIL: $*" >&2; exit 1; }
ok() { echo "test-image: ok: $*"; }

# ---- the binary and its user ----
[ -f /tmp/unit-tests-passed ] || fail "the unit stage did not run"
version=$(quill --version) || fail "quill --version exited $?"
echo "$version"
[[ $version == "quill "* ]] || fail "quill --version: unexpected output"
if [ -n "${QL_EXPECT_COMMIT:-}" ]; then # the build's --build-arg QL_COMMIT
    [[ $version == *"(commit $QL_EXPECT_COMMIT)"* ]] ||
        fail "quill --version does not name commit $QL_EXPECT_COMMIT"
fi
ok "quill --version"
[ "$(id -u)" -ne 0 ] || fail "the image runs as root"
[ "$(id -un)" = quill ] || fail "the image's user is $(id -un), not quill"
ok "runs as $(id -un) ($(id -u))"

# ---- only quill and what it links ----
ldd_out=$(ldd /usr/local/bin/quill)
echo "$ldd_out"
if grep -q 'not found' <<<"$ldd_out"; then fail "a library quill links is missing"; fi
# Every library quill links must be one of these (a new dependency is a decision: add it here
# and to docs/DEPLOY.md). The CUDA ones only in the CUDA variant.
allowed='linux-vdso|ld-linux-x86-64|ld-linux-aarch64|libc|libm|libdl|libpthread|librt'
allowed+='|libuv|libjansson|libgomp|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt'
while read -r lib _; do
    base=${lib##*/}
    base=${base%%.so*}
    [[ $base =~ ^($allowed)$ ]] || fail "quill links $lib, not an expected runtime dependency"
done <<<"$ldd_out"
if [[ $version == *"cuda: compiled in"* ]]; then
    grep -q libcudart <<<"$ldd_out" || fail "a CUDA build that does not link cudart"
fi
ok "links only: $(awk '{print $1}' <<<"$ldd_out" | tr '\n' ' ')"
for tool in cc gcc nvcc cmake make python3 pip3 curl; do
    if command -v "$tool" >/dev/null 2>&1; then fail "the runtime image holds $tool"; fi
done
for f in /usr/include/uv.h /usr/include/jansson.h /src /build; do
    [ ! -e "$f" ] || fail "the runtime image holds $f"
done
ok "no toolchain, headers or sources"

# ---- quill serve as the image runs it ----
[ "${QUILL_HOST:-}" = 0.0.0.0 ] || fail "QUILL_HOST is '${QUILL_HOST:-}', expected 0.0.0.0"
[ "${QUILL_MODEL:-}" = /models/model.gguf ] || fail "QUILL_MODEL is '${QUILL_MODEL:-}'"
work=$(mktemp -d)
if [ -f /models/model.gguf ]; then
    model=/models/model.gguf   # baked in (BAKE_MODEL=1): serve the image's own model
else
    model=$work/tiny.gguf
    quill mkmodel --shape tiny -o "$model" >/dev/null 2>&1 || fail "quill mkmodel"
fi
# The build shares the host's network: loopback only, and a port the system picks.
export QUILL_HOST=127.0.0.1 QUILL_PORT=0 QUILL_MODEL=$model QUILL_API_KEY=test-key-1,test-key-2
export QUILL_SHUTDOWN_TIMEOUT=10 QUILL_THREADS=2 QUILL_KV_CACHE_MEM=64M
: >"$work/serve.log"   # before the background job opens it: the loop below reads it at once
quill serve 2>>"$work/serve.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
port=""
for _ in $(seq 1 100); do
    port=$(sed -n 's|^quill serve: listening on http://[^ ]*:\([0-9]*\)$|\1|p' "$work/serve.log")
    [ -n "$port" ] && break
    kill -0 $pid 2>/dev/null || { cat "$work/serve.log" >&2; fail "quill serve exited at start"; }
    sleep 0.1
done
[ -n "$port" ] || fail "quill serve did not report its port"
export QUILL_PORT=$port
ok "quill serve listens on port $port (model $model)"

quill-healthcheck || fail "the HEALTHCHECK fails on a running server"
ok "HEALTHCHECK (/health)"
ready=0
for _ in $(seq 1 600); do
    if quill-healthcheck /ready 2>/dev/null; then ready=1; break; fi
    sleep 0.1
done
[ $ready = 1 ] || { cat "$work/serve.log" >&2; fail "/ready never answered 200"; }
ok "/ready"

# http METHOD PATH [KEY [BODY]]: the whole response (Connection: close), on stdout.
http() {
    local method=$1 path=$2 key=${3:-} body=${4:-}
    exec 4<>"/dev/tcp/127.0.0.1/$port"
    {
        printf '%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n' "$method" "$path"
        [ -z "$key" ] || printf 'Authorization: Bearer %s\r\n' "$key"
        [ -z "$body" ] \
            || printf 'Content-Type: application/json\r\nContent-Length: %d\r\n' "${#body}"
        printf '\r\n%s' "$body"
    } >&4
    timeout 60 cat <&4
    exec 4<&-
}
r=$(http GET /metrics)
[[ $r == "HTTP/1.1 401 "* ]] || fail "/metrics without the key: ${r%%$'\r'*}"
r=$(http GET /metrics test-key-2)
[[ $r == "HTTP/1.1 200 "* ]] || fail "/metrics with the key: ${r%%$'\r'*}"
# the metric the Kubernetes HPA scales on (deploy/k8s/hpa.yaml)
grep -q "^quill:num_requests_waiting{model_name=\"[^\"]*\"} [0-9]" <<<"$r" \
    || fail "/metrics has no quill:num_requests_waiting gauge"
ok "QUILL_API_KEY from the environment; /metrics has quill:num_requests_waiting"
r=$(http POST /v1/completions test-key-1 '{"prompt":"Hello","max_tokens":4,"temperature":0}')
[[ $r == "HTTP/1.1 200 "* ]] || fail "a completion: ${r%%$'\r'*}"
grep -q '"completion_tokens":' <<<"$r" || fail "a completion without usage: $r"
ok "a completion"

kill -TERM $pid
rc=0
wait $pid || rc=$?
[ $rc -eq 0 ] || { cat "$work/serve.log" >&2; fail "quill serve exited $rc after SIGTERM, not 0"; }
if quill-healthcheck 2>/dev/null; then fail "the HEALTHCHECK passes with no server"; fi
ok "SIGTERM drains and exits 0; the HEALTHCHECK then fails"
echo "test-image: all passed"
