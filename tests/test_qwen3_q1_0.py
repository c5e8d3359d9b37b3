"""Q1_0 as the qwen3 tests write it, and qwen3 files that must not load.

``qwen3_factory.q1_0_quantize`` (ggml's quantize_row_q1_0_ref in numpy) is checked against the
rules of docs/formats.md one by one and against tests/formats.py's codec, and tritlm's
``repack_q1_0`` against both; then corrupt or incomplete qwen3 files give ModelLoadError naming
the problem."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import formats as F  # noqa: E402
import qwen3_factory as qf  # noqa: E402

import tritlm  # noqa: E402
from tritlm import kernels  # noqa: E402
from tritlm.errors import ModelLoadError  # noqa: E402


def test_q1_0_quantize_follows_ggml_rules() -> None:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((5, 384)) * rng.uniform(0.01, 3, (5, 1))).astype(np.float32)
    w[0, :4] = [0.0, -0.0, 1e-30, -1e-30]  # bit 1 for w >= 0, and -0.0 >= 0
    data, deq = qf.q1_0_quantize(w)
    assert data.dtype == np.uint8 and data.size == 5 * 3 * 18
    signs, d = F.decode_q1_0(data, 5, 384)  # an independent decoder
    np.testing.assert_array_equal(signs, np.where(w >= 0, 1, -1))
    assert list(signs[0, :4]) == [1, 1, 1, -1]
    for r in range(5):
        for b in range(3):
            total = np.float32(0)
            for x in w[r, 128 * b:128 * (b + 1)]:  # ggml's loop: f32, in order
                total = np.float32(total + np.abs(x))
            assert d[r, b] == np.float32(np.float16(total / np.float32(128)))
    np.testing.assert_array_equal(deq, signs * np.repeat(d, 128, axis=1))
    # byte for byte what tests/formats.py's encoder writes for the same signs and scales
    d_bits = d.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(data, F.encode_q1_0(signs, d_bits))


def test_q1_0_golden_block() -> None:
    w = np.full((1, 128), -2.0, dtype=np.float32)
    w[0, [0, 9, 127]] = 2.0
    data, deq = qf.q1_0_quantize(w)
    assert data[:2].tobytes() == np.float16(2.0).tobytes()
    assert data[2] == 0b0000_0001 and data[3] == 0b0000_0010 and data[17] == 0b1000_0000
    assert np.count_nonzero(data[2:]) == 3
    np.testing.assert_array_equal(deq, w)


@pytest.mark.parametrize("n,k", [(1, 128), (9, 640), (40, 2048)])
def test_repack_q1_0_matches_the_encoder(n: int, k: int) -> None:
    rng = np.random.default_rng(n * k)
    data, deq = qf.q1_0_quantize(rng.standard_normal((n, k)).astype(np.float32))
    pw = kernels.repack_q1_0(data, n, k)
    codes, scales = pw.unpack()
    assert pw.format == "binary" and pw.group_size == 128
    np.testing.assert_array_equal(codes * np.repeat(scales, 128, axis=1), deq)
    x = rng.standard_normal((3, k)).astype(np.float32)
    a = kernels.quantize_activations(x)
    want = (a.q.astype(np.float64) @ deq.T.astype(np.float64)) / a.scale[:, None]
    np.testing.assert_allclose(kernels.matmul(pw, a), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ----- files -------------------------------------------------------------------------------------

SHAPE = dict(hidden=256, ffn=384, layers=2, heads=4, kv_heads=2, head_dim=64, vocab=300)


@pytest.fixture(scope="module")
def model() -> tuple[qf.Reference, object]:
    return qf.build_reference(**SHAPE, seed=2), qf.train_tokenizer(280)


def write(tmp_path: Path, model, **kw) -> Path:
    ref, tok = model
    return qf.write_gguf(tmp_path / "m.gguf", ref, tok, **kw)


def patch_dim0(path: Path, tensor: str, value: int) -> None:
    """Overwrite ne[0] (the row length) in a tensor's header entry."""
    raw = bytearray(path.read_bytes())
    name = tensor.encode()
    at = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    raw[at + 4:at + 12] = struct.pack("<Q", value)  # after n_dims (u32)
    path.write_bytes(bytes(raw))


