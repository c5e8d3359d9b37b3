"""Packed weights live in shared 2 MiB-aligned regions (csrc/weight_memory.cpp): small matrices
end to end, large ones in regions of their own, a region given back with its last matrix. Every
matrix must keep its bytes while others come and go around it."""

from __future__ import annotations

import gc

import numpy as np

from tritlm import kernels


def test_matrices_keep_their_bytes_while_neighbours_come_and_go() -> None:
    rng = np.random.default_rng(5)
    kept: list[tuple[kernels.PackedWeights, np.ndarray, np.ndarray]] = []
    # (rows, k): 4 KiB, 64 KiB and 1 MiB of codes, and twice 8.5 MiB (over a quarter region: its own)
    shapes = [(32, 1024), (512, 1024), (4096, 2048)]
    for i in range(40):
        n, k = (16640, 4096) if i in (0, 20) else shapes[i % 3]
        w = rng.integers(0, 2, size=(n, k), dtype=np.int8) * np.int8(2) - np.int8(1)
        scales = rng.uniform(0.5, 1.5, size=n).astype(np.float32)
        packed = kernels.pack_binary(w, scales)
        if i % 4 == 0:  # keep a quarter, of every size; let the rest go at once
            kept.append((packed, packed.codes.copy(), packed.scales.copy()))
        del packed
        gc.collect()
    for packed, codes, scales in kept:
        np.testing.assert_array_equal(packed.codes, codes)
        np.testing.assert_array_equal(packed.scales, scales)
    # and they still compute: against the scalar kernel on the same bytes
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    a = kernels.quantize_activations(x)
    small = next(packed for packed, _, _ in kept if packed.k == 1024)
    np.testing.assert_array_equal(kernels.matmul(small, a), kernels.matmul(small, a, isa="scalar"))
