"""A NAB file replayed through Mosquitto and the running pipeline gives exactly the
anomalies that ``fieldline nab score`` computes offline for it."""

from __future__ import annotations

import csv
import json
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from fieldline_edge.contract import decode_alert
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_pipeline.detectors import DEFAULT_DETECTOR, detector_class
from fieldline_pipeline.nab.loader import to_ms

pytestmark = [pytest.mark.services, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
NAB_FILE = "realAdExchange/exchange-4_cpc_results.csv"
DEVICE = "exchange-4_cpc_results"


def nab_dir() -> Path:
    path = Path(os.environ.get("FIELDLINE_NAB_DIR") or REPO / "third_party" / "nab")
    assert (path / "data" / NAB_FILE).is_file(), f"no NAB data at {path}"
    return path


def offline_anomalies(tmp_path: Path) -> tuple[set[tuple[int, float]], int]:
    """(ts, score) of the rows at or above the shipped threshold, from ``fieldline nab score``."""
    out = tmp_path / "results"
    proc = subprocess.run(
        fieldline("nab", "score", "--nab-dir", str(nab_dir()), "--results-dir", str(out),
                  "--quiet"),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["detector"] == DEFAULT_DETECTOR
    category, name = NAB_FILE.split("/")
    threshold = detector_class(DEFAULT_DETECTOR).default_threshold
    with (out / category / f"{DEFAULT_DETECTOR}_{name}").open(newline="") as f:
        rows = list(csv.DictReader(f))
    found = {
        (to_ms(r["timestamp"]), float(r["anomaly_score"]))
        for r in rows
        if float(r["anomaly_score"]) >= threshold
    }
    return found, len(rows)


def test_replayed_nab_file_gives_the_offline_anomalies(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    influx_db: str,
    start_pipeline: Any,
    subscribe: Any,
    tmp_path: Path,
) -> None:
    expected, rows = offline_anomalies(tmp_path)
    assert len(expected) >= 3  # the file has anomalies the detector finds

    site = f"nab-{secrets.token_hex(3)}"
    alerts = subscribe(mosquitto.url, [f"fieldline/{site}/+/alerts"])
    pipeline = start_pipeline()
    replay = subprocess.run(
        fieldline("sim", "replay", str(nab_dir() / "data" / NAB_FILE), "--broker", mosquitto.url,
                  "--site", site, "--speed", "0", "--batch", "100"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert pipeline.wait_readings(rows, timeout_s=120), pipeline.log_text()[-3000:]

    received = alerts.wait_for(lambda msgs: len(msgs) >= len(expected))
    got_alerts = [decode_alert(m.payload) for m in received]
    assert {m.topic for m in received} == {f"fieldline/{site}/{DEVICE}/alerts"}
    assert {(a.ts, a.score) for a in got_alerts} == expected
    assert {a.detector for a in got_alerts} == {DEFAULT_DETECTOR}

    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    assert pipeline.metrics()["anomalies"] == len(expected)
    points = influxdb.points(
        f"SELECT score, value, expected FROM anomaly WHERE site = '{site}'", influx_db
    )
    assert {(p["time"], p["score"]) for p in points} == expected
    # Nothing else was received after the stop: one alert per anomaly.
    assert len(alerts.messages) == len(expected)
