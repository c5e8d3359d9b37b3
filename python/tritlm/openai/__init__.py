"""OpenAI's HTTP API over tritlm's engine: wire models (``wire``), the endpoint handlers that turn
requests into engine calls and results into responses, admission, and the error mapping. Nothing
here touches a socket; ``tritlm.http`` serves the routes and ``tritlm.serve`` runs it all."""

from .admission import AdmissionQueue
from .app import openai_routes
from .context import Context
from .errors import classify, error_response
from .served import Catalog, NoObserver, Observer, ServedModel

__all__ = [
    "AdmissionQueue",
    "Catalog",
    "Context",
    "NoObserver",
    "Observer",
    "ServedModel",
    "classify",
    "error_response",
    "openai_routes",
]
