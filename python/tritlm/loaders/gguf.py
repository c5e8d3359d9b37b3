"""GGUF files -> ModelSpec.

The header is parsed here rather than with ``gguf.GGUFReader`` (gguf-py 0.19), for three reasons
found while writing this loader:

- GGUFReader converts every tensor's type id with ``GGMLQuantizationType(id)`` while opening the
  file, so a bitnet.cpp file holding I2_S tensors (type 36, not in gguf-py's enum) cannot be opened
  at all;
- it trusts the array lengths and string lengths in the header: reads past the end of the memory
  map return short (even empty) arrays instead of failing, so a corrupt length in a numeric array
  makes it loop for up to 2^64 iterations;
- it builds one numpy array per string, which is slow for a 128k-token vocabulary plus merges.

This parser bounds every count by the bytes left in the file before looping or allocating, checks
each tensor's offset, alignment and size against the file, and turns every problem into
``ModelLoadError`` naming the file. gguf-py is still used for what it does well: the type table
(``GGML_QUANT_SIZES``), dequantizing F16/BF16/Q8_0/Q6_K/... tensors (``gguf.quants``), and writing
files (``convert.py``).

The file is memory-mapped. By default (``use_mmap=True``, as llama.cpp's ``use_mmap``) the weights
already in their run-time form are not copied: I2_S codes (tritlm's ternary layout byte for byte)
and F16 embedding / head tables stay views into the mapping, which lives as long as they do, so the
file must not be modified or truncated while the model is loaded (a write shows up in the weights;
a read past a truncated end kills the process with SIGBUS, as in llama.cpp). Deleting the file, or replacing it by renaming another
over it, is safe: the mapping keeps the old contents. With ``use_mmap=False`` every weight is copied
out of the map and the map is closed before ``load_gguf`` returns: loading then needs a second
copy of those tensors at its peak, but the file may change or disappear afterwards.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from ..errors import ModelLoadError
from .spec import (
    LINEAR_NAMES,
    MAX_DIM,
    ModelSpec,
    Weight,
    check_config,
    expected_shapes,
    linear_from_dense,
    make_tokenizer_source,
    non_finite,
    scale_linear,
    validate_spec,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..tokenizer import TokenizerSource

__all__ = ["GGUFFile", "GGUFTensor", "load_gguf", "read_gguf", "GGML_TYPE_I2_S"]

GGUF_MAGIC = b"GGUF"
GGML_TYPE_TQ1_0 = 34
GGML_TYPE_TQ2_0 = 35
GGML_TYPE_I2_S = 36          # bitnet.cpp's fork of ggml; not in gguf-py's enum
GGML_TYPE_Q1_0 = 41          # in gguf-py's enum only from 0.19 on
_EXTRA_TYPES = {GGML_TYPE_Q1_0: ("Q1_0", 128, 18)}  # name, block size, block bytes (if gguf-py lacks them)
GGML_MAX_DIMS = 4            # ggml's limit, checked by llama.cpp's gguf reader too
MAX_TENSOR_NAME = 256
MAX_ELEMENTS = 1 << 40       # per tensor
MAX_ARRAY_DEPTH = 3
DEFAULT_ALIGNMENT = 32

# GGUF value types (gguf-py's GGUFValueType numbers).
_STRING, _ARRAY = 8, 9
_SCALAR = {  # type id -> (struct format, numpy dtype)
    0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"),
    4: ("<I", "<u4"), 5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<B", "<u1"),
    10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8"),
}
_BOOL = 7

# Architectures tritlm runs, and what they imply (docs/engine.md "config keys").
#   bitnet-b1.58, bitnet-25: bitnet.cpp's names (its llama.cpp fork, llama-arch); build_bitnet_158
#       uses LLM_FFN_RELU_SQR and the attn/ffn sub-norms, and q/k are not permuted.
#   bitnet: llama.cpp's name (1bitLLM-style BitNet b1.58); src/models/bitnet.cpp requires both
#       sub-norms, uses SiLU unless `bitnet.hidden_activation` says otherwise, and NEOX RoPE.
#   llama: a Llama with ternary weights; llama.cpp's converter permutes the rows of attn_q/attn_k
#       for its interleaved RoPE, which this loader undoes (tritlm's RoPE is rotate-half).
#   qwen3: Qwen3 (PrismML's Bonsai 1-bit models among them); src/models/qwen3.cpp requires
#       attn_q_norm / attn_k_norm [head_dim] (an RMSNorm over each head before RoPE), gated SiLU,
#       NEOX RoPE, no sub-norms; the converter (Qwen2Model's) does not permute q/k.
_ARCHS = {
    "bitnet-b1.58": ("bitnet-b1.58", "relu2", True),
    "bitnet-25": ("bitnet-b1.58", "relu2", True),
    "bitnet": ("bitnet", "silu", True),
    "llama": ("llama", "silu", None),  # sub-norms if the file has them
    "qwen3": ("qwen3", "silu", False),
}
# Architectures whose attention normalizes each head of q and k (attn_q_norm / attn_k_norm).
_QK_NORM_ARCHS = frozenset({"qwen3"})
_ACTIVATIONS = {
    "relu2": "relu2", "relu_sqr": "relu2", "relu_squared": "relu2", "squared_relu": "relu2",
    "silu": "silu", "swish": "silu", "swiglu": "silu",
}


class _Corrupt(Exception):
    """Internal: a problem in the file; load_gguf prefixes the path."""


@dataclass
class GGUFTensor:
    name: str
    ne: tuple[int, ...]        # ggml order: ne[0] is the row length (columns)
    type_id: int
    offset: int                # absolute byte offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order: [rows, columns] for a matrix."""
        return tuple(reversed(self.ne))

    @property
    def type_name(self) -> str:
        return _type_name(self.type_id)


