"""Generation and prompt speed of a native model beside the machine's read bandwidth, measured in
the same run: shared by the engine benchmarks (engine_2b4t.py, engine_bonsai.py).

Generation runs as llama-bench's tg does, from an empty context (positions 0..gen-1), so its
figures compare with llama.cpp's, or after ``depth`` positions of an untimed prompt, as
llama-bench's ``-d`` does (tg64 @ d2048: what a long chat costs, where attention reads a KV cache
as large as the weights); the prompt runs in a session of its own. The roofline is bytes
read per generated token / the streaming read bandwidth ``_core.measure_read_bandwidth``
measures on the same threads, where the bytes are the caller's count of weights (every linear's
packed weights + the head) plus the KV cache a token reads on average over the run (f16 keys and
values of positions 0..p at position p, p from depth). Each repeat probes the bandwidth right
before its prompt run and right after its generation run, and its generation is set against the
higher of the two: a shared host here switches between a slow and a fast memory state from one
second to the next, and one best probe over all repeats let a repeat that met a fast state pass
100% of a slow one.

On a virtual machine the hypervisor also takes the CPUs away now and then: single tokens that
normally take 8 ms then take 40-200 ms. Linux counts that time as "steal" in /proc/stat, and
each repeat reports the share of the machine's CPU time stolen while it generated, so that a slow
repeat can be told from a slow build. Each repeat also times every token, and its median token
gives a steady rate that one stolen stretch cannot move (the mean rate can lose 10-25% to one):
the figure to compare builds by, beside the mean that a user waits for.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tritlm import _core
from tritlm.__main__ import count, run_command
from tritlm.bench import kv_bytes_read_per_token, thread_count


@dataclass
class EngineFigures:
    threads: int
    prompt: int
    gen: int
    depth: int
    bytes_per_token: int
    bandwidth: float = 0.0                            # best probe, bytes/s
    pp: list[float] = field(default_factory=list)    # prompt tokens/s, one per repeat
    tg: list[float] = field(default_factory=list)    # generated tokens/s, one per repeat
    tg_bandwidth: list[float] = field(default_factory=list)  # each repeat's yardstick, bytes/s
    tg_steal: list[float | None] = field(default_factory=list)  # share of CPU time stolen, per repeat
    tg_steady: list[float] = field(default_factory=list)  # 1 / the median token's time, per repeat

    @property
    def roofline(self) -> float:
        """Tokens/s if every generated token only streamed its bytes at the best probe's bandwidth."""
        return self.bandwidth / self.bytes_per_token

    @property
    def shares(self) -> list[float]:
        """Each repeat's generation as a fraction of its own roofline."""
        return [tg * self.bytes_per_token / bw for tg, bw in zip(self.tg, self.tg_bandwidth)]

    @property
    def steady_shares(self) -> list[float]:
        """Each repeat's steady (median-token) rate as a fraction of its own roofline."""
        return [tg * self.bytes_per_token / bw for tg, bw in zip(self.tg_steady, self.tg_bandwidth)]

    def lines(self) -> list[str]:
        def fmt(xs: list[float]) -> str:
            return f"{statistics.mean(xs):7.2f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:5.2f}"

        return [
            f"threads {self.threads}, isa {_core.active_isa()}, read bandwidth {self.bandwidth / 1e9:.1f} GB/s, "
            f"{self.bytes_per_token / 1e9:.3f} GB read per generated token -> roofline {self.roofline:.1f} tokens/s",
            f"pp{self.prompt}: {fmt(self.pp)} tokens/s",
            f"tg{self.gen}{f' @ d{self.depth}' if self.depth else ''}:  {fmt(self.tg)} tokens/s = "
            f"{100 * statistics.mean(self.shares):.0f}% of the roofline "
            f"(each repeat against the probes around it; best repeat {100 * max(self.shares):.0f}%)",
            "  repeats: " + ", ".join(f"{tg:.1f} tokens/s at {bw / 1e9:.1f} GB/s = {100 * share:.0f}%"
                                      + ("" if steal is None else f" (steal {100 * steal:.1f}%)")
                                      for tg, bw, share, steal in zip(self.tg, self.tg_bandwidth, self.shares,
                                                                      self.tg_steal)),
            f"  steady (median token): {fmt(self.tg_steady)} tokens/s = "
            f"{100 * statistics.mean(self.steady_shares):.0f}% of the roofline; repeats: "
            + ", ".join(f"{tg:.1f} = {100 * share:.0f}%" for tg, share in zip(self.tg_steady, self.steady_shares)),
        ]


