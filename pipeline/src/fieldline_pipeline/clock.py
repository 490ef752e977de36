"""The pipeline's ingest clock: "now" for decisions that depend on silence.

Closing a silent device's windows must not depend on how fast the pipeline
happens to process. While the dataflow works through a backlog (after a crash,
a restart, or a sink that stalled on an InfluxDB outage), "now" is the intake
time of the newest message it has read; when it is caught up, it is the time of
its latest poll of the source, which is the wall clock while the dataflow runs
and stands still while it is stalled.
"""

from __future__ import annotations

import threading
import time


def wall_ms() -> int:
    return int(time.time() * 1000)


class IngestClock:
    """Process-wide; every source partition of the process reports its reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, int] = {}
        self._next_offsets: dict[str, int] = {}

    def observe(
        self, part: str, caught_up: bool, newest_received_ms: int | None, next_offset: int = 0
    ) -> None:
        """A partition read a batch; ``newest_received_ms`` is its newest message's."""
        value = wall_ms() if caught_up or newest_received_ms is None else newest_received_ms
        with self._lock:
            self._parts[part] = value
            self._next_offsets[part] = next_offset

    def next_offsets(self) -> dict[str, int]:
        """Per partition, the next log offset the dataflow will read (progress)."""
        with self._lock:
            return dict(self._next_offsets)

    def now_ms(self) -> int:
        """The earliest of the partitions' clocks (wall clock when none reported)."""
        with self._lock:
            return min(self._parts.values()) if self._parts else wall_ms()


class WallClock(IngestClock):
    """The wall clock, for sources without a backlog notion (tests, direct MQTT)."""

    def now_ms(self) -> int:
        return wall_ms()
