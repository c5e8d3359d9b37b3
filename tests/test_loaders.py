"""Loaders: every route to a model (HF master weights, HF packed, GGUF TQ1_0/TQ2_0/I2_S, GGUF float
and Q8_0/Q1_0/BF16 linears) gives the same canonical weights, the ones transformers computes with.

The referee is ``model_factory.reference_weights``: transformers' WeightQuant, run in torch on the
saved master weights. Packed checkpoints are encoded by tests/formats.py, not by tritlm.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import model_factory as mf  # noqa: E402

import gguf  # noqa: E402  (test extra)

from tritlm import kernels  # noqa: E402
from tritlm.errors import ModelLoadError  # noqa: E402
from tritlm.loaders import load_gguf, load_hf, load_model  # noqa: E402
from tritlm.loaders.convert import write_gguf  # noqa: E402
from tritlm.loaders.spec import dense_from_linear, expected_shapes  # noqa: E402

T = gguf.GGMLQuantizationType


def dense(w) -> np.ndarray:
    if isinstance(w, np.ndarray):
        return w.astype(np.float32)
    return dense_from_linear(w)


def assert_same_weights(spec, ref, names=None):
    names = names or ref.keys()
    assert set(spec.weights) == set(ref), sorted(set(spec.weights) ^ set(ref))
    for n in names:
        got = dense(spec.weights[n])
        assert got.shape == ref[n].shape, n
        assert np.array_equal(got, ref[n]), n


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    m = {}
    m["master"] = mf.build_master(root / "master")
    m["ref"] = mf.reference_weights(m["master"])
    m["packed"] = mf.build_packed(m["master"], root / "packed", linear_class="bitlinear")
    m["packed_auto"] = mf.build_packed(m["master"], root / "packed_auto", linear_class="autobitlinear")
    for t in ("tq2_0", "tq1_0", "i2_s"):
        m[t] = mf.build_gguf(m["master"], root / f"model-{t}.gguf", t)
    m["root"] = root
    return m


# ----------------------------------------------------------------------------------------------
# Hugging Face folders


def test_master_weights_match_transformers(models):
    spec = load_hf(models["master"])
    assert_same_weights(spec, models["ref"])
    for i in range(2):
        for short in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            w = spec.weights[f"blk.{i}.{short}"]
            assert isinstance(w, kernels.PackedWeights) and w.format == "ternary"
            assert w.group_size == w.k  # one per-tensor scale
            assert spec.tensor_types[f"blk.{i}.{short}"] == "bf16"
    assert spec.weights["token_embd"].dtype == np.float32  # bf16 widened exactly
    assert spec.weights["output"].dtype == np.float32
    assert spec.weights["blk.0.attn_norm"].dtype == np.float32


def test_master_config_and_tokenizer(models):
    spec = load_model(models["master"])
    assert spec.config == {
        "arch": "bitnet-b1.58", "n_layers": 2, "dim": 256, "n_heads": 4, "n_kv_heads": 2,
        "head_dim": 64, "ffn_dim": 384, "vocab_size": 300, "rope_theta": 500000.0,
        "norm_eps": float(np.float32(1e-5)), "activation": "relu2", "sub_norms": True,
        "max_position": 512,
    }
    tj_text = (models["master"] / "tokenizer.json").read_text()
    ids = {s: i for s, i in json.loads(tj_text)["model"]["vocab"].items()}
    ids.update({a["content"]: a["id"] for a in json.loads(tj_text)["added_tokens"]})
    assert spec.tokenizer.tokenizer_json == tj_text
    assert spec.bos_id == ids["<|begin_of_text|>"] == spec.tokenizer.bos_id
    assert spec.eos_ids == [ids["<|end_of_text|>"], ids["<|eot_id|>"]]
    assert spec.add_bos is True  # from the post-processor (Llama 3 has no add_bos_token)
    assert spec.chat_template == mf.CHAT_TEMPLATE
    assert spec.path == os.fspath(models["master"])


@pytest.mark.parametrize("variant", ["packed", "packed_auto"])
def test_packed_checkpoint_matches_master(models, variant):
    spec = load_hf(models[variant])
    assert_same_weights(spec, models["ref"])
    assert spec.tensor_types["blk.1.ffn_down"] == "hf_packed"
    assert spec.config == load_hf(models["master"]).config


def test_f32_master_weights(tmp_path):
    """f32 master weights: the same codes as transformers; the multiplier 1 / scale can differ in
    its last bit, because torch sums |W| in f32 in its own order and tritlm computes the mean in
    f64 (for bf16 checkpoints the bf16 rounding of the multiplier hides this)."""
    folder = mf.build_master(tmp_path / "f32", dtype="float32", seed=3)
    spec = load_hf(folder)
    ref = mf.reference_weights(folder)
    for name, r in ref.items():
        got = dense(spec.weights[name])
        if isinstance(spec.weights[name], kernels.PackedWeights):
            assert np.array_equal(np.sign(got), np.sign(r)), name
            np.testing.assert_allclose(got, r, rtol=4e-7, atol=0, err_msg=name)
        else:
            assert np.array_equal(got, r), name
    assert spec.tensor_types["blk.0.attn_q"] == "f32"


def test_sharded_tied_silu(tmp_path):
    folder = mf.build_master(tmp_path / "sharded", shard=True, tie=True, act="silu", seed=5)
    assert (folder / "model.safetensors.index.json").exists()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    spec = load_model(folder)
    assert spec.config["arch"] == "bitnet" and spec.config["activation"] == "silu"
    assert spec.config["sub_norms"] is True
    assert "output" not in spec.weights
    assert_same_weights(spec, mf.reference_weights(folder))


def test_offline_autobitlinear_float_weights(tmp_path, models):
    """autobitlinear offline with float weights multiplies them by weight_scale, no ternarization:
    a ternary-valued weight is packed with the product as its scale; others stay float."""
    folder = tmp_path / "offline"
    shutil.copytree(models["master"], folder)
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    codes, mult, _ = mf.weight_quant(sd["model.layers.0.self_attn.q_proj.weight"])
    sd["model.layers.0.self_attn.q_proj.weight"] = torch.from_numpy(codes.astype(np.float32)).to(torch.bfloat16)
    sd["model.layers.0.self_attn.q_proj.weight_scale"] = torch.tensor([0.25], dtype=torch.bfloat16)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    mf._write_config(folder, {"quantization_config": {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}})
    spec = load_hf(folder)
    q = spec.weights["blk.0.attn_q"]
    assert isinstance(q, kernels.PackedWeights) and q.format == "ternary"
    assert np.array_equal(dense(q), codes.astype(np.float32) * np.float32(0.25))
    k = spec.weights["blk.0.attn_k"]  # a float master weight, used as is (weight_scale defaults to 1)
    assert isinstance(k, np.ndarray) and k.dtype == np.float32
    assert np.array_equal(k, sd["model.layers.0.self_attn.k_proj.weight"].float().numpy())


def test_modules_to_not_convert_stay_float(tmp_path, models):
    folder = tmp_path / "skip"
    shutil.copytree(models["master"], folder)
    mf._write_config(folder, {"quantization_config": {
        "quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online",
        "modules_to_not_convert": ["lm_head", "model.layers.1.mlp.down_proj"]}})
    spec = load_hf(folder)
    w = spec.weights["blk.1.ffn_down"]
    assert isinstance(w, np.ndarray)
    from safetensors.torch import load_file

    raw = load_file(str(folder / "model.safetensors"))["model.layers.1.mlp.down_proj.weight"].float().numpy()
    assert np.array_equal(w, raw)
    assert isinstance(spec.weights["blk.0.ffn_down"], kernels.PackedWeights)


@pytest.mark.parametrize("change, message", [
    ({"quantization_config": {"quant_method": "gptq"}}, "quantization method"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                              "quantization_mode": "online", "use_rms_norm": True}}, "use_rms_norm"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "bitlinear"}}, "packed uint8"),
    ({"model_type": "mistral"}, "model_type"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_key_value_heads": 3}, "n_kv_heads"),
    ({"hidden_size": 512}, "shape"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "RoPE"),
    ({"attention_bias": True}, "bias"),
    # values of the wrong JSON type: refused by name, never a bare TypeError or a silent default
    ({"hidden_act": ["relu2"]}, r"hidden_act \['relu2'\] is not supported"),
    ({"hidden_act": {"a": 1}}, "hidden_act .* is not supported"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true or false, got 'false'"),
    ({"attention_bias": "false"}, "attention_bias must be true or false"),
    ({"quantization_config": {"quant_method": "bitnet", "linear_class": "autobitlinear",
                              "quantization_mode": "online", "use_rms_norm": "false"}},
     "quantization_config.use_rms_norm must be true or false"),
    ({"hidden_size": "256"}, "hidden_size must be a positive integer, got '256'"),
    ({"vocab_size": 300.0}, "vocab_size must be a positive integer, got 300.0"),
    ({"num_attention_heads": 0}, "num_attention_heads must be a positive integer, got 0"),
    ({"num_key_value_heads": -2}, "num_key_value_heads must be a positive integer"),
    ({"head_dim": 0}, "head_dim must be a positive integer"),
    ({"max_position_embeddings": "4096"}, "max_position_embeddings must be a positive integer"),
    ({"max_position_embeddings": 2 ** 40}, r"max_position \(the trained context length\) must be an integer in 1\.\.1073741824"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps must be a number"),
    ({"rope_theta": "abc"}, "rope_theta must be a number"),
    ({"rope_scaling": "yarn"}, "rope_scaling must be an object"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "RoPE scaling 'yarn'"),
    ({"rope_parameters": [1]}, "rope_parameters must be an object"),
])
def test_hf_config_errors(tmp_path, models, change, message):
    folder = tmp_path / "bad"
    shutil.copytree(models["master"], folder)
    mf._write_config(folder, change)
    with pytest.raises(ModelLoadError, match=message) as e:
        load_hf(folder)
    assert str(folder) in str(e.value)


@pytest.mark.parametrize("file, content, message", [
    ("tokenizer.json", {"model": {"type": "Unigram", "vocab": [["a", 0.0]]}},
     "tokenizer.json: tokenizer model type 'Unigram' is not supported"),
    ("tokenizer.json", {"model": {"type": "WordPiece", "vocab": {"a": 0}}}, "model type 'WordPiece'"),
    ("tokenizer.json", {}, "tokenizer.json: tokenizer has no model object"),
    ("tokenizer_config.json", {"chat_template": [1, 2]}, "chat_template must be a string or a list of"),
    ("tokenizer_config.json", {"chat_template": [{"name": "tool_use", "template": "x"}]},
     r"chat_template lists templates \['tool_use'\] but none named 'default'"),
    ("tokenizer_config.json", {"bos_token": 5}, "bos_token must be a token's text"),
    ("tokenizer_config.json", {"add_bos_token": "true"}, "add_bos_token must be true or false"),
    ("generation_config.json", {"eos_token_id": [None]}, "token id None is not in the vocabulary"),
    ("chat_template.json", [1], "chat_template.json: not a JSON object"),
])
def test_hf_tokenizer_file_errors(tmp_path, models, file, content, message):
    folder = tmp_path / "tok"
    shutil.copytree(models["master"], folder)
    if file == "chat_template.json":
        (folder / "tokenizer_config.json").write_text("{}")
    (folder / file).write_text(json.dumps(content))
    with pytest.raises(ModelLoadError, match=message) as e:
        load_hf(folder)
    assert str(folder) in str(e.value)


def test_hf_named_chat_templates(tmp_path, models):
    """transformers' list form: apply_chat_template without a name uses the one named default."""
    folder = tmp_path / "named"
    shutil.copytree(models["master"], folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": [
        {"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}))
    assert load_hf(folder).chat_template == "D"


def test_hf_file_errors(tmp_path, models):
    folder = tmp_path / "files"
    shutil.copytree(models["master"], folder)
    st = folder / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])  # truncated: offsets past the end
    with pytest.raises(ModelLoadError, match="model.safetensors.*offsets"):
        load_hf(folder)
    st.write_bytes(b"\xff" * 8 + data[8:])  # absurd header length
    with pytest.raises(ModelLoadError, match="header length"):
        load_hf(folder)
    st.write_bytes((5).to_bytes(8, "little") + b"{nope" + data[13:])
    with pytest.raises(ModelLoadError, match="JSON"):
        load_hf(folder)
    st.unlink()
    with pytest.raises(ModelLoadError, match="no model.safetensors"):
        load_hf(folder)
    shutil.copy(models["master"] / "model.safetensors", st)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        load_hf(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_hf(folder)


@pytest.mark.parametrize("variant, tensor, index, value, message", [
    ("master", "model.embed_tokens.weight", (3, 4), float("inf"), r"embed_tokens.weight \(BF16\) has a non-finite value: inf at row 3, column 4"),
    ("master", "model.layers.1.post_attention_layernorm.weight", (5,), float("nan"), r"post_attention_layernorm.weight \(BF16\) has a non-finite value: nan at index 5"),
    ("master", "model.layers.0.mlp.up_proj.weight", (0, 0), -float("inf"), r"up_proj.weight \(BF16\) has a non-finite value: -inf at row 0, column 0"),
    ("packed", "model.layers.0.self_attn.q_proj.weight_scale", (0,), float("nan"), r"q_proj.weight_scale \(F32\) has a non-finite value: nan at index 0"),
])
def test_hf_non_finite_floats_are_refused(tmp_path, models, variant, tensor, index, value, message):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "nonfinite"
    shutil.copytree(models[variant], folder)
    sd = load_file(str(folder / "model.safetensors"))
    sd[tensor][index] = value
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=message):
        load_hf(folder)


