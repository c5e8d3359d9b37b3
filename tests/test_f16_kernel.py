"""The f16 output head (KernelTable::matvec_f16), driven through the model: logits against the
final hidden states times the head in float64, on every ISA of this CPU, and every SIMD ISA equal
to scalar bit for bit. (The NEON tables are checked against scalar by tests/native/neon_driver.cpp
under qemu, test_neon_qemu.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from tritlm import _core, kernels
from test_model_core import CONFIG, random_model

ISAS = kernels.available_isas()

# vocab 301 is no multiple of the 256-row tasks or of any row tile; dim 384 is 24 blocks of 16.
HEAD_CONFIG = {**CONFIG, "n_layers": 1, "dim": 384, "vocab_size": 301}


@pytest.fixture
def restore_isa() -> Iterator[None]:
    before = _core.active_isa()
    try:
        yield
    finally:
        _core.set_active_isa(before)


def random_head(rng: np.random.Generator, vocab: int, dim: int) -> np.ndarray:
    """f16 values over the whole finite range a head can meet: normal ones of many magnitudes,
    subnormals and zeros of both signs."""
    head = (rng.standard_normal((vocab, dim)) * np.exp2(rng.uniform(-16, 8, (vocab, dim)))).astype(np.float16)
    special = np.array([0.0, -0.0, 6e-8, -6e-8, 6.1e-5, -3e-5, 65504.0, -65504.0], np.float16)
    mask = rng.random((vocab, dim)) < 0.05
    head[mask] = rng.choice(special, mask.sum())
    return head


def logits_per_isa(
    model: _core.Model, tokens: np.ndarray, output: str, threads: int = 2, kv_f16: bool = False
) -> dict[str, np.ndarray]:
    out = {}
    for isa in ISAS:
        _core.set_active_isa(isa)
        out[isa] = _core.Session(model, 128, kv_f16=kv_f16, n_threads=threads).eval(tokens, output)
    return out


def assert_isas_equal_scalar(results: dict[str, np.ndarray]) -> None:
    for isa, got in results.items():
        np.testing.assert_array_equal(got.view(np.uint32), results["scalar"].view(np.uint32), err_msg=isa)


def assert_matches_float64(hidden: np.ndarray, head: np.ndarray, got: np.ndarray, tol: float, what: str) -> None:
    """|got - exact| < tol * sum_i |hidden_i * head_i| for every logit."""
    h, e = hidden.astype(np.float64), head.astype(np.float64)
    exact = h @ e.T
    bound = np.abs(h) @ np.abs(e).T
    err = np.abs(got.astype(np.float64) - exact)
    worst = np.unravel_index(np.argmax(err - tol * bound), err.shape)
    assert (err <= tol * bound).all(), f"{what}: logit {worst} = {got[worst]!r}, exact {exact[worst]!r}"


# 70: chunks of 64 and 6 activation rows. dim 1152: the batched path's 512-column chunks, with a
# short last one, and x rows in fours with tails.
@pytest.mark.parametrize("n_tokens, dim", [(1, 384), (2, 384), (5, 384), (70, 384), (6, 1152), (9, 1152)])
def test_f16_head_matches_float64_on_every_isa(n_tokens: int, dim: int, restore_isa: None) -> None:
    rng = np.random.default_rng(n_tokens)
    config = {**HEAD_CONFIG, "dim": dim}
    packed, _ = random_model(config, seed=20 + n_tokens)
    head = random_head(rng, config["vocab_size"], dim)
    model = _core.Model(config, {**packed, "output": head})
    assert not model.info()["tied_head"]
    tokens = rng.integers(0, config["vocab_size"], n_tokens).astype(np.int32)

    hidden = logits_per_isa(model, tokens, "hidden")
    logits = logits_per_isa(model, tokens, "all")
    last = logits_per_isa(model, tokens, "last")
    for isa in ISAS:
        np.testing.assert_array_equal(hidden[isa], hidden["scalar"], err_msg=f"{isa} hidden")
        assert logits[isa].shape == (n_tokens, HEAD_CONFIG["vocab_size"])
        assert_matches_float64(hidden[isa], head, logits[isa], 1e-5, f"{isa} all")
        assert_matches_float64(hidden[isa][-1:], head, last[isa][None], 1e-5, f"{isa} last")
    for isa in ISAS:
        np.testing.assert_array_equal(logits[isa].view(np.uint32), logits["scalar"].view(np.uint32),
                                      err_msg=f"{isa} logits differ from scalar")
        np.testing.assert_array_equal(last[isa].view(np.uint32), logits["scalar"][-1].view(np.uint32),
                                      err_msg=f"{isa} last logits differ from scalar")


def test_tied_f16_head_is_independent_of_threads(restore_isa: None) -> None:
    config = {**HEAD_CONFIG, "vocab_size": 1000}  # four row tasks, the last one short
    packed, _ = random_model(config, seed=30)
    model = _core.Model(config, packed)
    assert model.info()["tied_head"]
    tokens = np.array([3, 999, 0], np.int32)
    one = logits_per_isa(model, tokens, "all", threads=1)
    two = logits_per_isa(model, tokens, "all", threads=2)
    hidden = _core.Session(model, 8, kv_f16=False).eval(tokens, "hidden")
    for isa in ISAS:
        np.testing.assert_array_equal(one[isa].view(np.uint32), one["scalar"].view(np.uint32), err_msg=isa)
        np.testing.assert_array_equal(two[isa].view(np.uint32), one["scalar"].view(np.uint32), err_msg=isa)
    assert_matches_float64(hidden, packed["token_embd"], one["scalar"], 1e-5, "tied head")


def test_f32_head_matches_float64(restore_isa: None) -> None:
    rng = np.random.default_rng(40)
    packed, _ = random_model(HEAD_CONFIG, seed=41)
    head = rng.standard_normal((HEAD_CONFIG["vocab_size"], HEAD_CONFIG["dim"])).astype(np.float32)
    model = _core.Model(HEAD_CONFIG, {**packed, "output": head})
    tokens = rng.integers(0, HEAD_CONFIG["vocab_size"], 9).astype(np.int32)
    hidden = _core.Session(model, 16, kv_f16=False).eval(tokens, "hidden")
    logits = _core.Session(model, 16, kv_f16=False).eval(tokens, "all")
    # A sequential f32 sum of 384 terms: a looser bound than the f16 kernel's 16 partial sums.
    assert_matches_float64(hidden, head, logits, 1e-4, "f32 head")


@pytest.mark.parametrize(
    "shape",
    [
        {},  # groups of 2, head_dim 64: the kernels' 64-wide chunks
        {"n_heads": 8, "n_kv_heads": 2, "head_dim": 48},  # groups of 4, head_dim 48: 16-wide chunks
    ],
)
def test_f16_kv_cache_attention_is_the_same_on_every_isa(restore_isa: None, shape: dict) -> None:
    """Attention over an f16 KV cache goes through matvec_f16 and axpy_rows_f16 (a group's query
    heads in one call, 70 positions: past the kernels' blocks of 32 value rows): every SIMD table
    gives the scalar specification's logits bit for bit."""
    config = {**CONFIG, **shape}
    packed, _ = random_model(config, seed=21)
    tokens = np.random.default_rng(22).integers(0, config["vocab_size"], 70).astype(np.int32)
    assert_isas_equal_scalar(logits_per_isa(_core.Model(config, packed), tokens, "all", kv_f16=True))


def test_q8_head_is_exact_across_isas_and_close_to_f16(restore_isa: None) -> None:
    """The 8-bit head (int8 rows, a scale each) gives the same bits on every ISA, stays close to
    the f16 head's logits, and mostly agrees on the top token."""
    packed, _ = random_model(CONFIG, seed=31)
    q8, scale = kernels.quantize_rows_q8(packed["token_embd"])
    f16_model = _core.Model(CONFIG, packed)
    q8_model = _core.Model(CONFIG, {**packed, "output.q8": q8, "output.q8_scale": scale})
    assert q8_model.info()["head_dtype"] == "q8" and q8_model.info()["head_bytes"] < f16_model.info()["head_bytes"]
    tokens = np.random.default_rng(32).integers(0, CONFIG["vocab_size"], 40).astype(np.int32)
    results = logits_per_isa(q8_model, tokens, "all")
    assert_isas_equal_scalar(results)
    ref = _core.Session(f16_model, 48, kv_f16=False).eval(tokens, "all")
    got = results["scalar"]
    assert np.abs(got - ref).max() < 0.02 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_q8_head_extreme_values_are_exact(restore_isa: None) -> None:
    """Weights at +-127 against activations at the ends of the int8 range: the worst case for
    the kernels' sign trick and int16 pair sums, still equal to scalar bit for bit."""
    packed, _ = random_model(CONFIG, seed=34)
    rng = np.random.default_rng(35)
    q8 = rng.choice(np.array([-127, 127, -126, 0, 1], np.int8), size=(CONFIG["vocab_size"], CONFIG["dim"]))
    scale = rng.uniform(0.001, 0.01, CONFIG["vocab_size"]).astype(np.float32)
    model = _core.Model(CONFIG, {**packed, "output.q8": q8, "output.q8_scale": scale})
    tokens = rng.integers(0, CONFIG["vocab_size"], 20).astype(np.int32)
    assert_isas_equal_scalar(logits_per_isa(model, tokens, "all"))


def test_q8_head_rejects_bad_shapes() -> None:
    packed, _ = random_model(CONFIG, seed=33)
    q8, scale = kernels.quantize_rows_q8(packed["token_embd"])
    with pytest.raises(ValueError, match="output.q8"):
        _core.Model(CONFIG, {**packed, "output.q8": q8[:-1], "output.q8_scale": scale})
    with pytest.raises(ValueError, match="missing weight 'output.q8_scale'"):
        _core.Model(CONFIG, {**packed, "output.q8": q8})
    wraps = q8.copy()
    wraps[7, 3] = -128
    with pytest.raises(ValueError, match=r"holds -128 at row 7; 8-bit head values must lie in \[-127, 127\]"):
        _core.Model(CONFIG, {**packed, "output.q8": wraps, "output.q8_scale": scale})


def conversion_inputs(rng: np.random.Generator) -> np.ndarray:
    """float32 values an f16 store can meet and the edges of the conversion: many magnitudes,
    half subnormals, exact ties between two halves, the overflow threshold, infinities, zeros,
    and NaNs with assorted payloads, quiet and signalling."""
    normal = (rng.standard_normal(4096) * np.exp2(rng.uniform(-30, 18, 4096))).astype(np.float32)
    halves = rng.integers(0, 0x7C00, 1024, dtype=np.uint16).view(np.float16).astype(np.float32)
    ulp = np.spacing(halves.astype(np.float16)).astype(np.float32)
    ties = halves + ulp / 2  # exactly half way: ties go to the even half
    edges = np.array([65504.0, 65519.996, 65520.0, 1e10, np.inf, -np.inf, 0.0, -0.0, 2.0**-24, 2.0**-25,
                      3 * 2.0**-26, 2.0**-14 - 2.0**-25, 1e-45, -1e-45], np.float32)
    nan_bits = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF, 0x7FC12345, 0xFFFFFFFF, 0x7FA00000],
                        np.uint32)
    x = np.concatenate([normal, halves, ties, -ties, edges, nan_bits.view(np.float32)])
    return np.concatenate([x, np.zeros(-len(x) % 16, np.float32)])


def test_f32_to_f16_is_exact_on_every_isa() -> None:
    """The f16 KV cache's stores (KernelTable::f32_to_f16): every ISA equals scalar bit for bit,
    NaNs included, and scalar equals numpy's rounding for every value but the NaNs (numpy keeps a
    signalling NaN signalling; F16C and NEON quiet it)."""
    x = conversion_inputs(np.random.default_rng(51))
    bits = {isa: kernels.to_float16(x, isa=isa).view(np.uint16) for isa in ISAS}
    for isa in ISAS:
        np.testing.assert_array_equal(bits[isa], bits["scalar"], err_msg=isa)
    finite = ~np.isnan(x)
    with np.errstate(over="ignore"):  # values past the half range round to infinity, as they should
        reference = x[finite].astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(bits["scalar"][finite], reference)
    nans = bits["scalar"][~finite]
    assert ((nans & 0x7E00) == 0x7E00).all()  # quiet NaNs


def test_f32_to_f16_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        kernels.to_float16(np.zeros(15, np.float32))
    with pytest.raises((TypeError, ValueError), match="float32"):
        kernels.to_float16(np.zeros(16, np.float64))