def _type_name(type_id: int) -> str:
    if type_id == GGML_TYPE_I2_S:
        return "I2_S"
    from gguf import GGMLQuantizationType

    try:
        return GGMLQuantizationType(type_id).name
    except ValueError:
        return _EXTRA_TYPES[type_id][0] if type_id in _EXTRA_TYPES else f"type {type_id}"


def _tensor_nbytes(type_id: int, ne: tuple[int, ...]) -> int:
    """Bytes of tensor data, as ggml_nbytes computes them (bitnet.cpp's fork for I2_S)."""
    n = 1
    for d in ne:
        n *= d
    if type_id == GGML_TYPE_I2_S:
        # bitnet.cpp ggml.c, ggml_nbytes: one byte an element (type size 1, block 1), then
        # "nbytes = nbytes / 4 + 32": 2-bit codes plus a 32-byte tail holding the f32 scale.
        if n % 4:
            raise _Corrupt(f"I2_S tensor with {n} elements (not a multiple of 4)")
        return n // 4 + 32
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        qt = GGMLQuantizationType(type_id)
    except ValueError:
        qt = None
    if qt is not None and qt in GGML_QUANT_SIZES:
        name, (block, size) = qt.name, GGML_QUANT_SIZES[qt]
    elif type_id in _EXTRA_TYPES:
        name, block, size = _EXTRA_TYPES[type_id]
    else:
        raise _Corrupt(f"unknown ggml type id {type_id}")
    if ne[0] % block:
        raise _Corrupt(f"row length {ne[0]} is not a multiple of {name}'s block size {block}")
    return n // block * size


