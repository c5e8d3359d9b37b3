"""The kernel layer: pack weights into tritlm's run-time layouts and multiply them with int8
activations. Layouts are described byte by byte in docs/formats.md.

This module only normalizes Python-side conveniences (bytes objects, the three forms of a scale);
every check on shapes, dtypes and values happens in the native core, which names the argument.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import numpy.typing as npt

from . import _core
from ._core import PackedWeights, QuantizedActivations

__all__ = [
    "PackedWeights",
    "QuantizedActivations",
    "activations_from_int8",
    "available_isas",
    "hf_weight_multiplier",
    "linear",
    "matmul",
    "pack_binary",
    "pack_ternary",
    "quantize_activations",
    "quantize_rows_q8",
    "repack_hf_packed",
    "repack_i2_s",
    "repack_q1_0",
    "repack_tq1_0",
    "repack_tq2_0",
    "to_float16",
]

Scale = Union[float, npt.ArrayLike]
Buffer = Union[bytes, bytearray, memoryview, npt.NDArray[np.uint8]]


def _require_array(value: object, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
    return value


def _scale_matrix(scale: Scale, n: int, k: int, group_size: int | None) -> np.ndarray:
    """Spread a per-tensor, per-row or per-group scale to the (n, groups) f32 matrix the core stores."""
    s = np.asarray(scale, dtype=np.float32)
    if group_size is not None:
        if group_size <= 0 or group_size % 128 or k % group_size:
            raise ValueError(f"group_size must be a positive multiple of 128 that divides k = {k}, got {group_size}")
        groups = k // group_size
        if s.shape != (n, groups):
            raise ValueError(f"scale must have shape ({n}, {groups}) for group_size {group_size}, got {s.shape}")
        return np.ascontiguousarray(s)
    if s.ndim == 0:
        return np.full((n, 1), s, dtype=np.float32)
    if s.shape == (n,):
        return np.ascontiguousarray(s.reshape(n, 1))
    if s.ndim == 2 and s.shape[0] == n:
        return np.ascontiguousarray(s)
    raise ValueError(f"scale must be a number, shape ({n},) or ({n}, groups); got shape {s.shape}")


def _pack(w: np.ndarray, scale: Scale, group_size: int | None, binary: bool, n_threads: int | None) -> PackedWeights:
    w = _require_array(w, "w")
    if w.ndim != 2:
        raise ValueError(f"w must have 2 dimensions, got {w.ndim}")
    return _core.pack_int8(w, _scale_matrix(scale, w.shape[0], w.shape[1], group_size), binary, n_threads)


def pack_ternary(
    w: np.ndarray, scale: Scale, *, group_size: int | None = None, n_threads: int | None = None
) -> PackedWeights:
    """Pack an int8 matrix of {-1, 0, 1} with a scale per tensor, per row, or per group of columns."""
    return _pack(w, scale, group_size, False, n_threads)


def pack_binary(
    w: np.ndarray, scale: Scale, *, group_size: int | None = None, n_threads: int | None = None
) -> PackedWeights:
    """Pack an int8 matrix of {-1, 1} (1 bit per weight) with its scales, as pack_ternary.

    The scales are stored as binary16, as GGUF Q1_0 stores them (rounded to nearest even), so
    that decode streams 18 bytes per 128 weights rather than 20; a scale that would overflow
    binary16 or, nonzero, round to zero raises ValueError."""
    return _pack(w, scale, group_size, True, n_threads)


def _bytes(data: Buffer) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    return _require_array(data, "data")


def repack_tq2_0(data: Buffer, n: int, k: int, *, n_threads: int | None = None) -> PackedWeights:
    """GGUF TQ2_0 tensor data (66 bytes per 256 weights) of an n x k weight."""
    return _core.repack_tq2_0(_bytes(data), n, k, n_threads)


def repack_tq1_0(data: Buffer, n: int, k: int, *, n_threads: int | None = None) -> PackedWeights:
    """GGUF TQ1_0 tensor data (54 bytes per 256 weights) of an n x k weight."""
    return _core.repack_tq1_0(_bytes(data), n, k, n_threads)


def repack_i2_s(data: Buffer, n: int, k: int, *, n_threads: int | None = None, in_place: bool = False) -> PackedWeights:
    """bitnet.cpp I2_S tensor data (n*k/4 code bytes, then a 32-byte tail holding the f32 scale).

    I2_S codes are tritlm's run-time layout byte for byte, so ``in_place=True`` checks them and
    then uses ``data``'s memory directly (keeping it alive): a memory-mapped file is not copied,
    and loading needs no second copy of the weights. That memory must then stay unchanged while
    the weights are used; for a mapped file, the file must not be modified or truncated."""
    return _core.repack_i2_s(_bytes(data), n, k, n_threads, in_place)


def repack_q1_0(data: Buffer, n: int, k: int, *, n_threads: int | None = None) -> PackedWeights:
    """GGUF Q1_0 tensor data (18 bytes per 128 weights) of an n x k weight, as 1-bit weights."""
    return _core.repack_q1_0(_bytes(data), n, k, n_threads)


def repack_hf_packed(
    packed: np.ndarray,
    weight_scale: float | npt.ArrayLike,
    *,
    linear_class: str = "bitlinear",
    n_threads: int | None = None,
) -> PackedWeights:
    """Hugging Face's packed uint8 BitNet weight of shape (out/4, in) and its ``weight_scale``.

    What ``weight_scale`` means depends on the checkpoint's ``quantization_config.linear_class``,
    as in transformers' integrations/bitnet.py: ``"bitlinear"`` (microsoft/bitnet-b1.58-2B-4T)
    divides the output by it, ``"autobitlinear"`` multiplies. tritlm stores a multiplier.
    """
    multiplier = hf_weight_multiplier(weight_scale, linear_class)
    return _core.repack_hf_packed(_require_array(packed, "packed"), float(multiplier), n_threads)


def hf_weight_multiplier(weight_scale: float | npt.ArrayLike, linear_class: str = "bitlinear") -> np.float32:
    """The f32 multiplier of a Hugging Face BitNet layer's ternary weights: ``1 / weight_scale``
    for ``"bitlinear"``, ``weight_scale`` for ``"autobitlinear"`` (see repack_hf_packed).

    A weight_scale that is not a positive finite number has no meaning (an infinite one would
    silently zero the layer), and a tiny one whose reciprocal overflows f32 is refused as such,
    so the error says which of the two went wrong."""
    scale = np.asarray(weight_scale, dtype=np.float32)
    if scale.size != 1:
        raise ValueError(f"weight_scale must hold one value, got shape {scale.shape}")
    scale = scale.reshape(())
    if linear_class not in ("bitlinear", "autobitlinear"):
        raise ValueError(f"linear_class must be 'bitlinear' or 'autobitlinear', got {linear_class!r}")
    if not (np.isfinite(scale) and scale > 0):
        raise ValueError(f"weight_scale is {float(scale):g}; it must be a positive finite number")
    value = np.float32(scale)  # a scalar, not the 0-d array
    if linear_class == "autobitlinear":
        return value
    with np.errstate(over="ignore"):
        multiplier = np.float32(1) / value
    if not np.isfinite(multiplier):
        raise ValueError(f"1 / weight_scale (weight_scale = {float(value):g}) overflows float32; "
                         "a bitlinear layer divides by weight_scale")
    return multiplier


def quantize_activations(
    x: np.ndarray, *, n_threads: int | None = None, isa: str | None = None
) -> QuantizedActivations:
    """Quantize float32 rows (tokens) to int8 with one scale per row, BitNet b1.58's absmax rule."""
    return _core.quantize(_require_array(x, "x"), n_threads, isa)


