"""Smoke test of the benchmark CLI: ``python -m tritlm.bench kernels --quick`` must run
end to end and print its table. Why: the bench module is exercised by no other test, and a
broken report is only discovered when someone needs the figures. Only the exit status and
the table's shape are checked, never the speeds (target misses must not fail the run).
"""

from __future__ import annotations

import os
import subprocess
import sys




def test_bench_kernels_quick(tmp_path) -> None:
    json_path = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tritlm.bench", "kernels", "--quick", "--json", str(json_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "tritlm kernel benchmark" in out
    for heading in ("GEMM, ternary", "Decode, B=1", "Read bandwidth", "Targets"):
        assert heading in out, f"missing section {heading!r}:\n{out}"
    assert "G MAC/s" in out and "% of BW" in out
    assert json_path.exists()