@pytest.mark.parametrize("variant, value, message", [
    ("packed", 1e-45, r"q_proj.weight: 1 / weight_scale \(weight_scale = 1.4013e-45\) overflows float32"),
    ("packed", 0.0, "q_proj.weight: weight_scale is 0; it must be a positive finite number"),
    ("packed_auto", -2.0, "q_proj.weight: weight_scale is -2"),
])
def test_hf_weight_scale_out_of_range(tmp_path, models, variant, value, message):
    import torch
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "scale"
    shutil.copytree(models[variant], folder)
    sd = load_file(str(folder / "model.safetensors"))
    sd["model.layers.0.self_attn.q_proj.weight_scale"] = torch.tensor([value], dtype=torch.float32)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=message):
        load_hf(folder)


def test_hf_missing_and_extra_tensors(tmp_path, models):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "tensors"
    shutil.copytree(models["master"], folder)
    sd = load_file(str(folder / "model.safetensors"))
    sd2 = dict(sd)
    del sd2["model.layers.1.mlp.up_proj.weight"]
    save_file(sd2, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="missing tensor model.layers.1.mlp.up_proj.weight"):
        load_hf(folder)
    sd2 = dict(sd)
    sd2["model.layers.0.self_attn.q_proj.bias"] = sd["model.norm.weight"].clone()
    save_file(sd2, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match="unexpected tensors"):
        load_hf(folder)


