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


def test_engine_benchmark_refuses_threads_beyond_the_cpus_and_names_a_non_number(monkeypatch, capsys) -> None:
    """'invalid parse value' named no reason; more threads than CPUs timed time-slicing."""
    from tritlm.bench import available_cpus

    for option, message in ((["--threads", "x"], "argument --threads: expected an integer, got 'x'"),
                            (["--prompt", "1.5"], "argument --prompt: expected an integer, got '1.5'"),
                            (["--threads", str(available_cpus() + 1)],
                             f"argument --threads: {available_cpus() + 1} threads is more than the "
                             f"{available_cpus()} CPUs")):
        with pytest.raises(SystemExit) as exc:
            engine_bonsai.main(["--models", "1.7b", *option])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_every_model_name_is_checked_before_the_first_is_built(monkeypatch, capsys) -> None:
    """--models 1.7b,nope measured the 1.7B for minutes, then stopped at the typo."""
    def build(*args: object) -> None:
        raise AssertionError("built a model before checking every name")

    monkeypatch.setattr(engine_bonsai, "build", build)
    with pytest.raises(SystemExit) as exc:
        engine_bonsai.main(["--models", "1.7b,nope"])
    assert exc.value.code == 2 and "argument --models: unknown model 'nope'" in capsys.readouterr().err


def test_gguf_path_is_checked_before_the_model_is_built(tmp_path, capsys) -> None:
    import engine_2b4t

    for path, message in ((tmp_path / "missing" / "m.gguf", "no such folder"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit) as exc:
            engine_2b4t.main(["--gguf", str(path)])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and "argument --gguf: " in err and message in err


def test_ctrl_c_and_failures_end_a_script_with_a_status_not_a_traceback(monkeypatch, capsys) -> None:
    """The scripts end as python -m tritlm does: 130 after Ctrl-C, 1 and one line on an error."""
    import engine_speed

    for error, status in ((KeyboardInterrupt(), 130), (MemoryError("out of memory building 8b"), 1)):
        def build(*args: object, error: BaseException = error) -> None:
            raise error

        monkeypatch.setattr(engine_bonsai, "build", build)
        with pytest.raises(SystemExit) as exc:
            engine_speed.run_script(lambda: engine_bonsai.main(["--models", "1.7b"]))
        assert exc.value.code == status
    assert capsys.readouterr().err.strip().splitlines()[-1] == "error: out of memory building 8b"


def test_the_pp_goal_is_set_against_pp128_only() -> None:
    """llama.cpp's prompt figure is pp128: 'pp32 >= 68' compared a 32-token prompt with it."""
    assert "pp128 >= 68.0 tokens/s (2x llama.cpp's 34.0)" in engine_bonsai.goals_line("1.7b", 128)
    assert "pp goal set for pp128 only" in engine_bonsai.goals_line("1.7b", 32)
