"""ModelSpec: what a loader hands to the engine (docs/engine.md, "ModelSpec").

A spec holds the architecture config, every weight under its canonical (llama.cpp GGUF) name,
and the sources the tokenizer and chat-template modules need. Loaders build it. A GGUF file loaded
with ``use_mmap=True`` (the default) lends it weights that are views of the file's memory map, so
that file must stay unmodified while the spec (or a model built from it) is alive; with
``use_mmap=False``, and for Hugging Face folders, every weight is a copy and the files may change or
disappear afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

import numpy as np

from ..errors import ModelLoadError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .._core import PackedWeights
    from ..tokenizer import TokenizerSource

# A weight as the engine takes it: packed codes for a ternary / binary linear, else a float array.
Weight: TypeAlias = "PackedWeights | np.ndarray"

__all__ = [
    "CONFIG_KEYS",
    "LINEAR_NAMES",
    "ModelSpec",
    "NORM_NAMES",
    "expected_shapes",
    "make_tokenizer_source",
    "non_finite",
    "validate_spec",
]

# Per-layer linears and norms, canonical names without the "blk.{i}." prefix.
LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORM_NAMES = ("attn_norm", "ffn_norm")
SUB_NORM_NAMES = ("attn_sub_norm", "ffn_sub_norm")

CONFIG_KEYS = (
    "arch", "n_layers", "dim", "n_heads", "n_kv_heads", "head_dim", "ffn_dim", "vocab_size",
    "rope_theta", "norm_eps", "activation", "sub_norms",
)

# Sizes beyond these are not models tritlm can run on a CPU; a file claiming them is corrupt (or
# at least not worth allocating for). They bound every allocation a loader makes from a header.
MAX_DIM = 1 << 17          # hidden size, ffn size, head_dim * heads
MAX_LAYERS = 1 << 12
MAX_HEADS = 1 << 12
MAX_VOCAB = 1 << 23
MAX_POSITION = 1 << 30     # a trained context length; 2^40 is a corrupt field, not a model


@dataclass
class ModelSpec:
    path: str                              # file or folder it came from
    config: dict                           # docs/engine.md, "config keys"
    weights: dict[str, Weight]             # canonical name -> PackedWeights | np.ndarray
    tensor_types: dict[str, str]           # canonical name -> source type ("TQ2_0", "I2_S", "bf16", ...)
    tokenizer: "TokenizerSource"           # what the tokenizer module needs
    chat_template: str | None = None
    bos_id: int | None = None
    eos_ids: list[int] = field(default_factory=list)
    add_bos: bool = False


def make_tokenizer_source(**fields: Any) -> "TokenizerSource":
    """Build the tokenizer module's ``TokenizerSource`` from keyword fields (imported lazily, so the
    loaders do not depend on the tokenizer module at import time). Its ValueError for an
    inconsistent set of fields propagates; loaders turn it into ModelLoadError."""
    from ..tokenizer import TokenizerSource

    return TokenizerSource(**fields)


def expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape for every weight a model with this config must have
    (``output`` excluded: it is optional, absent when tied)."""
    d, f, hd = config["dim"], config["ffn_dim"], config["head_dim"]
    q, kv = config["n_heads"] * hd, config["n_kv_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {
        "token_embd": (config["vocab_size"], d),
        "output_norm": (d,),
    }
    for i in range(config["n_layers"]):
        p = f"blk.{i}."
        shapes[p + "attn_norm"] = (d,)
        shapes[p + "ffn_norm"] = (d,)
        if config["sub_norms"]:
            shapes[p + "attn_sub_norm"] = (q,)
            shapes[p + "ffn_sub_norm"] = (f,)
        if config.get("qk_norm"):
            shapes[p + "attn_q_norm"] = (hd,)
            shapes[p + "attn_k_norm"] = (hd,)
        shapes[p + "attn_q"] = (q, d)
        shapes[p + "attn_k"] = (kv, d)
        shapes[p + "attn_v"] = (kv, d)
        shapes[p + "attn_output"] = (d, q)
        shapes[p + "ffn_gate"] = (f, d)
        shapes[p + "ffn_up"] = (f, d)
        shapes[p + "ffn_down"] = (d, f)
    return shapes


