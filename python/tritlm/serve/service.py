"""The running server: models, metrics, energy and both route sets on one HTTP server, with the
access log, background model loading, and graceful shutdown."""

from __future__ import annotations

import logging

import anyio
import anyio.to_thread
from anyio.abc import TaskStatus

from ..http import CORSPolicy, HTTPServer, Request, Router
from ..openai import Context, error_response, openai_routes
from .config import ServeConfig
from .energy import EnergyMeter
from .metrics import Metrics
from .ops import Operations
from .registry import Registry

access_log = logging.getLogger("tritlm.access")
log = logging.getLogger("tritlm.serve")

ENERGY_POLL_SECONDS = 60.0  # RAPL counters wrap after tens of minutes at full power
SPARE_THREADS = 16  # worker threads beyond the generation slots: tokenizing, templates, loading


class Service:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.models = Registry(config)
        self.energy = EnergyMeter()
        self.metrics = Metrics(self.models, self.energy)
        ops = Operations(self.models, self.metrics, self.energy)
        ctx = Context(self.models, self.metrics, config.ping_interval)
        router = Router([*openai_routes(ctx, config.api_keys), *ops.routes(config.api_keys)])
        self.http = HTTPServer(
            router, limits=config.limits, error_response=error_response, on_response=self._on_response,
            cors=CORSPolicy(config.cors_origins) if config.cors_origins else None,
        )

    def _on_response(self, request: Request, status: int, seconds: float) -> None:
        self.metrics.response(request, status, seconds)
        tokens = ""
        if "prompt_tokens" in request.notes:
            tokens = f" tokens={request.notes['prompt_tokens']}+{request.notes['completion_tokens']}"
        access_log.info('%s "%s %s HTTP/%s" %d%s %.1fms', request.client, request.method, request.target,
                        request.http_version, status, tokens, seconds * 1000)

    @property
    def port(self) -> int | None:
        return self.http.port

    async def run(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until ``shutdown``; the port is reported as soon as it is bound (models load after)."""
        limiter = anyio.to_thread.current_default_thread_limiter()
        slots = sum(m.admission.max_running for m in self.models.all())
        limiter.total_tokens = max(limiter.total_tokens, slots + SPARE_THREADS)
        try:
            async with anyio.create_task_group() as tg:
                port = await tg.start(self.http.serve, self.config.host, self.config.port)
                log.info("listening on http://%s:%d", self.config.host, port)
                task_status.started(port)
                tg.start_soon(self.models.load_all)
                tg.start_soon(self._poll_energy)
                assert self.http.stopped is not None
                await self.http.stopped.wait()
                tg.cancel_scope.cancel()
        finally:
            self.models.close()
        log.info("stopped")

    async def _poll_energy(self) -> None:
        while True:
            await anyio.sleep(ENERGY_POLL_SECONDS)
            self.energy.poll()

    def shutdown(self) -> None:
        self.http.shutdown()
