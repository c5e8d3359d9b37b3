"""BitNet b1.58 in plain PyTorch, with quantization-aware training.

The forward pass is transformers' ``BitNetForCausalLM`` with ``AutoBitLinear`` in online mode
(the semantics tritlm's Hugging Face loader reproduces): every linear ternarizes its master weight
by absmean (``s = 1 / max(mean|W|, 1e-5)``, ``W_q = clamp(round(W s), -1, 1) / s``) and quantizes
its input per token to int8 by absmax (``s = 127 / max(max|x|, 1e-5)``, ``x_q = clamp(round(x s),
-128, 127) / s``; torch.round rounds half to even, as tritlm does). Gradients pass both roundings
unchanged (straight-through estimator). The output head is tied to the embedding and stays float.

It lives in its own module, and not in transformers, so that training is small and fast (no
torch.compile'd autograd Functions, fused SDPA attention) and so that tests can run the very
forward the model was trained with. Parameter names are transformers', so ``save_hf`` writes a
folder ``BitNetForCausalLM.from_pretrained`` and ``python -m tritlm convert`` both read.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

QUANTIZATION_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}


@dataclass(frozen=True)
class Shape:
    """The model's sizes; the names are BitNetConfig's."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 1024
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass, the identity's gradient in the backward pass."""
    return x + (q - x).detach()


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """Absmean ternary weight, exactly as transformers' WeightQuant (in f32)."""
    scale = 1.0 / w.abs().mean().clamp(min=1e-5)
    return (w * scale).round().clamp(-1, 1) / scale


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Per-token absmax int8 activation, exactly as transformers' ActQuant (in f32)."""
    scale = 127 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * scale).round().clamp(-128, 127) / scale


class BitLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__(n_in, n_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = ste(self.weight, quantize_weight(self.weight.detach()))
        x = ste(x, quantize_activation(x.detach()))
        return F.linear(x, w)


class RMSNorm(nn.Module):
    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.s = s
        hd = s.head_dim
        self.q_proj = BitLinear(s.hidden_size, s.num_attention_heads * hd)
        self.k_proj = BitLinear(s.hidden_size, s.num_key_value_heads * hd)
        self.v_proj = BitLinear(s.hidden_size, s.num_key_value_heads * hd)
        self.o_proj = BitLinear(s.num_attention_heads * hd, s.hidden_size)
        self.attn_sub_norm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        hd = self.s.head_dim
        q = self.q_proj(x).view(b, t, -1, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, t, -1, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, t, -1, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        y = y.transpose(1, 2).reshape(b, t, -1)
        return self.o_proj(self.attn_sub_norm(y))


class MLP(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.gate_proj = BitLinear(s.hidden_size, s.intermediate_size)
        self.up_proj = BitLinear(s.hidden_size, s.intermediate_size)
        self.down_proj = BitLinear(s.intermediate_size, s.hidden_size)
        self.ffn_sub_norm = RMSNorm(s.intermediate_size, s.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.ffn_sub_norm(F.relu(self.gate_proj(x)).square() * self.up_proj(x)))


class Layer(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.self_attn = Attention(s)
        self.mlp = MLP(s)
        self.input_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(s.hidden_size, s.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Body(nn.Module):
    """transformers' ``model.`` prefix: embedding, layers, final norm."""

    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(s.vocab_size, s.hidden_size)
        self.layers = nn.ModuleList(Layer(s) for _ in range(s.num_hidden_layers))
        self.norm = RMSNorm(s.hidden_size, s.rms_norm_eps)


class BitNetLM(nn.Module):
    def __init__(self, s: Shape) -> None:
        super().__init__()
        self.shape = s
        self.model = Body(s)
        hd = s.head_dim
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        angles = torch.outer(torch.arange(s.max_position_embeddings, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits [batch, time, vocab]."""
        t = ids.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return F.linear(self.model.norm(x), self.model.embed_tokens.weight)

    def hf_config(self) -> dict:
        s = self.shape
        cfg = {k: v for k, v in asdict(s).items() if k != "rope_theta"}
        cfg.update({
            "architectures": ["BitNetForCausalLM"], "model_type": "bitnet", "hidden_act": "relu2",
            "tie_word_embeddings": True, "attention_bias": False, "head_dim": s.head_dim,
            "rope_parameters": {"rope_theta": s.rope_theta, "rope_type": "default"},
            "torch_dtype": "float32", "quantization_config": dict(QUANTIZATION_CONFIG),
        })
        return cfg


def save_hf(model: BitNetLM, folder: str, extra_config: dict | None = None) -> None:
    """config.json and model.safetensors (f32 master weights) as save_pretrained writes them."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    sd = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    cfg = {**model.hf_config(), **(extra_config or {})}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)


def master_for(wq: torch.Tensor) -> torch.Tensor:
    """A master weight that ``quantize_weight`` maps back to ``wq`` (ternary codes times one
    multiplier m), up to f32 rounding: the codes scaled so that their mean |w| is m. It lets a
    deployed model (a GGUF keeps only codes and m) run through the training forward again."""
    m = wq.abs().max()
    return wq * (m / wq.abs().mean())
