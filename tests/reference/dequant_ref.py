#!/usr/bin/env python3
"""Reference dequantization data for tests/test_dequant.c, computed by the `gguf` Python package.

For every type in kernels/dtype.h this writes tests/reference/dequant/<TYPE>.bin: a few blocks of
raw bytes and the float32 values gguf.quants.dequantize() gives for them. It also writes
tests/reference/dequant/conv.bin: float32 inputs with their float16 (numpy) and bfloat16
(gguf.quants.BF16) conversions. Formats: tests/reference/README.md.

Run from anywhere:  python3 tests/reference/dequant_ref.py
The output depends only on SEED and the package versions (printed), so re-running it reproduces
the committed files byte for byte.
"""
import importlib.metadata
import os
import struct
import sys

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf.quants import BF16, dequantize

SEED = 20240611
OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dequant")
MAGIC_DQ = b"SDQR"
MAGIC_CV = b"SDCV"
VERSION = 1

# type -> number of elements per file (a multiple of the block size, a few KiB of output)
TYPES = [
    (QT.F32, 512),
    (QT.F16, 1024),
    (QT.BF16, 1024),
    (QT.Q8_0, 512),
    (QT.Q4_0, 512),
    (QT.Q4_1, 512),
    (QT.Q4_K, 1024),
    (QT.Q6_K, 1024),
]

# f16 scales that exercise the conversion edge cases: +0, -0, smallest and largest subnormal,
# smallest normal, a negative scale, 1.0, then random values
SPECIAL_F16 = [0x0000, 0x8000, 0x0001, 0x03FF, 0x0400, 0xA3D7, 0x3C00]


def f16_scales(rng, n):
    """n finite f16 bit patterns: the special ones first, then sign * 2^U(-14, -1)."""
    out = list(SPECIAL_F16[:n])
    k = n - len(out)
    if k > 0:
        mag = np.exp2(rng.uniform(-14.0, -1.0, size=k)).astype(np.float32)
        sign = np.where(rng.integers(0, 2, size=k) == 1, -1.0, 1.0).astype(np.float32)
        out += [int(v) for v in (mag * sign).astype(np.float16).view(np.uint16)]
    return np.array(out, dtype=np.uint16)


def put_f16(raw, nblk, bsize, off, vals):
    """Write f16 bit patterns vals[b] at byte offset `off` of block b."""
    blocks = raw.reshape(nblk, bsize)
    blocks[:, off:off + 2] = vals.astype("<u2").view(np.uint8).reshape(nblk, 2)


def make_raw(rng, qt, n):
    bsize_elems, bsize = gguf.GGML_QUANT_SIZES[qt]
    nblk = n // bsize_elems
    raw = rng.integers(0, 256, size=nblk * bsize, dtype=np.uint8)
    if qt == QT.F32:
        # finite floats over a wide range of exponents, plus a few exact edge values
        v = (rng.standard_normal(n) * np.exp2(rng.integers(-40, 40, size=n))).astype(np.float32)
        v[:6] = np.array([0.0, -0.0, 1.0, -1.0, 1e-40, 3.4e38], dtype=np.float32)
        raw = v.view(np.uint8).copy()
    elif qt == QT.F16:
        # every finite pattern is fair game: clear exponent-all-ones patterns (inf/nan)
        h = raw.view("<u2").copy()
        bad = (h & 0x7C00) == 0x7C00
        h[bad] &= 0xBFFF  # drop the top exponent bit: finite
        h[: len(SPECIAL_F16)] = SPECIAL_F16
        h[len(SPECIAL_F16)] = 0x7BFF  # largest finite
        h[len(SPECIAL_F16) + 1] = 0xFBFF
        raw = h.view(np.uint8).copy()
    elif qt == QT.BF16:
        h = raw.view("<u2").copy()
        bad = (h & 0x7F80) == 0x7F80
        h[bad] &= 0xBFFF
        h[:4] = [0x0000, 0x8000, 0x0001, 0x3F80]  # +0, -0, smallest subnormal, 1.0
        raw = h.view(np.uint8).copy()
    elif qt in (QT.Q8_0, QT.Q4_0):
        put_f16(raw, nblk, bsize, 0, f16_scales(rng, nblk))
    elif qt == QT.Q4_1:
        put_f16(raw, nblk, bsize, 0, f16_scales(rng, nblk))  # d
        put_f16(raw, nblk, bsize, 2, f16_scales(rng, nblk)[::-1].copy())  # m
    elif qt == QT.Q4_K:
        put_f16(raw, nblk, bsize, 0, f16_scales(rng, nblk))  # d
        put_f16(raw, nblk, bsize, 2, f16_scales(rng, nblk)[::-1].copy())  # dmin
    elif qt == QT.Q6_K:
        put_f16(raw, nblk, bsize, 208, f16_scales(rng, nblk))  # d is last
    else:
        raise ValueError(qt)
    return raw


