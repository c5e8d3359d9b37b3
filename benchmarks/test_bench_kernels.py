"""pytest-benchmark versions of the kernel figures (``python -m pytest benchmarks/``).

Why: ``python -m tritlm.bench kernels`` prints one table for humans; these give the same
matmul / quantize timings in pytest-benchmark's format so runs can be saved and compared
(``--benchmark-autosave``, ``--benchmark-compare``). They only measure: a slow machine is
not a failure, so nothing here asserts on speed.

Ids name the batch first, then K and N (``B1-K2560-N640``), so that ``-k`` selects exactly:
``-k B1-`` is batch 1 alone (``B1`` would also match ``B128``), ``-k K6912`` the down
projection. Each test's extra_info holds the ISA and threads it ran on and its G MAC/s (or
GB/s), and conftest.py prints those figures after pytest-benchmark's timing tables.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

kernels = pytest.importorskip("tritlm.kernels")
_core = pytest.importorskip("tritlm._core")

# (K, N) of the BitNet b1.58 2B4T linear layers, in -> out.
SHAPES = [(2560, 2560), (2560, 640), (2560, 6912), (6912, 2560)]
SHAPE_IDS = [f"K{k}-N{n}" for k, n in SHAPES]
BATCHES = [1, 128]
BATCH_IDS = [f"B{b}" for b in BATCHES]


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


def _where(benchmark) -> None:  # noqa: ANN001
    """What every figure depends on, saved with it (--benchmark-json / --benchmark-autosave)."""
    benchmark.extra_info.update(isa=_core.active_isa(), threads=_core.get_num_threads())


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("batch", BATCHES, ids=BATCH_IDS)
def test_matmul_ternary(benchmark, packed, rng, record_figure: Callable[[str], None], shape: tuple[int, int],
                        batch: int) -> None:
    """One ternary matmul call at the dispatched ISA and default thread count."""
    k, n = shape
    w = packed[shape]
    a = kernels.quantize_activations(rng.standard_normal((batch, k), dtype=np.float32))
    benchmark.group = f"matmul K{k}-N{n}"
    _where(benchmark)
    benchmark.extra_info.update(k=k, n=n, batch=batch, macs=batch * n * k)
    y = benchmark(kernels.matmul, w, a)
    assert np.shape(y) == (batch, n)  # a correctness guard, not a speed one
    if benchmark.stats is not None:  # None under --benchmark-disable
        best = benchmark.stats.stats.min
        benchmark.extra_info["gmacs_best"] = batch * n * k / best / 1e9
        record_figure(f"{benchmark.extra_info['gmacs_best']:.2f} G MAC/s")


@pytest.mark.parametrize("k", [2560, 6912], ids=["K2560", "K6912"])
@pytest.mark.parametrize("batch", BATCHES, ids=BATCH_IDS)
def test_quantize_activations(benchmark, rng, record_figure: Callable[[str], None], k: int, batch: int) -> None:
    """Activation quantization runs once per distinct input each step; it must stay cheap."""
    x = rng.standard_normal((batch, k), dtype=np.float32)
    benchmark.group = "quantize_activations"
    _where(benchmark)
    benchmark.extra_info.update(k=k, batch=batch, input_bytes=x.nbytes)
    benchmark(kernels.quantize_activations, x)
    if benchmark.stats is not None:
        benchmark.extra_info["input_gbps_best"] = x.nbytes / benchmark.stats.stats.min / 1e9
        record_figure(f"{benchmark.extra_info['input_gbps_best']:.2f} GB/s of f32 input")
