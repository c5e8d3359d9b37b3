"""Requests and responses as the application sees them: plain data, no sockets."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

Send = Callable[[bytes], Awaitable[None]]


@dataclass
class Request:
    """One request, its body read in full (bodies here are JSON documents with a size limit)."""

    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower-cased, in arrival order
    body: bytes = b""
    http_version: str = "1.1"
    client: str = ""
    path_params: dict[str, str] = field(default_factory=dict)
    route: str = ""  # the matched route's pattern: a bounded label for logs and metrics
    received_at: float = field(default_factory=time.monotonic)
    notes: dict[str, Any] = field(default_factory=dict)  # what handlers tell the access log
    _on_finish: list[Callable[[], None]] = field(default_factory=list)

    @property
    def path(self) -> str:
        """The target's path, still percent-encoded (the router decodes it segment by segment).
        An absolute-form target (``http://host/path``: proxies send it, and RFC 9112 §3.2.2 says
        a server must accept it) gives its path; its authority replaces Host, which we ignore."""
        path = self.target.split("?", 1)[0]
        if not path.startswith("/") and "://" in path:
            path = urlsplit(path).path or "/"
        return path

    @property
    def query(self) -> dict[str, list[str]]:
        _, _, q = self.target.partition("?")
        return parse_qs(q)

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def on_finish(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` when this request's exchange ends, however it ends (response sent,
        failure, or the client gone before a streaming body started): where handlers release
        what they reserved."""
        self._on_finish.append(callback)

    def finish(self) -> None:
        callbacks, self._on_finish = self._on_finish, []
        for callback in callbacks:
            callback()


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls.raw_json(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(), status, headers)

    @classmethod
    def raw_json(cls, body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None) -> Response:
        return cls(status, [("content-type", "application/json"), *(headers or [])], body)

    @classmethod
    def text(cls, text: str, status: int = 200, content_type: str = "text/plain; charset=utf-8") -> Response:
        return cls(status, [("content-type", content_type)], text.encode())


@dataclass
class StreamingResponse:
    """A response whose body a producer writes piece by piece with ``send``; each send waits
    until the client's socket takes the bytes, so a slow reader slows its own producer.

    While the producer is silent for ``keepalive_interval`` seconds, ``keepalive`` bytes are sent
    (an SSE comment), so that proxies and clients do not time out during a long prompt."""

    status: int
    headers: list[tuple[str, str]]
    producer: Callable[[Send], Awaitable[None]]
    keepalive: bytes | None = None
    keepalive_interval: float = 15.0


Handler = Callable[[Request], Awaitable[Response | StreamingResponse]]
