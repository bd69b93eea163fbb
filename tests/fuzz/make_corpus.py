#!/usr/bin/env python3
"""Write small seed GGUF files for the fuzz_gguf corpus (tests/fuzz/corpus/).

Usage: python3 tests/fuzz/make_corpus.py [outdir]

Each seed is a valid (or, for a few, deliberately borderline) GGUF file under 64 KiB that
exercises one part of the format: every value type, string arrays, every supported tensor type,
v2, a custom alignment. Deterministic, so re-running reproduces the committed files."""
import os
import struct
import sys

T_U8, T_I8, T_U16, T_I16, T_U32, T_I32, T_F32, T_BOOL, T_STR, T_ARR, T_U64, T_I64, T_F64 = range(13)
SCALAR_FMT = {T_U8: "<B", T_I8: "<b", T_U16: "<H", T_I16: "<h", T_U32: "<I", T_I32: "<i",
              T_F32: "<f", T_BOOL: "<B", T_U64: "<Q", T_I64: "<q", T_F64: "<d"}
# type id: (block elems, block bytes)
DTYPES = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20),
          "Q8_0": (8, 32, 34), "Q4_K": (12, 256, 144), "Q6_K": (14, 256, 210), "BF16": (30, 1, 2)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    if t == T_STR:
        return gstr(v)
    if t == T_ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(value(et, x) for x in items)
    return struct.pack(SCALAR_FMT[t], v)


def gguf(kvs, tensors, version=3, align=32):
    """kvs: [(key, type, value)]; tensors: [(name, type_id, ne list, data bytes)]"""
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + value(t, v)
    rel, offs = 0, []
    for name, tid, ne, data in tensors:
        offs.append(rel)
        rel += len(data)
        rel += (-rel) % align
    for (name, tid, ne, data), off in zip(tensors, offs):
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", tid, off)
    if tensors:
        out += b"\0" * ((-len(out)) % align)
    for i, (name, tid, ne, data) in enumerate(tensors):
        out += data
        if i + 1 < len(tensors):
            out += b"\0" * ((-len(out)) % align)
    return out


def pattern(n, seed):
    return bytes((i * 131 + seed * 17 + (i >> 3)) & 0xFF for i in range(n))


def tensor(name, dtype, ne, seed=1):
    tid, be, bb = DTYPES[dtype]
    n = 1
    for x in ne:
        n *= x
    return (name, tid, ne, pattern(n // be * bb, seed))


def seeds():
    yield "empty_v3", gguf([], [])
    yield "empty_v2", gguf([], [], version=2)
    yield "scalars", gguf([
        ("k.u8", T_U8, 200), ("k.i8", T_I8, -5), ("k.u16", T_U16, 60000), ("k.i16", T_I16, -300),
        ("k.u32", T_U32, 4000000000), ("k.i32", T_I32, -7), ("k.f32", T_F32, 1.5),
        ("k.bool", T_BOOL, 1), ("k.str", T_STR, "hello"), ("k.u64", T_U64, 1 << 40),
        ("k.i64", T_I64, -(1 << 40)), ("k.f64", T_F64, 2.25)], [])
    yield "arrays", gguf([
        ("a.u8", T_ARR, (T_U8, [1, 2, 3])), ("a.i32", T_ARR, (T_I32, [-1, 0, 1, 2])),
        ("a.f32", T_ARR, (T_F32, [0.5, 1.5])), ("a.bool", T_ARR, (T_BOOL, [0, 1, 1])),
        ("a.f64", T_ARR, (T_F64, [3.0])), ("a.empty", T_ARR, (T_I64, [])),
        ("a.str", T_ARR, (T_STR, ["a", "", "xyz", "<|im_start|>"]))], [])
    yield "tokenizer", gguf([
        ("general.architecture", T_STR, "llama"), ("llama.block_count", T_U32, 2),
        ("tokenizer.ggml.model", T_STR, "gpt2"),
        ("tokenizer.ggml.tokens", T_ARR, (T_STR, ["<s>", "a", "b", "ab", "\u0120the"])),
        ("tokenizer.ggml.token_type", T_ARR, (T_I32, [3, 1, 1, 1, 1])),
        ("tokenizer.ggml.merges", T_ARR, (T_STR, ["a b"])),
        ("tokenizer.ggml.bos_token_id", T_U32, 0)], [])
    for name, (tid, be, bb) in DTYPES.items():
        ne = [be * 2, 2] if be > 1 else [8, 3]
        yield "tensor_" + name.lower(), gguf([("general.architecture", T_STR, "llama")],
                                             [tensor("t." + name, name, ne)])
    yield "all_tensors_v2", gguf([("general.name", T_STR, "tiny")],
                                 [tensor("t.%s" % n, n, [DTYPES[n][1]] if DTYPES[n][1] > 1 else [4], i)
                                  for i, n in enumerate(DTYPES)], version=2)
    yield "align64", gguf([("general.alignment", T_U32, 64)],
                          [tensor("a", "F32", [3]), tensor("b", "F16", [5, 1, 1, 2]),
                           tensor("c", "Q8_0", [32])], align=64)
    yield "dims4", gguf([], [tensor("x", "F32", [2, 3, 2, 2]), tensor("y", "BF16", [1, 1, 1, 1])])
    # a few rejected ones, so the fuzzer starts next to the error paths too
    yield "bad_type", gguf([], [("q5k", 13, [256], b"\0" * 176)])
    yield "bad_version1", gguf([], [], version=1)
    yield "nested_arr_hdr", struct.pack("<IIQQ", 0x46554747, 3, 0, 1) + gstr("n") + \
        struct.pack("<IIQ", T_ARR, T_ARR, 1) + struct.pack("<IQ", T_U8, 1) + b"\x01"


def main():
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus")
    os.makedirs(outdir, exist_ok=True)
    for name, data in seeds():
        assert len(data) < 64 * 1024, name
        with open(os.path.join(outdir, name + ".gguf"), "wb") as f:
            f.write(data)
    print("wrote", len(list(seeds())), "seeds to", outdir)


if __name__ == "__main__":
    main()
