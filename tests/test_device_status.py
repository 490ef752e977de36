"""Device status (retained, last will ``offline``) lands in InfluxDB as ``device_status``."""

from __future__ import annotations

import secrets
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.contract import Status, encode_status, status_topic
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def _status_rows(influxdb: InfluxDB, db: str, site: str) -> list[list[Any]]:
    res = influxdb.query(
        f"SELECT device, state, online, agent FROM device_status WHERE site = '{site}'", db=db
    )
    series = res["results"][0].get("series", [])
    return [row[1:] for row in series[0]["values"]] if series else []


def test_birth_retained_status_and_last_will_become_device_status_points(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    site = f"st-{secrets.token_hex(3)}"
    now = int(time.time() * 1000)
    # A status published (retained) before the pipeline runs still reaches it.
    early = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"early-{site}")
    early.connect(mosquitto.host, mosquitto.port)
    early.loop_start()
    early.publish(
        status_topic(site, "dev-a"),
        encode_status(Status("dev-a", "online", now, "fieldline-edge 0.2", {"t": "ok"})),
        qos=1,
        retain=True,
    ).wait_for_publish(10)
    early.disconnect()
    early.loop_stop()

    pipeline = start_pipeline("--window-s", "1", "--lateness-s", "0")
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dev-b-{site}")
    device.will_set(
        status_topic(site, "dev-b"),
        encode_status(Status("dev-b", "offline", now + 1, "fieldline-edge 0.2")),
        qos=1,
        retain=True,
    )
    device.connect(mosquitto.host, mosquitto.port, keepalive=60)
    device.loop_start()
    device.publish(
        status_topic(site, "dev-b"),
        encode_status(Status("dev-b", "online", now, "fieldline-edge 0.2")),
        qos=1,
        retain=True,
    ).wait_for_publish(10)
    # Dropping the socket without DISCONNECT makes the broker publish the will.
    device.socket().close()  # type: ignore[union-attr]
    device.loop_stop()

    expected = [
        ["dev-a", "online", 1, "fieldline-edge 0.2"],
        ["dev-b", "online", 1, "fieldline-edge 0.2"],
        ["dev-b", "offline", 0, "fieldline-edge 0.2"],
    ]
    deadline = time.monotonic() + 60
    rows: list[list[Any]] = []
    while time.monotonic() < deadline:
        rows = sorted(_status_rows(influxdb, influx_db, site))
        if rows == sorted(expected):
            break
        time.sleep(0.5)
    assert rows == sorted(expected), pipeline.log_text()[-3000:]
    assert pipeline.stop() == 0
    # Clear the retained messages so other tests' pipelines start clean.
    clean = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"clean-{site}")
    clean.connect(mosquitto.host, mosquitto.port)
    clean.loop_start()
    for dev in ("dev-a", "dev-b"):
        clean.publish(status_topic(site, dev), b"", qos=1, retain=True).wait_for_publish(10)
    clean.disconnect()
    clean.loop_stop()
