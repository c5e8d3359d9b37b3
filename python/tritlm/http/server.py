"""The listening server: accepts connections up to a limit, dispatches requests through the
routing table, and shuts down gracefully (stop accepting, let in-flight exchanges finish for a
while, then cancel them)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

import anyio
import anyio.abc
from anyio.abc import TaskStatus

from ..errors import NotFoundError, ProtocolError
from .connection import Connection
from .cors import CORSPolicy
from .limits import Limits
from .messages import Request, Response, StreamingResponse
from .routing import Router

log = logging.getLogger("tritlm.http")

ErrorRenderer = Callable[[BaseException], Response]
ResponseObserver = Callable[[Request, int, float], None]  # request, status, seconds


def plain_error(error: BaseException) -> Response:
    """The default error rendering: the protocol's status (500 for anything else) and the message."""
    if isinstance(error, ProtocolError):
        return Response(error.status, [("content-type", "text/plain; charset=utf-8"), *error.headers],
                         str(error).encode())
    if isinstance(error, NotFoundError):
        return Response.text(str(error), 404)
    log.error("unhandled error", exc_info=error)
    return Response.text("internal server error", 500)


class HTTPServer:
    def __init__(
        self,
        router: Router,
        *,
        limits: Limits | None = None,
        cors: CORSPolicy | None = None,
        error_response: ErrorRenderer = plain_error,
        on_response: ResponseObserver | None = None,
    ) -> None:
        self.router = router
        self.limits = limits or Limits()
        self.cors = cors
        self.error_response = error_response
        self.on_response = on_response
        self._connections: set[Connection] = set()
        self._stop: anyio.Event | None = None  # events belong to the loop serve() runs on
        self._stop_requested = False
        self.stopped: anyio.Event | None = None  # set once every connection is closed after shutdown
        self.port: int | None = None

    # -- dispatch (no sockets here) -------------------------------------------------------------

    async def dispatch(self, request: Request) -> Response | StreamingResponse:
        request.notes.setdefault("x-request-id", uuid.uuid4().hex)
        try:
            response = await self._route(request)
        except Exception as e:  # handlers raise tritlm errors; the application renders them
            response = self.error_response(e)
        if self.cors is not None and not CORSPolicy.is_preflight(request):  # a preflight has its own
            response.headers.extend(self.cors.headers_for(request))
        return response

    async def _route(self, request: Request) -> Response | StreamingResponse:
        if request.method == "OPTIONS":
            allowed = self.router.allowed_methods(request.path)
            if not allowed:
                raise NotFoundError(f"no route for {request.path}")
            if self.cors is not None and CORSPolicy.is_preflight(request):
                return self.cors.preflight(request, allowed)
            return Response(204, [("allow", ", ".join([*allowed, "OPTIONS"]))])
        route, params = self.router.match(request.method, request.path)
        request.path_params = params
        request.route = route.pattern
        return await route.handler(request)

    def observe(self, request: Request, status: int) -> None:
        if self.on_response is not None:
            self.on_response(request, status, time.monotonic() - request.received_at)

    def observe_protocol_error(self, client: str, status: int, message: str) -> None:
        log.info("%s: answered %d: %s", client, status, message)
        if self.on_response is not None:
            self.on_response(Request("-", "-", [], client=client), status, 0.0)

    # -- serving --------------------------------------------------------------------------------

    async def serve(
        self, host: str = "127.0.0.1", port: int = 8000, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Listen until ``shutdown``; reports the bound port (useful with port 0) when started."""
        self._stop, self.stopped = anyio.Event(), anyio.Event()
        if self._stop_requested:
            self._stop.set()
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port, reuse_port=False)
        sock_port = listener.extra(anyio.abc.SocketAttribute.local_port)
        self.port = int(sock_port)
        stop = self._stop
        slots = anyio.Semaphore(self.limits.max_connections)
        all_closed = anyio.Event()
        async with anyio.create_task_group() as connections:

            async def handle(stream: anyio.abc.SocketStream) -> None:
                conn = Connection(stream, self)
                self._connections.add(conn)
                try:
                    await conn.run()
                finally:
                    self._connections.discard(conn)
                    slots.release()
                    if stop.is_set() and not self._connections:
                        all_closed.set()

            async with anyio.create_task_group() as accepting:

                async def accept(one: anyio.abc.Listener[anyio.abc.SocketStream]) -> None:
                    async with one:
                        while True:
                            await slots.acquire()
                            try:
                                stream = await one.accept()  # type: ignore[attr-defined]  # TCP listeners: SocketListener
                            except BaseException:
                                slots.release()
                                raise
                            connections.start_soon(handle, stream)

                for one in listener.listeners:
                    accepting.start_soon(accept, one)
                task_status.started(self.port)
                await stop.wait()
                accepting.cancel_scope.cancel()
            log.info("shutting down: %d connection(s) open", len(self._connections))
            for conn in list(self._connections):
                conn.close_when_idle()
            if self._connections:
                with anyio.move_on_after(self.limits.shutdown_timeout):
                    await all_closed.wait()
            connections.cancel_scope.cancel()
        self.stopped.set()

    def shutdown(self) -> None:
        """Stop accepting, then close connections as their exchanges end (call on the server's loop)."""
        self._stop_requested = True
        if self._stop is not None:
            self._stop.set()
