"""tritlm against the reference nobody here wrote: transformers' BitNetForCausalLM, built ternary
(AutoBitLinear, online quantization: absmean ternary weights and per-token int8 activations in
its forward), on random small configs saved with save_pretrained."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' quantizers are torch.compile'd

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
import model_factory as mf  # noqa: E402

import tritlm  # noqa: E402

CONFIGS = {  # hidden, ffn, layers, heads, kv_heads, vocab: different widths, head dims, GQA ratios, odd vocabs
    "gqa2": dict(hidden=256, ffn=384, layers=2, heads=4, kv_heads=2, vocab=301),
    "mha_hd32": dict(hidden=128, ffn=256, layers=3, heads=4, kv_heads=4, vocab=263),
    "gqa4_hd128": dict(hidden=512, ffn=640, layers=2, heads=4, kv_heads=1, vocab=397),
}
PROMPT = "The quick brown fox jumps over the lazy dog. Ternary weights take the values"


def reference(folder: str) -> tuple[object, object]:
    from transformers import AutoTokenizer, BitNetForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    model = BitNetForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module", params=list(CONFIGS))
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = mf.build_master(tmp_path_factory.mktemp(request.param), dtype="float32", seed=9, **CONFIGS[request.param])
    model, tok = reference(str(folder))
    ids = tok(PROMPT)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].numpy()
    return {"folder": folder, "model": model, "tok": tok, "ids": ids, "logits": logits, "name": request.param}


def test_logits_match_transformers_at_every_position(case: dict) -> None:
    llm = tritlm.LLM(case["folder"], n_ctx=256, kv_f16=False)
    assert llm.tokenize(PROMPT) == case["ids"]
    got = llm.eval_logits(case["ids"])
    want = case["logits"]
    err = np.abs(got - want).max()
    scale = np.abs(want).max()
    print(f"{case['name']}: max |logit diff| {err:.3g} over logits up to {scale:.3g}")
    # Stated tolerance. Both sides quantize activations to int8 from f32 values that differ in
    # their last bits (different summation orders), so an activation within ~1e-5 of a rounding
    # tie can land on different integers; one such flip moves these tiny random models' logits by
    # up to ~3% of their range (measured: 1e-6 where no flip occurs). So: 5% of the range, and the
    # same top-1 token at every position.
    assert err < 5e-2 * scale, f"{case['name']}: max |diff| {err:.3g} over logits up to {scale:.3g}"
    top2 = np.sort(want, axis=1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) < 2 * np.abs(got - want).max(axis=1)
    assert ((got.argmax(-1) == want.argmax(-1)) | near_tie).all()
    assert near_tie.mean() <= 0.1


def test_greedy_continuation_matches_transformers(case: dict) -> None:
    """transformers' 32-token greedy continuation, step by step: at every step tritlm (fed the
    same sequence) picks the reference's token, except at a genuine near-tie, where the
    reference's two best logits are closer than the two implementations' logits differ at that
    step (either choice is then right; at most 2 of 32 steps). tritlm's own greedy generation
    equals the reference up to the first such step."""
    llm = tritlm.LLM(case["folder"], n_ctx=256, kv_f16=False)
    n = len(case["ids"])
    with torch.no_grad():
        out = case["model"].generate(torch.tensor([case["ids"]]), max_new_tokens=32, do_sample=False,
                                     eos_token_id=None, pad_token_id=0, output_scores=True,
                                     return_dict_in_generate=True)
    want = out.sequences[0, n:].tolist()
    ref = torch.cat(out.scores).numpy()  # the reference's logits before each generated token
    ours = llm.eval_logits(out.sequences[0, :-1].tolist())[n - 1 :]
    top2 = np.sort(ref, axis=1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) < 2 * np.abs(ours - ref).max(axis=1)
    assert near_tie.sum() <= 2, f"{near_tie.sum()} near-ties in 32 steps"
    agree = ours.argmax(axis=1) == np.array(want)
    assert (agree | near_tie).all(), f"steps {np.flatnonzero(~agree)} differ without a near-tie"
    first_tie = int(np.argmax(near_tie)) if near_tie.any() else 32
    got = llm.generate(case["ids"], max_tokens=32, temperature=0, ignore_eos=True).token_ids
    assert got[:first_tie] == want[:first_tie]


@pytest.mark.parametrize("gguf_type", ["tq2_0", "tq1_0", "i2_s"])
def test_gguf_and_packed_give_the_same_logits(case: dict, gguf_type: str, tmp_path) -> None:
    base = tritlm.LLM(case["folder"], n_ctx=128, kv_f16=False).eval_logits(case["ids"])

    def assert_same(got: np.ndarray) -> None:
        # TQ1_0/TQ2_0 keep the scale as fp16 (and GGUF embeddings may be f16): a relative change
        # of at most 2^-11 per weight, which can flip an int8 activation tie as above.
        assert np.abs(got - base).max() < 5e-2 * np.abs(base).max()  # see the tolerance note above
        np.testing.assert_array_equal(got.argmax(-1), base.argmax(-1))

    path = mf.build_gguf(case["folder"], tmp_path / f"m-{gguf_type}.gguf", gguf_type)
    assert_same(tritlm.LLM(path, n_ctx=128, kv_f16=False).eval_logits(case["ids"]))
    packed = mf.build_packed(case["folder"], tmp_path / "packed")
    assert_same(tritlm.LLM(packed, n_ctx=128, kv_f16=False).eval_logits(case["ids"]))


def test_chat_template_matches_transformers(case: dict) -> None:
    llm = tritlm.LLM(case["folder"], n_ctx=128)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "What is a ternary weight?"},
    ]
    flat = [{**m, "content": "".join(p["text"] for p in m["content"])} if isinstance(m["content"], list) else m
            for m in messages]
    want = case["tok"].apply_chat_template(flat, tokenize=False, add_generation_prompt=True)
    assert llm.chat_prompt(messages) == want
