"""Broken model files: every problem is a ModelLoadError naming the file, never another exception,
a crash or a hang. Targeted corruptions first (each checks its message), then a few hundred
seeded random mutations of a small valid GGUF."""

from __future__ import annotations

import os
import struct
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import model_factory as mf  # noqa: E402

import gguf  # noqa: E402  (test extra)

from tritlm.errors import ModelLoadError  # noqa: E402
from tritlm.loaders import ModelSpec, load_gguf, load_model  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    hf = mf.build_master(root / "hf", hidden=256, ffn=256, layers=1, heads=4, kv_heads=2, tie=True, seed=7)
    path = mf.build_gguf(hf, root / "base.gguf", "tq2_0")
    load_gguf(path)  # valid to begin with
    return path


class Layout:
    """Byte offsets of header fields, found through gguf-py's reader (its parts are views of the
    file's memory map)."""

    def __init__(self, path):
        r = gguf.GGUFReader(str(path))
        base = r.data.ctypes.data
        off = lambda a: a.ctypes.data - base  # noqa: E731
        self.data_start = r.data_offset
        self.tensor = {}
        for t in r.tensors:
            _, _, n_dims, dims, dtype, offset = t.field.parts
            self.tensor[t.name] = {"n_dims": off(n_dims), "dims": off(dims), "type": off(dtype),
                                   "offset": off(offset), "data": t.data_offset, "ne": dims.tolist()}
        self.field = {}
        for k, f in r.fields.items():
            if k.startswith("GGUF."):
                continue
            self.field[k] = {"value": off(f.parts[3]), "parts": [off(p) for p in f.parts]}


def patched(src, dst, at: int, data: bytes):
    b = bytearray(src.read_bytes())
    b[at:at + len(data)] = data
    dst.write_bytes(bytes(b))
    return dst


def expect_error(path, match: str):
    with pytest.raises(ModelLoadError, match=match) as e:
        load_model(path)
    assert os.fspath(path) in str(e.value)


def test_missing_file(tmp_path):
    for fn in (load_model, load_gguf):
        with pytest.raises(ModelLoadError) as e:
            fn(tmp_path / "nope.gguf")
        assert "nope.gguf" in str(e.value)


def test_empty_bad_magic_and_truncation(base, tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="too short") as e:
        load_gguf(p)
    assert str(p) in str(e.value)
    expect_error(patched(base, tmp_path / "magic.gguf", 0, b"GGUX"), "not a GGUF")
    with pytest.raises(ModelLoadError, match="magic"):
        load_gguf(tmp_path / "magic.gguf")
    data = base.read_bytes()
    lay = Layout(base)
    for cut in (5, 20, 100, lay.data_start - 3, lay.data_start + 10, len(data) - 1):
        q = tmp_path / f"cut{cut}.gguf"
        q.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="past the end|outside the file|too short|larger than the file") as e:
            load_gguf(q)
        assert str(q) in str(e.value)


def test_version_and_endianness(base, tmp_path):
    expect_error(patched(base, tmp_path / "v1.gguf", 4, struct.pack("<I", 1)), "version 1")
    expect_error(patched(base, tmp_path / "v9.gguf", 4, struct.pack("<I", 9)), "version 9")
    expect_error(patched(base, tmp_path / "be.gguf", 4, struct.pack(">I", 3)), "big-endian")


def test_offsets_past_the_end_and_misaligned(base, tmp_path):
    lay = Layout(base)
    t = lay.tensor["blk.0.ffn_down.weight"]
    expect_error(patched(base, tmp_path / "far.gguf", t["offset"], struct.pack("<Q", 1 << 40)), "outside the file")
    size = base.stat().st_size
    rel = (size - lay.data_start) // 32 * 32  # aligned, but the data runs past the end
    expect_error(patched(base, tmp_path / "end.gguf", t["offset"], struct.pack("<Q", rel)), "outside the file")
    cur = t["data"] - lay.data_start
    expect_error(patched(base, tmp_path / "mis.gguf", t["offset"], struct.pack("<Q", cur + 1)), "alignment")