# ----------------------------------------------------------------------------------------------
# GGUF


@pytest.mark.parametrize("typ, qname", [("tq2_0", "TQ2_0"), ("tq1_0", "TQ1_0"), ("i2_s", "I2_S")])
def test_gguf_matches_reference(models, typ, qname):
    spec = load_gguf(models[typ])
    assert_same_weights(spec, models["ref"])
    hf = load_hf(models["master"])
    assert spec.config == hf.config
    for name, w in spec.weights.items():
        short = name.rsplit(".", 1)[-1]
        if short in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
            assert isinstance(w, kernels.PackedWeights) and w.format == "ternary", name
            if short == "ffn_down" and typ != "i2_s":  # k = 384: not a whole number of 256-blocks
                assert spec.tensor_types[name] == "F16"
            else:
                assert spec.tensor_types[name] == qname
    assert spec.tensor_types["token_embd"] == "BF16"  # bf16 source, exact
    assert spec.tensor_types["blk.0.attn_norm"] == "F32"
    assert spec.bos_id == hf.bos_id and spec.eos_ids == hf.eos_ids and spec.add_bos is True
    assert spec.chat_template == hf.chat_template


def test_gguf_tokenizer_fields(models):
    spec = load_gguf(models["tq2_0"])
    tj = json.loads((models["master"] / "tokenizer.json").read_text())
    tok = spec.tokenizer
    expected = [None] * 300
    for s, i in tj["model"]["vocab"].items():
        expected[i] = s
    for a in tj["added_tokens"]:
        expected[a["id"]] = a["content"]
    assert tok.tokens == expected
    assert tok.model == "gpt2" and tok.pre == "llama-bpe"
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    assert tok.merges == merges
    specials = {a["id"] for a in tj["added_tokens"]}
    assert tok.token_types == [3 if i in specials else 1 for i in range(300)]
    assert tok.bos_id == spec.bos_id and tok.eos_id == spec.eos_ids[0] and tok.eot_id == spec.eos_ids[1]
    assert tok.add_bos is True and tok.add_eos is False and tok.tokenizer_json is None


