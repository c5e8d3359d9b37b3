"""The native forward pass and sampler, driven directly (no files, no tokenizer): against an
independent float64 numpy transformer, KV-cached against full recompute, and bad input."""

from __future__ import annotations

import formats as F  # tests/formats.py
import numpy as np
import pytest

from tritlm import _core, kernels

CONFIG = dict(
    n_layers=2, dim=256, n_heads=4, n_kv_heads=2, head_dim=64, ffn_dim=384, vocab_size=301,
    rope_theta=10000.0, norm_eps=1e-5, activation="relu2", sub_norms=True,
)
LINEARS = {  # name: (out, in) as functions of the config
    "attn_q": lambda c: (c["n_heads"] * c["head_dim"], c["dim"]),
    "attn_k": lambda c: (c["n_kv_heads"] * c["head_dim"], c["dim"]),
    "attn_v": lambda c: (c["n_kv_heads"] * c["head_dim"], c["dim"]),
    "attn_output": lambda c: (c["dim"], c["n_heads"] * c["head_dim"]),
    "ffn_gate": lambda c: (c["ffn_dim"], c["dim"]),
    "ffn_up": lambda c: (c["ffn_dim"], c["dim"]),
    "ffn_down": lambda c: (c["dim"], c["ffn_dim"]),
}


def random_model(config: dict, seed: int = 0, binary: bool = False) -> tuple[dict, dict]:
    """(packed weights for tritlm, the same weights as float arrays for the numpy reference)."""
    rng = np.random.default_rng(seed)
    c = config
    emb = (rng.standard_normal((c["vocab_size"], c["dim"])) * 0.5).astype(np.float16)
    packed: dict = {"token_embd": emb, "output_norm": rng.uniform(0.5, 1.5, c["dim"]).astype(np.float32)}
    ref: dict = {"token_embd": emb.astype(np.float64), "output_norm": packed["output_norm"].astype(np.float64)}
    for layer in range(c["n_layers"]):
        p = f"blk.{layer}."
        for name, size in [("attn_norm", c["dim"]), ("ffn_norm", c["dim"]),
                           ("attn_sub_norm", c["n_heads"] * c["head_dim"]), ("ffn_sub_norm", c["ffn_dim"])]:
            packed[p + name] = rng.uniform(0.5, 1.5, size).astype(np.float32)
            ref[p + name] = packed[p + name].astype(np.float64)
        for name, shape in LINEARS.items():
            out, inp = shape(c)
            if binary:
                w = rng.choice(np.array([-1, 1], dtype=np.int8), size=(out, inp))
            else:
                w = rng.integers(-1, 2, size=(out, inp), dtype=np.int8)
            scale = np.float32(rng.uniform(0.01, 0.05))
            packed[p + name] = (kernels.pack_binary if binary else kernels.pack_ternary)(w, scale)
            stored = F.runtime_scales("binary" if binary else "ternary", scale)  # binary: as binary16
            ref[p + name] = w.astype(np.float64) * float(stored)
    return packed, ref


