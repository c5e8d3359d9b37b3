"""Every SIMD kernel equals the scalar specification bit for bit, and the specification equals
the dequantized math in float64. Run on whatever ISAs this CPU has (the NEON ones are covered under
qemu by test_neon_qemu.py)."""

from __future__ import annotations

import formats as F  # tests/formats.py
import numpy as np
import pytest

from tritlm import kernels

SIMD = [isa for isa in kernels.available_isas() if isa != "scalar"]
FORMATS = ["ternary", "binary"]


def random_weights(rng: np.random.Generator, fmt: str, n: int, k: int) -> np.ndarray:
    if fmt == "ternary":
        return rng.integers(-1, 2, size=(n, k), dtype=np.int8)
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=(n, k))


def pack(fmt: str, w: np.ndarray, scale: np.ndarray | float, group_size: int | None = None) -> kernels.PackedWeights:
    fn = kernels.pack_ternary if fmt == "ternary" else kernels.pack_binary
    return fn(w, scale, group_size=group_size)


def reference(w: np.ndarray, scales: np.ndarray, a: kernels.QuantizedActivations) -> tuple[np.ndarray, np.ndarray]:
    """y = sum_g scale_g * (W_g q_g) / s in float64 with exact integer dot products, and the sum of
    |terms| per output (the scale of the f32 rounding error when groups are added)."""
    n, k = w.shape
    groups = scales.shape[1]
    qg = a.q.astype(np.int64).reshape(a.rows, groups, k // groups)
    wg = w.astype(np.int64).reshape(n, groups, k // groups)
    dots = np.einsum("bgk,ngk->bng", qg, wg).astype(np.float64)  # exact integers
    terms = dots * scales.astype(np.float64)[None, :, :] / a.scale.astype(np.float64)[:, None, None]
    return terms.sum(axis=2), np.abs(terms).sum(axis=2)


def assert_bits_equal(got: np.ndarray, want: np.ndarray, what: str) -> None:
    diff = got.view(np.uint32) != want.view(np.uint32)
    if diff.any():
        idx = np.argwhere(diff)[0]
        raise AssertionError(f"{what}: {diff.sum()} of {diff.size} differ, first at {tuple(idx)}: "
                             f"{got[tuple(idx)]!r} != {want[tuple(idx)]!r}")


SHAPES = [  # (batch, n, k)
    (1, 1, 128), (1, 33, 256), (3, 7, 640), (17, 64, 384), (64, 31, 1024), (512, 9, 256), (5, 640, 2560),
    (1, 2560, 640), (2, 17, 6912),
    (1, 130, 384), (2, 200, 256),  # binary decode: chunks of several 32-row tiles, the last one partial
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("batch,n,k", SHAPES)
@pytest.mark.parametrize("grouping", ["tensor", "row", "block"])
def test_simd_equals_scalar_and_float64(fmt: str, batch: int, n: int, k: int, grouping: str) -> None:
    rng = np.random.default_rng(batch * 1_000_003 + n * 1009 + k)
    w = random_weights(rng, fmt, n, k)
    if grouping == "tensor":
        scale: float | np.ndarray = 0.0371
        scales = np.full((n, 1), 0.0371, dtype=np.float32)
        packed = pack(fmt, w, scale)
    elif grouping == "row":
        scales = rng.uniform(0.01, 2.0, size=(n, 1)).astype(np.float32)
        packed = pack(fmt, w, scales[:, 0])
    else:  # one scale per 128 (binary, like Q1_0) or per 256 (ternary, like TQ2_0) where k allows
        group = 256 if fmt == "ternary" and k % 256 == 0 else 128
        scales = rng.uniform(-1.5, 1.5, size=(n, k // group)).astype(np.float32)
        packed = pack(fmt, w, scales, group_size=group)
    x = (rng.standard_normal((batch, k)) * rng.uniform(0.01, 100, size=(batch, 1))).astype(np.float32)
    a = kernels.quantize_activations(x, isa="scalar")
    y_scalar = kernels.matmul(packed, a, isa="scalar")
    for isa in SIMD:
        assert_bits_equal(kernels.quantize_activations(x, isa=isa).q, a.q, f"{isa} quantize")
        assert_bits_equal(kernels.matmul(packed, a, isa=isa), y_scalar, f"{isa} matmul")
        assert_bits_equal(kernels.matmul(packed, a, isa=isa, n_threads=2), y_scalar, f"{isa} matmul 2 threads")
    ref, magnitude = reference(w, F.runtime_scales(fmt, scales), a)
    if grouping == "block":
        # Group partial sums are added in f32, so the error scales with the terms, not the result.
        np.testing.assert_array_less(np.abs(y_scalar - ref), 1e-5 * magnitude + 1e-30)
    else:
        np.testing.assert_allclose(y_scalar, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("n_threads", [3, 8, 16])
@pytest.mark.parametrize("batch,n", [(1, 33), (1, 2500), (4, 1000)])
def test_rows_split_over_threads_exactly(fmt: str, n_threads: int, batch: int, n: int) -> None:
    """Each thread streams a span of rows and takes halves of others' when it runs out: with more
    threads than cores, some spans are only ever taken, and with more threads than 32-row tiles
    there are fewer spans than threads. Every row must still be computed once, as the scalar kernel computes it."""
    rng = np.random.default_rng(n_threads * 7919 + n)
    k = 512
    packed = pack(fmt, random_weights(rng, fmt, n, k), rng.uniform(0.5, 1.5, size=(n, k // 128)).astype(np.float32),
                  group_size=128)
    a = kernels.quantize_activations(rng.standard_normal((batch, k)).astype(np.float32), isa="scalar")
    y_scalar = kernels.matmul(packed, a, isa="scalar")
    for isa in SIMD:
        assert_bits_equal(kernels.matmul(packed, a, isa=isa, n_threads=n_threads), y_scalar, f"{isa}, {n_threads} threads")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("k", [6912, 16384])
@pytest.mark.parametrize("value", [127, -128])
def test_no_int16_overflow_at_extremes(fmt: str, k: int, value: int) -> None:
    """All-(+1) weights against all-127 / all-(-128) activations: the largest sums a kernel can see."""
    packed = pack(fmt, np.ones((3, k), dtype=np.int8), 1.0)
    # The quantizer never emits -128 itself (|q| <= 127), so build the activations from raw int8.
    a = kernels.activations_from_int8(np.full((2, k), value, dtype=np.int8), np.float32(0.5))
    expected = np.float32(value * k) / np.float32(0.5)
    for isa in kernels.available_isas():
        y = kernels.matmul(packed, a, isa=isa)
        np.testing.assert_array_equal(y, np.broadcast_to(expected, y.shape), err_msg=isa)


def test_quantize_rounds_half_to_even_and_clamps() -> None:
    # amax = 127 gives s = 1 exactly, so x*s = x and ties are exact.
    row = np.zeros(128, dtype=np.float32)
    row[:6] = [127.0, 0.5, 1.5, 2.5, -0.5, -2.5]
    a = kernels.quantize_activations(row[None, :])
    assert a.scale[0] == 1.0
    assert list(a.q[0, :6]) == [127, 0, 2, 2, 0, -2]
    assert a.block_sums[0, 0] == 127 + 2 + 2 - 2


def test_quantize_tiny_rows_use_floor() -> None:
    x = np.full((1, 256), 1e-7, dtype=np.float32)
    a = kernels.quantize_activations(x)
    assert a.scale[0] == np.float32(127) / np.float32(1e-5)
    for isa in SIMD:
        assert_bits_equal(kernels.quantize_activations(x, isa=isa).q, a.q, isa)


@pytest.mark.parametrize("isa", kernels.available_isas())
def test_quantize_matches_numpy(isa: str) -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((9, 640)) * 3).astype(np.float32)
    x[2] = 0.0
    a = kernels.quantize_activations(x, isa=isa)
    amax = np.abs(x).max(axis=1)
    s = np.float32(127) / np.maximum(amax, np.float32(1e-5))
    q = np.clip(np.rint(x * s[:, None]), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(a.scale, s)
    np.testing.assert_array_equal(a.q, q)
    np.testing.assert_array_equal(a.block_sums, q.astype(np.int32).reshape(9, 5, 128).sum(axis=2))


def test_binary_activation_slabs() -> None:
    """More activation rows than one set of lookup tables holds (32 MiB, 256 rows at K = 16384):
    the rows go in slabs, and every slab's outputs land in their own rows."""
    rng = np.random.default_rng(11)
    n, k, batch = 40, 16384, 300
    w = random_weights(rng, "binary", n, k)
    scales = rng.uniform(-1.5, 1.5, size=(n, k // 128)).astype(np.float32)
    packed = pack("binary", w, scales, group_size=128)
    x = rng.standard_normal((batch, k)).astype(np.float32)
    a = kernels.quantize_activations(x, isa="scalar")
    y_scalar = kernels.matmul(packed, a, isa="scalar")
    for isa in SIMD:
        assert_bits_equal(kernels.matmul(packed, a, isa=isa, n_threads=2), y_scalar, f"{isa} matmul")


def test_binary_tables_per_thread_and_shared() -> None:
    """Up to 256 KiB of lookup tables (a few activation rows), every thread builds its own into a
    buffer it keeps and regrows; beyond that, one shared set is built per slab. Growing,
    shrinking and large tables in turn, on 1-3 threads, must each give the scalar result."""
    rng = np.random.default_rng(12)
    for k, batch in [(512, 1), (6144, 1), (512, 3), (6144, 40), (2048, 1), (4096, 300), (6144, 5), (512, 1)]:
        n = 64
        packed = pack("binary", random_weights(rng, "binary", n, k),
                      rng.uniform(-1.5, 1.5, size=(n, k // 128)).astype(np.float32), group_size=128)
        a = kernels.quantize_activations(rng.standard_normal((batch, k)).astype(np.float32), isa="scalar")
        y_scalar = kernels.matmul(packed, a, isa="scalar")
        for isa in SIMD:
            for n_threads in (1, 2, 3):
                assert_bits_equal(kernels.matmul(packed, a, isa=isa, n_threads=n_threads), y_scalar,
                                  f"{isa}, k {k}, batch {batch}, {n_threads} threads")