def test_fused_qkv_loads_like_separate_tensors(tmp_path: Path, model) -> None:
    ref, _ = model
    q, k, v = (ref.stored[f"blk.0.attn_{x}"].reshape(-1) for x in "qkv")
    fused = np.concatenate([q, k, v]).reshape(-1, SHAPE["hidden"] // 128 * 18)
    drop = frozenset({"blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v"})
    fused_path = qf.write_gguf(tmp_path / "fused.gguf", *model, drop=drop,
                               tensors={"blk.0.attn_qkv.weight": (fused, "Q1_0")})
    ids = list(range(5, 40))
    want = tritlm.LLM(write(tmp_path, model), n_ctx=64).eval_logits(ids)
    np.testing.assert_array_equal(tritlm.LLM(fused_path, n_ctx=64).eval_logits(ids), want)


CORRUPTIONS = {
    "row length not a multiple of 128": (
        lambda p: patch_dim0(p, "blk.0.ffn_up.weight", 200), "not a multiple of Q1_0's block size 128"),
    "data cut short": (
        lambda p: p.write_bytes(p.read_bytes()[:-100]), "lies outside the file"),
    "wrong row length": (
        lambda p: patch_dim0(p, "blk.1.attn_v.weight", 384), r"blk.1.attn_v.weight has shape \[128, 384\]"),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_corrupt_q1_0_tensor_sizes(tmp_path: Path, model, what: str) -> None:
    corrupt, message = CORRUPTIONS[what]
    path = write(tmp_path, model)
    corrupt(path)
    with pytest.raises(ModelLoadError, match=message):
        tritlm.LLM(path)


def test_non_finite_q1_0_scale(tmp_path: Path, model) -> None:
    ref, _ = model
    bad = ref.stored["blk.1.ffn_down"].copy()
    bad[18 * 3:18 * 3 + 2] = np.frombuffer(np.float16(np.inf).tobytes(), np.uint8)
    path = write(tmp_path, model, tensors={"blk.1.ffn_down.weight": (bad.reshape(SHAPE["hidden"], -1), "Q1_0")})
    with pytest.raises(ModelLoadError, match=r"blk.1.ffn_down.weight \(Q1_0\): block 3 has a non-finite scale"):
        tritlm.LLM(path)


BAD_FILES = {
    "missing k norm": (dict(drop=frozenset({"blk.1.attn_k_norm"})), "missing tensor blk.1.attn_k_norm.weight"),
    "q norm of the wrong size": (
        dict(tensors={"blk.0.attn_q_norm.weight": (np.ones(256, np.float32), "F32")}),
        r"blk.0.attn_q_norm.weight has shape \[256\]"),
    "linear bias": (
        dict(tensors={"blk.0.attn_q.bias": (np.zeros(256, np.float32), "F32")}), "blk.0.attn_q.bias: biases are not"),
    "fused and separate qkv": (
        dict(tensors={"blk.0.attn_qkv.weight": (np.zeros((512, 4), np.float32), "F32")}), "both attn_qkv and attn_q"),
    "partial rope": (
        dict(fields={"qwen3.rope.dimension_count": (32, 4)}), "partial RoPE is not supported"),  # 4: UINT32
    "no head count": (dict(fields={"qwen3.attention.head_count": None}), "missing metadata qwen3.attention.head_count"),
}


@pytest.mark.parametrize("what", list(BAD_FILES))
def test_incomplete_or_unsupported_qwen3_files(tmp_path: Path, model, what: str) -> None:
    kw, message = BAD_FILES[what]
    with pytest.raises(ModelLoadError, match=message):
        tritlm.LLM(write(tmp_path, model, **kw))
