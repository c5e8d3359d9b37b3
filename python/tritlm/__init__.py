"""tritlm: ternary (1.58-bit) and 1-bit language models, fast on ordinary CPUs."""

from __future__ import annotations

import os
from typing import Any

from . import _core, kernels
from .bundled import default_model_path
from .errors import ConfigurationError, ContextOverflowError, ModelLoadError, TritlmError

__version__ = "0.1.0"
__all__ = [
    "LLM",
    "ConfigurationError",
    "ContextOverflowError",
    "ModelLoadError",
    "TritlmError",
    "default_model_path",
    "get_num_threads",
    "kernels",
    "set_num_threads",
    "system_info",
]

KERNELS_ENV = "TRITLM_KERNELS"


def _apply_kernel_override() -> None:
    """Honour TRITLM_KERNELS at import, so a user can force a path without touching code."""
    name = os.environ.get(KERNELS_ENV, "").strip().lower()
    if not name or name == "auto":
        return
    try:
        _core.set_active_isa(name)
    except ValueError as e:
        raise ConfigurationError(f"{KERNELS_ENV}={name!r}: {e}") from None


_apply_kernel_override()

from .llm import LLM  # noqa: E402  (after the kernel override, which must precede any model load)


def set_num_threads(n: int) -> None:
    """Threads the kernels use when a call does not say (default: the physical cores)."""
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return int(_core.get_num_threads())


def system_info() -> dict[str, Any]:
    """What tritlm runs on: the kernel ISA in use, the CPU features seen, and threads."""
    return {
        "version": __version__,
        "isa": _core.active_isa(),
        "available_isas": kernels.available_isas(),
        "features": list(_core.cpu_features()),
        "threads": get_num_threads(),
        "physical_cores": int(_core.physical_cores()),
    }