def reference_logits(config: dict, w: dict, tokens: np.ndarray) -> np.ndarray:
    """BitNet b1.58 in float64 numpy, written from the paper / transformers' BitNet, not from
    tritlm's C++: activations quantized per token (absmax, half to even) before every linear."""
    c = config
    eps, hd, nh, nkv = c["norm_eps"], c["head_dim"], c["n_heads"], c["n_kv_heads"]

    def rmsnorm(x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g * x / np.sqrt((x * x).mean(-1, keepdims=True) + eps)

    def bitlinear(x: np.ndarray, wt: np.ndarray) -> np.ndarray:
        x32 = x.astype(np.float32)
        s = np.float32(127) / np.maximum(np.abs(x32).max(-1, keepdims=True), np.float32(1e-5))
        q = np.clip(np.rint(x32 * s), -128, 127)
        return (q.astype(np.float64) @ wt.T) / s.astype(np.float64)

    def rope(x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        inv = 1.0 / c["rope_theta"] ** (np.arange(0, hd, 2) / hd)
        ang = np.arange(n)[:, None] * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)

    n = len(tokens)
    x = w["token_embd"][tokens]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for layer in range(c["n_layers"]):
        p = f"blk.{layer}."
        a = rmsnorm(x, w[p + "attn_norm"])
        q = rope(bitlinear(a, w[p + "attn_q"]).reshape(n, nh, hd))
        k = rope(bitlinear(a, w[p + "attn_k"]).reshape(n, nkv, hd))
        v = bitlinear(a, w[p + "attn_v"]).reshape(n, nkv, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", probs, v).reshape(n, nh * hd)
        x = x + bitlinear(rmsnorm(attn, w[p + "attn_sub_norm"]), w[p + "attn_output"])
        b = rmsnorm(x, w[p + "ffn_norm"])
        g, u = bitlinear(b, w[p + "ffn_gate"]), bitlinear(b, w[p + "ffn_up"])
        act = np.maximum(g, 0) ** 2 if c["activation"] == "relu2" else g / (1 + np.exp(-g))
        x = x + bitlinear(rmsnorm(act * u, w[p + "ffn_sub_norm"]), w[p + "ffn_down"])
    return rmsnorm(x, w["output_norm"]) @ w.get("output", w["token_embd"]).T


@pytest.mark.parametrize("activation", ["relu2", "silu"])
@pytest.mark.parametrize("binary", [False, True])
def test_logits_match_float64_reference(activation: str, binary: bool) -> None:
    config = {**CONFIG, "activation": activation}
    packed, ref = random_model(config, seed=1, binary=binary)
    model = _core.Model(config, packed)
    kinds = set(model.info()["linears"].values())
    assert kinds == {"binary" if binary else "ternary"}
    tokens = np.random.default_rng(2).integers(0, config["vocab_size"], 40).astype(np.int32)
    got = _core.Session(model, 64, kv_f16=False).eval(tokens, "all")
    want = reference_logits(config, ref, tokens)
    # Activation quantization can flip a rounding tie between f32 and f64 paths, so compare with
    # a tolerance relative to the logit scale, and require the same top-1 token everywhere.
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < 2e-3, err
    assert (got.argmax(-1) == want.argmax(-1)).mean() >= 0.95


def test_kv_cached_decode_equals_full_recompute() -> None:
    packed, _ = random_model(CONFIG, seed=3)
    model = _core.Model(CONFIG, packed)
    tokens = np.random.default_rng(4).integers(0, CONFIG["vocab_size"], 150).astype(np.int32)
    for kv_f16 in (False, True):
        full = _core.Session(model, 160, kv_f16=kv_f16).eval(tokens, "all")
        s = _core.Session(model, 160, kv_f16=kv_f16)
        s.eval(tokens[:135], "none")  # prefill crosses the 128-token chunk boundary
        steps = np.stack([s.eval(tokens[i : i + 1], "last") for i in range(135, 150)])
        np.testing.assert_array_equal(steps, full[135:])
        assert s.n_past == 150


def test_truncate_rewinds_the_cache() -> None:
    packed, _ = random_model(CONFIG, seed=5)
    model = _core.Model(CONFIG, packed)
    tokens = np.arange(30, dtype=np.int32)
    s = _core.Session(model, 64, kv_f16=False)
    a = s.eval(tokens, "last")
    s.truncate(10)
    b = s.eval(tokens[10:], "last")
    np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError, match="outside 0..30"):
        s.truncate(31)


def test_f16_kv_cache_stays_close() -> None:
    packed, _ = random_model(CONFIG, seed=6)
    model = _core.Model(CONFIG, packed)
    tokens = np.random.default_rng(7).integers(0, CONFIG["vocab_size"], 60).astype(np.int32)
    f32 = _core.Session(model, 64, kv_f16=False).eval(tokens, "all")
    f16 = _core.Session(model, 64, kv_f16=True).eval(tokens, "all")
    assert np.abs(f16 - f32).max() / np.abs(f32).max() < 2e-2
    assert (f16.argmax(-1) == f32.argmax(-1)).mean() >= 0.9


def test_hidden_output_is_final_normed_state() -> None:
    packed, _ = random_model(CONFIG, seed=8)
    model = _core.Model(CONFIG, packed)
    tokens = np.arange(5, dtype=np.int32)
    hidden = _core.Session(model, 8, kv_f16=False).eval(tokens, "hidden")
    logits = _core.Session(model, 8, kv_f16=False).eval(tokens, "all")
    assert hidden.shape == (5, CONFIG["dim"])
    np.testing.assert_allclose(hidden @ packed["token_embd"].astype(np.float32).T, logits, rtol=1e-4, atol=1e-3)


def test_bad_model_input_names_the_problem() -> None:
    packed, _ = random_model(CONFIG, seed=9)
    missing = dict(packed)
    del missing["blk.1.ffn_up"]
    with pytest.raises(ValueError, match="missing weight 'blk.1.ffn_up'"):
        _core.Model(CONFIG, missing)
    wrong = dict(packed)
    wrong["blk.0.attn_k"] = packed["blk.0.attn_q"]
    with pytest.raises(ValueError, match=r"weight 'blk.0.attn_k' is \[256, 256\], expected \[128, 256\]"):
        _core.Model(CONFIG, wrong)
    with pytest.raises(ValueError, match="config is missing 'ffn_dim'"):
        _core.Model({k: v for k, v in CONFIG.items() if k != "ffn_dim"}, packed)
    with pytest.raises(ValueError, match="activation"):
        _core.Model({**CONFIG, "activation": "gelu"}, packed)
    with pytest.raises(TypeError, match="token_embd' must be float16 or float32, got int32"):
        _core.Model(CONFIG, {**packed, "token_embd": np.zeros((301, 256), np.int32)})


def test_bad_session_input() -> None:
    packed, _ = random_model(CONFIG, seed=10)
    s = _core.Session(_core.Model(CONFIG, packed), 16)
    with pytest.raises(ValueError, match="token id 301 at index 1 is outside the vocabulary"):
        s.eval(np.array([1, 301], np.int32), "last")
    with pytest.raises(ValueError, match="18 tokens do not fit the context of 16"):
        s.eval(np.zeros(18, np.int32), "last")
    with pytest.raises(TypeError, match="tokens must have dtype int32"):
        s.eval(np.zeros(3, np.int64), "last")
    with pytest.raises(ValueError, match="output must be"):
        s.eval(np.zeros(3, np.int32), "first")
    assert s.n_past == 0


def test_sampler_greedy_seeded_and_biased() -> None:
    rng = np.random.default_rng(11)
    logits = rng.standard_normal(500).astype(np.float32) * 3
    history = np.array([], np.int32)
    assert _core.Sampler(temperature=0).sample(logits, history)[0] == int(logits.argmax())
    assert _core.Sampler(temperature=1, top_k=1).sample(logits, history)[0] == int(logits.argmax())
    draws = lambda seed: [_core.Sampler(temperature=1.0, seed=seed).sample(logits, history)[0] for _ in range(1)]
    a = [_core.Sampler(temperature=1.0, seed=7) for _ in range(2)]
    assert [a[0].sample(logits, history)[0] for _ in range(20)] == [a[1].sample(logits, history)[0] for _ in range(20)]
    assert draws(1) != draws(2) or draws(3) != draws(4)
    forced = _core.Sampler(temperature=0, logit_bias=[(42, 100.0)]).sample(logits, history)[0]
    assert forced == 42
    token, lp, top = _core.Sampler(temperature=0).sample(logits, history, 5)
    assert [t for t, _ in top][0] == token and len(top) == 5
    lse = np.log(np.exp(logits.astype(np.float64) - logits.max()).sum()) + logits.max()
    assert abs(lp - (logits[token] - lse)) < 1e-4
    # A repeated token loses to the runner-up under a strong penalty.
    best = int(logits.argmax())
    pen = _core.Sampler(temperature=0, presence_penalty=2.0, frequency_penalty=2.0)
    assert pen.sample(np.where(np.arange(500) == best, logits.max() + 1, logits).astype(np.float32),
                      np.array([best] * 3, np.int32))[0] != best


def test_sampler_distribution_follows_temperature_and_filters() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05], np.float32))
    s = _core.Sampler(temperature=1.0, seed=3)
    counts = np.bincount([s.sample(logits, np.array([], np.int32))[0] for _ in range(4000)], minlength=4) / 4000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.03)
    s = _core.Sampler(temperature=1.0, top_p=0.7, seed=3)
    assert set(s.sample(logits, np.array([], np.int32))[0] for _ in range(500)) == {0, 1}
    s = _core.Sampler(temperature=1.0, min_p=0.5, seed=3)
    assert set(s.sample(logits, np.array([], np.int32))[0] for _ in range(500)) == {0, 1}


