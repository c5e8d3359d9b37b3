"""The operator's endpoints: /health (public, for probes), /metrics, /v1/status, /v1/energy."""

from __future__ import annotations

import time
from typing import Any

from .. import __version__, system_info
from ..http import Request, Response, Route
from ..openai.auth import guarded
from .energy import EnergyMeter
from .metrics import CONTENT_TYPE, Metrics
from .registry import Registry


class Operations:
    def __init__(self, models: Registry, metrics: Metrics, energy: EnergyMeter) -> None:
        self.models = models
        self.metrics = metrics
        self.energy = energy
        self.started = time.monotonic()

    def routes(self, api_keys: tuple[str, ...]) -> list[Route]:
        return [
            Route("GET", "/health", self.health),
            Route("GET", "/v1/health", self.health),
            Route("GET", "/metrics", guarded(self.prometheus, api_keys)),
            Route("GET", "/v1/status", guarded(self.status, api_keys)),
            Route("GET", "/v1/energy", guarded(self.energy_report, api_keys)),
        ]

    async def health(self, request: Request) -> Response:
        """200 once every model serves; 503 while one loads or after one failed."""
        models = [{"id": m.id, "state": m.state, **({"error": m.error} if m.error else {})} for m in self.models.all()]
        states = {m.state for m in self.models.all()}
        status = "ok" if states == {"ready"} else "unhealthy" if "failed" in states else "loading"
        body = {"status": status, "version": __version__, "uptime_s": round(time.monotonic() - self.started, 3),
                "models": models}
        return Response.json(body, 200 if status == "ok" else 503)

    async def prometheus(self, request: Request) -> Response:
        return Response(200, [("content-type", CONTENT_TYPE)], self.metrics.render())

    async def status(self, request: Request) -> Response:
        info = system_info()
        return Response.json({
            "backend": "native",
            "version": __version__,
            "isa": info["isa"],
            "available_isas": info["available_isas"],
            "physical_cores": info["physical_cores"],
            "models": [self._model_status(m, info["threads"]) for m in self.models.all()],
        })

    def _model_status(self, m: Any, default_threads: int) -> dict[str, Any]:
        """``default_threads``: the kernels' default, which a model configured with none runs on."""
        cfg = self.models.config(m.id)
        out: dict[str, Any] = {
            "id": m.id, "state": m.state, "path": cfg.path, "uses": list(m.uses),
            "n_ctx": m.llm.n_ctx if m.llm is not None else cfg.n_ctx,
            "threads": cfg.threads if cfg.threads is not None else default_threads,
            "requests_running": m.admission.running, "requests_waiting": m.admission.waiting,
            "max_running": m.admission.max_running, "max_waiting": m.admission.max_waiting,
        }
        if m.llm is not None:
            info = m.llm.info
            sizes = {"linear_bytes": info["linear_bytes"], "embedding_bytes": info["embedding_bytes"],
                     "head_bytes": 0 if info["tied_head"] else info["head_bytes"]}
            out.update({
                "architecture": info["config"]["arch"], "layers": info["config"]["n_layers"],
                "dim": info["config"]["dim"], "vocab_size": info["config"]["vocab_size"],
                "head_dtype": info["head_dtype"], **sizes, "total_bytes": sum(sizes.values()),
                "kv_cache_used_tokens": m.llm.stats()["kv_tokens_cached"],
            })
        if m.error:
            out["error"] = m.error
        return out

    async def energy_report(self, request: Request) -> Response:
        return Response.json(self.energy.report())
