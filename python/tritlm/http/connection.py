"""One client connection: h11's state machine driven over an anyio socket stream.

Reading is bounded everywhere: the head by size (h11's max_incomplete_event_size) and by time
from its first byte (slowloris), the body by its declared or counted size (413 before reading
more) and by time, the pause between kept-alive requests by the idle timeout. While a request is
being answered, the socket keeps being read, so a client that goes away is noticed at once and
its handler cancelled (which stops generation); the bytes of pipelined requests read meanwhile
wait in h11's buffer for their turn.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING

import anyio
import anyio.abc
import h11

from ..errors import ClientDisconnected, ProtocolError
from .messages import Request, Response, StreamingResponse

if TYPE_CHECKING:
    from .server import HTTPServer

log = logging.getLogger("tritlm.http")

RECEIVE_BYTES = 64 * 1024
LINGER_SECONDS = 1.0  # after answering an unread body: how long to drain before closing
CLIENT_GONE = 499  # nginx's status for "client closed the request", in logs and metrics only


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Client Closed Request" if status == CLIENT_GONE else b""


class Connection:
    def __init__(self, stream: anyio.abc.SocketStream, server: HTTPServer) -> None:
        self.stream = stream
        self.server = server
        self.limits = server.limits
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        self.closing = False  # the server is shutting down: finish the current exchange, then close
        self.idle_scope: anyio.CancelScope | None = None
        if self.limits.send_buffer_bytes is not None:
            raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.limits.send_buffer_bytes)
        try:
            address = stream.extra(anyio.abc.SocketAttribute.remote_address)
            self.client = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        except anyio.TypedAttributeLookupError:
            self.client = "unknown"

    def close_when_idle(self) -> None:
        self.closing = True
        if self.idle_scope is not None:
            self.idle_scope.cancel()

    async def run(self) -> None:
        try:
            while not self.closing:
                try:
                    request = await self._read_request()
                except ProtocolError as e:
                    await self._answer_protocol_error(e)
                    return
                if request is None:
                    return
                if not await self._exchange(request):
                    return
                self.h11.start_next_cycle()
        except ClientDisconnected:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    # -- reading -------------------------------------------------------------------------------

    async def _receive(self) -> bytes:
        """Bytes from the client; b"" once it has closed or reset the connection."""
        try:
            return await self.stream.receive(RECEIVE_BYTES)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError):
            return b""

    def _next_event(self) -> object:
        try:
            return self.h11.next_event()
        except h11.RemoteProtocolError as e:
            raise ProtocolError(e.error_status_hint, f"malformed HTTP request: {e}") from None

    async def _read_request(self) -> Request | None:
        """The next request with its body, or None when the client closed or idled out."""
        head = await self._read_head()
        if head is None:
            return None
        size = len(head.target) + sum(len(k) + len(v) + 4 for k, v in head.headers)
        if size > self.limits.max_header_bytes:  # h11 bounds only a head that arrives in pieces
            raise ProtocolError(431, f"request head of {size} bytes is larger than the limit of "
                                     f"{self.limits.max_header_bytes} bytes")
        received_at = time.monotonic()
        request = Request(
            method=head.method.decode("ascii", "replace"),
            target=head.target.decode("latin-1"),
            headers=[(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers],
            http_version=head.http_version.decode("ascii", "replace"),
            client=self.client,
            received_at=received_at,
        )
        names = {name for name, _ in request.headers}
        if {"content-length", "transfer-encoding"} <= names:
            # h11 goes by Transfer-Encoding, but a proxy in front may have gone by Content-Length and
            # read another request in the rest (smuggling). RFC 9112 §6.1: reject or process, and close.
            raise ProtocolError(400, "a request must not have both Content-Length and Transfer-Encoding")
        request.body = await self._read_body(request)
        return request

    async def _read_head(self) -> h11.Request | None:
        deadline: float | None = None  # set by the request's first byte
        while True:
            event = self._next_event()
            if isinstance(event, h11.Request):
                return event
            if isinstance(event, h11.ConnectionClosed):
                return None
            if deadline is None and self.h11.trailing_data[0]:
                deadline = anyio.current_time() + self.limits.header_timeout
            data = b""
            if deadline is None:  # between requests: wait for the next one's first byte
                with anyio.CancelScope(deadline=anyio.current_time() + self.limits.idle_timeout) as scope:
                    self.idle_scope = scope
                    if self.closing:
                        scope.cancel()
                    data = await self._receive()
                self.idle_scope = None
                if not data:
                    return None
                deadline = anyio.current_time() + self.limits.header_timeout
            else:
                with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                    data = await self._receive()
                if scope.cancelled_caught:
                    raise ProtocolError(408, f"request head not complete within {self.limits.header_timeout:g} s")
                if not data:
                    raise ClientDisconnected
            self.h11.receive_data(data)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.header("content-length")
        limit = self.limits.max_body_bytes
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(413, f"request body of {declared} bytes is larger than the limit of {limit} bytes")
        if self.h11.they_are_waiting_for_100_continue:
            await self._send(self.h11.send(h11.InformationalResponse(status_code=100, headers=[])))
        parts: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.limits.body_timeout):
            while True:
                event = self._next_event()
                if isinstance(event, h11.EndOfMessage):
                    return b"".join(parts)
                if isinstance(event, h11.Data):
                    size += len(event.data)
                    if size > limit:
                        raise ProtocolError(413, f"request body is larger than the limit of {limit} bytes")
                    parts.append(event.data)
                    continue
                data = await self._receive()
                if not data:
                    raise ClientDisconnected
                self.h11.receive_data(data)
        raise ProtocolError(408, f"request body not complete within {self.limits.body_timeout:g} s")

    # -- writing -------------------------------------------------------------------------------

    async def _send(self, data: bytes | None) -> None:
        if not data:
            return
        try:
            with anyio.fail_after(self.limits.send_timeout):
                await self.stream.send(data)
        except (TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError, ConnectionError) as e:
            raise ClientDisconnected from e

    def _head_headers(self, request: Request | None, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = [("date", formatdate(usegmt=True)), ("server", "tritlm"), *headers]
        if request is not None and "x-request-id" in request.notes:
            out.append(("x-request-id", str(request.notes["x-request-id"])))
        closes = self.closing or self.h11.their_state is not h11.DONE
        if closes and not any(k == "connection" for k, _ in out):
            out.append(("connection", "close"))  # an unread body, or shutdown: no next request
        return out

    async def _send_response(self, request: Request, response: Response) -> None:
        headers = self._head_headers(request, [*response.headers, ("content-length", str(len(response.body)))])
        await self._send(self.h11.send(h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status))))
        if response.body and request.method != "HEAD":
            await self._send(self.h11.send(h11.Data(data=response.body)))
        await self._send(self.h11.send(h11.EndOfMessage()))

    async def _send_stream(self, request: Request, response: StreamingResponse) -> None:
        """Headers, then the producer's pieces as chunks (h11 frames them), with keepalive bytes
        whenever the producer has been silent for a while."""
        headers = self._head_headers(request, response.headers)
        await self._send(self.h11.send(h11.Response(status_code=response.status, headers=headers, reason=_reason(response.status))))
        lock = anyio.Lock()
        last_sent = anyio.current_time()

        async def send_piece(data: bytes) -> None:
            nonlocal last_sent
            if not data:
                return
            async with lock:
                await self._send(self.h11.send(h11.Data(data=data)))
                last_sent = anyio.current_time()

        async def keep_alive(payload: bytes) -> None:
            try:
                while True:
                    await anyio.sleep_until(last_sent + response.keepalive_interval)
                    if anyio.current_time() - last_sent >= response.keepalive_interval:
                        await send_piece(payload)
            except ClientDisconnected:
                tg.cancel_scope.cancel()

        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:  # exceptions leave it unwrapped, below
            if response.keepalive:
                tg.start_soon(keep_alive, response.keepalive)
            try:
                await response.producer(send_piece)
            except Exception as e:
                failure = e
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
        await self._send(self.h11.send(h11.EndOfMessage()))

    # -- one request/response exchange -------------------------------------------------------

    async def _exchange(self, request: Request) -> bool:
        """Answer ``request`` while watching for the client leaving; True to keep the connection."""
        status = CLIENT_GONE
        gone = False
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                nonlocal gone
                while len(self.h11.trailing_data[0]) <= self.limits.max_header_bytes:
                    data = await self._receive()
                    if not data:
                        gone = True
                        tg.cancel_scope.cancel()
                        return
                    self.h11.receive_data(data)

            tg.start_soon(watch)
            try:
                response = await self.server.dispatch(request)
                status = response.status
                if isinstance(response, StreamingResponse):
                    await self._send_stream(request, response)
                else:
                    await self._send_response(request, response)
            except ClientDisconnected:
                gone = True
            except Exception:  # a streaming producer failed after the head went out: cut the body short
                log.exception("%s %s: the response failed after it started", request.method, request.path)
                gone = True
            finally:
                request.finish()
                self.server.observe(request, CLIENT_GONE if gone or tg.cancel_scope.cancel_called else status)
            tg.cancel_scope.cancel()
        return not gone and self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def _answer_protocol_error(self, error: ProtocolError) -> None:
        """Answer a request that could not be read (if h11 still lets us), then linger so the
        client can read the answer before the close (closing with unread bytes resets it)."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        response = self.server.error_response(error)
        headers = [*response.headers, ("content-length", str(len(response.body)))]
        try:
            await self._send(self.h11.send(h11.Response(status_code=response.status, reason=_reason(response.status),
                                                        headers=self._head_headers(None, headers))))
            await self._send(self.h11.send(h11.Data(data=response.body)))
            await self._send(self.h11.send(h11.EndOfMessage()))
            await self.stream.send_eof()
        except (ClientDisconnected, h11.LocalProtocolError, anyio.BrokenResourceError, OSError):
            return
        self.server.observe_protocol_error(self.client, response.status, str(error))
        await self._drain(self.stream.receive, LINGER_SECONDS)

    @staticmethod
    async def _drain(receive: Callable[[int], Awaitable[bytes]], seconds: float) -> None:
        with anyio.move_on_after(seconds):
            try:
                while await receive(RECEIVE_BYTES):
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