def test_gguf_float_and_q8_linears(models, tmp_path):
    """Linears stored as F16 / BF16 / F32 / Q8_0: a ternary weight times one scale comes back
    packed (ternary, or binary when it has no zeros); a non-ternary one stays float."""
    spec = load_hf(models["master"])
    ref = models["ref"]
    rng = np.random.default_rng(0)
    free = (rng.standard_normal((384, 256)) * 0.02).astype(np.float32)
    spec.weights["blk.1.ffn_up"] = free
    signs = np.where(rng.random((128, 256)) < 0.5, -1, 1).astype(np.int8)
    spec.weights["blk.1.attn_k"] = kernels.pack_ternary(signs, 0.375)  # no zeros: binary in GGUF
    path = write_gguf(spec, tmp_path / "mixed.gguf", "tq2_0", tensor_types={
        "blk.0.attn_q": "f16", "blk.0.attn_k": "bf16", "blk.0.attn_v": "f32", "blk.0.ffn_gate": "q8_0",
        "blk.1.ffn_up": "f32", "blk.1.attn_k": "f16",
    })
    out = load_gguf(path)
    t = out.tensor_types
    assert (t["blk.0.attn_q"], t["blk.0.attn_k"], t["blk.0.attn_v"], t["blk.0.ffn_gate"]) == ("F16", "BF16", "F32", "Q8_0")
    for n in ("blk.0.attn_q", "blk.0.attn_k", "blk.0.attn_v"):
        assert isinstance(out.weights[n], kernels.PackedWeights) and out.weights[n].format == "ternary"
        assert np.array_equal(dense(out.weights[n]), ref[n])
    # Q8_0 of a ternary weight: every nonzero block decodes to +-127 * fp16(s / 127): ternary again,
    # with that scale
    q8 = out.weights["blk.0.ffn_gate"]
    assert isinstance(q8, kernels.PackedWeights) and q8.format == "ternary"
    codes, scales = q8.unpack()
    ref_codes = np.sign(ref["blk.0.ffn_gate"]).astype(np.int8)
    assert np.array_equal(codes, ref_codes)
    s = np.abs(ref["blk.0.ffn_gate"]).max()
    assert np.allclose(scales, np.float32(127) * np.float32(np.float16(s / 127)))
    assert isinstance(out.weights["blk.1.ffn_up"], np.ndarray)
    assert np.array_equal(out.weights["blk.1.ffn_up"], free)
    b = out.weights["blk.1.attn_k"]
    assert isinstance(b, kernels.PackedWeights) and b.format == "binary"
    assert np.array_equal(dense(b), signs.astype(np.float32) * np.float32(0.375))


