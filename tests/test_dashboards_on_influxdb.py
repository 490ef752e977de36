"""Every dashboard panel's query, and every alert rule's, on data of a real pipeline run.

Simulator → Mosquitto → pipeline → InfluxDB 1.x, then each query is run the
way Grafana would send it (variables resolved by their own queries, then
substituted) and must answer without error, with rows, with its columns.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_dashboards.check import Check, check_all, http_query
from fieldline_dashboards.templating import TimeRange
from fieldline_edge.mqtt import parse_broker_url
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services, pytest.mark.e2e]

#: Long enough for the pipeline's metrics (written every 5 s) to fill several
#: 10 s buckets, which rates (non_negative_derivative) need.
SIM_SECONDS = "30"


def _publish_garbage(broker_url: str, site: str) -> int:
    """Messages the pipeline must dead-letter (the Dead letters panel needs some)."""
    b = parse_broker_url(broker_url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"garbage-{secrets.token_hex(3)}")
    client.connect(b.host, b.port)
    client.loop_start()
    try:
        payloads = [b"not json", b'{"schema": "nope"}', b"\xff\xfe"]
        for p in payloads:
            client.publish(f"fieldline/{site}/dev-bad/telemetry", p, qos=1).wait_for_publish(10)
    finally:
        client.loop_stop()
        client.disconnect()
    return len(payloads)


def _report(checks: list[Check]) -> str:
    return "\n".join(str(c) for c in checks if not c.ok)


#: Faulty machines: sensors that spike, shift and stick often enough for the
#: detectors to flag some within the run (the Anomalies panels need them).
FAULTY_FLEET = """
name = "dashboards-faulty"
seed = 3
start = "now"

[[devices]]
prefix = "faulty"
count = 3
rate_hz = 10.0
sensors = ["temperature", "vibration"]
samples_per_message = 10

[[faults]]
kind = "spike"
sensors = ["temperature", "vibration"]
rate_per_hour = 720.0

[[faults]]
kind = "level_shift"
sensors = ["temperature"]
rate_per_hour = 240.0
duration_s = [5, 10]
"""


@pytest.fixture
def pipeline_run(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any, tmp_path: Path
) -> str:
    """A simulated fleet (plain devices and faulty ones) through a real pipeline
    into ``influx_db``; returns the site."""
    pipeline = start_pipeline("--window-s", "2", "--lateness-s", "1")
    site = f"dash-{secrets.token_hex(3)}"
    gt = tmp_path / "gt"
    scenario = tmp_path / "faulty.toml"
    scenario.write_text(FAULTY_FLEET)
    sims = [
        subprocess.Popen(
            fieldline(
                "sim", "run", "--broker", mosquitto.url, "--site", site, "--devices", "4",
                "--rate-hz", "5", "--batch-size", "5", "--duration-s", SIM_SECONDS,
                "--seed", "11", "--ground-truth", str(gt), "--instance", f"sim-{site}",
            ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ),
        subprocess.Popen(
            fieldline(
                "sim", "fleet", str(scenario), "--broker", mosquitto.url, "--site", site,
                "--duration-s", SIM_SECONDS, "--ground-truth", str(tmp_path / "gt-faulty"),
                "--instance", f"faulty-{site}", "--quiet",
            ),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ),
    ]  # fmt: skip
    garbage = _publish_garbage(mosquitto.url, site)
    published = 0
    for sim, folder in zip(sims, (gt, tmp_path / "gt-faulty")):
        out, _ = sim.communicate(timeout=180)
        assert sim.returncode == 0, out.decode()[-3000:]
        published += json.loads((folder / "summary.json").read_text())["published_readings"]
    assert pipeline.wait_readings(published), pipeline.log_text()[-3000:]
    assert pipeline.watch.wait_for(
        lambda w: (
            int(w.latest("pipeline").get(pipeline.instance, {}).get("dead_letters") or 0) >= garbage
        ),
        60,
    ), pipeline.log_text()[-3000:]
    # The final metrics report is written on the way out.
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    return site


def test_every_panel_and_alert_query_returns_data(
    pipeline_run: str, influxdb: InfluxDB, influx_db: str
) -> None:
    run = http_query(influxdb.url, influx_db)
    # Device detail shows one device: one with anomalies, as a user would open it
    # from the Anomalies table (the first device in the list may have none).
    series = influxdb.query('SELECT last("score") FROM "anomaly" GROUP BY "device"', influx_db)
    devices = [s["tags"]["device"] for s in series["results"][0].get("series", [])]
    assert devices, "the pipeline wrote no anomaly points: did the detection run?"
    overrides = {"site": pipeline_run, "device": devices[0]}
    # As Grafana's frontend sends it: a relative range, every value of each variable.
    checks = check_all(run, TimeRange(last="1h"), interval="10s", overrides=overrides)
    assert len(checks) > 30
    assert all(c.ok for c in checks), _report(checks)
    # As Grafana's backend sends it: absolute bounds in ms, and "All" as the regex .*
    now_ms = int(time.time() * 1000)
    checks = check_all(
        run,
        TimeRange(from_ms=now_ms - 3_600_000, to_ms=now_ms + 60_000),
        "5s",
        overrides={"device": devices[0]},
        use_all=True,
    )
    assert all(c.ok for c in checks), _report(checks)
    # The same through the command line a user runs against their InfluxDB.
    r = subprocess.run(
        fieldline(
            "dashboards", "check", "--influx-url", influxdb.url, "--db", influx_db,
            "--var", f"device={devices[0]}",
        ),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().endswith(f"{len(checks)} passed, 0 failed")
