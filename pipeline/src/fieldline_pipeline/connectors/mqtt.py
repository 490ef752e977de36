"""MQTT pieces shared by the pipeline's connectors: settings, client set-up, the
message type, and a publishing sink.

Telemetry comes in through :mod:`fieldline_pipeline.connectors.intake` (MQTT →
ingest log) and :mod:`fieldline_pipeline.connectors.log_source` (log → dataflow).

:class:`MQTTSink` — unit of parallelism: one client per worker. It publishes
``(topic, payload)`` items (dead letters, alerts) with QoS 1 and waits for every
PUBACK before a batch counts as written (at-least-once).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import paho.mqtt.client as mqtt
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from fieldline_edge.mqtt import BrokerURL, TLSConfig, configure_client
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger(__name__)

#: Seconds between PINGREQs when idle; a link that stays silent 1.5 times this
#: long is declared dead by the broker (MQTT 3.1.1 §3.1.2.10).
KEEPALIVE_S = 30
RECONNECT_MIN_DELAY_S = 1
RECONNECT_MAX_DELAY_S = 30
PUBACK_TIMEOUT_S = 30.0


class MqttMessage(NamedTuple):
    """A message as received; ``received_ms`` is when the intake received it.

    ``ingest_ms`` is that time on the ingest clock, which idle closing uses
    (see :mod:`fieldline_pipeline.clock`); None where it is the same.
    """

    topic: str
    payload: bytes
    received_ms: int
    ingest_ms: int | None = None


@dataclass(frozen=True)
class MQTTSettings:
    """How the pipeline talks to the broker.

    >>> MQTTSettings(broker=parse_broker_url("mqtt://127.0.0.1:1883"), group="fieldline")
    ... # doctest: +ELLIPSIS
    MQTTSettings(broker=..., group='fieldline', client_id_prefix='fieldline-pipeline', qos=1,
                 tls=None, keepalive_s=30)

    ``tls`` (CA, client certificate) applies to an ``mqtts://`` broker; the
    broker URL carries the user and password and never shows the password.
    """

    broker: BrokerURL
    group: str = "fieldline"
    client_id_prefix: str = "fieldline-pipeline"
    qos: int = 1
    tls: TLSConfig | None = None
    keepalive_s: int = KEEPALIVE_S
    stop: threading.Event = field(default_factory=threading.Event, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.keepalive_s < 1:
            raise ValueError(f"keepalive must be at least 1 s, got {self.keepalive_s}")
        if self.tls is not None:
            if not self.broker.tls:
                raise ValueError(f"TLS options given for {self.broker}: use an mqtts:// URL")
            self.tls.check()


def new_client(settings: MQTTSettings, client_id: str, clean_session: bool) -> mqtt.Client:
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


def _acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged it; paho raises for a message published
    while disconnected, which it keeps and sends again on reconnect."""
    try:
        return info.is_published()
    except (ValueError, RuntimeError):
        return False


class _MQTTSinkPartition(StatelessSinkPartition[tuple[str, bytes]]):
    def __init__(self, settings: MQTTSettings, client_id: str) -> None:
        self._client = new_client(settings, client_id, clean_session=True)
        self._qos = settings.qos
        b = settings.broker
        self._client.connect_async(b.host, b.port, keepalive=settings.keepalive_s)
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
        unacked = sum(1 for i in infos if not _acknowledged(i))
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