class GGUFFile:
    """A parsed GGUF header over a read-only memory map. Use as a context manager or close()."""

    def __init__(self, path: str):
        self.path = path
        self.fields: dict[str, Any] = {}
        self.field_types: dict[str, int] = {}
        self.tensors: dict[str, GGUFTensor] = {}
        self.version = 0
        self.alignment = DEFAULT_ALIGNMENT
        self._file = None
        self._map: mmap.mmap | None = None
        try:
            self._file = open(path, "rb")
            size = os.fstat(self._file.fileno()).st_size
            if size < 4:
                raise _Corrupt(f"file is {size} bytes, too short for a GGUF header")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            self.size = len(self._map)
            self._pos = 0
            self._parse()
        except BaseException:
            self.close()
            raise

    # -- low-level reads, all bounds-checked ----------------------------------------------------

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self._pos + n > self.size:
            raise _Corrupt(f"{what} at offset {self._pos} runs past the end of the file ({self.size} bytes)")

    def _data(self) -> mmap.mmap:
        if self._map is None:
            raise ValueError(f"{self.path}: the GGUF file is closed")
        return self._map

    def _scalar(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(fmt)
        self._need(n, what)
        (v,) = struct.unpack_from(fmt, self._data(), self._pos)
        self._pos += n
        return v

    def _string(self, what: str, limit: int | None = None) -> str:
        n = self._scalar("<Q", what + " length")
        if limit is not None and n > limit:
            raise _Corrupt(f"{what} at offset {self._pos - 8} is {n} bytes long (limit {limit})")
        self._need(n, what)
        raw = self._data()[self._pos:self._pos + n]
        self._pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"{what} at offset {self._pos - n} is not valid UTF-8") from None

    def _value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALAR:
            v = self._scalar(_SCALAR[vtype][0], what)
            return bool(v) if vtype == _BOOL else v
        if vtype == _STRING:
            return self._string(what)
        if vtype == _ARRAY:
            if depth >= MAX_ARRAY_DEPTH:
                raise _Corrupt(f"{what}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
            itype = self._scalar("<I", what + " item type")
            count = self._scalar("<Q", what + " length")
            left = self.size - self._pos
            if itype in _SCALAR:
                dt = np.dtype(_SCALAR[itype][1])
                if count > left // dt.itemsize:
                    raise _Corrupt(f"{what}: array of {count} items runs past the end of the file")
                arr = np.frombuffer(self._data(), dtype=dt, count=count, offset=self._pos).copy()
                self._pos += count * dt.itemsize
                return arr.astype(bool) if itype == _BOOL else arr
            if itype == _STRING:
                if count > left // 8:
                    raise _Corrupt(f"{what}: array of {count} strings runs past the end of the file")
                return [self._string(f"{what}[{i}]") for i in range(count)]
            if itype == _ARRAY:
                if count > left // 12:
                    raise _Corrupt(f"{what}: array of {count} arrays runs past the end of the file")
                return [self._value(_ARRAY, f"{what}[{i}]", depth + 1) for i in range(count)]
            raise _Corrupt(f"{what}: unknown array item type {itype}")
        raise _Corrupt(f"{what}: unknown value type {vtype}")

    # -- structure ------------------------------------------------------------------------------

    def _parse(self) -> None:
        magic = self._data()[0:4]
        if magic != GGUF_MAGIC:
            raise _Corrupt(f"not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self._pos = 4
        version = self._scalar("<I", "version")
        if version & 0xFFFF == 0 and version != 0:
            raise _Corrupt("big-endian GGUF files are not supported")
        if version not in (2, 3):
            raise _Corrupt(f"unsupported GGUF version {version} (tritlm reads versions 2 and 3)")
        self.version = version
        n_tensors = self._scalar("<Q", "tensor count")
        n_kv = self._scalar("<Q", "metadata count")
        # Every key/value takes at least 12 bytes and every tensor info at least 24: bound the
        # counts by the file before looping over them.
        if n_kv > (self.size - self._pos) // 12:
            raise _Corrupt(f"metadata count {n_kv} is larger than the file can hold")
        if n_tensors > (self.size - self._pos) // 24:
            raise _Corrupt(f"tensor count {n_tensors} is larger than the file can hold")

        for _ in range(n_kv):
            key = self._string("metadata key", limit=65535)
            vtype = self._scalar("<I", f"type of {key!r}")
            if key in self.fields:
                raise _Corrupt(f"duplicate metadata key {key!r}")
            self.fields[key] = self._value(vtype, f"metadata {key!r}")
            self.field_types[key] = vtype

        if "general.alignment" in self.fields:
            a = self.fields["general.alignment"]
            if self.field_types["general.alignment"] != 4 or a == 0 or a & (a - 1) or a > 1 << 20:
                raise _Corrupt(f"general.alignment must be a power of two (uint32), got {a!r}")
            self.alignment = int(a)

        infos = []
        seen: set[str] = set()
        for _ in range(n_tensors):
            name = self._string("tensor name", limit=MAX_TENSOR_NAME)
            n_dims = self._scalar("<I", f"dimension count of {name!r}")
            if not 1 <= n_dims <= GGML_MAX_DIMS:
                raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions (1..{GGML_MAX_DIMS} allowed)")
            ne = tuple(self._scalar("<Q", f"dimension of {name!r}") for _ in range(n_dims))
            type_id = self._scalar("<I", f"type of {name!r}")
            offset = self._scalar("<Q", f"data offset of {name!r}")
            if name in seen:
                raise _Corrupt(f"duplicate tensor {name!r}")
            seen.add(name)
            infos.append((name, ne, type_id, offset))

        data_start = -(-self._pos // self.alignment) * self.alignment
        for name, ne, type_id, offset in infos:
            n = 1
            for d in ne:
                if d == 0 or d > MAX_ELEMENTS:
                    raise _Corrupt(f"tensor {name!r} has dimensions {list(ne)}")
                n *= d
            if n > MAX_ELEMENTS:
                raise _Corrupt(f"tensor {name!r} has {n} elements, too many")
            try:
                nbytes = _tensor_nbytes(type_id, ne)
            except _Corrupt as e:
                raise _Corrupt(f"tensor {name!r}: {e}") from None
            if offset % self.alignment:
                raise _Corrupt(f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {self.alignment}")
            start = data_start + offset
            if start + nbytes > self.size:
                raise _Corrupt(
                    f"tensor {name!r}: data at bytes {start}..{start + nbytes} lies outside the file ({self.size} bytes)"
                )
            self.tensors[name] = GGUFTensor(name, ne, type_id, start, nbytes)
        self.data_start = data_start

    # -- data -----------------------------------------------------------------------------------

    def raw(self, t: GGUFTensor) -> np.ndarray:
        """The tensor's bytes as a uint8 view into the map (valid until close())."""
        return np.frombuffer(self._data(), dtype=np.uint8, count=t.nbytes, offset=t.offset)

    def dense(self, t: GGUFTensor, *, keep_f16: bool = False, copy: bool = True) -> np.ndarray:
        """The tensor dequantized to a float32 array in numpy order; with keep_f16 an F16 tensor
        stays float16, and with copy=False too it is a read-only view into the map (the embedding
        and head are the largest tensors: viewing them keeps loading free of a second copy, but
        ties them to the file). A NaN or infinity (for Q8_0 / Q6_K, from a block scale) is
        refused here, naming where it is, rather than found by the first request reading it."""
        out = self._decode(t, keep_f16, copy)
        bad = non_finite(out)
        if bad is not None:
            raise _Corrupt(f"tensor {t.name!r} ({t.type_name}) has a non-finite value: {bad}")
        return out

    def _decode(self, t: GGUFTensor, keep_f16: bool, copy: bool) -> np.ndarray:
        from gguf import GGMLQuantizationType, quants

        raw = self.raw(t)
        shape = t.shape
        if t.type_id == GGMLQuantizationType.F32:
            return raw.view("<f4").reshape(shape).astype(np.float32)  # astype copies
        if t.type_id == GGMLQuantizationType.F16:
            a = raw.view("<f2").reshape(shape)
            if keep_f16:
                return a.copy() if copy else a
            return a.astype(np.float32)
        if t.type_id == GGMLQuantizationType.BF16:
            # bfloat16 is the top half of a float32: widen the bits (exact).
            return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if t.type_id == GGML_TYPE_I2_S:
            raise _Corrupt(f"tensor {t.name!r}: I2_S is only supported for linear weights")
        try:
            qt = GGMLQuantizationType(t.type_id)
            out = quants.dequantize(raw.reshape(_rows(t), t.nbytes // _rows(t)), qt)
        except (ValueError, NotImplementedError):
            raise _Corrupt(f"tensor {t.name!r}: type {t.type_name} is not supported for this tensor") from None
        return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)

    def close(self) -> None:
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # weights loaded with use_mmap view it: it is unmapped with the last
                pass
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _rows(t: GGUFTensor) -> int:
    r = 1
    for d in t.ne[1:]:
        r *= d
    return r


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF header (metadata and tensor table) with every check load_gguf makes."""
    path = os.fspath(path)
    try:
        return GGUFFile(path)
    except _Corrupt as e:
        raise ModelLoadError(f"{path}: {e}") from None
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from None


# ----------------------------------------------------------------------------------------------
# GGUF -> ModelSpec


def _unpermute_index(n: int, n_head: int) -> np.ndarray:
    """Row order that undoes llama.cpp's convert_hf_to_gguf ``LlamaModel.permute`` of attn_q /
    attn_k: the file's row (h, i, j) (head h, pair i, half j) is the HF row (h, j, i)."""
    if n % n_head or (n // n_head) % 2:
        raise _Corrupt(f"cannot undo the RoPE permutation of {n} rows over {n_head} heads")
    hd = n // n_head
    order: np.ndarray = np.arange(n).reshape(n_head, hd // 2, 2).swapaxes(1, 2).reshape(-1)
    return order


class _Loader:
    def __init__(self, f: GGUFFile, use_mmap: bool):
        self.f = f
        self.path = f.path
        self.use_mmap = use_mmap

    # metadata helpers
    def _get(self, key: str, kinds: tuple[type, ...], default: Any = None, required: bool = False) -> Any:
        if key not in self.f.fields:
            if required:
                raise _Corrupt(f"missing metadata {key}")
            return default
        v = self.f.fields[key]
        if isinstance(v, np.ndarray) and np.dtype(v.dtype).kind in "iu" and int in kinds:
            # per-layer arrays (llama.cpp allows them for head counts and ffn size): all equal
            if v.size == 0 or not (v == v[0]).all():
                raise _Corrupt(f"{key} varies by layer ({v[:8].tolist()}...), which tritlm does not support")
            v = v[0].item()
        if isinstance(v, bool) and bool not in kinds:
            raise _Corrupt(f"{key} has type bool, expected {kinds[0].__name__}")
        if int in kinds and isinstance(v, int) and not isinstance(v, bool):
            return int(v)
        if float in kinds and isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
        if not isinstance(v, kinds):
            raise _Corrupt(f"{key} has an unexpected type ({type(v).__name__})")
        return v

    @overload
    def _int(self, key: str, default: int) -> int: ...
    @overload
    def _int(self, key: str, *, required: Literal[True]) -> int: ...
    @overload
    def _int(self, key: str, default: int | None = None, required: bool = False) -> int | None: ...

    def _int(self, key: str, default: int | None = None, required: bool = False) -> int | None:
        v: int | None = self._get(key, (int,), default, required)
        if v is not None and not 0 < v <= (1 << 31):
            raise _Corrupt(f"{key} = {v} is out of range")
        return v

    @overload
    def tensor(self, name: str, required: Literal[True] = True) -> GGUFTensor: ...
    @overload
    def tensor(self, name: str, required: bool) -> GGUFTensor | None: ...

    def tensor(self, name: str, required: bool = True) -> GGUFTensor | None:
        t = self.f.tensors.get(name + ".weight")
        if t is None and required:
            raise _Corrupt(f"missing tensor {name}.weight")
        return t

    def check_shape(self, name: str, t: GGUFTensor, shape: tuple[int, ...]) -> None:
        got = t.shape
        while len(got) > len(shape) and got[0] == 1:  # ne = [n, 1] written for a vector
            got = got[1:]
        if got != shape:
            raise _Corrupt(f"tensor {name}.weight has shape {list(t.shape)} (numpy order), expected {list(shape)}")

    def load(self) -> ModelSpec:
        f = self.f
        arch_name = self._get("general.architecture", (str,), required=True)
        if arch_name not in _ARCHS:
            raise _Corrupt(
                f"unsupported architecture {arch_name!r} (tritlm reads {', '.join(sorted(_ARCHS))})"
            )
        arch, activation, sub_norms = _ARCHS[arch_name]
        a = arch_name
        dim = self._int(f"{a}.embedding_length", required=True)
        n_layers = self._int(f"{a}.block_count", required=True)
        n_heads = self._int(f"{a}.attention.head_count", required=True)
        n_kv = self._int(f"{a}.attention.head_count_kv", default=n_heads)
        ffn_dim = self._int(f"{a}.feed_forward_length", required=True)
        if dim > MAX_DIM or n_heads > MAX_DIM:
            raise _Corrupt(f"{a}.embedding_length = {dim} / head_count = {n_heads} out of range")
        if dim % n_heads and f"{a}.attention.key_length" not in f.fields:
            raise _Corrupt(f"embedding_length {dim} is not a multiple of head_count {n_heads}")
        head_dim = self._int(f"{a}.attention.key_length", default=dim // n_heads)
        v_len = self._int(f"{a}.attention.value_length", default=head_dim)
        if v_len != head_dim:
            raise _Corrupt(f"attention.value_length {v_len} differs from key_length {head_dim}")
        n_rot = self._int(f"{a}.rope.dimension_count", default=head_dim)
        if n_rot != head_dim:
            raise _Corrupt(f"rope.dimension_count {n_rot} differs from the head size {head_dim}; partial RoPE is not supported")
        rope_theta = self._get(f"{a}.rope.freq_base", (float,), default=10000.0)
        norm_eps = self._get(f"{a}.attention.layer_norm_rms_epsilon", (float,), required=True)
        scaling = self._get(f"{a}.rope.scaling.type", (str,), default="none")
        factor = self._get(f"{a}.rope.scaling.factor", (float,), default=1.0)
        if scaling not in ("none", "linear") or (scaling == "linear" and factor not in (0.0, 1.0)):
            raise _Corrupt(f"RoPE scaling {scaling!r} (factor {factor}) is not supported")
        if "rope_freqs.weight" in f.tensors:
            raise _Corrupt("per-frequency RoPE factors (rope_freqs) are not supported")
        bias = next((n for n in f.tensors if n.endswith(".bias")), None)
        if bias is not None:
            raise _Corrupt(f"tensor {bias}: biases are not supported")
        act_key = next((k for k in (f"{a}.hidden_activation", f"{a}.hidden_act") if k in f.fields), None)
        if act_key is not None:
            name = self._get(act_key, (str,))
            if name.lower() not in _ACTIVATIONS:
                raise _Corrupt(f"{act_key} = {name!r} is not supported (relu2 or silu)")
            activation = _ACTIVATIONS[name.lower()]
        if sub_norms is None:
            sub_norms = self.tensor("blk.0.attn_sub_norm", required=False) is not None
        max_position = self._get(f"{a}.context_length", (int,))

        embd = self.tensor("token_embd")
        if len(embd.shape) != 2:
            raise _Corrupt(f"tensor token_embd.weight has shape {list(embd.shape)}")
        vocab = embd.shape[0]
        config = {
            "arch": arch, "n_layers": n_layers, "dim": dim, "n_heads": n_heads, "n_kv_heads": n_kv,
            "head_dim": head_dim, "ffn_dim": ffn_dim, "vocab_size": vocab,
            "rope_theta": float(rope_theta), "norm_eps": float(norm_eps),
            "activation": activation, "sub_norms": bool(sub_norms),
        }
        if arch in _QK_NORM_ARCHS:
            config["qk_norm"] = True
        if max_position is not None:
            config["max_position"] = max_position
        check_config(config, self.path)

        shapes = expected_shapes(config)
        out_t = self.tensor("output", required=False)
        if out_t is not None:
            shapes["output"] = shapes["token_embd"]
        weights: dict[str, Weight] = {}
        types: dict[str, str] = {}
        # check every shape before decoding anything
        tinfo = {}
        for i in range(n_layers):
            tinfo.update(self.split_qkv(i, shapes))
        for name, shape in shapes.items():
            t = tinfo.get(name) or self.tensor(name)
            self.check_shape(name, t, shape)
            tinfo[name] = t
        for name, t in tinfo.items():
            types[name] = t.type_name
            base = name.rsplit(".", 1)[-1]
            if name == "output" and t.type_id == GGML_TYPE_Q1_0:
                weights[name] = self.linear(name, t, None)  # a 1-bit head stays 1-bit, on the binary kernel
            elif name in ("token_embd", "output"):
                weights[name] = self.table(name, t)
            elif base in LINEAR_NAMES:
                heads = None
                if arch == "llama" and base in ("attn_q", "attn_k"):
                    heads = n_heads if base == "attn_q" else n_kv
                w = self.linear(name, t, heads)
                st = f.tensors.get(name + ".scale")
                if st is not None:  # llama.cpp's bitnet arch: optional per-tensor scale, multiplied after
                    s = f.dense(st).reshape(-1)
                    if s.size != 1:
                        raise _Corrupt(f"tensor {name}.scale has {s.size} elements, expected 1")
                    w = scale_linear(w, float(s[0]))
                weights[name] = w
            else:
                weights[name] = f.dense(t).reshape(shapes[name])

        if out_t is None and embd.type_id == GGML_TYPE_Q1_0:
            # Tied to a 1-bit embedding: the lookups use its exact float16 copy, the head its
            # bits (1.125 bits a weight read per token instead of 16).
            weights["output"] = self.linear("token_embd", embd, None)
            types["output"] = embd.type_name
        tokenizer, template, bos, eos_ids, add_bos = self.tokenizer(vocab)
        spec = ModelSpec(
            path=self.path, config=config, weights=weights, tensor_types=types, tokenizer=tokenizer,
            chat_template=template, bos_id=bos, eos_ids=eos_ids, add_bos=add_bos,
        )
        validate_spec(spec)
        return spec

    def split_qkv(self, layer: int, shapes: dict[str, tuple[int, ...]]) -> dict[str, GGUFTensor]:
        """attn_q / attn_k / attn_v of a file that stores them fused as attn_qkv (llama.cpp loads
        either): the fused rows are q's, then k's, then v's, so each part is a run of whole rows
        of the same type, viewed in place."""
        p = f"blk.{layer}."
        t = self.tensor(p + "attn_qkv", required=False)
        if t is None:
            return {}
        if self.tensor(p + "attn_q", required=False) is not None:
            raise _Corrupt(f"layer {layer} has both attn_qkv and attn_q")
        parts = [(p + n, shapes[p + n][0]) for n in ("attn_q", "attn_k", "attn_v")]
        rows = sum(r for _, r in parts)
        self.check_shape(p + "attn_qkv", t, (rows, shapes[p + "attn_q"][1]))
        row_bytes = t.nbytes // rows
        out, start = {}, 0
        for name, r in parts:
            out[name] = GGUFTensor(name + ".weight", (t.ne[0], r), t.type_id, t.offset + start * row_bytes, r * row_bytes)
            start += r
        return out

    def table(self, name: str, t: GGUFTensor) -> np.ndarray:
        """The embedding or output head as a float table. Q1_0 values (+-d with d an fp16) are
        exactly float16, so they become a float16 table; other types go through dense()."""
        if t.type_id != GGML_TYPE_Q1_0:
            return self.f.dense(t, keep_f16=True, copy=not self.use_mmap)
        n, k = t.shape
        blocks = self.q1_0_blocks(name, t).reshape(n, k // 128, 18)
        out = np.empty((n, k), dtype=np.float16)
        step = 4096  # rows at a time: the unpacked bits of a whole 150k-row table would take GBs
        for r in range(0, n, step):
            part = blocks[r:r + step]
            d = part[:, :, :2].copy().view("<f2")  # [rows, k/128, 1]
            bits = np.unpackbits(part[:, :, 2:], axis=2, bitorder="little")  # weight j: bit j % 8 of byte j / 8
            out[r:r + step] = np.where(bits.astype(bool), d, -d).reshape(-1, k)
        return out

    def q1_0_blocks(self, name: str, t: GGUFTensor) -> np.ndarray:
        """A Q1_0 tensor's bytes, after checking that every block's fp16 scale is finite."""
        data = self.f.raw(t)
        d = data.reshape(-1, 18)[:, :2].copy().view("<u2")
        bad = np.flatnonzero((d & 0x7C00) == 0x7C00)
        if bad.size:
            raise _Corrupt(f"tensor {name}.weight (Q1_0): block {int(bad[0])} has a non-finite scale")
        return data

    def linear(self, name: str, t: GGUFTensor, heads: int | None) -> Weight:
        from .. import kernels

        n, k = t.shape
        idx = _unpermute_index(n, heads) if heads else None
        repack = {
            GGML_TYPE_TQ1_0: kernels.repack_tq1_0, GGML_TYPE_TQ2_0: kernels.repack_tq2_0,
            GGML_TYPE_Q1_0: kernels.repack_q1_0,
        }.get(t.type_id)
        try:
            if repack is not None:
                data = self.q1_0_blocks(name, t) if t.type_id == GGML_TYPE_Q1_0 else self.f.raw(t)
                if idx is not None:  # every row is a whole number of blocks: move rows as bytes
                    data = data.reshape(n, -1)[idx].reshape(-1)
                return repack(data, n, k)
            if t.type_id == GGML_TYPE_I2_S:
                if k % 128:
                    raise _Corrupt(f"I2_S tensor {name} has rows of {k} weights, not a multiple of 128")
                data = self.f.raw(t)
                if idx is not None:
                    codes = data[: n * k // 4].reshape(n, k // 4)[idx].reshape(-1)
                    data = np.concatenate([codes, data[n * k // 4:]])
                # With use_mmap the codes are viewed in the mapping, not copied: the file's
                # pages are the weights.
                return kernels.repack_i2_s(data, n, k, in_place=self.use_mmap)
        except ValueError as e:  # invalid codes (e.g. TQ2_0 code 3): the kernels name row/column
            raise _Corrupt(f"tensor {name}.weight ({t.type_name}): {e}") from None
        w = self.f.dense(t)
        if idx is not None:
            w = w[idx]
        return linear_from_dense(w)

    def tokenizer(self, vocab: int) -> tuple[TokenizerSource, str | None, int | None, list[int], bool]:
        g = lambda key, kinds, default=None: self._get(key, kinds, default)  # noqa: E731
        model = g("tokenizer.ggml.model", (str,))
        tokens = g("tokenizer.ggml.tokens", (list,))
        if model is None or tokens is None:
            raise _Corrupt("no tokenizer (metadata tokenizer.ggml.model and tokenizer.ggml.tokens are required)")
        if not all(isinstance(s, str) for s in tokens):
            raise _Corrupt("tokenizer.ggml.tokens is not an array of strings")
        merges = g("tokenizer.ggml.merges", (list,))
        if merges is not None and not all(isinstance(s, str) for s in merges):
            raise _Corrupt("tokenizer.ggml.merges is not an array of strings")
        scores = g("tokenizer.ggml.scores", (np.ndarray,))
        ttypes = g("tokenizer.ggml.token_type", (np.ndarray,))
        n_tok = len(tokens)
        if n_tok > vocab:
            raise _Corrupt(f"tokenizer has {len(tokens)} tokens but token_embd has {vocab} rows")
        for key, arr in (("scores", scores), ("token_type", ttypes)):
            if arr is not None and (arr.ndim != 1 or len(arr) != n_tok):
                raise _Corrupt(f"tokenizer.ggml.{key} has {arr.size} entries for {n_tok} tokens")
        if scores is not None and scores.dtype.kind != "f":
            raise _Corrupt("tokenizer.ggml.scores is not an array of floats")
        if ttypes is not None and ttypes.dtype.kind not in "iu":
            raise _Corrupt("tokenizer.ggml.token_type is not an array of integers")

        def tid(key: str) -> int | None:
            v: int | None = g(f"tokenizer.ggml.{key}", (int,))
            if v is not None and not 0 <= v < n_tok:
                raise _Corrupt(f"tokenizer.ggml.{key} = {v} is not a token id (the vocabulary has {n_tok})")
            return v

        bos, eos, eot, eom, unk = (tid(k) for k in ("bos_token_id", "eos_token_id", "eot_token_id",
                                                    "eom_token_id", "unknown_token_id"))
        pre = g("tokenizer.ggml.pre", (str,))
        # llama.cpp's defaults when the key is absent: SentencePiece ("llama") vocabularies add BOS,
        # and so does the Llama 3 BPE pre-tokenizer; plain GPT-2 BPE does not.
        default_bos = model == "llama" or pre in ("llama3", "llama-v3", "llama-bpe")
        stated_bos = g("tokenizer.ggml.add_bos_token", (bool,))
        stated_eos = g("tokenizer.ggml.add_eos_token", (bool,))
        add_bos = default_bos if stated_bos is None else stated_bos
        template = g("tokenizer.chat_template", (str,))
        try:
            src = make_tokenizer_source(
                tokenizer_json=None, model=model, tokens=tokens, merges=merges,
                scores=None if scores is None else scores.astype(np.float32).tolist(),
                token_types=None if ttypes is None else ttypes.astype(np.int64).tolist(),
                pre=pre, add_space_prefix=bool(g("tokenizer.ggml.add_space_prefix", (bool,), True)),
                bos_id=bos, eos_id=eos, eot_id=eot, unk_id=unk,
                extra_eos_ids=[] if eom is None else [eom],
                add_bos=stated_bos, add_eos=stated_eos,  # None: the tokenizer's own default
            )
        except (TypeError, ValueError) as e:
            raise _Corrupt(f"tokenizer: {e}") from None
        eos_ids = list(dict.fromkeys(i for i in (eos, eot, eom) if i is not None))
        return src, template, bos, eos_ids, add_bos


def load_gguf(path: str | os.PathLike, *, use_mmap: bool = True) -> ModelSpec:
    """Load a GGUF model (bitnet-b1.58, bitnet-25, bitnet, llama or qwen3 architecture).

    With ``use_mmap`` (the default) I2_S weights and F16 embedding / head tables are views of the
    file's memory map: the file must not be modified or truncated while the model is loaded (see
    the module docstring). ``use_mmap=False`` copies them, so the model no longer depends on it."""
    if not isinstance(use_mmap, bool):
        raise TypeError(f"use_mmap must be a bool, got {type(use_mmap).__name__}")
    path = os.fspath(path)
    f = read_gguf(path)
    try:
        return _Loader(f, use_mmap).load()
    except _Corrupt as e:
        raise ModelLoadError(f"{path}: {e}") from None
    except MemoryError:
        raise ModelLoadError(f"{path}: not enough memory to load the model") from None
    finally:
        f.close()
