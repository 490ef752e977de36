"""The pipeline's ingest clock: "now" for decisions that depend on silence.

Closing a silent device's windows must rest on evidence that the device really
sent nothing, not on the pipeline's own clock: after a crash, a restart, or a
cut between broker and pipeline, the broker may still hold the device's
messages. The evidence is the ingest log's newest *watermark* the dataflow has
read (see :mod:`fieldline_pipeline.connectors.intake`): a marker the intake
published at ``sent_ms`` came back through the broker after every message the
broker held for it at ``sent_ms``, and those are in the log before it. So "now"
is the newest watermark read from the log:

* deterministic: a replay from any offset sees the same watermarks at the same
  places, so it closes the same windows;
* frozen while the intake is down, frozen, disconnected or partitioned from the
  broker, and across a pipeline downtime until the backlog has been logged;
* behind the wall clock by a marker's round trip (about a second) when all is well.

Before a log has any watermark (a new or upgraded log), "now" is just before
the first message the dataflow read, which closes nothing.

Silence is counted only while the pipeline could hear the devices: each
watermark also carries ``pause_ms``, the time up to it in which no marker came
back (the pipeline down, frozen or cut off, or the broker down) plus the time
devices need after such a gap to reconnect (see
:func:`fieldline_pipeline.ingest_log.pause_of_gap`). "Now" and a message's time
for idle closing are both *ingest time*: wall time less the pause before it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass


def wall_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class _Part:
    watermark_ms: int | None = None
    pause_ms: int = 0
    floor_ms: int | None = None
    next_offset: int = 0


class IngestClock:
    """Process-wide; every source partition of the process reports its reads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._parts: dict[str, _Part] = {}

    def observe(
        self,
        part: str,
        watermark_ms: int | None,
        next_offset: int = 0,
        floor_ms: int | None = None,
        pause_ms: int = 0,
    ) -> None:
        """A partition has read every log offset below ``next_offset``.

        ``watermark_ms`` is the newest watermark among them (wall time), and
        ``pause_ms`` the pause recorded with it; ``floor_ms`` a time
        no device of the partition can have been last seen before (used only
        while there is no watermark).
        """
        with self._lock:
            p = self._parts.setdefault(part, _Part())
            if watermark_ms is not None:
                p.watermark_ms = max(watermark_ms, p.watermark_ms or watermark_ms)
                p.pause_ms = max(pause_ms, p.pause_ms)
            if floor_ms is not None and p.floor_ms is None:
                p.floor_ms = floor_ms
            p.next_offset = next_offset

    def next_offsets(self) -> dict[str, int]:
        """Per partition, the next log offset the dataflow will read (progress)."""
        with self._lock:
            return {name: p.next_offset for name, p in self._parts.items()}

    def watermark_ms(self) -> int | None:
        """The earliest of the partitions' watermarks; None until each has one."""
        with self._lock:
            marks = [p.watermark_ms for p in self._parts.values()]
        if not marks or any(m is None for m in marks):
            return None
        return min(m for m in marks if m is not None)

    def now_ms(self) -> int:
        """The watermark in ingest time (less its pause); before there is one, a
        time that closes nothing (see module doc)."""
        with self._lock:
            values = [
                p.watermark_ms - p.pause_ms if p.watermark_ms is not None else p.floor_ms
                for p in self._parts.values()
            ]
        known = [v for v in values if v is not None]
        # 0 only before anything was read, when no device has open windows yet
        # except ones restored from a snapshot, which must not close on no evidence.
        return min(known) if known and len(known) == len(values) else 0


class WallClock(IngestClock):
    """The wall clock, for sources without a backlog notion (tests, direct MQTT)."""

    def now_ms(self) -> int:
        return wall_ms()
