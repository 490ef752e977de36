"""A fleet sending fieldline.telemetry/2 → Mosquitto → pipeline → InfluxDB, exactly as its ground
truth (the same end to end as test_sim_pipeline.py, with the columnar schema on the wire)."""

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
duration_s = 15

[[devices]]
prefix = "v2"
count = 8
rate_hz = 4
sensors = ["temperature", "humidity", "battery"]
samples_per_message = 5

[[faults]]
kind = "spike"
count = 6

[[faults]]
kind = "duplicate"
count = 3
duration_s = [1, 3]
"""


def test_a_fleet_on_schema_2_lands_exactly_in_influxdb(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    influx_db: str,
    start_pipeline: Any,
    subscribe: Callable[[str, list[str]], Any],
    tmp_path: Path,
) -> None:
    pipeline = start_pipeline("--window-s", "1", "--lateness-s", "1")
    site = f"tv2-{secrets.token_hex(3)}"
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'site = "{site}"\nseed = 11\n' + SCENARIO)
    gt = tmp_path / "gt"
    wire = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    sim = subprocess.run(
        fieldline(
            "sim", "fleet", str(scenario), "--broker", mosquitto.url, "--speed", "0",
            "--ground-truth", str(gt), "--schema", "2", "--quiet",
        ),
        capture_output=True, text=True, timeout=180, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-3000:]
    report = json.loads(sim.stdout)
    assert report["unacked"] == 0
    assert report["duplicates"] > 0
    summary = json.loads((gt / "summary.json").read_text())
    published = summary["published_readings"]
    assert published == report["readings"] == 8 * 3 * 4 * 15

    # What went over the wire is version 2, every message of it.
    sent = report["messages"] + report["duplicates"]
    msgs = wire.wait_for(lambda ms: len(ms) >= sent)
    schemas = {contract.decode_telemetry(m.topic, m.payload).schema for m in msgs}
    assert schemas == {contract.SCHEMA_TELEMETRY_V2}

    assert pipeline.wait_readings(published), pipeline.log_text()[-3000:]
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    final = pipeline.metrics()
    assert final["dead_letters"] == 0
    assert final["late_readings"] == 0
    assert final["duplicates"] == report["duplicates"]  # the same seq: dropped, counted
    stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS, site=site)
    assert stored == published
