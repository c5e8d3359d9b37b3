"""Hugging Face BitNet folders (config.json, *.safetensors, tokenizer files) -> ModelSpec.

Weights follow transformers' own semantics (transformers/integrations/bitnet.py), selected by the
checkpoint's ``quantization_config``:

- ``linear_class="bitlinear"`` (microsoft/bitnet-b1.58-2B-4T; both modes): ``weight`` is uint8
  ``[out/4, in]`` holding four ternary rows a byte, and ``BitLinear`` *divides* the output by
  ``weight_scale``;
- ``linear_class="autobitlinear"``, ``quantization_mode="online"``: ``weight`` is the float master
  weight, quantized on every forward by ``WeightQuant``: ``s = 1 / max(mean|W|, 1e-5)`` (f32),
  ``W_q = clamp(round(W * s), -1, 1) / s``, cast back to the weight's dtype;
- ``linear_class="autobitlinear"``, ``quantization_mode="offline"``: ``weight`` is either packed
  uint8 (unpacked to ternary values by ``BitNetDeserialize``) or a float weight used as is, and the
  output is *multiplied* by ``weight_scale``.

Modules listed in ``modules_to_not_convert`` (and ``lm_head``) are plain float linears.
"""

from __future__ import annotations

import json
import mmap
import os
import re
from typing import Any, BinaryIO

import numpy as np

from ..errors import ModelLoadError
from .spec import (
    LINEAR_NAMES,
    ModelSpec,
    Weight,
    check_config,
    expected_shapes,
    linear_from_dense,
    make_tokenizer_source,
    non_finite,
    validate_spec,
)

__all__ = ["SafetensorsFile", "hf_vocab", "load_hf", "read_tokenizer_files"]

MAX_HEADER = 100 << 20  # the safetensors library refuses headers above 100 MB too

# safetensors dtype -> (numpy dtype of the stored bytes, element size)
_ST_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "u1",
}

_HF_LINEARS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_HF_NORMS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm",
}
_ACTIVATIONS = {"relu2": "relu2", "silu": "silu", "swish": "silu"}


class _Bad(Exception):
    """Internal: a problem in a file of the folder; carries the file's path."""

    def __init__(self, path: str, msg: str):
        super().__init__(f"{path}: {msg}")


