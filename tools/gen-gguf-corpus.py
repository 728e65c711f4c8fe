#!/usr/bin/env python3
"""tools/gen-gguf-corpus.py — writes quill's GGUF regression corpus, tests/corpus/gguf/.

Small hand-made files, most of them broken in exactly one way, and MANIFEST, which gives each
file's expected outcome: `ok` (the reader, ql_hparams_read and ql_weights_init all succeed) or
`<stage>:<code>` with stage open | hparams | weights and code a QL_E* name, followed by a
substring of the expected one-line error. tests/fuzz/corpus-gguf.c checks every line, and
`make fuzz` seeds libFuzzer with these files.

Plain python3, no dependencies; deterministic output. Files the fuzzer found (fuzz-*.gguf)
are kept by hand: this script never deletes them, and their MANIFEST lines live in
MANIFEST.fuzz, which it appends verbatim.

usage: tools/gen-gguf-corpus.py [OUT_DIR]   (default: tests/corpus/gguf next to this script)
"""
import os
import struct
import sys

# ---- encoding ----

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<B",
       U64: "<Q", I64: "<q", F64: "<d"}

# ggml type id -> (elements per block, bytes per block)
F32_T, F16_T, Q4_0_T, Q4_1_T, Q8_0_T, F64_T = 0, 1, 2, 3, 8, 28
BLOCK = {F32_T: (1, 4), F16_T: (1, 2), Q4_0_T: (32, 18), Q4_1_T: (32, 20), Q8_0_T: (32, 34), F64_T: (1, 8)}


def u32(v):
    return struct.pack("<I", v)


def u64(v):
    return struct.pack("<Q", v)


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b


def value(t, v):
    """Encodes a value of type t. Arrays are (element type, [elements])."""
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        return u32(et) + u64(len(items)) + b"".join(value(et, x) for x in items)
    return struct.pack(FMT[t], v)


def kv(key, t, v):
    return gstr(key) + u32(t) + value(t, v)


def tensor_bytes(ttype, ne):
    blk, nb = BLOCK[ttype]
    rows = 1
    for d in ne[1:]:
        rows *= d
    return ne[0] // blk * nb * rows


