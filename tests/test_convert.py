"""convert(): HF folder -> GGUF that gguf-py's reader opens with the expected keys and tensor
names (llama.cpp's), and that tritlm reads back to the same weights."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import formats as F  # noqa: E402
import model_factory as mf  # noqa: E402

import gguf  # noqa: E402  (test extra)

import tritlm  # noqa: E402
from tritlm.errors import InvalidArgumentError, ModelLoadError  # noqa: E402
from tritlm.loaders import load_gguf, load_hf  # noqa: E402
from tritlm.loaders.convert import convert, write_gguf  # noqa: E402
from tritlm.loaders.gguf import read_gguf  # noqa: E402
from tritlm.loaders.spec import dense_from_linear  # noqa: E402

T = gguf.GGMLQuantizationType
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    return mf.build_master(tmp_path_factory.mktemp("convert") / "master", seed=11)


def expected_names(n_layers: int, output: bool = True) -> set[str]:
    names = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if output else set())
    for i in range(n_layers):
        names |= {f"blk.{i}.{s}.weight" for s in LINEARS + ("attn_norm", "ffn_norm", "attn_sub_norm", "ffn_sub_norm")}
    return names


@pytest.mark.parametrize("typ, qt, file_type", [("tq2_0", T.TQ2_0, 37), ("tq1_0", T.TQ1_0, 36)])
def test_tq_file_is_readable_by_gguf_py(master, tmp_path, typ, qt, file_type):
    path = convert(master, tmp_path / f"m-{typ}.gguf", typ)
    r = gguf.GGUFReader(path)
    f = {k: v.contents() for k, v in r.fields.items()}
    arch = "bitnet-b1.58"
    assert f["general.architecture"] == arch
    assert f["general.file_type"] == file_type
    expect = {
        f"{arch}.block_count": 2, f"{arch}.embedding_length": 256, f"{arch}.feed_forward_length": 384,
        f"{arch}.attention.head_count": 4, f"{arch}.attention.head_count_kv": 2,
        f"{arch}.rope.dimension_count": 64, f"{arch}.context_length": 512, f"{arch}.vocab_size": 300,
        f"{arch}.hidden_activation": "relu2", "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.add_bos_token": True,
    }
    for k, v in expect.items():
        assert f[k] == v, k
    assert f[f"{arch}.rope.freq_base"] == 500000.0
    assert np.float32(f[f"{arch}.attention.layer_norm_rms_epsilon"]) == np.float32(1e-5)
    assert len(f["tokenizer.ggml.tokens"]) == 300
    assert f["tokenizer.chat_template"] == mf.CHAT_TEMPLATE
    tj = json.loads((master / "tokenizer.json").read_text())
    ids = {a["content"]: a["id"] for a in tj["added_tokens"]}
    assert f["tokenizer.ggml.bos_token_id"] == ids["<|begin_of_text|>"]
    assert f["tokenizer.ggml.eos_token_id"] == ids["<|end_of_text|>"]
    assert f["tokenizer.ggml.eot_token_id"] == ids["<|eot_id|>"]
    tensors = {t.name: t for t in r.tensors}
    assert set(tensors) == expected_names(2)
    for i in range(2):
        for s in LINEARS:
            t = tensors[f"blk.{i}.{s}.weight"]
            assert t.tensor_type == (T.F16 if s == "ffn_down" else qt), t.name  # 384 % 256 != 0
    assert tensors["blk.0.attn_q.weight"].shape.tolist() == [256, 256]
    assert tensors["blk.0.attn_k.weight"].shape.tolist() == [256, 128]  # ne: [in, out]
    assert tensors["token_embd.weight"].shape.tolist() == [256, 300]
    assert tensors["blk.0.attn_norm.weight"].tensor_type == T.F32

    # gguf-py's own TQ decoder gives back the weights transformers computes with
    ref = mf.reference_weights(master)
    for i in range(2):
        for s in LINEARS:
            t = tensors[f"blk.{i}.{s}.weight"]
            got = gguf.quants.dequantize(np.array(t.data), t.tensor_type).reshape(ref[f"blk.{i}.{s}"].shape)
            assert np.array_equal(got, ref[f"blk.{i}.{s}"]), t.name


@pytest.mark.parametrize("typ", ["tq2_0", "tq1_0", "i2_s"])
def test_round_trip(master, tmp_path, typ):
    path = convert(master, tmp_path / f"rt-{typ}.gguf", typ)
    a, b = load_hf(master), load_gguf(path)
    assert a.config == b.config
    assert (a.bos_id, a.eos_ids, a.add_bos, a.chat_template) == (b.bos_id, b.eos_ids, b.add_bos, b.chat_template)
    for name in a.weights:
        wa, wb = a.weights[name], b.weights[name]
        da = wa if isinstance(wa, np.ndarray) else dense_from_linear(wa)
        db = wb if isinstance(wb, np.ndarray) else dense_from_linear(wb)
        assert np.array_equal(da.astype(np.float32), db.astype(np.float32)), name
    # GGUF -> GGUF keeps everything too (tokenizer from tokenizer.ggml.* this time)
    again = load_gguf(write_gguf(b, tmp_path / "again.gguf", typ))
    assert again.config == b.config and again.tokenizer.tokens == b.tokenizer.tokens
    assert again.tokenizer.merges == b.tokenizer.merges and again.eos_ids == b.eos_ids


def test_i2_s_bytes(master, tmp_path):
    """I2_S tensors: bitnet.cpp's size (n*k/4 + 32), layout and scale, decoded by tests/formats.py."""
    path = convert(master, tmp_path / "i2s.gguf", "i2_s")
    ref = mf.reference_weights(master)
    with read_gguf(path) as f:
        for i in range(2):
            for s in LINEARS:
                t = f.tensors[f"blk.{i}.{s}.weight"]
                n, k = t.shape
                assert t.type_id == 36 and t.nbytes == n * k // 4 + 32
                assert t.offset % f.alignment == 0
                w, scales = F.decode_i2_s(f.raw(t).copy(), n, k)
                assert np.array_equal(w * scales, ref[f"blk.{i}.{s}"])
    # gguf-py's reader cannot open it at all (type 36 is not in its enum): why tritlm parses GGUF itself
    with pytest.raises(ValueError):
        gguf.GGUFReader(path)