def check_config(config: dict, where: str) -> None:
    """Raise ModelLoadError naming ``where`` unless the shape numbers are sane and consistent."""

    def fail(msg: str) -> NoReturn:
        raise ModelLoadError(f"{where}: {msg}")

    limits = {
        "n_layers": MAX_LAYERS, "dim": MAX_DIM, "n_heads": MAX_HEADS, "n_kv_heads": MAX_HEADS,
        "head_dim": MAX_DIM, "ffn_dim": MAX_DIM, "vocab_size": MAX_VOCAB,
    }
    for key, limit in limits.items():
        v = config.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            fail(f"{key} must be an integer, got {v!r}")
        if not 0 < int(v) <= limit:
            fail(f"{key} = {v} is out of range (1..{limit})")
    if config["n_heads"] % config["n_kv_heads"]:
        fail(f"n_heads = {config['n_heads']} is not a multiple of n_kv_heads = {config['n_kv_heads']}")
    if config["head_dim"] % 2:
        fail(f"head_dim = {config['head_dim']} is odd; RoPE rotates pairs")
    if config["n_heads"] * config["head_dim"] > MAX_DIM:
        fail(f"n_heads * head_dim = {config['n_heads'] * config['head_dim']} is out of range")
    for key in ("rope_theta", "norm_eps"):
        v = config.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not np.isfinite(v) or v <= 0:
            fail(f"{key} must be a positive finite number, got {v!r}")
    if config.get("activation") not in ("relu2", "silu"):
        fail(f"activation must be 'relu2' or 'silu', got {config.get('activation')!r}")
    if not isinstance(config.get("sub_norms"), bool):
        fail("sub_norms must be a bool")
    if not isinstance(config.get("qk_norm", False), bool):
        fail("qk_norm must be a bool")
    mp = config.get("max_position")
    if mp is not None and (isinstance(mp, bool) or not isinstance(mp, int) or not 0 < mp <= MAX_POSITION):
        fail(f"max_position (the trained context length) must be an integer in 1..{MAX_POSITION}, got {mp!r}")


def _shape_of(w: Weight) -> tuple[int, ...]:
    if isinstance(w, np.ndarray):
        return tuple(w.shape)
    return (int(w.n), int(w.k))  # PackedWeights


def validate_spec(spec: ModelSpec) -> None:
    """Check that every weight named by the config is present with the right shape and kind."""
    where = spec.path
    check_config(spec.config, where)
    shapes = expected_shapes(spec.config)
    if "output" in spec.weights:
        shapes["output"] = shapes["token_embd"]
    for name, shape in shapes.items():
        w = spec.weights.get(name)
        if w is None:
            raise ModelLoadError(f"{where}: missing tensor {name}")
        if _shape_of(w) != shape:
            raise ModelLoadError(f"{where}: tensor {name} has shape {_shape_of(w)}, expected {shape}")
        if isinstance(w, np.ndarray):
            if name in ("token_embd", "output"):
                ok = w.dtype in (np.float16, np.float32)
            else:
                ok = w.dtype == np.float32
            if not ok:
                raise ModelLoadError(f"{where}: tensor {name} has dtype {w.dtype}")
        elif len(shape) != 2 or name == "token_embd":  # a packed output is a 1-bit head (GGUF Q1_0)
            raise ModelLoadError(f"{where}: tensor {name} must be a float array, got {type(w).__name__}")
    extra = set(spec.weights) - set(shapes)
    if extra:
        raise ModelLoadError(f"{where}: unexpected tensors {sorted(extra)[:5]}")


# ----------------------------------------------------------------------------------------------
# Float tensors

