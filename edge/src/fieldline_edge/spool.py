"""The agent's store-and-forward spool: telemetry messages on disk until the broker has them.

Every batch of readings is encoded as a telemetry message with its ``seq`` and
written here *before* it is published; it is deleted only when the broker's
PUBACK for it arrives (QoS 1). So a broker outage, a network cut, a kill -9 or
a power loss at any moment loses nothing that was spooled; the worst case is a
message published twice, which consumers drop by ``(device, seq)``.

Durability: SQLite in WAL mode. With ``sync="full"`` (the default) every commit
is fsynced before :meth:`Spool.append` returns, so an appended batch survives a
power loss. ``sync="normal"`` fsyncs only at WAL checkpoints: fewer writes to
an SD card, but the last commits (up to a checkpoint, ~1000 pages) may be lost
on power loss (never on a crash of the process); the database stays consistent
either way.

Capacity: the payloads are capped at ``max_bytes``. When a new batch would pass
the cap, the *oldest* batches are dropped, counted (``dropped_readings``,
persisted) and logged: a full spool keeps the most recent data.

Schema: each batch is stored encoded, in the telemetry schema the agent was
configured with when it was appended (``agent.telemetry_schema``), and published
byte for byte as stored. A change of the setting applies to new batches only:
what is already spooled goes out in the schema it was written in, so the bytes
on disk are exactly the bytes on the wire and nothing is re-encoded after a
restart.

``seq`` is allocated here, under the same commit as the batch, from a counter
stored in the file: it never goes back across restarts, and it starts at least
at :func:`fieldline_edge.contract.initial_seq` (the time in ms) so that a device
whose spool was wiped still counts upwards.

Unit of parallelism: one spool per device, used from one thread.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from typing import Iterable, NamedTuple, Optional, Sequence

from fieldline_edge import contract
from fieldline_edge.contract import Reading

log = logging.getLogger(__name__)

MEMORY = ":memory:"
#: Bytes the WAL file is truncated to after a checkpoint.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
#: How long a write waits for a lock held by another process (e.g. a backup).
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    payload BLOB NOT NULL,
    readings INTEGER NOT NULL,
    added_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class SpoolError(Exception):
    """The spool cannot be used (unwritable, belongs to another device)."""


class Spooled(NamedTuple):
    seq: int
    payload: bytes
    readings: int


class Spool:
    """Pending telemetry of ``device``, oldest first (see the module docstring)."""

    def __init__(
        self,
        path: str,
        device: str,
        *,
        max_bytes: int = 64 * 2**20,
        sync: str = "full",
    ) -> None:
        if sync not in ("full", "normal"):
            raise ValueError(f"sync must be 'full' or 'normal', got {sync!r}")
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.path = path
        self.device = device
        self.max_bytes = max_bytes
        self.durable = path != MEMORY
        #: The lowest seq the next append may take (see :meth:`append`); reset once used.
        self.seq_floor: Optional[int] = None
        try:
            self._db = self._open(path, sync)
        except sqlite3.DatabaseError as exc:
            if not self.durable or not os.path.exists(path):
                raise SpoolError(f"cannot open spool {path}: {exc}") from None
            # A damaged file must not stop the device from collecting: keep it
            # aside for inspection and start a new one.
            aside = f"{path}.damaged-{int(time.time())}"
            log.error("spool %s is damaged (%s); moved to %s, starting afresh", path, exc, aside)
            os.replace(path, aside)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.replace(path + suffix, aside + suffix)
            self._db = self._open(path, sync)
        owner = self._meta("device")
        pending = self._db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        if owner is not None and owner != device and pending:
            self._db.close()
            raise SpoolError(
                f"spool {path} holds {pending} messages of device {owner!r}, not {device!r}:"
                " deliver them with that device id, or move the file away"
            )
        with self._db:
            self._set_meta("device", device)
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0), COALESCE(SUM(readings), 0),"
            " MAX(seq) FROM batches"
        ).fetchone()
        self.pending_batches: int = row[0]
        self.pending_bytes: int = row[1]
        self.pending_readings: int = row[2]
        last = max(int(self._meta("last_seq") or -1), -1 if row[3] is None else row[3])
        self._last_seq = last
        # The first append after opening starts at least at the time in ms, so
        # a device whose spool was lost still counts upwards; later ones add 1.
        self._floor_pending = True
        self.dropped_readings = int(self._meta("dropped_readings") or 0)
        self.dropped_batches = int(self._meta("dropped_batches") or 0)

    @staticmethod
    def _open(path: str, sync: str) -> sqlite3.Connection:
        if path != MEMORY:
            parent = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as exc:
                raise SpoolError(f"cannot create {parent}: {exc.strerror or exc}") from None
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as exc:
            raise SpoolError(f"cannot open spool {path}: {exc}") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if path != MEMORY:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise SpoolError(f"spool {path}: WAL mode not available ({mode})")
            db.execute(f"PRAGMA synchronous = {sync.upper()}")
            db.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
            db.executescript(_SCHEMA)
        except sqlite3.OperationalError as exc:
            db.close()
            raise SpoolError(f"cannot use spool {path}: {exc}") from None
        except BaseException:
            db.close()
            raise
        return db

    def _meta(self, key: str) -> Optional[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: object) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, str(value))
        )

    @property
    def last_seq(self) -> int:
        """The ``seq`` of the last batch appended (-1 if none ever was)."""
        return self._last_seq

    def append(
        self,
        readings: Sequence[Reading],
        now_ms: int,
        schema: str = contract.SCHEMA_TELEMETRY_V1,
    ) -> int:
        """Encode ``readings`` as the next telemetry message and store it durably; return its seq.

        ``now_ms`` is a sane wall-clock time (it floors the first ``seq``);
        ``schema`` is one of :data:`~fieldline_edge.contract.TELEMETRY_SCHEMAS`.
        Drops the oldest batches if the spool is over its cap afterwards.
        """
        if not readings:
            raise ValueError("a batch needs at least one reading")
        if self._floor_pending:
            floor = self.seq_floor
            seq = max(
                self._last_seq + 1,
                contract.initial_seq(now_ms / 1000.0) if floor is None else floor,
            )
        else:
            seq = self._last_seq + 1
        payload = contract.encode_telemetry(self.device, seq, list(readings), schema)
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO batches (seq, payload, readings, added_ms) VALUES (?, ?, ?, ?)",
                (seq, payload, len(readings), now_ms),
            )
            self._set_meta("last_seq", seq)
            dropped = self._enforce_cap(seq, len(payload))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._last_seq = seq
        self._floor_pending = False
        self.pending_batches += 1 - dropped[0]
        self.pending_bytes += len(payload) - dropped[1]
        self.pending_readings += len(readings) - dropped[2]
        if dropped[0]:
            self.dropped_batches += dropped[0]
            self.dropped_readings += dropped[2]
            log.error(
                "spool full (%d bytes cap): dropped the %d oldest messages (%d readings);"
                " %d readings dropped so far",
                self.max_bytes,
                dropped[0],
                dropped[2],
                self.dropped_readings,
            )
        return seq

    def _enforce_cap(self, new_seq: int, new_bytes: int) -> tuple[int, int, int]:
        """Delete the oldest rows until the payloads fit; return (batches, bytes, readings)."""
        excess = self.pending_bytes + new_bytes - self.max_bytes
        if excess <= 0:
            return (0, 0, 0)
        victims: list[tuple[int, int, int]] = []
        freed = 0
        # Never the batch just added: a cap smaller than one message keeps that one.
        for seq, size, count in self._db.execute(
            "SELECT seq, length(payload), readings FROM batches WHERE seq < ? ORDER BY seq",
            (new_seq,),
        ):
            if freed >= excess:
                break
            victims.append((seq, size, count))
            freed += size
        if not victims:
            return (0, 0, 0)
        last = victims[-1][0]
        self._db.execute("DELETE FROM batches WHERE seq <= ?", (last,))
        dropped = (len(victims), freed, sum(v[2] for v in victims))
        self._set_meta("dropped_batches", self.dropped_batches + dropped[0])
        self._set_meta("dropped_readings", self.dropped_readings + dropped[2])
        return dropped

    def peek(self, after_seq: int, limit: int) -> list[Spooled]:
        """Up to ``limit`` pending messages with ``seq > after_seq``, oldest first."""
        rows = self._db.execute(
            "SELECT seq, payload, readings FROM batches WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
        return [Spooled(seq, bytes(payload), n) for seq, payload, n in rows]

    def delete(self, seqs: Iterable[int]) -> int:
        """Forget delivered messages (unknown seqs are ignored); return how many went."""
        keys = sorted(set(seqs))
        if not keys:
            return 0
        db = self._db
        gone = size_gone = readings_gone = 0
        db.execute("BEGIN IMMEDIATE")
        try:
            for i in range(0, len(keys), 500):  # SQLite's bound-parameter limit
                chunk = keys[i : i + 500]
                marks = ",".join("?" * len(chunk))
                for size, count in db.execute(
                    f"SELECT length(payload), readings FROM batches WHERE seq IN ({marks})", chunk
                ).fetchall():
                    gone += 1
                    size_gone += size
                    readings_gone += count
                db.execute(f"DELETE FROM batches WHERE seq IN ({marks})", chunk)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self.pending_batches -= gone
        self.pending_bytes -= size_gone
        self.pending_readings -= readings_gone
        return gone

    def close(self) -> None:
        self._db.close()
