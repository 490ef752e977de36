"""The ingest log: MQTT messages made durable on the pipeline's side, read by offset.

An append-only SQLite table per pipeline process. The intake appends what the
broker delivers and acknowledges it only after the transaction has committed;
the dataflow reads the log by offset the way Bytewax's Kafka source reads a
topic partition, and its snapshot is the next offset to read. After a crash,
Bytewax resumes from the last snapshot and re-reads the log from there, so no
acknowledged message is lost, and the idempotent InfluxDB sink rewrites the
same windows with the same values.

Durability: WAL journal. ``sync="full"`` fsyncs every commit (survives power
loss); ``sync="normal"`` survives a crash of the process but not of the machine.
Commits are batched (group commit), so one fsync covers many messages.

Retention: entries are deleted once they are older than ``retention_s`` *and*
below the offset the dataflow has snapshotted, so the log also serves as a
replayable record of recent input.

Watermarks: beside the messages, the log records the intake's broker round
trips (see :mod:`fieldline_pipeline.connectors.intake`). A watermark
``(after, sent_ms)`` says: every message the broker held for this session at
``sent_ms`` is at an offset ``<= after``. They live in a table of their own, so
offsets keep counting messages only, and are ordered with the messages by
``after``, so a replay from any offset sees them at the same places.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

#: Rows read per call of :meth:`IngestLog.read`.
READ_BATCH = 2_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log (
    offset INTEGER PRIMARY KEY,   -- rowid: monotonically increasing, never reused
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
CREATE TABLE IF NOT EXISTS watermark (
    after INTEGER PRIMARY KEY,    -- the newest message offset at the time it was appended
    sent_ms INTEGER NOT NULL,     -- wall time at which the marker was published
    pause_ms INTEGER NOT NULL DEFAULT 0,  -- time not counted as silence, up to this one
    grace_ms INTEGER NOT NULL DEFAULT 0   -- reconnection grace left after this one
) STRICT;
"""

#: Markers normally come back about a second apart. The part of a gap between
#: two watermarks beyond this is time in which the pipeline heard nothing from
#: the broker: it was down, frozen or cut off, or the broker itself was down.
HEARD_GAP_MS = 2_000
#: After such deaf time, devices need time to reconnect: their clients back off
#: exponentially (the edge agent up to 60 s), so a device may first retry as
#: late as twice the outage after it lost its connection, while the pipeline may
#: have come back at any point of that. The clock stands still for twice the
#: deaf time, at most this long.
RECONNECT_GRACE_MAX_MS = 120_000


def pause_of_gap(gap_ms: int, grace_ms: int) -> tuple[int, int]:
    """Of a gap between two watermarks, the time not counted as devices' silence,
    and the grace left after it (``grace_ms`` is the grace left before it).

    The pause never exceeds the gap, so the ingest clock never goes back.
    """
    deaf = max(0, gap_ms - HEARD_GAP_MS)
    used = min(gap_ms - deaf, grace_ms)
    left = grace_ms - used
    if deaf:
        left = max(left, min(2 * deaf, RECONNECT_GRACE_MAX_MS))
    return deaf + used, left


#: The topic of a watermark in :meth:`IngestLog.append`'s input. It contains
#: U+0000, which MQTT forbids in topic names (MQTT 3.1.1 §4.7.3), so no message
#: can carry it; it is stored in the ``watermark`` table, never as a message.
WATERMARK_TOPIC = "\x00watermark"


class LogEntry(NamedTuple):
    offset: int
    topic: str
    payload: bytes
    received_ms: int


