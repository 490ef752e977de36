"""An MQTT subscriber that records what it receives, for tests of anything that publishes."""

from __future__ import annotations

import threading
import time
from typing import Callable, NamedTuple

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.mqtt import parse_broker_url
from paho.mqtt.enums import CallbackAPIVersion

#: Upper bound for waiting on the broker; a bound on failure, not a timing assertion.
WAIT_S = 20.0


class Received(NamedTuple):
    topic: str
    payload: bytes
    retain: bool


class Subscriber:
    """Subscribes (QoS 1) to ``topics`` and records every message, resubscribing on reconnect."""

    def __init__(self, url: str, topics: list[str]) -> None:
        broker = parse_broker_url(url)
        self.topics = topics
        self.messages: list[Received] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "no SUBACK"

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, *args: object) -> None:
        self._subscribed.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Received]], bool]) -> list[Received]:
        """Wait until ``predicate(messages)`` holds; fail the test after ``WAIT_S``."""
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"condition not met; received {self.messages!r}"[:2000])
                self._cond.wait(remaining)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.reinitialise()  # closes paho's socket pair now, not at gc time
