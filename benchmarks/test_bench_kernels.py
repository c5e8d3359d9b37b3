"""pytest-benchmark versions of the kernel figures (``pytest benchmarks/``).

Why: ``python -m tritlm.bench kernels`` prints one table for humans; these give the same
matmul / quantize timings in pytest-benchmark's format so runs can be saved and compared
(``--benchmark-autosave``, ``--benchmark-compare``). They only measure: a slow machine is
not a failure, so nothing here asserts on speed.
"""

from __future__ import annotations

import numpy as np
import pytest

kernels = pytest.importorskip("tritlm.kernels")

# (K, N) of the BitNet b1.58 2B4T linear layers, in -> out.
SHAPES = [(2560, 2560), (2560, 640), (2560, 6912), (6912, 2560)]
SHAPE_IDS = [f"{k}->{n}" for k, n in SHAPES]
BATCHES = [1, 128]


@pytest.fixture(scope="module")
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def packed(rng: np.random.Generator) -> dict[tuple[int, int], object]:
    """One packed random ternary matrix per shape, built once for the module (packing is not
    what is being measured)."""
    return {
        (k, n): kernels.pack_ternary(rng.integers(-1, 2, size=(n, k), dtype=np.int8), 0.02) for k, n in SHAPES
    }


@pytest.mark.parametrize("batch", BATCHES, ids=[f"B{b}" for b in BATCHES])
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_matmul_ternary(benchmark, packed, rng, shape: tuple[int, int], batch: int) -> None:
    """One ternary matmul call at the dispatched ISA and default thread count."""
    k, n = shape
    w = packed[shape]
    a = kernels.quantize_activations(rng.standard_normal((batch, k), dtype=np.float32))
    benchmark.group = f"matmul {k}->{n}"
    benchmark.extra_info.update(k=k, n=n, batch=batch, macs=batch * n * k)
    y = benchmark(kernels.matmul, w, a)
    assert np.shape(y) == (batch, n)  # a correctness guard, not a speed one
    if benchmark.stats is not None:  # None under --benchmark-disable
        best = benchmark.stats.stats.min
        benchmark.extra_info["gmacs_best"] = batch * n * k / best / 1e9


@pytest.mark.parametrize("batch", BATCHES, ids=[f"B{b}" for b in BATCHES])
@pytest.mark.parametrize("k", [2560, 6912])
def test_quantize_activations(benchmark, rng, k: int, batch: int) -> None:
    """Activation quantization runs once per distinct input each step; it must stay cheap."""
    x = rng.standard_normal((batch, k), dtype=np.float32)
    benchmark.group = "quantize_activations"
    benchmark.extra_info.update(k=k, batch=batch, input_bytes=x.nbytes)
    benchmark(kernels.quantize_activations, x)
