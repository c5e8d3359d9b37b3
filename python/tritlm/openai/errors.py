"""The one mapping from tritlm's exceptions to HTTP statuses and OpenAI's error envelope
``{"error": {"message", "type", "param", "code"}}``.

A client's mistake is never a 5xx: the official clients retry 5xx (and 408, 409, 429), so a
malformed request answered 500 would be sent three times. The one exception is HTTP's own: a
transfer coding the server does not implement is 501 (RFC 9112 §6.1), said by the HTTP layer.
"""

from __future__ import annotations

import logging

from ..errors import (
    AuthenticationError,
    ChatTemplateError,
    ContextOverflowError,
    InvalidMessagesError,
    ModelNotReadyError,
    NotFoundError,
    ProtocolError,
    QueueFullError,
    RequestError,
)
from ..http import Response
from .wire.common import ErrorBody, ErrorEnvelope

log = logging.getLogger("tritlm.openai")

PROTOCOL_CODES = {
    400: "invalid_request",
    403: "origin_not_allowed",  # CORS: the browser's origin is not among --cors-origin
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    431: "request_header_fields_too_large",
    501: "not_implemented",
    505: "http_version_not_supported",
}


def classify(error: BaseException) -> tuple[int, ErrorBody, list[tuple[str, str]]]:
    """(status, envelope body, extra headers) for any exception a handler raised."""
    def body(kind: str, code: str | None, param: str | None = None, message: str | None = None) -> ErrorBody:
        return ErrorBody(message=message or str(error), type=kind, param=param, code=code)

    if isinstance(error, RequestError):
        return 400, body("invalid_request_error", error.code, error.param), []
    if isinstance(error, ContextOverflowError):  # the endpoints check first, naming their field; the engine cannot
        return 400, body("invalid_request_error", "context_length_exceeded"), []
    if isinstance(error, (InvalidMessagesError, ChatTemplateError)):
        return 400, body("invalid_request_error", "invalid_value", "messages"), []
    if isinstance(error, AuthenticationError):
        return 401, body("invalid_request_error", "invalid_api_key"), []
    if isinstance(error, NotFoundError):
        return 404, body("invalid_request_error", error.code), []
    if isinstance(error, ProtocolError):
        return error.status, body("invalid_request_error", PROTOCOL_CODES.get(error.status, "invalid_request")), error.headers
    if isinstance(error, QueueFullError):
        return 429, body("requests", "rate_limit_exceeded"), [("retry-after", str(error.retry_after))]
    if isinstance(error, ModelNotReadyError):
        return 503, body("server_error", "model_not_ready"), []
    if isinstance(error, (ValueError, TypeError)):  # the engine's argument checks name the argument
        return 400, body("invalid_request_error", "invalid_value"), []
    log.error("internal error", exc_info=error)
    return 500, body("server_error", "internal_error", message=f"internal error: {type(error).__name__}: {error}"), []


def error_response(error: BaseException) -> Response:
    status, err, headers = classify(error)
    return Response.raw_json(ErrorEnvelope(error=err).model_dump_json().encode(), status, headers)
