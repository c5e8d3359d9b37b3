"""The server's parts alone: the admission queue, the energy meter on a fake powercap tree, SSE
framing, routing, and the error mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import anyio
import pytest

from tritlm.errors import (
    AuthenticationError,
    ContextOverflowError,
    ModelNotReadyError,
    NotFoundError,
    ProtocolError,
    QueueFullError,
    RequestError,
)
from tritlm.http import Route, Router
from tritlm.http.sse import encode_event
from tritlm.openai import AdmissionQueue, classify
from tritlm.openai.generation import choice_seeds
from tritlm.openai.wire.chat import ChatCompletionRequest
from tritlm.openai.wire.common import RequestModel
from tritlm.openai.wire.completions import CompletionRequest
from tritlm.openai.wire.embeddings import EmbeddingRequest
from tritlm.openai.wire.responses import ResponsesRequest
from tritlm.openai.wire.tokens import DetokenizeRequest, TokenizeRequest
from tritlm.serve.energy import EnergyMeter


def test_admission_is_fifo_bounded_and_cancellable() -> None:
    async def main() -> None:
        q = AdmissionQueue(max_running=2, max_waiting=2)
        order: list[str] = []
        a, b = q.enter(), q.enter()
        assert (q.running, q.waiting) == (2, 0)
        c, d = q.enter(), q.enter()
        assert (q.running, q.waiting) == (2, 2)
        with pytest.raises(QueueFullError) as e:
            q.enter()
        assert e.value.retry_after >= 1

        async def use(name: str, ticket) -> None:  # type: ignore[no-untyped-def]
            async with ticket:
                order.append(name)
                await anyio.sleep(0.01)

        async with anyio.create_task_group() as tg:
            with anyio.CancelScope() as gone:  # a waiting client that leaves frees its place
                gone.cancel()
                await use("c", c)
            assert q.waiting == 1
            tg.start_soon(use, "d", d)
            await anyio.sleep(0.001)
            assert order == []  # d waits: both slots are taken
            tg.start_soon(use, "a", a)
            tg.start_soon(use, "b", b)
        assert order == ["a", "b", "d"] and (q.running, q.waiting) == (0, 0)
        heavy = q.enter(weight=5)  # capped to the slots, so it runs alone rather than never
        assert heavy.weight == 2 and q.running == 1
        heavy.release()
        heavy.release()  # idempotent
        assert q.running == 0

    anyio.run(main)


def _zone(root: Path, name: str, energy: int, max_range: int = 1_000_000) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "energy_uj").write_text(f"{energy}\n")
    (z / "max_energy_range_uj").write_text(f"{max_range}\n")
    return z


def test_energy_from_rapl_counters_with_wraparound(tmp_path: Path) -> None:
    pkg = _zone(tmp_path, "intel-rapl:0", 900_000)
    _zone(tmp_path, "intel-rapl:0:0", 5)  # a sub-zone: counted in its package already
    meter = EnergyMeter(tmp_path)
    meter.prompt_tokens, meter.generated_tokens = 10, 40
    (pkg / "energy_uj").write_text("400000\n")  # wrapped: 100000 to the top, then 400000
    report = meter.report()
    assert report["energy_measurable"] and report["joules"] == pytest.approx(0.5)
    assert report["joules_per_generated_token"] == pytest.approx(0.5 / 40)
    assert report["joules_per_token"] == pytest.approx(0.5 / 50)
    assert "intel-rapl:0" in report["energy_source"] and "intel-rapl:0:0" not in report["energy_source"]


def test_energy_without_counters_says_so(tmp_path: Path) -> None:
    report = EnergyMeter(tmp_path / "nothing").report()
    assert report["energy_measurable"] is False and "joules" not in report and "not measurable" in report["energy_note"]
    assert report["cpu_seconds"] >= 0 and report["cpu_seconds_per_token"] is None


def test_sse_framing() -> None:
    assert encode_event('{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event("line1\nline2", event="response.created") == b"event: response.created\ndata: line1\ndata: line2\n\n"


def test_routing() -> None:
    async def h(request):  # type: ignore[no-untyped-def]
        return None

    r = Router([Route("GET", "/v1/models/{model:path}", h), Route("POST", "/v1/x/{id}", h), Route("GET", "/v1/list", h)])
    assert r.match("GET", "/v1/models/org/m%2F1")[1] == {"model": "org/m/1"}
    assert r.match("HEAD", "/v1/models/a")[0].pattern == "/v1/models/{model:path}"
    with pytest.raises(NotFoundError):
        r.match("POST", "/v1/x/a/b")
    # matched percent-decoded, segment by segment: an encoded "/" stays inside its segment, and
    # what is decoded is decoded once
    assert r.match("GET", "/v1/%6Dodels/%6Frg/m")[1] == {"model": "org/m"}
    assert r.match("POST", "/%76%31/x/a%2Fb")[1] == {"id": "a/b"}
    assert r.match("GET", "/v1/models/100%25%252F")[1] == {"model": "100%%2F"}
    assert r.allowed_methods("/v1/%78/a") == ["POST"]
    with pytest.raises(NotFoundError):
        r.match("GET", "/v1%2Fmodels/a")  # one segment "v1/models", not two
    assert r.match("POST", "/v1/x/a%0A")[1] == {"id": "a\n"}
    with pytest.raises(NotFoundError):
        r.match("GET", "/v1/list%0A")  # a decoded newline is not the end of the path
    with pytest.raises(ProtocolError) as e:
        r.match("GET", "/v1/x/a")
    assert e.value.status == 405 and e.value.headers == [("allow", "POST")]


@pytest.mark.parametrize("error,status,code", [
    (RequestError("bad", param="n"), 400, "invalid_value"),
    (ContextOverflowError("long"), 400, "context_length_exceeded"),
    (ValueError("max_tokens must be at least 1"), 400, "invalid_value"),
    (AuthenticationError("no key"), 401, "invalid_api_key"),
    (NotFoundError("none", code="model_not_found"), 404, "model_not_found"),
    (ProtocolError(413, "big"), 413, "request_too_large"),
    (ProtocolError(501, "Transfer-Encoding: gzip"), 501, "not_implemented"),
    (QueueFullError("busy", retry_after=3), 429, "rate_limit_exceeded"),
    (ModelNotReadyError("loading"), 503, "model_not_ready"),
    (RuntimeError("native fault"), 500, "internal_error"),
])
def test_every_error_class_has_one_status(error: BaseException, status: int, code: str) -> None:
    got_status, body, headers = classify(error)
    assert (got_status, body.code) == (status, code)
    if status == 429:
        assert headers == [("retry-after", "3")]


def test_choice_seeds() -> None:
    assert choice_seeds(None, 2) == [None, None]
    seeds = choice_seeds(42, 4)
    assert seeds[0] == 42 and len(set(seeds)) == 4 and choice_seeds(42, 4) == seeds


REQUIRED = {"model": "m", "messages": [{"role": "user", "content": "x"}], "prompt": "x", "input": "x", "tokens": [1],
            "role": "user", "content": "x", "type": "text", "text": "x"}


def _request_models(annotation: Any) -> set[type[RequestModel]]:
    """Every request model in a type: ``cls`` and what its fields hold (messages, parts, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, RequestModel):
        return {annotation, *(m for f in annotation.model_fields.values() for m in _request_models(f.annotation))}
    return {m for arg in get_args(annotation) for m in _request_models(arg)}


@pytest.mark.parametrize("cls", [ChatCompletionRequest, CompletionRequest, EmbeddingRequest, ResponsesRequest,
                                 TokenizeRequest, DetokenizeRequest])
def test_null_means_the_default_for_every_optional_field(cls: type[RequestModel]) -> None:
    models = _request_models(cls)
    assert cls is not ChatCompletionRequest or len(models) >= 4  # messages, their parts, stream_options
    for model in models:
        required = {k: REQUIRED[k] for k, f in model.model_fields.items() if f.is_required()}
        optional = [k for k, f in model.model_fields.items() if not f.is_required()]
        parsed = model.parse(json.dumps({**required, **dict.fromkeys(optional)}).encode())
        assert parsed == model.parse(json.dumps(required).encode()), model
    with pytest.raises(RequestError) as e:
        cls.parse(json.dumps({**{k: REQUIRED[k] for k, f in cls.model_fields.items() if f.is_required()},
                              "model": None}).encode())
    assert e.value.param == "model" and e.value.code == "invalid_type"  # a required field's null is still refused
