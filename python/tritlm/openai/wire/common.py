"""Shapes shared by several endpoints: the request base (unknown fields ignored, types strict),
sampling parameters, usage, logprobs, and the error envelope."""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from ...errors import RequestError


_Request = TypeVar("_Request", bound="RequestModel")


class RequestModel(BaseModel):
    """A request body: fields OpenAI defines but this server does not know are ignored (as vLLM
    does, so newer clients keep working); known fields are type-checked strictly (a number sent
    as a string is an error, as with OpenAI); ``null`` for an optional field means its default."""

    model_config = ConfigDict(extra="ignore", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        """OpenAI takes null for every optional field (clients send ``"stream": null`` for
        unset), so it is dropped here, before the field's own type (often a plain bool) sees it;
        a required field keeps its null and is refused."""
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {k: v for k, v in data.items() if v is not None or (k in fields and fields[k].is_required())}

    @classmethod
    def parse(cls: type[_Request], body: bytes) -> _Request:
        """The validated request, or RequestError naming an offending field."""
        if not body.strip():
            raise RequestError("the request body is empty; expected a JSON object", code="invalid_json")
        try:
            return cls.model_validate_json(body)
        except ValidationError as e:
            raise _request_error(e) from None


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none", "bytes"}


def _param(loc: tuple[int | str, ...]) -> str:
    """pydantic's location as a field path (``messages[0].content``), without the union tags
    pydantic inserts (``str``, ``list[str]``, model names)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or "[" in part or "-" in part or part[:1].isupper():
            continue
        else:
            out += f".{part}" if out else part
    return out


def refused(reasons: dict[str, str]) -> BeforeValidator:
    """For a field whose values OpenAI defines but this server cannot honour: those values are
    refused with the reason (``reasons[value]``), where the field's type alone would only say
    that the value is not one of those it takes."""
    def check(value: Any) -> Any:
        if isinstance(value, str) and value in reasons:
            raise PydanticCustomError("unsupported_value", reasons[value])
        return value

    return BeforeValidator(check)


MEDIA_PARTS = refused({kind: f"{what} inputs are not supported (this server's models read text only)"
                       for kind, what in (("image_url", "image"), ("input_image", "image"), ("input_audio", "audio"),
                                          ("file", "file"), ("input_file", "file"))})
"""On a content part's ``type``: the parts a text-only model cannot read."""


def _request_error(e: ValidationError) -> RequestError:
    # A union reports every member's failure, the plainest first: message content sent as a list
    # of parts fails as "not a string" before the part that is wrong. The deepest error is in the
    # member the client meant.
    err = max(e.errors(include_url=False), key=lambda error: len(error["loc"]))
    kind = err["type"]
    if kind == "json_invalid":
        return RequestError(f"the request body is not valid JSON: {err['msg']}", code="invalid_json")
    if kind == "model_type" and not err["loc"]:
        return RequestError("the request body must be a JSON object", code="invalid_json")
    param = _param(tuple(err["loc"]))
    if kind == "missing":
        return RequestError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") or kind == "literal_error" else "invalid_value"
    return RequestError(f"Invalid value for '{param}': {err['msg']}.", param=param, code=code)


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(RequestModel):
    """The sampling parameters every generating endpoint takes (OpenAI's, plus the common
    extensions llama.cpp and vLLM accept: top_k, min_p, repetition_penalty, ignore_eos).

    The bounds are the engine sampler's own (tritlm._core.Sampler: C ints and floats), or
    OpenAI's where narrower: the engine checks a request only when its generation starts, after
    a stream's first event, so a value it would refuse must be a 400 naming the field here."""

    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None  # 0: only the most likely token, as OpenAI (engine_kwargs)
    top_k: Annotated[int, Field(ge=-1, le=2**31 - 1)] | None = None  # 0 or -1: no top-k cut
    min_p: Probability | None = None
    seed: Annotated[int, Field(ge=-(2**63), le=2**63 - 1)] | None = None  # OpenAI's int64
    stop: str | list[str] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: Annotated[float, Field(ge=0.001, le=100.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    ignore_eos: bool = False
    n: Annotated[int, Field(ge=1, le=128)] = 1
    user: str | None = None


class PromptTokensDetails(BaseModel):
    cached_tokens: int


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails
    completion_tokens_details: CompletionTokensDetails = CompletionTokensDetails()

    @classmethod
    def of(cls, prompt: int, completion: int, cached: int) -> Usage:
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details=PromptTokensDetails(cached_tokens=cached))


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(BaseModel):
    error: ErrorBody
