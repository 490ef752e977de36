"""A faulty scenario fleet → Mosquitto → pipeline → InfluxDB, exactly as its ground truth,
with either telemetry schema on the wire."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from groundtruth_check import assert_windows_match_ground_truth

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000
SCENARIO = """
start = "now"
duration_s = 20

[[devices]]
prefix = "gh"
count = 20
rate_hz = 5
sensors = ["temperature", "humidity", "battery"]
samples_per_message = 2

[[faults]]
kind = "spike"
count = 10

[[faults]]
kind = "stuck"
count = 3
duration_s = [2, 5]

[[faults]]
kind = "dropout"
count = 3
duration_s = [1, 3]

[[faults]]
kind = "duplicate"
count = 4
duration_s = [1, 2]
"""


@pytest.mark.parametrize("schema", [contract.SCHEMA_TELEMETRY_V1, contract.SCHEMA_TELEMETRY_V2])
def test_a_faulty_fleet_lands_exactly_in_influxdb(
    schema: str,
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    influx_db: str,
    start_pipeline: Any,
    subscribe: Callable[[str, list[str]], Any],
    tmp_path: Path,
) -> None:
    pipeline = start_pipeline("--window-s", "1", "--lateness-s", "1")
    site = f"simpipe-{secrets.token_hex(3)}"
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'site = "{site}"\nseed = 4\n' + SCENARIO)
    gt = tmp_path / "gt"
    wire = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    sim = subprocess.run(
        fieldline(
            "sim", "fleet", str(scenario), "--broker", mosquitto.url, "--speed", "0",
            "--ground-truth", str(gt), "--labels", str(tmp_path / "labels.jsonl"), "--quiet",
            "--schema", schema[-1],
        ),
        capture_output=True, text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-3000:]
    report = json.loads(sim.stdout)
    assert report["unacked"] == 0
    assert report["duplicates"] > 0
    summary = json.loads((gt / "summary.json").read_text())
    published = summary["published_readings"]
    assert published == report["readings"]
    assert summary["dropped_readings"] > 0
    assert published + summary["dropped_readings"] == 20 * 3 * 5 * 20

    # What went over the wire is in the schema asked for, every message of it.
    sent = report["messages"] + report["duplicates"]
    msgs = wire.wait_for(lambda ms: len(ms) >= sent)
    assert {contract.decode_telemetry(m.topic, m.payload).schema for m in msgs} == {schema}

    assert pipeline.wait_readings(published), pipeline.log_text()[-3000:]
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    final = pipeline.metrics()
    assert final["late_readings"] == 0
    assert final["dead_letters"] == 0
    assert final["duplicates"] == report["duplicates"]  # the same seq: dropped, counted
    stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS, site=site)
    assert stored == published
