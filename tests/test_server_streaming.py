"""Generation under real network behaviour: clients that disconnect mid-answer (streaming or not),
slow readers, many concurrent streams, keepalive pings while queued, and the event loop staying
responsive while the engine works."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import httpx
import openai
import pytest

from server_harness import MODEL_ID, Running, config_for, connect, running, tiny_model

LONG = 3500  # tokens: seconds of generation on the tiny model, so an early stop is unmistakable


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    config = replace(config_for(tiny_model(tmp_path_factory)), max_running=1, max_waiting=64, ping_interval=0.1)
    config = replace(config, limits=replace(config.limits, send_buffer_bytes=16384))
    with running(config) as s:
        yield s


def chat_body(max_tokens: int, stream: bool, seed: int = 0, content: str = "Tell me a story") -> bytes:
    return json.dumps({"model": MODEL_ID, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "stream": stream, "seed": seed, "ignore_eos": True}).encode()


def post(s: socket.socket, body: bytes) -> None:
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def generated(server: Running) -> float:
    return server.metric("tritlm_generation_tokens_total", model=MODEL_ID)


def running_now(server: Running) -> int:
    return server.call(lambda: server.served.admission.running)


def wait_until(predicate, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached"
        time.sleep(0.005)
    return time.monotonic() - start


def assert_generation_stopped(server: Running, before: float) -> None:
    """The slot frees at once, no token follows, and far fewer than LONG were made."""
    wait_until(lambda: running_now(server) == 0, timeout=2.0)
    stopped_at = generated(server)
    time.sleep(0.3)
    assert generated(server) == stopped_at
    assert 0 < stopped_at - before < LONG / 2


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_stops_generation_and_frees_the_slot(server: Running, stream: bool) -> None:
    before = generated(server)
    gone_before = server.metric("tritlm_requests_total", endpoint="/v1/chat/completions", method="POST", status="499")
    with connect(server.port) as s:
        post(s, chat_body(LONG, stream))
        wait_until(lambda: generated(server) - before >= 20)
        if stream:
            assert s.recv(4096).startswith(b"HTTP/1.1 200 OK")
    assert_generation_stopped(server, before)
    assert server.metric("tritlm_requests_total", endpoint="/v1/chat/completions", method="POST",
                         status="499") == gone_before + 1
    quick = httpx.post(f"{server.url}/v1/chat/completions", content=chat_body(3, False), timeout=5)
    assert quick.status_code == 200 and quick.json()["usage"]["completion_tokens"] == 3


def test_slow_reader_throttles_its_own_generation(server: Running) -> None:
    before = generated(server)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    with s:
        post(s, chat_body(LONG, True))
        time.sleep(0.5)  # not reading: the socket buffers fill and the server's send waits
        stalled = generated(server) - before
        assert running_now(server) == 1 and stalled < LONG
        time.sleep(0.3)
        assert generated(server) - before == stalled  # held where it is, not buffered in memory
        s.settimeout(5)
        while generated(server) - before < stalled + 200:  # reading again lets it go on
            assert s.recv(1 << 16)
    assert_generation_stopped(server, before)


def test_queued_stream_gets_pings_then_its_answer(server: Running) -> None:
    with connect(server.port) as first, connect(server.port) as second:
        before = generated(server)
        post(first, chat_body(LONG, True))
        wait_until(lambda: generated(server) - before >= 5)
        post(second, chat_body(4, True))
        second.settimeout(5)
        seen = b""
        while seen.count(b": ping") < 2:
            seen += second.recv(4096)
        assert b'"delta":{"content"' not in seen  # queued: no tokens yet
        first.close()
        while not seen.endswith(b"0\r\n\r\n"):
            seen += second.recv(4096)
        assert seen.count(b'"finish_reason":"length"') == 1 and b"data: [DONE]" in seen


def test_health_answers_while_the_engine_generates(server: Running) -> None:
    before = generated(server)
    with connect(server.port) as s:
        post(s, chat_body(LONG, False))
        wait_until(lambda: generated(server) - before >= 20)
        with httpx.Client(base_url=server.url) as c:
            for _ in range(10):
                assert c.get("/health").status_code == 200
        assert running_now(server) == 1 and generated(server) - before < LONG  # still generating meanwhile
    wait_until(lambda: running_now(server) == 0)


def test_32_concurrent_streams_each_get_their_own_tokens(server: Running) -> None:
    llm = server.served.llm
    prompts = [f"Story number {i}: the cat" for i in range(32)]
    expected = [llm.chat([{"role": "user", "content": p}], max_tokens=16, seed=i, ignore_eos=True).text
                for i, p in enumerate(prompts)]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, _strict_response_validation=True,
                           timeout=60)
    barrier = threading.Barrier(32)

    def one(i: int) -> str:
        barrier.wait()
        text = ""
        for chunk in client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": prompts[i]}],
                                                    max_tokens=16, seed=i, stream=True, extra_body={"ignore_eos": True}):
            text += "".join(c.delta.content or "" for c in chunk.choices)
        return text

    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(one, range(32)))
    assert got == expected
    assert len(set(got)) > 16  # distinct prompts and seeds: the answers really differ
