"""The server's configuration: built-in defaults, then a TOML file, then environment variables,
then the command line, each overriding the one before. Unknown keys are errors, so a typo in a
config file is reported instead of silently ignored."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, RequestError
from ..http import Limits
from ..openai.generation import DEFAULT_KEYS
from ..openai.wire.common import SamplingFields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

USES = ("chat", "embedding")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class ModelConfig:
    id: str
    path: str
    uses: tuple[str, ...] = USES
    n_ctx: int | None = None  # None: the server's --ctx
    threads: int | None = None  # None: the server's --threads, else the physical cores
    head: str = "f16"
    max_running: int | None = None
    max_waiting: int | None = None
    max_batch_tokens: int | None = None
    owned_by: str = "tritlm"
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    log_level: str = "info"
    ping_interval: float = 15.0
    n_ctx: int | None = None  # None: each model's own context, at most 4096 (LLM's default)
    threads: int | None = None
    max_running: int = 8  # sequences the engine decodes together (its max_seqs)
    max_waiting: int = 64
    max_batch_tokens: int = 128  # tokens per engine step: the running decodes, then prompt chunks
    limits: Limits = field(default_factory=Limits)
    models: tuple[ModelConfig, ...] = ()

    def model_settings(self, m: ModelConfig) -> ModelConfig:
        """``m`` with the server-wide values filled in where it sets none."""
        return replace(
            m,
            n_ctx=m.n_ctx if m.n_ctx is not None else self.n_ctx,
            threads=m.threads if m.threads is not None else self.threads,
            max_running=m.max_running if m.max_running is not None else self.max_running,
            max_waiting=m.max_waiting if m.max_waiting is not None else self.max_waiting,
            max_batch_tokens=m.max_batch_tokens if m.max_batch_tokens is not None else self.max_batch_tokens,
        )


_LIMIT_KEYS = {f.name for f in fields(Limits)}
_SERVER_KEYS = {"host", "port", "api_key", "api_keys", "cors_origins", "log_level", "ping_interval", "ctx",
                "threads", "max_running", "max_waiting", "max_batch_tokens", *_LIMIT_KEYS}
_MODEL_KEYS = {"path", "use", "ctx", "threads", "head", "max_running", "max_waiting", "max_batch_tokens",
               "owned_by", "defaults"}


def _unknown(table: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(table) - allowed)
    if extra:
        raise ConfigurationError(f"{where}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(allowed))}")


def _typed(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigurationError(f"{where} must be {names}, got {value!r}")
    return value


def _str_list(value: Any, where: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else _typed(value, list, where)
    return tuple(_typed(v, str, f"{where}[]") for v in items)


def load_file(path: str | os.PathLike[str], base: ServeConfig | None = None) -> ServeConfig:
    """A ServeConfig from a TOML file over ``base``. Relative model paths are relative to the file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigurationError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigurationError(f"config file {path} is not valid TOML: {e}") from None
    _unknown(data, {"server", "models"}, str(path))
    config = base or ServeConfig()
    server = _typed(data.get("server", {}), dict, "[server]")
    _unknown(server, _SERVER_KEYS, f"{path} [server]")
    config = apply_settings(config, server, f"{path} [server]")
    models = []
    for model_id, table in _typed(data.get("models", {}), dict, "[models]").items():
        where = f"{path} [models.{model_id}]"
        _typed(table, dict, where)
        _unknown(table, _MODEL_KEYS, where)
        if "path" not in table:
            raise ConfigurationError(f"{where}: 'path' (a GGUF file or Hugging Face folder) is required")
        model_path = Path(_typed(table["path"], str, f"{where} path")).expanduser()
        models.append(model_config(
            model_id, str(model_path if model_path.is_absolute() else path.parent / model_path),
            uses=_str_list(table.get("use", list(USES)), f"{where} use"),
            n_ctx=_typed(table.get("ctx"), (int, type(None)), f"{where} ctx"),
            threads=_typed(table.get("threads"), (int, type(None)), f"{where} threads"),
            head=_typed(table.get("head", "f16"), str, f"{where} head"),
            max_running=_typed(table.get("max_running"), (int, type(None)), f"{where} max_running"),
            max_waiting=_typed(table.get("max_waiting"), (int, type(None)), f"{where} max_waiting"),
            max_batch_tokens=_typed(table.get("max_batch_tokens"), (int, type(None)), f"{where} max_batch_tokens"),
            owned_by=_typed(table.get("owned_by", "tritlm"), str, f"{where} owned_by"),
            defaults=_typed(table.get("defaults", {}), dict, f"{where} defaults"),
        ))
    return replace(config, models=(*config.models, *models))