def test_wrong_tensor_sizes(base, tmp_path):
    lay = Layout(base)
    t = lay.tensor["blk.0.attn_k.weight"]  # ne = [256, 128]
    expect_error(patched(base, tmp_path / "rows.gguf", t["dims"] + 8, struct.pack("<Q", 64)), "blk.0.attn_k.weight has shape")
    expect_error(patched(base, tmp_path / "cols.gguf", t["dims"], struct.pack("<Q", 100)), "multiple of TQ2_0's block size")
    # a norm with the wrong length, written by gguf-py
    p = mf.rewrite_gguf(base, tmp_path / "norm.gguf", tensors={
        "blk.0.ffn_sub_norm.weight": (np.ones(128, dtype=np.float32), None)})
    expect_error(p, "ffn_sub_norm.weight has shape")
    # token_embd with another width
    p = mf.rewrite_gguf(base, tmp_path / "emb.gguf", tensors={
        "token_embd.weight": (np.ones((300, 128), dtype=np.float16), None)})
    expect_error(p, "token_embd.weight has shape")


@pytest.mark.parametrize("type_id, match", [(99, "unknown ggml type id 99"), (37, "unknown ggml type id 37"),
                                            (1 << 31, "unknown ggml type")])
def test_unknown_type_ids(base, tmp_path, type_id, match):
    lay = Layout(base)
    t = lay.tensor["blk.0.attn_q.weight"]
    expect_error(patched(base, tmp_path / "type.gguf", t["type"], struct.pack("<I", type_id)), match)


def test_unsupported_types_for_a_role(base, tmp_path):
    lay = Layout(base)
    t = lay.tensor["output_norm.weight"]  # F32 [256] -> claim I2_S: the size no longer matches data
    p = patched(base, tmp_path / "i2s-norm.gguf", t["type"], struct.pack("<I", 36))
    with pytest.raises(ModelLoadError):
        load_model(p)


def test_missing_tensors_and_metadata(base, tmp_path):
    p = mf.rewrite_gguf(base, tmp_path / "t.gguf", tensors={"blk.0.ffn_up.weight": None})
    expect_error(p, "missing tensor blk.0.ffn_up.weight")
    p = mf.rewrite_gguf(base, tmp_path / "n.gguf", tensors={"blk.0.attn_sub_norm.weight": None})
    expect_error(p, "missing tensor blk.0.attn_sub_norm.weight")
    p = mf.rewrite_gguf(base, tmp_path / "m.gguf", fields={"bitnet-b1.58.block_count": None})
    expect_error(p, "missing metadata bitnet-b1.58.block_count")
    p = mf.rewrite_gguf(base, tmp_path / "a.gguf", arch="mamba")
    expect_error(p, "unsupported architecture 'mamba'")
    # duplicate tensor names: rename attn_k's entry to attn_q in place (same name length)
    lay = Layout(base)
    name_at = lay.tensor["blk.0.attn_k.weight"]["n_dims"] - len("blk.0.attn_k.weight")
    p = patched(base, tmp_path / "dup.gguf", name_at, b"blk.0.attn_q.weight")
    expect_error(p, "duplicate tensor 'blk.0.attn_q.weight'")


