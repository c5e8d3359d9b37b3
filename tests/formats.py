"""Independent numpy encoders and decoders of every weight layout tritlm reads or runs.

Written from the byte-level descriptions in docs/formats.md (which cite the upstream sources they
were checked against), not from tritlm's C++: the tests compare tritlm's repack functions with
these, and compare these decoders with ``gguf.quants.dequantize`` where gguf-py implements the
type, so that a misreading shared by tritlm and this file still has an outside referee.

Conventions: a weight matrix is ``w[n, k]`` (n output rows, k inputs); ternary values are int8 in
{-1, 0, 1} and binary ones int8 in {-1, 1}; decoders return ``(w, scales)`` where ``scales`` is
float32 ``[n, groups]`` and the real weight is ``w * scales[:, g]`` over group g.

Encoders favour loops over the byte positions that a reader can check against the description;
decoders are vectorized differently on purpose (digit extraction, reshapes), so that an encoder and
a decoder sharing one mistake is less likely.
"""

from __future__ import annotations

import numpy as np

QK_K = 256          # TQ1_0 / TQ2_0 super-block
BLOCK = 128         # tritlm's run-time block, I2_S's block, Q1_0's block
TQ2_0_BYTES = 66    # qs[64], fp16 d
TQ1_0_BYTES = 54    # qs[48], qh[4], fp16 d
Q1_0_BYTES = 18     # fp16 d, qs[16]
I2_S_TAIL = 32      # bytes after the packed codes; the f32 scale is the first 4

GGML_TYPE_TQ1_0 = 34
GGML_TYPE_TQ2_0 = 35
GGML_TYPE_I2_S = 36  # bitnet.cpp's fork of ggml
GGML_TYPE_Q1_0 = 41


# --------------------------------------------------------------------------------------------
# helpers


def _as_bytes(data) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(bytes(data), dtype=np.uint8)
    a = np.asarray(data)
    if a.dtype != np.uint8:
        raise TypeError(f"expected uint8 data, got {a.dtype}")
    return a.reshape(-1)


