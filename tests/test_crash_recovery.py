"""kill -9 the pipeline at random moments while devices keep publishing: nothing is
lost, nothing is counted twice."""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from groundtruth_check import assert_windows_match_ground_truth

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000
SIM_SECONDS = 12
KILLS = 3


def caught_up(pipeline: Any, messages: int) -> bool:
    """The ingest log holds at least every published message and the dataflow has
    read all of it (offsets survive restarts, unlike counters)."""
    m = pipeline.metrics()
    high, nxt = int(m.get("log_high") or 0), int(m.get("log_next") or 0)
    return high >= messages and nxt > high


def test_kill_9_at_random_moments_loses_and_duplicates_nothing(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any, tmp_path: Path
) -> None:
    rng = random.Random(20261127)
    pipeline = start_pipeline("--window-s", "1", "--lateness-s", "1", "--idle-timeout-s", "60")
    site = f"crash-{secrets.token_hex(3)}"
    gt = tmp_path / "gt"
    sim = subprocess.Popen(
        fieldline(
            "sim", "run", "--broker", mosquitto.url, "--site", site, "--devices", "8",
            "--rate-hz", "25", "--batch-size", "5", "--duration-s", str(SIM_SECONDS),
            "--seed", "3", "--ground-truth", str(gt), "--instance", f"sim-{site}",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(1.0, 3.0))
            # Each start must still be running when it is killed: a pipeline that
            # exited on its own (a crash loop on replayed input) fails here.
            assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
            pipeline.kill()
            time.sleep(rng.uniform(0.2, 1.5))  # devices keep publishing meanwhile
            pipeline.restart()
        _, err = sim.communicate(timeout=120)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    assert sim.returncode == 0, err.decode()[-2000:]
    summary = json.loads((gt / "summary.json").read_text())
    assert summary["unacked_messages"] == 0

    assert pipeline.watch.wait_for(
        lambda _w: caught_up(pipeline, summary["published_messages"]), 120
    ), (pipeline.metrics(), pipeline.log_text()[-3000:])
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    assert "Traceback" not in pipeline.log_text()
    stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS)
    assert stored == summary["published_readings"]
