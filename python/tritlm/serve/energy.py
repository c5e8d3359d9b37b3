"""Energy and CPU time per token, measured, never estimated.

CPU seconds come from the process's own accounting (every thread, user and system). Energy comes
from the Linux powercap interface's RAPL counters (``/sys/class/powercap/intel-rapl:N/energy_uj``,
one per CPU package), when the kernel exposes them and they are readable; they measure the whole
package, every process on it, and wrap around at ``max_energy_range_uj``. Where they are missing,
the report says so and gives no energy figures.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

POWERCAP = "/sys/class/powercap"
_PACKAGE = re.compile(r"^intel-rapl:\d+$")  # packages; "intel-rapl:0:1" are their sub-zones


class EnergyMeter:
    def __init__(self, powercap: str | os.PathLike[str] = POWERCAP) -> None:
        self.started_wall = time.monotonic()
        self.started_cpu = _cpu_seconds()
        self._root = Path(powercap)
        self._zones = _readable_zones(self._root)
        self._last = {z: _read_uj(z) for z in self._zones}
        self._range = {z: _read_uj(z, "max_energy_range_uj") for z in self._zones}
        self._joules = 0.0
        self.prompt_tokens = 0
        self.generated_tokens = 0

    @property
    def measurable(self) -> bool:
        return bool(self._zones)

    def poll(self) -> None:
        """Fold the counters' progress into the total; called often enough to see every wrap."""
        for zone in self._zones:
            now = _read_uj(zone)
            delta = now - self._last[zone]
            if delta < 0:  # the counter wrapped once since the last poll
                delta += self._range[zone]
            self._joules += delta / 1e6
            self._last[zone] = now

    def report(self) -> dict[str, Any]:
        self.poll()
        cpu = _cpu_seconds() - self.started_cpu
        tokens = self.prompt_tokens + self.generated_tokens
        out: dict[str, Any] = {
            "since_seconds": round(time.monotonic() - self.started_wall, 3),
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "cpu_seconds": round(cpu, 3),
            "cpu_seconds_per_token": round(cpu / tokens, 6) if tokens else None,
            "energy_measurable": self.measurable,
        }
        if self.measurable:
            out.update({
                "energy_source": "RAPL package counters: " + ", ".join(z.name for z in self._zones),
                "energy_scope": "whole CPU package(s): every process on them, idle power included",
                "joules": round(self._joules, 3),
                "joules_per_token": round(self._joules / tokens, 6) if tokens else None,
                "joules_per_generated_token": round(self._joules / self.generated_tokens, 6) if self.generated_tokens else None,
            })
        else:
            out["energy_note"] = f"no readable RAPL energy counters under {self._root} on this machine; energy is not measurable here"
        return out


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _read_uj(zone: Path, name: str = "energy_uj") -> int:
    return int((zone / name).read_text().strip())


def _readable_zones(root: Path) -> list[Path]:
    zones = []
    try:
        candidates = sorted(p for p in root.iterdir() if _PACKAGE.match(p.name))
    except OSError:
        return []
    for zone in candidates:
        try:
            _read_uj(zone)
            _read_uj(zone, "max_energy_range_uj")
        except (OSError, ValueError):
            continue
        zones.append(zone)
    return zones
