#!/usr/bin/env python3
"""Write seed inputs for fuzz_wire (tests/fuzz/corpus_wire/): one byte of data-plane message id
(proto/specd.proto DataMsgId) followed by a protobuf payload, encoded here by hand (field tags and
varints) so the seeds do not depend on our own encoder. Deterministic.

Usage: python3 tests/fuzz/make_corpus_wire.py [outdir]"""
import os
import struct
import sys


def varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_packed(num, values):
    body = b"".join(varint(x) for x in values)
    return varint(num << 3 | 2) + varint(len(body)) + body


def field_floats(num, values):
    body = b"".join(struct.pack("<f", x) for x in values)
    return varint(num << 3 | 2) + varint(len(body)) + body


def field_str(num, s):
    b = s.encode()
    return varint(num << 3 | 2) + varint(len(b)) + b


PROMPT, TREE_EXTEND, CHUNK, VERDICT, COMMIT, CANCEL, HELLO = 1, 2, 3, 4, 5, 6, 7
seeds = {
    "prompt": (PROMPT, field_varint(1, 7) + field_packed(2, [1, 504, 3000, 49151])),
    "prompt_bad_token": (PROMPT, field_varint(1, 7) + field_packed(2, [1, 49152])),
    "extend_chain": (TREE_EXTEND, field_varint(1, 7) + field_varint(2, 0) + field_varint(3, 0)
                     + field_packed(4, [-1, 0, 1]) + field_packed(5, [10, 11, 12])
                     + field_floats(6, [-0.1, -0.3, -0.9])),
    "extend_tree": (TREE_EXTEND, field_varint(1, 7) + field_varint(3, 0)
                    + field_packed(4, [-1, -1, 0, 0, 1]) + field_packed(5, [5, 6, 7, 8, 9])),
    "extend_bad_parent": (TREE_EXTEND, field_varint(1, 7) + field_packed(4, [-1, 3])
                          + field_packed(5, [5, 6])),
    "chunk": (CHUNK, field_varint(1, 7) + field_varint(2, 1) + field_varint(3, 2)
              + field_packed(4, [3]) + field_packed(5, [-1, 0]) + field_packed(6, [4, 5])),
    "verdict": (VERDICT, field_varint(1, 7) + field_varint(2, 1) + field_packed(3, [0])
                + field_varint(4, 42) + field_varint(6, 1234)),
    "verdict_error": (VERDICT, field_varint(1, 7) + field_varint(2, 1)
                      + field_str(5, "the worker holds 0 positions")),
    "commit": (COMMIT, field_varint(1, 7) + field_varint(2, 1) + field_varint(3, 5)
               + field_packed(4, [4, 5]) + field_varint(5, (1 << 64) - 1) + field_varint(6, 2)),
    "cancel": (CANCEL, field_varint(1, 7) + field_varint(2, 1)),
    "hello": (HELLO, field_varint(1, 1) + field_varint(2, 1) + field_str(3, "worker-a")),
    "truncated": (CHUNK, field_varint(1, 7) + b"\x22\x10\x01"),
}

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus_wire")
os.makedirs(out, exist_ok=True)
for name, (mid, payload) in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([mid]) + payload)
print(f"wrote {len(seeds)} seeds to {out}")