def to_float16(x: np.ndarray, *, isa: str | None = None) -> np.ndarray:
    """float32 values (a multiple of 16) rounded to IEEE half as the engine's f16 KV cache stores
    them: the kernel table's conversion, nearest with ties to even, a NaN quieted with its
    payload's top bits. Every ISA gives the same bits."""
    return _core.f32_to_f16(_require_array(x, "x"), isa).view(np.float16)


def activations_from_int8(q: np.ndarray, scale: float | npt.ArrayLike) -> QuantizedActivations:
    """Activations already quantized elsewhere: int8 rows q and the scale s of each (x ~= q / s)."""
    q = _require_array(q, "q")
    if q.ndim != 2:
        raise ValueError(f"q must have 2 dimensions, got {q.ndim}")
    s = np.asarray(scale, dtype=np.float32)
    s = np.full(q.shape[0], s, dtype=np.float32) if s.ndim == 0 else np.ascontiguousarray(s)
    return _core.activations_from_int8(q, s)


def matmul(
    w: PackedWeights, a: QuantizedActivations, *, n_threads: int | None = None, isa: str | None = None
) -> np.ndarray:
    """y[b, n] = sum_k W[n, k] * q[b, k] * scale_W / s[b], as float32 of shape (rows, n)."""
    return _core.matmul(w, a, n_threads, isa)


def linear(w: PackedWeights, x: np.ndarray, *, n_threads: int | None = None, isa: str | None = None) -> np.ndarray:
    """Quantize x and multiply: the BitLinear of BitNet b1.58 without its norm."""
    return _core.linear(w, _require_array(x, "x"), n_threads, isa)


def quantize_rows_q8(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit copy of a float table (the output head): int8 rows and one f32 scale per row,
    ``row ~= q * scale`` with ``scale = max|row| / 127``. Half the bytes of f16, read every token."""
    t = _require_array(table, "table")
    if t.ndim != 2:
        raise ValueError(f"table must have 2 dimensions, got {t.ndim}")
    rows = t.astype(np.float32)
    scale = np.abs(rows).max(axis=1) / np.float32(127)
    safe = np.where(scale > 0, scale, np.float32(1))
    q = np.clip(np.rint(rows / safe[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def available_isas() -> list[str]:
    """Kernel ISAs this CPU and build can run, scalar first and the preferred one last."""
    return list(_core.available_isas())
