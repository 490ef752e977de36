"""The pipeline's MQTT output (dead letters, alerts, refused points) rides out a
broker that is down: a batch written meanwhile neither raises nor is lost."""

from __future__ import annotations

import secrets
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.mqtt import parse_broker_url
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_pipeline.connectors.mqtt import MQTTSettings, MQTTSink
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services]

#: A bound on failure, not a timing.
WAIT_S = 60.0


def test_a_batch_written_while_the_broker_is_down_is_sent_when_it_is_back(
    fresh_mosquitto: Mosquitto,
) -> None:
    broker = parse_broker_url(fresh_mosquitto.url)
    tag = secrets.token_hex(4)
    topic = f"fieldline/deadletter/test-{tag}"
    got: list[bytes] = []
    cond = threading.Condition()
    subscribed = threading.Event()

    # A persistent session, so what arrives while it reconnects waits for it.
    reader = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"reader-{tag}", clean_session=False,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with cond:
            got.append(bytes(msg.payload))
            cond.notify_all()

    reader.on_connect = lambda c, *_: c.subscribe(topic, 1)
    reader.on_subscribe = lambda *_: subscribed.set()
    reader.on_message = on_message
    reader.reconnect_delay_set(1, 2)
    reader.connect(broker.host, broker.port, 30)
    reader.loop_start()
    part = MQTTSink(MQTTSettings(broker=broker, client_id_prefix=f"p{tag}"), "out").build(
        "out", 0, 1
    )
    try:
        assert subscribed.wait(WAIT_S)
        part.write_batch([(topic, b"before")])
        fresh_mosquitto.stop()
        time.sleep(0.5)  # both clients see the connection go
        part.write_batch([(topic, b"during-1"), (topic, b"during-2")])  # must not raise
        fresh_mosquitto.start()
        deadline = time.monotonic() + WAIT_S
        with cond:
            while set(got) < {b"before", b"during-1", b"during-2"}:
                remaining = deadline - time.monotonic()
                assert remaining > 0, got
                cond.wait(remaining)
    finally:
        part.close()
        reader.loop_stop()
        reader.disconnect()
