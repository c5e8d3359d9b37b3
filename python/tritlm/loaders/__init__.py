"""Model loaders: a GGUF file or a Hugging Face folder -> ModelSpec (docs/engine.md).

``load_model(path)`` picks the loader: a file starting with the GGUF magic is read by
``load_gguf``; a folder (or a config.json / .safetensors file inside one) by ``load_hf``; a folder
holding no config.json but exactly one .gguf file by ``load_gguf``. Every problem raises
``tritlm.errors.ModelLoadError`` naming the path and the problem.

A GGUF file is memory-mapped, and by default (``use_mmap=True``) some weights stay views of the
mapping: the file must not be modified or truncated while the model is loaded (``load_gguf``).
Hugging Face weights are always copied.
"""

from __future__ import annotations

import os

from ..errors import ModelLoadError
from .gguf import load_gguf
from .hf import load_hf
from .spec import ModelSpec

__all__ = ["ModelSpec", "load_gguf", "load_hf", "load_model"]


def load_model(path: str | os.PathLike, *, use_mmap: bool = True) -> ModelSpec:
    """Load a model from a GGUF file or a Hugging Face folder; ``use_mmap`` is ``load_gguf``'s
    (it changes nothing for a Hugging Face folder, whose weights are always copied)."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise ModelLoadError(f"{path!r}: not a path") from None
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or folder")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            ggufs = [n for n in os.listdir(path) if n.lower().endswith(".gguf")]
            if len(ggufs) == 1:
                return load_gguf(os.path.join(path, ggufs[0]), use_mmap=use_mmap)
            if len(ggufs) > 1:
                raise ModelLoadError(f"{path}: several .gguf files and no config.json; name the file to load")
        return load_hf(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read: {e.strerror or e}") from None
    if magic == b"GGUF":
        return load_gguf(path, use_mmap=use_mmap)
    name = os.path.basename(path)
    if name == "config.json" or name.endswith(".safetensors") or name.endswith(".safetensors.index.json"):
        return load_hf(os.path.dirname(os.path.abspath(path)))
    raise ModelLoadError(f"{path}: not a GGUF file (magic {magic!r}) nor a Hugging Face model folder")
