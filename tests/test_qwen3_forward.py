"""The native forward pass with Qwen3's QK-norm against transformers' Qwen3ForCausalLM, driven
directly (no file, no tokenizer). The linears are passed as float arrays, which the engine runs
as float matmuls, so the only differences left are float32 summation orders."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import qwen3_factory as qf  # noqa: E402

from tritlm import _core  # noqa: E402

IDS = [(7 * i + 3) % 251 for i in range(40)]


def native_model(ref: qf.Reference, **config) -> object:
    c = {k: v for k, v in ref.config.items() if k != "arch"}
    return _core.Model({**c, **config}, ref.weights)


@pytest.mark.parametrize("shape", [
    dict(hidden=256, ffn=512, layers=2, heads=4, kv_heads=2, head_dim=64, vocab=300),
    dict(hidden=128, ffn=384, layers=2, heads=2, kv_heads=1, head_dim=128, vocab=263),
])
def test_float_linears_match_transformers(shape: dict) -> None:
    ref = qf.build_reference(**shape, seed=3, float_linears=frozenset(qf.LINEARS))
    want = qf.reference_logits(ref, IDS)
    got = _core.Session(native_model(ref), 64, False).eval(np.array(IDS, np.int32), "all")
    err = np.abs(got - want).max()
    assert err < 1e-4 * np.abs(want).max(), f"max |diff| {err:.3g}"
    # The QK-norm matters: without it the same weights give other logits.
    off = _core.Session(native_model(ref, qk_norm=False), 64, False).eval(np.array(IDS, np.int32), "all")
    assert np.abs(off - want).max() > 100 * err


def test_qk_norm_weights_are_required_and_checked() -> None:
    ref = qf.build_reference(hidden=128, ffn=256, layers=1, heads=2, kv_heads=1, head_dim=64, vocab=64, seed=1,
                             float_linears=frozenset(qf.LINEARS))
    c = {k: v for k, v in ref.config.items() if k != "arch"}
    missing = {k: v for k, v in ref.weights.items() if k != "blk.0.attn_k_norm"}
    with pytest.raises(ValueError, match="attn_k_norm"):
        _core.Model(c, missing)
    wrong = {**ref.weights, "blk.0.attn_q_norm": np.ones(128, np.float32)}
    with pytest.raises(ValueError, match="attn_q_norm.*expected 64"):
        _core.Model(c, wrong)
