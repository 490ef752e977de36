"""A device whose clock runs hours ahead is dead-lettered and counted; one a little
ahead only moves its own windows; every other device's windows stay exact."""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.contract import Reading, encode_telemetry, telemetry_topic
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from groundtruth_check import assert_windows_match_ground_truth
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000
HOURS_AHEAD_MS = 3 * 3600 * 1000
MINUTE_AHEAD_MS = 60 * 1000


def test_skewed_clocks_do_not_make_other_devices_late(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any, tmp_path: Path
) -> None:
    pipeline = start_pipeline("--window-s", "1", "--lateness-s", "1", "--max-future-s", "300")
    site = f"skew-{secrets.token_hex(3)}"
    gt = tmp_path / "gt"
    sim = subprocess.Popen(
        fieldline(
            "sim", "run", "--broker", mosquitto.url, "--site", site, "--devices", "4",
            "--rate-hz", "20", "--batch-size", "5", "--duration-s", "5", "--seed", "9",
            "--ground-truth", str(gt), "--instance", f"sim-{site}",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"skewed-{site}")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    skewed_site = f"{site}-skewed"
    far, near = 0, 0
    try:
        for seq in range(20):
            now = int(time.time() * 1000)
            for device, ahead in (("far-ahead", HOURS_AHEAD_MS), ("near-ahead", MINUTE_AHEAD_MS)):
                readings = [
                    Reading("temperature", now + ahead + k, 20.0 + k, "°C") for k in range(5)
                ]
                pub.publish(
                    telemetry_topic(skewed_site, device),
                    encode_telemetry(device, seq, readings),
                    qos=1,
                ).wait_for_publish(10)
            far, near = far + 1, near + 5
            time.sleep(0.2)
    finally:
        pub.disconnect()
        pub.loop_stop()
    _, err = sim.communicate(timeout=120)
    assert sim.returncode == 0, err.decode()[-2000:]
    summary = json.loads((gt / "summary.json").read_text())
    assert pipeline.wait_readings(summary["published_readings"] + near), pipeline.log_text()[-3000:]
    assert pipeline.stop() == 0
    final = pipeline.metrics()
    assert final["dead_letters_by_reason"] == {"future_timestamp": far}
    assert final["late_readings"] == 0
    # The devices with sane clocks: exact, unaffected by the others' clocks.
    stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS, site=site)
    assert stored == summary["published_readings"]
    res = influxdb.query(
        'SELECT sum("count") FROM reading_window WHERE site = '
        + f"'{skewed_site}' GROUP BY device",
        db=influx_db,
    )
    counts = {s["tags"]["device"]: s["values"][0][1] for s in res["results"][0]["series"]}
    assert counts == {"near-ahead": near}  # a minute ahead is within tolerance: kept