def write_dequant(rng, qt, n):
    raw = make_raw(rng, qt, n)
    vals = np.asarray(dequantize(raw.copy(), qt), dtype=np.float32).reshape(-1)
    if vals.size != n:
        raise RuntimeError(f"{qt.name}: gguf gave {vals.size} values, expected {n}")
    if not np.all(np.isfinite(vals)):
        raise RuntimeError(f"{qt.name}: non-finite reference values")
    path = os.path.join(OUT_DIR, f"{qt.name}.bin")
    with open(path, "wb") as f:
        f.write(MAGIC_DQ)
        f.write(struct.pack("<5I", VERSION, int(qt), n, raw.size, SEED))
        f.write(raw.tobytes())
        f.write(vals.astype("<f4").tobytes())
    return path


def conv_inputs(rng):
    """float32 inputs for the f32->f16/bf16 rounding checks (no NaN: payloads differ legitimately)."""
    edge = []
    # f16: overflow threshold, largest finite, smallest normal/subnormal and their halfway points
    edge += [65504.0, 65519.996, 65520.0, 65536.0, 1e30, 2.0**-14, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0000001,
             2.0**-26, 3 * 2.0**-25, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11, 1.0 + 2.0**-11 + 2.0**-20,
             0.0, -0.0, 1.0, -1.0, float("inf"), float("-inf"), 1e-45, 3.4028235e38]
    e = np.array(edge, dtype=np.float32)
    e = np.concatenate([e, -e])
    # bf16 halfway cases: low 16 bits exactly 0x8000 with even/odd upper part, and the carry case
    bits = np.array([0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001, 0x7F7F8000, 0x7F7FFFFF, 0x00008000,
                     0x00018000], dtype=np.uint32)
    b = np.concatenate([bits, bits | 0x80000000]).view(np.float32)
    # random: values in and around the f16 range, and raw random bit patterns
    r1 = (rng.standard_normal(1024) * np.exp2(rng.integers(-28, 18, size=1024))).astype(np.float32)
    r2 = rng.integers(0, 2**32, size=512, dtype=np.uint64).astype(np.uint32).view(np.float32)
    r2 = r2[~np.isnan(r2)]
    # random halfway points between adjacent f16 values
    h = rng.integers(0, 0x7BFF, size=256).astype(np.uint16)
    lo = h.view(np.float16).astype(np.float64)
    hi = (h + 1).astype(np.uint16).view(np.float16).astype(np.float64)
    r3 = ((lo + hi) / 2).astype(np.float32)  # exact: f16 halfway points are representable in f32
    return np.concatenate([e, b, r1, r2, r3]).astype(np.float32)


def write_conv(rng):
    x = conv_inputs(rng)
    with np.errstate(over="ignore"):
        h = x.astype(np.float16).view(np.uint16)
    bf = BF16.quantize(x.copy()).view(np.uint16).reshape(-1)
    path = os.path.join(OUT_DIR, "conv.bin")
    with open(path, "wb") as f:
        f.write(MAGIC_CV)
        f.write(struct.pack("<3I", VERSION, x.size, SEED))
        f.write(x.astype("<f4").tobytes())
        f.write(h.astype("<u2").tobytes())
        f.write(bf.astype("<u2").tobytes())
    return path


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    rng = np.random.default_rng(SEED)
    print(f"seed {SEED}; numpy {np.__version__}; gguf {importlib.metadata.version('gguf')}", file=sys.stderr)
    for qt, n in TYPES:
        p = write_dequant(rng, qt, n)
        print(f"wrote {p} ({os.path.getsize(p)} B)", file=sys.stderr)
    p = write_conv(rng)
    print(f"wrote {p} ({os.path.getsize(p)} B)", file=sys.stderr)


if __name__ == "__main__":
    main()