def test_sampler_refuses_empty_and_unaligned_input() -> None:
    """Empty logits made sample() read the maximum of an empty vector (UBSan: "reference binding
    to null pointer of type 'float'", then a crash); unaligned ones were read as float anyway."""
    empty = np.zeros(0, np.float32)
    for temperature in (0.0, 1.0):
        with pytest.raises(ValueError, match="logits must hold between 1 and"):
            _core.Sampler(temperature=temperature).sample(empty, np.zeros(0, np.int32), 3)
    logits = np.linspace(0, 1, 10, dtype=np.float32)
    history = np.array([9, 9, 9], np.int32)
    with pytest.raises(ValueError, match="logits is not aligned"):
        _core.Sampler().sample(F.unaligned(logits), history)
    with pytest.raises(ValueError, match="history is not aligned"):
        _core.Sampler().sample(logits, F.unaligned(history))
    assert _core.Sampler(temperature=0).sample(logits[:1], history)[0] == 0


def test_unaligned_tables_are_copied_and_other_weights_refused() -> None:
    """A table (embedding, head) is a view of the caller's array, which a GGUF file with
    general.alignment 1 puts at an odd address of its memory map: Table::at and the scalar f16
    head then read uint16 values at misaligned addresses (UBSan: "load of misaligned address ...
    for type 'const uint16_t'", forward.cpp). The model takes an aligned copy of such a table, and
    computes exactly what it does from an aligned one; other weights and tokens are refused."""
    packed, _ = random_model(CONFIG, seed=12)
    tokens = np.array([5, 17, 300, 2, 99], np.int32)

    def run(weights: dict) -> np.ndarray:
        return _core.Session(_core.Model(CONFIG, weights), 16).eval(tokens, "all")

    want = run(packed)
    emb16 = F.unaligned(packed["token_embd"])
    assert np.array_equal(run({**packed, "token_embd": emb16}), want)
    emb32 = packed["token_embd"].astype(np.float32)
    head = {**packed, "token_embd": emb32, "output": emb16}
    assert np.array_equal(run({**head, "token_embd": F.unaligned(emb32)}), run(head))
    with pytest.raises(ValueError, match="blk.0.attn_norm is not aligned"):
        _core.Model(CONFIG, {**packed, "blk.0.attn_norm": F.unaligned(packed["blk.0.attn_norm"])})
    s = _core.Session(_core.Model(CONFIG, packed), 16)
    with pytest.raises(ValueError, match="tokens is not aligned"):
        s.eval(F.unaligned(tokens), "last")
    with pytest.raises(ValueError, match="tokens is not aligned"):
        _core.eval_batch([s], [F.unaligned(tokens)])
    assert s.n_past == 0


