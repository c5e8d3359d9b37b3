"""``python -m tritlm.serve``: the command line and environment over the config file."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

import anyio

from ..bundled import default_model_path
from ..errors import ConfigurationError, ModelLoadError
from .config import LOG_LEVELS, ServeConfig, apply_settings, load_file, model_config, model_id_for
from .registry import NO_MODEL

ENV = {"TRITLM_HOST": "host", "TRITLM_PORT": "port", "TRITLM_API_KEY": "api_key"}
log = logging.getLogger("tritlm.serve")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tritlm.serve",
        description="Serve tritlm models over an OpenAI-compatible HTTP API.",
        epilog="Environment: TRITLM_MODEL, TRITLM_HOST, TRITLM_PORT, TRITLM_API_KEY (the command line wins).",
    )
    p.add_argument("-m", "--model", help="GGUF file or Hugging Face folder to serve (env TRITLM_MODEL; default: the bundled model)")
    p.add_argument("--model-id", help="the id clients send as 'model' (default: the file or folder name)")
    p.add_argument("--config", help="TOML file with [server] settings and [models.ID] tables")
    p.add_argument("--host", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", action="append", help="accept only this key (repeatable; default: any key)")
    p.add_argument("-t", "--threads", type=int, help="threads per model (default: physical cores)")
    p.add_argument("-c", "--ctx", type=int, help="context size in tokens (default: each model's own, at most 4096)")
    p.add_argument("--head", choices=["f16", "q8"], default="f16", help="output head precision for --model")
    p.add_argument("--max-running", type=int, help="sequences decoded together per model, in one batched step (default 8)")
    p.add_argument("--max-batch-tokens", type=int,
                   help="tokens per engine step: running decodes first, then prompt chunks (default 128)")
    p.add_argument("--max-waiting", type=int, help="requests queued per model before 429 (default 64)")
    p.add_argument("--cors-origin", action="append", help="browser origin allowed to call the API (repeatable, '*' for any)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="default info: one access log line per request")
    return p


def build_config(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None) -> ServeConfig:
    """Defaults, then --config, then the environment, then the command line."""
    a = parser().parse_args(argv)
    env = os.environ if environ is None else environ
    config = ServeConfig()
    if a.config:
        config = load_file(a.config, config)
    from_env: dict[str, object] = {}
    for var, key in ENV.items():
        if env.get(var):
            value = env[var]
            if key == "port":
                if not value.isdigit():
                    raise ConfigurationError(f"{var} must be a port number, got {value!r}")
                from_env[key] = int(value)
            else:
                from_env[key] = value
    config = apply_settings(config, from_env, "environment")
    config = apply_settings(config, {
        "host": a.host, "port": a.port, "api_keys": a.api_key, "threads": a.threads, "ctx": a.ctx,
        "max_running": a.max_running, "max_waiting": a.max_waiting,
        "max_batch_tokens": a.max_batch_tokens, "cors_origins": a.cors_origin,
        "log_level": a.log_level,
    }, "command line")
    path = a.model or env.get("TRITLM_MODEL")
    if not path and not config.models:  # the model bundled with tritlm
        try:
            path = default_model_path()
        except ModelLoadError:
            raise ConfigurationError(NO_MODEL) from None
    if path:
        model = model_config(a.model_id or model_id_for(path), path, head=a.head)
        config = replace(config, models=(*config.models, model))
    return config


async def _serve(service: object) -> None:
    from .service import Service

    assert isinstance(service, Service)
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            asked = False
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if asked:
                        log.warning("second %s: cancelling in-flight requests now", signal.Signals(signum).name)
                        tg.cancel_scope.cancel()
                        return
                    log.info("%s: finishing in-flight requests, then exiting", signal.Signals(signum).name)
                    asked = True
                    service.shutdown()

        tg.start_soon(on_signals)
        await service.run()
        tg.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = build_config(argv)
    except ConfigurationError as e:
        print(f"tritlm.serve: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from .service import Service

    try:
        service = Service(config)
    except ConfigurationError as e:
        print(f"tritlm.serve: {e}", file=sys.stderr)
        return 2
    try:
        anyio.run(_serve, service)
    except Exception as e:
        listen = _os_error(e)  # the port is taken, the address is not ours, ...
        if listen is None:
            raise
        print(f"tritlm.serve: cannot listen on {config.host}:{config.port}: {listen.strerror or listen}",
              file=sys.stderr)
        return 1
    return 0


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: itself, or the one inside the exception group anyio's task group
    wraps a failed listener in (ExceptionGroup is 3.11+, so found by its ``exceptions``)."""
    if isinstance(e, OSError):
        return e
    inner = getattr(e, "exceptions", None)
    return _os_error(inner[0]) if inner is not None and len(inner) == 1 else None
