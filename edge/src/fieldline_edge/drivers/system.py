"""The device's own health: load, memory, disk, uptime and the Pi's throttling flags."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Optional

from fieldline_edge.drivers.base import DriverError, Sample, read_text

#: The firmware's throttling flags (hex), Raspberry Pi kernels 5.x+.
GET_THROTTLED = "sys/devices/platform/soc/soc:firmware/get_throttled"
VCGENCMD_TIMEOUT_S = 5.0


class SystemMetrics:
    """Readings ``<name>.<metric>``: ``load1`` (1-minute load average),
    ``mem_used_pct``, ``mem_available_mb``, ``disk_used_pct`` and ``disk_free_mb``
    (of ``disk_path``), ``uptime_s`` and, on a Raspberry Pi, ``throttled`` (the
    firmware's bit mask: bit 0 under-voltage now, 1 frequency capped, 2
    throttled, 16-18 the same "has occurred since boot").

    ``root`` is where ``proc`` and ``sys`` are found (``/``; tests use a fake
    tree). ``throttled`` comes from sysfs, else from ``vcgencmd get_throttled``
    when that command exists, else it is left out.
    """

    def __init__(
        self,
        name: str,
        root: str = "/",
        disk_path: str = "/",
        vcgencmd: Optional[str] = "vcgencmd",
    ) -> None:
        self.name = name
        self.root = root
        self.disk_path = disk_path
        self.vcgencmd = vcgencmd

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def read(self) -> list[Sample]:
        n = self.name
        samples = [Sample(f"{n}.load1", self._load1())]
        total_kb, available_kb = self._meminfo()
        samples.append(Sample(f"{n}.mem_used_pct", 100.0 * (1 - available_kb / total_kb), "%"))
        samples.append(Sample(f"{n}.mem_available_mb", available_kb / 1024.0, "MB"))
        try:
            st = os.statvfs(self.disk_path)
        except OSError as exc:
            raise DriverError(f"cannot stat {self.disk_path}: {exc.strerror or exc}") from None
        total = st.f_blocks * st.f_frsize
        free = st.f_bavail * st.f_frsize
        if total > 0:
            used_pct = 100.0 * (total - st.f_bfree * st.f_frsize) / total
            samples.append(Sample(f"{n}.disk_used_pct", used_pct, "%"))
        samples.append(Sample(f"{n}.disk_free_mb", free / 2**20, "MB"))
        samples.append(Sample(f"{n}.uptime_s", self._uptime(), "s"))
        throttled = self._throttled()
        if throttled is not None:
            samples.append(Sample(f"{n}.throttled", float(throttled)))
        return samples

    def _load1(self) -> float:
        path = self._path("proc/loadavg")
        try:
            return float(read_text(path).split()[0])
        except (IndexError, ValueError):
            raise DriverError(f"{path}: unexpected format") from None

    def _meminfo(self) -> tuple[float, float]:
        path = self._path("proc/meminfo")
        fields: dict[str, float] = {}
        for line in read_text(path).splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                try:
                    fields[key] = float(parts[0])
                except ValueError:
                    continue
        total = fields.get("MemTotal")
        # MemAvailable exists since Linux 3.14; older kernels: free + caches.
        available = fields.get("MemAvailable")
        if available is None and "MemFree" in fields:
            available = fields["MemFree"] + fields.get("Buffers", 0) + fields.get("Cached", 0)
        if not total or available is None:
            raise DriverError(f"{path}: no MemTotal/MemAvailable")
        return total, available

    def _uptime(self) -> float:
        path = self._path("proc/uptime")
        try:
            return float(read_text(path).split()[0])
        except (IndexError, ValueError):
            raise DriverError(f"{path}: unexpected format") from None

    def _throttled(self) -> Optional[int]:
        path = self._path(GET_THROTTLED)
        if os.path.exists(path):
            text = read_text(path).strip()
            try:
                return int(text, 16)
            except ValueError:
                raise DriverError(f"{path}: expected hex flags, got {text[:20]!r}") from None
        exe = shutil.which(self.vcgencmd) if self.vcgencmd else None
        if exe is None:
            return None
        try:
            out = subprocess.run(
                [exe, "get_throttled"], capture_output=True, text=True, timeout=VCGENCMD_TIMEOUT_S
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DriverError(f"vcgencmd get_throttled failed: {exc}") from None
        _, _, value = out.stdout.strip().partition("=")  # "throttled=0x50005"
        try:
            return int(value, 16)
        except ValueError:
            raise DriverError(f"vcgencmd get_throttled said {out.stdout.strip()[:40]!r}") from None