def _blocks(data, n: int, k: int, block: int, block_bytes: int, name: str) -> np.ndarray:
    """The raw bytes of a block format as [n rows, k / block blocks, block_bytes]."""
    raw = _as_bytes(data)
    if k % block or raw.size != n * (k // block) * block_bytes:
        raise ValueError(f"{name} size mismatch")
    return raw.reshape(n, k // block, block_bytes)


def _check_ternary(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or not np.isin(w, (-1, 0, 1)).all():
        raise ValueError("w must be a 2-D matrix of {-1, 0, 1}")
    return w.astype(np.int8)


def _check_binary(w: np.ndarray) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2 or not np.isin(w, (-1, 1)).all():
        raise ValueError("w must be a 2-D matrix of {-1, 1}")
    return w.astype(np.int8)


def unaligned(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` one byte into a buffer: C-contiguous and of a's dtype, but not aligned for
    it, as np.frombuffer at an odd offset (or a tensor of a memory-mapped file) can make."""
    out = np.zeros(a.nbytes + 1, np.uint8)[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def fp16_to_f32(h: np.ndarray) -> np.ndarray:
    """IEEE binary16 bit patterns (uint16) to float32, bit by bit (not via numpy's float16)."""
    h = np.asarray(h, dtype=np.uint16).astype(np.uint32)
    sign = np.where(h >> 15, -1.0, 1.0)
    exp = (h >> 10) & 0x1F
    mant = (h & 0x3FF).astype(np.float64)
    normal = sign * (1.0 + mant / 1024.0) * np.exp2(exp.astype(np.float64) - 15.0)
    subnormal = sign * mant * 2.0 ** -24
    special = np.where(mant == 0, sign * np.inf, np.nan)
    out = np.where(exp == 0, subnormal, np.where(exp == 31, special, normal))
    return out.astype(np.float32)  # every binary16 value is exact in binary64 and binary32


def random_fp16_bits(rng: np.random.Generator, shape, *, lo: float = 2.0 ** -10, hi: float = 4.0) -> np.ndarray:
    """Random finite binary16 bit patterns of magnitude in [lo, hi), plus a few zeros and subnormals."""
    vals = rng.uniform(lo, hi, size=shape).astype(np.float16)
    bits = vals.view(np.uint16).copy()
    flat = bits.reshape(-1)
    if flat.size >= 4:
        flat[0] = 0x0000          # +0: an all-zero block quantizes to d = 0
        flat[1] = 0x0001          # smallest subnormal, 2^-24
        flat[2] = 0x03FF          # largest subnormal
        flat[3] = 0x7BFF          # largest normal, 65504
    return bits


# --------------------------------------------------------------------------------------------
# activations


def quantize_activations(x: np.ndarray):
    """Per-row int8: s = 127 / max(amax, 1e-5); q = clamp(round_half_even(x * s), -128, 127), f32.

    Returns (q int8 [B, K], s float32 [B], block_sums int32 [B, K / 128]).
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] % BLOCK:
        raise ValueError("x must be [B, K] with K a multiple of 128")
    amax = np.max(np.abs(x), axis=1)                                   # exact
    s = np.float32(127.0) / np.maximum(amax, np.float32(1e-5))         # one f32 division
    prod = x * s[:, None]                                              # one f32 multiply each
    q = np.clip(np.rint(prod), -128, 127).astype(np.int8)              # rint: ties to even
    sums = q.astype(np.int32).reshape(x.shape[0], -1, BLOCK).sum(axis=2, dtype=np.int32)
    return q, s.astype(np.float32), sums


# --------------------------------------------------------------------------------------------
# tritlm's run-time layouts (csrc/kernels/kernels.h)


def encode_runtime_ternary(w: np.ndarray) -> np.ndarray:
    """[n, k/4] bytes: block b = bytes 32b..32b+31 of a row; byte j holds weights j, j+32, j+64,
    j+96 of the block in bits 7:6, 5:4, 3:2, 1:0 as w + 1."""
    w = _check_ternary(w)
    n, k = w.shape
    out = np.zeros((n, k // 4), dtype=np.uint8)
    code = (w.astype(np.int16) + 1).astype(np.uint8)
    for b in range(k // BLOCK):
        for j in range(32):
            byte = np.zeros(n, dtype=np.uint8)
            for g, shift in enumerate((6, 4, 2, 0)):
                byte |= code[:, b * BLOCK + 32 * g + j] << shift
            out[:, 32 * b + j] = byte
    return out


def decode_runtime_ternary(codes: np.ndarray, k: int) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.uint8)
    n = codes.shape[0]
    blocks = codes.reshape(n, k // BLOCK, 1, 32)
    fields = (blocks >> np.array([6, 4, 2, 0], dtype=np.uint8).reshape(1, 1, 4, 1)) & 3
    if (fields == 3).any():
        raise ValueError("code 3 in a ternary run-time layout")
    return (fields.astype(np.int8) - 1).reshape(n, k)


TILE = 32


def encode_runtime_binary(w: np.ndarray) -> np.ndarray:
    """[tiles, k/8, 32] bytes: rows padded with zero bytes to whole tiles of 32; in tile t, byte
    p of [j] holds row 32t + p's weights 8j..8j+7 in bits 0..7, 1 -> +1 and 0 -> -1."""
    w = _check_binary(w)
    n, k = w.shape
    tiles = -(-n // TILE)
    bits = np.zeros((tiles * TILE, k), dtype=np.uint8)
    bits[:n] = w > 0
    byte = np.zeros((tiles * TILE, k // 8), dtype=np.uint8)
    for i in range(8):
        byte |= bits[:, i::8] << i
    return np.ascontiguousarray(byte.reshape(tiles, TILE, k // 8).transpose(0, 2, 1))


def runtime_scales(fmt: str, scales) -> np.ndarray:
    """The float32 scales [n, groups] as the run-time layout stores them: the binary format keeps
    binary16 (rounded to nearest even, as numpy's float16 cast rounds), the ternary one float32."""
    s = np.asarray(scales, dtype=np.float32)
    return s.astype(np.float16).astype(np.float32) if fmt == "binary" else s


def decode_runtime_binary(codes: np.ndarray, n: int) -> np.ndarray:
    codes = np.asarray(codes, dtype=np.uint8)
    tiles, kb, _ = codes.shape
    rows = codes.transpose(0, 2, 1).reshape(tiles * TILE, kb)[:n]
    bits = (rows[:, :, None] >> np.arange(8, dtype=np.uint8)) & 1
    return (bits.astype(np.int8) * 2 - 1).reshape(n, kb * 8)


# --------------------------------------------------------------------------------------------
# GGUF TQ2_0 (type 35): per 256 weights qs[64] then fp16 d


def encode_tq2_0(w: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """w [n, k] ternary, d_bits uint16 [n, k/256] -> 1-D uint8 of n * k/256 * 66 bytes."""
    w = _check_ternary(w)
    n, k = w.shape
    if k % QK_K:
        raise ValueError("TQ2_0 needs k % 256 == 0")
    nb = k // QK_K
    d_bits = np.asarray(d_bits, dtype=np.uint16).reshape(n, nb)
    out = np.zeros((n, nb, TQ2_0_BYTES), dtype=np.uint8)
    code = (w.astype(np.int16) + 1).astype(np.uint8)
    for b in range(nb):
        for half in range(2):              # qs bytes 0..31 and 32..63
            for m in range(32):
                byte = np.zeros(n, dtype=np.uint8)
                for l in range(4):         # element m + 32 l of the half, bits 2l..2l+1
                    byte |= code[:, b * QK_K + 128 * half + m + 32 * l] << (2 * l)
                out[:, b, 32 * half + m] = byte
        out[:, b, 64] = d_bits[:, b] & 0xFF        # little-endian fp16
        out[:, b, 65] = d_bits[:, b] >> 8
    return out.reshape(-1)


def decode_tq2_0(data, n: int, k: int):
    """-> (codes - 1 as int8 [n, k], d float32 [n, k/256]). Code 3 decodes to 2: callers check."""
    blk = _blocks(data, n, k, QK_K, TQ2_0_BYTES, "TQ2_0")
    nb = blk.shape[1]
    qs = blk[:, :, :64].reshape(n, nb, 2, 1, 32)                          # half, l, m
    codes = (qs >> (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 1, 4, 1)) & 3
    w = codes.astype(np.int8).reshape(n, k) - 1
    d = fp16_to_f32(blk[:, :, 64].astype(np.uint16) | (blk[:, :, 65].astype(np.uint16) << 8))
    return w, d


# --------------------------------------------------------------------------------------------
# GGUF TQ1_0 (type 34): per 256 weights qs[48], qh[4], fp16 d


def _tq1_pack_digits(trits: np.ndarray) -> np.ndarray:
    """trits [..., 5] in {0, 1, 2}, most significant first -> ceil(value * 256 / 243) as uint8."""
    v = np.zeros(trits.shape[:-1], dtype=np.int64)
    for i in range(5):
        v = v * 3 + trits[..., i]
    return ((v * 256 + 242) // 243).astype(np.uint8)


def encode_tq1_0(w: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """w [n, k] ternary, d_bits uint16 [n, k/256] -> 1-D uint8 of n * k/256 * 54 bytes.

    Block layout (weights e = 0..255 of the block):
      qs[m],      m < 32: trits of e = m + 32 i,        i = 0..4 (i = 0 most significant)
      qs[32 + m], m < 16: trits of e = 160 + m + 16 i,  i = 0..4
      qh[j],      j < 4:  trits of e = 240 + j + 4 i,   i = 0..3, then a 0 trit
    each byte = ceil(sum trit_i 3^(4-i) * 256 / 243); then fp16 d.
    """
    w = _check_ternary(w)
    n, k = w.shape
    if k % QK_K:
        raise ValueError("TQ1_0 needs k % 256 == 0")
    nb = k // QK_K
    d_bits = np.asarray(d_bits, dtype=np.uint16).reshape(n, nb)
    out = np.zeros((n, nb, TQ1_0_BYTES), dtype=np.uint8)
    code = (w.astype(np.int16) + 1).astype(np.int64)
    for b in range(nb):
        e0 = b * QK_K
        for m in range(32):
            t = np.stack([code[:, e0 + m + 32 * i] for i in range(5)], axis=-1)
            out[:, b, m] = _tq1_pack_digits(t)
        for m in range(16):
            t = np.stack([code[:, e0 + 160 + m + 16 * i] for i in range(5)], axis=-1)
            out[:, b, 32 + m] = _tq1_pack_digits(t)
        for j in range(4):
            t = np.stack([code[:, e0 + 240 + j + 4 * i] for i in range(4)] + [np.zeros(n, np.int64)], axis=-1)
            out[:, b, 48 + j] = _tq1_pack_digits(t)
        out[:, b, 52] = d_bits[:, b] & 0xFF
        out[:, b, 53] = d_bits[:, b] >> 8
    return out.reshape(-1)


def tq1_digit(byte: np.ndarray, i: int) -> np.ndarray:
    """Trit i (0 = most significant) of a TQ1_0 byte: ((uint8)(q * 3^i) * 3) >> 8."""
    q = (np.asarray(byte, dtype=np.uint16) * (3 ** i)) & 0xFF
    return (q * 3) >> 8


def decode_tq1_0(data, n: int, k: int):
    """-> (trit - 1 as int8 [n, k], d float32 [n, k/256])."""
    blk = _blocks(data, n, k, QK_K, TQ1_0_BYTES, "TQ1_0")
    nb = blk.shape[1]
    # digits [n, nb, i, byte]: element order of each section is i-major, byte-minor
    sec0 = np.stack([tq1_digit(blk[:, :, 0:32], i) for i in range(5)], axis=2).reshape(n, nb, 160)
    sec1 = np.stack([tq1_digit(blk[:, :, 32:48], i) for i in range(5)], axis=2).reshape(n, nb, 80)
    sec2 = np.stack([tq1_digit(blk[:, :, 48:52], i) for i in range(4)], axis=2).reshape(n, nb, 16)
    w = np.concatenate([sec0, sec1, sec2], axis=2).astype(np.int8).reshape(n, k) - 1
    d = fp16_to_f32(blk[:, :, 52].astype(np.uint16) | (blk[:, :, 53].astype(np.uint16) << 8))
    return w, d


# --------------------------------------------------------------------------------------------
# bitnet.cpp I2_S (type 36): n*k/4 bytes of codes, then a 32-byte tail, f32 scale first


def encode_i2_s(w: np.ndarray, scale: float, *, tail_fill: int = 0) -> np.ndarray:
    """Row-major weights in 128-weight blocks of 32 bytes: byte j of a block holds weights j, j+32,
    j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 as w + 1. Then the tail: f32 scale, 28 filler bytes."""
    w = _check_ternary(w)
    n, k = w.shape
    if k % BLOCK:
        raise ValueError("I2_S needs k % 128 == 0")
    # blocks run over the flattened tensor (k % 128 == 0, so no block straddles two rows)
    flat = (w.astype(np.int16) + 1).astype(np.uint8).reshape(-1, BLOCK)
    packed = np.zeros((flat.shape[0], 32), dtype=np.uint8)
    for j in range(BLOCK):          # weight j of every block at once
        packed[:, j % 32] |= flat[:, j] << (6 - 2 * (j // 32))
    packed = packed.reshape(-1)
    tail = np.full(I2_S_TAIL, tail_fill, dtype=np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).astype("<f4").tobytes(), dtype=np.uint8)
    return np.concatenate([packed, tail])


def decode_i2_s(data, n: int, k: int):
    """-> (code - 1 as int8 [n, k], scale float32 [n, 1] (the tensor scale on every row))."""
    raw = _as_bytes(data)
    if k % BLOCK or raw.size != n * k // 4 + I2_S_TAIL:
        raise ValueError("I2_S size mismatch")
    codes = raw[: n * k // 4].reshape(n * k // BLOCK, 32)
    fields = np.stack([(codes >> s) & 3 for s in (6, 4, 2, 0)], axis=1)   # [block, group, pos]
    w = fields.astype(np.int8).reshape(n, k) - 1
    scale = raw[n * k // 4: n * k // 4 + 4].copy().view("<f4")[0]
    return w, np.full((n, 1), scale, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Hugging Face packed uint8 (microsoft/bitnet-b1.58-2B-4T)


def encode_hf_packed(w: np.ndarray) -> np.ndarray:
    """w [N, K] ternary, N % 4 == 0 -> uint8 [N/4, K]: bits 2i..2i+1 of packed row r hold original
    row i * (N/4) + r as w + 1."""
    w = _check_ternary(w)
    n, k = w.shape
    if n % 4:
        raise ValueError("HF packing needs N % 4 == 0")
    rows = n // 4
    out = np.zeros((rows, k), dtype=np.uint8)
    for i in range(4):
        out |= (w[i * rows:(i + 1) * rows].astype(np.int16) + 1).astype(np.uint8) << (2 * i)
    return out


def decode_hf_packed(packed: np.ndarray) -> np.ndarray:
    packed = np.asarray(packed, dtype=np.uint8)
    codes = np.concatenate([(packed >> (2 * i)) & 3 for i in range(4)], axis=0)
    return codes.astype(np.int8) - 1


def hf_weight_multiplier(weight_scale: float) -> np.float32:
    """The factor the ternary codes are multiplied by. transformers' BitLinear computes
    y / (input_scale * weight_scale), and llama.cpp's convert_hf_to_gguf.py dequantizes these
    weights as (code - 1) / weight_scale ("the scale is inverted"): weight_scale divides."""
    return np.float32(1.0) / np.float32(weight_scale)


# --------------------------------------------------------------------------------------------
# GGUF Q1_0 (type 41): per 128 weights fp16 d then qs[16]


def encode_q1_0(w: np.ndarray, d_bits: np.ndarray) -> np.ndarray:
    """w [n, k] of {-1, 1}, d_bits uint16 [n, k/128] -> 1-D uint8 of n * k/128 * 18 bytes.
    Weight j of a block is bit j % 8 of qs[j // 8]: 1 -> +d, 0 -> -d."""
    w = _check_binary(w)
    n, k = w.shape
    if k % BLOCK:
        raise ValueError("Q1_0 needs k % 128 == 0")
    nb = k // BLOCK
    d_bits = np.asarray(d_bits, dtype=np.uint16).reshape(n, nb)
    out = np.zeros((n, nb, Q1_0_BYTES), dtype=np.uint8)
    for b in range(nb):
        out[:, b, 0] = d_bits[:, b] & 0xFF
        out[:, b, 1] = d_bits[:, b] >> 8
        for j in range(BLOCK):
            out[:, b, 2 + j // 8] |= (w[:, b * BLOCK + j] > 0).astype(np.uint8) << (j % 8)
    return out.reshape(-1)


def decode_q1_0(data, n: int, k: int):
    """-> (w int8 [n, k] of {-1, 1}, d float32 [n, k/128])."""
    blk = _blocks(data, n, k, BLOCK, Q1_0_BYTES, "Q1_0")
    nb = blk.shape[1]
    bits = np.unpackbits(blk[:, :, 2:], axis=2, bitorder="little")       # bit j%8 of byte j//8
    w = bits.astype(np.int8).reshape(n, k) * 2 - 1
    d = fp16_to_f32(blk[:, :, 0].astype(np.uint16) | (blk[:, :, 1].astype(np.uint16) << 8))
    return w, d


# --------------------------------------------------------------------------------------------
# reference arithmetic


def dequantize(w: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float64 [n, k]: w times the scale of its group (groups split k evenly)."""
    w = np.asarray(w)
    scales = np.asarray(scales, dtype=np.float64)
    n, k = w.shape
    return w.astype(np.float64) * np.repeat(scales, k // scales.shape[1], axis=1)


def reference_matmul(w: np.ndarray, scales: np.ndarray, q: np.ndarray, s: np.ndarray):
    """float64 evaluation of dequantize(w, scales) @ (q / s).T, done as exact int64 group sums
    times the group scales (so an exact zero stays zero). Returns (y [B, n], bound [B, n]) where
    bound = sum over groups of |isum_g * scale_g| / s, the magnitude a float32 accumulation over
    groups is relative to."""
    w = np.asarray(w, dtype=np.int64)
    q = np.asarray(q, dtype=np.int64)
    scales = np.asarray(scales, dtype=np.float64)
    n, k = w.shape
    groups = scales.shape[1]
    gs = k // groups
    isum = np.einsum("ngk,bgk->bng", w.reshape(n, groups, gs), q.reshape(q.shape[0], groups, gs))
    terms = isum.astype(np.float64) * scales[None, :, :]
    s64 = np.asarray(s, dtype=np.float64)[:, None]
    return terms.sum(axis=2) / s64, np.abs(terms).sum(axis=2) / s64
