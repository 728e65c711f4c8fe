#!/usr/bin/env python3
"""tools/reference/check-mkmodel.py: llama.cpp loads and runs a `quill mkmodel` file.

    check-mkmodel.py GGUF [PROMPT] [--n N]

Loads GGUF with llama.cpp (through llama-cpp-python's C API), tokenizes PROMPT, decodes it,
checks that every logit is finite, then decodes N greedy tokens one at a time and prints
the ids and the text. Exits non-zero on any failure. A manual cross-check of mkmodel's
metadata, tensor table and vocabulary against the reference loader; not run by the tests.

NOTE(no-repack): the model is loaded with use_extra_bufts = false. With llama.cpp's CPU
repacking on (the default), this pinned build crashes on this machine's AMX/AVX-512 CPU
for Q4_0/Q4_1/Q8_0 weights, the real SmolLM2 Q4_1 file included, so the crash is not the
file's doing.
"""
import argparse
import ctypes
import math
import sys

import llama_cpp as L


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("prompt", nargs="?", default="The quick brown fox")
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()

    mp = L.llama_model_default_params()
    mp.use_extra_bufts = False
    model = L.llama_model_load_from_file(a.gguf.encode(), mp)
    if not model:
        sys.exit(f"{a.gguf}: llama.cpp could not load it")
    vocab = L.llama_model_get_vocab(model)
    cp = L.llama_context_default_params()
    cp.n_ctx = 256
    ctx = L.llama_init_from_model(model, cp)
    text = a.prompt.encode()
    toks = (L.llama_token * 256)()
    n = L.llama_tokenize(vocab, text, len(text), toks, 256, False, False)
    if n <= 0:
        sys.exit(f"tokenize failed: {n}")
    n_vocab = L.llama_vocab_n_tokens(vocab)
    out = []
    batch = L.llama_batch_get_one(toks, n)
    for step in range(a.n + 1):
        rc = L.llama_decode(ctx, batch)
        if rc != 0:
            sys.exit(f"llama_decode returned {rc} at step {step}")
        logits = L.llama_get_logits_ith(ctx, -1)
        vals = [logits[i] for i in range(n_vocab)]
        if not all(math.isfinite(v) for v in vals):
            sys.exit(f"non-finite logits at step {step}")
        nxt = max(range(n_vocab), key=vals.__getitem__)
        out.append(nxt)
        one = (L.llama_token * 1)(nxt)
        batch = L.llama_batch_get_one(one, 1)
    buf = (ctypes.c_char * 64)()
    pieces = []
    for t in out:
        k = L.llama_token_to_piece(vocab, t, buf, 64, 0, False)
        pieces.append(bytes(buf[:max(k, 0)]))
    print(f"{a.gguf}: prompt {n} tokens, logits finite; greedy ids {out}")
    print("text:", repr(b"".join(pieces).decode("utf-8", "replace")))
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
