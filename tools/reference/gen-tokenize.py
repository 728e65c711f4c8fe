#!/usr/bin/env python3
"""tools/reference/gen-tokenize.py: tokenizer goldens from llama.cpp itself.

    gen-tokenize.py [--special] GGUF INP OUT

Reads INP (test strings, each followed by a line "__ggml_vocab_test__", the format of
../shared/fixtures/vocab/*.inp) and writes OUT: one line per string, each token id preceded
by a space, an empty line for a string that makes no tokens. Tokenization is llama.cpp's
(through llama-cpp-python, vocab_only) with add_bos=False and, by default, special=False:
the mode llama.cpp's own tests/test-tokenizer-0 uses, in which text that looks like a
control token (say "<|im_start|>") is tokenized as plain text. With --special such text is
parsed into the special token it names, as a chat prompt is.

Run it with the reference venv's python (tools/reference/setup.sh prints its path).
"""
import argparse
import sys

SEPARATOR = "\n__ggml_vocab_test__\n"


def read_inp(path):
    # Binary read + explicit decode: no newline translation, "\r" and "\t" survive as-is.
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    if text and not text.endswith(SEPARATOR):
        sys.exit(f"{path}: the last string is not followed by a __ggml_vocab_test__ line")
    parts = text.split(SEPARATOR)
    return parts[:-1]  # the text after the last separator is empty


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--special", action="store_true",
                    help="parse control-token text as special tokens (default: plain text)")
    ap.add_argument("gguf")
    ap.add_argument("inp")
    ap.add_argument("out")
    a = ap.parse_args()

    import llama_cpp  # imported late so --help works without the venv

    llm = llama_cpp.Llama(model_path=a.gguf, vocab_only=True, verbose=False)
    strings = read_inp(a.inp)
    lines = []
    for s in strings:
        ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=a.special)
        lines.append("".join(f" {t}" for t in ids) + "\n")
    with open(a.out, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(lines)
    print(f"{a.out}: {len(strings)} strings", file=sys.stderr)


if __name__ == "__main__":
    main()
