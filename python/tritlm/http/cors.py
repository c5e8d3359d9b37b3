"""Cross-origin resource sharing: which browser origins may call the API, and the preflight."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProtocolError
from .messages import Request, Response


@dataclass(frozen=True)
class CORSPolicy:
    allow_origins: tuple[str, ...] = ()  # exact origins, or "*" for any
    max_age: int = 600

    def origin_allowed(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin in self.allow_origins

    def headers_for(self, request: Request) -> list[tuple[str, str]]:
        """Headers that let the browser read this response, if the request's origin may."""
        origin = request.header("origin")
        if origin is None or not self.origin_allowed(origin):
            return []
        return [("access-control-allow-origin", origin), ("vary", "Origin"),
                ("access-control-expose-headers", "Retry-After, X-Request-Id")]

    @staticmethod
    def is_preflight(request: Request) -> bool:
        return request.method == "OPTIONS" and request.header("access-control-request-method") is not None

    def preflight(self, request: Request, allowed_methods: list[str]) -> Response:
        """The answer to an OPTIONS preflight: 204 with what the browser may send, or
        ProtocolError 403, which the application renders in its own error shape like any other."""
        origin = request.header("origin") or ""
        if not self.origin_allowed(origin):
            raise ProtocolError(403, f"origin {origin!r} is not allowed to call this server", headers=[("vary", "Origin")])
        return Response(204, [
            ("access-control-allow-origin", origin),
            ("vary", "Origin"),
            ("access-control-allow-methods", ", ".join(allowed_methods)),
            ("access-control-allow-headers", request.header("access-control-request-headers") or ""),
            ("access-control-max-age", str(self.max_age)),
        ])
