"""Sensors the agent samples: one ``read() -> float`` per sample.

A sensor either returns a finite value in its ``unit`` or raises
:class:`SensorError` with a message fit for the device's status payload; the agent
never lets one sensor's failure stop the others.
"""

from __future__ import annotations

import math
import os
import random
import re
from typing import Optional, Protocol, runtime_checkable

#: Where the kernel exposes thermal zones, relative to the sysfs root.
THERMAL_DIR = os.path.join("sys", "class", "thermal")
_ZONE_RE = re.compile(r"thermal_zone(\d+)\Z")


class SensorError(Exception):
    """A sensor could not be read; ``str(exc)`` says why in one line."""


@runtime_checkable
class Sensor(Protocol):
    """Anything with a ``name``, a ``unit`` and a ``read()`` returning a finite float."""

    name: str
    unit: str

    def read(self) -> float: ...


class SimulatedSensor:
    """A deterministic synthetic signal: a sine wave plus gaussian noise.

    Sample ``i`` is ``base + amplitude * sin(2π * i * interval_s / period_s)``
    plus ``gauss(0, noise)`` drawn from ``random.Random(seed)``: the same seed
    yields the same value for the same sample index, whatever the wall clock says.
    """

    def __init__(
        self,
        name: str,
        unit: str = "",
        *,
        seed: int = 0,
        base: float = 20.0,
        amplitude: float = 5.0,
        period_s: float = 600.0,
        noise: float = 0.2,
        interval_s: float = 1.0,
    ) -> None:
        if period_s <= 0 or interval_s <= 0:
            raise ValueError("period_s and interval_s must be > 0")
        if noise < 0:
            raise ValueError("noise must be >= 0")
        self.name = name
        self.unit = unit
        self.seed = seed
        self.base = base
        self.amplitude = amplitude
        self.period_s = period_s
        self.noise = noise
        self.interval_s = interval_s
        self._rng = random.Random(seed)
        self._index = 0

    @property
    def index(self) -> int:
        """The index of the next sample ``read()`` returns."""
        return self._index

    def read(self) -> float:
        phase = 2.0 * math.pi * self._index * self.interval_s / self.period_s
        value = self.base + self.amplitude * math.sin(phase) + self._rng.gauss(0.0, self.noise)
        self._index += 1
        return value


class CpuTemperature:
    """The SoC temperature in °C from ``<sysfs_root>/sys/class/thermal/thermal_zoneN/temp``.

    The kernel writes millidegrees Celsius as an integer. ``zone=None`` picks the
    lowest-numbered zone present (on a Raspberry Pi that is ``cpu-thermal``).
    Missing or malformed files raise :class:`SensorError`.
    """

    def __init__(
        self,
        sysfs_root: str = "/",
        zone: Optional[int] = None,
        name: str = "cpu_temp",
        unit: str = "°C",
    ) -> None:
        self.name = name
        self.unit = unit
        self.sysfs_root = sysfs_root
        self.zone = zone

    def path(self) -> str:
        """The ``temp`` file this sensor reads; raises :class:`SensorError` if none exists."""
        base = os.path.join(self.sysfs_root, THERMAL_DIR)
        if self.zone is not None:
            return os.path.join(base, f"thermal_zone{self.zone}", "temp")
        try:
            entries = os.listdir(base)
        except OSError as exc:
            raise SensorError(f"no thermal zones: cannot list {base}: {exc.strerror}") from None
        zones = sorted(int(m.group(1)) for m in map(_ZONE_RE.match, entries) if m)
        if not zones:
            raise SensorError(f"no thermal zones under {base}")
        return os.path.join(base, f"thermal_zone{zones[0]}", "temp")

    def read(self) -> float:
        path = self.path()
        try:
            with open(path, encoding="ascii") as f:
                text = f.read(64).strip()
        except FileNotFoundError:
            raise SensorError(f"{path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SensorError(f"cannot read {path}: {exc}") from None
        try:
            millidegrees = int(text)
        except ValueError:
            raise SensorError(f"{path}: expected integer millidegrees, got {text[:20]!r}") from None
        return millidegrees / 1000.0
