"""Tiny random Qwen3 models for the qwen3 tests: transformers' Qwen3ForCausalLM as the reference,
and the same model as tritlm's canonical weights or as a GGUF file with Q1_0 linears.

- ``q1_0_quantize(w)``: ggml's ``quantize_row_q1_0_ref`` in numpy, written from its description in
  docs/formats.md (d = the block's mean |w| summed in f32 order, stored as fp16; bit 1 for w >= 0,
  weight j in bit j % 8 of byte j // 8): the file bytes and the float round trip (+-d).
- ``build_reference(shape, seed=...)``: a random Qwen3ForCausalLM (float32) whose linear weights
  are replaced by their Q1_0 round trip (``float_linears`` names those kept as they are), plus its
  weights under tritlm's canonical names.
- ``write_gguf(path, ref, ...)``: the model as a ``qwen3`` GGUF (gguf-py's GGUFWriter; the Q1_0
  bytes come from ``q1_0_quantize``, not from tritlm), with a byte-level BPE vocabulary that splits
  with the Qwen2 regex (``tokenizer.ggml.pre = qwen2``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

LINEARS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
NORMS = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
}

# Qwen2's split regex as its tokenizer.json states it (llama.cpp keeps it as a comment above its
# expanded copy for tokenizer.ggml.pre = "qwen2").
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "One-bit weights take the values minus one and plus one, times a scale per block.",
    "A language model predicts the next token from the tokens before it.",
    "Numbers like 1234567 and 3.14159 are split into single digits by Qwen's tokenizer.",
    "Hello, world! How are you today? I'm fine, thank you. We'll see; they'd know.",
    "Café, naïve, Straße, 東京, Москва — unicode text normalizes to NFC first.",
] * 4


@dataclass
class Reference:
    """A reference model and what tritlm should load from its GGUF."""

    model: object                    # transformers Qwen3ForCausalLM, float32, eval mode
    config: dict                     # tritlm's config keys
    weights: dict[str, np.ndarray]   # canonical name -> float32 (linears: what the reference computes with)
    q1_bytes: dict[str, np.ndarray] = field(default_factory=dict)  # canonical linear name -> Q1_0 bytes
    tie: bool = True


def q1_0_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(Q1_0 bytes [n * k/128 * 18] uint8, the dequantized float32 [n, k]) of a float matrix.

    As ggml's quantize_row_q1_0_ref: per 128 weights, d = (sum of |w| in f32, in order) / 128,
    rounded to fp16 (nearest, ties to even); bit j % 8 of qs[j // 8] is 1 when w[j] >= 0.
    """
    w = np.ascontiguousarray(w, dtype=np.float32)
    n, k = w.shape
    if k % 128:
        raise ValueError("Q1_0 rows must be a multiple of 128 weights")
    blocks = w.reshape(n, k // 128, 128)
    total = np.cumsum(np.abs(blocks), axis=2, dtype=np.float32)[:, :, -1]  # sequential f32 sum
    d = (total / np.float32(128)).astype(np.float16)
    bits = np.packbits(blocks >= 0, axis=2, bitorder="little")  # [n, nb, 16]: bit j%8 of byte j//8
    out = np.concatenate([d[:, :, None].view(np.uint8), bits], axis=2)
    signs = np.where(blocks >= 0, np.float32(1), np.float32(-1))
    return out.reshape(-1), (signs * d.astype(np.float32)[:, :, None]).reshape(n, k)


def tritlm_config(cfg) -> dict:
    """tritlm's config keys for a transformers Qwen3Config."""
    return {
        "arch": "qwen3", "n_layers": cfg.num_hidden_layers, "dim": cfg.hidden_size,
        "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "ffn_dim": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
        "rope_theta": float(cfg.rope_parameters["rope_theta"]), "norm_eps": float(cfg.rms_norm_eps),
        "activation": "silu", "sub_norms": False, "qk_norm": True,
    }


def build_reference(*, hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
                    seed: int = 0, tie: bool = True, float_linears: frozenset[str] = frozenset(),
                    rope_theta: float = 1000000.0, logit_gain: float = 1.0) -> Reference:
    """A random Qwen3ForCausalLM with Q1_0 round-trip linears (except ``float_linears``, canonical
    names kept as float). Norm weights are random too, so a missing or misplaced norm shows.
    ``logit_gain`` scales the output norm: random models have nearly flat next-token
    distributions, and a larger gain gives the clearer winners a trained model has."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, hidden_act="silu",
        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        rope_parameters={"rope_theta": rope_theta, "rope_type": "default"}, attention_bias=False,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(cfg).float().eval()
    sd = model.state_dict()
    weights: dict[str, np.ndarray] = {}
    q1: dict[str, np.ndarray] = {}
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        model.model.norm.weight.mul_(logit_gain)
        weights["token_embd"] = sd["model.embed_tokens.weight"].numpy().copy()
        weights["output_norm"] = sd["model.norm.weight"].numpy().copy()
        if not tie:
            weights["output"] = sd["lm_head.weight"].numpy().copy()
        for i in range(layers):
            for short, hf in NORMS.items():
                weights[f"blk.{i}.{short}"] = sd[f"model.layers.{i}.{hf}.weight"].numpy().copy()
            for short, hf in LINEARS.items():
                name = f"blk.{i}.{short}"
                t = sd[f"model.layers.{i}.{hf}.weight"]
                if name not in float_linears:
                    q1[name], w = q1_0_quantize(t.numpy())
                    t.copy_(torch.from_numpy(w))
                weights[name] = t.numpy().copy()
    return Reference(model=model, config=tritlm_config(cfg), weights=weights, q1_bytes=q1, tie=tie)


def reference_logits(ref: Reference, ids: list[int]) -> np.ndarray:
    """The reference's float32 logits [len(ids), vocab]."""
    import torch

    with torch.no_grad():
        return ref.model(torch.tensor([ids])).logits[0].numpy()
