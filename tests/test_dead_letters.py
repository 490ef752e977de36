"""Malformed events end on the dead-letter topic with a reason; the pipeline goes on."""

from __future__ import annotations

import json
import secrets
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.contract import (
    DEAD_LETTER_TOPIC_PREFIX,
    Reading,
    decode_dead_letter,
    encode_telemetry,
    telemetry_topic,
)
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def test_malformed_events_are_dead_lettered_and_good_ones_still_land(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    pipeline = start_pipeline("--window-s", "1", "--lateness-s", "0")
    site = f"dl-{secrets.token_hex(3)}"
    topic = telemetry_topic(site, "dev-1")
    ts = int(time.time() * 1000)
    bad: list[tuple[bytes, str]] = [
        (b"this is not json", "not_json"),
        (json.dumps({"schema": "fieldline.telemetry/1", "device": "dev-1", "seq": "one",
                     "readings": [{"sensor": "t", "ts": ts, "value": 1}]}).encode(), "wrong_type"),
        (json.dumps({"schema": "fieldline.telemetry/1", "device": "dev-1", "seq": 1}).encode(),
         "missing_field"),
        (b'{"schema":"fieldline.telemetry/1","device":"dev-1","seq":1,"readings":'
         b'[{"sensor":"t","ts":' + str(ts).encode() + b',"value":NaN}]}', "not_json"),
        (b"[" + b"1," * (512 * 1024) + b"1]", "too_large"),
        (json.dumps({"schema": "fieldline.telemetry/7", "device": "dev-1", "seq": 1,
                     "readings": [{"sensor": "t", "ts": ts, "value": 1}]}).encode(),
         "unknown_schema"),
    ]  # fmt: skip
    received: list[mqtt.MQTTMessage] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"dlq-{site}")
    sub.on_message = lambda _c, _u, m: received.append(m)
    sub.on_subscribe = lambda *_a: subscribed.set()
    sub.connect(mosquitto.host, mosquitto.port)
    sub.loop_start()
    sub.subscribe(DEAD_LETTER_TOPIC_PREFIX + "/#", qos=1)
    assert subscribed.wait(10)

    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{site}")
    pub.connect(mosquitto.host, mosquitto.port)
    pub.loop_start()
    try:
        for payload, _ in bad:
            pub.publish(topic, payload, qos=1).wait_for_publish(10)
        good = [Reading("t", ts + i, float(i), "C") for i in range(5)]
        pub.publish(topic, encode_telemetry("dev-1", 1, good), qos=1).wait_for_publish(10)
        assert pipeline.wait_readings(5), pipeline.log_text()[-3000:]
        assert pipeline.stop() == 0
        deadline = time.monotonic() + 10
        while len(received) < len(bad) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        for c in (pub, sub):
            c.disconnect()
            c.loop_stop()

    ours = [m for m in received if decode_dead_letter(m.payload).topic == topic]
    assert sorted(m.topic for m in ours) == sorted(
        f"{DEAD_LETTER_TOPIC_PREFIX}/{r}" for _, r in bad
    )
    by_payload = {
        decode_dead_letter(m.payload).payload: decode_dead_letter(m.payload) for m in ours
    }
    for payload, reason in bad:
        assert by_payload[payload].reason == reason  # the original is kept whole
        assert by_payload[payload].detail
    assert pipeline.metrics()["dead_letters"] == len(bad)
    res = influxdb.query('SELECT sum("count") FROM reading_window', db=influx_db)
    assert res["results"][0]["series"][0]["values"][0][1] == 5
    res = influxdb.query('SELECT last("count") FROM dead_letters GROUP BY reason', db=influx_db)
    counts = {s["tags"]["reason"]: s["values"][0][1] for s in res["results"][0]["series"]}
    assert counts == {
        "not_json": 2,
        "wrong_type": 1,
        "missing_field": 1,
        "too_large": 1,
        "unknown_schema": 1,
    }
