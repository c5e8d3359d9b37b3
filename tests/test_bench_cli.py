"""Smoke test of the benchmark CLI: ``python -m tritlm.bench kernels --quick`` must run
end to end and print its table. Why: the bench module is exercised by no other test, and a
broken report is only discovered when someone needs the figures. Only the exit status and
the table's shape are checked, never the speeds (target misses must not fail the run).
Also: bad options and Ctrl-C end with an exit status and one line, never a traceback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tritlm import bench


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


# -- thread counts, machine-readable output, derived figures ---------------------------------------


def test_more_threads_than_cpus_is_refused_and_repeats_are_measured_once() -> None:
    """More threads than CPUs times the OS's time-slicing, not the kernel: a usage error, named."""
    from tritlm.bench import available_cpus, build_parser

    too_many = available_cpus() + 1
    r = _bench("--threads", f"1,{too_many}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"argument --threads: {too_many} threads is more than the {available_cpus()} CPUs" in r.stderr
    assert r.stdout == ""
    ns = build_parser().parse_args(["kernels", "--threads", "1,1", "--batches", "8,1,8"])
    assert ns.threads == [1] and ns.batches == [8, 1]


def _strict_json(text: str) -> dict:
    """Parse as JSON proper: a bare NaN or Infinity (Python's json extension) fails the test."""
    def refuse(name: str) -> None:
        raise AssertionError(f"{name} in the JSON output")

    return json.loads(text, parse_constant=refuse)


def test_output_json_carries_every_figure_of_the_text(tmp_path) -> None:
    """-o json: stdout is one JSON document (no table, no header) holding the figures the text
    shows, derived ones included: layer mix, scalar speedup, decode passes/s, the bandwidth used."""
    r = _bench("-o", "json", "--threads", "1", "--batches", "1", "--sections", "gemm,scalar,decode",
               "--json", str(tmp_path / "copy.json"))
    assert r.returncode == 0, r.stderr[-3000:]
    doc = _strict_json(r.stdout)
    assert doc == _strict_json((tmp_path / "copy.json").read_text())
    assert doc["system"]["isa"] and doc["config"]["threads"] == [1]
    assert {g["shape"] for g in doc["gemm"]} == {"2560->2560", "2560->640", "2560->6912", "6912->2560"}
    (mix,) = doc["layer_mix"]
    assert mix["threads"] == 1 and mix["batch"] == 1 and mix["gmacs"] > 0
    if doc["system"]["isa"] != "scalar":
        assert [s["batch"] for s in doc["scalar_speedup"]] == [1] and doc["scalar_speedup"][0]["speedup"] > 0
    (bw,) = doc["bandwidth"]
    assert bw["bytes_per_s"] == max(bw["before_bps"], bw["after_bps"])
    for d in doc["decode"]:
        assert d["passes_per_s"] == pytest.approx(1 / d["best_s"])
        assert d["read_bw_gbps"] == pytest.approx(bw["bytes_per_s"] / 1e9)
        assert d["fraction_of_bw"] == pytest.approx(d["weight_gbps"] / d["read_bw_gbps"])
    assert [t["status"] for t in doc["targets"]] == ["n/a", "n/a"]  # no 2-thread figures asked for


def _report(**config: object) -> bench.Report:
    """A report with one of each row, figures made up: what render() and to_json() are given."""
    cfg = {"threads": [2], "batches": [128], "isa": None, **config}
    gemm = [bench.GemmRow("gemm", "ternary", s.label, s.n, s.k, 128, 2, "avx2", 1e-3, 2e-3, 5, 50.0, None)
            for s in bench.SHAPES]
    rep = bench.Report(system={}, config=cfg, gemm=gemm)
    rep.scalar = [bench.GemmRow("scalar", "ternary", "2560->640", 640, 2560, 1, 1, isa, best, best, 5, 1.0, 1.0)
                  for isa, best in (("scalar", 4e-3), ("avx2", 2e-5))]
    rep.decode = [bench.DecodeRow("ternary", 2, "avx2", 30, 210, 500_000_000, 3, 0.025, 0.03, 20.0,
                                  float("nan"), float("nan"), 1.0, 40.0)]
    rep.layer_mix = bench.layer_mix_rows(rep.gemm, [2], [128])
    rep.scalar_speedup = bench.scalar_speedups(rep.scalar)
    bench.evaluate_targets(rep)
    return rep


def test_text_and_json_take_derived_figures_from_one_place() -> None:
    """The text prints the report's layer-mix, speedup and pass/s fields, which to_json() also
    carries: a figure changed in the report changes in both (no second computation in render)."""
    rep = _report()
    macs = sum(s.per_layer * 128 * s.n * s.k for s in bench.SHAPES)
    assert rep.layer_mix[0].gmacs == pytest.approx(macs / (7 * 1e-3) / 1e9)  # 7 matrices of 1 ms each
    assert rep.scalar_speedup[0].speedup == pytest.approx(200.0)
    rep.layer_mix[0].gmacs, rep.scalar_speedup[0].speedup, rep.decode[0].passes_per_s = 123.45, 67.8, 9.1
    text, doc = bench.render(rep), rep.to_json()
    assert "B=128 thr=2: 123.45 G MAC/s" in text and doc["layer_mix"][0]["gmacs"] == 123.45
    assert "B=1: avx2 is 67.8x scalar" in text and doc["scalar_speedup"][0]["speedup"] == 67.8
    assert "9.1" in text.split("pass/s")[-2] and doc["decode"][0]["passes_per_s"] == 9.1
    assert doc["decode"][0]["fraction_of_bw"] is None  # NaN is not JSON: null
    _strict_json(json.dumps(doc, allow_nan=False))


def test_labels_say_which_isa_ran_and_why_a_target_was_not_measured() -> None:
    assert "GEMM, ternary (2-bit), dispatched ISA;" in bench.render(_report())
    forced = bench.render(_report(isa="avx2"))
    assert "GEMM, ternary (2-bit), ISA avx2 (--isa);" in forced and "dispatched" not in forced.split("\n")[0]
    system = {"date": "d", "cpu_model": "c", "logical_cpus": 2, "machine": "m", "isa": "avx512-vnni",
              "available_isas": ["scalar", "avx2", "avx512-vnni"], "features": [], "threads": 2, "python": "p",
              "numpy": "n", "tritlm": "t", "load_start": "l"}
    config = {"quick": True, "threads": [2], "batches": [1], "min_reps": 3, "min_time": 0.02}
    assert "isa         : avx512-vnni dispatched (available: scalar, avx2, avx512-vnni)\n" in bench.render_header(
        system, {**config, "isa": None})
    assert "avx512-vnni dispatched (available: scalar, avx2, avx512-vnni); every table but the scalar row runs avx2 " \
           "(--isa)" in bench.render_header(system, {**config, "isa": "avx2"})
    rep = _report()
    rep.decode = []
    rep.targets = []
    bench.evaluate_targets(rep)
    assert rep.targets[0].value == "not measured (needs the decode section, --threads 2)"


def test_an_interrupted_run_leaves_the_previous_json_in_place(tmp_path) -> None:
    """--json is replaced only by a finished run: Ctrl-C (or a failure) keeps the old figures."""
    old = tmp_path / "bench.json"
    old.write_text('{"old": true}\n')
    p = subprocess.Popen([sys.executable, "-m", "tritlm.bench", "kernels", "--json", str(old)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("tritlm kernel benchmark")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert old.read_text() == '{"old": true}\n'
    assert sorted(f.name for f in tmp_path.iterdir()) == ["bench.json"]  # no temporary file left behind
    r = _bench("--sections", "quantize", "--json", str(tmp_path))
    assert r.returncode == 1 and r.stderr.strip() == f"error: {tmp_path}: Is a directory", r.stderr[-3000:]
