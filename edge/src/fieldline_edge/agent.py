"""The edge agent: sample sensors, batch readings, publish telemetry and status.

Delivery: at least once while the process lives. Telemetry goes out with QoS 1;
paho keeps unacknowledged messages in memory across reconnects. On a clean stop
the agent flushes, waits (bounded) for PUBACKs and reports how many are missing.
Readings not yet acknowledged are lost if the process dies (no disk spool yet).

Unit of parallelism: one :class:`DevicePublisher` per device, used from one
thread; publishers may share a paho client or each have their own.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from typing import Callable, Deque, NamedTuple, Optional, Sequence

import paho.mqtt.client as mqtt

from fieldline_edge import __version__, contract
from fieldline_edge.contract import Reading, Status
from fieldline_edge.mqtt import (
    STATUS_QOS,
    TELEMETRY_QOS,
    BrokerURL,
    Connection,
    Message,
    PublishError,
    TLSConfig,
    check_publish,
)
from fieldline_edge.sensors import Sensor, SensorError

log = logging.getLogger(__name__)

AGENT_NAME = f"fieldline-edge/{__version__}"
#: Longest a reading waits in the agent's buffer before it is published (seconds).
MAX_BATCH_DELAY_S = 5.0
#: How long a stopping agent waits for outstanding PUBACKs (seconds).
ACK_TIMEOUT_S = 10.0
#: Readings kept in memory when paho refuses more messages; the oldest go first.
MAX_BUFFERED_READINGS = 100_000

#: Called after a telemetry message was handed to paho: (publisher, seq, readings).
OnPublished = Callable[["DevicePublisher", int, Sequence[Reading]], None]


class DevicePublisher:
    """Batches one device's readings into telemetry messages on its telemetry topic.

    Each :meth:`flush` publishes one message (QoS 1) with the next ``seq``; ``seq``
    increases by one per message and is never reused, even if the message is
    later lost. Not thread-safe: add and flush from one thread. Many publishers
    may share one paho client.
    """

    def __init__(
        self,
        client: mqtt.Client,
        site: str,
        device: str,
        *,
        start_seq: int = 0,
        qos: int = TELEMETRY_QOS,
        on_published: Optional[OnPublished] = None,
    ) -> None:
        contract.check_id("site", site)
        contract.check_id("device", device)
        if not 0 <= start_seq <= contract.MAX_SEQ:
            raise ValueError(f"start_seq {start_seq} is outside [0, 2^63)")
        self.client = client
        self.site = site
        self.device = device
        self.topic = contract.telemetry_topic(site, device)
        self.seq = start_seq
        self.qos = qos
        self.on_published = on_published
        self.published_messages = 0
        self.published_readings = 0
        self._buffer: list[Reading] = []
        self._pending: Deque[mqtt.MQTTMessageInfo] = collections.deque()

    def __len__(self) -> int:
        """Readings buffered and not yet published."""
        return len(self._buffer)

    def add(self, reading: Reading) -> int:
        """Buffer a reading; return how many are buffered now."""
        self._buffer.append(reading)
        return len(self._buffer)

    def drop_oldest(self, keep: int) -> int:
        """Keep only the newest ``keep`` buffered readings; return how many were dropped."""
        dropped = max(len(self._buffer) - keep, 0)
        if dropped:
            del self._buffer[:dropped]
        return dropped

    def flush(self) -> Optional[mqtt.MQTTMessageInfo]:
        """Publish the buffered readings as ONE message; ``None`` if nothing was buffered.

        Raises :class:`~fieldline_edge.mqtt.PublishError` if paho refused the
        message; the readings then stay buffered.
        """
        if not self._buffer:
            return None
        readings = self._buffer
        payload = contract.encode_telemetry(self.device, self.seq, readings)
        info = self.client.publish(self.topic, payload, self.qos)
        check_publish(info, self.topic, self.qos)
        seq = self.seq
        self.seq += 1
        self._buffer = []
        self._pending.append(info)
        self.published_messages += 1
        self.published_readings += len(readings)
        if self.on_published is not None:
            self.on_published(self, seq, readings)
        return info

    def unacked(self) -> int:
        """Messages published and not yet acknowledged by the broker."""
        pending = self._pending
        while pending and _is_published(pending[0]):
            pending.popleft()
        return sum(1 for info in pending if not _is_published(info))

    @property
    def acked_messages(self) -> int:
        return self.published_messages - self.unacked()

    def wait_for_acks(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every PUBACK; return how many are still missing."""
        deadline = time.monotonic() + timeout_s
        for info in list(self._pending):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # These errors mean rc says the message was never queued: count it unacked.
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(remaining)
        return self.unacked()


