"""The HTTP layer over raw sockets, with no model behind it: malformed requests, pipelining,
slowloris, oversized bodies, idle and header timeouts, connection limits, CORS, keepalive pings
and graceful shutdown."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import anyio
import anyio.from_thread
import pytest

from server_harness import connect, read_response, read_until_closed, request_bytes
from tritlm.http import CORSPolicy, EventSender, HTTPServer, Limits, Request, Response, Route, Router, sse_response
from tritlm.http.messages import StreamingResponse


async def hello(request: Request) -> Response:
    return Response.json({"path": request.path, "params": request.path_params, "query": request.query})


async def echo(request: Request) -> Response:
    return Response.json({"length": len(request.body), "text": request.body.decode()})


async def slow(request: Request) -> Response:
    await anyio.sleep(0.5)
    return Response.json({"slow": True})


async def quiet_stream(request: Request) -> StreamingResponse:
    async def produce(events: EventSender) -> None:
        await anyio.sleep(0.35)
        await events.send('{"done":true}')

    return sse_response(produce, ping_interval=0.1)


async def broken(request: Request) -> Response:
    raise RuntimeError("handler bug")


ROUTES = [Route("GET", "/hello", hello), Route("GET", "/items/{name:path}", hello), Route("POST", "/echo", echo),
          Route("GET", "/slow", slow), Route("POST", "/quiet", quiet_stream), Route("GET", "/broken", broken)]
FAST = Limits(header_timeout=0.5, body_timeout=0.5, idle_timeout=0.4, max_body_bytes=1024, max_header_bytes=2048,
              max_connections=4, shutdown_timeout=2.0)


@dataclass
class Server:
    http: HTTPServer
    port: int
    portal: anyio.from_thread.BlockingPortal


@contextlib.contextmanager
def serving(limits: Limits = FAST, cors: CORSPolicy | None = None) -> Iterator[Server]:
    http = HTTPServer(Router(ROUTES), limits=limits, cors=cors)
    with anyio.from_thread.start_blocking_portal() as portal:
        future, port = portal.start_task(http.serve, "127.0.0.1", 0)
        try:
            yield Server(http, port, portal)
        finally:
            portal.call(http.shutdown)
            future.result(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with serving(cors=CORSPolicy(("https://app.example",))) as s:
        yield s


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    with connect(port) as s:
        s.sendall(raw)
        return read_response(s)


def test_routes_params_and_query(server: Server) -> None:
    status, headers, body = exchange(server.port, request_bytes("GET", "/items/org/model%20x?a=1&a=2"))
    assert status == 200 and headers["content-type"] == "application/json" and "x-request-id" in headers
    assert body == b'{"path":"/items/org/model%20x","params":{"name":"org/model x"},"query":{"a":["1","2"]}}'


def test_paths_are_matched_percent_decoded(server: Server) -> None:
    status, _, body = exchange(server.port, request_bytes("GET", "/%68ello"))
    assert status == 200 and b'"path":"/%68ello"' in body  # the path as sent; routing decodes it
    status, _, body = exchange(server.port, request_bytes("GET", "/%69tems/org%2Fm%2520"))
    assert status == 200 and b'"params":{"name":"org/m%20"}' in body


def test_absolute_form_targets_are_accepted(server: Server) -> None:
    """RFC 9112 §3.2.2: a server must accept a target in absolute form, as sent to proxies."""
    status, _, body = exchange(server.port, request_bytes("GET", f"http://127.0.0.1:{server.port}/items/a%2Fb?x=1"))
    assert status == 200 and body == b'{"path":"/items/a%2Fb","params":{"name":"a/b"},"query":{"x":["1"]}}'
    assert exchange(server.port, request_bytes("GET", "http://example.com"))[0] == 404  # path "/"


@pytest.mark.parametrize("raw", [b"GARBAGE\r\n\r\n", b"GET /hello HTTP/1.1\r\nno colon here\r\n\r\n",
                                 b"GET /hello HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
                                 b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n"])
def test_malformed_requests_get_400_and_a_close(server: Server, raw: bytes) -> None:
    with connect(server.port) as s:
        s.sendall(raw)
        out = read_until_closed(s)
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in out.lower()


def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("GET", "/hello?n=1") + request_bytes("POST", "/echo", b"second")
                  + request_bytes("GET", "/items/third"))
        answers = [read_response(s) for _ in range(3)]
    assert [a[0] for a in answers] == [200, 200, 200]
    assert b'"n":["1"]' in answers[0][2] and b'"text":"second"' in answers[1][2] and b'"name":"third"' in answers[2][2]


def test_slowloris_head_is_timed_out(server: Server) -> None:
    with connect(server.port) as s:
        start = time.monotonic()
        s.sendall(b"GET /hello HTTP/1.1\r\n")
        try:
            for i in range(30):  # a header line every 0.1 s: each byte resets no timer
                time.sleep(0.1)
                s.sendall(f"X-Drip-{i}: y\r\n".encode())
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = read_until_closed(s)
        elapsed = time.monotonic() - start
    assert out.startswith(b"HTTP/1.1 408 ") and elapsed < 2.5


def test_slow_body_is_timed_out(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("POST", "/echo", headers={"Content-Length": "100"}) + b"x" * 10)
        assert read_until_closed(s).startswith(b"HTTP/1.1 408 ")


def test_idle_keepalive_connection_is_closed(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("GET", "/hello"))
        assert read_response(s)[0] == 200
        start = time.monotonic()
        assert read_until_closed(s) == b"" and time.monotonic() - start < 2.0


def test_oversized_body_is_413_without_reading_it(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("POST", "/echo", headers={"Content-Length": str(100_000_000)}) + b"x" * 500)
        status, headers, body = read_response(s)
        assert status == 413 and headers["connection"] == "close" and b"100000000" in body
        assert read_until_closed(s) == b""  # and the connection is closed, the 100 MB never read


def test_oversized_chunked_body_is_413(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("POST", "/echo", headers={"Transfer-Encoding": "chunked"}))
        try:
            for _ in range(20):
                s.sendall(b"200\r\n" + b"y" * 0x200 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, _ = read_response(s)
    assert status == 413


def test_chunked_body_within_limit_is_read(server: Server) -> None:
    status, _, body = exchange(server.port, request_bytes("POST", "/echo", headers={"Transfer-Encoding": "chunked"})
                               + b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert status == 200 and body == b'{"length":11,"text":"hello world"}'


def test_content_length_with_transfer_encoding_is_400_and_a_close(server: Server) -> None:
    """RFC 9112 §6.1: the two framings disagree (a proxy may have read the body by the other), so
    nothing after this request on the connection can be trusted."""
    smuggled = request_bytes("GET", "/hello?smuggled=1")
    with connect(server.port) as s:
        s.sendall(request_bytes("POST", "/echo", headers={"Content-Length": "5", "Transfer-Encoding": "chunked"})
                  + b"5\r\nhello\r\n0\r\n\r\n" + smuggled)
        status, headers, body = read_response(s)
        assert status == 400 and headers["connection"] == "close" and b"Content-Length" in body
        assert read_until_closed(s) == b""  # the pipelined request is never answered


def test_headers_too_large_is_431(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 4096 + b"\r\n\r\n")
        assert read_until_closed(s).startswith(b"HTTP/1.1 431 ")


def test_expect_100_continue(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("POST", "/echo", headers={"Content-Length": "2", "Expect": "100-continue"}))
        assert s.recv(1000).startswith(b"HTTP/1.1 100 ")
        s.sendall(b"ok")
        assert read_response(s)[2] == b'{"length":2,"text":"ok"}'


def test_methods_head_options_and_405(server: Server) -> None:
    status, headers, body = exchange(server.port, request_bytes("DELETE", "/hello"))
    assert status == 405 and headers["allow"] == "GET, HEAD"
    with connect(server.port) as s:
        s.sendall(request_bytes("HEAD", "/hello"))
        out = read_until_closed(s, limit=0.8)
    head, _, rest = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: " in head and rest == b""
    status, headers, _ = exchange(server.port, request_bytes("OPTIONS", "/echo"))
    assert status == 204 and headers["allow"] == "POST, OPTIONS"
    assert exchange(server.port, request_bytes("GET", "/nope"))[0] == 404


def test_cors(server: Server) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = exchange(server.port, request_bytes("OPTIONS", "/echo", headers=preflight))
    assert status == 204 and headers["access-control-allow-origin"] == "https://app.example"
    assert headers["access-control-allow-methods"] == "POST" and "authorization" in headers["access-control-allow-headers"]
    assert "access-control-expose-headers" not in headers  # the preflight's headers only, once
    status, headers, body = exchange(server.port, request_bytes("OPTIONS", "/echo", headers={**preflight, "Origin": "https://evil"}))
    assert status == 403 and headers["vary"] == "Origin" and b"'https://evil' is not allowed" in body
    assert "access-control-allow-origin" not in headers
    _, headers, _ = exchange(server.port, request_bytes("GET", "/hello", headers={"Origin": "https://app.example"}))
    assert headers["access-control-allow-origin"] == "https://app.example"
    _, headers, _ = exchange(server.port, request_bytes("GET", "/hello", headers={"Origin": "https://evil"}))
    assert "access-control-allow-origin" not in headers


def test_handler_bug_is_500_and_the_connection_survives(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("GET", "/broken") + request_bytes("GET", "/hello"))
        assert read_response(s)[0] == 500 and read_response(s)[0] == 200


def test_http10_gets_an_answer_and_a_close(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(b"GET /hello HTTP/1.0\r\n\r\n")
        out = read_until_closed(s)
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b'"query":{}}')


def test_silent_stream_gets_keepalive_pings(server: Server) -> None:
    with connect(server.port) as s:
        s.sendall(request_bytes("POST", "/quiet", headers={"Content-Length": "0"}))
        out = read_until_closed(s, limit=1.0)
    assert b"transfer-encoding: chunked" in out.lower() and out.count(b": ping\n\n") >= 2
    assert out.index(b": ping") < out.index(b'data: {"done":true}') and out.endswith(b"0\r\n\r\n")


def test_connection_limit_holds_extra_clients_in_the_backlog() -> None:
    with serving(Limits(max_connections=2, idle_timeout=5)) as server:
        a, b = connect(server.port), connect(server.port)
        for s in (a, b):
            s.sendall(request_bytes("GET", "/hello"))
            assert read_response(s)[0] == 200
        with connect(server.port) as c:
            c.sendall(request_bytes("GET", "/hello"))
            c.settimeout(0.3)
            with pytest.raises(socket.timeout):
                c.recv(100)  # not accepted while two connections are open
            a.close()
            c.settimeout(5)
            assert read_response(c)[0] == 200
        b.close()


def test_graceful_shutdown_finishes_in_flight_requests() -> None:
    with serving() as server:
        idle = connect(server.port)
        busy = connect(server.port)
        busy.sendall(request_bytes("GET", "/slow"))
        time.sleep(0.1)
        stopper = threading.Thread(target=server.portal.call, args=(server.http.shutdown,))
        stopper.start()
        status, headers, body = read_response(busy)
        assert status == 200 and headers["connection"] == "close" and body == b'{"slow":true}'
        assert read_until_closed(idle) == b""  # the idle connection was closed
        stopper.join()
        time.sleep(0.2)
        with pytest.raises(OSError):
            connect(server.port, timeout=0.5).sendall(request_bytes("GET", "/hello") * 100)