@pytest.mark.parametrize(
    "kwargs, field",
    [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
     ({"min_p": 2}, "min_p"), ({"top_k": -3}, "top_k"), ({"presence_penalty": 3}, "presence_penalty"),
     ({"frequency_penalty": -2.5}, "frequency_penalty"), ({"repetition_penalty": 0}, "repetition_penalty"),
     ({"logit_bias": [(1, 101.0)]}, "logit_bias"), ({"temperature": float("nan")}, "temperature")],
)
def test_sampler_rejects_bad_values(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _core.Sampler(**kwargs)


def test_overflowing_attention_scores_raise_not_hide() -> None:
    """Query and key norms so large that the f16 keys overflow: the scores hold inf and NaN.
    The softmax must pass them on (its exp keeps NaN), so the output projection's quantizer
    names the problem instead of the model producing finite nonsense."""
    config = {**CONFIG, "activation": "silu", "sub_norms": False, "qk_norm": True}
    packed, _ = random_model(config, seed=1)
    weights = {k: v for k, v in packed.items() if "sub_norm" not in k}
    for layer in range(config["n_layers"]):
        for norm in ("attn_q_norm", "attn_k_norm"):
            weights[f"blk.{layer}.{norm}"] = np.full(config["head_dim"], 1e30, np.float32)
    model = _core.Model(config, weights)
    with pytest.raises(ValueError, match="NaN or an infinity"):
        _core.Session(model, 16, True).eval(np.array([1, 2, 3], np.int32), "last")
