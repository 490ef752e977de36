"""DS18B20 temperature probes on the 1-Wire bus, through the kernel's ``w1_therm`` sysfs.

``<root>/28-XXXXXXXXXXXX/w1_slave`` holds two lines, the scratchpad with the
kernel's CRC verdict and then the temperature in millidegrees::

    72 01 4b 46 7f ff 0e 10 57 : crc=57 YES
    72 01 4b 46 7f ff 0e 10 57 t=23125

A reading is refused (the driver raises, so the status shows it) when the CRC
check says ``NO`` (a noisy or long bus), when it is exactly 85.0 °C (the power-on
value of the scratchpad: the conversion never ran, typically a brown-out of a
parasite-powered probe), and when it is outside the probe's -55..125 °C range
(the fault values 127.94 °C of a bus stuck high and -127 °C that some tools use
for "disconnected"). A real 85.0 °C is thereby lost; that is the usual trade-off.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from fieldline_edge.drivers.base import DriverError, Sample, list_dir, read_text

W1_ROOT = "/sys/bus/w1/devices"
#: DS18B20's 1-Wire family code is 0x28.
FAMILY_PREFIX = "28-"
POWER_ON_MILLIDEGREES = 85_000
MIN_MILLIDEGREES = -55_000
MAX_MILLIDEGREES = 125_000
_T_RE = re.compile(r"t=(-?\d+)\s*\Z")


class DS18B20:
    """One probe: ``device_id`` (``28-...``), or the only probe present if ``None``."""

    def __init__(self, name: str, root: str = W1_ROOT, device_id: Optional[str] = None) -> None:
        if device_id is not None and not device_id.startswith(FAMILY_PREFIX):
            raise ValueError(f"a DS18B20 id starts with {FAMILY_PREFIX!r}, got {device_id!r}")
        self.name = name
        self.root = root
        self.device_id = device_id

    def probe(self) -> str:
        if self.device_id is not None:
            return self.device_id
        probes = [d for d in list_dir(self.root) if d.startswith(FAMILY_PREFIX)]
        if not probes:
            raise DriverError(f"no DS18B20 probe under {self.root}")
        if len(probes) > 1:
            raise DriverError(f"{len(probes)} probes under {self.root}: set device_id")
        return probes[0]

    def read(self) -> list[Sample]:
        path = os.path.join(self.root, self.probe(), "w1_slave")
        return [Sample(self.name, parse_w1_slave(read_text(path), path), "°C")]


def parse_w1_slave(text: str, path: str = "w1_slave") -> float:
    """Degrees Celsius from a ``w1_slave`` file's text; :class:`DriverError` if not valid."""
    lines = text.strip().splitlines()
    if len(lines) < 2:
        raise DriverError(f"{path}: expected 2 lines, got {len(lines)}")
    crc_line = lines[0].strip()
    if not crc_line.endswith("YES"):
        raise DriverError(f"{path}: CRC check failed ({crc_line[-12:].strip()!r})")
    m = _T_RE.search(lines[1])
    if m is None:
        raise DriverError(f"{path}: no t=<millidegrees> on the second line")
    millidegrees = int(m.group(1))
    if millidegrees == POWER_ON_MILLIDEGREES:
        raise DriverError(f"{path}: 85.0 °C is the power-on value (no conversion ran)")
    if not MIN_MILLIDEGREES <= millidegrees <= MAX_MILLIDEGREES:
        raise DriverError(f"{path}: {millidegrees / 1000:g} °C is a fault value (outside -55..125)")
    return millidegrees / 1000.0