def test_absurd_dimensions(base, tmp_path):
    lay = Layout(base)
    t = lay.tensor["blk.0.attn_q.weight"]
    expect_error(patched(base, tmp_path / "big.gguf", t["dims"] + 8, struct.pack("<Q", 1 << 40)), "attn_q")
    expect_error(patched(base, tmp_path / "zero.gguf", t["dims"], struct.pack("<Q", 0)), "dimensions")
    expect_error(patched(base, tmp_path / "ndims.gguf", t["n_dims"], struct.pack("<I", 9)), "dimensions")
    f = lay.field
    expect_error(patched(base, tmp_path / "layers.gguf", f["bitnet-b1.58.block_count"]["value"],
                         struct.pack("<I", 1 << 31)), "n_layers|block_count")
    expect_error(patched(base, tmp_path / "dim.gguf", f["bitnet-b1.58.embedding_length"]["value"],
                         struct.pack("<I", 10 ** 9)), "embedding_length|dim")
    expect_error(patched(base, tmp_path / "heads.gguf", f["bitnet-b1.58.attention.head_count_kv"]["value"],
                         struct.pack("<I", 3)), "n_kv_heads|head_count")
    expect_error(patched(base, tmp_path / "heads0.gguf", f["bitnet-b1.58.attention.head_count"]["value"],
                         struct.pack("<I", 0)), "head_count = 0 is out of range")
    for n in (2 ** 40, 0):  # a trained context length no model has
        p = mf.rewrite_gguf(base, tmp_path / "ctx.gguf", fields={
            "bitnet-b1.58.context_length": (n, gguf.GGUFValueType.UINT64)})
        expect_error(p, rf"max_position \(the trained context length\) must be an integer in 1\.\.1073741824, got {n}")
    # array and string lengths beyond the file: bounded before looping (gguf-py would spin)
    tok = f["tokenizer.ggml.tokens"]["parts"]
    expect_error(patched(base, tmp_path / "arr.gguf", tok[4], struct.pack("<Q", 1 << 60)), "past the end")
    sc = f["tokenizer.ggml.token_type"]["parts"]
    expect_error(patched(base, tmp_path / "arr2.gguf", sc[4], struct.pack("<Q", 1 << 62)), "past the end")
    expect_error(patched(base, tmp_path / "str.gguf", tok[5], struct.pack("<Q", 1 << 62)), "past the end")
    expect_error(patched(base, tmp_path / "kv.gguf", 16, struct.pack("<Q", 1 << 50)), "metadata count")
    expect_error(patched(base, tmp_path / "tn.gguf", 8, struct.pack("<Q", 1 << 50)), "tensor count")


def test_invalid_codes_name_the_tensor(base, tmp_path):
    lay = Layout(base)
    t = lay.tensor["blk.0.attn_v.weight"]
    expect_error(patched(base, tmp_path / "code3.gguf", t["data"], b"\xff"), "blk.0.attn_v.weight")


def test_non_finite_floats_name_the_tensor_and_row(base, tmp_path):
    """A NaN or infinity in any float tensor is refused at load, not by the first request that
    reads it: F16 / BF16 / F32 tensors directly, Q8_0 through a block's scale."""
    lay = Layout(base)
    emb = lay.tensor["token_embd.weight"]  # BF16 [300, 256]
    p = patched(base, tmp_path / "bf16.gguf", emb["data"] + (5 * 256 + 3) * 2, struct.pack("<H", 0xFF80))
    expect_error(p, r"'token_embd.weight' \(BF16\) has a non-finite value: -inf at row 5, column 3")
    norm = lay.tensor["output_norm.weight"]  # F32 [256]
    p = patched(base, tmp_path / "f32.gguf", norm["data"] + 7 * 4, struct.pack("<f", float("nan")))
    expect_error(p, r"'output_norm.weight' \(F32\) has a non-finite value: nan at index 7")
    for name, shape, where in (("blk.0.ffn_down.weight", (256, 256), (9, 1)),  # an F16 linear
                               ("token_embd.weight", (300, 256), (299, 255))):  # an F16 table: a view
        w = np.ones(shape, dtype=np.float16)
        w[where] = np.inf
        p = mf.rewrite_gguf(base, tmp_path / "f16.gguf", tensors={name: (w, None)})
        expect_error(p, rf"'{name}' \(F16\) has a non-finite value: inf at row {where[0]}, column {where[1]}")

    q8 = gguf.quants.quantize(np.ones((256, 256), dtype=np.float32), gguf.GGMLQuantizationType.Q8_0)
    q8[2, 34:36] = np.frombuffer(struct.pack("<H", 0x7E00), dtype=np.uint8)  # row 2, block 1: d = NaN
    p = mf.rewrite_gguf(base, tmp_path / "q8.gguf", tensors={
        "blk.0.ffn_up.weight": (q8, gguf.GGMLQuantizationType.Q8_0)})
    expect_error(p, r"'blk.0.ffn_up.weight' \(Q8_0\) has a non-finite value: nan at row 2, column 32")


def test_bad_tokenizer_ids(base, tmp_path):
    lay = Layout(base)
    expect_error(patched(base, tmp_path / "bos.gguf", lay.field["tokenizer.ggml.bos_token_id"]["value"],
                         struct.pack("<I", 300)), "bos_token_id")


