"""What every endpoint handler is given: the model catalog, the metrics observer, and the
streaming keepalive interval; plus the small steps every handler takes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..errors import ClientDisconnected, RequestError
from ..http import EventSender, Request, Response
from .errors import classify
from .served import Catalog, NoObserver, Observer
from .wire.common import ErrorEnvelope

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..llm import LLM


@dataclass
class Context:
    catalog: Catalog
    observer: Observer = field(default_factory=NoObserver)
    ping_interval: float = 15.0


def reject_unsupported(checks: list[tuple[str, bool]]) -> None:
    for name, refused in checks:
        if refused:
            raise RequestError(f"Unsupported parameter: '{name}' is not supported by this server.",
                               param=name, code="unsupported_parameter")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def vocab_size(llm: LLM) -> int:
    return int(llm.info["config"]["vocab_size"])


def json_response(model: BaseModel, **dump: Any) -> Response:
    return Response.raw_json(model.model_dump_json(**dump).encode())


def note_usage(request: Request, prompt_tokens: int, completion_tokens: int) -> None:
    """Token counts for the access log line."""
    request.notes["prompt_tokens"] = prompt_tokens
    request.notes["completion_tokens"] = completion_tokens


async def stream_guarded(events: EventSender, body: Callable[[], Awaitable[None]],
                         on_error: Callable[[BaseException], Awaitable[None]] | None = None) -> None:
    """Run a stream's body; an error after the response started is sent as a last event (OpenAI's
    ``data: {"error": ...}``, which the official clients raise as APIError), since the status line
    is already gone. A client that left gets nothing."""
    try:
        await body()
    except ClientDisconnected:
        raise
    except Exception as e:
        if on_error is not None:
            await on_error(e)
        else:
            await events.send(ErrorEnvelope(error=classify(e)[1]).model_dump_json())
