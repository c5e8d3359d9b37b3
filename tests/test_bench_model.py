"""``python -m tritlm bench`` (llama-bench's pp / tg beside a memory roofline): what it measures,
how its figures are computed, its JSON output, and the option values it refuses. Why: a kernel
tuner reads these figures against llama-bench's, so tg must mean what llama-bench's tg means
(generation from an empty context), the roofline must count every byte a token reads (the KV
cache too), and a script must get the same figures as data. Speeds are never asserted.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

import tritlm
from tritlm import bench
from tritlm.bench import available_cpus

CLI = [sys.executable, "-m", "tritlm", "bench"]
CONFIG = {"n_layers": 6, "n_kv_heads": 2, "head_dim": 64}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=300, check=False)


def strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the JSON output")

    return json.loads(text, parse_constant=refuse)


@dataclass
class FakeTimings:
    prompt_tokens_per_s: float
    generation_tokens_per_s: float


@dataclass
class FakeCompletion:
    timings: FakeTimings


class FakeLLM:
    """Records the requests run_model_bench makes; answers with made-up rates."""

    n_vocab = 100

    def __init__(self) -> None:
        self.info = {"path": "fake.gguf", "linear_bytes": 3_000_000, "head_bytes": 1_000_000, "config": CONFIG}
        self.calls: list[tuple[int, int]] = []  # (prompt tokens, max_tokens)
        self.rates = iter([100.0, 10.0, 300.0, 30.0, 200.0, 20.0])

    def eval_logits(self, ids: list[int]) -> None:
        self.calls.append((len(ids), 0))

    def generate(self, ids: list[int], *, max_tokens: int, temperature: float, ignore_eos: bool) -> FakeCompletion:
        assert temperature == 0 and ignore_eos
        self.calls.append((len(ids), max_tokens))
        rate = next(self.rates)
        return FakeCompletion(FakeTimings(rate, rate))


def test_tg_runs_from_an_empty_context_and_the_roofline_counts_the_kv_cache(monkeypatch) -> None:
    """pp: a prompt of -p tokens, one token sampled. tg: a one-token prompt, then -n decode steps
    (positions 1..n), as llama-bench's tg runs from an empty context (it ran after the pp prompt,
    so 'tg64' measured generation at depth 128). Roofline bytes: weights + the KV cache a step
    reads on average; percentages and ± from the same fields the text prints."""
    monkeypatch.setattr(bench._core, "measure_read_bandwidth", lambda nbytes, threads, repeats: 8e9)
    llm = FakeLLM()
    lines: list[str] = []
    res = bench.run_model_bench(llm, threads=1, prompt=32, gen=16, repeats=3, show=lines.append)
    assert llm.calls == [(32, 0)] + [(32, 1), (1, 17)] * 3  # warm-up, then pp and tg per repeat
    per_position = 2 * 2 * 6 * 2 * 64  # k and v, f16, layers x kv heads x head_dim
    assert res.kv_bytes_per_token == per_position * (2 + 16 + 1) // 2  # positions 1..16 read 2..17
    assert res.roofline_tokens_per_s == pytest.approx(8e9 / (4_000_000 + res.kv_bytes_per_token))
    assert res.pp is not None and res.tg is not None
    assert res.pp.samples == [100.0, 300.0, 200.0] and res.tg.samples == [10.0, 30.0, 20.0]
    assert res.tg.mean == 20.0 and res.tg.stdev == pytest.approx(statistics.stdev([10.0, 30.0, 20.0]))
    assert res.tg_roofline_fraction == pytest.approx(20.0 / res.roofline_tokens_per_s)
    assert lines == bench.render_model_bench(res)
    assert lines[2] == "pp32      200.00 ± 100.00 tokens/s"
    assert lines[3] == f"tg16       20.00 ±  10.00 tokens/s  ({100 * res.tg_roofline_fraction:.0f}% of roofline)"
    doc = strict_json(json.dumps(res.to_json(), allow_nan=False))
    assert doc["tg"]["mean"] == 20.0 and doc["kv_bytes_per_token"] == res.kv_bytes_per_token


def test_gen_zero_measures_the_prompt_alone(monkeypatch) -> None:
    monkeypatch.setattr(bench._core, "measure_read_bandwidth", lambda nbytes, threads, repeats: 8e9)
    llm = FakeLLM()
    res = bench.run_model_bench(llm, threads=1, prompt=8, gen=0, repeats=2)
    assert llm.calls == [(8, 0), (8, 1), (8, 1)] and res.tg is None and res.kv_bytes_per_token == 0
    assert res.to_json()["tg"] is None and len(bench.render_model_bench(res)) == 3


def test_output_json_is_one_document_with_the_figures() -> None:
    r = run("-p", "16", "-n", "8", "-r", "2", "-o", "json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    doc = strict_json(r.stdout)
    assert doc["model"] == tritlm.default_model_path() and doc["repeats"] == 2
    assert doc["pp"]["tokens"] == 16 and len(doc["pp"]["samples"]) == 2
    assert doc["tg"]["tokens"] == 8 and doc["tg"]["mean"] == pytest.approx(statistics.mean(doc["tg"]["samples"]))
    per_token = doc["weight_bytes_per_token"] + doc["kv_bytes_per_token"]
    assert doc["roofline_tokens_per_s"] == pytest.approx(doc["read_bandwidth_bps"] / per_token)
    assert doc["tg_roofline_fraction"] == pytest.approx(doc["tg"]["mean"] / doc["roofline_tokens_per_s"])


@pytest.mark.parametrize(("args", "message"), [
    (["-t", str(available_cpus() + 1)],
     f"error: argument -t/--threads: {available_cpus() + 1} threads is more than the {available_cpus()} CPUs"),
    (["-t", "0"], "error: argument -t/--threads: must be at least 1, got 0"),
    (["-c", "0"], "error: argument -c/--ctx: 0 cannot hold -p 16 -n 8 (needs at least 17)"),
    (["-c", "12"], "error: argument -c/--ctx: 12 cannot hold -p 16 -n 8 (needs at least 17)"),
    (["-o", "csv"], "argument -o/--output: invalid choice: 'csv'"),
])
def test_bad_values_are_one_line_and_status_2(args: list[str], message: str) -> None:
    """A value the run cannot honour is refused before measuring: more threads than CPUs, or a
    context that would cut tg short under a label that says otherwise (it was silently raised)."""
    r = run("-p", "16", "-n", "8", "-r", "1", *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert message in r.stderr.strip().splitlines()[-1], r.stderr
    assert r.stdout == ""
