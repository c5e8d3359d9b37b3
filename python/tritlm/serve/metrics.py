"""Prometheus metrics (text exposition format, via prometheus_client so the format is exactly
right): requests by endpoint and status, tokens, time to first token, inter-token latency,
requests running and waiting, KV cache use, model state, and the process's CPU and memory."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..http import Request
from .energy import EnergyMeter
from .registry import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_GAP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)

# Label values come from fixed sets, never from what a client sends: HTTP lets a client name any
# method (and any path), and each new label value is a series Prometheus keeps.
# RFC 9110's methods, and "-" for a request too malformed to have one; any other is "other".
METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "-"))


class _LiveState(Collector):
    """Gauges read at scrape time from the registry, so they can never drift from the truth."""

    def __init__(self, models: Registry) -> None:
        self.models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        running = GaugeMetricFamily("tritlm_requests_running", "Requests holding a generation slot", labels=["model"])
        waiting = GaugeMetricFamily("tritlm_requests_waiting", "Requests queued for a generation slot", labels=["model"])
        kv_used = GaugeMetricFamily("tritlm_kv_cache_used_tokens", "KV cache positions holding tokens (running sequences and cached prefixes)", labels=["model"])
        kv_ratio = GaugeMetricFamily("tritlm_kv_cache_usage_ratio", "KV cache positions in use / positions of all sequence slots", labels=["model"])
        ready = GaugeMetricFamily("tritlm_model_ready", "1 when the model is loaded and serving", labels=["model"])
        for m in self.models.all():
            running.add_metric([m.id], m.admission.running)
            waiting.add_metric([m.id], m.admission.waiting)
            stats = m.llm.stats() if m.llm is not None else {"kv_tokens_cached": 0, "kv_tokens_capacity": 1}
            kv_used.add_metric([m.id], stats["kv_tokens_cached"])
            kv_ratio.add_metric([m.id], stats["kv_tokens_cached"] / stats["kv_tokens_capacity"])
            ready.add_metric([m.id], 1.0 if m.state == "ready" else 0.0)
        yield from (running, waiting, kv_used, kv_ratio, ready)


class Metrics:
    """The server's metrics, and the Observer the endpoints report tokens to."""

    def __init__(self, models: Registry, energy: EnergyMeter) -> None:
        self.energy = energy
        self.registry = r = CollectorRegistry()
        self.requests = Counter("tritlm_requests", "HTTP requests answered", ["endpoint", "method", "status"], registry=r)
        self.duration = Histogram("tritlm_request_duration_seconds", "Time from request to the end of its answer",
                                  ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt = Counter("tritlm_prompt_tokens", "Prompt tokens submitted", ["model"], registry=r)
        self.generated = Counter("tritlm_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.ttft = Histogram("tritlm_time_to_first_token_seconds", "Time from request arrival to a sequence's first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("tritlm_inter_token_latency_seconds", "Time between a sequence's successive tokens",
                             ["model"], buckets=TOKEN_GAP_BUCKETS, registry=r)
        r.register(_LiveState(models))
        ProcessCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- the endpoints' Observer --------------------------------------------------------------

    def prompt_tokens(self, model: str, count: int) -> None:
        self.prompt.labels(model).inc(count)
        self.energy.prompt_tokens += count

    def first_token(self, model: str, seconds: float) -> None:
        self.ttft.labels(model).observe(seconds)
        self._token(model)

    def next_token(self, model: str, seconds: float) -> None:
        self.itl.labels(model).observe(seconds)
        self._token(model)

    def _token(self, model: str) -> None:
        self.generated.labels(model).inc()
        self.energy.generated_tokens += 1

    # -- the HTTP server's response observer ----------------------------------------------------

    def response(self, request: Request, status: int, seconds: float) -> None:
        endpoint = request.route or "unmatched"
        method = request.method if request.method in METHODS else "other"
        self.requests.labels(endpoint, method, str(status)).inc()
        self.duration.labels(endpoint).observe(seconds)
