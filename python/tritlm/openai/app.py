"""The OpenAI-compatible routes: each path bound to its handler, behind the API key check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial

from ..http import Request, Response, Route, StreamingResponse
from . import chat, completions, embeddings, models, responses, tokens
from .auth import guarded
from .context import Context

Endpoint = Callable[[Context, Request], Awaitable[Response | StreamingResponse]]

ENDPOINTS: list[tuple[str, str, Endpoint]] = [
    ("POST", "/v1/chat/completions", chat.create),
    ("POST", "/v1/completions", completions.create),
    ("POST", "/v1/embeddings", embeddings.create),
    ("POST", "/v1/responses", responses.create),
    ("GET", "/v1/models", models.list_models),
    ("GET", "/v1/models/{model:path}", models.retrieve),
    ("POST", "/tokenize", tokens.tokenize),
    ("POST", "/detokenize", tokens.detokenize),
]


def openai_routes(ctx: Context, api_keys: Sequence[str] = ()) -> list[Route]:
    return [Route(method, path, guarded(partial(endpoint, ctx), api_keys)) for method, path, endpoint in ENDPOINTS]