def model_config(model_id: str, path: str, **kw: Any) -> ModelConfig:
    """A checked ModelConfig (the command line's --model and the file's tables both come here)."""
    m = ModelConfig(model_id, path, **kw)
    where = f"model {model_id!r}"
    if not model_id:
        raise ConfigurationError("a model id must not be empty")
    bad_uses = [u for u in m.uses if u not in USES]
    if bad_uses or not m.uses:
        raise ConfigurationError(f"{where}: use must list some of {', '.join(USES)}, got {list(m.uses)}")
    if m.head not in ("f16", "q8"):
        raise ConfigurationError(f"{where}: head must be 'f16' or 'q8', got {m.head!r}")
    for name in ("n_ctx", "threads", "max_running", "max_batch_tokens"):
        value = getattr(m, name)
        if value is not None and value < 1:
            raise ConfigurationError(f"{where}: {name} must be positive, got {value}")
    if m.max_waiting is not None and m.max_waiting < 0:
        raise ConfigurationError(f"{where}: max_waiting must be 0 or more, got {m.max_waiting}")
    _check_defaults(m.defaults, f"{where} defaults")
    if not os.path.exists(path):
        raise ConfigurationError(f"{where}: no such file or folder: {path}")
    return m


def _check_defaults(defaults: dict[str, Any], where: str) -> None:
    """Defaults reach the engine as a request's fields do, so they get the request schema's
    checks: a value the engine would refuse stops the start instead of failing every request."""
    _unknown(defaults, set(DEFAULT_KEYS), where)
    sampling = {k: v for k, v in defaults.items() if k != "max_tokens"}
    try:
        SamplingFields.parse(json.dumps(sampling, default=str).encode())
    except RequestError as e:
        raise ConfigurationError(f"{where}: {e}") from None
    max_tokens = defaults.get("max_tokens")
    if max_tokens is not None and _typed(max_tokens, int, f"{where} max_tokens") < 1:
        raise ConfigurationError(f"{where} max_tokens must be at least 1, got {max_tokens}")


def apply_settings(config: ServeConfig, settings: dict[str, Any], where: str) -> ServeConfig:
    """Server settings by their config-file names (the command line and environment use them too)."""
    changes: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    for key, value in settings.items():
        if value is None:
            continue
        at = f"{where} {key}"
        if key in _LIMIT_KEYS:
            kind = (int, float) if isinstance(getattr(config.limits, key), float) else int
            limits[key] = _typed(value, kind, at)
        elif key in ("host", "log_level"):
            changes[key] = _typed(value, str, at)
        elif key in ("port", "max_running", "max_waiting", "max_batch_tokens", "threads"):
            changes[key] = _typed(value, int, at)
        elif key == "ctx":
            changes["n_ctx"] = _typed(value, int, at)
        elif key == "ping_interval":
            changes[key] = float(_typed(value, (int, float), at))
        elif key in ("api_key", "api_keys"):
            changes["api_keys"] = _str_list(value, at)
        elif key == "cors_origins":
            changes[key] = _str_list(value, at)
        else:
            raise ConfigurationError(f"{at}: unknown setting")
    if "log_level" in changes and changes["log_level"] not in LOG_LEVELS:
        raise ConfigurationError(f"{where} log_level must be one of {', '.join(LOG_LEVELS)}, got {changes['log_level']!r}")
    if not 0 <= changes.get("port", config.port) <= 65535:
        raise ConfigurationError(f"{where} port must be 0..65535, got {changes['port']}")
    for name in ("max_running", "max_batch_tokens", "n_ctx", "threads"):
        if changes.get(name) is not None and changes[name] < 1:
            raise ConfigurationError(f"{where} {name} must be positive, got {changes[name]}")
    if changes.get("ping_interval", 1.0) <= 0:
        raise ConfigurationError(f"{where} ping_interval must be positive")
    try:
        new_limits = replace(config.limits, **limits)
    except ValueError as e:
        raise ConfigurationError(f"{where}: {e}") from None
    return replace(config, limits=new_limits, **changes)


def model_id_for(path: str) -> str:
    """The id a --model path is served under when none is given: its file or folder name."""
    p = Path(path.rstrip("/"))
    return p.stem if p.is_file() else p.name
