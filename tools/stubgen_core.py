"""Regenerates python/tritlm/_core.pyi, the type stub of the native module, from the built module.

    python tools/stubgen_core.py          # writes the stub
    python tools/stubgen_core.py --check  # exits 1 if the committed stub is stale

Needs nanobind (a build requirement: pip install nanobind) and tritlm built and importable.
tools/core_stub_patterns.txt refines what the C++ signatures cannot say. Run it after changing
the bindings in csrc/; tests/test_typing.py compares the committed stub with a fresh one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUB = ROOT / "python" / "tritlm" / "_core.pyi"
PATTERNS = ROOT / "tools" / "core_stub_patterns.txt"


def generate() -> str:
    """The stub text for the importable tritlm._core, by nanobind's own stubgen command."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "_core.pyi"
        run = subprocess.run([sys.executable, "-m", "nanobind.stubgen", "-m", "tritlm._core",
                              "-p", str(PATTERNS), "-o", str(out)], capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"nanobind.stubgen failed:\n{run.stdout}{run.stderr}")
        if "did not match" in run.stdout:  # a refinement whose binding was renamed or removed
            raise RuntimeError(f"a pattern in {PATTERNS.name} matched nothing:\n{run.stdout}")
        return out.read_text(encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare with the committed stub instead of writing it")
    a = ap.parse_args()
    text = generate()
    if a.check:
        if STUB.read_text(encoding="utf-8") != text:
            print(f"{STUB.relative_to(ROOT)} is stale: run python tools/stubgen_core.py", file=sys.stderr)
            return 1
        return 0
    STUB.write_text(text, encoding="utf-8")
    print(f"wrote {STUB.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
