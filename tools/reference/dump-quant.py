#!/usr/bin/env python3
"""tools/reference/dump-quant.py: quantization goldens from the `gguf` package.

    dump-quant.py OUT

Quantizes one fixed row of 256 floats with gguf.quants.quantize (whose numpy code follows
ggml's reference quantizers bit for bit) to each of f16, bf16, q8_0, q4_0, q4_1, q5_0 and
q5_1, and with ggml's own quantize_row_{q4_K,q6_K}_ref (libggml-base from the llama_cpp
package, through ctypes) to q4_K and q6_K, and writes one line per type to OUT:

    <type> <n_bytes> <hex bytes>

The row is x[i] = ((i * 7919) % 2001 - 1000) / 1024 * 2^((i / 32) % 5 - 2): exact in
float32 and cheap to rebuild in C, with a different scale in each 32-element block.
tests/unit/model/test-quant.c rebuilds it and compares quill's bytes with these.
"""
import ctypes
import glob
import os
import sys

import llama_cpp
import numpy as np
from gguf.constants import GGMLQuantizationType as T
from gguf.quants import quantize


def row():
    i = np.arange(256, dtype=np.int64)
    base = ((i * 7919) % 2001 - 1000).astype(np.float64) / 1024.0
    return (base * np.exp2(((i // 32) % 5 - 2).astype(np.float64))).astype(np.float32)


def ggml_base():
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    return ctypes.CDLL(sorted(glob.glob(os.path.join(libdir, "libggml-base.so*")))[0])


def ggml_ref(lib, name, x, n_bytes):
    out = ctypes.create_string_buffer(n_bytes)
    fn = getattr(lib, f"quantize_row_{name}_ref")
    fn.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64]
    fn.restype = None
    fn(np.ascontiguousarray(x.reshape(-1)).ctypes.data_as(ctypes.POINTER(ctypes.c_float)), out, x.size)
    return out.raw


def main():
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    x = row().reshape(1, -1)
    lines = []
    for name, t in [("f16", T.F16), ("bf16", T.BF16), ("q8_0", T.Q8_0), ("q4_0", T.Q4_0),
                    ("q4_1", T.Q4_1), ("q5_0", T.Q5_0), ("q5_1", T.Q5_1)]:
        raw = quantize(x, t).tobytes() if t != T.F16 else x.astype(np.float16).tobytes()
        lines.append(f"{name} {len(raw)} {raw.hex()}\n")
    lib = ggml_base()
    # the two references agree on the simple types (a check of the references themselves)
    assert ggml_ref(lib, "q4_1", x, 160) == quantize(x, T.Q4_1).tobytes()
    for name, n_bytes in [("q4_K", 144), ("q6_K", 210)]:
        raw = ggml_ref(lib, name, x, n_bytes)
        lines.append(f"{name} {len(raw)} {raw.hex()}\n")
    with open(sys.argv[1], "w") as f:
        f.writelines(lines)


if __name__ == "__main__":
    main()
