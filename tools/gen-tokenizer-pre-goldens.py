#!/usr/bin/env python3
"""tools/gen-tokenizer-pre-goldens.py: llama.cpp goldens for the pre-tokenizers no shared
vocabulary exercises (llama3, default), made by giving GPT-2's vocabulary another
tokenizer.ggml.pre and tokenizing with llama.cpp itself.

    PY=$(tools/reference/setup.sh | tail -n 1)
    $PY tools/gen-tokenizer-pre-goldens.py [../shared/fixtures/vocab/ggml-vocab-gpt-2.gguf]

For each PRE in (llama-bpe, default) it writes a copy of the vocabulary with
tokenizer.ggml.pre = PRE to a temporary file, runs tools/reference/gen-tokenize.py on
tests/fixtures/tokenizer/pre.inp with it, and writes tests/fixtures/tokenizer/pre-PRE.out.
tests/unit/model/test-tokenizer.c builds the same variant (every tokenizer key copied, pre
replaced) and compares. llama.cpp turns on ignore_merges for llama-bpe, so that is covered too.
"""
import os
import subprocess
import sys
import tempfile

import gguf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures", "tokenizer")


def variant(src, pre, dst):
    r = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "tokenizer.ggml.pre":
            w.add_string(name, pre)
            continue
        vt = f.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(name, f.contents())
        elif vt == gguf.GGUFValueType.STRING:
            w.add_string(name, f.contents())
        else:
            w.add_key_value(name, f.contents(), vt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "shared", "fixtures", "vocab",
                                                             "ggml-vocab-gpt-2.gguf")
    gen = os.path.join(ROOT, "tools", "reference", "gen-tokenize.py")
    for pre in ("llama-bpe", "default"):
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "v.gguf")
            variant(src, pre, path)
            subprocess.run([sys.executable, gen, path, os.path.join(FIX, "pre.inp"),
                            os.path.join(FIX, f"pre-{pre}.out")], check=True)


if __name__ == "__main__":
    main()
