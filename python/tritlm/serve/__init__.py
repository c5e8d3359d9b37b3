"""Running the OpenAI-compatible server: configuration (command line, environment, TOML), the
model registry, metrics, energy accounting, logging and the process's lifetime. Start it with
``python -m tritlm.serve --model PATH``."""

from .cli import build_config, main
from .config import ModelConfig, ServeConfig
from ..bundled import default_model_path
from .service import Service

__all__ = ["ModelConfig", "ServeConfig", "Service", "build_config", "default_model_path", "main"]