def test_random_mutations(base, tmp_path):
    rng = np.random.default_rng(20240611)
    data = base.read_bytes()
    lay = Layout(base)
    header = lay.data_start
    path = tmp_path / "m.gguf"
    outcomes = {"ok": 0, "error": 0}
    slowest = 0.0
    t_all = time.perf_counter()
    n = 500
    for i in range(n):
        b = bytearray(data)
        kind = rng.random()
        if kind < 0.55:  # a few header bytes
            for _ in range(rng.integers(1, 5)):
                b[rng.integers(0, header)] = rng.integers(0, 256)
        elif kind < 0.75:  # an 8-byte integer somewhere in the header
            at = int(rng.integers(0, header - 8))
            v = int(rng.choice([0, 1, 2, 3, 255, 1 << 31, 1 << 32, 1 << 63, rng.integers(0, 1 << 62)]))
            b[at:at + 8] = struct.pack("<Q", v)
        elif kind < 0.85:  # truncation
            b = b[: rng.integers(0, len(b))]
        else:  # data bytes
            for _ in range(rng.integers(1, 16)):
                b[rng.integers(0, len(b))] = rng.integers(0, 256)
        path.write_bytes(bytes(b))
        t0 = time.perf_counter()
        try:
            spec = load_model(path)
            assert isinstance(spec, ModelSpec)
            outcomes["ok"] += 1
        except ModelLoadError as e:
            assert str(path) in str(e), str(e)
            outcomes["error"] += 1
        slowest = max(slowest, time.perf_counter() - t0)
    total = time.perf_counter() - t_all
    assert outcomes["ok"] > 0 and outcomes["error"] > 0, outcomes
    assert slowest < 5.0, slowest
    assert total < 60.0, total


def test_random_field_mutations(base, tmp_path):
    """Structure-aware: overwrite the hyperparameters, counts, dimensions, types and offsets that
    random bytes rarely hit (the vocabulary fills most of the header)."""
    rng = np.random.default_rng(77)
    data = base.read_bytes()
    lay = Layout(base)
    spots = []  # (offset, width)
    for k, f in lay.field.items():
        if not k.startswith("tokenizer.ggml.tokens") and not k.startswith("tokenizer.ggml.merges"):
            spots += [(o, 4) for o in f["parts"][2:6]]  # type, value / item type, count ...
    for t in lay.tensor.values():
        spots += [(t["n_dims"], 4), (t["dims"], 8), (t["dims"] + 8, 8), (t["type"], 4), (t["offset"], 8)]
    values = [0, 1, 2, 3, 7, 8, 9, 12, 13, 30, 34, 35, 36, 41, 64, 128, 255, 256, 1 << 16, 1 << 31,
              (1 << 32) - 1, 1 << 40, (1 << 64) - 1]
    path = tmp_path / "f.gguf"
    t_all = time.perf_counter()
    outcomes = {"ok": 0, "error": 0}
    for i in range(400):
        b = bytearray(data)
        for _ in range(rng.integers(1, 3)):
            at, width = spots[rng.integers(0, len(spots))]
            v = int(rng.choice(values)) if rng.random() < 0.7 else int(rng.integers(0, 1 << 20))
            b[at:at + width] = (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        path.write_bytes(bytes(b))
        try:
            load_model(path)
            outcomes["ok"] += 1
        except ModelLoadError as e:
            assert str(path) in str(e), str(e)
            outcomes["error"] += 1
    assert outcomes["error"] > 0, outcomes
    assert time.perf_counter() - t_all < 60.0


def test_missing_tokenizer(base, tmp_path):
    p = mf.rewrite_gguf(base, tmp_path / "notok.gguf", fields={"tokenizer.ggml.tokens": None})
    expect_error(p, "no tokenizer")
    p = mf.rewrite_gguf(base, tmp_path / "badscores.gguf", fields={
        "tokenizer.ggml.token_type": ([1, 2, 3], gguf.GGUFValueType.ARRAY, gguf.GGUFValueType.INT32)})
    expect_error(p, "token_type")
