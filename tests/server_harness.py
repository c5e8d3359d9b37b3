"""Helpers for the server tests: a tiny random model on disk (built once per test session), a
real server on a free loopback port run in-process on a background event loop, and raw-socket
helpers."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import httpx
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import model_factory as mf  # noqa: E402

from tritlm.http import Limits  # noqa: E402
from tritlm.serve import ModelConfig, ServeConfig, Service  # noqa: E402

MODEL_ID = "tiny"


def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small random BitNet model for every server test module of the session, trained (in
    its config) for the 4096 positions the tests serve it with."""
    folder = tmp_path_factory.getbasetemp() / "server-tiny-model"
    if not (folder / "config.json").exists():
        mf.build_master(folder, dtype="bfloat16", seed=3, positions=4096)
    return folder


def config_for(model: Path, *, n_ctx: int = 4096, **server: Any) -> ServeConfig:
    limits = server.pop("limits", Limits())
    model_kw = {k: server.pop(k) for k in ("defaults", "uses") if k in server}
    return ServeConfig(port=0, limits=limits, n_ctx=n_ctx, models=(ModelConfig(MODEL_ID, str(model), **model_kw),),
                       **server)


@dataclass
class Running:
    service: Service
    port: int
    portal: anyio.from_thread.BlockingPortal

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def served(self) -> Any:
        return self.service.models.get(MODEL_ID)

    def metric(self, name: str, **labels: str) -> float:
        """A sample from /metrics' registry (0 when the series has no sample yet)."""
        value = self.service.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the server's event loop (its state belongs to that loop)."""
        return self.portal.call(fn, *args)


@contextlib.contextmanager
def running(config: ServeConfig, *, wait_ready: bool = True) -> Iterator[Running]:
    service = Service(config)
    with anyio.from_thread.start_blocking_portal() as portal:
        future, port = portal.start_task(service.run)
        server = Running(service, port, portal)
        try:
            if wait_ready:
                deadline = time.monotonic() + 30
                while httpx.get(f"{server.url}/health").status_code != 200:
                    assert time.monotonic() < deadline, "the model did not load"
                    time.sleep(0.02)
            yield server
        finally:
            portal.call(service.shutdown)
            future.result(timeout=30)


def with_limits(config: ServeConfig, **limits: Any) -> ServeConfig:
    return replace(config, limits=replace(config.limits, **limits))


# -- raw sockets -------------------------------------------------------------------------------


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_until_closed(s: socket.socket, limit: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (or ``limit`` seconds pass)."""
    s.settimeout(limit)
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            data = s.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not data:
            break
        out += data
    return out


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One Content-Length response from the socket: status, headers (lower-case), body. Reads
    no further than its end, so pipelined responses can be read one by one."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = s.recv(1)
        assert byte, f"connection closed before a full head: {head!r}"
        head += byte
    lines = head.decode("latin-1").strip().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    body = b""
    while len(body) < length:
        chunk = s.recv(length - len(body))
        assert chunk, "connection closed inside the body"
        body += chunk
    return status, headers, body


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """A request's bytes; a POST (or a body) gets a Content-Length unless ``headers`` frame it chunked."""
    headers = headers or {}
    sized = (body or method == "POST") and "Transfer-Encoding" not in headers
    h = {"Host": "localhost", **({"Content-Length": str(len(body))} if sized else {}), **headers}
    return (f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n").encode() + body