class IngestLog:
    """One log file; safe to share between the intake thread and a reader thread."""

    def __init__(self, path: str | Path, sync: str = "full") -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"ingest log sync must be 'full' or 'normal', got {sync!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={sync.upper()}")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(watermark)")}
        for column in ("pause_ms", "grace_ms"):  # a log written before pauses were kept
            if column not in columns:
                self._db.execute(
                    f"ALTER TABLE watermark ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
                )
        # AUTOINCREMENT-like guarantee without its cost: remember the highest
        # offset ever written, so truncating the tail can never reuse an offset.
        row = self._db.execute("SELECT value FROM meta WHERE key='high'").fetchone()
        self._high = max(row[0] if row else 0, self._max_offset())
        # Watermarks never go back, even should the wall clock step back.
        row = self._db.execute(
            "SELECT sent_ms, pause_ms, grace_ms FROM watermark ORDER BY after DESC LIMIT 1"
        ).fetchone()
        last: tuple[int, int, int] = tuple(row) if row is not None else (0, 0, 0)
        self._watermark, self._pause, self._grace = last

    def _max_offset(self) -> int:
        row = self._db.execute("SELECT max(offset) FROM log").fetchone()
        return int(row[0] or 0)

    def append(self, entries: Sequence[tuple[str, bytes, int]]) -> int:
        """Append ``(topic, payload, received_ms)`` rows in one durable transaction.

        A row whose topic is :data:`WATERMARK_TOPIC` is a watermark, its
        ``received_ms`` the marker's send time: it is recorded after the
        messages before it in ``entries``. Returns the offset of the last
        message. When this returns, the rows are on disk.
        """
        if not entries:
            return self._high
        with self._lock:
            start = self._high + 1
            rows: list[tuple[int, str, bytes, int]] = []
            marks: list[tuple[int, int, int, int]] = []
            watermark, pause, grace = self._watermark, self._pause, self._grace
            for t, p, r in entries:
                if t == WATERMARK_TOPIC:
                    if watermark and r > watermark:  # the first ever has no gap before it
                        unheard, grace = pause_of_gap(r - watermark, grace)
                        pause += unheard
                    watermark = max(watermark, r)
                    marks.append((start + len(rows) - 1, watermark, pause, grace))
                else:
                    rows.append((start + len(rows), t, p, r))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", rows)
                self._db.executemany(
                    "INSERT INTO watermark VALUES (?, ?, ?, ?) ON CONFLICT(after) DO UPDATE "
                    "SET sent_ms=excluded.sent_ms, pause_ms=excluded.pause_ms, "
                    "grace_ms=excluded.grace_ms",
                    marks,
                )
                self._high = start + len(rows) - 1
                self._db.execute(
                    "INSERT INTO meta VALUES ('high', ?) ON CONFLICT(key) DO UPDATE "
                    "SET value=excluded.value",
                    (self._high,),
                )
                self._db.execute("COMMIT")
                self._watermark, self._pause, self._grace = watermark, pause, grace
            except BaseException:
                self._db.execute("ROLLBACK")
                self._high = start - 1
                raise
            return self._high

    def read(self, from_offset: int, limit: int = READ_BATCH) -> list[LogEntry]:
        """Entries with ``offset >= from_offset``, oldest first."""
        with self._lock:
            cur = self._db.execute(
                "SELECT offset, topic, payload, received_ms FROM log WHERE offset >= ? "
                "ORDER BY offset LIMIT ?",
                (from_offset, limit),
            )
            return [LogEntry(*row) for row in cur.fetchall()]

    def watermark_at(self, next_offset: int) -> tuple[int, int] | None:
        """The newest watermark a reader that has read every offset below
        ``next_offset`` has passed, as ``(sent_ms, pause_ms)``, or None if there is none."""
        with self._lock:
            row = self._db.execute(
                "SELECT sent_ms, pause_ms FROM watermark WHERE after < ? "
                "ORDER BY after DESC LIMIT 1",
                (next_offset,),
            ).fetchone()
            return None if row is None else (int(row[0]), int(row[1]))

    def pauses(self, first: int, last: int) -> list[tuple[int, int]]:
        """``(after, pause_ms)`` of the watermarks that messages ``first..last`` follow:
        the newest one before ``first`` and those between, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT after, pause_ms FROM watermark WHERE after < ? AND after >= "
                "(SELECT coalesce(max(after), -1) FROM watermark WHERE after < ?) "
                "ORDER BY after",
                (last, first),
            ).fetchall()
            return [(int(a), int(p)) for a, p in rows]

    def received_before(self, offset: int) -> int | None:
        """``received_ms`` of the newest message below ``offset`` still in the log."""
        with self._lock:
            row = self._db.execute(
                "SELECT received_ms FROM log WHERE offset < ? ORDER BY offset DESC LIMIT 1",
                (offset,),
            ).fetchone()
            return None if row is None else int(row[0])

    def newest_offset(self) -> int:
        """Offset of the newest entry in the file, whichever process wrote it."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key='high'").fetchone()
            return max(row[0] if row else 0, self._max_offset())

    @property
    def high(self) -> int:
        """Offset of the newest entry ever appended (0 when empty)."""
        return self._high

    def truncate(self, below_offset: int, older_than_ms: int | None = None) -> int:
        """Delete entries below ``below_offset`` (and, if given, received before
        ``older_than_ms``); returns how many were deleted.

        Watermarks go by the same rule, except the newest one below
        ``below_offset``: a reader resuming there takes its clock from it.
        """
        older = older_than_ms if older_than_ms is not None else 2**62
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM log WHERE offset < ? AND received_ms < ?", (below_offset, older)
            )
            deleted = cur.rowcount
            self._db.execute(
                "DELETE FROM watermark WHERE sent_ms < ? AND after < "
                "(SELECT max(after) FROM watermark WHERE after < ?)",
                (older, below_offset),
            )
            return deleted

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM log").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def now_ms() -> int:
    return int(time.time() * 1000)
