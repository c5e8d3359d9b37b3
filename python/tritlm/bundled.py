"""The model shipped inside the package, used whenever no model is named.

A newcomer's first command must produce text with nothing to download (model hubs may be
unreachable, and many first tries are offline), and nobody publishes a ternary model small enough
to ship, so tritlm trains its own: a BitNet b1.58 of 2B4T's architecture trained on the King James
Bible (tools/train_bundled.py; docs/model_card.md).
"""

from __future__ import annotations

import os

from .errors import ModelLoadError

__all__ = ["BUNDLED_MODEL_FILE", "default_model_path"]

BUNDLED_MODEL_FILE = "kjv-bitnet-b1.58-11m.gguf"


def default_model_path() -> str:
    """Path of the bundled GGUF file (package data under tritlm/models/)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models", BUNDLED_MODEL_FILE)
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: the bundled model is missing from this installation "
                             "(built without package data?); pass a model path instead")
    return path
