#!/usr/bin/env bash
# bench/peers/spec-llama.sh [MODEL] — the peer figure for bench-spec's rewrite task at
# concurrency 1: llama.cpp's llama-server (built by bench/peers/llama-build.sh) decoding the same
# four prompts greedily, 64 tokens each, without speculation and with its n-gram drafter
# (--spec-type ngram-simple, 4 drafted tokens at most), one request at a time. Prints the decode
# rate llama-server reports (timings.predicted_per_second) and its drafted/accepted counts.
# The prompts are bench-spec's own (`bench-spec --print-prompts --task rewrite`, from the quill
# build QUILL_BUILD, default build/).
set -eu
M=${1:-${QL_DEFAULT_MODEL:-$HOME/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf}}
B=${LLAMA_BIN:-$HOME/.cache/quill/llama.cpp-build/build-0.3.36-noamx/bin}
PORT=${PORT:-18431}
Q=${QUILL_BUILD:-build}
[ -x "$Q/bench-spec" ] || { echo "spec-llama: no $Q/bench-spec (make build)" >&2; exit 1; }
[ -x "$B/llama-server" ] || { echo "spec-llama: no $B/llama-server (bench/peers/llama-build.sh)" >&2; exit 1; }

run() { # $1: label, then llama-server flags
    local label=$1; shift
    "$B/llama-server" -m "$M" -t 2 -c 2048 --port "$PORT" -np 1 "$@" >/tmp/spec-llama-server.log 2>&1 &
    local pid=$!
    for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.5; done
    "$Q/bench-spec" --print-prompts --task rewrite | python3 -c "$CLIENT" "$label" "$PORT"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
CLIENT=$(cat <<'EOF'
import json, sys, urllib.request
label, port = sys.argv[1], sys.argv[2]
prompts = [json.loads(line) for line in sys.stdin.read().splitlines()]
assert len(prompts) == 4, prompts
rates, drafted, accepted = [], 0, 0
for prompt in prompts:
    body = json.dumps({"prompt": prompt, "n_predict": 64, "temperature": 0, "ignore_eos": True,
                       "cache_prompt": False}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/completion", body,
                                 {"Content-Type": "application/json"})
    t = json.load(urllib.request.urlopen(req, timeout=600))["timings"]
    rates.append(t["predicted_per_second"])
    drafted += t.get("draft_n", 0)
    accepted += t.get("draft_n_accepted", 0)
rates.sort()
print(f"llama-server {label}: decode tok/s per request {', '.join(f'{r:.1f}' for r in rates)} "
      f"(median {(rates[1] + rates[2]) / 2:.1f}); drafted {drafted}, accepted {accepted}")
EOF
)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run "none"
run "ngram-simple" --spec-type ngram-simple --spec-draft-n-max 4
run "none (again)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
