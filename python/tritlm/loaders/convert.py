"""Hugging Face BitNet folder (or any ModelSpec) -> GGUF file that tritlm and llama.cpp-family
runtimes read.

Architecture names and tensor names follow the readers:

- a relu2 model (BitNet b1.58 2B4T) is written as ``bitnet-b1.58``, bitnet.cpp's name for it
  (its llama.cpp fork builds it with LLM_FFN_RELU_SQR and reads ``output.weight`` when present).
  llama.cpp's own ``bitnet`` architecture cannot express relu2 (its ``hidden_activation`` table has
  no squared ReLU), so writing ``bitnet`` would silently run the wrong activation there;
- a SiLU model with sub-norms is written as ``bitnet`` (llama.cpp's name for 1bitLLM-style
  models; llama.cpp always uses token_embd as the output matrix, so an untied ``output.weight``
  is only read by tritlm);
- a SiLU model without sub-norms is written as ``llama``, with attn_q / attn_k rows permuted the
  way llama.cpp's converter does for its interleaved RoPE.

Tensor names are llama.cpp's (``token_embd.weight``, ``blk.N.attn_q.weight``, ...; the canonical
names plus ``.weight``). Linear weights are stored as ``type``: TQ1_0 / TQ2_0 through
``gguf.quants.quantize`` (for ternary weights times one scale that is exact: the block scale
``d = max|w|`` is the scale and codes are the signs; an all-zero block gets ``d = 0``), or I2_S
(bitnet.cpp, type 36) written byte for byte. A weight the type cannot hold exactly (rows not a
multiple of 256 for TQ, as llama.cpp also falls back; rows not a multiple of 128 or more than
one scale for I2_S; a non-ternary float weight) is written as F16 if that is exact, else BF16 if
exact, else F32, so tritlm reads back the very same weights.

The file is written under a temporary name beside ``out_path`` and renamed over it at the end, so
a failure or Ctrl-C midway leaves no half-written GGUF (and an existing file as it was).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from ..atomic_write import replaced_at_end
from ..errors import InvalidArgumentError, ModelLoadError
from .gguf import GGML_TYPE_I2_S
from .spec import LINEAR_NAMES, ModelSpec, dense_from_linear, validate_spec

if TYPE_CHECKING:  # pragma: no cover - typing only
    from gguf import GGMLQuantizationType, GGUFWriter

__all__ = ["convert", "write_gguf"]

_TYPES = ("tq2_0", "tq1_0", "i2_s")
_OVERRIDES = ("tq2_0", "tq1_0", "i2_s", "q1_0", "q8_0", "f16", "bf16", "f32")


def _gguf_arch(config: dict[str, Any]) -> str:
    if config["arch"] not in ("bitnet-b1.58", "bitnet", "llama"):
        # A Qwen3 model has per-head q/k norms that no architecture written here holds: as llama
        # it would load back without them, a different model.
        raise ValueError(f"cannot write a {config['arch']} model (BitNet and Llama models only)")
    if config["activation"] == "relu2":
        if not config["sub_norms"]:
            raise ValueError("no GGUF architecture holds a relu2 model without sub-norms")
        return "bitnet-b1.58"
    return "bitnet" if config["sub_norms"] else "llama"


def _permute(n: int, n_head: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute as a row index: rows (h, j, i) -> (h, i, j)."""
    hd = n // n_head
    order: np.ndarray = np.arange(n).reshape(n_head, 2, hd // 2).swapaxes(1, 2).reshape(-1)
    return order


def _exact_float_type(w: np.ndarray) -> str:
    """The smallest of f16 / bf16 / f32 that holds every value of ``w`` exactly."""
    w = np.asarray(w, dtype=np.float32)
    with np.errstate(over="ignore"):
        if np.array_equal(w.astype(np.float16).astype(np.float32), w):
            return "f16"
    if not (w.view(np.uint32) & 0xFFFF).any():
        return "bf16"
    return "f32"


def _encode_i2_s(codes: np.ndarray, scale: float) -> np.ndarray:
    """bitnet.cpp I2_S (x86 layout, docs/formats.md): 128-weight blocks of 32 bytes in row-major
    order, byte j holding weights j, j+32, j+64, j+96 in bits 7:6, 5:4, 3:2, 1:0 as w + 1; then
    the f32 scale and 28 bytes of padding."""
    c = (codes.astype(np.int16) + 1).astype(np.uint8).reshape(-1, 4, 32)
    packed = (c[:, 0] << 6) | (c[:, 1] << 4) | (c[:, 2] << 2) | c[:, 3]
    tail = np.zeros(32, dtype=np.uint8)
    tail[:4] = np.frombuffer(np.float32(scale).tobytes(), dtype=np.uint8)
    return np.concatenate([packed.reshape(-1).astype(np.uint8), tail])


def _encode_q1_0(w: np.ndarray) -> np.ndarray:
    """GGUF Q1_0 (llama.cpp's quantizer): 128-weight blocks of fp16 d = mean|x|, then 16 bytes
    with bit j % 8 of byte j / 8 set for x >= 0."""
    n, k = w.shape
    b = w.reshape(-1, 128)
    d = np.abs(b).mean(axis=1).astype(np.float16)
    bits = (b >= 0).astype(np.uint8).reshape(-1, 16, 8)
    qs = (bits << np.arange(8, dtype=np.uint8)).sum(axis=2).astype(np.uint8)
    out = np.concatenate([d.view(np.uint8).reshape(-1, 2), qs], axis=1)
    return out.reshape(n, k // 128 * 18)


def _single_scale_ternary(w: np.ndarray) -> tuple[np.ndarray, float] | None:
    """(codes int8, s) if every value of w is 0 or +-s, else None."""
    a = np.abs(w)
    s = a.max() if a.size else 0.0
    nz = a != 0
    if not (nz <= (a == s)).all():
        return None
    return np.sign(w).astype(np.int8), float(s)


def _check_destination(out_path: str) -> None:
    """Refuse a destination that cannot become a GGUF file, before any work is done."""
    if os.path.isdir(out_path):
        raise InvalidArgumentError(f"{out_path}: is a folder; name the GGUF file to write", param="out_path")
    if os.path.exists(out_path) and not os.path.isfile(out_path):
        # Renaming over a device or a pipe would replace it rather than write into it.
        raise InvalidArgumentError(f"{out_path}: not a regular file", param="out_path")
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise InvalidArgumentError(f"{out_path}: no such folder {folder}", param="out_path")


def _add_quantized(writer: GGUFWriter, name: str, w: np.ndarray, qtype: GGMLQuantizationType) -> None:
    from gguf import quants

    writer.add_tensor(name, quants.quantize(w, qtype), raw_dtype=qtype)


def _add_float(writer: GGUFWriter, name: str, w: np.ndarray, kind: str) -> str:
    from gguf import GGMLQuantizationType as T

    w = np.ascontiguousarray(w, dtype=np.float32)
    if kind == "f16":
        writer.add_tensor(name, w.astype(np.float16))
        return "F16"
    if kind == "bf16":
        _add_quantized(writer, name, w, T.BF16)
        return "BF16"
    writer.add_tensor(name, w)
    return "F32"


def _add_linear(writer: GGUFWriter, name: str, w: np.ndarray, kind: str) -> str:
    """Write one linear (dense f32 [n, k]) as ``kind``, falling back to an exact float type."""
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    n, k = w.shape
    if kind in ("tq1_0", "tq2_0") and k % 256 == 0:
        qt = T.TQ1_0 if kind == "tq1_0" else T.TQ2_0
        q = quants.quantize(w, qt)
        if np.array_equal(quants.dequantize(q, qt), w):
            writer.add_tensor(name, q, raw_dtype=qt)
            return qt.name
    elif kind == "i2_s" and k % 128 == 0:
        t = _single_scale_ternary(w)
        if t is not None:
            # GGUFWriter derives a quantized tensor's element shape from its byte shape through
            # GGML_QUANT_SIZES, which has no entry for bitnet.cpp's type 36; for a non-uint8 array
            # it takes the shape given instead. So the bytes go in as int8 with the element shape
            # [n, k] and the type number, which writes exactly the tensor info bitnet.cpp reads.
            data = _encode_i2_s(*t).view(np.int8)
            writer.add_tensor(name, data, raw_shape=(n, k), raw_dtype=GGML_TYPE_I2_S)  # type: ignore[arg-type]  # 36: not in the enum, written as given
            return "I2_S"
    elif kind == "q1_0" and k % 128 == 0:
        writer.add_tensor(name, _encode_q1_0(w), raw_dtype=T.Q1_0)
        return "Q1_0"
    elif kind == "q8_0" and k % 32 == 0:
        _add_quantized(writer, name, w, T.Q8_0)
        return "Q8_0"
    elif kind in ("f16", "bf16", "f32"):
        return _add_float(writer, name, w, kind)
    return _add_float(writer, name, w, _exact_float_type(w))


def _tokenizer_meta(spec: ModelSpec) -> dict[str, Any]:
    """tokenizer.ggml.* values from the spec's tokenizer source."""
    from .hf import hf_vocab

    src = spec.tokenizer
    vocab = spec.config["vocab_size"]
    if src.tokenizer_json:
        v = hf_vocab(json.loads(src.tokenizer_json), vocab)
        return {"model": "gpt2", "pre": v["pre"], "tokens": v["tokens"], "token_types": v["token_types"],
                "merges": v["merges"], "scores": None}
    if src.tokens:
        return {"model": src.model or "gpt2", "pre": src.pre, "tokens": list(src.tokens),
                "token_types": src.token_types, "merges": src.merges, "scores": src.scores}
    raise ValueError("the model has no tokenizer to write")


def write_gguf(
    spec: ModelSpec,
    out_path: str | os.PathLike,
    type: str = "tq2_0",
    *,
    tensor_types: dict[str, str] | None = None,
    name: str | None = None,
) -> str:
    """Write ``spec`` as a GGUF file. ``type`` is the linear weight type ("tq2_0", "tq1_0",
    "i2_s"); ``tensor_types`` overrides it per canonical tensor name ("tq2_0", "tq1_0", "i2_s",
    "q1_0", "q8_0", "f16", "bf16", "f32"; for token_embd/output/norms only the last four)."""
    import gguf
    from gguf import GGMLQuantizationType as T

    if type not in _TYPES:
        raise ValueError(f"type must be one of {_TYPES}, got {type!r}")
    tensor_types = dict(tensor_types or {})
    for k, v in tensor_types.items():
        if v not in _OVERRIDES or k not in spec.weights:
            raise ValueError(f"bad tensor type override {k!r}: {v!r}")
    try:
        validate_spec(spec)
    except ModelLoadError as e:
        raise ValueError(f"not a valid model spec: {e}") from None
    cfg = spec.config
    arch = _gguf_arch(cfg)
    out_path = os.fspath(out_path)
    _check_destination(out_path)
    tok = _tokenizer_meta(spec)

    with replaced_at_end(out_path) as partial, contextlib.closing(gguf.GGUFWriter(partial, arch)) as w:
        w.add_name(name or os.path.basename(os.path.normpath(spec.path)) or "model")
        if type in ("tq1_0", "tq2_0"):
            w.add_file_type(gguf.LlamaFileType.MOSTLY_TQ1_0 if type == "tq1_0" else gguf.LlamaFileType.MOSTLY_TQ2_0)
        w.add_vocab_size(cfg["vocab_size"])
        w.add_context_length(int(cfg.get("max_position") or 4096))
        w.add_embedding_length(cfg["dim"])
        w.add_block_count(cfg["n_layers"])
        w.add_feed_forward_length(cfg["ffn_dim"])
        w.add_head_count(cfg["n_heads"])
        w.add_head_count_kv(cfg["n_kv_heads"])
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_rope_dimension_count(cfg["head_dim"])
        w.add_rope_freq_base(float(cfg["rope_theta"]))
        w.add_layer_norm_rms_eps(float(cfg["norm_eps"]))
        w.add_string(f"{arch}.hidden_activation", cfg["activation"])

        w.add_tokenizer_model(tok["model"])
        if tok["pre"]:
            w.add_tokenizer_pre(tok["pre"])
        w.add_token_list(tok["tokens"])
        if tok["token_types"] is not None:
            w.add_token_types([int(t) for t in tok["token_types"]])
        if tok["scores"] is not None:
            w.add_token_scores([float(s) for s in tok["scores"]])
        if tok["merges"]:
            w.add_token_merges(tok["merges"])
        if spec.bos_id is not None:
            w.add_bos_token_id(spec.bos_id)
        eos = list(spec.eos_ids)
        if eos:
            w.add_eos_token_id(eos[0])
        if len(eos) > 1:
            w.add_eot_token_id(eos[1])
        if len(eos) > 2:
            w.add_eom_token_id(eos[2])
        unk = getattr(spec.tokenizer, "unk_id", None)
        if unk is not None:
            w.add_unk_token_id(unk)
        w.add_add_bos_token(bool(spec.add_bos))
        w.add_add_eos_token(bool(getattr(spec.tokenizer, "add_eos", None)))
        if spec.chat_template:
            w.add_chat_template(spec.chat_template)

        def emb(name: str) -> None:
            a = spec.weights[name]
            kind = tensor_types.get(name)
            if not isinstance(a, np.ndarray):  # a packed head (a GGUF Q1_0 output) stays packed
                default = "q1_0" if a.format == "binary" else type
                _add_linear(w, name + ".weight", dense_from_linear(a), kind or default)
                return
            if kind is None:
                kind = "f16" if a.dtype == np.float16 else _exact_float_type(a)
            if kind == "q8_0":
                _add_quantized(w, name + ".weight", np.asarray(a, dtype=np.float32), T.Q8_0)
            else:
                _add_float(w, name + ".weight", a, kind)

        emb("token_embd")
        for i in range(cfg["n_layers"]):
            p = f"blk.{i}."
            for short in ("attn_norm", "attn_sub_norm", "ffn_norm", "ffn_sub_norm"):
                if p + short in spec.weights:
                    norm = dense_from_linear(spec.weights[p + short])  # a float vector: validate_spec
                    _add_float(w, p + short + ".weight", norm, tensor_types.get(p + short, "f32"))
            for short in LINEAR_NAMES:
                dense = dense_from_linear(spec.weights[p + short])
                if arch == "llama" and short in ("attn_q", "attn_k"):
                    dense = dense[_permute(dense.shape[0], cfg["n_heads"] if short == "attn_q" else cfg["n_kv_heads"])]
                _add_linear(w, p + short + ".weight", dense, tensor_types.get(p + short, type))
        _add_float(w, "output_norm.weight", dense_from_linear(spec.weights["output_norm"]),
                   tensor_types.get("output_norm", "f32"))
        if "output" in spec.weights:
            emb("output")

        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    return out_path


def convert(hf_folder: str | os.PathLike, out_path: str | os.PathLike, type: str = "tq2_0", *,
            tensor_types: dict[str, str] | None = None) -> str:
    """Convert a Hugging Face BitNet folder to a GGUF file (see the module docstring)."""
    from .hf import load_hf

    if type not in _TYPES:
        raise ValueError(f"type must be one of {_TYPES}, got {type!r}")
    _check_destination(os.fspath(out_path))  # before the minutes a large model takes to load
    if os.path.isfile(hf_folder):
        raise ModelLoadError(f"{os.fspath(hf_folder)}: a file; convert reads a Hugging Face BitNet folder "
                             "(a GGUF file is converted already)")
    spec = load_hf(hf_folder)
    try:
        return write_gguf(spec, out_path, type, tensor_types=tensor_types)
    except ValueError as e:
        raise ModelLoadError(f"{os.fspath(hf_folder)}: cannot convert: {e}") from None
