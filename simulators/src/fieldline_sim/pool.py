"""Many MQTT connections served by one thread: the simulators' network layer.

A :class:`ClientPool` holds paho clients (MQTT 3.1.1, clean session) without
paho's network threads: the thread that publishes also reads PUBACKs, writes
what the socket could not take at once and keeps connections alive, through
one ``selectors`` loop (:meth:`ClientPool.service`). So 10,000 connections cost
10,000 sockets, not 10,000 threads (paho's ``loop_start`` would add a thread and
a socket pair to each).

Delivery: QoS 1 messages are counted until their PUBACK arrives; a connection
that drops reconnects with backoff, and paho resends its unacknowledged
messages (with DUP set, MQTT 3.1.1 §4.4). Not thread-safe: use it from one
thread.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import selectors
import time
from collections.abc import Callable, Sequence

import paho.mqtt.client as mqtt
from fieldline_edge.mqtt import (
    KEEPALIVE_S,
    BrokerURL,
    ConnectError,
    Message,
    TLSConfig,
    check_publish,
    configure_client,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)

#: QoS 1 messages on the wire per connection; paho queues the rest in memory.
MAX_INFLIGHT = 1000
#: File descriptors kept free for everything else (files, the selector, logging).
FD_RESERVE = 64
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
#: How often keepalive pings and reconnects are looked after (seconds).
MISC_INTERVAL_S = 1.0
#: Connections opened between two looks at the sockets while connecting.
CONNECT_BURST = 200


def ensure_fd_limit(connections: int) -> None:
    """Raise the soft ``RLIMIT_NOFILE`` to fit ``connections`` sockets, or raise ValueError."""
    needed = connections + FD_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard == resource.RLIM_INFINITY or hard >= needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
            return
        raise ValueError(
            f"{connections} connections need about {needed} file descriptors, but this "
            f"process may open at most {hard} (ulimit -n): raise the limit, or share "
            "connections with --connections N"
        )


class ClientPool:
    """Connections ``0..n-1``, each with its own broker URL (user), client id and last will."""

    def __init__(
        self,
        brokers: Sequence[BrokerURL],
        client_ids: Sequence[str],
        *,
        tls: TLSConfig | None = None,
        wills: Sequence[Message | None] | None = None,
        max_inflight: int = MAX_INFLIGHT,
        keepalive_s: int = KEEPALIVE_S,
    ) -> None:
        if len(brokers) != len(client_ids):
            raise ValueError("one broker URL per client id")
        ensure_fd_limit(len(brokers))
        self.brokers = list(brokers)
        self.keepalive_s = keepalive_s
        self.clients: list[mqtt.Client] = []
        self._births: list[list[tuple[str, Callable[[], bytes]]]] = [[] for _ in brokers]
        #: Per connection: message id -> whether it is telemetry (see :meth:`publish`).
        self._pending: list[dict[int, bool]] = [{} for _ in brokers]
        self._connected: list[bool] = [False] * len(brokers)
        self._refused: str | None = None
        self._fds: list[int] = [-1] * len(brokers)
        self._retry_at: dict[int, float] = {}
        self._retry_delay: list[float] = [RECONNECT_MIN_S] * len(brokers)
        self._writers: set[int] = set()
        self._sel = selectors.DefaultSelector()
        self._next_misc = time.monotonic() + MISC_INTERVAL_S
        self._closing = False
        self.published = 0
        self.acked = 0
        #: The acknowledged messages that were telemetry.
        self.acked_telemetry = 0
        for i, (broker, cid) in enumerate(zip(brokers, client_ids)):
            c = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=cid,
                protocol=mqtt.MQTTv311,
                clean_session=True,
                userdata=i,
            )
            configure_client(c, broker, tls)
            will = wills[i] if wills is not None else None
            if will is not None:
                c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
            c.max_inflight_messages_set(max_inflight)
            c.max_queued_messages_set(0)
            c.on_connect = self._on_connect
            c.on_disconnect = self._on_disconnect
            c.on_publish = self._on_publish
            self.clients.append(c)

    def __len__(self) -> int:
        return len(self.clients)

    @property
    def unacked(self) -> int:
        return self.published - self.acked

    @property
    def connected(self) -> int:
        return sum(self._connected)

    def add_birth(self, index: int, topic: str, payload: Callable[[], bytes]) -> None:
        """Publish ``payload()`` retained (QoS 1) on ``topic`` after each connect of ``index``."""
        self._births[index].append((topic, payload))

    # ------------------------------------------------------------------ connecting

    def connect(self, timeout_s: float = 30.0) -> None:
        """Connect every client and wait for every CONNACK; :class:`ConnectError` if one fails."""
        try:
            for i, c in enumerate(self.clients):
                b = self.brokers[i]
                try:
                    c.connect(b.host, b.port, self.keepalive_s)
                except (OSError, ValueError) as exc:
                    raise ConnectError(f"cannot connect to {b}: {exc}") from None
                self._register(i)
                if i % CONNECT_BURST == CONNECT_BURST - 1:
                    self.service(0)
            deadline = time.monotonic() + timeout_s
            while not all(self._connected):
                if self._refused is not None:
                    raise ConnectError(f"cannot connect to {self.brokers[0]}: {self._refused}")
                if time.monotonic() > deadline:
                    missing = len(self.clients) - self.connected
                    raise ConnectError(
                        f"cannot connect to {self.brokers[0]}: "
                        f"{missing} connections got no CONNACK within {timeout_s:g} s"
                    )
                self.service(0.05)
        except BaseException:
            self.close(0)
            raise

    def _register(self, i: int) -> None:
        sock = self.clients[i].socket()
        if sock is None:
            return
        fd = sock.fileno()
        self._unregister(i)
        self._sel.register(fd, selectors.EVENT_READ, i)
        self._fds[i] = fd
        if self.clients[i].want_write():
            self._writers.add(i)

    def _unregister(self, i: int) -> None:
        fd = self._fds[i]
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._sel.unregister(fd)
            self._fds[i] = -1

    # ------------------------------------------------------------------ publishing

    def publish(
        self, index: int, topic: str, payload: bytes, qos: int = 1, telemetry: bool = True
    ) -> None:
        """Send (or queue) a message on connection ``index``; QoS 1 ones are counted until acked.

        ``telemetry`` False: the message (a label, say) counts in ``published``
        and ``acked`` but not in ``acked_telemetry``.
        """
        c = self.clients[index]
        info = check_publish(c.publish(topic, payload, qos), topic, qos)
        if qos > 0:
            self._pending[index][info.mid] = telemetry
            self.published += 1
        if c.want_write():
            self._writers.add(index)

    def publish_retained(self, index: int, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        """A retained QoS 1 message (a status), not counted with the telemetry."""
        c = self.clients[index]
        info = check_publish(c.publish(topic, payload, 1, retain=True), topic, 1)
        if c.want_write():
            self._writers.add(index)
        return info

    def service(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for network events and handle them."""
        for i in list(self._writers):
            fd = self._fds[i]
            if fd < 0:
                self._writers.discard(i)
                continue
            want = self.clients[i].want_write()
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self._sel.modify(fd, events, i)
            if not want:
                self._writers.discard(i)
        ready = self._sel.select(timeout_s) if self._sel.get_map() else []
        if not ready and timeout_s > 0 and not self._sel.get_map():
            time.sleep(min(timeout_s, 0.05))
        for key, mask in ready:
            index: int = key.data
            c = self.clients[index]
            if mask & selectors.EVENT_READ:
                c.loop_read()
                sock = c.socket()
                # TLS: bytes already decrypted are invisible to select().
                while sock is not None and getattr(sock, "pending", lambda: 0)():
                    c.loop_read()
                    sock = c.socket()
            if mask & selectors.EVENT_WRITE and c.socket() is not None:
                c.loop_write()
            if c.want_write():
                self._writers.add(index)
        now = time.monotonic()
        if now >= self._next_misc:
            self._next_misc = now + MISC_INTERVAL_S
            self._misc(now)

    def _misc(self, now: float) -> None:
        for i, c in enumerate(self.clients):
            if self._fds[i] >= 0:
                c.loop_misc()
        for i, at in list(self._retry_at.items()):
            if now < at or self._closing:
                continue
            del self._retry_at[i]
            try:
                self.clients[i].reconnect()
            except (OSError, ValueError) as exc:
                delay = self._retry_delay[i]
                self._retry_delay[i] = min(delay * 2, RECONNECT_MAX_S)
                self._retry_at[i] = now + delay
                log.warning("cannot reach %s (%s); retrying in %.0f s", self.brokers[i], exc, delay)
                continue
            self._register(i)

    def wait_for_acks(self, timeout_s: float) -> int:
        """Serve the network until every QoS 1 message is acked or time runs out; return unacked."""
        deadline = time.monotonic() + timeout_s
        while self.unacked and time.monotonic() < deadline:
            self.service(min(0.05, max(deadline - time.monotonic(), 0.0)))
        return self.unacked

    def close(self, timeout_s: float = 5.0) -> None:
        """Disconnect cleanly (brokers drop the last wills) and close every socket."""
        self._closing = True
        for c in self.clients:
            if c.socket() is not None:
                c.disconnect()
        deadline = time.monotonic() + timeout_s
        while any(c.socket() is not None and c.want_write() for c in self.clients):
            if time.monotonic() >= deadline:
                break
            self.service(0.05)
        for i, c in enumerate(self.clients):
            self._unregister(i)
            sock = c.socket()
            if sock is not None:
                sock.close()
            self._connected[i] = False
        self._sel.close()

    # ------------------------------------------------------------------ callbacks

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: int,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        if reason_code.is_failure:
            self._refused = f"broker refused the connection: {reason_code}"
            return
        self._connected[userdata] = True
        self._retry_delay[userdata] = RECONNECT_MIN_S
        for topic, payload in self._births[userdata]:
            client.publish(topic, payload(), 1, retain=True)
        self._writers.add(userdata)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: int,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        was = self._connected[userdata]
        self._connected[userdata] = False
        self._unregister(userdata)
        if self._closing:
            return
        if was:
            log.warning(
                "lost connection to %s (%s); reconnecting", self.brokers[userdata], reason_code
            )
        self._retry_at[userdata] = time.monotonic() + self._retry_delay[userdata]

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: int,
        mid: int,
        reason_code: ReasonCode,
        properties: object,
    ) -> None:
        telemetry = self._pending[userdata].pop(mid, None)
        if telemetry is not None:
            self.acked += 1
            self.acked_telemetry += telemetry
