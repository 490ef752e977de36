"""Whether the wall clock can be trusted yet, for devices without a real-time clock.

A Raspberry Pi has no RTC: it boots at 1970 (or, with fake-hwclock, at the time
it was last shut down) and gets the right time from NTP some seconds or hours
later. Readings must not carry those wrong times. The agent therefore stamps
every reading with the monotonic clock too, and while the wall clock is not
*sane* it holds the readings back; when the clock becomes sane it stamps them
``wall_now - (monotonic_now - monotonic_at_reading)``, i.e. with the time they
were really taken.

The clock is sane once (and from then on):

- it is past :data:`FLOOR_MS` (this release's build date: a clock before it is
  certainly wrong), and
- if ``sync_file`` is set and its folder exists (systemd-timesyncd is running),
  ``sync_file`` exists: timesyncd creates ``/run/systemd/timesync/synchronized``
  at its first successful synchronisation. This catches fake-hwclock's
  plausible-but-stale time. Without timesyncd (chrony, ntpd, an RTC) the floor
  alone decides.
"""

from __future__ import annotations

import os
import time
from typing import Callable

#: 2025-01-01T00:00:00Z, before this code was written: no sane clock is earlier.
FLOOR_MS = 1_735_689_600_000


class Clock:
    """Wall and monotonic time (injectable for tests) and the sanity check."""

    def __init__(
        self,
        sync_file: str = "",
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        floor_ms: int = FLOOR_MS,
        exists: Callable[[str], bool] = os.path.exists,
    ) -> None:
        self.sync_file = sync_file
        self.wall = wall
        self.monotonic = monotonic
        self.floor_ms = floor_ms
        self._exists = exists
        self._sane = False

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def is_sane(self) -> bool:
        """Whether readings may be stamped with the wall clock (latches once True)."""
        if not self._sane:
            self._sane = self.wall_ms() >= self.floor_ms and self._synchronised()
        return self._sane

    def why_not(self) -> str:
        """Why the clock is not sane (for logs and the status)."""
        if self.wall_ms() < self.floor_ms:
            day = time.strftime("%Y-%m-%d", time.gmtime(self.wall()))
            return f"wall clock says {day}, before this release"
        return f"waiting for time synchronisation ({self.sync_file})"

    def _synchronised(self) -> bool:
        if not self.sync_file:
            return True
        if not self._exists(os.path.dirname(self.sync_file)):
            return True  # no timesyncd: the floor is all we can check
        return self._exists(self.sync_file)

    def stamp_ms(self, monotonic_s: float) -> int:
        """Wall-clock ms of an instant recorded as ``monotonic_s`` (needs a sane clock)."""
        return int((self.wall() - (self.monotonic() - monotonic_s)) * 1000)
