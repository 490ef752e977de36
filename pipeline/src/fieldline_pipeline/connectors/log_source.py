"""A Bytewax source that reads the ingest log by offset.

Unit of parallelism: one partition per ingest log file, i.e. per pipeline process
(``ingest-<process id>``). Each process lists only its own partition, so Bytewax
reads it on a worker of that process, where the file is.

Delivery guarantee: exactly-once reading of the log with Bytewax recovery. The
snapshot is the next offset to read; after a crash the dataflow resumes from the
last snapshot and reads on from there, as Bytewax's Kafka source does. Messages
after the resume epoch are read again and the windows they close are written
again with the same values (the InfluxDB sink overwrites the same points).

Time: the partition reports to the process's :class:`IngestClock` the newest
watermark among the offsets it has read (see :mod:`fieldline_pipeline.clock`),
so idle closing follows the log, not the wall clock.

Stopping: when ``stop`` is set (after the intake has committed its last
messages), each partition reads to the end of its log and then ends.
"""

from __future__ import annotations

import threading
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from fieldline_pipeline.clock import IngestClock, wall_ms
from fieldline_pipeline.connectors.mqtt import MqttMessage
from fieldline_pipeline.ingest_log import READ_BATCH, IngestLog

#: How long an idle partition waits before Bytewax polls it again.
IDLE_POLL_S = 0.005
#: Snapshots remembered per partition; the log is only truncated below the
#: oldest of them, since Bytewax may resume from any recent committed epoch.
SNAPSHOTS_KEPT = 20
#: Minimum time between truncations of the log.
TRUNCATE_EVERY_MS = 10_000


def partition_name(process_id: int) -> str:
    return f"ingest-{process_id}"


def log_path(log_dir: Path, part: str) -> Path:
    return log_dir / f"{part}.sqlite"


class _LogPartition(StatefulSourcePartition[MqttMessage, int]):
    def __init__(
        self,
        log: IngestLog,
        name: str,
        offset: int,
        clock: IngestClock,
        stop: threading.Event,
        retention_ms: int,
    ) -> None:
        self._log = log
        self._name = name
        self._offset = offset
        self._clock = clock
        self._stop = stop
        self._retention_ms = retention_ms
        self._full = False
        # Before the log has a watermark: nothing read can have been seen
        # before the message just below the resume offset, or on a fresh start
        # before the first message read (see IngestClock.now_ms).
        self._floor = log.received_before(offset)
        self._fresh = offset <= 1
        self._report()
        self._snapshots: deque[int] = deque(maxlen=SNAPSHOTS_KEPT)
        self._last_truncate_ms = 0

    def _report(self) -> None:
        mark = self._log.watermark_at(self._offset)
        if mark is None:
            self._clock.observe(self._name, None, self._offset, self._floor)
        else:
            self._clock.observe(self._name, mark[0], self._offset, self._floor, mark[1])

    def next_batch(self) -> list[MqttMessage]:
        entries = self._log.read(self._offset, READ_BATCH)
        self._full = len(entries) == READ_BATCH
        if not entries:
            self._report()  # a watermark may have come without messages
            if self._stop.is_set():
                raise StopIteration
            return []
        if self._floor is None and self._fresh:
            self._floor = entries[0].received_ms - 1
        self._offset = entries[-1].offset + 1
        self._report()
        # Each message's ingest time: its receive time less the pause recorded
        # with the newest watermark before it (see fieldline_pipeline.clock).
        pauses = self._log.pauses(entries[0].offset, entries[-1].offset)
        if not pauses or pauses[-1][0] < entries[0].offset:  # none inside the batch
            pause = pauses[-1][1] if pauses else 0
            return [
                MqttMessage(e.topic, e.payload, e.received_ms, e.received_ms - pause)
                for e in entries
            ]
        out: list[MqttMessage] = []
        i, pause = 0, 0
        for e in entries:
            while i < len(pauses) and pauses[i][0] < e.offset:
                pause = pauses[i][1]
                i += 1
            out.append(MqttMessage(e.topic, e.payload, e.received_ms, e.received_ms - pause))
        return out

    def next_awake(self) -> datetime | None:
        if self._full or self._stop.is_set():
            return None
        return datetime.now(timezone.utc) + timedelta(seconds=IDLE_POLL_S)

    def snapshot(self) -> int:
        self._snapshots.append(self._offset)
        now = wall_ms()
        if (
            len(self._snapshots) == SNAPSHOTS_KEPT
            and now - self._last_truncate_ms > TRUNCATE_EVERY_MS
        ):
            self._last_truncate_ms = now
            self._log.truncate(self._snapshots[0], older_than_ms=now - self._retention_ms)
        return self._offset

    def close(self) -> None:
        self._log.close()


class IngestLogSource(FixedPartitionedSource[MqttMessage, int]):
    """Reads this process's ingest log (see module doc)."""

    def __init__(
        self,
        log_dir: Path,
        process_id: int,
        clock: IngestClock,
        stop: threading.Event,
        retention_s: float = 3600.0,
        sync: str = "full",
    ) -> None:
        self._log_dir = log_dir
        self._part = partition_name(process_id)
        self._clock = clock
        self._stop = stop
        self._retention_ms = int(retention_s * 1000)
        self._sync = sync

    def list_parts(self) -> list[str]:
        return [self._part]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _LogPartition:
        log = IngestLog(log_path(self._log_dir, for_part), sync=self._sync)
        # Without a snapshot, start after what the log already held when it was
        # last truncated: offset 1 is the very beginning.
        return _LogPartition(
            log, for_part, resume_state or 1, self._clock, self._stop, self._retention_ms
        )
