"""No device message, sequence of messages or retained message stops the pipeline.

Each case here once stopped it: a dedupe bitmap shifted by a huge seq gap
(MemoryError), statuses with a ``sensors`` list, string or deep nesting, or a
``ts`` InfluxDB refuses, and ids in Unicode NFD. Retained, a hostile status also
stopped every fresh pipeline as soon as it subscribed, and a restart on the same
state dir re-read the message from the ingest log and stopped again.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.contract import (
    DEAD_LETTER_TOPIC_PREFIX,
    MAX_SEQ,
    SCHEMA_STATUS_V1,
    DeadLetter,
    Reading,
    Status,
    decode_dead_letter,
    encode_status,
    encode_telemetry,
    status_topic,
    telemetry_topic,
)
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto

pytestmark = [pytest.mark.services, pytest.mark.e2e]

NESTED = "[" * 1000 + "]" * 1000
NFD = "cafe\u0301"  # "café" with a combining accent: not in Unicode NFC


def hostile_status(device: str, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "schema": SCHEMA_STATUS_V1, "device": device, "state": "online",
        "ts": int(time.time() * 1000),
    }  # fmt: skip
    body.update(fields)
    return json.dumps(body).encode().replace(b'"@nested@"', NESTED.encode())


class Client:
    """A paho client with its loop running; collects what it receives."""

    def __init__(self, broker: Mosquitto, name: str) -> None:
        self.received: list[mqtt.MQTTMessage] = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
        self.c.on_message = lambda _c, _u, m: self.received.append(m)
        self.c.on_subscribe = lambda *_a: self.subscribed.set()
        self.c.connect(broker.host, broker.port)
        self.c.loop_start()

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients(mosquitto: Mosquitto) -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def readings_by_device(influxdb: InfluxDB, db: str, site: str) -> dict[str, int]:
    res = influxdb.query(
        f"SELECT sum(\"count\") FROM reading_window WHERE site = '{site}' GROUP BY device", db=db
    )
    series = res["results"][0].get("series", [])
    return {s["tags"]["device"]: s["values"][0][1] for s in series}


def test_hostile_messages_are_dead_lettered_and_the_pipeline_runs_through_a_restart(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    influx_db: str,
    start_pipeline: Any,
    clients: list[Client],
) -> None:
    site = f"hostile-{secrets.token_hex(3)}"
    dlq = Client(mosquitto, f"dlq-{site}")
    pub = Client(mosquitto, f"pub-{site}")
    clients.extend([dlq, pub])
    dlq.c.subscribe(DEAD_LETTER_TOPIC_PREFIX + "/#", qos=1)
    assert dlq.subscribed.wait(10)

    # Retained hostile statuses, on the broker before a fresh pipeline starts.
    retained = [
        (status_topic(site, "ret-1"), hostile_status("ret-1", sensors={"a": "@nested@"}),
         "wrong_type"),
        (status_topic(site, "ret-2"), hostile_status("ret-2", ts=10**19), "bad_timestamp"),
    ]  # fmt: skip
    try:
        for topic, payload, _ in retained:
            pub.publish(topic, payload, retain=True)
        pipeline = start_pipeline("--window-s", "1", "--lateness-s", "0")

        now = int(time.time() * 1000)
        hostile = [
            *retained,
            (status_topic(site, "st-1"), hostile_status("st-1", sensors=["x"]), "wrong_type"),
            (status_topic(site, "st-2"), hostile_status("st-2", sensors="ok"), "wrong_type"),
            (status_topic(site, "st-3"), hostile_status("st-3", ts=9e15), "wrong_type"),
            (status_topic(site, "st-4"), hostile_status("st-4", ts=9 * 10**15), "bad_timestamp"),
            (status_topic(site, "st-5"), hostile_status("st-5", agent="@nested@"), "wrong_type"),
            (telemetry_topic(site, NFD),
             encode_telemetry(NFD, 1, [Reading("t", now, 1.0)]), "bad_id"),
            (telemetry_topic(site, "dev-n"),
             encode_telemetry("dev-n", 1, [Reading(NFD, now, 1.0)]), "bad_id"),
        ]  # fmt: skip
        for topic, payload, _ in hostile[len(retained) :]:
            pub.publish(topic, payload)

        # Valid telemetry with seq jumps the contract allows, then ordinary telemetry.
        def send(device: str, seq: int, i: int) -> bytes:
            payload = encode_telemetry(device, seq, [Reading("t", now + i, float(i))])
            pub.publish(telemetry_topic(site, device), payload)
            return payload

        send("dev-a", 1, 0)
        copy = send("dev-a", 1_800_000_000_000, 10)  # a counter restarted at its start time
        send("dev-b", 5, 0)
        send("dev-b", MAX_SEQ, 10)  # 2^63 - 1
        for i in range(5):
            send("dev-c", 100 + i, i * 10)
        pub.publish(
            status_topic(site, "dev-c"),
            encode_status(Status("dev-c", "online", now, "fieldline-edge/test", {"t": "ok"})),
        )

        assert pipeline.wait_readings(9), pipeline.log_text()[-3000:]
        assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]

        def ours() -> dict[bytes, DeadLetter]:
            dls = [decode_dead_letter(m.payload) for m in list(dlq.received)]
            return {d.payload: d for d in dls if d.topic.startswith(f"fieldline/{site}/")}

        deadline = time.monotonic() + 60
        while len(ours()) < len(hostile) and time.monotonic() < deadline:
            time.sleep(0.1)
        got = ours()
        for topic, payload, reason in hostile:
            assert payload in got, f"no dead letter for {topic}"
            assert (got[payload].reason, got[payload].topic) == (reason, topic)
            assert got[payload].detail
        assert int(pipeline.metrics().get("dead_letters") or 0) >= len(hostile)

        # kill -9, restart on the same state dir: it runs, and stores what comes next.
        first_start = int(pipeline.metrics()["started_ms"])
        pipeline.kill()
        pipeline.restart()
        pub.publish(telemetry_topic(site, "dev-a"), copy)  # a redelivered copy: not counted
        send("dev-a", 1_800_000_000_001, 20)
        send("dev-b", 6, 20)  # far below 2^63 - 1: a restarted counter, accepted
        for i in range(5, 10):
            send("dev-c", 100 + i, i * 10)

        def restarted_and_stored(_w: object) -> bool:
            m = pipeline.metrics()
            return int(m.get("started_ms") or 0) > first_start and int(m["readings"]) >= 7

        # At least the 7 new readings (messages replayed from the log count again).
        assert pipeline.watch.wait_for(restarted_and_stored, 90), pipeline.log_text()[-3000:]
        assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
        assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    finally:
        for topic, _, _ in retained:  # later tests' pipelines must not see these
            pub.publish(topic, b"", retain=True)

    assert readings_by_device(influxdb, influx_db, site) == {"dev-a": 3, "dev-b": 3, "dev-c": 10}
    res = influxdb.query(
        f"SELECT device, state FROM device_status WHERE site = '{site}'", db=influx_db
    )
    rows = [r[1:] for r in res["results"][0]["series"][0]["values"]]
    assert rows == [["dev-c", "online"]]  # no hostile status was stored
