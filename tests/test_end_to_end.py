"""Simulator → Mosquitto → pipeline → InfluxDB, compared exactly with the ground truth."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from groundtruth_check import assert_windows_match_ground_truth

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000


def test_every_window_in_influxdb_equals_the_ground_truth(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any, tmp_path: Path
) -> None:
    pipeline = start_pipeline("--window-s", "1", "--lateness-s", "1")
    site = f"e2e-{secrets.token_hex(3)}"
    gt = tmp_path / "gt"
    sim = subprocess.run(
        fieldline(
            "sim", "run", "--broker", mosquitto.url, "--site", site, "--devices", "6",
            "--rate-hz", "20", "--batch-size", "7", "--duration-s", "4", "--seed", "7",
            "--ground-truth", str(gt), "--instance", f"sim-{site}",
        ),
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr.decode()[-3000:]
    summary = json.loads((gt / "summary.json").read_text())
    assert summary["unacked_messages"] == 0
    published = summary["published_readings"]
    assert published > 6 * 2 * 20 * 3  # devices x sensors x rate x most of the duration

    assert pipeline.wait_readings(published), pipeline.log_text()[-3000:]
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    final = pipeline.metrics()
    assert final.get("done") is True
    assert final["late_readings"] == 0
    assert final["dead_letters"] == 0

    assert assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS) == published
