"""POST /v1/chat/completions: request, response and stream chunk."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from .common import MEDIA_PARTS, RequestModel, SamplingFields, TokenLogprob, Usage, refused

NO_TOOLS = refused({role: f"'{role}' messages are not supported (this server does no tool calling)"
                    for role in ("tool", "function")})


class TextPart(RequestModel):
    type: Annotated[Literal["text"], MEDIA_PARTS]
    text: str


class ChatMessage(RequestModel):
    role: Annotated[Literal["system", "developer", "user", "assistant"], NO_TOOLS]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def plain(self) -> dict[str, Any]:
        """The message as the chat template takes it."""
        return self.model_dump(exclude_none=True)


class StreamOptions(RequestModel):
    include_usage: bool = False


class ResponseFormat(RequestModel):
    type: str


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # Real OpenAI fields this server cannot honour; a request that sets them is refused.
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: ResponseFormat | None = None
    audio: Any = None
    modalities: list[str] | None = None
    prediction: Any = None

    def unsupported(self) -> list[tuple[str, bool]]:
        """(field, set to something that would change the result) for each refused field."""
        return [
            ("tools", bool(self.tools)),
            ("functions", bool(self.functions)),
            ("tool_choice", self.tool_choice not in (None, "none", "auto")),
            ("function_call", self.function_call not in (None, "none", "auto")),
            ("response_format", self.response_format is not None and self.response_format.type != "text"),
            ("audio", self.audio is not None),
            ("modalities", any(m != "text" for m in self.modalities or [])),
            ("prediction", self.prediction is not None),
        ]

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: str | None = None
    annotations: list[Any] = []


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: Literal["stop", "length"]


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str


class ChunkDelta(BaseModel):
    """Only what this piece carries: the role in the first, content after, nothing in the last."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
