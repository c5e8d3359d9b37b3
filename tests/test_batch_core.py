"""The native continuous-batching step: several sequences in one forward pass must give each
sequence exactly what it gets alone (the kernels are per-row exact), and bad input is refused
before any cache is touched."""

from __future__ import annotations

import numpy as np
import pytest

from tritlm import _core

from test_model_core import CONFIG, random_model


@pytest.fixture(scope="module")
def model() -> _core.Model:
    packed, _ = random_model(CONFIG, seed=21)
    return _core.Model(CONFIG, packed)


@pytest.mark.parametrize("kv_f16", [False, True])
def test_batched_step_equals_each_sequence_alone(model: _core.Model, kv_f16: bool) -> None:
    rng = np.random.default_rng(22)
    prompts = [rng.integers(0, CONFIG["vocab_size"], n).astype(np.int32) for n in (1, 7, 30, 3, 130)]
    alone = [_core.Session(model, 160, kv_f16=kv_f16).eval(p, "last") for p in prompts]
    sessions = [_core.Session(model, 160, kv_f16=kv_f16) for _ in prompts]
    # Prefill of mixed lengths in one step, then three decode steps with the same tokens for all.
    batched = _core.eval_batch(sessions, prompts)
    for got, want in zip(batched, alone):
        np.testing.assert_array_equal(got, want)
    singles = [_core.Session(model, 160, kv_f16=kv_f16) for _ in prompts]
    for s, p in zip(singles, prompts):
        s.eval(p, "none")
    for step in range(3):
        nxt = [np.array([(7 * i + step) % CONFIG["vocab_size"]], np.int32) for i in range(len(prompts))]
        batched = _core.eval_batch(sessions, nxt)
        for s, t, got in zip(singles, nxt, batched):
            np.testing.assert_array_equal(got, s.eval(t, "last"))
    assert [s.n_past for s in sessions] == [len(p) + 3 for p in prompts]


def test_copy_prefix_shares_a_prompt(model: _core.Model) -> None:
    tokens = np.arange(40, dtype=np.int32)
    a = _core.Session(model, 64)
    a.eval(tokens[:30], "none")
    b = _core.Session(model, 64)
    b.copy_prefix(a, 25)
    assert b.n_past == 25
    np.testing.assert_array_equal(b.eval(tokens[25:], "last"), _core.Session(model, 64).eval(tokens, "last"))
    with pytest.raises(IndexError, match="31 positions requested, the source holds 30"):
        b.copy_prefix(a, 31)
    other = _core.Session(model, 64, kv_f16=False)
    with pytest.raises(ValueError, match="differ in precision"):
        other.copy_prefix(a, 3)


def test_bad_batches_touch_nothing(model: _core.Model) -> None:
    s1, s2 = _core.Session(model, 8), _core.Session(model, 8)
    ok = np.array([1, 2], np.int32)
    with pytest.raises(ValueError, match="a session appears twice"):
        _core.eval_batch([s1, s1], [ok, ok])
    with pytest.raises(ValueError, match="one token array per session"):
        _core.eval_batch([s1, s2], [ok])
    with pytest.raises(ValueError, match="10 tokens do not fit the context of 8"):
        _core.eval_batch([s1, s2], [ok, np.zeros(10, np.int32)])
    with pytest.raises(ValueError, match="token id 999 at index 0"):
        _core.eval_batch([s1, s2], [ok, np.array([999], np.int32)])
    with pytest.raises(ValueError, match="tokens must not be empty"):
        _core.eval_batch([s1, s2], [ok, np.zeros(0, np.int32)])
    with pytest.raises(ValueError, match="different models"):
        packed, _ = random_model(CONFIG, seed=23)
        _core.eval_batch([s1, _core.Session(_core.Model(CONFIG, packed), 8)], [ok, ok])
    assert s1.n_past == s2.n_past == 0
