#!/usr/bin/env bash
# tests/cli/test-cli.sh QUILL — the quill binary's command line, end to end: help, version,
# exit codes and one-line errors. Prints "N passed, N failed".
set -u
Q=${1:?usage: test-cli.sh path/to/quill}
pass=0 fail=0
out=$(mktemp) errf=$(mktemp)
trap 'rm -f "$out" "$errf"' EXIT

# expect CODE DESCRIPTION -- ARGS...: runs quill, checks the exit code.
expect() {
    local code=$1 desc=$2; shift 3
    "$Q" "$@" >"$out" 2>"$errf"
    local rc=$?
    if [ "$rc" -eq "$code" ]; then pass=$((pass + 1)); return 0; fi
    fail=$((fail + 1)); echo "FAIL: $desc: exit $rc, expected $code"; sed 's/^/  stderr: /' "$errf" | head -5
    return 1
}
# has FILE TEXT DESCRIPTION
has() {
    if grep -qF -- "$2" "$1"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $3: no '$2'"; fi
}
one_line() {
    local n; n=$(wc -l <"$errf")
    if [ "$n" -eq 1 ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $1: stderr has $n lines"; cat "$errf"; fi
}

expect 0 "--help" -- --help
for flag in --host --port --model --threads --backend --api-key --kv-cache-mem --block-size \
            --max-num-seqs --max-batched-tokens --max-model-len --max-queue --max-connections \
            --max-request-bytes --request-timeout --idle-timeout --shutdown-timeout --spec-method \
            --draft-model --num-speculative-tokens --log-level --config --prompt --n-predict \
            --temperature --seed --shape --output --verbose --chat; do
    has "$out" "$flag" "quill --help lists $flag"
done
for cmd in serve run bench tokenize inspect mkmodel; do
    expect 0 "$cmd --help" -- "$cmd" --help && has "$out" "usage: quill $cmd" "$cmd --help usage"
done
expect 0 "--version" -- --version
has "$out" "quill 0." "version number"
has "$out" "commit" "git commit"
has "$out" "cuda:" "cuda line"

expect 2 "serve --port 99999" -- serve --port 99999
has "$errf" "--port" "port error names the flag"
has "$errf" "1..65535" "port error gives the range"
one_line "serve --port 99999"
QUILL_PORT=0 expect 2 "QUILL_PORT=0" -- serve
has "$errf" "QUILL_PORT" "env error names the variable"
expect 2 "unknown command" -- frobnicate
has "$errf" "unknown command 'frobnicate'" "unknown command named"
expect 2 "unknown flag" -- run --frob
has "$errf" "--frob" "unknown flag named"
expect 2 "no command" --
expect 2 "bad config file" -- serve --config /nonexistent/q.json
has "$errf" "--config" "config error names the flag"

# What a later part of quill delivers says so and exits non-zero; nothing pretends.
expect 1 "bench is not available" -- bench
has "$errf" "not available" "bench says not available"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