def test_gguf_q1_0_binary_linear(models, tmp_path):
    spec = load_hf(models["master"])
    rng = np.random.default_rng(1)
    signs = np.where(rng.random((384, 256)) < 0.5, -1, 1).astype(np.int8)
    d = rng.uniform(0.01, 0.05, size=(384, 2)).astype(np.float16).astype(np.float32)  # fp16-exact
    spec.weights["blk.0.ffn_gate"] = kernels.pack_binary(signs, d, group_size=128)
    out = load_gguf(write_gguf(spec, tmp_path / "q1.gguf", "tq2_0", tensor_types={"blk.0.ffn_gate": "q1_0"}))
    w = out.weights["blk.0.ffn_gate"]
    assert out.tensor_types["blk.0.ffn_gate"] == "Q1_0"
    assert w.format == "binary" and w.group_size == 128
    assert np.array_equal(dense(w), signs * np.repeat(d, 128, axis=1))


def test_gguf_q6k_and_q8_embeddings(models, tmp_path):
    """token_embd / output in Q6_K (random blocks, decoded by gguf.quants as the referee) and Q8_0."""
    rng = np.random.default_rng(2)
    blocks = rng.integers(0, 256, size=(300, 210), dtype=np.uint8)  # 256 weights a block: 210 bytes
    d = rng.uniform(1e-4, 1e-3, size=300).astype(np.float16)
    blocks[:, 208:210] = d.view(np.uint8).reshape(300, 2)
    q8 = gguf.quants.quantize(models["ref"]["output"], T.Q8_0)
    path = mf.rewrite_gguf(models["tq2_0"], tmp_path / "q6k.gguf", tensors={
        "token_embd.weight": (blocks, T.Q6_K), "output.weight": (q8, T.Q8_0)})
    spec = load_gguf(path)
    assert spec.tensor_types["token_embd"] == "Q6_K" and spec.tensor_types["output"] == "Q8_0"
    assert spec.weights["token_embd"].dtype == np.float32
    assert np.array_equal(spec.weights["token_embd"], gguf.quants.dequantize(blocks, T.Q6_K))
    assert np.array_equal(spec.weights["output"], gguf.quants.dequantize(q8, T.Q8_0))


