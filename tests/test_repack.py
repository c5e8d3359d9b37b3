"""tritlm's packing and repacking against independent numpy encoders/decoders (tests/formats.py).

For every source layout: random weights are encoded by formats.py, repacked by tritlm, and
  * ``PackedWeights.codes`` must equal formats.py's encoding of the run-time layout,
  * ``unpack()`` must give back the same ternary/binary values and exactly the scales stored (f32
    for ternary, rounded to binary16 for binary),
  * ``kernels.matmul`` must agree with a float64 evaluation of dequantized(W) @ (q / s).
GGUF data written by gguf-py (``gguf.quants.quantize``) is a second, outside encoder, and
``gguf.quants.dequantize`` an outside decoder for formats.py itself. docs/formats.md describes
every layout byte by byte.
"""

from __future__ import annotations

import itertools
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import formats as F  # noqa: E402

from tritlm import kernels  # noqa: E402

import gguf  # noqa: E402  (the test extra installs it: an outside TQ1_0/TQ2_0 codec)
import gguf.quants  # noqa: E402

SEED = 20241123
ISAS = kernels.available_isas()


def make_rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([SEED, *key])


def random_ternary(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.integers(-1, 2, size=(n, k), dtype=np.int8)


def random_binary(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return np.where(rng.random((n, k)) < 0.5, -1, 1).astype(np.int8)


def random_activations(rng: np.random.Generator, b: int, k: int) -> np.ndarray:
    x = rng.standard_normal((b, k)).astype(np.float32)
    x *= np.float32(10.0) ** rng.uniform(-3, 3, size=(b, 1)).astype(np.float32)
    if b > 2:
        x[1] = 0.0  # an all-zero row: q = 0, y = 0 exactly
    return x


def check_packed(pw, fmt: str, w: np.ndarray, scales: np.ndarray, group_size: int) -> None:
    """pw holds exactly w (int8) with scales [n, groups] (binary16 for binary) in tritlm's run-time
    layout."""
    n, k = w.shape
    assert pw.format == fmt
    assert (pw.n, pw.k, pw.group_size) == (n, k, group_size)
    codes = np.asarray(pw.codes)
    assert codes.dtype == np.uint8
    if fmt == "ternary":
        assert codes.shape == (n, k // 4)
        expected_codes = F.encode_runtime_ternary(w)
    else:
        assert codes.shape == (-(-n // F.TILE), k // 8, F.TILE)
        expected_codes = F.encode_runtime_binary(w)
    np.testing.assert_array_equal(codes, expected_codes)
    got_w, got_s = pw.unpack()
    assert got_w.dtype == np.int8 and got_w.shape == (n, k)
    np.testing.assert_array_equal(got_w, w)
    assert got_s.dtype == np.float32 and got_s.shape == (n, k // group_size)
    # exact: bit patterns, so -0.0 / +0.0 and every ulp count
    np.testing.assert_array_equal(got_s.view(np.uint32), F.runtime_scales(fmt, scales).view(np.uint32))
    np.testing.assert_array_equal(np.asarray(pw.scales), got_s)
    # binary rows pad to whole tiles, and a binary scale is 2 bytes
    stored_scales, scale_bytes = (codes.shape[0] * F.TILE, 2) if fmt == "binary" else (n, 4)
    assert pw.nbytes == codes.nbytes + stored_scales * got_s.shape[1] * scale_bytes


def check_matmul(pw, w: np.ndarray, scales: np.ndarray, rng: np.random.Generator, b: int = 3) -> None:
    """matmul(pw, quantize(x)) against float64 dequantized(W) @ (q / s), for every ISA."""
    n, k = w.shape
    x = random_activations(rng, b, k)
    a = kernels.quantize_activations(x)
    ref, bound = F.reference_matmul(w, scales, np.asarray(a.q), np.asarray(a.scale))
    groups = np.asarray(scales).shape[1]
    for isa in ISAS:
        y = np.asarray(kernels.matmul(pw, a, isa=isa))
        assert y.dtype == np.float32 and y.shape == (b, n), isa
        if groups == 1:
            # one scale: float(isum) * scale / s, two f32 roundings
            np.testing.assert_allclose(y, ref, rtol=1e-5, atol=0, err_msg=f"isa={isa}")
        else:
            # per-group scales are summed in f32, so cancellation between groups can make the
            # relative error large; the error is bounded by 1e-5 * sum over groups of |term|.
            err = np.abs(y.astype(np.float64) - ref)
            assert (err <= 1e-5 * bound).all(), (isa, float(np.max(err - 1e-5 * bound)))
        np.testing.assert_array_equal(y[1], 0.0)  # the all-zero activation row
    # linear() is quantize then matmul, bit for bit
    np.testing.assert_array_equal(np.asarray(kernels.linear(pw, x)), np.asarray(kernels.matmul(pw, a)))


# ----------------------------------------------------------------------------------------------
# formats.py against itself and against gguf-py (no tritlm involved)


class TestFormatsHelper:
    def test_fp16_all_patterns(self):
        bits = np.arange(1 << 16, dtype=np.uint16)
        mine = F.fp16_to_f32(bits)
        ref = bits.view(np.float16).astype(np.float32)
        ok = ~np.isnan(ref)
        np.testing.assert_array_equal(mine[ok].view(np.uint32), ref[ok].view(np.uint32))
        assert np.isnan(mine[~ok]).all()

    def test_tq1_digits_exhaustive(self):
        trits = np.array(list(itertools.product(range(3), repeat=5)))
        byte = F._tq1_pack_digits(trits)
        assert len(set(byte.tolist())) == 243
        dec = np.stack([F.tq1_digit(byte, i) for i in range(5)], axis=1)
        np.testing.assert_array_equal(dec, trits)

    @pytest.mark.parametrize("n,k", [(1, 256), (7, 2560)])
    def test_round_trips(self, n, k):
        rng = make_rng(1, n, k)
        w = random_ternary(rng, n, k)
        d = F.random_fp16_bits(rng, (n, k // 256))
        for enc, dec in ((F.encode_tq2_0, F.decode_tq2_0), (F.encode_tq1_0, F.decode_tq1_0)):
            w2, d2 = dec(enc(w, d), n, k)
            np.testing.assert_array_equal(w2, w)
            np.testing.assert_array_equal(d2, F.fp16_to_f32(d))
        w2, s2 = F.decode_i2_s(F.encode_i2_s(w, 0.5), n, k)
        np.testing.assert_array_equal(w2, w)
        assert (s2 == 0.5).all()
        np.testing.assert_array_equal(F.decode_runtime_ternary(F.encode_runtime_ternary(w), k), w)
        wb = random_binary(rng, n, k)
        d1 = F.random_fp16_bits(rng, (n, k // 128))
        w3, d3 = F.decode_q1_0(F.encode_q1_0(wb, d1), n, k)
        np.testing.assert_array_equal(w3, wb)
        np.testing.assert_array_equal(d3, F.fp16_to_f32(d1))
        np.testing.assert_array_equal(F.decode_runtime_binary(F.encode_runtime_binary(wb), n), wb)
        w4 = random_ternary(rng, 4 * n, k)
        np.testing.assert_array_equal(F.decode_hf_packed(F.encode_hf_packed(w4)), w4)

    def test_i2_s_is_the_ternary_runtime_layout(self):
        w = random_ternary(make_rng(2), 5, 640)
        np.testing.assert_array_equal(F.encode_i2_s(w, 1.0)[: 5 * 640 // 4], F.encode_runtime_ternary(w).reshape(-1))

    @pytest.mark.parametrize("typ", ["TQ1_0", "TQ2_0"])
    @pytest.mark.parametrize("n,k", [(1, 256), (7, 2560)])
    def test_against_gguf(self, typ, n, k):
        """formats.py decodes gguf-py's bytes as gguf-py does, and gguf-py decodes ours."""
        qtype = getattr(gguf.GGMLQuantizationType, typ)
        enc, dec = {"TQ1_0": (F.encode_tq1_0, F.decode_tq1_0), "TQ2_0": (F.encode_tq2_0, F.decode_tq2_0)}[typ]
        rng = make_rng(3, n, k)
        x = (rng.standard_normal((n, k)) * 2).astype(np.float32)
        x[0, :256] = 0.0  # an all-zero block: d = 0
        theirs = gguf.quants.quantize(x, qtype)
        w, d = dec(theirs.reshape(-1), n, k)
        np.testing.assert_array_equal(F.dequantize(w, d).astype(np.float32), gguf.quants.dequantize(theirs, qtype))
        # our encoder writes the same bytes as theirs for the same values and scales
        d_bits = theirs.reshape(n, k // 256, -1)[:, :, -2:].copy().view(np.uint16).reshape(n, -1)
        np.testing.assert_array_equal(enc(w, d_bits), theirs.reshape(-1))
        # and their decoder reads bytes we wrote
        w2 = random_ternary(rng, n, k)
        d2 = F.random_fp16_bits(rng, (n, k // 256), hi=2.0)
        ours = enc(w2, d2).reshape(n, -1)
        np.testing.assert_array_equal(
            gguf.quants.dequantize(ours, qtype), F.dequantize(w2, F.fp16_to_f32(d2)).astype(np.float32)
        )


# ----------------------------------------------------------------------------------------------
# GGUF TQ2_0 and TQ1_0

TQ_SHAPES = [(1, 256), (7, 2560), (33, 512), (131, 256)]
TQ = {
    "tq2_0": (F.encode_tq2_0, F.decode_tq2_0, kernels.repack_tq2_0, F.TQ2_0_BYTES),
    "tq1_0": (F.encode_tq1_0, F.decode_tq1_0, kernels.repack_tq1_0, F.TQ1_0_BYTES),
}


@pytest.mark.parametrize("fmt", sorted(TQ))
@pytest.mark.parametrize("n,k", TQ_SHAPES)
def test_repack_tq(fmt, n, k):
    enc, dec, repack, _ = TQ[fmt]
    rng = make_rng(10, n, k, len(fmt), ord(fmt[1]))
    w = random_ternary(rng, n, k)
    d_bits = F.random_fp16_bits(rng, (n, k // 256))
    data = enc(w, d_bits)
    w_ref, d_ref = dec(data, n, k)
    np.testing.assert_array_equal(w_ref, w)
    np.testing.assert_array_equal(d_ref, F.fp16_to_f32(d_bits))
    for arg in (data, data.tobytes()):  # a 1-D uint8 array or bytes
        pw = repack(arg, n, k)
        check_packed(pw, "ternary", w_ref, d_ref, 256)
    check_matmul(pw, w_ref, d_ref, rng)
    if n > 64:  # several row tasks: the thread count must not change the result
        np.testing.assert_array_equal(np.asarray(repack(data, n, k, n_threads=1).codes), np.asarray(pw.codes))


@pytest.mark.parametrize("fmt", sorted(TQ))
@pytest.mark.parametrize("n,k", [(3, 256), (9, 2560)])
def test_repack_tq_from_gguf_writer(fmt, n, k):
    """Bytes written by gguf-py's own quantizer, read by tritlm and by gguf-py."""
    _, dec, repack, _ = TQ[fmt]
    qtype = getattr(gguf.GGMLQuantizationType, fmt.upper())
    rng = make_rng(11, n, k, ord(fmt[1]))
    x = (rng.standard_normal((n, k)) * rng.uniform(0.01, 5, size=(n, 1))).astype(np.float32)
    x[0, :256] = 0.0
    data = gguf.quants.quantize(x, qtype)
    pw = repack(data.reshape(-1), n, k)
    w_ref, d_ref = dec(data.reshape(-1), n, k)
    check_packed(pw, "ternary", w_ref, d_ref, 256)
    w, s = pw.unpack()
    np.testing.assert_array_equal(F.dequantize(w, s).astype(np.float32), gguf.quants.dequantize(data, qtype))
    check_matmul(pw, w_ref, d_ref, rng)


def test_tq2_0_golden_bytes():
    """One block written by hand from the TQ2_0 description."""
    blk = np.full(66, 0x55, dtype=np.uint8)  # every code 1: weight 0
    blk[0] = 0b00_01_10_00   # weights 0 (bits 1:0 = 0), 32 (bits 3:2 = 2), 64 (1), 96 (0)
    blk[32 + 5] = 0b10_01_01_01  # second half, m = 5: weight 128 + 5 + 96 = 229 -> code 2
    blk[64:66] = (0x00, 0x3C)  # fp16 1.0
    expected = np.zeros(256, dtype=np.int8)
    expected[[0, 96]] = -1
    expected[[32, 229]] = 1
    pw = kernels.repack_tq2_0(blk, 1, 256)
    w, s = pw.unpack()
    np.testing.assert_array_equal(w[0], expected)
    np.testing.assert_array_equal(s, [[1.0]])
    np.testing.assert_array_equal(F.decode_tq2_0(blk, 1, 256)[0][0], expected)


def test_tq1_0_golden_bytes():
    """One block written by hand from llama.cpp's fixed-point base-3 packing."""
    # all-zero weights are trits 1: five of them are 121 -> ceil(121 * 256 / 243) = 128; the qh
    # bytes hold four trits then a 0 trit: 120 -> ceil(120 * 256 / 243) = 127
    blk = np.array([128] * 48 + [127] * 4 + [0x00, 0xC0], dtype=np.uint8)  # d = fp16 -2.0
    # qs[0] holds weights 0, 32, 64, 96, 128 (most significant first): +1, -1, 0, 0, -1
    # -> trits 2, 0, 1, 1, 0 = 2*81 + 9 + 3 = 174 -> ceil(174 * 256 / 243) = 184
    blk[0] = 184
    # qs[32 + 3] holds weights 160 + 3 + 16 i: trit i = 4 (weight 227) is +1 -> 122 -> 129
    blk[35] = 129
    # qh[2] holds weights 240 + 2 + 4 i: trit i = 0 (weight 242) is -1 -> (0,1,1,1,0) = 39 -> 42
    blk[50] = 42
    expected = np.zeros(256, dtype=np.int8)
    expected[[32, 128, 242]] = -1
    expected[[0, 227]] = 1
    np.testing.assert_array_equal(F.encode_tq1_0(expected[None], np.array([[0xC000]], np.uint16)), blk)
    pw = kernels.repack_tq1_0(blk.tobytes(), 1, 256)
    w, s = pw.unpack()
    np.testing.assert_array_equal(w[0], expected)
    np.testing.assert_array_equal(s, [[-2.0]])


# ----------------------------------------------------------------------------------------------
# bitnet.cpp I2_S

I2S_SHAPES = [(1, 128), (7, 640), (33, 2560), (131, 128)]


@pytest.mark.parametrize("n,k", I2S_SHAPES)
def test_repack_i2_s(n, k):
    rng = make_rng(20, n, k)
    w = random_ternary(rng, n, k)
    scale = np.float32(rng.uniform(0.2, 3.0))
    data = F.encode_i2_s(w, scale, tail_fill=0xA5)  # the 28 bytes after the scale are not read
    assert data.size == n * k // 4 + 32
    w_ref, s_ref = F.decode_i2_s(data, n, k)
    np.testing.assert_array_equal(w_ref, w)
    for arg in (data, data.tobytes()):
        pw = kernels.repack_i2_s(arg, n, k)
        check_packed(pw, "ternary", w_ref, s_ref, k)  # per-tensor scale: one group per row
    check_matmul(pw, w_ref, s_ref, rng)
    viewed = kernels.repack_i2_s(data.copy(), n, k, in_place=True)  # only `viewed` holds the copy
    check_packed(viewed, "ternary", w_ref, s_ref, k)
    check_matmul(viewed, w_ref, s_ref, rng)


def test_i2_s_in_place_views_the_caller_memory():
    n, k = 4, 256
    data = F.encode_i2_s(np.ones((n, k), np.int8), 0.5)
    pw = kernels.repack_i2_s(data, n, k, in_place=True)
    assert np.shares_memory(pw.codes, data)
    assert pw.nbytes == n * k // 4 + 4 * n


def test_i2_s_golden_bytes():
    data = np.full(32 + 32, 0x55, dtype=np.uint8)  # all code 1: weight 0
    data[3] = 0b10_01_00_10   # weights 3 (bits 7:6 = 2 -> +1), 35 (0), 67 (-1), 99 (+1)
    data[32:36] = np.frombuffer(np.float32(0.25).tobytes(), np.uint8)
    data[36:] = 0xFF
    expected = np.zeros(128, dtype=np.int8)
    expected[[3, 99]] = 1
    expected[67] = -1
    w, s = kernels.repack_i2_s(data, 1, 128).unpack()
    np.testing.assert_array_equal(w[0], expected)
    np.testing.assert_array_equal(s, [[0.25]])


# ----------------------------------------------------------------------------------------------
# Hugging Face packed uint8 (microsoft/bitnet-b1.58-2B-4T)

HF_SHAPES = [(4, 128), (12, 640), (36, 2560), (260, 128)]


@pytest.mark.parametrize("n,k", HF_SHAPES)
def test_repack_hf_packed(n, k):
    rng = make_rng(30, n, k)
    w = random_ternary(rng, n, k)
    packed = F.encode_hf_packed(w)
    assert packed.shape == (n // 4, k)
    np.testing.assert_array_equal(F.decode_hf_packed(packed), w)
    weight_scale = float(np.float32(rng.uniform(0.5, 4.0)))
    pw = kernels.repack_hf_packed(packed, weight_scale)
    # transformers' BitLinear and llama.cpp's converter both divide by weight_scale (see
    # F.hf_weight_multiplier); allow one ulp for how 1 / weight_scale is rounded to f32.
    mult = F.hf_weight_multiplier(weight_scale)
    got_w, got_s = pw.unpack()
    np.testing.assert_array_equal(got_w, w)
    assert got_s.shape == (n, 1)
    np.testing.assert_allclose(got_s, np.full((n, 1), mult), rtol=2.0 ** -23, atol=0)
    check_packed(pw, "ternary", w, got_s, k)
    check_matmul(pw, w, np.full((n, 1), mult, dtype=np.float32), rng)


def test_hf_packed_autobitlinear_multiplies():
    w = random_ternary(make_rng(31), 8, 128)
    got_w, got_s = kernels.repack_hf_packed(F.encode_hf_packed(w), 0.25, linear_class="autobitlinear").unpack()
    np.testing.assert_array_equal(got_w, w)
    np.testing.assert_array_equal(got_s, np.full((8, 1), 0.25, dtype=np.float32))
    with pytest.raises(ValueError, match="linear_class must be 'bitlinear' or 'autobitlinear'"):
        kernels.repack_hf_packed(F.encode_hf_packed(w), 0.25, linear_class="linear")
    with pytest.raises(ValueError, match="weight_scale is 0"):
        kernels.repack_hf_packed(F.encode_hf_packed(w), 0.0)


def test_hf_packed_golden_bytes():
    packed = np.full((2, 128), 0x55, dtype=np.uint8)  # N = 8: packed row r holds rows r, 2+r, 4+r, 6+r
    packed[1, 7] = 0b10_00_01_10   # column 7 of rows 1 (+1), 3 (0), 5 (-1), 7 (+1)
    expected = np.zeros((8, 128), dtype=np.int8)
    expected[[1, 7], 7] = 1
    expected[5, 7] = -1
    w, _ = kernels.repack_hf_packed(packed, 1.0).unpack()
    np.testing.assert_array_equal(w, expected)


# ----------------------------------------------------------------------------------------------
# GGUF Q1_0

Q1_SHAPES = [(1, 128), (7, 640), (33, 2560), (131, 256)]


@pytest.mark.parametrize("n,k", Q1_SHAPES)
def test_repack_q1_0(n, k):
    rng = make_rng(40, n, k)
    w = random_binary(rng, n, k)
    d_bits = F.random_fp16_bits(rng, (n, k // 128))
    data = F.encode_q1_0(w, d_bits)
    assert data.size == n * k // 128 * 18
    w_ref, d_ref = F.decode_q1_0(data, n, k)
    np.testing.assert_array_equal(w_ref, w)
    for arg in (data, data.tobytes()):
        pw = kernels.repack_q1_0(arg, n, k)
        check_packed(pw, "binary", w_ref, d_ref, 128)
    check_matmul(pw, w_ref, d_ref, rng)


def test_q1_0_golden_bytes():
    blk = np.zeros(18, dtype=np.uint8)  # all bits 0: every weight -d
    blk[0:2] = (0x00, 0x38)  # fp16 0.5
    blk[2] = 0b0000_0101     # weights 0 and 2
    blk[17] = 0b1000_0000    # weight 127
    expected = np.full(128, -1, dtype=np.int8)
    expected[[0, 2, 127]] = 1
    pw = kernels.repack_q1_0(blk, 1, 128)
    w, s = pw.unpack()
    np.testing.assert_array_equal(w[0], expected)
    np.testing.assert_array_equal(s, [[0.5]])
    # run-time layout: one tile of 32 rows (31 padding); bit i of byte [j, row] is weight 8j + i
    codes = np.asarray(pw.codes)
    assert codes.shape == (1, 16, 32)
    assert codes[0, 0, 0] == 0b0000_0101  # weights 0 and 2
    assert codes[0, 15, 0] == 0b1000_0000  # weight 127
    assert codes[0, :, 1:].sum() == 0 and codes[0, 1:15, 0].sum() == 0


# ----------------------------------------------------------------------------------------------
# pack_ternary / pack_binary


@pytest.mark.parametrize("n,k", [(1, 128), (7, 640), (33, 2560)])
@pytest.mark.parametrize("form", ["tensor", "row", "group"])
@pytest.mark.parametrize("fmt", ["ternary", "binary"])
def test_pack_round_trip(fmt, form, n, k):
    rng = make_rng(50, n, k, len(fmt), len(form))
    w = random_ternary(rng, n, k) if fmt == "ternary" else random_binary(rng, n, k)
    pack = kernels.pack_ternary if fmt == "ternary" else kernels.pack_binary
    if form == "tensor":
        scale = float(np.float32(rng.uniform(0.1, 2.0)))
        pw = pack(w, scale)
        group_size, scales = k, np.full((n, 1), scale, dtype=np.float32)
    elif form == "row":
        scales = rng.uniform(0.1, 2.0, size=(n, 1)).astype(np.float32)
        pw = pack(w, scales[:, 0])
        group_size = k
    else:
        group_size = 128
        scales = rng.uniform(-2.0, 2.0, size=(n, k // group_size)).astype(np.float32)
        pw = pack(w, scales, group_size=group_size)
    check_packed(pw, fmt, w, scales, group_size)
    check_matmul(pw, w, F.runtime_scales(fmt, scales), rng)


@pytest.mark.parametrize("group_size", [256, 512, 1280])
def test_pack_group_sizes(group_size):
    n, k = 5, 2560
    rng = make_rng(51, group_size)
    w = random_ternary(rng, n, k)
    scales = rng.uniform(0.1, 2.0, size=(n, k // group_size)).astype(np.float32)
    pw = kernels.pack_ternary(w, scales, group_size=group_size)
    check_packed(pw, "ternary", w, scales, group_size)
    check_matmul(pw, w, scales, rng)


def test_pack_extreme_rows():
    """All -1, all 0, all +1 rows and the largest activations: the code offsets at their limits."""
    k = 256
    w = np.stack([np.full(k, -1), np.zeros(k), np.ones(k), np.tile([1, -1], k // 2)]).astype(np.int8)
    pw = kernels.pack_ternary(w, 1.0)
    check_packed(pw, "ternary", w, np.ones((4, 1), np.float32), k)
    x = np.stack([np.full(k, 5.0), np.full(k, -5.0), np.tile([5.0, -5.0], k // 2)]).astype(np.float32)
    a = kernels.quantize_activations(x)
    ref, _ = F.reference_matmul(w, np.ones((4, 1)), np.asarray(a.q), np.asarray(a.scale))
    for isa in ISAS:
        np.testing.assert_allclose(np.asarray(kernels.matmul(pw, a, isa=isa)), ref, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------------------------
# activations


def check_activations(x: np.ndarray) -> None:
    q_ref, s_ref, sums_ref = F.quantize_activations(x)
    for isa in ISAS:
        a = kernels.quantize_activations(x, isa=isa)
        q, s, sums = np.asarray(a.q), np.asarray(a.scale), np.asarray(a.block_sums)
        assert q.dtype == np.int8 and q.shape == x.shape, isa
        assert s.dtype == np.float32 and s.shape == (x.shape[0],), isa
        assert sums.dtype == np.int32 and sums.shape == (x.shape[0], x.shape[1] // 128), isa
        np.testing.assert_array_equal(q, q_ref, err_msg=isa)
        np.testing.assert_array_equal(s.view(np.uint32), s_ref.view(np.uint32), err_msg=isa)
        np.testing.assert_array_equal(sums, sums_ref, err_msg=isa)


@pytest.mark.parametrize("b,k", [(1, 128), (5, 640), (17, 2560)])
def test_quantize_activations_random(b, k):
    check_activations(random_activations(make_rng(60, b, k), b, k))


def test_quantize_activations_ties():
    k = 128
    x = np.zeros((3, k), dtype=np.float32)
    halves = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 125.5, 126.5, -126.5], dtype=np.float32)
    x[0, 0] = 127.0  # amax 127: s = 1, x * s = x exactly
    x[0, 1:1 + halves.size] = halves
    x[1, 0] = -254.0  # amax 254: s = 0.5, odd integers land on ties
    x[1, 1:12] = [1, 3, 5, 7, -1, -3, -5, -7, 251, 253, -253]
    x[2] = np.linspace(-127, 127, k, dtype=np.float32)
    q_ref, s_ref, _ = F.quantize_activations(x)
    assert s_ref[0] == 1.0 and s_ref[1] == 0.5
    np.testing.assert_array_equal(q_ref[0, 1:1 + halves.size], [0, 2, 2, 4, 0, -2, -2, -4, 126, 126, -126])
    np.testing.assert_array_equal(q_ref[1, 1:12], [0, 2, 2, 4, 0, -2, -2, -4, 126, 126, -126])
    check_activations(x)


def test_quantize_activations_tiny_amax():
    k = 256
    x = np.zeros((6, k), dtype=np.float32)
    rng = make_rng(61)
    x[1] = rng.uniform(-1e-6, 1e-6, k)           # amax below 1e-5: s = 127 / 1e-5
    x[2] = rng.uniform(-1e-5, 1e-5, k)
    x[2, 7] = np.float32(1e-5)                    # amax exactly the floor
    x[3] = rng.uniform(-2e-5, 2e-5, k)            # just above the floor
    x[4, ::3] = np.float32(1e-40)                 # subnormal inputs
    x[5] = rng.standard_normal(k) * np.float32(1e30)  # huge: s tiny
    q_ref, s_ref, _ = F.quantize_activations(x)
    assert s_ref[0] == np.float32(127.0) / np.float32(1e-5)
    assert s_ref[1] == s_ref[0]
    check_activations(x)


def test_quantize_activations_rejects_non_finite():
    x = np.ones((2, 128), dtype=np.float32)
    x[1, 5] = np.nan
    with pytest.raises(ValueError):
        kernels.quantize_activations(x)
    x[1, 5] = np.inf
    with pytest.raises(ValueError):
        kernels.quantize_activations(x)


def test_quantize_activations_rejects_bad_k():
    with pytest.raises(ValueError, match="K|k|128"):
        kernels.quantize_activations(np.ones((2, 100), dtype=np.float32))


# ----------------------------------------------------------------------------------------------
# bad input: every repack checks sizes, block multiples and code values

LENGTH = r"(?i)length|size|bytes"


@pytest.mark.parametrize("fmt", sorted(TQ))
def test_tq_bad_input(fmt):
    enc, _, repack, block_bytes = TQ[fmt]
    n, k = 3, 512
    data = enc(np.zeros((n, k), np.int8), np.full((n, k // 256), 0x3C00, np.uint16))
    for bad in (data[:-1], np.concatenate([data, data[:1]]), data[:-block_bytes], np.zeros(0, np.uint8)):
        with pytest.raises(ValueError, match=LENGTH):
            repack(bad, n, k)
    with pytest.raises(ValueError, match=LENGTH):
        repack(data, n + 1, k)
    with pytest.raises(ValueError, match="k"):
        repack(data[: n * block_bytes], n, 128)  # a multiple of 128 but not of 256
    with pytest.raises(ValueError, match="k"):
        repack(data, n, 0)
    with pytest.raises(ValueError, match="n"):
        repack(data, 0, k)


def test_tq2_0_invalid_code():
    n, k = 2, 256
    data = F.encode_tq2_0(np.zeros((n, k), np.int8), np.full((n, 1), 0x3C00, np.uint16))
    data[66 + 17] |= 0b11 << 4  # row 1 (one 66-byte block a row), weight 17 + 64: code 3
    with pytest.raises(ValueError, match=r"(?i)code|3|invalid"):
        kernels.repack_tq2_0(data, n, k)


def test_i2_s_bad_input():
    n, k = 3, 640
    data = F.encode_i2_s(np.zeros((n, k), np.int8), 1.0)
    for bad in (data[:-1], data[: n * k // 4], data[: n * k // 4 + 4], np.concatenate([data, data[:1]])):
        with pytest.raises(ValueError, match=LENGTH):
            kernels.repack_i2_s(bad, n, k)
    with pytest.raises(ValueError, match="k"):
        kernels.repack_i2_s(F.encode_i2_s(np.zeros((2, 128), np.int8), 1.0)[: 2 * 64 // 4 + 32], 2, 64)
    bad = data.copy()
    bad[100] = 0xFF  # four code-3 fields
    with pytest.raises(ValueError, match=r"(?i)code|3|invalid"):
        kernels.repack_i2_s(bad, n, k)
    bad = data.copy()
    bad[160 + 37] = 0b00_11_00_00  # row 1, byte 37 = block 1, j 5: field 1 -> column 128 + 32 + 5
    with pytest.raises(ValueError, match="i2_s: row 1: invalid 2-bit code 3 at column 165"):
        kernels.repack_i2_s(bad, n, k, in_place=True)
    with pytest.raises(ValueError, match="i2_s: row 1: invalid 2-bit code 3 at column 165"):
        kernels.repack_i2_s(bad, n, k)
    nan = data.copy()
    nan[n * k // 4 : n * k // 4 + 4] = np.frombuffer(np.float32(np.nan).tobytes(), np.uint8)
    with pytest.raises(ValueError, match="not finite"):
        kernels.repack_i2_s(nan, n, k, in_place=True)


def test_q1_0_bad_input():
    n, k = 3, 256
    data = F.encode_q1_0(np.ones((n, k), np.int8), np.full((n, 2), 0x3C00, np.uint16))
    for bad in (data[:-1], data[:-18], np.concatenate([data, data[:1]])):
        with pytest.raises(ValueError, match=LENGTH):
            kernels.repack_q1_0(bad, n, k)
    with pytest.raises(ValueError, match="k"):
        kernels.repack_q1_0(np.zeros(n * 9, np.uint8), n, 64)


def test_hf_packed_bad_input():
    good = F.encode_hf_packed(np.zeros((8, 128), np.int8))
    with pytest.raises(ValueError, match="k|128"):
        kernels.repack_hf_packed(np.full((2, 64), 0x55, np.uint8), 1.0)
    bad = good.copy()
    bad[1, 9] = 0b11 << 6
    with pytest.raises(ValueError, match=r"(?i)code|3|invalid"):
        kernels.repack_hf_packed(bad, 1.0)
    with pytest.raises((TypeError, ValueError), match="packed|dtype|uint8"):
        kernels.repack_hf_packed(good.astype(np.int8), 1.0)
    with pytest.raises(ValueError, match="packed|dimension"):
        kernels.repack_hf_packed(good.reshape(-1), 1.0)
    with pytest.raises(ValueError, match="weight_scale"):
        kernels.repack_hf_packed(good, float("nan"))


def test_pack_bad_input():
    w = np.zeros((4, 256), np.int8)
    bad = w.copy()
    bad[2, 9] = 2
    with pytest.raises(ValueError, match=r"value|-1"):
        kernels.pack_ternary(bad, 1.0)
    with pytest.raises(ValueError, match=r"value|-1"):
        kernels.pack_binary(w, 1.0)  # 0 is not a binary weight
    with pytest.raises(ValueError, match="k|128"):
        kernels.pack_ternary(np.zeros((4, 100), np.int8), 1.0)
    with pytest.raises(ValueError, match="group"):
        kernels.pack_ternary(w, np.ones((4, 4), np.float32), group_size=64)
    with pytest.raises(ValueError, match="scale"):
        kernels.pack_ternary(w, np.ones(3, np.float32))
    with pytest.raises((TypeError, ValueError), match="w|int8|dtype"):
        kernels.pack_ternary(w.astype(np.float32), 1.0)


def test_pack_binary_scale_range():
    """The binary format stores binary16 scales: a scale that would overflow to infinity or
    flush to zero is refused, naming the group; binary16's extremes are kept exactly."""
    w = np.ones((2, 256), np.int8)
    for scale in (70000.0, -1e9, 1e-9):
        with pytest.raises(ValueError, match=r"row 0: scale of group 0 .*binary16"):
            kernels.pack_binary(w, scale)
    scales = np.array([[65504.0, 2.0 ** -24], [-6.1e-5, 0.0]], np.float32)  # max, least subnormal
    got = kernels.pack_binary(w, scales, group_size=128).scales
    np.testing.assert_array_equal(got, F.runtime_scales("binary", scales))
    assert got[0, 1] == 2.0 ** -24 and got[1, 1] == 0.0
    kernels.pack_ternary(w, 1e9)  # f32 scales: no such limit
