"""The aarch64 NEON kernels against the scalar specification, bit for bit, under qemu.

tests/native/build_neon.sh cross-compiles tests/native/neon_driver.cpp with scalar.cpp and
both builds of neon.cpp (baseline and +dotprod) into a static aarch64 binary, which runs under
qemu-aarch64 twice:
  * ``-cpu max`` has dotprod: both the "neon" and "neon-dotprod" tables must be tested;
  * ``-cpu cortex-a53`` lacks it: "neon" is tested and "neon-dotprod" skipped, which also
    proves the baseline object holds no dotprod instruction (qemu would raise SIGILL).
Needs Debian's g++-aarch64-linux-gnu and qemu-user; skipped, naming them, when they are missing.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = ROOT / "tests" / "native" / "build_neon.sh"
CXX = "aarch64-linux-gnu-g++"
QEMU = "qemu-aarch64"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$", re.MULTILINE)

# The driver takes ~10 s per run under qemu on a 2-core machine; the limits only catch hangs.
BUILD_TIMEOUT = 300
RUN_TIMEOUT = 300


def _missing_tools() -> str | None:
    missing = []
    if shutil.which(CXX) is None:
        missing.append(f"{CXX} (Debian package g++-aarch64-linux-gnu)")
    if shutil.which(QEMU) is None:
        missing.append(f"{QEMU} (Debian package qemu-user)")
    return "needs " + " and ".join(missing) if missing else None


pytestmark = pytest.mark.skipif(_missing_tools() is not None, reason=_missing_tools() or "")


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("neon_build")
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), str(out)], capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, f"build_neon.sh failed:\n{proc.stdout}\n{proc.stderr}"
    binary = out / "neon_driver"
    assert binary.is_file()
    return binary


def _run(driver: Path, cpu: str) -> str:
    proc = subprocess.run([QEMU, "-cpu", cpu, str(driver)], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"neon_driver under -cpu {cpu} exited {proc.returncode}:\n{output[-6000:]}"
    summary = SUMMARY.findall(proc.stdout)
    assert summary, f"no summary line under -cpu {cpu}:\n{output[-6000:]}"
    passed, failed = map(int, summary[-1])
    assert failed == 0 and passed > 0, output[-6000:]
    assert proc.stdout.rstrip().splitlines()[-1] == f"{passed} passed, 0 failed"
    return proc.stdout


def test_neon_and_dotprod_match_scalar_on_cpu_max(driver: Path) -> None:
    out = _run(driver, "max")
    assert "testing table: neon\n" in out
    assert "testing table: neon-dotprod\n" in out
    assert "skipping table" not in out


def test_neon_matches_scalar_without_dotprod_on_cortex_a53(driver: Path) -> None:
    out = _run(driver, "cortex-a53")
    assert "testing table: neon\n" in out
    assert "skipping table: neon-dotprod (CPU lacks dotprod" in out
    assert "testing table: neon-dotprod" not in out
