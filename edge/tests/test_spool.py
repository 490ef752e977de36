"""The SQLite spool: durable, ordered, capped, and seq never goes back."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fieldline_edge import contract
from fieldline_edge.contract import Reading
from fieldline_edge.spool import Spool, SpoolError

NOW_MS = 1_764_253_800_000


def readings(n: int, start: int = 0) -> list[Reading]:
    return [Reading("t", NOW_MS + start + i, float(start + i), "°C") for i in range(n)]


def test_append_peek_delete_in_order(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path / "s.db"), "dev-1")
    seqs = [spool.append(readings(2, 10 * i), NOW_MS) for i in range(5)]
    assert seqs == list(range(NOW_MS, NOW_MS + 5))  # starts at the time in ms, then +1
    assert (spool.pending_batches, spool.pending_readings) == (5, 10)
    first = spool.peek(-1, 3)
    assert [m.seq for m in first] == seqs[:3]
    msg = contract.decode_telemetry(contract.telemetry_topic("s", "dev-1"), first[0].payload)
    assert (msg.device, msg.seq, msg.readings) == ("dev-1", seqs[0], readings(2))
    assert [m.seq for m in spool.peek(seqs[2], 10)] == seqs[3:]
    assert spool.delete([seqs[1], seqs[0], 12345]) == 2
    assert [m.seq for m in spool.peek(-1, 10)] == seqs[2:]
    assert (spool.pending_batches, spool.pending_readings) == (3, 6)
    spool.close()


def test_everything_survives_a_reopen_and_seq_continues(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    spool = Spool(path, "dev-1")
    seqs = [spool.append(readings(1, i), NOW_MS) for i in range(3)]
    spool.delete([seqs[0]])
    spool.close()
    again = Spool(path, "dev-1")
    assert [m.seq for m in again.peek(-1, 10)] == seqs[1:]
    assert again.pending_bytes == sum(len(m.payload) for m in again.peek(-1, 10))
    # A clock that went back cannot make seq go back.
    assert again.append(readings(1), NOW_MS - 3_600_000) == seqs[-1] + 1
    again.delete(m.seq for m in again.peek(-1, 10))
    again.close()
    # Even with nothing pending, the counter is remembered.
    third = Spool(path, "dev-1")
    assert third.append(readings(1), NOW_MS - 10) == seqs[-1] + 2
    third.close()


def test_a_full_spool_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    one = len(contract.encode_telemetry("dev-1", NOW_MS, readings(10)))
    spool = Spool(path, "dev-1", max_bytes=one * 3 + one // 2)
    seqs = [spool.append(readings(10, 100 * i), NOW_MS) for i in range(5)]
    assert [m.seq for m in spool.peek(-1, 10)] == seqs[2:]
    assert (spool.dropped_batches, spool.dropped_readings) == (2, 20)
    assert spool.pending_bytes <= spool.max_bytes
    spool.close()
    assert Spool(path, "dev-1").dropped_readings == 20  # the count is persisted


def test_a_spool_of_another_device_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    spool = Spool(path, "dev-1")
    spool.append(readings(1), NOW_MS)
    spool.close()
    with pytest.raises(SpoolError, match="holds 1 messages of device 'dev-1', not 'dev-2'"):
        Spool(path, "dev-2")


def test_a_damaged_file_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not an SQLite database" * 100)
    spool = Spool(str(path), "dev-1")
    assert spool.append(readings(1), NOW_MS) == NOW_MS
    spool.close()
    aside = [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")


def test_the_file_is_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    Spool(path, "dev-1").close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    with pytest.raises(SpoolError, match="cannot create"):
        Spool("/proc/nope/s.db", "dev-1")
