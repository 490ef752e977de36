"""Broker restart and a network partition between broker and pipeline lose nothing:
the persistent session holds QoS 1 messages, the intake takes them when it is back."""

from __future__ import annotations

import json
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
from netns import NetNamespace, start_broker_in

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000


def run_sim(broker_url: str, gt: Path, seconds: int, prefix: list[str] | None = None) -> Any:
    site = f"bf-{secrets.token_hex(3)}"
    return subprocess.Popen(
        [
            *(prefix or []),
            *fieldline(
                "sim", "run", "--broker", broker_url, "--site", site, "--devices", "6",
                "--rate-hz", "20", "--batch-size", "5", "--duration-s", str(seconds),
                "--seed", "11", "--ground-truth", str(gt), "--instance", f"sim-{site}",
            ),
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def finish(sim: Any) -> dict[str, Any]:
    try:
        _, err = sim.communicate(timeout=180)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.wait()
    assert sim.returncode == 0, err.decode()[-2000:]
    return dict(
        json.loads(
            (Path(sim.args[sim.args.index("--ground-truth") + 1]) / "summary.json").read_text()
        )
    )


def caught_up(pipeline: Any, messages: int) -> bool:
    m = pipeline.metrics()
    high, nxt = int(m.get("log_high") or 0), int(m.get("log_next") or 0)
    return high >= messages and nxt > high


def test_broker_restart_loses_nothing(
    fresh_mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    pipeline = start_pipeline(
        "--window-s", "1", "--lateness-s", "1", "--idle-timeout-s", "120",
        broker_url=fresh_mosquitto.url,
    )  # fmt: skip
    gt = tmp_path / "gt"
    sim = run_sim(fresh_mosquitto.url, gt, 10)
    time.sleep(3)
    fresh_mosquitto.stop()  # a clean restart: Mosquitto saves sessions and queues
    time.sleep(2)  # devices keep sampling; their clients queue QoS 1 messages
    fresh_mosquitto.start()
    summary = finish(sim)
    assert summary["unacked_messages"] == 0
    assert pipeline.watch.wait_for(
        lambda _w: caught_up(pipeline, summary["published_messages"]), 120
    ), (pipeline.metrics(), pipeline.log_text()[-3000:])
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS)
    assert stored == summary["published_readings"]


def test_broker_restart_while_the_pipeline_is_down_loses_nothing(
    fresh_mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The broker must restore the pipeline's session, subscription included, from
    disk: what devices publish before the pipeline is back waits there for it."""
    pipeline = start_pipeline(
        "--window-s", "1", "--lateness-s", "1", "--idle-timeout-s", "120",
        broker_url=fresh_mosquitto.url,
    )  # fmt: skip
    gt = tmp_path / "gt"
    sim = run_sim(fresh_mosquitto.url, gt, 8)
    time.sleep(2)
    pipeline.kill()
    fresh_mosquitto.restart()
    time.sleep(3)  # devices publish into the restored session meanwhile
    pipeline.restart()
    summary = finish(sim)
    assert summary["unacked_messages"] == 0
    assert pipeline.watch.wait_for(
        lambda _w: caught_up(pipeline, summary["published_messages"]), 120
    ), (pipeline.metrics(), pipeline.log_text()[-3000:])
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS)
    assert stored == summary["published_readings"]


def test_network_partition_between_broker_and_pipeline_loses_nothing(
    influxdb: InfluxDB, influx_db: str, start_pipeline: Any, tmp_path: Path
) -> None:
    with NetNamespace() as ns:
        broker = start_broker_in(ns, tmp_path / "broker")
        try:
            url = f"mqtt://{ns.ns_ip}:1883"
            # A short keepalive, so that both sides declare the link dead during
            # the cut and the pipeline must reconnect to its persistent session.
            pipeline = start_pipeline(
                "--window-s", "1", "--lateness-s", "1", "--idle-timeout-s", "300",
                "--keepalive-s", "2", broker_url=url,
            )  # fmt: skip
            gt = tmp_path / "gt"
            # The devices sit with the broker, on the far side of the cut.
            sim = run_sim("mqtt://127.0.0.1:1883", gt, 14, prefix=ns.prefix())
            time.sleep(3)
            ns.cut()
            time.sleep(8)
            ns.restore()
            assert pipeline.watch.wait_for(
                lambda _w: "MQTT disconnected" in pipeline.log_text(), 30
            ), "the cut did not break the pipeline's connection"
            summary = finish(sim)
            assert summary["unacked_messages"] == 0
            assert pipeline.watch.wait_for(
                lambda _w: caught_up(pipeline, summary["published_messages"]), 180
            ), (pipeline.metrics(), pipeline.log_text()[-3000:])
            assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
        finally:
            broker.terminate()
            broker.wait(10)
    stored = assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS)
    assert stored == summary["published_readings"]
