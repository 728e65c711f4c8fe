#!/usr/bin/env python3
"""tools/reference/dump-kdequant.py: dequantization goldens from ggml itself for the types a
file may bring but quill never writes (the K-quants and IQ4_NL / IQ4_XS).

    dump-kdequant.py OUT

For each of q2_K, q3_K, q4_K, q5_K, q6_K, iq4_nl and iq4_xs builds ROWS rows of 256 elements
(one super-block, or 8 blocks of iq4_nl) from a seeded generator: every quant, scale and
high-bit byte random, the fp16 (super-)block scales (d, and dmin where the type has one)
drawn from [2^-10, 2^-4] with either sign for dmin. Each row is dequantized by ggml's own
dequantize_row_<type> (libggml-base from the llama_cpp package, through ctypes), and the
result must equal gguf.quants.dequantize's (a check of the two references against each
other). One line per row:

    <type> <row bytes as hex> <256 float32 bit patterns, 8 hex digits each>

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

ROWS = 3
# type, bytes per 256 elements, block bytes, offsets in a block of its fp16 scales (d, dmin)
TYPES = [
    ("q2_K", T.Q2_K, 84, 84, [80, 82]),
    ("q3_K", T.Q3_K, 110, 110, [108]),
    ("q4_K", T.Q4_K, 144, 144, [0, 2]),
    ("q5_K", T.Q5_K, 176, 176, [0, 2]),
    ("q6_K", T.Q6_K, 210, 210, [208]),
    ("iq4_nl", T.IQ4_NL, 8 * 18, 18, [0]),
    ("iq4_xs", T.IQ4_XS, 136, 136, [0]),
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
    for name, t, n_bytes, block_bytes, fp16_at in TYPES:
        for _ in range(ROWS):
            raw = bytearray(rng.integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
            for b0 in range(0, n_bytes, block_bytes):
                for k, off in enumerate(fp16_at):
                    v = np.exp2(rng.uniform(-10, -4)) * (1 if k == 0 or rng.random() < 0.5 else -1)
                    raw[b0 + off:b0 + off + 2] = np.float16(v).tobytes()
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
