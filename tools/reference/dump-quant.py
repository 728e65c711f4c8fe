#!/usr/bin/env python3
"""tools/reference/dump-quant.py: quantization goldens from the `gguf` package.

    dump-quant.py OUT

Quantizes one fixed row of 256 floats with gguf.quants.quantize (whose numpy code follows
ggml's reference quantizers bit for bit) to each of f16, bf16, q8_0, q4_0, q4_1, q5_0 and
q5_1 and writes one line per type to OUT:

    <type> <n_bytes> <hex bytes>

The row is x[i] = ((i * 7919) % 2001 - 1000) / 1024 * 2^((i / 32) % 5 - 2): exact in
float32 and cheap to rebuild in C, with a different scale in each 32-element block.
tests/unit/model/test-quant.c rebuilds it and compares quill's bytes with these.
"""
import sys

import numpy as np
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import quantize


def row():
    i = np.arange(256, dtype=np.int64)
    base = ((i * 7919) % 2001 - 1000).astype(np.float64) / 1024.0
    return (base * np.exp2(((i // 32) % 5 - 2).astype(np.float64))).astype(np.float32)


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    x = row().reshape(1, -1)
    lines = []
    for name, t in [("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0),
                    ("q4_1", T.Q4_1), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1)]:
        raw = quantize(x, t).tobytes() if t != T.F16 else x.astype(np.float16).tobytes()
        lines.append(f"{name} {len(raw)} {raw.hex()}\n")
    with open(sys.argv[1], "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