# float itemsize -> (unsigned view, mask clearing the sign, bits of |x| from which x is inf/NaN)
_FLOAT_BITS: dict[int, tuple[type[np.unsignedinteger[Any]], int, int]] = {
    2: (np.uint16, 0x7FFF, 0x7C00),
    4: (np.uint32, 0x7FFF_FFFF, 0x7F80_0000),
    8: (np.uint64, 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
}
_CHECK_CHUNK = 1 << 22  # elements: an 8-32 MB temporary however large the tensor


def non_finite(a: np.ndarray) -> str | None:
    """Where a float array's first NaN or infinity is ("inf at row 5, column 3"), or None.

    Loaders check every float tensor: a non-finite weight would load silently and fail (or turn
    every logit NaN) only when a request touches it. The check compares the bits of |x| with the
    exponent mask, a chunk at a time: ~0.04 s for a 150k x 2048 float16 table, against ~0.4 s
    for np.isfinite (which widens float16), and no full-size temporary."""
    if a.dtype.kind != "f" or a.size == 0:
        return None
    utype, mask, limit = _FLOAT_BITS[a.dtype.itemsize]
    bits = np.ravel(a).view(utype)
    buf = np.empty(min(_CHECK_CHUNK, bits.size), dtype=utype)
    for start in range(0, bits.size, _CHECK_CHUNK):
        part = np.bitwise_and(bits[start:start + _CHECK_CHUNK], utype(mask), out=buf[:min(_CHECK_CHUNK, bits.size - start)])
        if part.max() >= limit:
            j = int(np.argmax(part >= limit))
            value = "nan" if part[j] > limit else "-inf" if bits[start + j] != part[j] else "inf"
            where = tuple(int(x) for x in np.unravel_index(start + j, a.shape))
            if len(where) == 2:
                return f"{value} at row {where[0]}, column {where[1]}"
            return f"{value} at index {where[0] if len(where) == 1 else list(where)}"
    return None


# ----------------------------------------------------------------------------------------------
# Linear weights


def linear_from_dense(w: np.ndarray, *, allow_binary: bool = True) -> Weight:
    """A float weight [out, in] as the engine wants it.

    If every value is 0 or +-s for one s (a ternary weight times a per-tensor scale, as a
    ternary model stored in F16/BF16/F32/Q8_0 is), it is packed: binary (1 bit) when no value is
    0 and ``allow_binary``, ternary otherwise. Anything else stays a float32 array (a float
    matmul). Packing needs the row length to be a multiple of 128; other weights stay float.
    ``w`` is finite: the loaders refuse a non-finite tensor (``non_finite``) before this.
    """
    from .. import kernels

    w = np.ascontiguousarray(w, dtype=np.float32)
    if w.ndim != 2 or w.size == 0 or w.shape[1] % 128:
        return w
    a = np.abs(w)
    s = a.max()
    nonzero = a != 0
    if not (nonzero <= (a == s)).all():  # some |w| is neither 0 nor s
        return w
    codes = np.sign(w).astype(np.int8)
    if allow_binary and s > 0 and nonzero.all():
        return kernels.pack_binary(codes, float(s))
    return kernels.pack_ternary(codes, float(s))


def scale_linear(w: Weight, factor: float) -> Weight:
    """Multiply a linear (PackedWeights or float array) by a per-tensor factor."""
    from .. import kernels

    if isinstance(w, np.ndarray):
        scaled: np.ndarray = (w * np.float32(factor)).astype(np.float32)
        return scaled
    codes, scales = w.unpack()
    scales = (scales * np.float32(factor)).astype(np.float32)
    pack = kernels.pack_binary if w.format == "binary" else kernels.pack_ternary
    return pack(codes, scales, group_size=w.group_size)


def dense_from_linear(w: Weight) -> np.ndarray:
    """The float32 matrix [out, in] a linear computes with (its codes times their scales)."""
    if isinstance(w, np.ndarray):
        return np.asarray(w, dtype=np.float32)
    codes, scales = w.unpack()
    out: np.ndarray = codes.astype(np.float32) * np.repeat(scales, w.group_size, axis=1)
    return out