def gguf(kvs, tensors=(), version=3, align=32, pad_end=True, n_kv=None, n_tensors=None):
    """A complete file. kvs: [(key, type, value)]; tensors: [(name, type, ne)] laid out in
    order with their real sizes (zero bytes). n_kv / n_tensors override the header counts."""
    head = b"GGUF" + u32(version)
    head += u64(len(tensors) if n_tensors is None else n_tensors)
    head += u64(len(kvs) if n_kv is None else n_kv)
    body = b"".join(kv(k, t, v) for k, t, v in kvs)
    infos, off, data = b"", 0, b""
    for name, ttype, ne in tensors:
        size = tensor_bytes(ttype, ne)
        infos += gstr(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(ttype) + u64(off)
        chunk = bytes(size)
        chunk += bytes((-len(chunk)) % align)
        data += chunk
        off += len(chunk)
    out = head + body + infos
    if tensors or pad_end:
        out += bytes((-len(out)) % align)
    return out + data


# ---- a tiny Llama-family model ----

def model_kvs(arch="llama", n_embd=32, n_head=2, n_head_kv=1, n_layer=1, n_ff=64, n_vocab=8, extra=(),
              drop=()):
    kvs = [("general.architecture", STR, arch),
           (arch + ".embedding_length", U32, n_embd),
           (arch + ".block_count", U32, n_layer),
           (arch + ".attention.head_count", U32, n_head),
           (arch + ".attention.head_count_kv", U32, n_head_kv),
           (arch + ".feed_forward_length", U32, n_ff),
           (arch + ".context_length", U32, 256),
           (arch + ".attention.layer_norm_rms_epsilon", F32, 1e-5),
           (arch + ".rope.freq_base", F32, 10000.0),
           ("tokenizer.ggml.model", STR, "gpt2"),
           ("tokenizer.ggml.tokens", ARR, (STR, ["<t%d>" % i for i in range(n_vocab)]))]
    replaced = {k for k, _, _ in extra}
    kvs = [x for x in kvs if x[0] not in replaced and x[0] not in drop]
    return kvs + list(extra)


def model_tensors(n_embd=32, n_head=2, n_head_kv=1, n_layer=1, n_ff=64, n_vocab=8, bias=False, output=False,
                  drop=(), reshape=None, norm_type=F32_T, extra=()):
    hd = n_embd // n_head
    q, kvd = n_head * hd, n_head_kv * hd
    ts = [("token_embd.weight", Q8_0_T, [n_embd, n_vocab]), ("output_norm.weight", norm_type, [n_embd])]
    if output:
        ts.append(("output.weight", Q4_1_T, [n_embd, n_vocab]))
    for il in range(n_layer):
        p = "blk.%d." % il
        ts += [(p + "attn_norm.weight", norm_type, [n_embd]),
               (p + "attn_q.weight", Q4_1_T, [n_embd, q]),
               (p + "attn_k.weight", Q4_1_T, [n_embd, kvd]),
               (p + "attn_v.weight", Q4_1_T, [n_embd, kvd]),
               (p + "attn_output.weight", Q4_1_T, [q, n_embd])]
        if bias:
            ts += [(p + "attn_q.bias", F32_T, [q]), (p + "attn_k.bias", F32_T, [kvd]), (p + "attn_v.bias", F32_T, [kvd])]
        ts += [(p + "ffn_norm.weight", norm_type, [n_embd]),
               (p + "ffn_gate.weight", Q4_1_T, [n_embd, n_ff]),
               (p + "ffn_up.weight", Q4_1_T, [n_embd, n_ff]),
               (p + "ffn_down.weight", Q4_1_T, [n_ff, n_embd])]
    ts = [t for t in ts if t[0] not in drop]
    if reshape:
        ts = [(n, ty, reshape[1] if n == reshape[0] else ne) for n, ty, ne in ts]
    return ts + list(extra)


# ---- raw pieces for broken headers and infos ----

def header(version=3, n_tensors=0, n_kv=0):
    return b"GGUF" + u32(version) + u64(n_tensors) + u64(n_kv)


def info(name, ne, ttype, off):
    return gstr(name) + u32(len(ne)) + b"".join(u64(d & (2 ** 64 - 1)) for d in ne) + u32(ttype) + u64(off)


def one_tensor(ne, ttype=F32_T, off=0, data=None, n_dims=None, name="w"):
    """A file holding one tensor info (raw, so any field may be wrong) and `data` bytes."""
    inf = gstr(name) + u32(len(ne) if n_dims is None else n_dims)
    inf += b"".join(u64(d & (2 ** 64 - 1)) for d in ne) + u32(ttype) + u64(off)
    out = header(n_tensors=1) + inf
    out += bytes((-len(out)) % 32)
    return out + bytes(256 if data is None else data)


def corpus():
    """[(file name, bytes, expectation, message substring)]"""
    c = []

    def add(name, data, expect, msg=""):
        c.append((name, data, expect, msg))

    # -- good files --
    add("good-tiny-llama.gguf", gguf(model_kvs(), model_tensors()), "ok")
    add("good-tiny-llama-untied.gguf", gguf(model_kvs(n_layer=2), model_tensors(n_layer=2, output=True)), "ok")
    add("good-tiny-qwen2.gguf", gguf(model_kvs("qwen2"), model_tensors(bias=True)), "ok")
    add("good-align-64.gguf",
        gguf(model_kvs(extra=[("general.alignment", U32, 64)]), model_tensors(), align=64), "ok")
    add("good-v2.gguf", gguf(model_kvs(), model_tensors(), version=2), "ok")
    add("good-vocab-only.gguf", gguf(model_kvs(), (), pad_end=False),
        "weights:EFORMAT", "llama.block_count = 1 needs at least 9 tensors, the file has 0")
    add("good-empty.gguf", header(), "hparams:EFORMAT", "missing key 'general.architecture'")
    every = [("t.u8", U8, 255), ("t.i8", I8, -128), ("t.u16", U16, 65535), ("t.i16", I16, -32768),
             ("t.u32", U32, 2 ** 32 - 1), ("t.i32", I32, -2 ** 31), ("t.f32", F32, -0.5), ("t.bool", BOOL, 1),
             ("t.str", STR, "h\u00e9llo\n\x01"), ("t.u64", U64, 2 ** 64 - 1), ("t.i64", I64, -2 ** 63),
             ("t.f64", F64, 1e300), ("t.empty_arr", ARR, (U8, [])),
             ("t.strs", ARR, (STR, ["a", "", "\u00ff" * 100])),
             ("t.nested", ARR, (ARR, [(U32, [1, 2]), (STR, ["x"]), (ARR, [(F64, [0.25])])]))]
    deep = (U8, [7])
    for _ in range(7):
        deep = (ARR, [deep])
    every.append(("t.deep8", ARR, deep))
    add("good-every-type.gguf", gguf(every, [("w", F16_T, [3, 2])]),
        "hparams:EFORMAT", "missing key 'general.architecture'")
    add("good-other-arch.gguf", gguf(model_kvs("gpt2"), [("w", F32_T, [4])]),
        "hparams:EUNSUPPORTED", "unsupported architecture 'gpt2' (supported: llama, qwen2)")

    # -- the header --
    add("empty.gguf", b"", "open:EFORMAT", "empty file (0 bytes)")
    add("bad-magic.gguf", b"GGML" + header()[4:], "open:EFORMAT", "not a GGUF file: magic 'GGML'")
    add("short-magic.gguf", b"GG", "open:EFORMAT", "not a GGUF file: magic 'GG'")
    add("version-1.gguf", header(version=1), "open:EUNSUPPORTED", "GGUF version 1 (32-bit counts) is not supported")
    add("version-4.gguf", header(version=4), "open:EUNSUPPORTED", "unknown GGUF version 4")
    add("big-endian.gguf", b"GGUF" + struct.pack(">I", 3) + bytes(16), "open:EUNSUPPORTED",
        "big-endian GGUF (version 3, byte-swapped)")
    add("truncated-header.gguf", header()[:10], "open:EFORMAT", "truncated: tensor count at offset 8")
    add("huge-n-kv.gguf", header(n_kv=2 ** 64 - 1), "open:EFORMAT",
        "metadata key count 18446744073709551615 at offset 16 cannot fit")
    add("huge-n-tensors.gguf", header(n_tensors=2 ** 40) + bytes(64), "open:EFORMAT",
        "tensor count 1099511627776 at offset 8 cannot fit")

    # -- metadata --
    add("key-length-huge.gguf", header(n_kv=1) + u64(2 ** 63) + b"abcdef", "open:EFORMAT",
        "key 0 '' (at offset 24): truncated: key at offset 24 has length 9223372036854775808")
    add("value-type-unknown.gguf", header(n_kv=1) + gstr("general.name") + u32(13) + b"\0", "open:EFORMAT",
        "key 0 'general.name' (at offset 24): unknown value type 13")
    add("dup-key.gguf", header(n_kv=2) + kv("a", U8, 1) + kv("a", U8, 2), "open:EFORMAT",
        "key 1 'a' (at offset 38): duplicate key (first at offset 24)")
    add("bool-2.gguf", header(n_kv=1) + gstr("b") + u32(BOOL) + b"\x02", "open:EFORMAT",
        "bool value 2 at offset 37 (must be 0 or 1)")
    add("bool-array-2.gguf", header(n_kv=1) + gstr("b") + u32(ARR) + u32(BOOL) + u64(2) + b"\x01\x05",
        "open:EFORMAT", "bool element 1 is 5")
    add("value-truncated.gguf", header(n_kv=1) + gstr("u") + u32(U64) + b"\1\2\3", "open:EFORMAT",
        "truncated: value at offset 37 needs 8 bytes, only 3 left")
    add("string-truncated.gguf", header(n_kv=1) + gstr("s") + u32(STR) + u64(100) + b"short", "open:EFORMAT",
        "truncated: string value at offset 37 has length 100, only 5 bytes left")
    add("string-array-huge-count.gguf",
        header(n_kv=1) + gstr("tokenizer.ggml.tokens") + u32(ARR) + u32(STR) + u64(2 ** 61) + u64(0),
        "open:EFORMAT", "array element count 2305843009213693952 at offset 61 cannot fit")
    add("array-of-arrays-huge-count.gguf",
        header(n_kv=1) + gstr("a") + u32(ARR) + u32(ARR) + u64(2 ** 40) + bytes(24),
        "open:EFORMAT", "array element count 1099511627776 at offset 41 cannot fit")
    add("u64-array-overflow.gguf", header(n_kv=1) + gstr("a") + u32(ARR) + u32(U64) + u64(2 ** 62) + bytes(8),
        "open:EFORMAT", "truncated: array of 4611686018427387904 u64")
    add("array-type-unknown.gguf", header(n_kv=1) + gstr("a") + u32(ARR) + u32(77) + u64(0), "open:EFORMAT",
        "unknown array element type 77")
    deep9 = (U8, [7])
    for _ in range(8):
        deep9 = (ARR, [deep9])
    add("nested-too-deep.gguf", header(n_kv=1) + kv("deep", ARR, deep9), "open:EFORMAT",
        "arrays nested more than 8 deep")
    nest_bomb = header(n_kv=1) + gstr("bomb") + u32(ARR)
    for _ in range(1000):
        nest_bomb += u32(ARR) + u64(1)
    add("nested-bomb.gguf", nest_bomb, "open:EFORMAT", "arrays nested more than 8 deep")
    for name, t, v, msg in [("alignment-zero.gguf", U32, 0, "alignment 0 is not a nonzero power of two"),
                            ("alignment-3.gguf", U32, 3, "alignment 3 is not a nonzero power of two"),
                            ("alignment-string.gguf", STR, "32", "alignment has type string"),
                            ("alignment-negative.gguf", I32, -32, "alignment -32 is not a nonzero power of two")]:
        add(name, header(n_kv=1) + kv("general.alignment", t, v), "open:EFORMAT",
            "key 0 'general.alignment' (at offset 24): " + msg)

    # -- tensor infos --
    add("tensor-ndims-5.gguf", one_tensor([32, 1, 1, 1, 1]), "open:EFORMAT",
        "tensor 0 'w' (at offset 24): n_dims 5 at offset 33 (must be 1..4)")
    add("tensor-ndims-0.gguf", one_tensor([], n_dims=0), "open:EFORMAT", "n_dims 0 at offset 33")
    add("tensor-ndims-huge.gguf", one_tensor([32], n_dims=2 ** 32 - 1), "open:EFORMAT", "n_dims 4294967295")
    add("tensor-dim-zero.gguf", one_tensor([32, 0]), "open:EFORMAT", "dimension 1 is 0 at offset 45 (must be positive)")
    add("tensor-dim-negative.gguf", one_tensor([32, -3]), "open:EFORMAT", "dimension 1 is -3")
    add("tensor-type-unknown.gguf", one_tensor([32, 2], ttype=99), "open:EUNSUPPORTED",
        "unknown or unsupported tensor type 99 at offset 53")
    add("tensor-type-removed.gguf", one_tensor([32, 2], ttype=4), "open:EUNSUPPORTED",
        "unknown or unsupported tensor type 4")
    add("tensor-block-mismatch.gguf", one_tensor([33, 2], ttype=Q4_1_T), "open:EFORMAT",
        "row length ne[0] = 33 is not a multiple of q4_1's block size 32")
    add("tensor-nelem-overflow.gguf", one_tensor([2 ** 32, 2 ** 32, 2]), "open:EFORMAT",
        "element count overflows: shape [4294967296, 4294967296, 2, 1]")
    add("tensor-size-overflow.gguf", one_tensor([2 ** 31, 2 ** 31], ttype=F64_T), "open:EFORMAT",
        "tensor size overflows: 4611686018427387904 elements of f64")
    add("tensor-misaligned.gguf", one_tensor([32, 2], off=16), "open:EFORMAT",
        "data offset 16 is not a multiple of the alignment 32")
    add("tensor-out-of-file.gguf", one_tensor([32, 2], data=255), "open:EFORMAT",
        "tensor 0 'w' (at offset 24): data [0, +256 bytes) runs past the end of the file (351 bytes; data section "
        "at offset 96)")
    add("tensor-offset-huge.gguf", one_tensor([32, 2], off=2 ** 64 - 32), "open:EFORMAT",
        "data [18446744073709551584, +256 bytes) runs past the end of the file")
    add("data-section-past-end.gguf", header(n_tensors=1) + info("w", [32, 2], F32_T, 0), "open:EFORMAT",
        "data section: starts at offset 96, past the end of the file (65 bytes)")
    dup = header(n_tensors=2) + info("w", [32], F32_T, 0) + info("w", [32], F32_T, 128)
    add("dup-tensor.gguf", dup + bytes((-len(dup)) % 32) + bytes(256), "open:EFORMAT",
        "tensor 1 'w' (at offset 57): duplicate tensor name (first at offset 24)")
    add("tensor-name-hostile.gguf", header(n_tensors=1) + gstr(b"bad\nname\xff\x1b[31m") + u32(9) + bytes(40),
        "open:EFORMAT", "tensor 0 'bad\\nname\\xFF\\x1B[31m' (at offset 24): n_dims 9")
    add("tensor-info-truncated.gguf", header(n_tensors=1) + gstr("w" * 20) + u32(2) + u64(32) + bytes(3),
        "open:EFORMAT", "(at offset 24): truncated: dimension at offset 64 needs 8 bytes, only 3 left")
    good = gguf(model_kvs(), model_tensors())
    add("model-truncated-in-data.gguf", good[:len(good) - 40], "open:EFORMAT", "runs past the end of the file")

    # -- hyper-parameters --
    add("hp-missing-block-count.gguf", gguf(model_kvs(drop=["llama.block_count"]), model_tensors()),
        "hparams:EFORMAT", "missing key 'llama.block_count'")
    add("hp-head-count-kv.gguf",
        gguf(model_kvs(n_head=4, n_head_kv=3), model_tensors(n_head=4, n_head_kv=3)), "hparams:EFORMAT",
        "'llama.attention.head_count' = 4 is not a multiple of 'llama.attention.head_count_kv' = 3")
    add("hp-per-layer-heads.gguf",
        gguf(model_kvs(extra=[("llama.attention.head_count", ARR, (U32, [2]))]), model_tensors()),
        "hparams:EUNSUPPORTED", "key 'llama.attention.head_count' is an array")
    add("hp-partial-rotary.gguf",
        gguf(model_kvs(extra=[("llama.rope.dimension_count", U32, 8)]), model_tensors()),
        "hparams:EUNSUPPORTED", "partial rotary is not supported")
    add("hp-rope-scaling-unknown.gguf",
        gguf(model_kvs(extra=[("llama.rope.scaling.type", STR, "longrope")]), model_tensors()),
        "hparams:EUNSUPPORTED", "unsupported rope scaling type 'longrope'")
    add("hp-eps-negative.gguf",
        gguf(model_kvs(extra=[("llama.attention.layer_norm_rms_epsilon", F32, -1.0)]), model_tensors()),
        "hparams:EFORMAT", "key 'llama.attention.layer_norm_rms_epsilon' = -1 is out of range")
    add("hp-vocab-size-mismatch.gguf", gguf(model_kvs(extra=[("llama.vocab_size", U32, 9)]), model_tensors()),
        "hparams:EFORMAT", "'llama.vocab_size' = 9 disagrees with the 8 tokens")
    add("hp-embd-huge.gguf", gguf(model_kvs(extra=[("llama.embedding_length", U64, 2 ** 40)]), model_tensors()),
        "hparams:EFORMAT", "key 'llama.embedding_length' = 1099511627776 is out of range")

    # -- weights --
    add("w-missing-tensor.gguf", gguf(model_kvs(), model_tensors(drop=["blk.0.ffn_up.weight"])),
        "weights:EFORMAT", "missing tensor 'blk.0.ffn_up.weight' (expected shape [32, 64] = [n_embd, n_ff])")
    add("w-wrong-shape.gguf", gguf(model_kvs(), model_tensors(reshape=("blk.0.attn_k.weight", [32, 32]))),
        "weights:EFORMAT",
        "tensor 'blk.0.attn_k.weight' has shape [32, 32], expected [32, 16] = [n_embd, n_head_kv*head_dim]")
    add("w-qwen2-no-bias.gguf", gguf(model_kvs("qwen2"), model_tensors()), "weights:EFORMAT",
        "missing tensor 'blk.0.attn_q.bias'")
    add("w-f16-norm.gguf", gguf(model_kvs(), model_tensors(norm_type=F16_T)), "weights:EFORMAT",
        "tensor 'output_norm.weight' has type f16, expected f32")
    add("w-block-count-huge.gguf", gguf(model_kvs(extra=[("llama.block_count", U32, 65536)]), model_tensors()),
        "weights:EFORMAT", "llama.block_count = 65536 needs at least 589824 tensors, the file has 11")
    add("w-extra-layer-tensor.gguf",
        gguf(model_kvs(), model_tensors(extra=[("blk.0.attn_output.bias", F32_T, [32])])),
        "weights:EUNSUPPORTED", "tensor 'blk.0.attn_output.bias' is not used by quill's llama forward pass")
    return c


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.normpath(os.path.join(here, "..", "tests", "corpus", "gguf"))
    os.makedirs(out, exist_ok=True)
    lines = ["# tests/corpus/gguf/MANIFEST — written by tools/gen-gguf-corpus.py; do not edit by hand.",
             "# <file> <ok | open|hparams|weights:QL_E* name> <substring of the one-line error>"]
    names = set()
    for name, data, expect, msg in corpus():
        assert name not in names, name
        names.add(name)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        lines.append(("%s %s %s" % (name, expect, msg)).rstrip())
    fuzz = os.path.join(out, "MANIFEST.fuzz")
    if os.path.exists(fuzz):
        with open(fuzz) as f:
            lines += [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")]
    with open(os.path.join(out, "MANIFEST"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("gen-gguf-corpus: %d files in %s" % (len(names), out))


if __name__ == "__main__":
    main()
