#!/usr/bin/env bash
# bench/peers/spec-llama.sh [MODEL] — the peer figure for bench-spec's rewrite task at
# concurrency 1: llama.cpp's llama-server (built by bench/peers/llama-build.sh) decoding the same
# four prompts greedily, 64 tokens each, without speculation and with its n-gram drafter
# (--spec-type ngram-simple, 4 drafted tokens at most), one request at a time. Prints the decode
# rate llama-server reports (timings.predicted_per_second) and its drafted/accepted counts.
# The prompts are bench-spec's (bench/bench-spec.c, make_prompt, task rewrite).
set -eu
M=${1:-${QL_DEFAULT_MODEL:-$HOME/.cache/quill/SmolLM2-135M-Instruct.Q4_1.gguf}}
B=${LLAMA_BIN:-$HOME/.cache/quill/llama.cpp-build/build-0.3.36-noamx/bin}
PORT=${PORT:-18431}
[ -x "$B/llama-server" ] || { echo "spec-llama: no $B/llama-server (bench/peers/llama-build.sh)" >&2; exit 1; }

run() { # $1: label, then llama-server flags
    local label=$1; shift
    "$B/llama-server" -m "$M" -t 2 -c 2048 --port "$PORT" -np 1 "$@" >/tmp/spec-llama-server.log 2>&1 &
    local pid=$!
    for _ in $(seq 1 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.5; done
    python3 - "$label" "$PORT" <<'EOF'
import json, sys, urllib.request
label, port = sys.argv[1], sys.argv[2]
paras = [
    "The committee met on Tuesday to review the budget for the coming year. After a long "
    "discussion, the members agreed to increase funding for the public library, to repair the "
    "roads near the old market, and to hire two new teachers for the primary school. The mayor "
    "thanked everyone for their patience and promised a full report by the end of the month.",
    "Photosynthesis is the process by which green plants use sunlight to make food from carbon "
    "dioxide and water. It takes place mainly in the leaves, inside small structures called "
    "chloroplasts, which contain the green pigment chlorophyll. Oxygen is released as a by "
    "product, and the sugars that are made give the plant the energy it needs to grow.",
    "To make a simple tomato sauce, warm two spoons of olive oil in a pan, add a chopped onion "
    "and cook it slowly until it is soft. Add two cloves of garlic, a can of tomatoes and a pinch "
    "of salt, then let the sauce simmer for twenty minutes, stirring from time to time, until it "
    "is thick. Finish it with fresh basil and serve it with pasta.",
    "The old lighthouse stood at the edge of the cliff for more than a hundred years. Every "
    "night its keeper climbed the narrow stairs to light the lamp, and every morning he wrote "
    "down the weather and the ships he had seen. When the lighthouse was finally automated, the "
    "keeper moved to the village below, but he still watched the light from his window.",
]
rates, drafted, accepted = [], 0, 0
for i, p in enumerate(paras):
    start = p[:40].rsplit(" ", 1)[0]
    prompt = (f"Request {i}. Rewrite the following text, correcting any mistakes and keeping "
              f"everything else the same.\n\nText: {p}\n\nRewritten text: {start}")
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
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run "none"
run "ngram-simple" --spec-type ngram-simple --spec-draft-n-max 4
run "none (again)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
