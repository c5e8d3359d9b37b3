"""POST /tokenize and /detokenize (the llama.cpp / vLLM extension endpoints)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from .chat import ChatMessage
from .common import RequestModel


class TokenizeRequest(RequestModel):
    """Either ``prompt`` (text) or ``messages`` (rendered with the model's chat template)."""

    model: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    with_pieces: bool = False


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int
    pieces: list[str] | None = None


class DetokenizeRequest(RequestModel):
    model: str
    tokens: list[Annotated[int, Field(ge=0)]]


class DetokenizeResponse(BaseModel):
    prompt: str
