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


class QueueFullError(TritlmError):
    """Every sequence slot is busy and the wait queue is at its bound; try again after
    ``retry_after`` seconds (the server answers 429 with Retry-After)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineClosedError(TritlmError):
    """The model was closed: no new requests, and requests still running end with this."""
