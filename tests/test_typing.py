"""The package's type hints are checked, not only written: mypy, with the settings in
pyproject.toml's [tool.mypy], finds no error in python/tritlm; and the committed stub of the
native module (python/tritlm/_core.pyi, what mypy and users' type checkers read for
tritlm._core) is the one nanobind generates from the module as built."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mypy import api as mypy_api  # the test extra

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_error(tmp_path: Path) -> None:
    # A fresh cache: the check takes a few seconds without one (gguf-py's optional imports of
    # transformers and torch are skipped in the settings; analysing those took a minute).
    stdout, stderr, status = mypy_api.run([
        "--config-file", str(ROOT / "pyproject.toml"),
        "--cache-dir", str(tmp_path / "mypy_cache"),
        str(ROOT / "python" / "tritlm"),
    ])
    assert status == 0, f"mypy found errors:\n{stdout}{stderr}"
    assert "Success: no issues found" in stdout


def test_packaged_typing_files_are_there() -> None:
    # wheel.packages ships python/tritlm whole: the marker and the stub go with it.
    assert (ROOT / "python" / "tritlm" / "py.typed").is_file()
    assert (ROOT / "python" / "tritlm" / "_core.pyi").is_file()


def test_core_stub_matches_the_built_module() -> None:
    run = subprocess.run([sys.executable, str(ROOT / "tools" / "stubgen_core.py"), "--check"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