def test_own_parser_agrees_with_gguf_py(master, tmp_path):
    path = convert(master, tmp_path / "agree.gguf", "tq2_0")
    r = gguf.GGUFReader(path)
    with read_gguf(path) as f:
        assert set(f.fields) == {k for k in r.fields if not k.startswith("GGUF.")}
        for k, v in f.fields.items():
            ref = r.fields[k].contents()
            got = v.tolist() if isinstance(v, np.ndarray) else v
            if isinstance(ref, float):
                assert np.float32(got) == np.float32(ref), k
            else:
                assert got == ref, k
        assert set(f.tensors) == {t.name for t in r.tensors}
        for t in r.tensors:
            mine = f.tensors[t.name]
            assert mine.offset == t.data_offset and mine.nbytes == t.n_bytes and mine.type_id == t.tensor_type
            assert list(mine.ne) == t.shape.tolist()


def test_silu_tied_is_llamacpp_bitnet(tmp_path):
    folder = mf.build_master(tmp_path / "silu", act="silu", tie=True, seed=2, hidden=128, ffn=256, heads=2, kv_heads=1)
    path = convert(folder, tmp_path / "silu.gguf", "tq2_0")
    r = gguf.GGUFReader(path)
    assert r.fields["general.architecture"].contents() == "bitnet"
    assert r.fields["bitnet.hidden_activation"].contents() == "silu"
    assert {t.name for t in r.tensors} == expected_names(2, output=False)
    spec = load_gguf(path)
    assert spec.config["arch"] == "bitnet" and spec.config["activation"] == "silu" and "output" not in spec.weights
    # hidden 128: every row length is < 256, so TQ2_0 falls back to F16 (exact for bf16 scales)
    assert {spec.tensor_types[f"blk.0.{s}"] for s in LINEARS} == {"F16", "TQ2_0"}
    ref = mf.reference_weights(folder)
    for n, w in ref.items():
        got = spec.weights[n]
        got = got if isinstance(got, np.ndarray) else dense_from_linear(got)
        assert np.array_equal(got.astype(np.float32), w), n


