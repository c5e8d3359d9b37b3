"""Server-sent events framing (the WHATWG event-stream format OpenAI streams in)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .messages import Send, StreamingResponse

PING = b": ping\n\n"


def encode_event(data: str, event: str | None = None) -> bytes:
    """One event; a multi-line payload becomes one ``data:`` line per line, as the format says."""
    lines = [f"event: {event}"] if event is not None else []
    lines += [f"data: {line}" for line in data.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


class EventSender:
    """Sends events; safe to share between tasks (the connection writes each send whole)."""

    def __init__(self, send: Send) -> None:
        self._send = send

    async def send(self, data: str, event: str | None = None) -> None:
        await self._send(encode_event(data, event))


def sse_response(
    producer: Callable[[EventSender], Awaitable[None]],
    *,
    status: int = 200,
    headers: list[tuple[str, str]] | None = None,
    ping_interval: float = 15.0,
) -> StreamingResponse:
    async def run(send: Send) -> None:
        await producer(EventSender(send))

    return StreamingResponse(
        status,
        [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache"),
         ("x-accel-buffering", "no"), *(headers or [])],
        run,
        keepalive=PING,
        keepalive_interval=ping_interval,
    )
