"""The intake runs in a child process: it dies with the pipeline, and the pipeline
stops with an error when the intake dies on its own."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(c) for c in text)
    return found


def intake_child(pid: int) -> int:
    """The pipeline's intake: the child running multiprocessing's spawn_main."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in children(pid):
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            if b"spawn_main" in cmd:
                return child
        time.sleep(0.1)
    raise AssertionError(f"no intake child under pid {pid}")


def gone(pid: int, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
        except FileNotFoundError:
            return True
        if state == "Z":  # exited, not yet reaped
            return True
        time.sleep(0.1)
    return False


def test_the_intake_dies_with_a_killed_pipeline(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    pipeline = start_pipeline()
    child = intake_child(pipeline.proc.pid)
    pipeline.kill()
    # Left behind, it would keep the broker session the next start takes over.
    assert gone(child), f"intake {child} outlived its pipeline"


def test_the_pipeline_stops_with_an_error_when_its_intake_dies(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    pipeline = start_pipeline()
    child = intake_child(pipeline.proc.pid)
    os.kill(child, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while pipeline.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pipeline.proc.returncode == 1, pipeline.log_text()[-3000:]
    assert "the MQTT intake exited" in pipeline.log_text()
