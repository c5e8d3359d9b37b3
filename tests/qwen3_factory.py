"""Tiny random Qwen3 (or Llama) models for the qwen3 tests: transformers' Qwen3ForCausalLM (or
LlamaForCausalLM) as the reference, and the same model as tritlm's canonical weights or as a GGUF
file with Q1_0 linears.

- ``q1_0_quantize(w)``: ggml's ``quantize_row_q1_0_ref`` in numpy, written from its description in
  docs/formats.md (d = the block's mean |w| summed in f32 order, stored as fp16; bit 1 for w >= 0,
  weight j in bit j % 8 of byte j // 8): the file bytes and the float round trip (+-d).
- ``build_reference(shape, seed=...)``: a random Qwen3ForCausalLM (float32) whose linear weights
  are replaced by their Q1_0 round trip (``float_linears`` names those kept as they are), plus its
  weights under tritlm's canonical names.
- ``write_gguf(path, ref, ...)``: the model as a ``qwen3`` (or ``llama``) GGUF (gguf-py's
  GGUFWriter; the Q1_0 bytes come from ``q1_0_quantize``, not from tritlm; a llama file's q/k
  rows permuted as llama.cpp's converter permutes them), with a byte-level BPE vocabulary that
  splits with the Qwen2 regex (``tokenizer.ggml.pre = qwen2``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model_factory import LINEARS  # the same Hugging Face linear names as BitNet's

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
    weights: dict[str, np.ndarray]   # canonical name -> float32, the values the reference computes with
    stored: dict[str, np.ndarray] = field(default_factory=dict)  # name -> what the file stores (bytes or array)
    types: dict[str, str] = field(default_factory=dict)          # name -> GGUF type of the stored data
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


def tritlm_config(cfg, arch: str) -> dict:
    """tritlm's config keys for a transformers Qwen3Config or LlamaConfig."""
    return {
        "arch": arch, "n_layers": cfg.num_hidden_layers, "dim": cfg.hidden_size,
        "n_heads": cfg.num_attention_heads, "n_kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "ffn_dim": cfg.intermediate_size, "vocab_size": cfg.vocab_size,
        "rope_theta": float(cfg.rope_parameters["rope_theta"]), "norm_eps": float(cfg.rms_norm_eps),
        "activation": "silu", "sub_norms": False, "qk_norm": arch == "qwen3",
    }


