"""Admission to a model: a bounded number of generations run, a bounded FIFO queue waits, and
anything beyond is refused at once with an estimate of when to retry.

The queue is the server's, not the engine's: a waiting request can be cancelled (its client left)
and counted (/metrics), and the order is first come, first served. A request asks for a weight (n
choices are n sequences), capped at the number of running slots so a large n still runs alone.
"""

from __future__ import annotations

import math
import time
from collections import deque

import anyio

from ..errors import QueueFullError

SMOOTHING = 0.2  # weight of the newest request in the moving average of service times


class Ticket:
    """A place in the queue; ``async with ticket`` waits for the turn and frees the slot after.
    ``release`` is idempotent, so a reservation that was never used can be dropped safely."""

    def __init__(self, queue: AdmissionQueue, weight: int) -> None:
        self._queue = queue
        self.weight = weight
        self.granted = anyio.Event()
        self.started = 0.0
        self._done = False

    async def __aenter__(self) -> Ticket:
        try:
            await self.granted.wait()
        except BaseException:
            self.release()
            raise
        self.started = time.monotonic()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._queue._leave(self)


class AdmissionQueue:
    def __init__(self, max_running: int, max_waiting: int) -> None:
        if max_running < 1 or max_waiting < 0:
            raise ValueError(f"max_running must be >= 1 and max_waiting >= 0, got {max_running}, {max_waiting}")
        self.max_running = max_running
        self.max_waiting = max_waiting
        self._running = 0  # weight of granted tickets
        self._granted = 0
        self._waiting: deque[Ticket] = deque()
        self._mean_service_s: float | None = None

    @property
    def running(self) -> int:
        """Requests holding a slot."""
        return self._granted

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def enter(self, weight: int = 1) -> Ticket:
        """Reserve a place, or raise QueueFullError (with Retry-After seconds) when none is left."""
        ticket = Ticket(self, max(1, min(weight, self.max_running)))
        if not self._waiting and self._running + ticket.weight <= self.max_running:
            self._grant(ticket)
        elif len(self._waiting) < self.max_waiting:
            self._waiting.append(ticket)
        else:
            raise QueueFullError(
                f"the server is busy: {self._granted} request(s) running and {len(self._waiting)} waiting "
                f"(limits {self.max_running} and {self.max_waiting}); retry later",
                retry_after=self.retry_after(),
            )
        return ticket

    def retry_after(self) -> int:
        """Seconds until a queue place is likely to free: the queue ahead, served at the mean rate."""
        mean = self._mean_service_s if self._mean_service_s is not None else 1.0
        return max(1, min(3600, math.ceil(mean * (len(self._waiting) + 1) / self.max_running)))

    def _grant(self, ticket: Ticket) -> None:
        self._running += ticket.weight
        self._granted += 1
        ticket.granted.set()

    def _leave(self, ticket: Ticket) -> None:
        if ticket.granted.is_set():
            self._running -= ticket.weight
            self._granted -= 1
            if ticket.started:
                took = time.monotonic() - ticket.started
                m = self._mean_service_s
                self._mean_service_s = took if m is None else (1 - SMOOTHING) * m + SMOOTHING * took
        else:
            self._waiting.remove(ticket)
        while self._waiting and self._running + self._waiting[0].weight <= self.max_running:
            self._grant(self._waiting.popleft())
