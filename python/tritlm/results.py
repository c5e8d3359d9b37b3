"""What generation returns: plain dataclasses, so the API and the server share one shape and
nothing here knows about HTTP."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length"]


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class TokenLogprob:
    token: str
    token_id: int
    logprob: float
    bytes: list[int]
    top: list[tuple[str, int, float]] = field(default_factory=list)  # (token, id, logprob)


@dataclass
class Timings:
    time_to_first_token_s: float
    prompt_tokens_per_s: float
    generation_tokens_per_s: float
    total_s: float


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Delta:
    """One piece of a stream: new text (possibly empty), its tokens, and on the last piece the
    finish reason and the whole Completion."""

    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    completion: Completion | None = None
