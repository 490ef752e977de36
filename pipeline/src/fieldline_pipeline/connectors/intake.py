"""The MQTT intake: broker → ingest log, acknowledging only what is on disk.

Unit of parallelism: one intake per pipeline process, with a fixed client id and
a persistent session, so the broker keeps QoS 1 messages for a process that is
away. The processes of a Bytewax cluster share the subscription
``$share/<group>/<filter>`` (MQTT 5 §4.8.2; Mosquitto offers it to 3.1.1 clients
too), so the broker splits the load between them. A single process subscribes to
the plain filter instead: Mosquitto 2.0 does not restore a persistent session's
*shared* subscriptions after a broker restart, so messages published between the
restart and the client's return would reach no one; plain ones it restores.

Delivery guarantee: a message is acknowledged (PUBACK, MQTT 3.1.1 §4.3.2) only
after the transaction that appended it to the ingest log has committed. A crash
before that leaves it unacknowledged, and the broker delivers it again when the
session resumes (§4.4), so nothing acknowledged is ever lost; a message can be
logged twice, and the dataflow drops the second copy by its ``seq``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt

from fieldline_pipeline.connectors.mqtt import MQTTSettings, new_client
from fieldline_pipeline.ingest_log import IngestLog

log = logging.getLogger(__name__)

#: Longest wait before pending messages are committed (group commit).
COMMIT_INTERVAL_S = 0.005
#: Messages committed in one transaction at most.
MAX_COMMIT_BATCH = 5_000
#: Unacknowledged messages the broker may have in flight to us; each costs the
#: broker a retry slot, and the commit interval bounds how long one waits.
MAX_INFLIGHT = 1_000


class MQTTIntake:
    """Subscribe, append to ``ingest_log``, acknowledge after commit (see module doc)."""

    def __init__(
        self,
        settings: MQTTSettings,
        topic_filters: str | Sequence[str],
        ingest_log: IngestLog,
        client_id: str,
        shared: bool = True,
    ) -> None:
        self._settings = settings
        self._log = ingest_log
        filters = [topic_filters] if isinstance(topic_filters, str) else list(topic_filters)
        shared_filters = [f"$share/{settings.group}/{f}" for f in filters]
        self._subscriptions = shared_filters if shared else filters
        # The other form may be left in the session by an earlier deployment
        # (one process before, a cluster now, or the reverse): drop it.
        self._stale_subscriptions = filters if shared else shared_filters
        self._cond = threading.Condition()
        self._pending: list[tuple[int, int, str, bytes, int]] = []
        self._stopping = False
        self.subscribed = threading.Event()
        self.messages = 0
        self._client = client = new_client(settings, client_id, clean_session=False)
        client.manual_ack_set(True)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._committer = threading.Thread(target=self._commit_loop, name="intake", daemon=True)

    def start(self) -> None:
        b = self._settings.broker
        self._committer.start()
        self._client.connect_async(b.host, b.port, keepalive=self._settings.keepalive_s)
        self._client.loop_start()

    # paho network thread ---------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.error("MQTT connect refused: %s", reason)
            return
        # Resubscribe after every reconnect: the broker may have lost the session.
        client.unsubscribe(self._stale_subscriptions)
        qos = self._settings.qos
        result, _mid = client.subscribe([(f, qos) for f in self._subscriptions])
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe to %s failed: %s", self._subscriptions, mqtt.error_string(result))

    def _on_subscribe(
        self, _client: mqtt.Client, _ud: Any, _mid: int, reasons: list[Any], _props: Any
    ) -> None:
        if any(r.is_failure for r in reasons):
            log.error("broker refused subscription %s: %s", self._subscriptions, reasons)
            return
        log.info("MQTT subscribed to %s", ", ".join(self._subscriptions))
        self.subscribed.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.subscribed.clear()
        if not self._stopping:
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        item = (msg.mid, msg.qos, msg.topic, bytes(msg.payload), int(time.time() * 1000))
        with self._cond:
            self._pending.append(item)
            if len(self._pending) >= MAX_COMMIT_BATCH:
                self._cond.notify()

    # committer thread ------------------------------------------------------

    def _commit_loop(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._stopping:
                    self._cond.wait(COMMIT_INTERVAL_S)
                batch, self._pending = self._pending, []
                stopping = self._stopping
            if batch:
                self._commit(batch)
            elif stopping:
                return
            else:
                time.sleep(COMMIT_INTERVAL_S)

    def _commit(self, batch: list[tuple[int, int, str, bytes, int]]) -> None:
        while True:
            try:
                self._log.append([(t, p, r) for _, _, t, p, r in batch])
                break
            except Exception:
                # Unacknowledged, the messages stay the broker's: keep trying.
                log.exception("ingest log append failed; retrying in 1 s")
                time.sleep(1)
        self.messages += len(batch)
        client = self._client
        for mid, qos, *_ in batch:
            if qos > 0:
                client.ack(mid, qos)

    def stop(self) -> None:
        """Commit and acknowledge everything received, then disconnect."""
        self._client.on_message = None  # take nothing more
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._committer.join()
        # PUBACKs are written by the network thread; give it a moment to send them.
        deadline = time.monotonic() + 2.0
        while self._client.want_write() and time.monotonic() < deadline:
            time.sleep(0.01)
        self._client.disconnect()
        self._client.loop_stop()
