"""tritlm's exceptions: one hierarchy, so callers can catch everything tritlm raises on purpose
with ``except tritlm.errors.TritlmError`` and the server can map each class to one HTTP status.

Argument errors in the kernel layer are plain ``ValueError`` / ``TypeError`` (raised by the native
core, naming the argument), as numpy users expect; classes here that describe bad values also
derive from ``ValueError`` for the same reason.
"""

from __future__ import annotations


class TritlmError(Exception):
    """Base class of every exception tritlm raises deliberately."""


class ConfigurationError(TritlmError, ValueError):
    """A setting (argument or environment variable) names something this machine cannot do."""


class ModelLoadError(TritlmError):
    """A model file or folder is missing, unreadable, corrupt, or describes an unsupported model.
    The message names the path and the problem."""


class ContextOverflowError(TritlmError, ValueError):
    """A prompt (or prompt plus requested tokens) does not fit the context window."""


class ChatTemplateError(TritlmError, ValueError):
    """A chat template cannot be compiled or rendered: a syntax error, a ``raise_exception`` call
    (the template rejecting the conversation), a sandbox violation, or a runtime error."""


class InvalidMessagesError(TritlmError, ValueError):
    """Chat messages are malformed: an unknown role, or content that is neither a string nor a
    list of text parts. The message names the offending message by index."""


class RequestError(TritlmError, ValueError):
    """A request is malformed or asks for something this server does not do: bad JSON, a wrong
    type, an out-of-range value, an unsupported field. ``param`` names the offending field."""

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class AuthenticationError(TritlmError):
    """A request carries no API key, or a wrong one."""


class NotFoundError(TritlmError, LookupError):
    """A request names a route or a model that does not exist; the message lists what does."""

    def __init__(self, message: str, *, code: str = "not_found") -> None:
        super().__init__(message)
        self.code = code


class ProtocolError(TritlmError):
    """An HTTP exchange broke the protocol or a server limit (malformed request, wrong method,
    slow or oversized request). It carries the HTTP status the protocol prescribes, and headers
    the answer needs (``Allow`` for 405)."""

    def __init__(self, status: int, message: str, *, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class QueueFullError(TritlmError):
    """Every generation slot is busy and the wait queue is full; ``retry_after`` is the estimated
    number of seconds until a place frees up."""

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosedError(TritlmError):
    """The model was closed: no new requests, and requests still running end with this."""


class ModelNotReadyError(TritlmError):
    """A model is still loading, or failed to load and cannot serve."""


class ClientDisconnected(TritlmError):
    """The HTTP client closed its connection or stopped reading: nothing more can reach it, and
    whatever works for it (a generation) should stop."""


class GenerationError(TritlmError):
    """The engine failed on one request (its tokens could not be evaluated, or a step of its
    generation raised): that request ends with this error, the others and the engine go on.
    The original exception is chained as ``__cause__``."""


class InvalidArgumentError(RequestError, TypeError):
    """An argument of the Python API has the wrong type or an out-of-range value; the message and
    ``param`` name it. Both a ValueError and a TypeError, so code written for either convention
    catches it, and a RequestError, so the server answers 400 naming the field."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message, param=param)
