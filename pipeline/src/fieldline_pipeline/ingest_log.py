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
"""


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
        # AUTOINCREMENT-like guarantee without its cost: remember the highest
        # offset ever written, so truncating the tail can never reuse an offset.
        row = self._db.execute("SELECT value FROM meta WHERE key='high'").fetchone()
        self._high = max(row[0] if row else 0, self._max_offset())

    def _max_offset(self) -> int:
        row = self._db.execute("SELECT max(offset) FROM log").fetchone()
        return int(row[0] or 0)

    def append(self, entries: Sequence[tuple[str, bytes, int]]) -> int:
        """Append ``(topic, payload, received_ms)`` rows in one durable transaction.

        Returns the offset of the last row. When this returns, the rows are on disk.
        """
        if not entries:
            return self._high
        with self._lock:
            start = self._high + 1
            rows = [(start + i, t, p, r) for i, (t, p, r) in enumerate(entries)]
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT INTO log VALUES (?, ?, ?, ?)", rows)
                self._high = start + len(rows) - 1
                self._db.execute(
                    "INSERT INTO meta VALUES ('high', ?) ON CONFLICT(key) DO UPDATE "
                    "SET value=excluded.value",
                    (self._high,),
                )
                self._db.execute("COMMIT")
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
        ``older_than_ms``); returns how many were deleted."""
        with self._lock:
            if older_than_ms is None:
                cur = self._db.execute("DELETE FROM log WHERE offset < ?", (below_offset,))
            else:
                cur = self._db.execute(
                    "DELETE FROM log WHERE offset < ? AND received_ms < ?",
                    (below_offset, older_than_ms),
                )
            return cur.rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM log").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()


def now_ms() -> int:
    return int(time.time() * 1000)