def test_gguf_f16_embedding_kept_f16(models, tmp_path):
    spec = load_hf(models["master"])
    spec.weights["token_embd"] = spec.weights["token_embd"].astype(np.float16)
    out = load_gguf(write_gguf(spec, tmp_path / "f16.gguf", "i2_s"))
    assert out.tensor_types["token_embd"] == "F16"
    assert out.weights["token_embd"].dtype == np.float16
    assert np.array_equal(out.weights["token_embd"], spec.weights["token_embd"])


@pytest.mark.parametrize("arch, act, cfg_arch", [
    ("bitnet-b1.58", "relu2", "bitnet-b1.58"),
    ("bitnet-25", "relu2", "bitnet-b1.58"),
    ("bitnet", "silu", "bitnet"),
    ("llama", "silu", "llama"),
])
def test_gguf_activation_defaults(models, tmp_path, arch, act, cfg_arch):
    path = mf.rewrite_gguf(models["tq2_0"], tmp_path / f"{arch}.gguf", arch=arch,
                           fields={f"{arch}.hidden_activation": None})
    spec = load_gguf(path)
    assert spec.config["arch"] == cfg_arch
    assert spec.config["activation"] == act
    assert spec.config["sub_norms"] is True  # llama: because the file has them


def test_gguf_hidden_activation_key(models, tmp_path):
    path = mf.rewrite_gguf(models["tq2_0"], tmp_path / "b.gguf", arch="bitnet",
                           fields={"bitnet.hidden_activation": ("relu2", gguf.GGUFValueType.STRING)})
    assert load_gguf(path).config["activation"] == "relu2"
    path = mf.rewrite_gguf(models["tq2_0"], tmp_path / "c.gguf", arch="bitnet",
                           fields={"bitnet.hidden_activation": ("gelu", gguf.GGUFValueType.STRING)})
    with pytest.raises(ModelLoadError, match="gelu"):
        load_gguf(path)


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim in numpy."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.mark.parametrize("typ", ["tq2_0", "i2_s"])
def test_llama_arch_unpermutes_q_and_k(models, tmp_path, typ):
    spec = load_hf(models["master"])
    spec.config.update(arch="llama", activation="silu", sub_norms=False)
    for i in range(2):
        del spec.weights[f"blk.{i}.attn_sub_norm"], spec.weights[f"blk.{i}.ffn_sub_norm"]
    path = write_gguf(spec, tmp_path / "llama.gguf", typ)
    out = load_gguf(path)
    assert out.config == spec.config
    for n in spec.weights:
        assert np.array_equal(dense(out.weights[n]), dense(spec.weights[n])), n
    if typ == "tq2_0":  # the file holds llama.cpp's permuted rows
        r = gguf.GGUFReader(str(path))
        t = {x.name: x for x in r.tensors}
        for short, heads in (("attn_q", 4), ("attn_k", 2)):
            raw = gguf.quants.dequantize(np.array(t[f"blk.0.{short}.weight"].data), T.TQ2_0)
            assert np.array_equal(raw, llamacpp_permute(dense(spec.weights[f"blk.0.{short}"]), heads))


