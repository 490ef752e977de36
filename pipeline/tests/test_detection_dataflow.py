"""Anomaly detection inside the dataflow, in memory (TestingSource / TestingSink)."""

from __future__ import annotations

import math
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from fieldline_edge.contract import Reading, decode_alert, encode_telemetry, telemetry_topic
from fieldline_pipeline.clock import IngestClock
from fieldline_pipeline.connectors.mqtt import MqttMessage
from fieldline_pipeline.dataflow import build_dataflow
from fieldline_pipeline.decode import decode_columns
from fieldline_pipeline.detection import DetectionConfig, DeviceDetectors
from fieldline_pipeline.detectors import create
from fieldline_pipeline.metrics import PipelineMetrics
from fieldline_pipeline.windows import WindowConfig

T0 = 1_700_000_000_000
STEP_MS = 1_000
BATCH = 10
RECEIVED = T0 + 10_000_000
CFG = WindowConfig(width_ms=60_000, lateness_ms=0)


class FrozenClock(IngestClock):
    def now_ms(self) -> int:
        return RECEIVED


def series(n: int, seed: int, spikes: dict[int, float]) -> list[tuple[int, float]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v = 20.0 + 3.0 * math.sin(2 * math.pi * i / 120) + rng.gauss(0, 0.1)
        out.append((T0 + i * STEP_MS, v + spikes.get(i, 0.0)))
    return out


def messages(device: str, data: dict[str, list[tuple[int, float]]]) -> list[MqttMessage]:
    """One message per BATCH readings of each sensor, the sensors interleaved in a message."""
    n = len(next(iter(data.values())))
    msgs = []
    for seq, start in enumerate(range(0, n, BATCH)):
        readings = [
            Reading(sensor, ts, v, "C")
            for sensor, rows in data.items()
            for ts, v in rows[start : start + BATCH]
        ]
        payload = encode_telemetry(device, seq, readings)
        msgs.append(MqttMessage(telemetry_topic("lab", device), payload, RECEIVED))
    return msgs


def run(
    msgs: list[Any], detection: DetectionConfig | None = None, recovery: Path | None = None
) -> tuple[list[str], list[tuple[str, bytes]], PipelineMetrics]:
    lines: list[str] = []
    mqtt_out: list[tuple[str, bytes]] = []
    metrics = PipelineMetrics()
    flow = build_dataflow(
        TestingSource(msgs), TestingSink(lines), TestingSink(mqtt_out), CFG, metrics,
        FrozenClock(), detection=detection or DetectionConfig(),
    )  # fmt: skip
    if recovery is None:
        run_main(flow)
    else:
        run_main(flow, epoch_interval=timedelta(0), recovery_config=RecoveryConfig(str(recovery)))
    return lines, mqtt_out, metrics


def anomaly_points(lines: list[str]) -> dict[tuple[str, str, int], dict[str, float]]:
    out = {}
    for line in lines:
        if not line.startswith("anomaly,"):
            continue
        head, fields, ts = line.split(" ")
        tags = dict(kv.split("=") for kv in head.split(",")[1:])
        assert tags["detector"] == "novelty"
        assert tags["site"] == "lab"
        values = {k: float(v) for k, v in (kv.split("=") for kv in fields.split(","))}
        out[(tags["device"], tags["sensor"], int(ts))] = values
    return out


def offline(rows: list[tuple[int, float]]) -> dict[int, tuple[float, float]]:
    """What the detector alone flags in the series: ts -> (score, value)."""
    det = create("novelty")
    scores = det.update_block([t for t, _ in rows], [v for _, v in rows])
    return {t: (s, v) for (t, v), s in zip(rows, scores) if s >= det.default_threshold}


DATA = {
    "temp": series(1500, 1, {700: 12.0, 1100: -15.0}),
    "hum": series(1500, 2, {900: 20.0}),
}


def test_anomalies_become_points_and_alerts_equal_to_the_detector_run_alone() -> None:
    lines, mqtt_out, metrics = run(messages("d1", DATA))
    points = anomaly_points(lines)
    expected = {
        ("d1", sensor, ts): sv for sensor, rows in DATA.items() for ts, sv in offline(rows).items()
    }
    assert {(ts0 - T0) // STEP_MS for (_, _, ts0) in expected} >= {700, 1100, 900}
    assert set(points) == set(expected)
    for key, (score, value) in expected.items():
        assert points[key]["score"] == score
        assert points[key]["value"] == value
        assert math.isfinite(points[key]["expected"])
    alerts = [(t, decode_alert(p)) for t, p in mqtt_out if t.endswith("/alerts")]
    assert all(t == "fieldline/lab/d1/alerts" for t, _ in alerts)
    assert {(a.device, a.sensor, a.ts) for _, a in alerts} == set(expected)
    for _, a in alerts:
        assert (a.score, a.value) == expected[(a.device, a.sensor, a.ts)]
        assert a.detector == "novelty"
        assert a.expected == points[(a.device, a.sensor, a.ts)]["expected"]
    snap = metrics.snapshot()
    assert snap["anomalies"] == len(expected)
    assert snap["windows"] == sum(1 for line in lines if line.startswith("reading_window,"))
    assert snap["dead_letters"] == 0


def test_duplicates_are_not_scored_twice() -> None:
    msgs = messages("d1", DATA)
    # Every fifth message is delivered again, some right away, some much later.
    redelivered: list[MqttMessage] = []
    for i, m in enumerate(msgs):
        redelivered.append(m)
        if i % 5 == 0:
            redelivered.append(m)
        if i % 7 == 3 and i > 20:
            redelivered.append(msgs[i - 20])
    clean_lines, clean_alerts, _ = run(msgs)
    lines, alerts, metrics = run(redelivered)
    assert anomaly_points(lines) == anomaly_points(clean_lines)
    assert sorted(alerts) == sorted(clean_alerts)
    assert metrics.snapshot()["duplicates"] == len(redelivered) - len(msgs)


def test_detection_can_be_turned_off_and_the_threshold_set() -> None:
    msgs = messages("d1", DATA)
    lines: list[str] = []
    mqtt_out: list[tuple[str, bytes]] = []
    flow = build_dataflow(
        TestingSource(msgs), TestingSink(lines), TestingSink(mqtt_out), CFG, PipelineMetrics(),
        FrozenClock(),
    )  # fmt: skip
    run_main(flow)
    assert lines
    assert not any(line.startswith("anomaly,") for line in lines)
    assert mqtt_out == []
    strict, _, _ = run(msgs, DetectionConfig("novelty", threshold=0.9))
    default, _, _ = run(msgs)
    assert set(anomaly_points(strict)) < set(anomaly_points(default))
    assert all(p["score"] >= 0.9 for p in anomaly_points(strict).values())


def test_detector_state_survives_an_abort_and_resume(tmp_path: Path) -> None:
    msgs: list[Any] = messages("d1", DATA)
    # The run dies a third of the way in, and again two thirds in.
    cuts = (len(msgs) // 3, 2 * len(msgs) // 3)
    abort = TestingSource.ABORT()
    with_aborts = [*msgs[: cuts[0]], abort, *msgs[cuts[0] : cuts[1]], abort, *msgs[cuts[1] :]]
    recovery = tmp_path / "recovery"
    recovery.mkdir()
    init_db_dir(recovery, 1)  # type: ignore[no-untyped-call]
    points: dict[tuple[str, str, int], dict[str, float]] = {}
    for _ in range(3):  # each run stops at the next abort; the last one reaches the end
        lines, _, _ = run(with_aborts, recovery=recovery)
        points.update(anomaly_points(lines))
    clean, _, _ = run(msgs)
    assert points == anomaly_points(clean)


def test_old_snapshots_without_detector_state_restore() -> None:
    cfg = DetectionConfig()
    fresh = DeviceDetectors.restore(None, cfg)
    assert fresh.sensors == {}
    other = DeviceDetectors(DetectionConfig("ewma"))
    for msg in messages("d1", {"temp": DATA["temp"][:200]})[:5]:
        other.update(decode_columns(msg.topic, msg.payload))
    changed = DeviceDetectors.restore(other.snapshot(), cfg)  # another detector: start afresh
    assert changed.sensors == {}
    same = DeviceDetectors.restore(other.snapshot(), DetectionConfig("ewma"))
    assert same.snapshot() == other.snapshot()
    # A sensor state this version cannot read starts afresh; the others are kept.
    snap = other.snapshot()
    snap["sensors"]["broken"] = {"detector": "ewma", "version": 1, "alpha": 0.01}
    mixed = DeviceDetectors.restore(snap, DetectionConfig("ewma"))
    assert mixed.sensors["temp"].snapshot() == other.sensors["temp"].snapshot()
    assert mixed.sensors["broken"].snapshot() == create("ewma").snapshot()


def test_sensors_per_device_are_bounded() -> None:
    dd = DeviceDetectors(DetectionConfig(max_sensors=2))
    data = {f"s{i}": series(20, i, {}) for i in range(4)}
    for msg in messages("d1", data):
        dd.update(decode_columns(msg.topic, msg.payload))
    assert sorted(dd.sensors) == ["s0", "s1"]
    assert dd.unscored == 2 * 20