def round_trip(w: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(the bytes or array a GGUF file stores for ``w`` as ``kind``, the float32 values it holds).
    Q1_0 is encoded by ``q1_0_quantize``; F16 / BF16 / Q8_0 by gguf-py (their own referee)."""
    from gguf import GGMLQuantizationType, quants

    if kind == "Q1_0":
        return q1_0_quantize(w)
    if kind == "F32":
        w = np.ascontiguousarray(w, dtype=np.float32)
        return w, w
    qt = GGMLQuantizationType[kind]
    data = quants.quantize(np.ascontiguousarray(w, dtype=np.float32), qt)
    return data, quants.dequantize(data, qt).astype(np.float32).reshape(w.shape)


def build_reference(*, hidden: int, ffn: int, layers: int, heads: int, kv_heads: int, head_dim: int, vocab: int,
                    seed: int = 0, tie: bool = True, types: dict[str, str] | None = None,
                    float_linears: frozenset[str] = frozenset(), rope_theta: float = 1000000.0,
                    logit_gain: float = 1.0, arch: str = "qwen3") -> Reference:
    """A random Qwen3ForCausalLM whose weights are replaced by what a GGUF file stores for them.

    ``types``: canonical name -> GGUF type ("Q1_0", "F16", "BF16", "Q8_0", "F32"); linears default
    to Q1_0, token_embd / output to F16. ``float_linears`` keeps those linears as they are (not
    written to a file; for driving the native model directly). Norm weights are random too, so a
    missing or misplaced norm shows. ``logit_gain`` scales the output norm: random models have
    nearly flat next-token distributions, a larger gain gives the clearer winners of a trained one.
    ``arch="llama"``: a LlamaForCausalLM of the same shape (no QK-norm).
    """
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    types = dict(types or {})
    config_class, model_class = {"qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                                 "llama": ("LlamaConfig", "LlamaForCausalLM")}[arch]
    cfg = getattr(transformers, config_class)(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, hidden_act="silu",
        max_position_embeddings=4096, rms_norm_eps=1e-6, tie_word_embeddings=tie,
        rope_parameters={"rope_theta": rope_theta, "rope_type": "default"}, attention_bias=False,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(cfg).float().eval()
    sd = model.state_dict()  # views of the parameters: writing them changes the model
    ref = Reference(model=model, config=tritlm_config(cfg, arch), weights={}, tie=tie)
    norms = NORMS if arch == "qwen3" else {k: v for k, v in NORMS.items() if k in ("attn_norm", "ffn_norm")}
    gen = torch.Generator().manual_seed(seed + 1)
    hf_names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
    if not tie:
        hf_names["output"] = "lm_head"
    for i in range(layers):
        hf_names.update({f"blk.{i}.{short}": f"model.layers.{i}.{hf}" for short, hf in {**norms, **LINEARS}.items()})
    with torch.no_grad():
        for name, hf in hf_names.items():
            t = sd[hf + ".weight"]
            if t.ndim == 1:
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
                if name == "output_norm":
                    t.mul_(logit_gain)
            elif name not in float_linears:
                kind = types.setdefault(name, "F16" if name in ("token_embd", "output") else "Q1_0")
                ref.stored[name], w = round_trip(t.numpy(), kind)
                t.copy_(torch.from_numpy(w))
            ref.weights[name] = t.numpy().copy()
    ref.types = types
    return ref


def reference_logits(ref: Reference, ids: list[int]) -> np.ndarray:
    """The reference's float32 logits [len(ids), vocab]."""
    import torch

    with torch.no_grad():
        return ref.model(torch.tensor([ids])).logits[0].numpy()


# ----- tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(n_tokens: int):
    """A byte-level BPE ``tokenizers.Tokenizer`` built the way Qwen2/Qwen3's tokenizer.json is
    (NFC normalizer, Qwen2 split regex, ByteLevel without its own regex), trained on CORPUS, with
    Qwen's control tokens and its user-defined think / tool-call tokens at the end; ``n_tokens``
    ids in all."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    base = n_tokens - len(SPECIALS) - len(USER_DEFINED)
    trainer = trainers.BpeTrainer(vocab_size=base, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator(CORPUS, trainer)
    assert tok.get_vocab_size() == base, (tok.get_vocab_size(), base)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in USER_DEFINED])
    return tok


def hf_tokenizer(tok, chat_template: str | None = None):
    """transformers' fast tokenizer over a ``tokenizers.Tokenizer`` (the chat-template referee)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   chat_template=chat_template)


def _gguf_vocab(tok, vocab: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges) as llama.cpp's converter writes them for Qwen: ids past the
    tokenizer's own are "[PAD<i>]" tokens of type UNUSED (the model's embedding is larger)."""
    import json

    model = json.loads(tok.to_str())["model"]
    pieces = {i: p for p, i in tok.get_vocab(with_added_tokens=True).items()}
    types = {i: 3 if t.special else 4 for i, t in tok.get_added_tokens_decoder().items()}  # control / user-defined
    tokens = [pieces.get(i, f"[PAD{i}]") for i in range(vocab)]
    ttypes = [types.get(i, 1 if i in pieces else 5) for i in range(vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return tokens, ttypes, merges


# ----- GGUF --------------------------------------------------------------------------------------


def write_gguf(path: str | os.PathLike, ref: Reference, tok, *, chat_template: str | None = None,
               fields: dict | None = None, drop: frozenset[str] = frozenset(),
               tensors: dict[str, tuple[np.ndarray, str]] | None = None) -> Path:
    """The reference model as a GGUF file of its architecture, every tensor as ``ref.types`` says.

    For the bad-input tests: ``fields`` overrides metadata (key -> (value, GGUFValueType) or None
    to drop), ``drop`` leaves tensors out (canonical names), ``tensors`` adds or replaces tensors
    (GGUF name -> (data, GGUF type name))."""
    import gguf

    c = ref.config
    a = c["arch"]
    w = gguf.GGUFWriter(str(path), a)
    meta = {
        f"{a}.block_count": (c["n_layers"], gguf.GGUFValueType.UINT32),
        f"{a}.context_length": (4096, gguf.GGUFValueType.UINT32),
        f"{a}.embedding_length": (c["dim"], gguf.GGUFValueType.UINT32),
        f"{a}.feed_forward_length": (c["ffn_dim"], gguf.GGUFValueType.UINT32),
        f"{a}.attention.head_count": (c["n_heads"], gguf.GGUFValueType.UINT32),
        f"{a}.attention.head_count_kv": (c["n_kv_heads"], gguf.GGUFValueType.UINT32),
        f"{a}.attention.key_length": (c["head_dim"], gguf.GGUFValueType.UINT32),
        f"{a}.attention.value_length": (c["head_dim"], gguf.GGUFValueType.UINT32),
        f"{a}.rope.freq_base": (c["rope_theta"], gguf.GGUFValueType.FLOAT32),
        f"{a}.attention.layer_norm_rms_epsilon": (c["norm_eps"], gguf.GGUFValueType.FLOAT32),
        "tokenizer.ggml.model": ("gpt2", gguf.GGUFValueType.STRING),
        "tokenizer.ggml.pre": ("qwen2", gguf.GGUFValueType.STRING),
        "tokenizer.ggml.bos_token_id": (tok.token_to_id("<|endoftext|>"), gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.eos_token_id": (tok.token_to_id("<|im_end|>"), gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.padding_token_id": (tok.token_to_id("<|endoftext|>"), gguf.GGUFValueType.UINT32),
        "tokenizer.ggml.add_bos_token": (False, gguf.GGUFValueType.BOOL),
    }
    if chat_template is not None:
        meta["tokenizer.chat_template"] = (chat_template, gguf.GGUFValueType.STRING)
    meta.update(fields or {})
    for key, v in meta.items():
        if v is not None:
            w.add_key_value(key, v[0], v[1])
    tokens, ttypes, merges = _gguf_vocab(tok, c["vocab_size"])
    w.add_token_list(tokens)
    w.add_token_types(ttypes)
    w.add_token_merges(merges)
    added = dict(tensors or {})
    for name, values in ref.weights.items():
        gname = name + ".weight"
        if name in drop or gname in added:
            continue
        if values.ndim == 1:
            w.add_tensor(gname, values.astype(np.float32))
            continue
        data = ref.stored[name]
        heads = {"attn_q": c["n_heads"], "attn_k": c["n_kv_heads"]}.get(name.rsplit(".", 1)[-1])
        if a == "llama" and heads:  # convert_hf_to_gguf's LlamaModel.permute, on whole rows
            rows = np.asarray(data).reshape(values.shape[0], -1)
            data = rows.reshape(heads, 2, -1, rows.shape[1]).swapaxes(1, 2).reshape(rows.shape)
        _add(w, gname, data, ref.types[name], values.shape)
    for gname, (data, kind) in added.items():
        _add(w, gname, data, kind, None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def _add(writer, gname: str, data: np.ndarray, kind: str, shape: tuple[int, int] | None) -> None:
    import gguf

    if kind in ("F32", "F16"):
        writer.add_tensor(gname, data)
        return
    qt = gguf.GGMLQuantizationType[kind]
    if shape is not None:  # the bytes of an [n, k] matrix: one row of blocks per weight row
        data = np.asarray(data, dtype=np.uint8).reshape(shape[0], -1)
    writer.add_tensor(gname, data, raw_dtype=qt)


# ----- chat template -------------------------------------------------------------------------------

# A chat template in the form of Qwen3's (ChatML turns, <think> blocks kept only after the last real
# user query, tools listed as JSON, tool calls, tool results folded into user turns, and
# enable_thinking=False writing an empty think block), written for these tests to use every Jinja
# construct Qwen3's template relies on: namespace() updated inside a loop, a reversed slice with
# loop.index0 arithmetic, loop.first / loop.last, `is defined` / `is none` / `is string` tests,
# str methods (split, strip, lstrip, rstrip, startswith, endswith), `in`, indexing the
# neighbouring messages, reassigning the loop variable, tojson, and whitespace control.
QWEN3_STYLE_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\\n\\n' }}
    {%- endif %}
    {{- "# Tools\\n\\nFunction signatures, one JSON object per line, inside <tools></tools>:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}{{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nCall one with <tool_call>{\\"name\\": ..., \\"arguments\\": ...}</tool_call>.<|im_end|>\\n" }}
{%- elif messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == "user" and message.content.startswith('<tool_response>') %}
        {%- if loop.first or not (messages[loop.index0 - 1].content or '').startswith('<tool_response>') %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n' + message.content }}
        {%- if loop.last or not (messages[loop.index0 + 1].content or '').startswith('<tool_response>') %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- elif message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- set reasoning = '' %}
        {%- if message.reasoning_content is defined and message.reasoning_content is not none %}
            {%- set reasoning = message.reasoning_content %}
        {%- elif '</think>' in content %}
            {%- set reasoning = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index and (loop.last or reasoning) %}
            {{- '<|im_start|>assistant\\n<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}
        {%- else %}
            {{- '<|im_start|>assistant\\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or not loop.first %}{{- '\\n' }}{%- endif %}
                {%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}
                {{- '<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
                {%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""
