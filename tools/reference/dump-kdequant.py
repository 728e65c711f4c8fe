#!/usr/bin/env python3
"""tools/reference/dump-kdequant.py: K-quant dequantization goldens from ggml itself.

    dump-kdequant.py OUT

For each of q2_K, q3_K, q4_K, q5_K and q6_K builds BLOCKS blocks of 256 elements from a
seeded generator: every quant, scale and high-bit byte random, the fp16 super-block scales
(d, and dmin where the type has one) drawn from [2^-10, 2^-4] with either sign for dmin. Each
block is dequantized by ggml's own dequantize_row_<type> (libggml-base from the llama_cpp
package, through ctypes), and the result must equal gguf.quants.dequantize's (a check of the
two references against each other). One line per block:

    <type> <block bytes as hex> <256 float32 bit patterns, 8 hex digits each>

tests/unit/model/test-quant.c dequantizes the same bytes and compares bit for bit.
"""
import ctypes
import glob
import os
import sys

import llama_cpp
import numpy as np
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import dequantize

BLOCKS = 3
# type, block bytes, offsets of its fp16 super-block scales (d first, then dmin)
TYPES = [
    ("q2_K", T.Q2_K, 84, [80, 82]),
    ("q3_K", T.Q3_K, 110, [108]),
    ("q4_K", T.Q4_K, 144, [0, 2]),
    ("q5_K", T.Q5_K, 176, [0, 2]),
    ("q6_K", T.Q6_K, 210, [208]),
]


def ggml_base():
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    return ctypes.CDLL(sorted(glob.glob(os.path.join(libdir, "libggml-base.so*")))[0])


def ggml_dequant(lib, name, raw):
    fn = getattr(lib, f"dequantize_row_{name}")
    fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64]
    fn.restype = None
    out = np.zeros(256, dtype=np.float32)
    buf = ctypes.create_string_buffer(bytes(raw), len(raw))
    fn(buf, out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), 256)
    return out


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    rng = np.random.default_rng(20261127)
    lib = ggml_base()
    lines = []
    for name, t, n_bytes, fp16_at in TYPES:
        for _ in range(BLOCKS):
            raw = bytearray(rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
            for k, off in enumerate(fp16_at):
                v = np.exp2(rng.uniform(-10, -4)) * (1 if k == 0 or rng.random() < 0.5 else -1)
                raw[off:off + 2] = np.float16(v).tobytes()
            want = ggml_dequant(lib, name, raw)
            ref = dequantize(np.frombuffer(bytes(raw), dtype=np.uint8), t).astype(np.float32).reshape(-1)
            if want.tobytes() != ref.tobytes():
                raise SystemExit(f"{name}: ggml and gguf-py disagree")
            bits = " ".join(f"{v:08x}" for v in want.view(np.uint32))
            lines.append(f"{name} {bytes(raw).hex()} {bits}\n")
    with open(sys.argv[1], "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
