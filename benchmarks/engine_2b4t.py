"""Decode and prompt speed of the native engine on a BitNet b1.58 2B4T-shaped model with random
ternary weights, beside this machine's read bandwidth measured in the same run.

    python benchmarks/engine_2b4t.py [--threads 2] [--prompt 128] [--gen 64] [--repeats 3]

The model is built in memory (2.41 B parameters: 30 layers, dim 2560, ffn 6912, 20 query / 5 kv
heads, vocab 128256, tied f16 head) and never written to disk. Roofline: bytes read per generated
token (every linear's packed weights + the head) / read bandwidth measured in the same run
(benchmarks/engine_speed.py).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

import numpy as np
from engine_speed import add_arguments, measure, run_script  # benchmarks/engine_speed.py, next to this script

from tritlm import _core, kernels

SHAPE = dict(n_layers=30, dim=2560, n_heads=20, n_kv_heads=5, head_dim=128, ffn_dim=6912, vocab_size=128256,
             rope_theta=500000.0, norm_eps=1e-5, activation="relu2", sub_norms=True)


def build(threads: int, head: str) -> tuple[object, int, dict[str, object]]:
    c = SHAPE
    rng = np.random.default_rng(0)
    # One pool of random codes sliced per matrix: drawing 2 G values one matrix at a time would
    # dominate the run, and each matrix is still packed into its own buffer.
    pool = rng.integers(-1, 2, size=c["ffn_dim"] * c["dim"] + 4096, dtype=np.int8)
    shapes = {
        "attn_q": (c["n_heads"] * c["head_dim"], c["dim"]), "attn_k": (c["n_kv_heads"] * c["head_dim"], c["dim"]),
        "attn_v": (c["n_kv_heads"] * c["head_dim"], c["dim"]), "attn_output": (c["dim"], c["n_heads"] * c["head_dim"]),
        "ffn_gate": (c["ffn_dim"], c["dim"]), "ffn_up": (c["ffn_dim"], c["dim"]), "ffn_down": (c["dim"], c["ffn_dim"]),
    }
    w: dict[str, object] = {
        "token_embd": (rng.standard_normal((c["vocab_size"], c["dim"]), dtype=np.float32) * 0.02).astype(np.float16),
        "output_norm": np.ones(c["dim"], np.float32),
    }
    linear_bytes = 0
    for layer in range(c["n_layers"]):
        p = f"blk.{layer}."
        for name in ("attn_norm", "ffn_norm"):
            w[p + name] = np.ones(c["dim"], np.float32)
        w[p + "attn_sub_norm"] = np.ones(c["n_heads"] * c["head_dim"], np.float32)
        w[p + "ffn_sub_norm"] = np.ones(c["ffn_dim"], np.float32)
        for name, (out, inp) in shapes.items():
            off = int(rng.integers(0, 4096))
            packed = kernels.pack_ternary(pool[off : off + out * inp].reshape(out, inp), 0.02, n_threads=threads)
            w[p + name] = packed
            linear_bytes += packed.nbytes
    head_bytes = w["token_embd"].nbytes  # type: ignore[union-attr]
    if head == "q8":
        w["output.q8"], w["output.q8_scale"] = kernels.quantize_rows_q8(w["token_embd"])  # type: ignore[arg-type]
        head_bytes = w["output.q8"].nbytes + w["output.q8_scale"].nbytes  # type: ignore[union-attr]
    model = _core.Model(SHAPE, w)
    return model, linear_bytes + head_bytes, w


def write_i2_s(model_weights: dict, path: str) -> None:
    """Write the model as an I2_S GGUF with a byte-level vocabulary of the right size (the 256
    byte symbols, then filler tokens), as tritlm's converter writes it."""
    from tritlm.loaders.convert import write_gguf
    from tritlm.loaders.spec import ModelSpec, make_tokenizer_source
    from tritlm.tokenizer import _bytes_to_unicode  # type: ignore[attr-defined]

    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [f"tok{i}" for i in range(SHAPE["vocab_size"] - len(symbols))]
    spec = ModelSpec(path=path, config={**SHAPE, "arch": "bitnet-b1.58"}, weights=model_weights,
                     tensor_types={}, tokenizer=make_tokenizer_source(model="gpt2", tokens=tokens, merges=[],
                                                                       token_types=[1] * len(tokens), pre="default"))
    write_gguf(spec, path, "i2_s")


def load_figures(model_weights: dict, threads: int, path: str) -> None:
    """Write the model as an I2_S GGUF, then time tritlm.LLM loading it from a warm page cache
    and compare its resident memory with packed weights + KV cache + head."""
    import subprocess
    import sys

    t = time.perf_counter()
    write_i2_s(model_weights, path)
    print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    code = (
        "import time, tritlm\n"
        f"t = time.perf_counter(); llm = tritlm.LLM({path!r}, n_threads={threads}, n_ctx=4096)\n"
        "dt = time.perf_counter() - t\n"
        "info = llm.info\n"
        # VmHWM, not ru_maxrss: Linux carries the forked parent's peak, this whole benchmark's,
        # into the child's ru_maxrss across exec.
        "rss = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024\n"
        "kv = 2 * 30 * 4096 * 640 * 2\n"
        "need = info['linear_bytes'] + info['head_bytes'] + kv\n"
        "print(f'load {dt:.1f} s; peak RSS {rss / 1e9:.2f} GB = {rss / need:.2f} x (packed weights + f16 KV cache'\n"
        "      f' for 4096 tokens + head = {need / 1e9:.2f} GB)')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # warm page cache: the file was just written
    subprocess.run([sys.executable, "-c", code], check=True)


def writable_file(text: str) -> str:
    """An argparse type: a file path whose folder exists and can be written, checked before the
    model is built (a minute) and measured, not when the file is written after that."""
    folder = os.path.dirname(os.path.abspath(text))
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a folder")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"no such folder: {folder!r}")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write in {folder!r}")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap, threads=_core.get_num_threads())
    ap.add_argument("--head", choices=["f16", "q8"], default="f16")
    ap.add_argument("--gguf", metavar="PATH", type=writable_file,
                    help="also write the model as an I2_S GGUF here and time loading it")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    model, per_token, weights = build(a.threads, a.head)
    print(f"built 2B4T-shaped model in {time.perf_counter() - t0:.1f} s; "
          f"{per_token / 1e9:.3f} GB of weights read per generated token (packed linears + {a.head} head)")
    fig = measure(model, SHAPE, per_token, threads=a.threads, prompt=a.prompt, gen=a.gen, depth=a.depth,
                  repeats=a.repeats)
    print("\n".join(fig.lines()))
    if a.gguf:
        del model
        load_figures({k: v for k, v in weights.items() if not k.startswith("output.q8")}, a.threads, a.gguf)
    return 0


if __name__ == "__main__":
    run_script(main)
