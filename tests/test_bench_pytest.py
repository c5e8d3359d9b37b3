"""benchmarks/test_bench_kernels.py under pytest-benchmark, as docs/benchmarks.md runs it
(``python -m pytest benchmarks``): it runs, its ids select exactly with ``-k``, its saved
records say where they were measured, and it prints throughput, not only times. Nothing is
timed for its own sake: the benchmarks run with the fewest rounds pytest-benchmark allows.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark")

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--benchmark-max-time=0.0001", "--benchmark-min-rounds=1", "--benchmark-warmup=off", "-p", "no:cacheprovider"]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", "benchmarks/test_bench_kernels.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_ids_select_exactly_with_k() -> None:
    """'2560->640' could not be given to -k (pytest rejects '>'), and 'B1' matched B128 too."""
    r = bench("--collect-only", "-q", "-k", "B1-")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ids = sorted(line.split("[", 1)[1].rstrip("]") for line in r.stdout.splitlines() if "::" in line)
    assert ids == ["B1-K2560", "B1-K2560-N2560", "B1-K2560-N640", "B1-K2560-N6912", "B1-K6912", "B1-K6912-N2560"]
    r = bench("--collect-only", "-q", "-k", "K6912-N2560")
    assert r.returncode == 0 and sum("::" in line for line in r.stdout.splitlines()) == 2, r.stdout[-3000:]


def test_runs_and_prints_throughput_with_where_it_ran(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    r = bench(*FAST, "-k", "matmul and B1-K2560-N640 or quantize and B1-K2560", f"--benchmark-json={out}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "throughput, best call (" in r.stdout
    assert any(line.startswith("test_matmul_ternary[B1-K2560-N640]") and line.endswith(" G MAC/s")
               for line in r.stdout.splitlines()), r.stdout[-3000:]
    records = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert sorted(records) == ["test_matmul_ternary[B1-K2560-N640]", "test_quantize_activations[B1-K2560]"]
    for b in records.values():
        assert b["extra_info"]["isa"] and b["extra_info"]["threads"] >= 1
    matmul = records["test_matmul_ternary[B1-K2560-N640]"]
    assert matmul["extra_info"]["gmacs_best"] == pytest.approx(640 * 2560 / matmul["stats"]["min"] / 1e9)
