"""Tiny random BitNet models on disk, for tests (shared by the loader, engine and API tests).

- ``build_master(folder, ...)``: transformers' ``BitNetForCausalLM`` with random weights (norms
  randomized too), saved with ``save_pretrained`` as bf16 or f32 master weights, with
  ``quantization_config = {"quant_method": "bitnet", "linear_class": "autobitlinear",
  "quantization_mode": "online"}`` (transformers ternarizes them on every forward);
- ``build_packed(master, folder, linear_class=...)``: the same model with every linear ternarized
  (torch, as transformers' ``WeightQuant``) and stored the way microsoft/bitnet-b1.58-2B-4T is:
  packed uint8 ``[out/4, in]`` plus ``weight_scale`` (encoded by ``tests/formats.py``, not by
  tritlm);
- ``build_gguf(hf_folder, path, type)``: the master model converted with tritlm's converter;
- ``reference_weights(master)``: every canonical weight as the dense float32 matrix transformers
  computes with (its ``WeightQuant`` applied in torch), the referee for the loaders;
- a byte-level BPE ``tokenizer.json`` in Llama 3's style (split regex, special tokens, BOS added by
  the post-processor), trained on a small in-file corpus and padded with reserved special tokens to
  the model's vocabulary size, plus tokenizer_config.json (chat template) and
  generation_config.json.

Building a model takes well under a second once torch and transformers are imported.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import formats  # tests/formats.py: independent encoders of every weight layout

TINY = dict(hidden=256, layers=2, heads=4, kv_heads=2, ffn=384, vocab=300, positions=512)

SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ternary weights take the values minus one, zero and plus one.",
    "A language model predicts the next token from the tokens before it.",
    "BitNet b1.58 runs on ordinary CPUs with int8 activations.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Numbers like 1234567 and 3.14159 are split into groups of three digits.",
    "The cat sat on the mat; the dog sat on the log.",
] * 4

LINEARS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
NORMS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_sub_norm": "self_attn.attn_sub_norm", "ffn_sub_norm": "mlp.ffn_sub_norm",
}


def write_tokenizer(folder: str | os.PathLike, vocab_size: int) -> dict[str, int]:
    """Train and save tokenizer files; returns the special token ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    base = vocab_size - len(SPECIALS)
    trainer = trainers.BpeTrainer(vocab_size=base, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_special_tokens(SPECIALS)
    i = 0
    while tok.get_vocab_size() < vocab_size:
        tok.add_special_tokens([f"<|reserved_special_token_{i}|>"])
        i += 1
    assert tok.get_vocab_size() == vocab_size, (tok.get_vocab_size(), vocab_size)
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    bos = ids["<|begin_of_text|>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)],
    )
    folder = Path(folder)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>",
        "chat_template": CHAT_TEMPLATE, "model_max_length": 4096,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }, indent=1))
    (folder / "generation_config.json").write_text(json.dumps({
        "bos_token_id": bos, "eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]],
    }, indent=1))
    return ids


def _write_config(folder: Path, update: dict) -> None:
    p = folder / "config.json"
    cfg = json.loads(p.read_text())
    cfg.update(update)
    p.write_text(json.dumps(cfg, indent=1))


def build_master(
    folder: str | os.PathLike,
    *,
    dtype: str = "bfloat16",
    act: str = "relu2",
    tie: bool = False,
    seed: int = 0,
    shard: bool = False,
    quantization: dict | None = None,
    **shape,
) -> Path:
    """A random BitNetForCausalLM saved with save_pretrained (master weights)."""
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    s = {**TINY, **shape}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer(folder, s["vocab"])  # ids for the config; rewritten after save_pretrained
    cfg = BitNetConfig(
        vocab_size=s["vocab"], hidden_size=s["hidden"], intermediate_size=s["ffn"],
        num_hidden_layers=s["layers"], num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
        hidden_act=act, max_position_embeddings=s["positions"], rms_norm_eps=1e-5, tie_word_embeddings=tie,
        bos_token_id=ids["<|begin_of_text|>"], eos_token_id=ids["<|end_of_text|>"],
        rope_parameters={"rope_theta": 500000.0, "rope_type": "default"},
    )
    torch.manual_seed(seed)
    model = BitNetForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.uniform_(0.5, 1.5)
            elif name.endswith("proj.weight"):
                _avoid_rounding_ties(p)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(folder), max_shard_size="150KB" if shard else "5GB")
    write_tokenizer(folder, s["vocab"])  # save_pretrained wrote its own generation_config.json
    _write_config(folder, {"quantization_config": quantization or {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}})
    return folder


def _avoid_rounding_ties(w) -> None:
    """Move weights whose |w| / mean|w| lies within 1e-3 of 0.5 a little towards zero.

    Absmean ternarization rounds w * (1 / mean|w|); at an exact tie the result depends on the
    last bit of the f32 mean, and torch sums in an order no other implementation reproduces. A
    random init puts a few weights on such ties, and one flipped weight moves a tiny model's
    logits by a few percent, so the reference tests start from weights with no near-ties.
    """
    t = w.abs() / w.abs().mean()
    w[(t - 0.5).abs() < 1e-3] *= 0.99


def _state_dict(folder: Path) -> dict:
    """Every tensor of a saved model (torch tensors), read with the safetensors package."""
    from safetensors.torch import load_file

    names = sorted(folder.glob("*.safetensors"))
    sd = {}
    for n in names:
        sd.update(load_file(str(n)))
    return sd


