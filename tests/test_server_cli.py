"""``python -m tritlm.serve`` as a process: what it says with no model, the config file, the
environment, and a graceful exit on SIGTERM while a request is in flight."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import tritlm
from server_harness import tiny_model
from tritlm.errors import ConfigurationError
from tritlm.serve import build_config

SERVE = [sys.executable, "-m", "tritlm.serve"]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRITLM_")}
    return {**env, **extra}


def test_without_a_model_it_serves_the_bundled_one() -> None:
    c = build_config([], environ={})
    assert [(m.id, m.path) for m in c.models] == [("kjv-bitnet-b1.58-11m", tritlm.default_model_path())]


def test_a_model_without_a_ctx_gets_its_own_context() -> None:
    """No --ctx: the bundled model (trained for 1024 positions) is served with 1024, not 4096."""
    from tritlm.serve.registry import Registry

    c = build_config([], environ={})
    llm = Registry._load(c.model_settings(c.models[0]))
    try:
        assert llm.n_ctx == llm.spec.config["max_position"] == 1024
    finally:
        llm.close()


def test_a_taken_port_is_one_line_and_status_1(model: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run([*SERVE, "--model", str(model), "--port", str(port)], capture_output=True, text=True,
                           env=clean_env(), timeout=120)
    assert r.returncode == 1, r.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_bad_settings_are_named(model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[server]\nprot = 8000\n[models.a]\npath = "{model}"\n')
    r = subprocess.run([*SERVE, "--config", str(bad)], capture_output=True, text=True, env=clean_env(), timeout=60)
    assert r.returncode == 2 and "prot" in r.stderr
    r = subprocess.run([*SERVE, "--model", str(tmp_path / "missing.gguf")], capture_output=True, text=True,
                       env=clean_env(), timeout=60)
    assert r.returncode == 2 and "missing.gguf" in r.stderr


def test_config_file_env_and_command_line_layer(model: Path, tmp_path: Path) -> None:
    (tmp_path / "m").symlink_to(model)
    toml = tmp_path / "tritlm.toml"
    toml.write_text(
        '[server]\nport = 9001\napi_key = "sk-file"\nheader_timeout = 3\nmax_waiting = 5\n'
        '[models.chat]\npath = "m"\nuse = ["chat"]\nctx = 256\n[models.chat.defaults]\ntemperature = 0.2\nmax_tokens = 9\n'
        '[models.embed]\npath = "m"\nuse = ["embedding"]\nmax_running = 2\nmax_batch_tokens = 64\n'
    )
    c = build_config(["--config", str(toml)], environ={"TRITLM_PORT": "9002", "TRITLM_HOST": "0.0.0.0"})
    assert (c.host, c.port, c.api_keys, c.limits.header_timeout) == ("0.0.0.0", 9002, ("sk-file",), 3.0)
    chat, embed = c.models
    assert chat.path == str(tmp_path / "m") and chat.uses == ("chat",) and chat.n_ctx == 256
    assert chat.defaults == {"temperature": 0.2, "max_tokens": 9}
    assert c.model_settings(embed).max_running == 2 and c.model_settings(embed).max_waiting == 5
    assert c.model_settings(embed).max_batch_tokens == 64 and c.model_settings(chat).max_batch_tokens == 128
    c2 = build_config(["--model", str(model), "--max-batch-tokens", "32", "--max-running", "4"], environ={})
    assert (c2.model_settings(c2.models[0]).max_batch_tokens, c2.model_settings(c2.models[0]).max_running) == (32, 4)
    with pytest.raises(ConfigurationError, match="max_batch_tokens must be positive"):
        build_config(["--model", str(model), "--max-batch-tokens", "0"], environ={})
    c = build_config(["--config", str(toml), "--port", "9003", "--model", str(model), "--model-id", "extra",
                      "--api-key", "k1", "--api-key", "k2"], environ={"TRITLM_PORT": "9002"})
    assert c.port == 9003 and c.api_keys == ("k1", "k2") and [m.id for m in c.models] == ["chat", "embed", "extra"]
    c = build_config([], environ={"TRITLM_MODEL": str(model), "TRITLM_API_KEY": "sk-env"})
    assert c.models[0].id == model.name and c.api_keys == ("sk-env",) and c.host == "127.0.0.1"
    for bad_env in ({"TRITLM_PORT": "http"}, {"TRITLM_PORT": "70000"}):
        with pytest.raises(ConfigurationError):
            build_config(["--model", str(model)], environ=bad_env)
    toml.write_text('[models.x]\npath = "m"\n[models.x.defaults]\ntemprature = 1\n')
    with pytest.raises(ConfigurationError, match="temprature"):
        build_config(["--config", str(toml)], environ={})
    # defaults reach the engine as request fields do: what a request may not send, they may not hold
    for bad, named in (("repetition_penalty = 200", "repetition_penalty"), ('top_k = "forty"', "top_k"),
                       ("max_tokens = 0", "max_tokens"), ("stop = 5", "stop")):
        toml.write_text(f'[models.x]\npath = "m"\n[models.x.defaults]\n{bad}\n')
        with pytest.raises(ConfigurationError, match=named):
            build_config(["--config", str(toml)], environ={})


def test_sigterm_finishes_the_request_in_flight_and_exits_0(model: Path) -> None:
    proc = subprocess.Popen([*SERVE, "--model", str(model), "--model-id", "tiny", "--port", "0", "--ctx", "4096",
                             "--log-level", "info"], stderr=subprocess.PIPE, text=True, env=clean_env())
    try:
        port = None
        lines = []
        while port is None:
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
            if "listening on http://" in line:
                port = int(line.rsplit(":", 1)[1])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with httpx.Client(timeout=30) as c, c.stream(
            "POST", f"{url}/v1/chat/completions",
            json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2000,
                  "ignore_eos": True, "stream": True}) as r:
            pieces = r.iter_lines()
            assert next(pieces).startswith("data: ")
            proc.send_signal(signal.SIGTERM)
            rest = list(pieces)
        assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
        assert json.loads([x for x in rest if x.startswith("data: {")][-1][6:])["choices"][0]["finish_reason"] == "length"
        assert proc.wait(timeout=15) == 0
        log = "".join(lines) + proc.stderr.read()
        assert "SIGTERM" in log and '"POST /v1/chat/completions HTTP/1.1" 200 tokens=' in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
