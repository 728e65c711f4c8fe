#!/usr/bin/env python3
"""tools/reference/dump-dequant.py: dequantization goldens from the `gguf` package.

    dump-dequant.py GGUF OUT [--count N] [TENSOR ...]

For each TENSOR (default: a Q4_1 linear weight, the Q8_0 token embedding and an F32 norm of
the default model) writes one line to OUT:

    <name> <type> <absolute file offset of its data> <N> <v0> ... <vN-1>

where v are the first N elements as gguf.quants.dequantize computes them, written as exact
hexadecimal floats (float.hex). tests/unit/model/test-quant.c reads the same N elements'
bytes at that offset and compares quill's dequantization bit for bit. The offset is located
with gguf.GGUFReader, independently of quill's GGUF reader.

Run it with the reference venv's python (tools/reference/setup.sh prints its path).
"""
import argparse

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

DEFAULT_TENSORS = ["blk.0.attn_q.weight", "token_embd.weight", "blk.0.attn_norm.weight"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("gguf")
    ap.add_argument("out")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("tensors", nargs="*", default=DEFAULT_TENSORS)
    a = ap.parse_args()

    reader = GGUFReader(a.gguf)
    by_name = {t.name: t for t in reader.tensors}
    lines = []
    with open(a.gguf, "rb") as f:
        for name in a.tensors:
            t = by_name[name]
            block_elems, block_bytes = GGML_QUANT_SIZES[t.tensor_type]
            if a.count % block_elems:
                raise SystemExit(f"--count {a.count} is not a multiple of {t.tensor_type.name}'s block")
            n_bytes = a.count // block_elems * block_bytes
            f.seek(int(t.data_offset))
            raw = np.frombuffer(f.read(n_bytes), dtype=np.uint8)
            vals = dequantize(raw, t.tensor_type).astype(np.float32).reshape(-1)
            assert vals.size == a.count
            hexes = " ".join(float(v).hex() for v in vals)
            lines.append(f"{name} {t.tensor_type.name.lower()} {int(t.data_offset)} {a.count} {hexes}\n")
    with open(a.out, "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
