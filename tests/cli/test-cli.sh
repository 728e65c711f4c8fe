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
has "$errf" "0..65535" "port error gives the range"
one_line "serve --port 99999"
QUILL_PORT=70000 expect 2 "QUILL_PORT=70000" -- serve
has "$errf" "QUILL_PORT" "env error names the variable"
expect 2 "unknown command" -- frobnicate
has "$errf" "unknown command 'frobnicate'" "unknown command named"
expect 2 "unknown flag" -- run --frob
has "$errf" "--frob" "unknown flag named"
expect 2 "no command" --
expect 2 "bad config file" -- serve --config /nonexistent/q.json
has "$errf" "--config" "config error names the flag"

# inspect (model/gguf.c, model/hparams.c): a bad file fails with the reader's one-line error,
# a good one prints its metadata, hyper-parameters and tensor table.
expect 1 "inspect on a bad file" -- inspect --model tests/corpus/gguf/dup-key.gguf
has "$errf" "dup-key.gguf: key 1 'a' (at offset 38): duplicate key (first at offset 24)" "inspect gives the reader's error"
one_line "inspect on a bad file"
expect 1 "inspect on a missing file" -- inspect --model /nonexistent/m.gguf
has "$errf" "No such file or directory" "inspect gives errno text"
expect 2 "inspect without --model" -- inspect
has "$errf" "--model" "inspect names the missing flag"
expect 0 "inspect on a good file" -- inspect --model tests/corpus/gguf/good-tiny-llama.gguf
has "$out" "gguf: version 3, alignment 32" "inspect header line"
has "$out" "llama.block_count" "inspect lists keys"
has "$out" "array[string; 8]" "inspect gives array types and lengths"
has "$out" "llama n_embd=32 n_layer=1 n_head=2 n_head_kv=1 head_dim=16" "inspect shows hyper-parameters"
has "$out" "blk.0.ffn_down.weight" "inspect lists tensors"
has "$out" "total: 11 tensors" "inspect gives totals"

# quill bench with nothing listening: one line naming the server, exit 1 (tests/bench/ has the rest)
expect 1 "bench against a closed port" -- bench --base-url http://127.0.0.1:1 --num-prompts 1
has "$errf" "cannot connect to 127.0.0.1:1" "bench names the server it cannot reach"
one_line "bench against a closed port"

# ---- quill tokenize: ids against llama.cpp's (tests/fixtures/smollm2, tools/reference) ----
# same FILE TEXT DESCRIPTION: FILE's content (without its final newline) is exactly TEXT
same() {
    local got; got=$(cat "$1")
    if [ "$got" = "$2" ]; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: $3: got '$got', expected '$2'"; fi
}
# golden INP OUT TEXT: llama.cpp's ids for TEXT (awk escapes such as \n allowed) from a
# gen-tokenize.py fixture pair, without the leading space; empty when TEXT is not in INP
golden() {
    local n
    n=$(awk -v RS='\n__ggml_vocab_test__\n' -v want="$3" '$0 "" == want "" { print NR; exit }' "$1")
    [ -n "$n" ] && sed -n "${n}p" "$2" | sed 's/^ //'
}
expect 2 "tokenize without --model" -- tokenize hello
has "$errf" "--model" "tokenize names the missing --model"
one_line "tokenize without --model"
badmodel=$(mktemp)
printf 'garbage, not a GGUF file\n' >"$badmodel"
expect 1 "tokenize on a bad model file" -- tokenize --model "$badmodel" hello
has "$errf" "quill tokenize: $badmodel" "bad model error names the file"
one_line "tokenize on a bad model file"
rm -f "$badmodel"
expect 1 "tokenize on a missing model file" -- tokenize --model /nonexistent/quill-none.gguf hello
has "$errf" "/nonexistent/quill-none.gguf" "missing model error names the file"
one_line "tokenize on a missing model file"
spm=../shared/fixtures/vocab/ggml-vocab-llama-spm.gguf
if [ -f "$spm" ]; then
    expect 1 "tokenize --chat on a model without a chat template" -- tokenize --model "$spm" --chat hi
    has "$errf" "--chat-template" "no chat template: suggests --chat-template"
    expect 0 "tokenize --chat --chat-template llama2" -- tokenize --model "$spm" --chat --chat-template llama2 hi
