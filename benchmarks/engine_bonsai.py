"""Generation and prompt speed on PrismML Bonsai-shaped models (Qwen3 with 1-bit Q1_0 linears) with
random weights, beside this machine's read bandwidth measured in the same run.

    python benchmarks/engine_bonsai.py [--models 1.7b,8b] [--threads 2] [--head q8] [--repeats 3]
                                       [--depth 2048]

Bonsai-1.7B / 4B / 8B are Qwen3-1.7B / 4B / 8B (their config.json shapes below) with every linear
in GGUF Q1_0. Each model is built in memory, never written to disk: random Q1_0 bytes (random
sign bits, block scales around 0.02) go through ``kernels.repack_q1_0``, as a file's would, and the
embedding is a random float16 table. The head is "q8" (int8 rows + a scale each: 8.25 bits a
weight, the engine's nearest to llama.cpp's Q6_K recipe), "binary" (Q1_0 on the binary kernel,
as the Bonsai files store it) or "f16". Roofline: bytes read per generated token (packed
linears + head + the KV cache attention reads) / read bandwidth (benchmarks/engine_speed.py).
``--depth N`` generates after N positions of context instead of from an empty one.

llama.cpp on this machine, 2 threads, head in Q6_K (issue 7): 1.7B 21.0 tokens/s generation
(0.454 GB a token, 36% of a 26 GB/s roofline), 34 tokens/s prompt; 8B 5.1 (1.49 GB, 29%), 6.8.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
from engine_speed import add_arguments, measure, run_script  # benchmarks/engine_speed.py, next to this script

from tritlm import _core, kernels

COMMON = dict(head_dim=128, vocab_size=151936, rope_theta=1000000.0, norm_eps=1e-6, activation="silu",
              sub_norms=False, qk_norm=True)
SHAPES = {  # Qwen3 config.json: num_hidden_layers, hidden_size, num_attention_heads, num_key_value_heads, intermediate_size
    "1.7b": dict(n_layers=28, dim=2048, n_heads=16, n_kv_heads=8, ffn_dim=6144, **COMMON),
    "4b": dict(n_layers=36, dim=2560, n_heads=32, n_kv_heads=8, ffn_dim=9728, **COMMON),
    "8b": dict(n_layers=36, dim=4096, n_heads=32, n_kv_heads=8, ffn_dim=12288, **COMMON),
}
TIED = {"1.7b": True, "4b": True, "8b": False}
LLAMA_CPP = {"1.7b": (21.0, 34.0), "8b": (5.1, 6.8)}  # (generation, pp) tokens/s, Q6_K head, this machine


def random_q1_0(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n x k weights as Q1_0 bytes: random sign bits, fp16 block scales in [0.01, 0.03)."""
    blocks = rng.integers(0, 256, size=(n * k // 128, 18), dtype=np.uint8)
    blocks[:, :2] = rng.uniform(0.01, 0.03, n * k // 128).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(-1)


def build(name: str, threads: int, head: str) -> tuple[object, int]:
    """The model and its bytes read per generated token (packed linears + head)."""
    c = SHAPES[name]
    rng = np.random.default_rng(0)
    q, kv = c["n_heads"] * c["head_dim"], c["n_kv_heads"] * c["head_dim"]
    shapes = {
        "attn_q": (q, c["dim"]), "attn_k": (kv, c["dim"]), "attn_v": (kv, c["dim"]), "attn_output": (c["dim"], q),
        "ffn_gate": (c["ffn_dim"], c["dim"]), "ffn_up": (c["ffn_dim"], c["dim"]), "ffn_down": (c["dim"], c["ffn_dim"]),
    }

    shape = (c["vocab_size"], c["dim"])
    # Random small integers, scaled: drawing normal floats for a 150k x 4096 table takes GBs.
    embd = rng.integers(-1000, 1000, size=shape, dtype=np.int16).astype(np.float16) * np.float16(2e-5)
    w: dict[str, object] = {"token_embd": embd, "output_norm": np.ones(c["dim"], np.float32)}
    linear_bytes = 0
    for layer in range(c["n_layers"]):
        p = f"blk.{layer}."
        for norm, size in (("attn_norm", c["dim"]), ("ffn_norm", c["dim"]), ("attn_q_norm", c["head_dim"]),
                           ("attn_k_norm", c["head_dim"])):
            w[p + norm] = np.ones(size, np.float32)
        for lin, (out, inp) in shapes.items():
            packed = kernels.repack_q1_0(random_q1_0(rng, out, inp), out, inp, n_threads=threads)
            w[p + lin] = packed
            linear_bytes += packed.nbytes
    if head == "binary":  # a Q1_0 head, as the Bonsai files store it (tied or not)
        w["output"] = kernels.repack_q1_0(random_q1_0(rng, *shape), *shape, n_threads=threads)
        head_bytes = w["output"].nbytes
    elif head == "q8":  # int8 rows and a scale each, as LLM(head="q8") makes them, drawn directly
        w["output.q8"] = rng.integers(-127, 128, size=shape, dtype=np.int8)
        w["output.q8_scale"] = rng.uniform(1e-4, 2e-4, c["vocab_size"]).astype(np.float32)
        head_bytes = w["output.q8"].nbytes + w["output.q8_scale"].nbytes
    elif TIED[name]:
        head_bytes = embd.nbytes
    else:
        w["output"] = rng.integers(-1000, 1000, size=shape, dtype=np.int16).astype(np.float16) * np.float16(2e-5)
        head_bytes = w["output"].nbytes
    return _core.Model(c, w), linear_bytes + head_bytes


def goals_line(name: str, prompt: int) -> str:
    """The issue's goals beside llama.cpp's figures, which are pp128 and tg from an empty
    context: a pp goal is only set against a pp128 run (pp32 against llama.cpp's pp128 is no
    comparison)."""
    tg, pp = LLAMA_CPP[name]
    pp_goal = (f"pp128 >= {2 * pp:.1f} tokens/s (2x llama.cpp's {pp})" if prompt == 128
               else f"pp goal set for pp128 only (llama.cpp's pp128: {pp} tokens/s)")
    return (f"goals: generation >= 85% of the roofline; {pp_goal}; "
            f"llama.cpp generates {tg} tokens/s from an empty context")


def model_list(text: str) -> list[str]:
    """Parse --models for argparse: every name is checked before the first model is built, so a
    typo in the last one is not found after minutes of measuring the others."""
    names = [n.strip() for n in text.split(",")]
    bad = [n for n in names if n not in SHAPES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown model {bad[0]!r}; choose from {', '.join(SHAPES)}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=model_list, default="1.7b,8b", help=f"comma-separated, of {','.join(SHAPES)}")
    add_arguments(ap, threads=2)
    ap.add_argument("--head", choices=["f16", "q8", "binary"], default="q8")
    a = ap.parse_args(argv)
    for name in a.models:
        t0 = time.perf_counter()
        model, per_token = build(name, a.threads, a.head)
        print(f"\nBonsai-{name.upper()} shape, {a.head} head: built in {time.perf_counter() - t0:.1f} s")
        fig = measure(model, SHAPES[name], per_token, threads=a.threads, prompt=a.prompt, gen=a.gen,
                      depth=a.depth, repeats=a.repeats)
        print("\n".join(fig.lines()))
        if name in LLAMA_CPP:
            print(goals_line(name, a.prompt))
        del model
    return 0


if __name__ == "__main__":
    run_script(main)
