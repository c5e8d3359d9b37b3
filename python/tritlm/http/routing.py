"""The routing table: method and path pattern to handler.

Patterns are literal segments and ``{name}`` (one segment) or ``{name:path}`` (the rest of the
path, slashes included: model ids like ``org/model`` appear in URLs unescaped). HEAD is answered
by a GET route, as HTTP requires.

Paths are matched percent-decoded (``/v1/%6Dodels`` is ``/v1/models``, as RFC 3986 makes them
equivalent), segment by segment: an encoded slash is part of its segment, not a separator, and
reaches a parameter as "/" (``/v1/models/org%2Fm`` names the model ``org/m``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from ..errors import NotFoundError, ProtocolError
from .messages import Handler

_PARAM = re.compile(r"\{(\w+)(?::path)?\}")


def _decoded(path: str) -> str:
    """``path`` with each segment percent-decoded, except for the two characters whose decoding
    would change what the path says: "/" (it would split the segment) and "%" (it would be
    decoded again with the parameters)."""
    return "/".join(unquote(segment).replace("%", "%25").replace("/", "%2F") for segment in path.split("/"))


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str
    handler: Handler

    @property
    def regex(self) -> re.Pattern[str]:
        out, pos = "", 0
        for m in _PARAM.finditer(self.pattern):
            out += re.escape(self.pattern[pos : m.start()])
            out += f"(?P<{m.group(1)}>.+)" if m.group(0).endswith(":path}") else f"(?P<{m.group(1)}>[^/]+)"
            pos = m.end()
        return re.compile(out + re.escape(self.pattern[pos:]), re.DOTALL)  # decoded paths may hold any character


class Router:
    def __init__(self, routes: list[Route] | None = None) -> None:
        self._routes: list[tuple[Route, re.Pattern[str]]] = []
        for route in routes or []:
            self.add(route)

    def add(self, route: Route) -> None:
        self._routes.append((route, route.regex))

    @property
    def routes(self) -> list[Route]:
        return [r for r, _ in self._routes]

    def allowed_methods(self, path: str) -> list[str]:
        decoded = _decoded(path)
        methods = {r.method for r, rx in self._routes if rx.fullmatch(decoded)}
        if "GET" in methods:
            methods.add("HEAD")
        return sorted(methods)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and ``path`` with its decoded parameters; NotFoundError when
        no pattern matches the path, ProtocolError 405 (with Allow) when none takes the method."""
        wanted = "GET" if method == "HEAD" else method
        decoded = _decoded(path)
        path_matched = False
        for route, rx in self._routes:
            m = rx.fullmatch(decoded)
            if m is None:
                continue
            path_matched = True
            if route.method == wanted:
                return route, {k: unquote(v) for k, v in m.groupdict().items()}
        if path_matched:
            allowed = self.allowed_methods(path)
            raise ProtocolError(
                405, f"method {method} is not allowed on {path}; allowed: {', '.join(allowed)}",
                headers=[("allow", ", ".join(allowed))],
            )
        raise NotFoundError(f"no route for {path}; routes: {', '.join(sorted({r.pattern for r, _ in self._routes}))}")
