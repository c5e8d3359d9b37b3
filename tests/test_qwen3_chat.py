"""Qwen3's text side from a GGUF file: the gpt2 BPE vocabulary with the Qwen2 pre-tokenizer
(tokenizer.ggml.pre = "qwen2") against the same vocabulary run by ``tokenizers`` the way Qwen's
tokenizer.json runs it, and a Qwen3-form chat template against transformers' apply_chat_template."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import qwen3_factory as qf  # noqa: E402

import tritlm  # noqa: E402
from tritlm.chat_template import render_chat  # noqa: E402

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 1234567, 3.14159 and 2026-11-24 split into single digits.",
    "I'M SURE WE'LL SEE; THEY'D KNOW. it's, you're, I've",  # (?i:) contractions
    "Cafe\u0301 and cafe\u0301 are NFC-normalized first; Straße, 東京, Москва.",
    "  leading spaces,\ttabs,\n\nnew lines\r\n and   runs   of spaces   ",
    "emoji 🙂🚀 and symbols ~!@#$%^&*()_+{}|:\"<>?",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nhmm\n</think>\n\nHello<|im_end|>",
    "",
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
CHATS = {
    "plain": [{"role": "user", "content": "Hello"}],
    "system_and_history": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>\nadd them\n</think>\n\n4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    "reasoning_after_last_query": [
        {"role": "user", "content": "Think first."},
        {"role": "assistant", "content": "Done.", "reasoning_content": "\nsome thoughts\n"},
    ],
    "tool_round_trip": [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
        {"role": "user", "content": "<tool_response>\nsunny\n</tool_response>"},
        {"role": "user", "content": "<tool_response>\nrain\n</tool_response>"},
        {"role": "assistant", "content": "<think>\ncompare\n</think>\nParis is sunny."},
    ],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tok = qf.train_tokenizer(300)
    ref = qf.build_reference(hidden=128, ffn=256, layers=1, heads=2, kv_heads=1, head_dim=64, vocab=320, seed=5)
    path = qf.write_gguf(tmp_path_factory.mktemp("chat") / "m.gguf", ref, tok, chat_template=qf.QWEN3_STYLE_TEMPLATE)
    return {"tok": tok, "llm": tritlm.LLM(path, n_ctx=64), "hf": qf.hf_tokenizer(tok, qf.QWEN3_STYLE_TEMPLATE)}


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_qwen2_tokenizer_matches_tokenizers(setup: dict, text: str) -> None:
    llm = setup["llm"]
    want = setup["tok"].encode(text).ids
    assert llm.tokenize(text) == want  # no BOS: tokenizer.ggml.add_bos_token is false, as in Qwen's files
    assert llm.detokenize(want) == setup["tok"].decode(want, skip_special_tokens=False)


def test_qwen2_digits_and_specials(setup: dict) -> None:
    llm = setup["llm"]
    digits = llm.tokenize("12345")
    assert [llm.detokenize([i]) for i in digits] == list("12345")  # \p{N} one at a time, unlike Llama-3's {1,3}
    ids = llm.tokenize("<|im_start|>x<think>")
    assert llm.detokenize(ids[:1]) == "<|im_start|>" and llm.detokenize(ids[-1:]) == "<think>"
    im_end = setup["tok"].token_to_id("<|im_end|>")
    assert im_end in llm.tokenizer.eos_ids


@pytest.mark.parametrize("chat", list(CHATS))
@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}, {"tools": TOOLS}])
def test_template_renders_as_transformers(setup: dict, chat: str, kwargs: dict) -> None:
    messages = CHATS[chat]
    want = setup["hf"].apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)
    got = render_chat(qf.QWEN3_STYLE_TEMPLATE, messages, add_generation_prompt=True, **kwargs)
    assert got == want
    if not kwargs:
        assert setup["llm"].chat_prompt(messages) == want  # the template as the GGUF file carries it