class SafetensorsFile:
    """One .safetensors file: the JSON header, and tensors copied out of a read-only memory map.

    The header is parsed here (8-byte little-endian length, JSON, then raw little-endian data)
    instead of with the ``safetensors`` package because the package's numpy API cannot return
    BF16 tensors (numpy has no bfloat16), the dtype BitNet checkpoints are stored in; reading the
    header ourselves serves every dtype the same way and checks every offset against the file.
    """

    def __init__(self, path: str):
        self.path = path
        self._file: BinaryIO | None = None
        self._map: mmap.mmap | None = None
        self._file = open(path, "rb")
        try:
            size = os.fstat(self._file.fileno()).st_size
            if size < 8:
                raise _Bad(path, f"file is {size} bytes, too short for a safetensors header")
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            n = int.from_bytes(self._map[:8], "little")
            if n > min(MAX_HEADER, size - 8):
                raise _Bad(path, f"header length {n} does not fit the file ({size} bytes)")
            try:
                header = json.loads(bytes(self._map[8:8 + n]).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise _Bad(path, f"header is not valid JSON ({e})") from None
            if not isinstance(header, dict):
                raise _Bad(path, "header is not a JSON object")
            self.metadata = header.pop("__metadata__", None)
            self.data_start = 8 + n
            data_len = size - self.data_start
            self.tensors: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
            for name, info in header.items():
                try:
                    dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
                    shape = tuple(shape)
                    ok = (isinstance(dtype, str) and all(type(d) is int and d >= 0 for d in shape)
                          and type(begin) is int and type(end) is int)
                except (TypeError, KeyError, ValueError):
                    ok = False
                if not ok:
                    raise _Bad(path, f"malformed header entry for {name!r}")
                if dtype not in _ST_DTYPES:
                    raise _Bad(path, f"tensor {name!r} has unsupported dtype {dtype}")
                count = 1
                for d in shape:
                    count *= d
                nbytes = count * np.dtype(_ST_DTYPES[dtype]).itemsize
                if not 0 <= begin <= end <= data_len or end - begin != nbytes:
                    raise _Bad(path, f"tensor {name!r}: data offsets {begin}..{end} do not match its "
                                     f"shape {list(shape)} ({dtype}) within {data_len} data bytes")
                self.tensors[name] = (dtype, shape, self.data_start + begin, nbytes)
        except BaseException:
            self.close()
            raise

    def get(self, name: str) -> tuple[np.ndarray, str]:
        """(array, safetensors dtype). BF16 comes back as float32 (exact); others as stored."""
        dtype, shape, offset, nbytes = self.tensors[name]
        dt = np.dtype(_ST_DTYPES[dtype])
        if self._map is None:
            raise ValueError(f"{self.path}: the safetensors file is closed")
        raw = np.frombuffer(self._map, dtype=dt, count=nbytes // dt.itemsize, offset=offset)
        if dtype == "BF16":
            # numpy has no bfloat16. A bf16 value is the upper 16 bits of the float32 with the same
            # value, so shifting the bits into the top half of a uint32 and viewing it as float32
            # converts exactly (NaN and infinity included).
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            arr = raw.copy()
        return arr.reshape(shape), dtype

    def close(self) -> None:
        m = self._map
        if m is not None:
            try:
                m.close()
            except BufferError:
                pass
            self._map = None
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_json(path: str, required: bool = False) -> Any:
    if not os.path.isfile(path):
        if required:
            raise _Bad(path, "file not found")
        return None
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Bad(path, f"not valid JSON ({e})") from None


def _open_shards(folder: str) -> list[SafetensorsFile]:
    index_path = os.path.join(folder, "model.safetensors.index.json")
    index = _read_json(index_path)
    if index is not None:
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise _Bad(index_path, "no weight_map of tensor name -> file name")
        names = list(dict.fromkeys(wm.values()))
        for n in names:
            if os.path.basename(n) != n or n in ("", ".", ".."):
                raise _Bad(index_path, f"shard name {n!r} is not a file name in the folder")
    elif os.path.isfile(os.path.join(folder, "model.safetensors")):
        names = ["model.safetensors"]
    else:
        names = sorted(n for n in os.listdir(folder) if re.fullmatch(r"model-\d+-of-\d+\.safetensors", n))
        if not names:
            raise _Bad(folder, "no model.safetensors (or sharded model-*-of-*.safetensors with an index)")
    files = []
    try:
        for n in names:
            p = os.path.join(folder, n)
            if not os.path.isfile(p):
                raise _Bad(p, "shard listed in the index is missing")
            files.append(SafetensorsFile(p))
    except BaseException:
        for f in files:
            f.close()
        raise
    return files


def _should_convert(module: str, patterns: list[str] | None) -> bool:
    """transformers.quantizers.quantizers_utils.should_convert_module."""
    if patterns is None:
        return True
    boundary = r"(?:(?<=\.)|(?=\.|$))"
    for key in patterns:
        if module.endswith(key):
            return False
        try:
            if re.match(rf"(?:{key}){boundary}", module):
                return False
        except re.error:
            if module == key or module.startswith(key + "."):
                return False
    return True


def _unpack_hf(packed: np.ndarray, where: str) -> np.ndarray:
    """transformers' unpack_weights: uint8 [N/4, K] -> int8 [N, K] (rows i*N/4.. from bits 2i)."""
    parts = [((packed >> (2 * i)) & 3) for i in range(4)]
    codes = np.concatenate(parts, axis=0)
    if (codes == 3).any():
        r, c = np.argwhere(codes == 3)[0]
        raise ModelLoadError(f"{where}: invalid ternary code 3 at row {r}, column {c}")
    return codes.astype(np.int8) - 1


def _to_dtype_f32(x: np.float32, dtype: str) -> np.float32:
    """Round an f32 value to the checkpoint's dtype (as ``tensor.to(dtype)``), back as f32."""
    if dtype == "BF16":
        b = np.array([x], dtype=np.float32).view(np.uint32)
        rounded = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000  # round to nearest even
        out: np.float32 = rounded.view(np.float32)[0]
        return out
    if dtype == "F16":
        return np.float32(np.float16(x))
    return np.float32(x)


def ternarize_absmean(w: np.ndarray, dtype: str) -> tuple[np.ndarray, np.float32]:
    """transformers' WeightQuant (autobitlinear, online): codes int8 and the f32 multiplier.

    ``scale = 1 / clamp(mean|W|, min=1e-5)``, ``codes = clamp(round(W * scale), -1, 1)`` in f32
    (np.round rounds half to even, as torch.round), and the quantized weight ``codes / scale`` cast
    to the checkpoint's dtype, so the multiplier is ``dtype(1 / scale)``. The mean is computed in
    float64 and rounded once to f32; torch sums in f32 in its own order, so the two can differ in
    the last bit of the mean (which moves a weight across a rounding boundary only if it lies
    within about one f32 ulp of it).
    """
    w = np.asarray(w, dtype=np.float32)
    mean = np.float32(np.abs(w).mean(dtype=np.float64))
    mean = max(mean, np.float32(1e-5))
    scale = np.float32(1) / mean
    codes = np.clip(np.round(w * scale), -1, 1).astype(np.int8)
    return codes, _to_dtype_f32(np.float32(1) / scale, dtype)


def _f32(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return v  # check_config reports it
    with np.errstate(over="ignore"):
        return float(np.float32(v))


class _HF:
    def __init__(self, folder: str):
        self.folder = folder
        self.files: list[SafetensorsFile] = []
        self.where: dict[str, SafetensorsFile] = {}
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.where

    def get(self, name: str) -> tuple[np.ndarray, str]:
        f = self.where.get(name)
        if f is None:
            raise _Bad(self.folder, f"missing tensor {name}")
        self.used.add(name)
        return f.get(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.where[name].tensors[name][1]

    def dtype(self, name: str) -> str:
        return self.where[name].tensors[name][0]

    def load(self) -> ModelSpec:
        folder = self.folder
        cfg_path = os.path.join(folder, "config.json")
        cfg = _read_json(cfg_path, required=True)
        if not isinstance(cfg, dict):
            raise _Bad(cfg_path, "not a JSON object")
        config, quant, tied = self.config(cfg, cfg_path)
        self.files = _open_shards(folder)
        for f in self.files:
            for name in f.tensors:
                if name in self.where:
                    raise _Bad(f.path, f"tensor {name} is also in {self.where[name].path}")
                self.where[name] = f

        shapes = expected_shapes(config)
        weights: dict[str, Weight] = {}
        types: dict[str, str] = {}
        emb_name = "model.embed_tokens.weight"
        weights["token_embd"], types["token_embd"] = self.embedding(emb_name, shapes["token_embd"])
        if not tied:
            weights["output"], types["output"] = self.embedding("lm_head.weight", shapes["token_embd"])
        elif self.has("lm_head.weight"):
            self.used.add("lm_head.weight")  # tied: transformers uses the embedding
        weights["output_norm"], types["output_norm"] = self.norm("model.norm.weight", shapes["output_norm"])
        for i in range(config["n_layers"]):
            for short, hf in _HF_NORMS.items():
                name = f"blk.{i}.{short}"
                if name in shapes:
                    weights[name], types[name] = self.norm(f"model.layers.{i}.{hf}.weight", shapes[name])
            for short in LINEAR_NAMES:
                name = f"blk.{i}.{short}"
                weights[name], types[name] = self.linear(f"model.layers.{i}.{_HF_LINEARS[short]}", shapes[name], quant)
        extra = [n for n in self.where if n not in self.used and not n.endswith("rotary_emb.inv_freq")]
        if extra:
            raise _Bad(folder, f"unexpected tensors (unsupported model variant?): {sorted(extra)[:5]}")

        tok = read_tokenizer_files(folder, cfg, config["vocab_size"])
        spec = ModelSpec(
            path=folder, config=config, weights=weights, tensor_types=types, tokenizer=tok["source"],
            chat_template=tok["chat_template"], bos_id=tok["bos_id"], eos_ids=tok["eos_ids"],
            add_bos=tok["add_bos"],
        )
        validate_spec(spec)
        return spec

    def config(self, cfg: dict, where: str) -> tuple[dict, dict | None, bool]:
        """The engine config, the BitNet quantization settings (None without them), and whether
        the head is tied to the embedding. Every field is type-checked: JSON written by hand or
        by other tools gives numbers as strings and booleans as "false"."""
        model_type = cfg.get("model_type")
        if model_type not in ("bitnet", "llama"):
            raise _Bad(where, f"model_type {model_type!r} is not supported (bitnet, or llama with BitNet quantization)")

        def size(key: str, default: int | None = None) -> int:
            v = cfg.get(key)
            if v is None and default is not None:
                return default
            if v is None:
                raise _Bad(where, f"missing {key}")
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise _Bad(where, f"{key} must be a positive integer, got {v!r}")
            return v

        def number(key: str, default: float, obj: dict = cfg) -> Any:
            v = obj.get(key)
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _Bad(where, f"{key} must be a number, got {v!r}")
            return v

        def flag(key: str, default: bool, obj: dict = cfg, what: str = "") -> bool:
            v = obj.get(key)
            if v is None:
                return default
            if not isinstance(v, bool):
                raise _Bad(where, f"{what}{key} must be true or false, got {v!r}")
            return v

        def section(key: str) -> dict:
            v = cfg.get(key)
            if v is None:
                return {}
            if not isinstance(v, dict):
                raise _Bad(where, f"{key} must be an object, got {v!r}")
            return v

        dim, n_heads = size("hidden_size"), size("num_attention_heads")
        n_kv = size("num_key_value_heads", n_heads)
        if cfg.get("head_dim") is None and dim % n_heads:
            raise _Bad(where, f"hidden_size {dim} is not a multiple of num_attention_heads {n_heads}")
        head_dim = size("head_dim", dim // n_heads)
        rope, scaling = section("rope_parameters"), section("rope_scaling")
        theta = number("rope_theta", number("rope_theta", 500000.0 if model_type == "bitnet" else 10000.0, rope))
        for params in (rope, scaling):  # transformers 5 names it rope_parameters, 4 rope_scaling
            rtype = params.get("rope_type", params.get("type"))
            if rtype not in (None, "default") and not (rtype == "linear" and params.get("factor", 1.0) == 1.0):
                raise _Bad(where, f"RoPE scaling {rtype!r} is not supported")
        act = cfg.get("hidden_act", "relu2" if model_type == "bitnet" else "silu")
        if not isinstance(act, str) or act not in _ACTIVATIONS:
            raise _Bad(where, f"hidden_act {act!r} is not supported (relu2 or silu)")
        for key in ("attention_bias", "mlp_bias"):
            if flag(key, False):
                raise _Bad(where, f"{key} is set; linear biases are not supported")
        config = {
            "arch": "bitnet-b1.58" if model_type == "bitnet" else "llama",
            "n_layers": size("num_hidden_layers"), "dim": dim, "n_heads": n_heads, "n_kv_heads": n_kv,
            "head_dim": head_dim, "ffn_dim": size("intermediate_size"), "vocab_size": size("vocab_size"),
            # as f32, the precision the engine computes in and GGUF stores (so both loaders agree)
            "rope_theta": _f32(theta),
            "norm_eps": _f32(number("rms_norm_eps", 1e-5 if model_type == "bitnet" else 1e-6)),
            "activation": _ACTIVATIONS[act], "sub_norms": model_type == "bitnet",
        }
        if model_type == "bitnet" and config["activation"] == "silu":
            config["arch"] = "bitnet"
        if cfg.get("max_position_embeddings") is not None:
            config["max_position"] = size("max_position_embeddings")
        check_config(config, where)
        tied = flag("tie_word_embeddings", False)

        quant = cfg.get("quantization_config")
        if quant is not None:
            if not isinstance(quant, dict) or quant.get("quant_method") != "bitnet":
                method = quant.get("quant_method") if isinstance(quant, dict) else quant
                raise _Bad(where, f"quantization method {method!r} is not supported (bitnet)")
            quant = {
                "linear_class": quant.get("linear_class") or "bitlinear",
                "mode": quant.get("quantization_mode") or "offline",
                "skip": quant.get("modules_to_not_convert"),
                "rms_norm": flag("use_rms_norm", False, quant, "quantization_config."),
            }
            if quant["linear_class"] not in ("bitlinear", "autobitlinear"):
                raise _Bad(where, f"linear_class {quant['linear_class']!r} is not supported")
            if quant["mode"] not in ("online", "offline"):
                raise _Bad(where, f"quantization_mode {quant['mode']!r} is not supported")
            if quant["rms_norm"]:
                raise _Bad(where, "use_rms_norm (an RMSNorm inside every BitLinear) is not supported")
            if quant["skip"] is not None and not (isinstance(quant["skip"], list) and all(isinstance(s, str) for s in quant["skip"])):
                raise _Bad(where, "modules_to_not_convert is not a list of strings")
        elif model_type == "llama":
            raise _Bad(where, "a llama model without a BitNet quantization_config is not a ternary model")
        return config, quant, tied

    def _float(self, name: str) -> tuple[np.ndarray, str]:
        arr, dt = self.get(name)
        if dt not in ("F32", "F16", "BF16", "F64"):
            raise _Bad(self.where[name].path, f"tensor {name} has dtype {dt}, expected a float type")
        bad = non_finite(arr)
        if bad is not None:
            raise _Bad(self.where[name].path, f"tensor {name} ({dt}) has a non-finite value: {bad}")
        return arr, dt

    def _check(self, name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
        if tuple(arr.shape) != tuple(shape):
            raise _Bad(self.where[name].path, f"tensor {name} has shape {list(arr.shape)}, expected {list(shape)}")

    def embedding(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
        if not self.has(name):
            raise _Bad(self.folder, f"missing tensor {name}")
        if self.shape(name) != tuple(shape):
            raise _Bad(self.where[name].path, f"tensor {name} has shape {list(self.shape(name))}, expected {list(shape)}")
        arr, dt = self._float(name)
        if dt != "F16":
            arr = arr.astype(np.float32, copy=False)
        return arr, dt.lower()

    def norm(self, name: str, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
        if not self.has(name):
            raise _Bad(self.folder, f"missing tensor {name}")
        arr, dt = self._float(name)
        self._check(name, arr, shape)
        return arr.astype(np.float32, copy=False), dt.lower()

    def linear(self, module: str, shape: tuple[int, ...], quant: dict[str, Any] | None) -> tuple[Weight, str]:
        from .. import kernels

        n, k = shape
        wname, sname = module + ".weight", module + ".weight_scale"
        if not self.has(wname):
            raise _Bad(self.folder, f"missing tensor {wname}")
        path = self.where[wname].path
        dt = self.dtype(wname)
        converted = quant is not None and _should_convert(module, quant["skip"])
        if quant is None or not converted:  # a plain nn.Linear (or a bitnet model without quantization_config)
            w, _ = self._float(wname)
            self._check(wname, w, shape)
            if quant is not None:
                return w.astype(np.float32), dt.lower()
            return linear_from_dense(w), dt.lower()

        def weight_scale(default: float | None) -> np.float32:
            if not self.has(sname):
                if default is None:
                    raise _Bad(path, f"missing tensor {sname}")
                return np.float32(default)
            s, _ = self._float(sname)
            if s.size != 1:
                raise _Bad(self.where[sname].path, f"tensor {sname} has {s.size} elements, expected 1")
            return np.float32(s.reshape(-1)[0])

        cls, mode = quant["linear_class"], quant["mode"]
        packed = dt == "U8" and len(self.shape(wname)) == 2 and self.shape(wname)[0] * 4 == n
        if cls == "bitlinear" or (packed and mode == "offline"):
            if not packed:
                raise _Bad(path, f"tensor {wname} is {dt} {list(self.shape(wname))}; a {cls} layer "
                                 f"stores packed uint8 weights of shape [{n // 4 if n % 4 == 0 else n / 4}, {k}]")
            p, _ = self.get(wname)
            if p.shape[1] != k:
                raise _Bad(path, f"tensor {wname} has shape {list(p.shape)}, expected [{n // 4}, {k}]")
            ws = weight_scale(None if cls == "bitlinear" else 1.0)
            try:
                if k % 128 == 0:
                    return kernels.repack_hf_packed(p, ws, linear_class=cls), "hf_packed"
                mult = kernels.hf_weight_multiplier(ws, cls)
            except ValueError as e:
                raise _Bad(path, f"tensor {wname}: {e}") from None
            return (_unpack_hf(p, f"{path}: {wname}").astype(np.float32) * mult), "hf_packed"
        if dt == "U8":
            raise _Bad(path, f"tensor {wname} is packed uint8, but {cls} ({mode}) expects float master weights")
        w, _ = self._float(wname)
        self._check(wname, w, shape)
        if mode == "online":
            if self.has(sname):
                self.used.add(sname)  # not used by AutoBitLinear in online mode
            codes, mult = ternarize_absmean(w, dt)
            if k % 128:
                return codes.astype(np.float32) * mult, dt.lower()
            return kernels.pack_ternary(codes, float(mult)), dt.lower()
        # autobitlinear offline with a float weight: y = (x_q @ W^T) * weight_scale
        try:
            mult = kernels.hf_weight_multiplier(weight_scale(1.0), cls)
        except ValueError as e:
            raise _Bad(path, f"tensor {sname}: {e}") from None
        return linear_from_dense(w.astype(np.float32) * mult, allow_binary=False), dt.lower()


# ----------------------------------------------------------------------------------------------
# tokenizer files


def _bpe_model(tj: Any) -> dict:
    """tokenizer.json's model, which must be BPE (byte-level, or SentencePiece-style with byte
    fallback): Unigram and WordPiece vocabularies are lists or lack merges, and tritlm does not run
    them. Files written before the "type" tag existed are recognized by their merges."""
    model = tj.get("model") if isinstance(tj, dict) else None
    if not isinstance(model, dict):
        raise ValueError("tokenizer has no model object")
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise ValueError(f"tokenizer model type {kind!r} is not supported (tritlm reads BPE tokenizers)")
    if not isinstance(model.get("vocab"), dict):
        raise ValueError("tokenizer's BPE model has no vocab object")
    return model


def hf_vocab(tj: dict, vocab_size: int | None = None) -> dict:
    """Tokens by id, token types (llama.cpp's: 1 normal, 3 control, 4 user-defined, 5 unused),
    merges ("a b") and the llama.cpp pre-tokenizer name of a byte-level BPE tokenizer.json."""
    model = _bpe_model(tj)
    added = [a for a in tj.get("added_tokens") or [] if isinstance(a, dict)]
    ids = [i for i in model["vocab"].values() if isinstance(i, int)] + [a["id"] for a in added if isinstance(a.get("id"), int)]
    n = max(ids, default=-1) + 1
    if vocab_size is not None:
        if n > vocab_size:
            raise ValueError(f"tokenizer.json has token ids up to {n - 1} but the model's vocabulary has {vocab_size}")
        n = vocab_size
    tokens: list[str | None] = [None] * n
    types = [1] * n
    for tok, i in model["vocab"].items():
        if isinstance(i, int) and 0 <= i < n:
            tokens[i] = tok
    for a in added:
        i = a.get("id")
        if isinstance(i, int) and 0 <= i < n and isinstance(a.get("content"), str):
            tokens[i] = a["content"]
            types[i] = 3 if a.get("special") else 4
    for i, t in enumerate(tokens):
        if t is None:  # holes (a model vocabulary larger than the tokenizer): llama.cpp pads like this
            tokens[i] = f"[PAD{i}]"
            types[i] = 5
    merges = []
    for m in model.get("merges") or []:
        if isinstance(m, str):
            merges.append(m)
        elif isinstance(m, (list, tuple)) and len(m) == 2:
            merges.append(f"{m[0]} {m[1]}")
    return {"tokens": tokens, "token_types": types, "merges": merges, "pre": _pre_name(tj.get("pre_tokenizer"))}


_LLAMA3_SPLIT = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"


def _pre_name(pre: Any) -> str:
    """llama.cpp's tokenizer.ggml.pre for a tokenizer.json pre_tokenizer: "llama-bpe" for Llama 3's
    split regex, "gpt-2" for plain GPT-2 byte-level, else "default"."""
    if not isinstance(pre, dict):
        return "default"
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if pre.get("type") == "Sequence":
        for p in pre.get("pretokenizers") or []:
            if isinstance(p, dict) and p.get("type") == "Split":
                pat = p.get("pattern")
                if isinstance(pat, dict) and pat.get("Regex") == _LLAMA3_SPLIT:
                    return "llama-bpe"
    return "default"


def _template_bos(post: Any, ids: dict[str, int]) -> int | None:
    """The BOS a tokenizer.json post-processor prepends to a single sequence, if any."""
    if not isinstance(post, dict):
        return None
    if post.get("type") == "Sequence":
        for p in post.get("processors") or []:
            b = _template_bos(p, ids)
            if b is not None:
                return b
        return None
    if post.get("type") == "TemplateProcessing":
        single = post.get("single") or []
        if single and isinstance(single[0], dict) and "SpecialToken" in single[0]:
            tok = single[0]["SpecialToken"].get("id") if isinstance(single[0]["SpecialToken"], dict) else None
            return ids.get(tok) if isinstance(tok, str) else None
    return None


def read_tokenizer_files(folder: str, cfg: dict, vocab_size: int) -> dict:
    """tokenizer.json, tokenizer_config.json, generation_config.json and chat templates."""
    tj_path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(tj_path):
        raise _Bad(folder, "no tokenizer.json (tritlm reads Hugging Face fast tokenizers)")
    with open(tj_path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
        tj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Bad(tj_path, f"not valid JSON ({e})") from None
    try:
        model = _bpe_model(tj)
    except ValueError as e:
        raise _Bad(tj_path, str(e)) from None
    ids = {t: i for t, i in model["vocab"].items() if isinstance(i, int)}
    for a in tj.get("added_tokens") or []:
        if isinstance(a, dict) and isinstance(a.get("content"), str) and isinstance(a.get("id"), int):
            ids[a["content"]] = a["id"]
    bad = [i for i in ids.values() if not 0 <= i < vocab_size]
    if bad:
        raise _Bad(tj_path, f"token id {bad[0]} is outside the model's vocabulary ({vocab_size})")

    tc_path = os.path.join(folder, "tokenizer_config.json")
    tc = _read_json(tc_path) or {}
    gc_path = os.path.join(folder, "generation_config.json")
    gc = _read_json(gc_path) or {}
    if not isinstance(tc, dict) or not isinstance(gc, dict):
        raise _Bad(folder, "tokenizer_config.json / generation_config.json is not a JSON object")

    def check_id(v: Any, where: str) -> int | None:
        return None if v is None else required_id(v, where)

    def required_id(v: Any, where: str) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < vocab_size:
            raise _Bad(where, f"token id {v!r} is not in the vocabulary ({vocab_size})")
        return v

    def tok_id(key: str) -> int | None:
        """tokenizer_config.json's bos_token / eos_token: a token's text, or an AddedToken
        object holding it."""
        v = tc.get(key)
        if v is None:
            return None
        s = v.get("content") if isinstance(v, dict) else v
        if not isinstance(s, str):
            raise _Bad(tc_path, f"{key} must be a token's text or an object with its content, got {v!r}")
        if s not in ids:
            raise _Bad(tc_path, f"{key} {s!r} is not in tokenizer.json")
        return ids[s]

    def flag(key: str) -> bool | None:
        v = tc.get(key)
        if v is not None and not isinstance(v, bool):
            raise _Bad(tc_path, f"{key} must be true or false, got {v!r}")
        return v

    def id_list(v: Any, where: str) -> list[int]:
        if isinstance(v, list):
            return [required_id(x, where) for x in v]
        x = check_id(v, where)
        return [] if x is None else [x]

    bos = tok_id("bos_token")
    if bos is None:
        bos = check_id(gc.get("bos_token_id"), gc_path)
    if bos is None:
        bos = check_id(cfg.get("bos_token_id"), os.path.join(folder, "config.json"))
    eos_ids = id_list(gc.get("eos_token_id"), gc_path)
    eos_tok = tok_id("eos_token")
    if eos_tok is not None:
        eos_ids.append(eos_tok)
    eos_ids += id_list(cfg.get("eos_token_id"), os.path.join(folder, "config.json"))
    eos_ids = list(dict.fromkeys(eos_ids))

    post_bos = _template_bos(tj.get("post_processor"), ids)
    stated_bos, stated_eos = flag("add_bos_token"), flag("add_eos_token")
    add_bos = (post_bos is not None) if stated_bos is None else stated_bos
    if add_bos and bos is None:
        bos = post_bos
    add_eos = bool(stated_eos)

    template = _chat_template(tc.get("chat_template"), tc_path)
    for fname in ("chat_template.jinja", "chat_template.json"):
        p = os.path.join(folder, fname)
        if template is None and os.path.isfile(p):
            if fname.endswith(".jinja"):
                with open(p, "rb") as f:
                    try:
                        template = f.read().decode("utf-8")
                    except UnicodeDecodeError:
                        raise _Bad(p, "not valid UTF-8") from None
            else:
                j = _read_json(p)
                if not isinstance(j, dict):
                    raise _Bad(p, "not a JSON object")
                template = _chat_template(j.get("chat_template"), p)

    unk = ids.get(model["unk_token"]) if isinstance(model.get("unk_token"), str) else None
    try:
        source = make_tokenizer_source(
            tokenizer_json=text, bos_id=bos, eos_id=eos_ids[0] if eos_ids else None, unk_id=unk,
            extra_eos_ids=eos_ids[1:], add_bos=stated_bos, add_eos=stated_eos,  # None: post-processor decides
        )
    except (TypeError, ValueError) as e:
        raise _Bad(tj_path, f"tokenizer: {e}") from None
    return {"source": source, "chat_template": template, "bos_id": bos, "eos_ids": eos_ids,
            "add_bos": add_bos, "add_eos": add_eos, "tokenizer_json": tj}


def _chat_template(value: Any, where: str) -> str | None:
    """A chat_template field: the template's source, or transformers' list of named templates,
    of which it uses the one named "default" (apply_chat_template without a template name)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(
            isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str) for t in value):
        named: dict[str, str] = {t["name"]: t["template"] for t in value}
        if "default" not in named:
            raise _Bad(where, f"chat_template lists templates {sorted(named)} but none named 'default'")
        return named["default"]
    raise _Bad(where, f"chat_template must be a string or a list of {{name, template}} objects, got {value!r:.80}")


def load_hf(folder: str | os.PathLike) -> ModelSpec:
    """Load a Hugging Face BitNet folder (model_type "bitnet", or "llama" with BitNet quantization)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ModelLoadError(f"{folder}: not a folder" if os.path.exists(folder) else f"{folder}: no such folder")
    h = _HF(folder)
    try:
        return h.load()
    except _Bad as e:
        raise ModelLoadError(str(e)) from None
    except OSError as e:
        raise ModelLoadError(f"{getattr(e, 'filename', None) or folder}: cannot read: {e.strerror or e}") from None
    except MemoryError:
        raise ModelLoadError(f"{folder}: not enough memory to load the model") from None
    finally:
        for f in h.files:
            f.close()
