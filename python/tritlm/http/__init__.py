"""An HTTP/1.1 server on h11 and anyio: connections, limits, timeouts, streaming, server-sent
events, routing and CORS. It knows nothing of models or of OpenAI's API; an application hands it
a routing table and a function that turns exceptions into responses."""

from .cors import CORSPolicy
from .limits import Limits
from .messages import Handler, Request, Response, StreamingResponse
from .routing import Route, Router
from .server import HTTPServer
from .sse import EventSender, sse_response

__all__ = [
    "CORSPolicy",
    "EventSender",
    "HTTPServer",
    "Handler",
    "Limits",
    "Request",
    "Response",
    "Route",
    "Router",
    "StreamingResponse",
    "sse_response",
]