def _is_published(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


class AgentReport(NamedTuple):
    """What one run of the agent did."""

    published_messages: int
    published_readings: int
    unacked_messages: int
    dropped_readings: int


class Agent:
    """Runs one device: samples every sensor every ``interval_s``, publishes batches.

    A batch is published when it holds ``batch_size`` readings or its oldest
    reading is ``max_batch_delay_s`` old. The device's retained status says
    ``online`` with each sensor's state ("ok" or "error: ...") after every
    (re)connect and whenever a sensor's state changes; the last will and a clean
    stop say ``offline``. A failing sensor is logged and reported, never fatal.
    """

    def __init__(
        self,
        broker: BrokerURL,
        site: str,
        device: str,
        sensors: Sequence[Sensor],
        *,
        interval_s: float = 1.0,
        batch_size: int = 10,
        max_batch_delay_s: float = MAX_BATCH_DELAY_S,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        start_seq: Optional[int] = None,
        clock: Callable[[], float] = time.time,
        tls: Optional[TLSConfig] = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if not 1 <= batch_size <= contract.MAX_READINGS_PER_MESSAGE:
            raise ValueError(f"batch_size must be in 1..{contract.MAX_READINGS_PER_MESSAGE}")
        if max_batch_delay_s < 0 or ack_timeout_s < 0:
            raise ValueError("max_batch_delay_s and ack_timeout_s must be >= 0")
        names = [s.name for s in sensors]
        if len(set(names)) != len(names):
            raise ValueError(f"sensor names must be unique, got {names}")
        for name in names:
            contract.check_id("sensor", name)
        self.site = site
        self.device = device
        self.sensors = list(sensors)
        self.interval_s = interval_s
        self.batch_size = batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.ack_timeout_s = ack_timeout_s
        self.clock = clock
        self.status_topic = contract.status_topic(site, device)
        self._states: dict[str, str] = {}
        self._states_lock = threading.Lock()
        self._stop = threading.Event()
        self.dropped_readings = 0
        will = Message(self.status_topic, contract.encode_status(self.status("offline")))
        self.connection = Connection(broker, f"fieldline-edge-{site}-{device}", will=will, tls=tls)
        seq0 = contract.initial_seq(clock()) if start_seq is None else start_seq
        self.publisher = DevicePublisher(self.connection.client, site, device, start_seq=seq0)

    def status(self, state: str) -> Status:
        """The device's status now, with each sensor's last state."""
        with self._states_lock:
            sensors = dict(self._states)
        return Status(self.device, state, int(self.clock() * 1000), AGENT_NAME, sensors)

    def stop(self) -> None:
        """Ask :meth:`run` to finish; safe from any thread and from signal handlers."""
        self._stop.set()

    def run(self, duration_s: Optional[float] = None) -> AgentReport:
        """Sample and publish until :meth:`stop` or ``duration_s``, then shut down cleanly."""
        start = time.monotonic()
        end = None if duration_s is None else start + duration_s
        # Sample once before connecting so the birth message already says which
        # sensors work.
        self.sample_once()
        batch_started: Optional[float] = start if len(self.publisher) else None
        self.connection.add_birth(
            self.status_topic, lambda: contract.encode_status(self.status("online"))
        )
        self.connection.start()
        next_tick = start + self.interval_s
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if end is not None and now >= end:
                    break
                if now >= next_tick:
                    flushed = self.publisher.published_messages
                    self.sample_once()
                    if not len(self.publisher):
                        batch_started = None
                    elif batch_started is None or self.publisher.published_messages != flushed:
                        batch_started = now
                    # After a stall (suspended process, slow sensor) skip the missed
                    # ticks instead of sampling in a burst.
                    next_tick = max(next_tick + self.interval_s, now)
                if batch_started is not None and now - batch_started >= self.max_batch_delay_s:
                    self._flush()
                    batch_started = None
                wake = (
                    next_tick
                    if batch_started is None
                    else min(next_tick, batch_started + self.max_batch_delay_s)
                )
                if end is not None:
                    wake = min(wake, end)
                self._stop.wait(max(wake - time.monotonic(), 0.0))
        finally:
            unacked = self._shutdown()
        return AgentReport(
            self.publisher.published_messages,
            self.publisher.published_readings,
            unacked,
            self.dropped_readings,
        )

    def sample_once(self) -> None:
        """Read every sensor once (one timestamp for all) and publish full batches."""
        ts = int(self.clock() * 1000)
        changed = False
        for sensor in self.sensors:
            try:
                value = float(sensor.read())
                if not math.isfinite(value):
                    raise SensorError(f"non-finite value {value!r}")
                state = "ok"
            except SensorError as exc:
                state = f"error: {exc}"
            except Exception as exc:  # a driver bug must not stop the other sensors
                log.exception("sensor %s failed", sensor.name)
                state = f"error: {type(exc).__name__}: {exc}"
            else:
                reading = Reading(sensor.name, ts, value, sensor.unit)
                if self.publisher.add(reading) >= self.batch_size:
                    self._flush()
            with self._states_lock:
                previous = self._states.get(sensor.name)
                if previous != state:
                    if state != "ok":
                        log.warning("sensor %s: %s", sensor.name, state)
                    elif previous is not None:
                        log.info("sensor %s: ok again", sensor.name)
                    changed = True
                    self._states[sensor.name] = state
        if changed and self.connection.connected:
            self._publish_status("online")

    def _flush(self) -> None:
        try:
            self.publisher.flush()
        except PublishError as exc:
            log.error("%s; %d readings stay buffered", exc, len(self.publisher))
            dropped = self.publisher.drop_oldest(MAX_BUFFERED_READINGS)
            if dropped:
                self.dropped_readings += dropped
                log.error("buffer full: dropped the %d oldest readings", dropped)

    def _publish_status(self, state: str) -> Optional[mqtt.MQTTMessageInfo]:
        try:
            return self.connection.publish(
                self.status_topic,
                contract.encode_status(self.status(state)),
                STATUS_QOS,
                retain=True,
            )
        except PublishError as exc:
            log.error("status: %s", exc)
            return None

    def _shutdown(self) -> int:
        """Flush, wait for PUBACKs, say ``offline``, disconnect; return unacked messages."""
        self._flush()
        unacked = self.publisher.wait_for_acks(self.ack_timeout_s)
        if unacked:
            log.warning("%d telemetry messages were not acknowledged by the broker", unacked)
        info = self._publish_status("offline")
        if info is not None and self.connection.connected:
            try:
                info.wait_for_publish(self.ack_timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not delivered: %s", exc)
        self.connection.close()
        return unacked
