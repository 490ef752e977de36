import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fieldline_pipeline.ingest_log import IngestLog


def test_append_read_by_offset(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log.db")
    assert log.high == 0
    last = log.append([("a", b"1", 10), ("b", b"2", 20)])
    assert last == 2
    assert log.append([("c", b"3", 30)]) == 3
    assert [(e.offset, e.topic, e.payload, e.received_ms) for e in log.read(2)] == [
        (2, "b", b"2", 20),
        (3, "c", b"3", 30),
    ]
    assert log.read(4) == []
    assert [e.offset for e in log.read(1, limit=1)] == [1]
    log.close()


def test_reopen_keeps_entries_and_never_reuses_offsets(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log.db")
    log.append([("a", b"1", 1), ("b", b"2", 2)])
    assert log.truncate(below_offset=3) == 2
    log.close()
    log = IngestLog(tmp_path / "log.db")
    assert log.high == 2
    assert log.append([("c", b"3", 3)]) == 3
    assert [e.offset for e in log.read(0)] == [3]
    log.close()


def test_truncate_keeps_recent_and_unread_entries(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log.db")
    log.append([("t", b"x", ms) for ms in (100, 200, 300, 400)])
    assert log.truncate(below_offset=4, older_than_ms=250) == 2  # offsets 1, 2
    assert [e.offset for e in log.read(0)] == [3, 4]
    log.close()


_APPEND_THEN_DIE = """
import os, signal, sys
from fieldline_pipeline.ingest_log import IngestLog
log = IngestLog(sys.argv[1])
log.append([("t", b"committed", 1)] * 100)
print("appended", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_appended_entries_survive_kill_9(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _APPEND_THEN_DIE, str(tmp_path / "log.db")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.stdout.strip() == "appended"
    assert proc.returncode == -signal.SIGKILL
    log = IngestLog(tmp_path / "log.db")
    assert log.count() == 100
    log.close()


def test_bad_sync_mode_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sync"):
        IngestLog(tmp_path / "x.db", sync="sometimes")
