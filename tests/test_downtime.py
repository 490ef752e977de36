"""Downtime longer than the idle timeout loses nothing: windows close for silence
only on evidence from the broker (a marker's round trip), never on the pipeline's
own clock while the broker still holds a device's messages, and an outage (with
the devices' time to reconnect after it) is never taken for silence."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.contract import TELEMETRY_SUBSCRIPTION
from fieldline_edge.mqtt import parse_broker_url
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_pipeline.connectors import intake as intake_module
from fieldline_pipeline.connectors.intake import MQTTIntake
from fieldline_pipeline.connectors.mqtt import MQTTSettings
from fieldline_pipeline.ingest_log import IngestLog
from groundtruth_check import assert_windows_match_ground_truth
from paho.mqtt.enums import CallbackAPIVersion
from test_intake_process import intake_child

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000
IDLE_S = 2
FLAGS = ("--window-s", "1", "--lateness-s", "1", "--idle-timeout-s", str(IDLE_S))
#: Publishing before and after the fault.
BEFORE_S, AFTER_S = 3, 4


def start_sim(broker_url: str, gt: Path, seconds: float) -> subprocess.Popen[bytes]:
    site = f"down-{secrets.token_hex(3)}"
    return subprocess.Popen(
        fieldline(
            "sim", "run", "--broker", broker_url, "--site", site, "--devices", "10",
            "--rate-hz", "10", "--batch-size", "5", "--duration-s", str(round(seconds)),
            "--seed", "5", "--ground-truth", str(gt), "--instance", f"sim-{site}",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(sim: subprocess.Popen[bytes], gt: Path) -> tuple[dict[str, Any], int]:
    """Wait for the simulator; its summary and the wall time (ms) it was done by."""
    try:
        _, err = sim.communicate(timeout=180)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    assert sim.returncode == 0, err.decode()[-2000:]
    summary = json.loads((gt / "summary.json").read_text())
    assert summary["unacked_messages"] == 0  # the broker acknowledged every message
    return summary, int(time.time() * 1000)


def logged_through(pipeline: Any, done_ms: int) -> bool:
    """The dataflow has read a watermark sent after the simulator was done: every
    message the broker acknowledged is in the log, and read."""
    return int(pipeline.metrics().get("watermark_ms") or 0) > done_ms


def stop_and_check(
    pipeline: Any, influxdb: InfluxDB, db: str, gt: Path, summary: dict[str, Any], done_ms: int
) -> None:
    assert pipeline.watch.wait_for(lambda _w: logged_through(pipeline, done_ms), 180), (
        pipeline.metrics(),
        pipeline.log_text()[-3000:],
    )
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    final = pipeline.metrics()
    assert final.get("done") is True
    assert final["late_readings"] == 0, final
    assert "Traceback" not in pipeline.log_text()
    stored = assert_windows_match_ground_truth(influxdb, db, gt, WINDOW_MS)
    assert stored == summary["published_readings"]


@pytest.mark.parametrize("down_x", [2, 10])
def test_pipeline_down_longer_than_the_idle_timeout_loses_nothing(
    down_x: int, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str,
    start_pipeline: Any, tmp_path: Path,
) -> None:  # fmt: skip
    """SIGKILL with windows open, down for 2x and 10x the idle timeout while the
    devices keep publishing; the restarted pipeline must wait for the broker's
    backlog before it closes anything for silence."""
    down_s = down_x * IDLE_S
    pipeline = start_pipeline(*FLAGS)
    gt = tmp_path / "gt"
    sim = start_sim(mosquitto.url, gt, BEFORE_S + down_s + AFTER_S)
    time.sleep(BEFORE_S)
    assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
    pipeline.kill()
    time.sleep(down_s)
    pipeline.restart()
    summary, done_ms = finish(sim, gt)
    stop_and_check(pipeline, influxdb, influx_db, gt, summary, done_ms)


@pytest.mark.parametrize("down_x", [2, 10])
def test_intake_frozen_longer_than_the_idle_timeout_loses_nothing(
    down_x: int, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str,
    start_pipeline: Any, tmp_path: Path,
) -> None:  # fmt: skip
    """The intake child stopped (SIGSTOP) as in a cut between broker and pipeline:
    the dataflow goes on running with nothing new in its log, and must not take
    the silence for the devices'."""
    down_s = down_x * IDLE_S
    pipeline = start_pipeline(*FLAGS)
    child = intake_child(pipeline.proc.pid)
    gt = tmp_path / "gt"
    sim = start_sim(mosquitto.url, gt, BEFORE_S + down_s + AFTER_S)
    time.sleep(BEFORE_S)
    os.kill(child, signal.SIGSTOP)
    try:
        time.sleep(down_s)
    finally:
        os.kill(child, signal.SIGCONT)
    summary, done_ms = finish(sim, gt)
    stop_and_check(pipeline, influxdb, influx_db, gt, summary, done_ms)


