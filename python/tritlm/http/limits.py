"""Every bound the HTTP server puts on a client, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 8 * 1024 * 1024
    """Largest request body; a larger one is answered 413 without being read."""
    max_header_bytes: int = 64 * 1024
    """Largest request head (h11's max_incomplete_event_size); a larger one gets 431."""
    header_timeout: float = 10.0
    """Seconds from a request's first byte until its head is complete (slowloris)."""
    body_timeout: float = 60.0
    """Seconds to receive a whole request body once its head is in."""
    idle_timeout: float = 5.0
    """Seconds a kept-alive connection may sit between requests."""
    send_timeout: float = 60.0
    """Seconds one write may wait for a client that does not read; then the connection is cut."""
    max_connections: int = 256
    """Open connections; more wait in the listen backlog until one closes."""
    shutdown_timeout: float = 10.0
    """On shutdown, seconds in-flight requests get to finish before they are cancelled."""
    send_buffer_bytes: int | None = None
    """The kernel's send buffer per connection (SO_SNDBUF); None leaves it to autotuning (up to
    net.ipv4.tcp_wmem's maximum). It bounds what a client that stops reading costs the machine."""

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
