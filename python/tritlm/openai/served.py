"""What the endpoints need to know about a model they serve, and the catalog they find it in.
The catalog is filled by whoever runs the server (tritlm.serve); nothing here loads models."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from ..errors import ModelNotReadyError, RequestError
from .admission import AdmissionQueue

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..llm import LLM

Use = Literal["chat", "embedding"]
State = Literal["loading", "ready", "failed"]


@dataclass
class ServedModel:
    id: str
    admission: AdmissionQueue
    uses: tuple[Use, ...] = ("chat", "embedding")
    defaults: dict[str, Any] = field(default_factory=dict)  # sampling defaults for unset fields
    created: int = 0
    owned_by: str = "tritlm"
    llm: LLM | None = None  # once loaded
    state: State = "loading"
    error: str | None = None
    fingerprint: str = ""  # system_fingerprint: changes when the backend configuration does

    def ready_llm(self, use: Use) -> LLM:
        """The engine, if this model is loaded and registered for ``use``."""
        if use not in self.uses:
            raise RequestError(
                f"model {self.id!r} is registered for {' and '.join(self.uses)}, not {use}", param="model",
                code="model_not_supported",
            )
        if self.state == "loading":
            raise ModelNotReadyError(f"model {self.id!r} is still loading; retry shortly")
        if self.state == "failed":
            raise ModelNotReadyError(f"model {self.id!r} failed to load: {self.error}")
        if self.llm is None:  # "ready" without an engine: not loaded after all
            raise ModelNotReadyError(f"model {self.id!r} is not loaded")
        return self.llm


class Catalog(Protocol):
    def get(self, model_id: str) -> ServedModel:
        """The model called ``model_id``; NotFoundError listing the known ids otherwise."""
        ...

    def all(self) -> Sequence[ServedModel]: ...


class Observer(Protocol):
    """Where the endpoints report what metrics count (tritlm.serve implements it)."""

    def prompt_tokens(self, model: str, count: int) -> None: ...

    def first_token(self, model: str, seconds: float) -> None:
        """A sequence's first generated token, ``seconds`` after its request arrived."""
        ...

    def next_token(self, model: str, seconds: float) -> None:
        """Another generated token, ``seconds`` after the sequence's previous one."""
        ...


class NoObserver:
    def prompt_tokens(self, model: str, count: int) -> None:
        pass

    def first_token(self, model: str, seconds: float) -> None:
        pass

    def next_token(self, model: str, seconds: float) -> None:
        pass
