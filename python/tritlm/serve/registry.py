"""The served models by id: loaded in the background after the server starts listening (so
/health can say "loading"), each with its own admission queue."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio.to_thread

from .. import __version__, system_info
from ..errors import ConfigurationError, NotFoundError
from ..openai import AdmissionQueue, ServedModel
from .config import ModelConfig, ServeConfig

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..llm import LLM

log = logging.getLogger("tritlm.serve")


NO_MODEL = (
    "no model to serve (and the bundled model is missing from this installation): pass --model PATH (a GGUF file or a Hugging Face BitNet folder), set "
    "TRITLM_MODEL=PATH, or list models in a TOML file given with --config"
)


class Registry:
    """The Catalog the OpenAI endpoints look models up in."""

    def __init__(self, config: ServeConfig) -> None:
        if not config.models:
            raise ConfigurationError(NO_MODEL)
        self._configs: dict[str, ModelConfig] = {}
        self._models: dict[str, ServedModel] = {}
        for m in config.models:
            if m.id in self._models:
                raise ConfigurationError(f"model id {m.id!r} is registered twice")
            m = config.model_settings(m)
            assert m.max_running is not None and m.max_waiting is not None
            self._configs[m.id] = m
            self._models[m.id] = ServedModel(
                id=m.id, admission=AdmissionQueue(m.max_running, m.max_waiting), uses=tuple(m.uses),  # type: ignore[arg-type]  # config.py admits Use values only
                defaults=dict(m.defaults), created=int(os.path.getmtime(m.path)), owned_by=m.owned_by,
            )

    def get(self, model_id: str) -> ServedModel:
        try:
            return self._models[model_id]
        except KeyError:
            raise NotFoundError(
                f"The model '{model_id}' does not exist. Available models: {', '.join(self._models)}",
                code="model_not_found",
            ) from None

    def all(self) -> Sequence[ServedModel]:
        return list(self._models.values())

    def config(self, model_id: str) -> ModelConfig:
        return self._configs[model_id]

    @property
    def ready(self) -> bool:
        return all(m.state == "ready" for m in self._models.values())

    async def load_all(self) -> None:
        """Load every model, one after the other, in a worker thread; a failure marks that model
        failed (the server keeps answering, /health says why) rather than stopping the rest."""
        for model_id, served in self._models.items():
            cfg = self._configs[model_id]
            try:
                served.llm = llm = await anyio.to_thread.run_sync(self._load, cfg, abandon_on_cancel=True)
            except Exception as e:
                served.state, served.error = "failed", f"{type(e).__name__}: {e}"
                log.error("model %s failed to load from %s: %s", model_id, cfg.path, served.error)
                continue
            served.fingerprint = _fingerprint(cfg, llm.n_ctx)
            served.state = "ready"
            log.info("model %s ready (%s, context %d)", model_id, cfg.path, llm.n_ctx)

    @staticmethod
    def _load(cfg: ModelConfig) -> LLM:
        from ..llm import LLM

        # The server's admission queue hands the engine at most max_running sequences at once,
        # so the engine's own slots match it.
        return LLM(cfg.path, n_threads=cfg.threads, n_ctx=cfg.n_ctx, head=cfg.head,
                   max_seqs=cfg.max_running or 8, max_batch_tokens=cfg.max_batch_tokens or 128)

    def close(self) -> None:
        for served in self._models.values():
            if served.llm is not None:
                served.llm.close()


def _fingerprint(cfg: ModelConfig, n_ctx: int) -> str:
    """Names the backend configuration (version, kernels, model file, context, head), as
    OpenAI's system_fingerprint does: equal fingerprints and seeds give equal results."""
    stat = os.stat(cfg.path)
    parts = [__version__, system_info()["isa"], os.path.realpath(cfg.path), str(stat.st_mtime_ns), str(n_ctx), cfg.head]
    return "fp_" + hashlib.blake2b("|".join(parts).encode(), digest_size=5).hexdigest()
