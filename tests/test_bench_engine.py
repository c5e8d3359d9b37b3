"""Smoke test of the engine benchmarks (benchmarks/engine_bonsai.py over engine_speed.py) on a
tiny Bonsai-like shape: the scripts are run by hand for docs/benchmarks.md and by no other test,
so a broken report would only show when the figures are needed. Only the report's shape and the
figures' signs are checked, never the speeds.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import engine_bonsai  # noqa: E402

TINY = dict(n_layers=2, dim=256, n_heads=4, n_kv_heads=2, ffn_dim=512, **engine_bonsai.COMMON)


@pytest.mark.parametrize("head", ["binary", "q8"])
def test_engine_bonsai_reports_mean_and_steady_rates(monkeypatch, capsys, head: str) -> None:
    monkeypatch.setitem(engine_bonsai.SHAPES, "tiny", dict(TINY, vocab_size=512))
    monkeypatch.setitem(engine_bonsai.TIED, "tiny", True)
    monkeypatch.setattr(sys, "argv", ["engine_bonsai.py", "--models", "tiny", "--head", head, "--prompt", "8",
                                      "--gen", "6", "--repeats", "2"])
    engine_bonsai.main()
    out = capsys.readouterr().out
    assert f"Bonsai-TINY shape, {head} head" in out
    mean = re.search(r"tg6:\s+([\d.]+) ±\s+[\d.]+ tokens/s = (\d+)% of the roofline", out)
    steady = re.search(r"steady \(median token\):\s+([\d.]+) ±\s+[\d.]+ tokens/s = (\d+)% of the roofline; "
                       r"repeats: [\d.]+ = \d+%, [\d.]+ = \d+%\n", out)
    assert mean and steady, out
    assert float(mean.group(1)) > 0 and float(steady.group(1)) > 0
    assert re.search(r"pp8:\s+[\d.]+ ±\s+[\d.]+ tokens/s", out), out


@pytest.mark.parametrize("option", [["--gen", "0"], ["--repeats", "0"], ["--depth", "-1"], ["--threads", "x"]])
def test_engine_benchmark_names_a_bad_count(monkeypatch, capsys, option: list[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["engine_bonsai.py", "--models", "1.7b", *option])
    with pytest.raises(SystemExit):
        engine_bonsai.main()
    assert f"argument {option[0]}" in capsys.readouterr().err
