"""MQTT connectors for Bytewax: a shared-subscription source and a publishing sink.

:class:`MQTTSource` — unit of parallelism: one MQTT client per Bytewax worker,
all in one shared subscription (``$share/<group>/<filter>``, MQTT 5 §4.8.2, which
Mosquitto also offers to 3.1.1 clients), so the broker splits the load between
workers and processes. Each client has a fixed client id and a persistent session
(clean session off), so the broker keeps QoS 1 messages for it while it is away.
Delivery guarantee: at-least-once from the broker to the client. The client
acknowledges a message when it has been queued in process memory; what is queued
is drained into the dataflow before a clean stop, but a crash loses what was
queued and not yet processed.

:class:`MQTTSink` — one client per worker; publishes ``(topic, payload)`` items
with QoS 1 and waits for every PUBACK before the batch counts as written
(at-least-once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from fieldline_edge.mqtt import BrokerURL, TLSConfig, configure_client
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

KEEPALIVE_S = 30
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30
#: How long an idle source waits before Bytewax polls it again.
IDLE_POLL_S = 0.005
#: Messages handed to the dataflow per poll.
MAX_BATCH_MESSAGES = 2_000
#: In-process queue bound; past it the network thread waits, which makes the
#: broker hold the rest (backpressure instead of unbounded memory).
MAX_QUEUED_MESSAGES = 50_000
PUBACK_TIMEOUT_S = 30.0

_subscribed_lock = threading.Lock()
_subscribed: set[str] = set()


def subscribed_clients() -> int:
    """Source clients of this process whose subscription the broker has granted.

    Producers that start before the pipeline's first subscription would publish
    into the void (the persistent session does not exist yet), so supervisors
    such as the demo wait for this to reach the worker count.
    """
    with _subscribed_lock:
        return len(_subscribed)


class MqttMessage(NamedTuple):
    """A message as received; ``received_ms`` is the pipeline's wall clock."""

    topic: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True)
class MQTTSettings:
    """How the pipeline talks to the broker.

    >>> MQTTSettings(broker=parse_broker_url("mqtt://127.0.0.1:1883"), group="fieldline")
    ... # doctest: +ELLIPSIS
    MQTTSettings(broker=..., group='fieldline', client_id_prefix='fieldline-pipeline', qos=1,
                 tls=None)

    ``tls`` (CA, client certificate) applies to an ``mqtts://`` broker; the
    broker URL carries the user and password and never shows the password.
    """

    broker: BrokerURL
    group: str = "fieldline"
    client_id_prefix: str = "fieldline-pipeline"
    qos: int = 1
    tls: TLSConfig | None = None
    stop: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.tls is not None:
            if not self.broker.tls:
                raise ValueError(f"TLS options given for {self.broker}: use an mqtts:// URL")
            self.tls.check()


def _new_client(settings: MQTTSettings, client_id: str, clean_session: bool) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
    )
    b = settings.broker
    configure_client(client, b, settings.tls)
    client.reconnect_delay_set(RECONNECT_MIN_DELAY_S, RECONNECT_MAX_DELAY_S)
    # Queue without limit while disconnected: paho resends QoS 1 on reconnect.
    client.max_queued_messages_set(0)
    return client


class _MQTTSourcePartition(StatelessSourcePartition[MqttMessage]):
    def __init__(self, settings: MQTTSettings, topic_filter: str, client_id: str) -> None:
        self._settings = settings
        self._queue: deque[MqttMessage] = deque()
        self._subscription = f"$share/{settings.group}/{topic_filter}"
        self._closing = False
        self._client_id = client_id
        self._client = client = _new_client(settings, client_id, clean_session=False)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        b = settings.broker
        client.connect_async(b.host, b.port, keepalive=KEEPALIVE_S)
        client.loop_start()

    # paho network thread ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        # Resubscribe after every reconnect: the session may have been lost.
        result, _mid = client.subscribe(self._subscription, qos=self._settings.qos)
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe to %s failed: %s", self._subscription, mqtt.error_string(result))
        log.info("MQTT connected, subscribed to %s", self._subscription)

    def _on_subscribe(
        self, _client: mqtt.Client, _ud: Any, _mid: int, reasons: list[Any], _props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused subscription %s: %s", self._subscription, reasons)
            return
        with _subscribed_lock:
            _subscribed.add(self._client_id)

    def _on_disconnect(
        self, _client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        with _subscribed_lock:
            _subscribed.discard(self._client_id)
        if not self._closing:
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        queue = self._queue
        while len(queue) >= MAX_QUEUED_MESSAGES and not self._closing:
            time.sleep(0.01)
        queue.append(MqttMessage(msg.topic, bytes(msg.payload), int(time.time() * 1000)))

    # Bytewax worker thread -------------------------------------------------

    def next_batch(self) -> list[MqttMessage]:
        queue = self._queue
        if self._settings.stop.is_set() and not self._closing:
            # Stop taking messages, then hand over what was already queued.
            self._closing = True
            self._client.disconnect()
            self._client.loop_stop()
        if not queue:
            if self._closing:
                raise StopIteration
            return []
        n = min(len(queue), MAX_BATCH_MESSAGES)
        popleft = queue.popleft
        return [popleft() for _ in range(n)]

    def next_awake(self) -> datetime | None:
        if self._queue or self._settings.stop.is_set():
            return None
        return datetime.now(timezone.utc) + timedelta(seconds=IDLE_POLL_S)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._client.disconnect()
            self._client.loop_stop()


class MQTTSource(DynamicSource[MqttMessage]):
    """Messages matching ``topic_filter`` from a shared subscription (see module doc)."""

    def __init__(self, settings: MQTTSettings, topic_filter: str) -> None:
        self._settings = settings
        self._topic_filter = topic_filter

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MQTTSourcePartition:
        client_id = f"{self._settings.client_id_prefix}-{worker_index}"
        return _MQTTSourcePartition(self._settings, self._topic_filter, client_id)


class _MQTTSinkPartition(StatelessSinkPartition[tuple[str, bytes]]):
    def __init__(self, settings: MQTTSettings, client_id: str) -> None:
        self._client = _new_client(settings, client_id, clean_session=True)
        self._qos = settings.qos
        b = settings.broker
        self._client.connect_async(b.host, b.port, keepalive=KEEPALIVE_S)
        self._client.loop_start()

    def write_batch(self, items: list[tuple[str, bytes]]) -> None:
        infos = []
        for topic, payload in items:
            info = self._client.publish(topic, payload, qos=self._qos)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
            infos.append(info)
        deadline = time.monotonic() + PUBACK_TIMEOUT_S
        for info in infos:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                info.wait_for_publish(timeout=remaining)
            except (ValueError, RuntimeError):
                break  # not connected yet: paho keeps the message and resends it
        unacked = sum(1 for i in infos if not i.is_published())
        if unacked:
            log.warning("%d published messages not yet acknowledged; paho will resend", unacked)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class MQTTSink(DynamicSink[tuple[str, bytes]]):
    """Publishes ``(topic, payload)`` with QoS 1 (see module doc)."""

    def __init__(self, settings: MQTTSettings, name: str) -> None:
        self._settings = settings
        self._name = name

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _MQTTSinkPartition:
        client_id = f"{self._settings.client_id_prefix}-{self._name}-{worker_index}"
        return _MQTTSinkPartition(self._settings, client_id)