@pytest.mark.parametrize("down_x", [2, 10])
def test_broker_down_longer_than_the_idle_timeout_loses_nothing(
    down_x: int, fresh_mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str,
    start_pipeline: Any, tmp_path: Path,
) -> None:  # fmt: skip
    """The broker stopped (cleanly) for 2x and 10x the idle timeout: the devices
    keep what they cannot send and send it once they have reconnected, after the
    pipeline may have; the outage and the devices' reconnection are not silence."""
    down_s = down_x * IDLE_S
    pipeline = start_pipeline(*FLAGS, broker_url=fresh_mosquitto.url)
    gt = tmp_path / "gt"
    sim = start_sim(fresh_mosquitto.url, gt, BEFORE_S + down_s + AFTER_S)
    time.sleep(BEFORE_S)
    fresh_mosquitto.stop()
    time.sleep(down_s)
    fresh_mosquitto.start()
    summary, done_ms = finish(sim, gt)
    assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
    stop_and_check(pipeline, influxdb, influx_db, gt, summary, done_ms)


def test_a_device_that_goes_silent_still_gets_its_last_windows(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Idle closing still works while connected: the devices stop, and their last
    windows reach InfluxDB with the pipeline still running (no flush on stop)."""
    pipeline = start_pipeline(*FLAGS, flush_on_stop=False)
    gt = tmp_path / "gt"
    summary, _ = finish(start_sim(mosquitto.url, gt, 3), gt)
    stored = 0
    deadline = time.monotonic() + 60
    while True:
        try:
            stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert stored == summary["published_readings"]
    assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
    assert pipeline.metrics()["late_readings"] == 0
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]


@pytest.mark.parametrize(("inflight", "backlog"), [(20, 20_000), (1_000, 20_000)])
def test_a_marker_comes_back_after_the_whole_backlog(
    inflight: int, backlog: int, tmp_path: Path
) -> None:
    """What the watermark rests on, against the real Mosquitto: a marker the intake
    publishes after it reconnects comes back after every message the broker queued
    for its session while it was away, whatever the broker's in-flight window."""
    broker = Mosquitto(tmp_path / "broker", extra_config=f"max_inflight_messages {inflight}")
    broker.start()
    try:
        settings = MQTTSettings(broker=parse_broker_url(broker.url), group="order")
        client_id = f"order-{secrets.token_hex(3)}"
        first = IngestLog(tmp_path / "first.sqlite")
        intake = MQTTIntake(settings, TELEMETRY_SUBSCRIPTION, first, client_id, shared=False)
        intake.start()
        assert intake.subscribed.wait(30)
        intake.stop()  # away: the broker keeps its session and queues for it
        first.close()

        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{client_id}")
        pub.max_inflight_messages_set(200)
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        infos = [
            pub.publish("fieldline/order/dev/telemetry", str(i).encode(), qos=1)
            for i in range(backlog)
        ]
        for info in infos:
            info.wait_for_publish(timeout=120)
        assert all(i.is_published() for i in infos)
        published_ms = int(time.time() * 1000)
        pub.disconnect()
        pub.loop_stop()

        log = IngestLog(tmp_path / "second.sqlite")
        intake = MQTTIntake(settings, TELEMETRY_SUBSCRIPTION, log, client_id, shared=False)
        intake.start()
        try:
            deadline = time.monotonic() + 120
            while log.watermark_at(log.newest_offset() + 1) is None:
                assert time.monotonic() < deadline, f"no marker came back; {log.count()} logged"
                time.sleep(0.05)
        finally:
            intake.stop()
        mark = log.watermark_at(log.newest_offset() + 1)
        assert mark is not None
        assert mark[0] >= published_ms
        # No watermark sits before the end of the backlog: the marker came after it.
        assert log.watermark_at(backlog) is None
        payloads = [int(e.payload) for e in log.read(1, limit=backlog + 10)]
        assert payloads == list(range(backlog))
        log.close()
    finally:
        broker.stop()


@pytest.mark.parametrize("allowed", [True, False])
def test_markers_need_the_acl_line_and_their_absence_is_reported(
    allowed: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses the marker topic drops the marker silently (MQTT
    3.1.1): no watermark is recorded, so nothing closes for silence, and the
    intake says why with an error while it is connected."""
    monkeypatch.setattr(intake_module, "MARKER_TIMEOUT_S", 3.0)
    acl = tmp_path / "acl"
    # Rules before any `user` line are the anonymous client's.
    acl.write_text(
        "topic read fieldline/+/+/telemetry\n"
        + ("topic readwrite fieldline/_pipeline/#\n" if allowed else "")
    )
    broker = Mosquitto(tmp_path / "broker", extra_config=f"acl_file {acl}")
    broker.start()
    log = IngestLog(tmp_path / "log.sqlite")
    settings = MQTTSettings(broker=parse_broker_url(broker.url), group="acl")
    intake = MQTTIntake(settings, TELEMETRY_SUBSCRIPTION, log, f"acl-{secrets.token_hex(3)}")
    try:
        with caplog.at_level(logging.ERROR, logger=intake_module.__name__):
            intake.start()
            assert intake.subscribed.wait(30)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and log.watermark_at(1) is None:
                time.sleep(0.1)
            if not allowed:  # give the alarm time to go off
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not caplog.records:
                    time.sleep(0.1)
    finally:
        intake.stop()
        broker.stop()
    refused = [r for r in caplog.records if "no watermark marker has come back" in r.message]
    if allowed:
        assert log.watermark_at(1) is not None
        assert refused == []
    else:
        assert log.watermark_at(1) is None
        assert len(refused) == 1
        assert "topic readwrite fieldline/_pipeline/#" in refused[0].getMessage()
    log.close()
