"""Generation and prompt speed of a native model beside the machine's read bandwidth, measured in
the same run: shared by the engine benchmarks (engine_2b4t.py, engine_bonsai.py).

Generation runs as llama-bench's tg does, from an empty context (positions 0..gen-1), so its
figures compare with llama.cpp's; the prompt runs in a session of its own. The roofline is bytes
read per generated token / the streaming read bandwidth ``_core.measure_read_bandwidth``
measures on the same threads, where the bytes are the caller's count of weights (every linear's
packed weights + the head) plus the KV cache a token reads on average over the run (f16 keys and
values of positions 0..p at position p). Each repeat probes the bandwidth right before its own
prompt and generation runs, so a neighbour's load on a shared host shows in both; the best probe
is the yardstick.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from tritlm import _core


@dataclass
class EngineFigures:
    threads: int
    prompt: int
    gen: int
    bytes_per_token: int
    bandwidth: float = 0.0                            # best probe, bytes/s
    pp: list[float] = field(default_factory=list)    # prompt tokens/s, one per repeat
    tg: list[float] = field(default_factory=list)    # generated tokens/s, one per repeat

    @property
    def roofline(self) -> float:
        """Tokens/s if every generated token only streamed its bytes at the measured bandwidth."""
        return self.bandwidth / self.bytes_per_token

    def lines(self) -> list[str]:
        def fmt(xs: list[float]) -> str:
            return f"{statistics.mean(xs):7.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:5.2f}"

        return [
            f"threads {self.threads}, isa {_core.active_isa()}, read bandwidth {self.bandwidth / 1e9:.1f} GB/s, "
            f"{self.bytes_per_token / 1e9:.3f} GB read per generated token -> roofline {self.roofline:.1f} tokens/s",
            f"pp{self.prompt}: {fmt(self.pp)} tokens/s",
            f"tg{self.gen}:  {fmt(self.tg)} tokens/s = {100 * statistics.mean(self.tg) / self.roofline:.0f}% of the "
            f"roofline (best repeat {100 * max(self.tg) / self.roofline:.0f}%)",
        ]


def kv_bytes_per_position(config: dict) -> int:
    """Bytes of one position's f16 keys and values over all layers: what attention reads per
    position of the context."""
    return 2 * 2 * config["n_layers"] * config["n_kv_heads"] * config["head_dim"]


def measure(model: object, config: dict, weight_bytes: int, *, threads: int, prompt: int = 128, gen: int = 64,
            repeats: int = 3, seed: int = 1) -> EngineFigures:
    """Per repeat: a bandwidth probe (1 GiB, best of 3), then a fresh session that evaluates a random
    prompt of ``prompt`` tokens in one call, and another that generates ``gen`` tokens one at a time
    from an empty context (logits of the last position each time)."""
    rng = np.random.default_rng(seed)
    vocab_size = config["vocab_size"]
    kv_read = kv_bytes_per_position(config) * (gen + 1) // 2  # positions 0..p read at p, averaged
    fig = EngineFigures(threads, prompt, gen, weight_bytes + kv_read)
    for _ in range(repeats):
        fig.bandwidth = max(fig.bandwidth, _core.measure_read_bandwidth(1 << 30, threads, 3))
        s = _core.Session(model, prompt, True, threads)
        tokens = rng.integers(0, vocab_size, prompt).astype(np.int32)
        t = time.perf_counter()
        s.eval(tokens, "last")
        fig.pp.append(prompt / (time.perf_counter() - t))
        s = _core.Session(model, gen, True, threads)
        t = time.perf_counter()
        for tok in rng.integers(0, vocab_size, gen).astype(np.int32):
            s.eval(np.array([tok], np.int32), "last")
        fig.tg.append(gen / (time.perf_counter() - t))
    return fig