def test_gguf_scale_tensors(models, tmp_path):
    """llama.cpp's bitnet architecture: an optional blk.N.attn_q.scale multiplies the output."""
    path = mf.rewrite_gguf(models["tq2_0"], tmp_path / "s.gguf",
                           tensors={"blk.0.attn_q.scale": (np.array([2.0], dtype=np.float32), None)})
    spec = load_gguf(path)
    assert np.array_equal(dense(spec.weights["blk.0.attn_q"]), 2 * models["ref"]["blk.0.attn_q"])
    assert np.array_equal(dense(spec.weights["blk.0.attn_k"]), models["ref"]["blk.0.attn_k"])


def test_load_model_dispatch(models, tmp_path):
    assert load_model(models["tq2_0"]).tensor_types["blk.0.attn_q"] == "TQ2_0"
    assert load_model(str(models["master"] / "config.json")).tensor_types["blk.0.attn_q"] == "bf16"
    assert load_model(models["packed"] / "model.safetensors").tensor_types["blk.0.attn_q"] == "hf_packed"
    folder = tmp_path / "only-gguf"
    folder.mkdir()
    shutil.copy(models["i2_s"], folder / "x.gguf")
    assert load_model(folder).tensor_types["blk.0.attn_q"] == "I2_S"
    shutil.copy(models["i2_s"], folder / "y.gguf")
    with pytest.raises(ModelLoadError, match="several"):
        load_model(folder)
    with pytest.raises(ModelLoadError, match="no such"):
        load_model(tmp_path / "nothing-here")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a GGUF"):
        load_model(other)


