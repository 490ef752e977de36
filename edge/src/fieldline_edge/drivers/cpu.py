"""SoC temperature from the kernel's thermal zones (``/sys/class/thermal``)."""

from __future__ import annotations

import os
import re
from typing import Optional

from fieldline_edge.drivers.base import DriverError, Sample, list_dir, read_text

THERMAL_ROOT = "/sys/class/thermal"
_ZONE_RE = re.compile(r"thermal_zone(\d+)\Z")


class CpuTemperature:
    """``<root>/thermal_zoneN/temp`` in °C (the kernel writes millidegrees).

    ``zone=None`` takes the lowest-numbered zone, which on a Raspberry Pi is
    ``cpu-thermal``.
    """

    def __init__(self, name: str, root: str = THERMAL_ROOT, zone: Optional[int] = None) -> None:
        self.name = name
        self.root = root
        self.zone = zone

    def path(self) -> str:
        if self.zone is not None:
            return os.path.join(self.root, f"thermal_zone{self.zone}", "temp")
        zones = sorted(int(m.group(1)) for m in map(_ZONE_RE.match, list_dir(self.root)) if m)
        if not zones:
            raise DriverError(f"no thermal zones under {self.root}")
        return os.path.join(self.root, f"thermal_zone{zones[0]}", "temp")

    def read(self) -> list[Sample]:
        path = self.path()
        text = read_text(path).strip()
        try:
            millidegrees = int(text)
        except ValueError:
            raise DriverError(f"{path}: expected integer millidegrees, got {text[:20]!r}") from None
        return [Sample(self.name, millidegrees / 1000.0, "°C")]