def test_convert_errors(master, tmp_path):
    with pytest.raises(ValueError, match="type"):
        convert(master, tmp_path / "x.gguf", "q4_0")
    with pytest.raises(ModelLoadError):
        convert(tmp_path / "missing", tmp_path / "y.gguf")
    spec = load_hf(master)
    with pytest.raises(ValueError, match="override"):
        write_gguf(spec, tmp_path / "z.gguf", tensor_types={"blk.0.attn_q": "q4_k"})


@pytest.mark.parametrize("typ", ["tq2_0", "tq1_0", "i2_s"])
def test_converted_file_generates_the_same_greedy_tokens(master, tmp_path, typ):
    """End to end, past the weight comparison above: the same logits, so the same greedy text."""
    path = convert(master, tmp_path / f"gen-{typ}.gguf", typ)
    ids = [5, 17, 42, 99, 7]
    source, converted = (tritlm.LLM(m, n_ctx=64, max_seqs=1) for m in (master, path))
    assert np.array_equal(source.eval_logits(ids), converted.eval_logits(ids))
    runs = [m.generate(ids, max_tokens=24, temperature=0, ignore_eos=True).token_ids for m in (source, converted)]
    assert runs[0] == runs[1] and len(set(runs[0])) > 1


def test_a_qwen3_model_is_refused_not_written_as_llama(tmp_path):
    """Written as llama, a Qwen3 model would load back without its q/k norms: another model."""
    import qwen3_factory as qf

    ref = qf.build_reference(hidden=128, ffn=256, layers=1, heads=2, kv_heads=1, head_dim=64, vocab=320, seed=5)
    spec = load_gguf(qf.write_gguf(tmp_path / "q3.gguf", ref, qf.train_tokenizer(300)))
    with pytest.raises(ValueError, match="cannot write a qwen3 model"):
        write_gguf(spec, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_destination_is_checked_before_the_source_is_read(master, tmp_path):
    missing = tmp_path / "nope"  # not read at all: the destination's error comes first
    with pytest.raises(InvalidArgumentError, match="no such folder"):
        convert(missing, tmp_path / "missing" / "out.gguf")
    with pytest.raises(InvalidArgumentError, match="is a folder"):
        convert(missing, tmp_path)
    with pytest.raises(InvalidArgumentError, match="not a regular file"):
        convert(missing, os.devnull)
    with pytest.raises(ModelLoadError, match="convert reads a Hugging Face BitNet folder"):
        convert(convert(master, tmp_path / "m.gguf"), tmp_path / "again.gguf")


def test_a_failed_write_leaves_the_old_file(master, tmp_path, monkeypatch):
    """The file is written beside its name and renamed at the end, so Ctrl-C (or a full disk)
    midway neither leaves half a GGUF file nor destroys the one that was there."""
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"the old file")

    def interrupted(*args: object) -> None:  # the header is written, the tensors are not
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(master, dst)
    assert dst.read_bytes() == b"the old file"
    assert os.listdir(tmp_path) == ["out.gguf"]


def test_a_1_bit_head_is_written_back_as_q1_0(master, tmp_path):
    """A packed output head (what load_gguf makes of a Q1_0 head, 1-bit) was read as a float
    table (``a.dtype``: AttributeError, found by mypy): it is written as Q1_0, exactly."""
    spec = load_hf(master)
    n, k = spec.weights["token_embd"].shape
    rng = np.random.default_rng(5)
    signs = np.where(rng.random((n, k)) < 0.5, -1, 1).astype(np.int8)
    d = rng.uniform(0.01, 0.05, size=(n, k // 128)).astype(np.float16).astype(np.float32)  # fp16-exact
    spec.weights["output"] = tritlm.kernels.pack_binary(signs, d, group_size=128)
    out = load_gguf(write_gguf(spec, tmp_path / "head.gguf", "tq2_0"))
    head = out.weights["output"]
    assert out.tensor_types["output"] == "Q1_0" and head.format == "binary"
    assert np.array_equal(dense_from_linear(head), dense_from_linear(spec.weights["output"]))
    # a float type asked for it still writes a float table
    out = load_gguf(write_gguf(spec, tmp_path / "f16.gguf", "tq2_0", tensor_types={"output": "f16"}))
    assert out.tensor_types["output"] == "F16"
    assert np.array_equal(out.weights["output"].astype(np.float32), dense_from_linear(spec.weights["output"]))
