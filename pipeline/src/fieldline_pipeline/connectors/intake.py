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

Watermarks, the evidence for idle closing: every :data:`MARKER_INTERVAL_S`, with
at most one marker outstanding, the intake publishes a marker (QoS 1) to its own
topic :func:`watermark_topic`, to which its session has a plain subscription.
The marker carries its send time ``sent_ms`` and a random nonce of this run, so
a marker someone else published is not taken. Mosquitto keeps one ordered queue
of outgoing messages per session, so when the marker comes back, every message
it held for this session at ``sent_ms`` came before it and, since commits are in
order, is in the log already. The intake then records the watermark ``sent_ms``
in the log (:data:`~fieldline_pipeline.ingest_log.WATERMARK_TOPIC`). A marker
that has not come back after :data:`MARKER_RESEND_S` while connected is sent
again; after :data:`MARKER_TIMEOUT_S`, an error is logged: the broker may be
refusing it (an ACL without ``fieldline/_pipeline/#``: MQTT 3.1.1 drops a denied
publish silently), and until markers come back no window closes for silence.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import Any

import paho.mqtt.client as mqtt
from fieldline_edge.contract import TOPIC_ROOT

from fieldline_pipeline.connectors.mqtt import MQTTSettings, new_client
from fieldline_pipeline.ingest_log import WATERMARK_TOPIC, IngestLog

log = logging.getLogger(__name__)

#: Longest wait before pending messages are committed (group commit).
COMMIT_INTERVAL_S = 0.005
#: Messages committed in one transaction at most.
MAX_COMMIT_BATCH = 5_000
#: Unacknowledged messages the broker may have in flight to us; each costs the
#: broker a retry slot, and the commit interval bounds how long one waits.
MAX_INFLIGHT = 1_000
#: How often a marker is sent while none is outstanding: the watermark's step.
MARKER_INTERVAL_S = 1.0
#: A marker not back after this long while connected is sent again (the broker
#: may have lost it, e.g. in a restart).
MARKER_RESEND_S = 10.0
#: No marker back for this long while connected: an error is logged.
MARKER_TIMEOUT_S = 30.0
#: Item topic of a message that is only acknowledged (a marker not ours).
_ACK_ONLY = ""


