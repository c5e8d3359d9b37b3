"""The command line as a script or a person at a terminal uses it: exit statuses (0, 2 for a bad
command line, 1 for a failure, 130 after Ctrl-C), one-line errors and never a traceback, text on
stdout and everything else on stderr, a closed pipe, piped chat input, each subcommand's output.

Each test runs ``python -m tritlm`` in a subprocess, as a user does (signals and pipes need one),
on a tiny random BitNet folder or on the bundled model where a model must write real text for a
while."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import model_factory as mf  # noqa: E402

import tritlm  # noqa: E402
import tritlm.scheduler  # noqa: E402
from tritlm.__main__ import main  # noqa: E402

CLI = [sys.executable, "-m", "tritlm"]
# The bundled model writes ~1000 tokens/s here: with 20000 positions and no end of text, a
# generation runs long enough for a signal to reach it mid-stream.
LONG = ["-c", "20000", "-n", "20000", "--ignore-eos"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.build_master(tmp_path_factory.mktemp("cli") / "master", seed=11)


def cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def first_byte(p: subprocess.Popen[bytes]) -> bytes:
    """The first byte p writes to stdout, waiting at most two minutes for it."""
    if not select.select([p.stdout], [], [], 120)[0]:
        p.kill()
        pytest.fail(f"no output in two minutes: {p.communicate()[1].decode()[-3000:]}")
    return p.stdout.read(1)


def interrupt_after_output(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Start the CLI, wait for its first byte of stdout (the work is under way, imports are
    over), send SIGINT as Ctrl-C does, and collect what it did."""
    p = subprocess.Popen([*CLI, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         bufsize=0)  # unbuffered: communicate() reads the pipe past any buffer
    if stdin is not None:
        p.stdin.write(stdin.encode())
        p.stdin.flush()
    first = first_byte(p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, (first + out).decode(), err.decode())


def assert_status(r: subprocess.CompletedProcess[str], status: int) -> None:
    assert r.returncode == status, (r.returncode, r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def assert_one_line_error(r: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    assert_status(r, status)
    assert text in r.stderr.strip().splitlines()[-1], r.stderr


# -- exit statuses and errors ----------------------------------------------------------------------


def test_a_missing_path_is_a_usage_error_and_a_bad_model_a_failure(folder: Path, tmp_path: Path) -> None:
    r = cli("generate", "-m", str(tmp_path / "nope.gguf"), "Hello")
    assert_one_line_error(r, 2, "argument -m/--model: no such file or folder")
    r = cli("info", str(tmp_path / "nope"))
    assert_one_line_error(r, 2, "argument path: no such file or folder")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(mf.build_gguf(folder, tmp_path / "whole.gguf").read_bytes()[:100_000])
    for args in (["info", str(truncated)], ["generate", "-m", str(truncated), "Hello"]):
        assert_one_line_error(cli(*args), 1, "lies outside the file")
    r = cli("generate", "-m", str(folder), "-t", "0", "Hello")  # a value the engine refuses
    assert_one_line_error(r, 2, "error: n_threads must be between 1 and 1024, got 0")


def test_warnings_are_one_line_on_stderr() -> None:
    r = cli("generate", "-c", "2048", "-n", "1", "And")  # beyond the bundled model's 1024 positions
    assert r.returncode == 0, r.stderr
    assert "warning: n_ctx=2048 is beyond the 1024 positions" in r.stderr
    assert ".py:" not in r.stderr, r.stderr  # no file:line and source line of the library


def test_text_the_console_cannot_encode_is_replaced(folder: Path) -> None:
    # The random model's first tokens here are pieces of multi-byte characters, shown as U+FFFD.
    r = cli("generate", "-m", str(folder), "-n", "8", "--temperature", "0", "Hello", env={"PYTHONIOENCODING": "ascii"})
    assert r.returncode == 0, r.stderr
    assert "?" in r.stdout


# -- Ctrl-C and pipes ------------------------------------------------------------------------------


def test_ctrl_c_stops_generate_cleanly() -> None:
    r = interrupt_after_output(["generate", *LONG, "And God said"])
    assert_status(r, 130)
    assert r.stdout


def test_ctrl_c_stops_a_piped_chat_cleanly() -> None:
    r = interrupt_after_output(["chat", *LONG], stdin="Hello\n")
    assert_status(r, 130)


def test_ctrl_c_stops_bench_cleanly(folder: Path) -> None:
    r = interrupt_after_output(["bench", "-m", str(folder), "-p", "16", "-n", "8", "-r", "100000"])
    assert_status(r, 130)


def test_ctrl_c_at_a_terminal_ends_the_reply_not_the_chat() -> None:
    """At a terminal Ctrl-C stops the reply and the chat goes on, as in llama.cpp's chat."""
    master, slave = pty.openpty()
    p = subprocess.Popen([*CLI, "chat", *LONG], stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    os.close(slave)
    err = b""

    def wait_for_prompt(n: int) -> None:  # the n-th "> " on stderr: the chat waits for a turn
        nonlocal err
        while err.count(b"> ") < n and select.select([p.stderr], [], [], 120)[0]:
            chunk = p.stderr.read(4096)
            if not chunk:  # the chat ended
                break
            err += chunk
        assert err.count(b"> ") >= n, err.decode()[-3000:]

    try:
        for turn in (1, 2):
            wait_for_prompt(turn)
            while select.select([p.stdout], [], [], 0)[0]:  # the previous reply, all written
                p.stdout.read(65536)
            os.write(master, b"Tell me more\n")
            first_byte(p)  # this reply streams
            p.send_signal(signal.SIGINT)
        wait_for_prompt(3)
        os.write(master, b"\x04")  # Ctrl-D ends the chat
        out, rest = p.communicate(timeout=60)
    finally:
        os.close(master)  # the terminal's echo of the input is left unread: a few bytes
    assert p.returncode == 0, (err + rest).decode()[-3000:]
    assert b"Traceback" not in err + rest


def test_a_closed_pipe_ends_generate_quietly() -> None:
    p = subprocess.Popen([*CLI, "generate", *LONG, "And God said"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(10)
    p.stdout.close()  # as `| head -c 10` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=60) == 1
    assert "Traceback" not in err and "Broken pipe" not in err, err


# -- chat ------------------------------------------------------------------------------------------


def test_piped_chat_writes_the_replies_alone_to_stdout() -> None:
    r = cli("chat", "-n", "8", "--seed", "1", stdin="Hello\nWho are you?\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "> " not in r.stdout, r.stdout  # the replies, no prompts
    assert "tritlm chat" not in r.stderr  # no banner either without a terminal


def test_a_chat_that_outgrows_the_context_goes_on() -> None:
    turns = "Hello there my friend\nAnd more words please\nand more\nand more again\n"
    r = cli("chat", "-c", "64", "-n", "20", "--seed", "1", stdin=turns)
    assert r.returncode == 0, r.stderr
    assert "oldest exchange is forgotten" in r.stderr


# -- generate, info, bench, convert ----------------------------------------------------------------


def test_generate_options(folder: Path) -> None:
    r = cli("generate", "-m", str(folder), "-n", "40", "--temperature", "0", "--ignore-eos", "Hello")
    assert r.returncode == 0, r.stderr
    assert "40 generated at" in r.stderr  # the random model would have ended it sooner
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"tritlm {tritlm.__version__}"


def test_one_token_has_no_generation_rate(folder: Path) -> None:
    """The rate is over the steps after the first token, so one token has none (not 0.0 tok/s)."""
    r = cli("generate", "-m", str(folder), "-n", "1", "--ignore-eos", "Hello")  # sampled, so it might end at once
    assert r.returncode == 0, r.stderr
    assert "1 generated, finish" in r.stderr


def test_the_cli_reserves_one_sequence(folder: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """It runs one sequence at a time: a KV cache for the server's eight would make a long -c
    fail for want of memory that one sequence never needs."""
    made = []
    session = tritlm.scheduler._core.Session
    monkeypatch.setattr(tritlm.scheduler._core, "Session", lambda *a: made.append(a) or session(*a))
    assert main(["generate", "-m", str(folder), "-n", "2", "Hello"]) == 0
    assert len(made) == 1


def test_info_on_each_model_kind(folder: Path, tmp_path: Path) -> None:
    r = cli("info")  # no path: the bundled model, as generate and chat take it
    assert r.returncode == 0, r.stderr
    assert tritlm.default_model_path() in r.stdout and "context       : 1024 tokens (trained)" in r.stdout
    for path in (folder, mf.build_gguf(folder, tmp_path / "m.gguf", "i2_s")):
        r = cli("info", str(path))
        assert r.returncode == 0, r.stderr
        assert "bitnet-b1.58" in r.stdout and "rms eps 1e-05" in r.stdout and "context       : 512 tokens" in r.stdout


def test_bench_checks_its_counts_and_labels_its_figures(folder: Path) -> None:
    for args, option in ((["-r", "0"], "-r/--repeats"), (["-p", "-1"], "-p/--prompt"), (["-n", "x"], "-n/--gen")):
        r = cli("bench", "-m", str(folder), *args)
        assert_one_line_error(r, 2, f"argument {option}:")
        assert r.stdout == ""  # refused before any measuring
    r = cli("bench", "-p", "16", "-n", "0", "-r", "1")  # -n 0: the prompt alone, as in llama-bench
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"model: {tritlm.default_model_path()}  threads: ")
    assert lines[0].endswith(" MB") and "weights read per token: " in lines[0]
    assert lines[2].startswith("pp16 ") and lines[2].endswith(" tokens/s") and len(lines) == 3


def test_convert_refuses_to_overwrite_without_force(folder: Path, tmp_path: Path) -> None:
    dst = tmp_path / "out.gguf"
    dst.write_bytes(b"keep me")
    r = cli("convert", str(folder), str(dst))
    assert_one_line_error(r, 2, f"{dst} exists; pass --force to overwrite it")
    assert dst.read_bytes() == b"keep me"
    r = cli("convert", str(folder), str(dst), "--force", "--type", "tq2_0")
    assert r.returncode == 0, r.stderr
    assert f"wrote {dst} (" in r.stderr and dst.read_bytes()[:4] == b"GGUF"


def test_convert_refuses_what_it_cannot_convert(folder: Path, tmp_path: Path) -> None:
    r = cli("convert", str(folder), str(tmp_path / "missing" / "out.gguf"))
    assert_one_line_error(r, 2, "no such folder")
    r = cli("convert", str(folder), str(folder))  # the source itself
    assert_one_line_error(r, 2, "is a folder; name the GGUF file to write")
    gguf_file = mf.build_gguf(folder, tmp_path / "m.gguf")
    r = cli("convert", str(gguf_file), str(tmp_path / "again.gguf"))
    assert_one_line_error(r, 1, "convert reads a Hugging Face BitNet folder")
    r = cli("convert", str(folder), str(tmp_path / "x.gguf"), "--type", "q4_0")
    assert_one_line_error(r, 2, "argument --type: invalid choice: 'q4_0'")