fi
M=${QL_DEFAULT_MODEL:-}
if [ -z "$M" ] || [ ! -f "$M" ]; then
    echo "skip: quill tokenize on the default model (QL_DEFAULT_MODEL unset or missing; make test sets it)"
else
    X=tests/fixtures/smollm2
    expect 2 "tokenize without TEXT" -- tokenize --model "$M"
    has "$errf" "TEXT" "tokenize names the missing TEXT"
    for s in "Hello" " Hello" "I'm sure you're right, but we'd've known; they'll see it's John's." \
             "你好，世界！今天天气很好。" "1234567890" "<|im_start|>user\nhi<|im_end|>"; do
        want=$(golden $X/extra.inp $X/extra.out "$s")
        text=$(printf '%b' "$s")
        if [ -z "$want" ]; then fail=$((fail + 1)); echo "FAIL: '$s' is not in $X/extra.inp"; continue; fi
        expect 0 "tokenize '$s'" -- tokenize --model "$M" -- "$text" && same "$out" "$want" "tokenize '$s' = llama.cpp"
    done
    expect 0 "tokenize two arguments" -- tokenize --model "$M" -- Hello world
    V=../shared/fixtures/vocab/ggml-vocab-smollm.gguf
    [ -f $V.inp ] && same "$out" "$(golden $V.inp $V.out 'Hello world')" "arguments joined with a space"
    expect 0 "tokenize --verbose" -- tokenize --model "$M" --verbose -- "Hello world"
    same "$out" "$(printf ' 19556 "Hello"\n   905 " world"')" "--verbose: one line per token, id and quoted piece"
    # --chat: the model's template around one user message, special tokens parsed
    sys='<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n'
    want=$(golden $X/special.inp $X/special.out "${sys}<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    expect 0 "tokenize --chat" -- tokenize --model "$M" --chat -- "What is 2+2?"
    same "$out" "${want:-(no golden in $X/special.inp)}" "tokenize --chat = llama.cpp on the rendered template (special=True)"
    expect 2 "tokenize --chat-template vicuna" -- tokenize --model "$M" --chat --chat-template vicuna hi
    has "$errf" "'vicuna'" "unknown template name named"
fi

# ---- quill mkmodel (model/mkmodel.c): usage errors, a tiny round trip, llama.cpp's ids ----
mk=$(mktemp -d)
expect 2 "mkmodel unknown shape" -- mkmodel --shape llama-70b -o "$mk/x.gguf"
has "$errf" "'llama-70b'" "unknown shape named"
has "$errf" "tiny, smollm2-135m, llama-3.2-1b, llama-3.1-8b" "accepted shapes listed"
one_line "mkmodel unknown shape"
expect 2 "mkmodel without -o" -- mkmodel --shape tiny
has "$errf" "-o/--output" "missing -o named"
one_line "mkmodel without -o"
expect 2 "mkmodel without a shape" -- mkmodel -o "$mk/x.gguf"
has "$errf" "--shape NAME" "missing shape named"
expect 2 "mkmodel unknown type" -- mkmodel --shape tiny --type q4_K -o "$mk/x.gguf"
has "$errf" "'q4_K'" "unknown type named"
has "$errf" "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1" "accepted types listed"
printf '{"n_layer": 2, "n_embd": 64, "n_head": 4, "n_ff": 128, "n_vocab": 512, "n_layres": 3}' >"$mk/bad.json"
expect 2 "mkmodel shape file with an unknown field" -- mkmodel --config "$mk/bad.json" -o "$mk/x.gguf"
has "$errf" "$mk/bad.json: unknown field 'n_layres'" "unknown field named with the file"
one_line "mkmodel shape file with an unknown field"
printf '{"n_layer": 2.5}' >"$mk/bad.json"
expect 2 "mkmodel shape file with a fractional n_layer" -- mkmodel --config "$mk/bad.json" -o "$mk/x.gguf"
has "$errf" "field 'n_layer' is 2.5, not an integer" "bad value named"
printf '{"n_layer": 2, "n_embd": 64, "n_head": 4, "n_ff": 128}' >"$mk/bad.json"
expect 2 "mkmodel shape file without n_vocab" -- mkmodel --config "$mk/bad.json" -o "$mk/x.gguf"
has "$errf" "field 'n_vocab' is missing" "missing field named"
printf '{"n_layer": 2, "n_embd": 64, "n_head": 4, "n_ff": 100, "n_vocab": 512}' >"$mk/bad.json"
expect 2 "mkmodel shape file with rows not in q4_0 blocks" -- mkmodel --config "$mk/bad.json" --type q4_0 -o "$mk/x.gguf"
has "$errf" "field 'n_ff' (100) is not a multiple of q4_0's block of 32" "row size named"
expect 2 "mkmodel missing shape file" -- mkmodel --config "$mk/none.json" -o "$mk/x.gguf"
has "$errf" "$mk/none.json: No such file or directory" "unreadable shape file gives errno text"
expect 1 "mkmodel into a missing folder" -- mkmodel --shape tiny -o /nonexistent/m.gguf
has "$errf" "/nonexistent/m.gguf" "write error names the path"
has "$errf" "No such file or directory" "write error gives errno text"
one_line "mkmodel into a missing folder"
if [ -e "$mk/x.gguf" ]; then fail=$((fail + 1)); echo "FAIL: a refused mkmodel wrote a file"; else pass=$((pass + 1)); fi
expect 0 "mkmodel tiny" -- mkmodel --shape tiny --seed 5 -o "$mk/a.gguf"
has "$out" "wrote $mk/a.gguf: shape tiny, f16 weights, seed 5, 20 tensors" "mkmodel reports what it wrote"
expect 0 "mkmodel tiny again" -- mkmodel --shape tiny --seed 5 -o "$mk/b.gguf"
if cmp -s "$mk/a.gguf" "$mk/b.gguf"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: same seed, different bytes"; fi
expect 0 "mkmodel tiny, another seed" -- mkmodel --shape tiny --seed 6 -o "$mk/b.gguf"
if cmp -s "$mk/a.gguf" "$mk/b.gguf"; then fail=$((fail + 1)); echo "FAIL: seeds 5 and 6 gave the same bytes"; else pass=$((pass + 1)); fi
expect 0 "inspect a tiny mkmodel file" -- inspect --model "$mk/a.gguf"
has "$out" "llama n_embd=64 n_layer=2 n_head=4 n_head_kv=2 head_dim=16 n_ff=128 n_vocab=512" "tiny's hyper-parameters"
has "$out" "weights: all 2 layers present with the expected shapes" "tiny's tensors are what the loader expects"
has "$out" "total: 20 tensors" "tiny's tensor count"
printf '{"arch": "qwen2", "n_layer": 1, "n_embd": 64, "n_head": 2, "n_ff": 64, "n_vocab": 300, "tied": false}' >"$mk/q.json"
expect 0 "mkmodel from a shape file" -- mkmodel --config "$mk/q.json" --type q8_0 -o "$mk/q.gguf"
expect 0 "inspect a qwen2 mkmodel file" -- inspect --model "$mk/q.gguf"
has "$out" "qwen2.block_count" "qwen2 keys"
has "$out" "qkv_bias=yes" "qwen2 has q/k/v biases"
has "$out" "weights: all 1 layers present with the expected shapes" "qwen2 tensors are what the loader expects"
# quill tokenize on a generated vocabulary gives llama.cpp's ids (tools/reference/gen-tokenize.py on
# `quill mkmodel --shape tiny`; the weights and seed do not change the vocabulary)
for s in "Hello world, the quick brown fox!" "int main(void) { return 0; }" "  two spaces, a tab\there and digits 12345" \
         "<|im_start|>user\nhi<|im_end|>" "Café ☕ 你好"; do
    want=$(golden tests/fixtures/mkmodel/tiny.inp tests/fixtures/mkmodel/tiny.out "$s")
    if [ -z "$want" ]; then fail=$((fail + 1)); echo "FAIL: '$s' is not in tests/fixtures/mkmodel/tiny.inp"; continue; fi
    expect 0 "tokenize '$s' on tiny" -- tokenize --model "$mk/a.gguf" -- "$(printf '%b' "$s")" &&
        same "$out" "$want" "tokenize '$s' on tiny = llama.cpp"
done
rm -rf "$mk"

# ---- quill run (server/cmd-run.c): usage and model errors, then generation on the default model ----
expect 2 "run without --model" -- run -p hi
has "$errf" "--model is required" "run names the missing --model"
one_line "run without --model"
expect 2 "run without -p" -- run --model /nonexistent/quill-none.gguf
has "$errf" "-p/--prompt is required" "run names the missing -p"
one_line "run without -p"
expect 2 "run --temperature -1" -- run --model /nonexistent/quill-none.gguf -p hi --temperature -1
has "$errf" "--temperature" "bad temperature named"
one_line "run --temperature -1"
expect 2 "run -n abc" -- run --model /nonexistent/quill-none.gguf -p hi -n abc
has "$errf" "-n" "bad -n named"
expect 2 "run --top-p 2" -- run --model /nonexistent/quill-none.gguf -p hi --top-p 2
has "$errf" "--top-p" "bad top-p named"
expect 2 "run --top-p 0" -- run --model /nonexistent/quill-none.gguf -p hi --top-p 0
has "$errf" "--top-p: 0 is out of range" "top-p 0 refused, named"
one_line "run --top-p 0"
expect 2 "run with a stray argument" -- run --model /nonexistent/quill-none.gguf -p hi extra
has "$errf" "'extra'" "stray argument named"
one_line "run with a stray argument"
badmodel=$(mktemp)
printf 'garbage, not a GGUF file\n' >"$badmodel"
expect 1 "run on a bad model file" -- run --model "$badmodel" -p hi
has "$errf" "quill run: $badmodel" "run: bad model error names the file"
one_line "run on a bad model file"
rm -f "$badmodel"
expect 1 "run on a missing model file" -- run --model /nonexistent/quill-none.gguf -p hi
has "$errf" "No such file or directory" "run: missing model gives errno text"
one_line "run on a missing model file"
if "$Q" --version | grep -qE "cuda: not compiled in|cuda: compiled in, 0 device"; then
    expect 1 "run --backend cuda without CUDA" -- run --model /nonexistent/quill-none.gguf -p hi --backend cuda
    has "$errf" "--backend cuda: " "run: no CUDA says so"
    has "$errf" "use --backend cpu" "run: no CUDA suggests the CPU backend"
    one_line "run --backend cuda without CUDA"
fi
if [ -z "$M" ] || [ ! -f "$M" ]; then
    echo "skip: quill run on the default model (QL_DEFAULT_MODEL unset or missing; make test sets it)"
else
    G=tests/fixtures/smollm2/greedy.txt
    # field CASE KEY: the rest of line KEY of case CASE in greedy.txt (escaped as written there)
    field() { awk -v c="$1" -v k="$2" '$1 == "case" { on = ($2 == c) } on && $1 == k { sub("^" k " ", ""); print; exit }' "$G"; }
    # "exact" cases (every llama.cpp margin above the fixture's EXACT_MARGIN): quill's greedy text must be
    # llama.cpp's, byte for byte (gentext: llama.cpp's own detokenization of its 64 tokens)
    for c in count-text fr-repeat de-repeat; do
        want=$(field $c gentext)
        prompt=$(field $c text)
        if [ -z "$want" ] || [ "$(awk -v c=$c '$1 == "case" && $2 == c { print $8 }' "$G")" != 1 ]; then
            fail=$((fail + 1)); echo "FAIL: $c is not an exact case with a gentext line in $G"; continue
        fi
        expect 0 "run $c" -- run --model "$M" --log-level warn -n 64 -p "$(printf '%b' "$prompt")" &&
            same "$out" "$(printf '%b' "$want")" "run $c: greedy text = llama.cpp's"
        has "$errf" "generated 64 tokens" "run $c: 64 tokens"
        has "$errf" "(-n reached)" "run $c: stopped by -n"
        one_line "run $c: one stats line on stderr"
    done
    # speculative decoding (scheduler/spec.c): the same greedy text with every drafter
    for spec in "--spec-method ngram" "--spec-method layerskip --spec-layers 8" "--draft-model $M"; do
        for c in count-text fr-repeat; do
            expect 0 "run $c $spec" -- run --model "$M" --log-level warn -n 64 $spec \
                -p "$(printf '%b' "$(field $c text)")" &&
                same "$out" "$(printf '%b' "$(field $c gentext)")" "run $c $spec: greedy text = llama.cpp's"
            has "$errf" "; speculative: " "run $c $spec: drafted/accepted on the stats line"
            one_line "run $c $spec: one stats line on stderr"
        done
    done
    expect 2 "run --spec-method draft without --draft-model" -- run --model "$M" --log-level warn -p hi --spec-method draft
    has "$errf" "--spec-method draft needs --draft-model" "missing draft model named"
    one_line "run --spec-method draft without --draft-model"
    sd=$(mktemp -d)
    "$Q" mkmodel --shape tiny -o "$sd/tiny.gguf" >/dev/null 2>&1
    expect 2 "run with a draft model of another vocabulary" -- run --model "$M" --log-level warn -p hi --draft-model "$sd/tiny.gguf"
    has "$errf" "must share the target's tokenizer" "another vocabulary refused"
    one_line "run with a draft model of another vocabulary"
    expect 2 "run --draft-model with --spec-method ngram" -- run --model "$M" --log-level warn -p hi --draft-model "$sd/tiny.gguf" --spec-method ngram
    has "$errf" "--draft-model goes with --spec-method draft" "draft model with ngram refused"
    expect 1 "run --spec-method layerskip with every layer" -- run --model "$M" --log-level warn -p hi --spec-method layerskip --spec-layers 30
    has "$errf" "layerskip needs fewer draft layers (30) than the model's 30" "layerskip L too large named"
    one_line "run --spec-method layerskip with every layer"
    rm -rf "$sd"
    # --chat: the template around one user message, then the end-of-turn token stops it (llama.cpp's
    # margins of chat-capital are all >= the fixture's TIE_MARGIN up to and including that token)
    expect 0 "run --chat" -- run --model "$M" --log-level warn --chat -p "What is the capital of Japan?"
    same "$out" "$(printf '%b' "$(field chat-capital gentext)")" "run --chat: greedy text = llama.cpp's"
    has "$errf" "prompt $(awk '$1 == "case" && $2 == "chat-capital" { print $4 }' "$G") tokens" "run --chat: llama.cpp's prompt length"
    has "$errf" "(end of text)" "run --chat: stops at the end of turn"
    has "$errf" "tok/s" "run: speeds in tok/s"
    one_line "run --chat: one stats line on stderr"
    # stopping: -n with --ignore-eos, and the context
    expect 0 "run -n 5 --ignore-eos" -- run --model "$M" --log-level warn --chat --ignore-eos -n 5 -p "What is the capital of Japan?"
    has "$errf" "generated 5 tokens" "run -n 5: five tokens"
    expect 0 "run --max-model-len 40" -- run --model "$M" --log-level warn --max-model-len 40 -n 64 -p "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
    has "$errf" "generated 10 tokens" "run: a 30-token prompt in a 40-token context generates 10"
    has "$errf" "(context full: 40 tokens)" "run: says the context stopped it"
    expect 1 "run with a prompt longer than the context" -- run --model "$M" --log-level warn --max-model-len 16 -p "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"
    has "$errf" "the prompt is 30 tokens; the context holds 16" "run: prompt too long says so"
    one_line "run with a prompt longer than the context"
    # sampling: the same seed gives the same text, another seed another text
    expect 0 "run --seed 7" -- run --model "$M" --log-level warn -n 24 --temperature 0.9 --seed 7 -p "Once upon a time"
    cp "$out" "$out.a"
    expect 0 "run --seed 7 again" -- run --model "$M" --log-level warn -n 24 --temperature 0.9 --seed 7 -p "Once upon a time"
    if cmp -s "$out" "$out.a"; then pass=$((pass + 1)); else fail=$((fail + 1)); echo "FAIL: run: same seed, different text"; fi
    expect 0 "run --seed 8" -- run --model "$M" --log-level warn -n 24 --temperature 0.9 --seed 8 -p "Once upon a time"
    if cmp -s "$out" "$out.a"; then fail=$((fail + 1)); echo "FAIL: run: seeds 7 and 8 gave the same text"; else pass=$((pass + 1)); fi
    rm -f "$out.a"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
