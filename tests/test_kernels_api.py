"""The kernel layer's contract with callers: bad input is refused with a message naming the
argument, dispatch can be forced and is reported, threads are honoured and the GIL is released."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import formats as F  # tests/formats.py
import tritlm
from tritlm import kernels


@pytest.fixture(scope="module")
def packed() -> kernels.PackedWeights:
    rng = np.random.default_rng(1)
    return kernels.pack_ternary(rng.integers(-1, 2, size=(64, 256), dtype=np.int8), 0.5)


def acts(k: int = 256, rows: int = 2) -> kernels.QuantizedActivations:
    return kernels.quantize_activations(np.ones((rows, k), dtype=np.float32))


@pytest.mark.parametrize(
    "x, exc, match",
    [
        (np.ones((2, 256), dtype=np.float64), TypeError, "x must have dtype float32, got float64"),
        (np.ones((2, 256), dtype=np.int8), TypeError, "x must have dtype float32"),
        (np.ones(256, dtype=np.float32), ValueError, "x must have 2 dimensions"),
        (np.ones((2, 512), dtype=np.float32)[:, ::2], ValueError, "x must be C-contiguous"),
        (np.ones((2, 200), dtype=np.float32), ValueError, "multiple of 128"),
        (np.ones((0, 256), dtype=np.float32), ValueError, "at least one row"),
        ([[1.0] * 256], TypeError, "x must be a numpy array"),
    ],
)
def test_bad_activations(x: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        kernels.quantize_activations(x)  # type: ignore[arg-type]


def test_non_finite_activations_name_the_row() -> None:
    x = np.ones((3, 128), dtype=np.float32)
    x[1, 5] = np.nan
    for isa in kernels.available_isas():
        with pytest.raises(ValueError, match="row 1 holds a NaN or an infinity"):
            kernels.quantize_activations(x, isa=isa)
    x[1, 5] = np.inf
    with pytest.raises(ValueError, match="row 1"):
        kernels.quantize_activations(x)


def test_unaligned_arrays_are_refused(packed: kernels.PackedWeights) -> None:
    """The kernels read a float32 (int32) array's elements as such: one not aligned for them was
    read anyway, undefined behaviour that UndefinedBehaviorSanitizer stopped at ("load of
    misaligned address ... for type 'const float'", scalar.cpp's quantize_row). Refused instead,
    naming the argument, as a non-contiguous array is."""
    x = F.unaligned(np.ones((2, 256), np.float32))
    for isa in kernels.available_isas():
        with pytest.raises(ValueError, match="x is not aligned to its 4-byte elements"):
            kernels.quantize_activations(x, isa=isa)
        with pytest.raises(ValueError, match="x is not aligned"):
            kernels.linear(packed, x, isa=isa)
        with pytest.raises(ValueError, match="x is not aligned"):
            kernels.to_float16(F.unaligned(np.ones(32, np.float32)), isa=isa)
    with pytest.raises(ValueError, match="scale is not aligned"):
        kernels.activations_from_int8(np.ones((2, 128), np.int8), F.unaligned(np.ones(2, np.float32)))
    with pytest.raises(ValueError, match="scale is not aligned"):
        kernels.pack_ternary(np.ones((2, 128), np.int8), F.unaligned(np.ones((2, 1), np.float32)))
    # an aligned copy of the same values goes through
    assert np.array_equal(kernels.linear(packed, np.array(x)), kernels.linear(packed, np.ones((2, 256), np.float32)))


def test_mismatched_k(packed: kernels.PackedWeights) -> None:
    with pytest.raises(ValueError, match="K = 384 but the weights expect K = 256"):
        kernels.matmul(packed, acts(384))
    with pytest.raises(ValueError, match="K = 128 but the weights expect K = 256"):
        kernels.linear(packed, np.ones((1, 128), dtype=np.float32))


@pytest.mark.parametrize("n_threads", [0, -1, 100_000])
def test_bad_thread_counts(packed: kernels.PackedWeights, n_threads: int) -> None:
    with pytest.raises(ValueError, match="n_threads must be between 1 and"):
        kernels.matmul(packed, acts(), n_threads=n_threads)
    with pytest.raises(ValueError, match="n must be between 1 and"):
        tritlm.set_num_threads(n_threads)


def test_unknown_isa(packed: kernels.PackedWeights) -> None:
    with pytest.raises(ValueError, match="kernel ISA 'avx9' is not available.*choose one of: scalar"):
        kernels.matmul(packed, acts(), isa="avx9")


@pytest.mark.parametrize(
    "w, scale, match",
    [
        (np.full((4, 256), 2, dtype=np.int8), 1.0, "value 2 at column 0 is not -1, 0 or 1"),
        (np.ones((4, 256), dtype=np.int16), 1.0, "w must have dtype int8, got int16"),
        (np.ones((4, 200), dtype=np.int8), 1.0, r"w.shape\[1\] \(K\) must be a positive multiple of 128"),
        (np.ones((4, 256), dtype=np.int8), np.ones(3), r"scale must be a number, shape \(4,\)"),
        (np.ones((4, 256), dtype=np.int8), np.ones((4, 3)), "scale has shape"),
        (np.ones((4, 256), dtype=np.int8), np.nan, "scale of group 0 is not finite"),
        (np.ones((4, 512), dtype=np.int8)[:, ::2], 1.0, "w must be C-contiguous"),
    ],
)
def test_bad_ternary_weights(w: np.ndarray, scale: object, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        kernels.pack_ternary(w, scale)  # type: ignore[arg-type]


def test_binary_rejects_zero() -> None:
    w = np.ones((2, 128), dtype=np.int8)
    w[1, 7] = 0
    with pytest.raises(ValueError, match="row 1: value 0 at column 7 is not -1 or 1"):
        kernels.pack_binary(w, 1.0)


def test_bad_group_size() -> None:
    with pytest.raises(ValueError, match="group_size must be a positive multiple of 128"):
        kernels.pack_ternary(np.ones((2, 256), dtype=np.int8), np.ones((2, 3)), group_size=100)


def test_system_info_reports_dispatch() -> None:
    info = tritlm.system_info()
    assert info["isa"] == kernels.available_isas()[-1]
    assert info["available_isas"][0] == "scalar"
    assert info["threads"] >= 1 and info["physical_cores"] >= 1
    assert isinstance(info["features"], list)
    if "avx2" in info["features"] and "fma" in info["features"]:
        assert "avx2" in info["available_isas"]


def _run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def test_environment_forces_scalar() -> None:
    r = _run_python("import tritlm; print(tritlm.system_info()['isa'])", TRITLM_KERNELS="scalar")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "scalar"


def test_environment_rejects_unknown_isa() -> None:
    r = _run_python("import tritlm", TRITLM_KERNELS="sse9")
    assert r.returncode != 0
    assert "ConfigurationError" in r.stderr and "TRITLM_KERNELS='sse9'" in r.stderr and "scalar" in r.stderr


def test_set_num_threads_round_trip() -> None:
    before = tritlm.get_num_threads()
    try:
        tritlm.set_num_threads(1)
        assert tritlm.get_num_threads() == 1
    finally:
        tritlm.set_num_threads(before)


def test_threads_give_identical_results() -> None:
    rng = np.random.default_rng(3)
    w = kernels.pack_ternary(rng.integers(-1, 2, size=(1000, 1024), dtype=np.int8), 0.1)
    x = rng.standard_normal((20, 1024), dtype=np.float32)
    base = kernels.linear(w, x, n_threads=1)
    for n in (2, 3, 8):
        np.testing.assert_array_equal(kernels.linear(w, x, n_threads=n), base)


def test_gil_is_released_during_matmul() -> None:
    """A Python thread keeps running while another thread sits in a long scalar matmul."""
    rng = np.random.default_rng(4)
    w = kernels.pack_ternary(rng.integers(-1, 2, size=(2048, 2048), dtype=np.int8), 0.1)
    a = kernels.quantize_activations(rng.standard_normal((8, 2048), dtype=np.float32))
    ticks = 0
    done = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            time.sleep(0.001)

    t = threading.Thread(target=count)
    t.start()
    start = time.perf_counter()
    kernels.matmul(w, a, isa="scalar", n_threads=1)
    elapsed = time.perf_counter() - start
    done.set()
    t.join()
    # With the GIL held the counter could not advance at all during the call.
    assert elapsed > 0.05
    assert ticks >= 5


def test_concurrent_callers_share_the_pool() -> None:
    rng = np.random.default_rng(5)
    w = kernels.pack_ternary(rng.integers(-1, 2, size=(300, 512), dtype=np.int8), 0.3)
    xs = [rng.standard_normal((3, 512), dtype=np.float32) for _ in range(6)]
    expected = [kernels.linear(w, x, n_threads=1) for x in xs]
    results: list[np.ndarray | None] = [None] * len(xs)

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = kernels.linear(w, xs[i], n_threads=2)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


def test_views_are_read_only_and_keep_owner_alive(packed: kernels.PackedWeights) -> None:
    codes = kernels.pack_ternary(np.ones((3, 128), dtype=np.int8), 1.0).codes
    assert codes.shape == (3, 32) and not codes.flags.writeable
    assert (codes == 0b10101010).all()  # +1 is code 2 in every field, owner already dropped
    assert packed.scales.shape == (64, 1) and packed.group_size == 256
    assert packed.nbytes == 64 * 256 // 4 + 64 * 4


def test_pool_survives_changing_thread_counts_and_busy_cores() -> None:
    """Jobs of different widths back to back, while other Python threads also submit jobs and a
    busy thread competes for the cores: every result stays exact and nothing stalls."""
    rng = np.random.default_rng(6)
    w = kernels.pack_ternary(rng.integers(-1, 2, size=(96, 256), dtype=np.int8), 0.2)
    x = rng.standard_normal((2, 256), dtype=np.float32)
    want = kernels.linear(w, x, n_threads=1)
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            sum(range(1000))

    mismatches: list[int] = []

    def submit(widths: list[int]) -> None:
        for i in range(300):
            if not np.array_equal(kernels.linear(w, x, n_threads=widths[i % len(widths)]), want):
                mismatches.append(i)

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        callers = [threading.Thread(target=submit, args=(ws,)) for ws in ([4, 2, 3, 1], [2, 5, 1])]
        start = time.perf_counter()
        for t in callers:
            t.start()
        for t in callers:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in callers)
        assert time.perf_counter() - start < 60
        assert mismatches == []
    finally:
        stop.set()
        spinner.join()


@pytest.mark.parametrize("weight_scale, linear_class, match", [
    (1e-45, "bitlinear", r"1 / weight_scale \(weight_scale = 1.4013e-45\) overflows float32"),
    (float("inf"), "bitlinear", "weight_scale is inf; it must be a positive finite number"),
    (float("inf"), "autobitlinear", "weight_scale is inf"),  # once silently all-zero weights
    (float("nan"), "autobitlinear", "weight_scale is nan"),
    (0.0, "bitlinear", "weight_scale is 0; it must be a positive finite number"),
    (-0.5, "autobitlinear", "weight_scale is -0.5"),
    (np.ones(2), "bitlinear", r"weight_scale must hold one value, got shape \(2,\)"),
    (1.0, "linear", "linear_class must be 'bitlinear' or 'autobitlinear'"),
])
def test_hf_weight_scale_is_checked(weight_scale: object, linear_class: str, match: str) -> None:
    packed = np.full((2, 128), 0x55, dtype=np.uint8)  # every code 1: weight 0
    with pytest.raises(ValueError, match=match):
        kernels.repack_hf_packed(packed, weight_scale, linear_class=linear_class)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        kernels.hf_weight_multiplier(weight_scale, linear_class)  # type: ignore[arg-type]


def test_hf_weight_multiplier_by_linear_class() -> None:
    assert kernels.hf_weight_multiplier(4.0) == np.float32(0.25)
    assert kernels.hf_weight_multiplier(4.0, "autobitlinear") == np.float32(4.0)
    assert kernels.hf_weight_multiplier(1e-38) == np.float32(1) / np.float32(1e-38)  # finite: kept
    # an np.float32 as declared, for either class: autobitlinear's was a 0-d array (found by mypy)
    for linear_class in ("bitlinear", "autobitlinear"):
        assert type(kernels.hf_weight_multiplier(np.array([4.0]), linear_class)) is np.float32
