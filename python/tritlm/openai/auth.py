"""API keys: ``Authorization: Bearer KEY`` (what the official clients send) or ``Api-Key KEY``,
compared in constant time. With no key configured every request passes (the clients insist on
sending some key, so any is accepted)."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from ..errors import AuthenticationError
from ..http import Handler, Request, Response, StreamingResponse

SCHEMES = ("bearer", "api-key")


def check_key(request: Request, keys: Sequence[str]) -> None:
    if not keys:
        return
    header = request.header("authorization")
    if header is None:
        raise AuthenticationError("You didn't provide an API key: send 'Authorization: Bearer YOUR_KEY'.")
    scheme, _, given = header.strip().partition(" ")
    if scheme.lower() not in SCHEMES:
        raise AuthenticationError(f"Unsupported authorization scheme {scheme!r}: use 'Bearer' or 'Api-Key'.")
    given_bytes = given.strip().encode()
    matched = False
    for key in keys:  # every key compared, so the time does not tell which one nearly matched
        matched |= hmac.compare_digest(given_bytes, key.encode())
    if not matched:
        raise AuthenticationError("Incorrect API key provided.")


def guarded(handler: Handler, keys: Sequence[str]) -> Handler:
    async def run(request: Request) -> Response | StreamingResponse:
        check_key(request, keys)
        return await handler(request)

    return run