def watermark_topic(client_id: str) -> str:
    """The intake's own marker topic; its broker user needs ``readwrite`` on it."""
    if not client_id or any(c in client_id for c in "/+#\x00"):
        raise ValueError(
            f"client id {client_id!r} cannot name a topic level: use no '/', '+' or '#'"
        )
    return f"{TOPIC_ROOT}/_pipeline/{client_id}/watermark"


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
        self.marker_topic = watermark_topic(client_id)
        self._nonce = secrets.token_hex(8)
        self._marker_lock = threading.Lock()
        self._marker_sent: float | None = None  # monotonic time of the oldest outstanding
        self._marker_resent = 0.0
        self._marker_back = time.monotonic()
        self._marker_alarm = False
        self.watermarks = 0
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
        self._marker_stop = threading.Event()
        self._marker_thread = threading.Thread(
            target=self._marker_loop, name="intake-markers", daemon=True
        )

    def start(self) -> None:
        b = self._settings.broker
        self._committer.start()
        self._marker_thread.start()
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
        # The marker topic is a plain subscription of this session, so its
        # markers queue behind the session's messages (see the module doc).
        result, _mid = client.subscribe(
            [(f, qos) for f in self._subscriptions] + [(self.marker_topic, 1)]
        )
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe to %s failed: %s", self._subscriptions, mqtt.error_string(result))

    def _on_subscribe(
        self, _client: mqtt.Client, _ud: Any, _mid: int, reasons: list[Any], _props: Any
    ) -> None:
        if any(r.is_failure for r in reasons[: len(self._subscriptions)]):
            log.error("broker refused subscription %s: %s", self._subscriptions, reasons)
            return
        if any(r.is_failure for r in reasons[len(self._subscriptions) :]):
            # Brokers that check the ACL at SUBSCRIBE say so here; the data still flows.
            log.error(
                "broker refused the marker subscription %s (the ACL must give this user "
                "'topic readwrite %s/_pipeline/#'): no window will close for silence",
                self.marker_topic, TOPIC_ROOT,
            )  # fmt: skip
        log.info("MQTT subscribed to %s", ", ".join(self._subscriptions))
        self.subscribed.set()

    def _on_disconnect(
        self, _client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self.subscribed.clear()
        if not self._stopping:
            log.warning("MQTT disconnected (%s); reconnecting", reason)

    def _on_message(self, _client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.marker_topic:
            item = self._marker_item(msg)
        else:
            item = (msg.mid, msg.qos, msg.topic, bytes(msg.payload), int(time.time() * 1000))
        # Markers join the same stream, so PUBACKs keep the order of delivery.
        with self._cond:
            self._pending.append(item)
            if len(self._pending) >= MAX_COMMIT_BATCH:
                self._cond.notify()

    def _marker_item(self, msg: mqtt.MQTTMessage) -> tuple[int, int, str, bytes, int]:
        nonce, _, sent = bytes(msg.payload).decode("ascii", "replace").partition(" ")
        if nonce != self._nonce or not sent.isdigit():
            # An earlier run's marker, or someone else's: acknowledged, not believed.
            log.debug("ignoring a marker not sent by this intake: %r", bytes(msg.payload)[:64])
            return (msg.mid, msg.qos, _ACK_ONLY, b"", 0)
        with self._marker_lock:
            self._marker_sent = None
            self._marker_back = time.monotonic()
            if self._marker_alarm:
                self._marker_alarm = False
                log.info("watermark markers are coming back again on %s", self.marker_topic)
        return (msg.mid, msg.qos, WATERMARK_TOPIC, b"", int(sent))

    # marker thread ---------------------------------------------------------

    def _marker_loop(self) -> None:
        while not self._marker_stop.wait(0.1):
            if not self.subscribed.is_set():
                continue  # a marker published now could miss the subscription
            now = time.monotonic()
            with self._marker_lock:
                sent = self._marker_sent
                if sent is None:
                    due = now - self._marker_back >= MARKER_INTERVAL_S
                else:
                    due = now - max(sent, self._marker_resent) >= MARKER_RESEND_S
                    if now - sent >= MARKER_TIMEOUT_S and not self._marker_alarm:
                        self._marker_alarm = True
                        log.error(
                            "no watermark marker has come back on %s for %.0f s while "
                            "connected: either the broker is still delivering a long backlog, "
                            "or it refuses the marker (the ACL must give this user "
                            "'topic readwrite %s/_pipeline/#'). Until markers come back, "
                            "no window closes for silence.",
                            self.marker_topic, now - sent, TOPIC_ROOT,
                        )  # fmt: skip
                if not due:
                    continue
                if sent is None:
                    self._marker_sent = now
                self._marker_resent = now
            payload = f"{self._nonce} {int(time.time() * 1000)}".encode()
            info = self._client.publish(self.marker_topic, payload, qos=1)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.error("marker publish failed: %s", mqtt.error_string(info.rc))

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
        rows = [(t, p, r) for _, _, t, p, r in batch if t != _ACK_ONLY]
        while True:
            try:
                self._log.append(rows)
                break
            except Exception:
                # Unacknowledged, the messages stay the broker's: keep trying.
                log.exception("ingest log append failed; retrying in 1 s")
                time.sleep(1)
        marks = sum(1 for t, _, _ in rows if t == WATERMARK_TOPIC)
        self.watermarks += marks
        self.messages += len(rows) - marks
        client = self._client
        for mid, qos, *_ in batch:
            if qos > 0:
                client.ack(mid, qos)

    def stop(self) -> None:
        """Commit and acknowledge everything received, then disconnect."""
        self._client.on_message = None  # take nothing more
        self._marker_stop.set()
        self._marker_thread.join()
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