def weight_quant(w):
    """transformers' WeightQuant.forward (integrations/bitnet.py), without torch.compile:
    returns (codes int8 numpy, multiplier f32, the quantized weight as transformers uses it)."""
    import torch

    dtype = w.dtype
    x = w.float()
    scale = 1.0 / x.abs().mean().clamp_(min=1e-5)
    q = (x * scale).round().clamp(-1, 1)
    wq = (q / scale).to(dtype)
    mult = (torch.ones(1) / scale).to(dtype).float()
    return q.to(torch.int8).numpy(), np.float32(mult.item()), wq.float().numpy()


def reference_weights(master: str | os.PathLike) -> dict[str, np.ndarray]:
    """Canonical name -> dense float32 weight, as transformers computes with (online mode)."""
    folder = Path(master)
    cfg = json.loads((folder / "config.json").read_text())
    sd = _state_dict(folder)
    out = {"token_embd": sd["model.embed_tokens.weight"].float().numpy(),
           "output_norm": sd["model.norm.weight"].float().numpy()}
    if not cfg.get("tie_word_embeddings"):
        out["output"] = sd["lm_head.weight"].float().numpy()
    for i in range(cfg["num_hidden_layers"]):
        for short, hf in NORMS.items():
            out[f"blk.{i}.{short}"] = sd[f"model.layers.{i}.{hf}.weight"].float().numpy()
        for short, hf in LINEARS.items():
            out[f"blk.{i}.{short}"] = weight_quant(sd[f"model.layers.{i}.{hf}.weight"])[2]
    return out


def _bitlinear_scale(mult: np.float32) -> np.float32:
    """An f32 weight_scale ws with f32(1) / ws == mult exactly (BitLinear divides by it)."""
    ws = np.float32(1) / mult
    for _ in range(64):
        q = np.float32(1) / ws
        if q == mult:
            return ws
        ws = np.nextafter(ws, np.float32(np.inf) if q > mult else np.float32(0), dtype=np.float32)
    raise AssertionError(f"no f32 reciprocal for {mult!r}")


def build_packed(master: str | os.PathLike, folder: str | os.PathLike, *, linear_class: str = "bitlinear") -> Path:
    """The master model with its linears ternarized and packed as HF uint8 + weight_scale."""
    import shutil

    import torch
    from safetensors.torch import save_file

    master, folder = Path(master), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for n in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(master / n, folder / n)
    sd = _state_dict(master)
    out = {}
    for name, t in sd.items():
        module = name[: -len(".weight")]
        if name.endswith(".weight") and any(module.endswith(hf) for hf in LINEARS.values()):
            codes, mult, _ = weight_quant(t)
            out[name] = torch.from_numpy(formats.encode_hf_packed(codes))
            ws = _bitlinear_scale(mult) if linear_class == "bitlinear" else mult
            out[module + ".weight_scale"] = torch.tensor([ws], dtype=torch.float32)
        else:
            out[name] = t.contiguous()
    save_file(out, str(folder / "model.safetensors"), metadata={"format": "pt"})
    _write_config(folder, {"quantization_config": {
        "quant_method": "bitnet", "linear_class": linear_class, "quantization_mode": "offline"}})
    return folder


def build_gguf(hf_folder: str | os.PathLike, path: str | os.PathLike, type: str = "tq2_0", **kw) -> Path:
    from tritlm.loaders.convert import convert

    convert(hf_folder, path, type, **kw)
    return Path(path)


def rewrite_gguf(src: str | os.PathLike, dst: str | os.PathLike, *, arch: str | None = None,
                 fields: dict | None = None, tensors: dict | None = None, rename_prefix: bool = True,
                 alignment: int | None = None) -> Path:
    """Copy a GGUF file with gguf-py's reader and writer, changing it on the way.

    ``arch``: a new general.architecture (with ``rename_prefix``, keys "<old arch>.x" become
    "<arch>.x"); ``fields``: key -> (value, GGUFValueType[, sub_type]) to set, or None to drop;
    ``tensors``: name -> (array, raw_dtype or None[, raw_shape]) to set, or None to drop.
    ``alignment``: a general.alignment other than 32 for the tensor data.
    The source must be readable by gguf.GGUFReader (not I2_S).
    """
    import gguf

    fields, tensors = dict(fields or {}), dict(tensors or {})
    r = gguf.GGUFReader(str(src))
    old_arch = r.fields["general.architecture"].contents()
    arch = arch or old_arch
    w = gguf.GGUFWriter(str(dst), arch)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.alignment"):
            continue
        new_key = arch + key[len(old_arch):] if rename_prefix and key.startswith(old_arch + ".") else key
        if new_key in fields:
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(new_key, f.contents(), vtype, sub_type=sub)
    for key, v in fields.items():
        if v is not None:
            w.add_key_value(key, v[0], v[1], sub_type=v[2] if len(v) > 2 else None)
    for t in r.tensors:
        if t.name in tensors:
            continue
        data = np.array(t.data)
        if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    for name, v in tensors.items():
        if v is not None:
            arr, raw_dtype = v[0], v[1]
            raw_shape = v[2] if len(v) > 2 else None
            w.add_tensor(name, arr, raw_dtype=raw_dtype, raw_shape=raw_shape)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(dst)
