"""POST /v1/responses: request, the response object, and its stream events."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from .common import MEDIA_PARTS, RequestModel, SamplingFields, TokenLogprob, refused

Role = Literal["system", "developer", "user", "assistant"]
Status = Literal["in_progress", "completed", "incomplete"]
NO_TOOLS = refused({kind: f"'{kind}' items are not supported (this server does no tool calling)"
                    for kind in ("function_call", "function_call_output", "custom_tool_call",
                                 "custom_tool_call_output")})


class InputText(RequestModel):
    type: Annotated[Literal["input_text", "output_text", "text"], MEDIA_PARTS]
    text: str


class InputMessage(RequestModel):
    type: Annotated[Literal["message"], NO_TOOLS] = "message"
    role: Role
    content: str | list[InputText]

    def plain(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class TextFormat(RequestModel):
    type: str


class TextConfig(RequestModel):
    format: TextFormat | None = None


class ResponsesRequest(SamplingFields):
    model: str
    input: str | list[InputMessage] | None = None
    messages: list[InputMessage] | None = None  # accepted in place of input, as chat clients send
    instructions: str | None = None
    max_output_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    include: list[str] | None = None
    metadata: dict[str, str] | None = None
    text: TextConfig | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    previous_response_id: str | None = None
    conversation: Any = None
    background: bool = False

    def unsupported(self) -> list[tuple[str, bool]]:
        fmt = self.text.format if self.text is not None else None
        return [
            ("tools", bool(self.tools)),
            ("tool_choice", self.tool_choice not in (None, "none", "auto")),
            ("previous_response_id", self.previous_response_id is not None),  # responses are not stored
            ("conversation", self.conversation is not None),
            ("background", self.background),
            ("text.format", fmt is not None and fmt.type != "text"),
            ("n", self.n != 1),
        ]

    def chat_messages(self) -> list[dict[str, str]]:
        items = self.input if self.input is not None else self.messages
        if items is None:
            return []
        messages = [{"role": "user", "content": items}] if isinstance(items, str) else [m.plain() for m in items]
        if self.instructions:
            messages.insert(0, {"role": "system", "content": self.instructions})
        return messages

    @property
    def wants_logprobs(self) -> bool:
        return self.top_logprobs is not None or "message.output_text.logprobs" in (self.include or [])


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []
    logprobs: list[TokenLogprob] = []


class OutputMessage(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Status
    content: list[OutputText]


class InputTokensDetails(BaseModel):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails = OutputTokensDetails()
    total_tokens: int


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"]


class FormatText(BaseModel):
    type: Literal["text"] = "text"


class ResponseText(BaseModel):
    format: FormatText = FormatText()


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Status
    model: str
    output: list[OutputMessage]
    error: None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = {}
    parallel_tool_calls: bool = False
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: int | None = None
    tool_choice: Literal["auto"] = "auto"
    tools: list[Any] = []
    text: ResponseText = ResponseText()
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None


class ResponseLifecycleEvent(BaseModel):
    type: Literal["response.created", "response.in_progress", "response.completed", "response.incomplete"]
    sequence_number: int
    response: ResponseObject


class OutputItemEvent(BaseModel):
    type: Literal["response.output_item.added", "response.output_item.done"]
    sequence_number: int
    output_index: int
    item: OutputMessage


class ContentPartEvent(BaseModel):
    type: Literal["response.content_part.added", "response.content_part.done"]
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    part: OutputText


class TextDeltaEvent(BaseModel):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[TokenLogprob]


class TextDoneEvent(BaseModel):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    sequence_number: int
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[TokenLogprob]


class ErrorEvent(BaseModel):
    type: Literal["error"] = "error"
    sequence_number: int
    code: str | None
    message: str
    param: str | None
