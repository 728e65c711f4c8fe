#!/usr/bin/env bash
# scripts/run-default.sh QUILL MODEL PORT — what `make run` starts once the build and the model
# are ready: `quill serve` on 127.0.0.1:PORT, in the foreground (Ctrl-C drains and stops it).
# Only when the server cannot start (it never listened: a port in use, a model it cannot load)
# does this say so and show the model working another way: one chat prompt through `quill run`.
set -u
Q=$1 MODEL=$2 PORT=$3
PROMPT="Explain in two sentences why the sky is blue."

cat >&2 <<MSG
make run: starting quill serve on http://127.0.0.1:$PORT (Ctrl-C stops it). In another terminal:
  curl -N http://127.0.0.1:$PORT/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"messages":[{"role":"user","content":"Why is the sky blue?"}],"max_tokens":64,"stream":true}'
MSG
# serve's stderr goes to the terminal as it comes and to a file, to tell a failed start apart
# from a server that ran and then stopped
log=$(mktemp)
trap 'rm -f "$log"' EXIT
"$Q" serve --model "$MODEL" --port "$PORT" 2> >(tee "$log" >&2)
rc=$?
wait # for tee
if [ "$rc" -eq 0 ] || grep -q "quill serve: listening on" "$log"; then
    exit "$rc"
fi
echo "make run: quill serve could not start (exit $rc, see above)." >&2
echo "make run: instead, one chat prompt through the same model, backend and engine:" >&2
echo "make run:   $Q run --model $MODEL --chat -n 64 -p \"$PROMPT\"" >&2
echo >&2
"$Q" run --model "$MODEL" --chat -n 64 --log-level warn -p "$PROMPT"
