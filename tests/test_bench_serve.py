"""The serving benchmarks (benchmarks/serve_load.py, benchmarks/server.py): option values are
checked before a model is written or a server started, a server that cannot load its model is
reported at once with the reason, and each printed figure is what its label says. No speed is
asserted; the scripts are otherwise run by hand for docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import serve_load  # noqa: E402

from tritlm.bench import available_cpus  # noqa: E402


@pytest.mark.parametrize(("args", "message"), [
    (["--clients", "1,0"], "argument --clients: expected positive integers"),
    (["--clients", "x"], "argument --clients: expected comma-separated integers"),
    (["--threads", str(available_cpus() + 1)], "argument --threads: "),
    (["--gen", "0"], "argument --gen: must be at least 1, got 0"),
    (["--model", "/no/such/model.gguf"], "argument --model: no such file or folder"),
])
def test_serve_load_refuses_bad_values_before_starting(capsys, args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        serve_load.parse_args(args)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_speedup_is_labelled_with_the_count_it_is_against() -> None:
    """With --clients 4,8 the yardstick is four streams, not 'the single stream'."""
    assert serve_load.speedup_label(30.0, 1, 10.0) == "3.00x the single stream"
    assert serve_load.speedup_label(30.0, 4, 20.0) == "1.50x N=4"


@dataclass
class Chunk:
    text: str

    @property
    def choices(self) -> list[Chunk]:
        return [self]


@dataclass
class FakeCompletions:
    """A model that streams a token every 10 ms: its seven 64-token streams end in 0.64 s, well
    inside the fixed 1.5 s the probe used to wait for them to be 'decoding'."""

    log: list[str] = field(default_factory=list)

    async def create(self, *, max_tokens: int, stream: bool, **kwargs: object):  # noqa: ANN201
        async def tokens():  # noqa: ANN202
            for _ in range(max_tokens):
                await asyncio.sleep(0.01)
                yield Chunk("x")
        return tokens()


@dataclass
class FakeClient:
    completions: FakeCompletions = field(default_factory=FakeCompletions)


def test_ttft_under_load_is_taken_while_the_streams_decode(capsys) -> None:
    asyncio.run(serve_load.ttft_under_load(FakeClient(), 1000, np.random.default_rng(0)))
    out = capsys.readouterr().out
    assert "while 7 of 7 streams decode" in out, out


def test_a_model_that_fails_to_load_is_reported_not_waited_for(tmp_path: Path) -> None:
    """The server keeps answering /health (503, 'unhealthy') after a failed load: server.py
    polled for a 200 forever."""
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"garbage, not a model")
    # A session of its own, so that a hang kills the server it started too, not only the script.
    p = subprocess.Popen([sys.executable, str(BENCHMARKS / "server.py"), "--model", str(bad)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail("server.py still waited for the server two minutes after its model failed to load")
    assert p.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("the server could not load its model: m: ModelLoadError: ")