_TRUNCATE_AND_READ = """
import sys
import numpy as np
from tritlm.loaders import load_model
from tritlm.loaders.spec import dense_from_linear

path, use_mmap = sys.argv[1], sys.argv[2] == "mmap"
spec = load_model(path, use_mmap=use_mmap)
def checksum():
    return sum(float(np.abs(np.asarray(w, np.float32) if isinstance(w, np.ndarray) else dense_from_linear(w)).sum())
               for w in spec.weights.values())
before = checksum()
open(path, "r+b").truncate(0)
print("same" if checksum() == before else "changed")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGBUS on a truncated mapping is Linux's behaviour")
@pytest.mark.parametrize("use_mmap", [True, False])
def test_gguf_mapping_and_truncation(models, tmp_path, use_mmap):
    """The documented contract: by default I2_S codes and F16 tables are views of the file's
    mapping, so truncating the file kills the process at the next read (llama.cpp's use_mmap
    behaves the same); with use_mmap=False the weights are copies and outlive the file."""
    spec = load_hf(models["master"])
    spec.weights["token_embd"] = spec.weights["token_embd"].astype(np.float16)
    path = write_gguf(spec, tmp_path / "f16-i2s.gguf", "i2_s")
    assert load_gguf(path).tensor_types["token_embd"] == "F16"
    p = subprocess.run([sys.executable, "-c", _TRUNCATE_AND_READ, path, "mmap" if use_mmap else "copy"],
                       capture_output=True, text=True, timeout=300)
    if use_mmap:
        assert p.returncode == -signal.SIGBUS, (p.returncode, p.stdout, p.stderr)
    else:
        assert p.returncode == 0 and p.stdout.strip() == "same", (p.stdout, p.stderr)


def test_gguf_f16_table_is_a_view_only_with_use_mmap(models, tmp_path):
    spec = load_hf(models["master"])
    spec.weights["token_embd"] = spec.weights["token_embd"].astype(np.float16)
    path = write_gguf(spec, tmp_path / "f16.gguf", "i2_s")

    def mapped(a: np.ndarray) -> bool:
        while isinstance(a, np.ndarray):
            a = a.base
        return isinstance(a, memoryview) and isinstance(a.obj, mmap.mmap)

    assert mapped(load_gguf(path).weights["token_embd"])
    assert not mapped(load_model(path, use_mmap=False).weights["token_embd"])
    with pytest.raises(TypeError, match="use_mmap must be a bool"):
        load_gguf(path, use_mmap="no")


def test_spec_shapes_cover_config(models):
    spec = load_gguf(models["tq1_0"])
    shapes = expected_shapes(spec.config)
    assert set(shapes) | {"output"} == set(spec.weights)


def test_gguf_custom_alignment(models, tmp_path):
    for a in (64, 4096):
        spec = load_gguf(mf.rewrite_gguf(models["tq2_0"], tmp_path / f"a{a}.gguf", alignment=a))
        assert_same_weights(spec, models["ref"])


def test_gguf_alignment_one_leaves_f16_tables_unaligned_in_the_map(models, tmp_path):
    """general.alignment 1 is legal, and with a header of odd length it puts every tensor at an odd
    address of the memory map, the f16 embedding (viewed there, not copied) included: the forward
    pass read its halves at misaligned addresses (UBSan: "load of misaligned address ... for type
    'const uint16_t'", Table::at). The model copies such a table and runs exactly as from an
    aligned file."""
    import tritlm

    spec = load_hf(models["master"])
    spec.weights["token_embd"] = spec.weights["token_embd"].astype(np.float16)
    aligned = write_gguf(spec, tmp_path / "f16.gguf", "tq2_0")
    for pad in ("x", "xy"):  # one of the two header lengths is odd
        path = mf.rewrite_gguf(aligned, tmp_path / f"a1-{len(pad)}.gguf", alignment=1,
                               fields={"tritlm.test.pad": (pad, gguf.GGUFValueType.STRING)})
        if load_gguf(path).weights["token_embd"].ctypes.data % 2:
            break
    assert not load_gguf(path).weights["token_embd"].flags.aligned

    def logits(p) -> np.ndarray:
        with tritlm.LLM(p, n_ctx=64) as llm:
            return llm.eval_logits([1, 5, 9, 200, 3])

    assert np.array_equal(logits(path), logits(aligned))


def test_hf_llama_with_bitnet_quantization(tmp_path, models):
    """model_type "llama" with a BitNet quantization_config (e.g. HF1BitLLM's Llama3-8B-1.58):
    BitLinear layers, SiLU, no sub-norms."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "llama"
    shutil.copytree(models["packed"], folder)
    sd = {k: v for k, v in load_file(str(folder / "model.safetensors")).items() if "sub_norm" not in k}
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    mf._write_config(folder, {"model_type": "llama", "hidden_act": "silu", "architectures": ["LlamaForCausalLM"]})
    spec = load_hf(folder)
    assert spec.config["arch"] == "llama" and spec.config["activation"] == "silu"
    assert spec.config["sub_norms"] is False
    ref = {k: v for k, v in models["ref"].items() if "sub_norm" not in k}
    assert_same_weights(spec, ref)
    # and through GGUF (arch "llama": q/k rows permuted in the file, restored on load)
    out = load_gguf(write_gguf(spec, tmp_path / "llama.gguf", "tq2_0"))
    assert out.config == spec.config
    assert_same_weights(out, ref)


def test_tokenizers_agree_across_routes(models):
    """The tokenizer module builds the same tokenizer from tokenizer.json and from the GGUF fields."""
    import tritlm.tokenizer as tokenizer
    a = tokenizer.Tokenizer(load_hf(models["master"]).tokenizer)
    b = tokenizer.Tokenizer(load_gguf(models["i2_s"]).tokenizer)
    for text in ["Hello, world! 1234567", "The quick brown fox<|eot_id|> jumps", "  spaces\n\nnew lines"]:
        assert a.encode(text) == b.encode(text)
    assert (a.bos_id, a.add_bos, a.eos_ids) == (b.bos_id, b.add_bos, b.eos_ids)


def test_a_closed_file_says_so(models):
    """GGUFFile and SafetensorsFile read their memory map, which close() drops: a read after that
    failed as an AssertionError (GGUF) or numpy's TypeError about None (safetensors). Found by mypy."""
    from tritlm.loaders.gguf import read_gguf
    from tritlm.loaders.hf import SafetensorsFile

    f = read_gguf(models["tq2_0"])
    t = f.tensors["token_embd.weight"]
    f.close()
    with pytest.raises(ValueError, match="the GGUF file is closed"):
        f.raw(t)
    s = SafetensorsFile(str(models["master"] / "model.safetensors"))
    name = next(iter(s.tensors))
    s.close()
    with pytest.raises(ValueError, match="the safetensors file is closed"):
        s.get(name)
