"""Smoke test of the benchmark CLI: ``python -m tritlm.bench kernels --quick`` must run
end to end and print its table. Why: the bench module is exercised by no other test, and a
broken report is only discovered when someone needs the figures. Only the exit status and
the table's shape are checked, never the speeds (target misses must not fail the run).
Also: bad options and Ctrl-C end with an exit status and one line, never a traceback.
"""

from __future__ import annotations

import os
import signal
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


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tritlm.bench", "kernels", "--quick", *args], capture_output=True,
                          text=True, timeout=120, check=False)


def test_bad_options_are_refused_before_measuring(tmp_path) -> None:
    """A bad value is a usage error (status 2) named at once, not a traceback after the run."""
    for args, message in ((["--passes", "0"], "argument --passes: must be at least 1, got 0"),
                          (["--layers", "-1"], "argument --layers: must be at least 1, got -1"),
                          (["--isa", "nope"], "argument --isa: 'nope' is not available here")):
        r = _bench(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert r.stdout == ""
    r = _bench("--sections", "quantize", "--json", str(tmp_path / "missing" / "bench.json"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip() == f"error: {tmp_path / 'missing' / 'bench.json'}: No such file or directory"
    assert r.stdout == ""  # the unwritable path is found before the run, not after it


def test_ctrl_c_stops_the_benchmark_cleanly() -> None:
    p = subprocess.Popen([sys.executable, "-m", "tritlm.bench", "kernels"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("tritlm kernel benchmark")  # under way
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