def stolen_seconds() -> float | None:
    """CPU time the hypervisor has taken from this machine's CPUs since boot (all CPUs together),
    or None where /proc/stat does not say (not Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    # "cpu user nice system idle iowait irq softirq steal ...", in clock ticks
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def add_arguments(ap: argparse.ArgumentParser, threads: int) -> None:
    """The options every engine benchmark takes: what ``measure`` runs, and how often. Counts are
    checked as they are parsed (``tritlm bench``'s own types: an integer, at least the minimum,
    threads no more than the CPUs), so a mistyped one is named before minutes of model building."""
    ap.add_argument("--threads", type=thread_count, default=threads, help=f"at most the CPUs there are (default {threads})")
    ap.add_argument("--prompt", type=count(1), default=128, help="prompt tokens evaluated in one call (pp)")
    ap.add_argument("--gen", type=count(1), default=64, help="tokens generated one at a time (tg)")
    ap.add_argument("--depth", type=count(0), default=0,
                    help="positions already in the KV cache when generation starts")
    ap.add_argument("--repeats", type=count(1), default=3)


def run_script(main: Callable[[], object]) -> None:
    """Run a benchmark script's main as ``python -m tritlm`` runs a command, then exit: Ctrl-C
    ends it with status 130 and an error (out of memory, an unwritable path) with one line,
    never a traceback."""
    sys.exit(run_command(lambda: int(main() or 0)))


def measure(model: object, config: dict, weight_bytes: int, *, threads: int, prompt: int = 128, gen: int = 64,
            depth: int = 0, repeats: int = 3, seed: int = 1) -> EngineFigures:
    """Per repeat: a bandwidth probe (1 GiB, best of 3), then a fresh session that evaluates a random
    prompt of ``prompt`` tokens in one call, another that evaluates ``depth`` random tokens untimed
    and then generates ``gen`` tokens one at a time (logits of the last position each time), and a
    second probe."""
    rng = np.random.default_rng(seed)
    vocab_size = config["vocab_size"]
    # Position depth + p reads positions 0..depth + p: depth + (gen + 1) / 2 of them on average.
    kv_read = kv_bytes_read_per_token(config, depth, gen)
    fig = EngineFigures(threads, prompt, gen, depth, weight_bytes + kv_read)
    for _ in range(repeats):
        before = _core.measure_read_bandwidth(1 << 30, threads, 3)
        s = _core.Session(model, prompt, True, threads)
        tokens = rng.integers(0, vocab_size, prompt).astype(np.int32)
        t = time.perf_counter()
        s.eval(tokens, "last")
        fig.pp.append(prompt / (time.perf_counter() - t))
        s = _core.Session(model, depth + gen, True, threads)
        if depth:
            s.eval(rng.integers(0, vocab_size, depth).astype(np.int32), "last")
        stolen = stolen_seconds()
        times = []
        t = time.perf_counter()
        for tok in rng.integers(0, vocab_size, gen).astype(np.int32):
            s.eval(np.array([tok], np.int32), "last")
            times.append(time.perf_counter())
        elapsed = times[-1] - t
        fig.tg_steady.append(1.0 / statistics.median(np.diff([t, *times])))
        fig.tg.append(gen / elapsed)
        stolen_after = stolen_seconds()
        fig.tg_steal.append(None if stolen is None or stolen_after is None
                            else (stolen_after - stolen) / (elapsed * (os.cpu_count() or 1)))
        after = _core.measure_read_bandwidth(1 << 30, threads, 3)
        fig.tg_bandwidth.append(max(before, after))
        fig.bandwidth = max(fig.bandwidth, before, after)
    return fig

