"""POST /v1/completions: request and response (a streamed chunk has the response's shape)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from .chat import StreamOptions
from .common import SamplingFields, Usage

TokenIds = list[Annotated[int, Field(ge=0)]]


class CompletionRequest(SamplingFields):
    model: str
    prompt: str | list[str] | TokenIds | list[TokenIds]
    max_tokens: Annotated[int, Field(ge=1)] | None = None  # unset: the model's default, else 16 as OpenAI
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None
    suffix: str | None = None

    def unsupported(self) -> list[tuple[str, bool]]:
        return [
            ("suffix", bool(self.suffix)),  # insertion needs a fill-in-the-middle model
            ("best_of", self.best_of is not None and self.best_of != self.n),  # ranking candidates
        ]

    def prompts(self) -> list[str | list[int]]:
        """The prompts, one per batch entry: a token list is one prompt, a list of them several."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            return []
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]  # all ints: one token list
        return list(p)  # type: ignore[arg-type]  # not all ints: strings or token lists


class CompletionLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


