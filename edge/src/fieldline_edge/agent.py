"""The edge agent: sample sensors, batch readings, spool them, publish telemetry and status.

Delivery: at least once, across broker outages, network cuts, restarts and power
loss. Every batch is written to the spool (SQLite, see spool.py) first, published
from there with QoS 1, oldest first and at a bounded rate, and deleted when its
PUBACK arrives. A message may be published twice (after a reconnect or a
crash); consumers drop the copy by ``(device, seq)``.

Unit of parallelism: one :class:`Agent` per device: one thread samples, spools
and publishes; paho's network thread only reports acknowledgements.
:class:`DevicePublisher` (no spool, used by the simulator) batches for one
device on a shared client.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import threading
import time
from typing import Callable, Deque, NamedTuple, Optional, Sequence, Union

import paho.mqtt.client as mqtt

from fieldline_edge import __version__, contract
from fieldline_edge.clock import Clock
from fieldline_edge.contract import Reading, Status
from fieldline_edge.drivers.base import Driver, Sample
from fieldline_edge.mqtt import (
    KEEPALIVE_S,
    STATUS_QOS,
    TELEMETRY_QOS,
    BrokerURL,
    Connection,
    Message,
    PublishError,
    TLSConfig,
    check_publish,
)
from fieldline_edge.sdnotify import Notifier
from fieldline_edge.sensors import Sensor, SensorError
from fieldline_edge.spool import MEMORY, Spool

log = logging.getLogger(__name__)

AGENT_NAME = f"fieldline-edge/{__version__}"
#: Longest a reading waits in the agent's buffer before it is published (seconds).
MAX_BATCH_DELAY_S = 5.0
#: How long a stopping agent waits for outstanding PUBACKs (seconds).
ACK_TIMEOUT_S = 10.0
#: Readings kept in memory when paho refuses more messages; the oldest go first.
MAX_BUFFERED_READINGS = 100_000
#: Spooled messages published per second at most (a replay after an outage).
REPLAY_RATE_PER_S = 20.0
#: Telemetry messages awaiting PUBACK at once.
MAX_INFLIGHT = 20
#: Longest wait between retries of a failing driver (unless its interval is longer).
RETRY_MAX_S = 60.0
#: Readings held back in memory while the clock is not set; the oldest go first.
MAX_HELD_READINGS = 100_000
#: How often held-back readings check whether the clock is set yet (seconds).
CLOCK_POLL_S = 1.0

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
        schema: str = contract.SCHEMA_TELEMETRY_V1,
    ) -> None:
        contract.check_id("site", site)
        contract.check_id("device", device)
        if not 0 <= start_seq <= contract.MAX_SEQ:
            raise ValueError(f"start_seq {start_seq} is outside [0, 2^63)")
        check_schema(schema)
        self.client = client
        self.site = site
        self.device = device
        self.topic = contract.telemetry_topic(site, device)
        self.seq = start_seq
        self.qos = qos
        self.on_published = on_published
        self.schema = schema
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
        payload = contract.encode_telemetry(self.device, self.seq, readings, self.schema)
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


def check_schema(schema: str) -> str:
    """``schema`` if it is a telemetry schema this contract can encode, else ValueError."""
    if schema not in contract.TELEMETRY_SCHEMAS:
        known = ", ".join(contract.TELEMETRY_SCHEMAS)
        raise ValueError(f"unknown telemetry schema {schema!r} (known: {known})")
    return schema


def _is_published(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False


class AgentReport(NamedTuple):
    """What one run of the agent did.

    ``published_*``: acknowledged by the broker during this run.
    ``unacked_messages``: still in the spool at the stop (kept for the next start
    when the spool is on disk, ``kept``). ``dropped_readings``: lost for good
    (spool full, or held back for a clock that never became sane).
    """

    published_messages: int
    published_readings: int
    unacked_messages: int
    dropped_readings: int
    kept: bool = False


class SensorDriver:
    """A one-value :class:`~fieldline_edge.sensors.Sensor` as a driver."""

    def __init__(self, sensor: Sensor) -> None:
        self.sensor = sensor
        self.name = sensor.name

    def read(self) -> list[Sample]:
        return [Sample(self.sensor.name, float(self.sensor.read()), self.sensor.unit)]


class Scheduled:
    """A driver, how often it is read, and its health."""

    def __init__(self, driver: Driver, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError(f"{driver.name}: interval_s must be > 0")
        self.driver = driver
        self.interval_s = interval_s
        self.next_due = 0.0
        self.failures = 0
        self.state: Optional[str] = None


def as_scheduled(item: Union[Scheduled, Driver, Sensor], interval_s: float) -> Scheduled:
    if isinstance(item, Scheduled):
        return item
    if isinstance(item, Sensor):  # one value per read, with a unit
        return Scheduled(SensorDriver(item), interval_s)
    return Scheduled(item, interval_s)


class _TokenBucket:
    """At most ``rate`` messages per second, bursts of up to one second's worth."""

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.at = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def wait_s(self) -> float:
        return max(0.0, (1.0 - self.tokens) / self.rate)


class Agent:
    """Runs one device: reads each driver on its own interval, spools, publishes.

    A batch is spooled when it holds ``batch_size`` readings or its oldest
    reading is ``max_batch_delay_s`` old, and published from the spool when the
    broker is connected (at most ``replay_rate_per_s`` messages a second, at most
    :data:`MAX_INFLIGHT` awaiting PUBACK). A driver that fails is reported in the
    status (``sensors``: name -> ``"ok"`` / ``"error: ..."``) and retried with
    backoff (its interval doubled per failure, up to :data:`RETRY_MAX_S`); it
    never stops the agent. The retained status says ``online`` after every
    (re)connect and when health changes; the last will and a clean stop say
    ``offline``. Two reserved entries appear in ``sensors`` only when something
    is wrong: ``_spool`` (readings dropped because the spool was full) and
    ``_clock`` (readings held back until the clock is set, see clock.py).
    Batches are encoded in ``telemetry_schema`` when they are spooled (version 1
    unless configured otherwise; see spool.py for batches spooled before a change).
    """

    def __init__(
        self,
        broker: BrokerURL,
        site: str,
        device: str,
        sensors: Sequence[Union[Scheduled, Driver, Sensor]],
        *,
        interval_s: float = 1.0,
        batch_size: int = 10,
        max_batch_delay_s: float = MAX_BATCH_DELAY_S,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        start_seq: Optional[int] = None,
        clock: Optional[Clock] = None,
        tls: Optional[TLSConfig] = None,
        spool: Optional[Spool] = None,
        replay_rate_per_s: float = REPLAY_RATE_PER_S,
        protocol: str = "3.1.1",
        keepalive_s: int = KEEPALIVE_S,
        notifier: Optional[Notifier] = None,
        telemetry_schema: str = contract.SCHEMA_TELEMETRY_V1,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be > 0")
        if not 1 <= batch_size <= contract.MAX_READINGS_PER_MESSAGE:
            raise ValueError(f"batch_size must be in 1..{contract.MAX_READINGS_PER_MESSAGE}")
        if max_batch_delay_s < 0 or ack_timeout_s < 0:
            raise ValueError("max_batch_delay_s and ack_timeout_s must be >= 0")
        if replay_rate_per_s <= 0:
            raise ValueError("replay_rate_per_s must be > 0")
        contract.check_id("site", site)
        contract.check_id("device", device)
        self.telemetry_schema = check_schema(telemetry_schema)
        self.scheduled = [as_scheduled(s, interval_s) for s in sensors]
        names = [s.driver.name for s in self.scheduled]
        if len(set(names)) != len(names):
            raise ValueError(f"sensor names must be unique, got {names}")
        for name in names:
            contract.check_id("sensor", name)
        self.site = site
        self.device = device
        self.batch_size = batch_size
        self.max_batch_delay_s = max_batch_delay_s
        self.ack_timeout_s = ack_timeout_s
        self.clock = clock or Clock()
        self.spool = spool if spool is not None else Spool(MEMORY, device)
        self.start_seq = start_seq
        self.replay_rate_per_s = replay_rate_per_s
        self.notifier = notifier or Notifier({})
        self.topic = contract.telemetry_topic(site, device)
        self.status_topic = contract.status_topic(site, device)
        self._states_lock = threading.Lock()
        self._extra: dict[str, str] = {}
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._acks: Deque[tuple[int, bool]] = collections.deque()
        self._buffer: list[Reading] = []
        self._buffer_since: Optional[float] = None
        self._held: list[tuple[float, Sample]] = []
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._published_upto = -1
        self._status_dirty = False
        self.dropped_held = 0
        self.rejected_messages = 0
        self.published_messages = 0
        self.published_readings = 0
        self._readings_by_seq: dict[int, int] = {}
        will = Message(self.status_topic, contract.encode_status(self.status("offline")))
        self.connection = Connection(
            broker,
            f"fieldline-edge-{site}-{device}",
            will=will,
            tls=tls,
            protocol=protocol,
            keepalive_s=keepalive_s,
            max_inflight=MAX_INFLIGHT,
            on_published=self._on_published,
            on_connected=self._wake.set,
        )

    # ------------------------------------------------------------------ status

    def status(self, state: str) -> Status:
        """The device's status now, with each sensor's last state."""
        with self._states_lock:
            sensors = {s.driver.name: s.state for s in self.scheduled if s.state is not None}
            sensors.update(self._extra)
        return Status(self.device, state, self.clock.wall_ms(), AGENT_NAME, sensors)

    @property
    def dropped_readings(self) -> int:
        return self.spool.dropped_readings + self.dropped_held

    def _set_extra(self, key: str, problem: Optional[str]) -> None:
        with self._states_lock:
            current = self._extra.get(key)
            wanted = None if problem is None else f"error: {problem}"
            if current == wanted:
                return
            if wanted is None:
                del self._extra[key]
            else:
                self._extra[key] = wanted
        self._status_dirty = True

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

    # ------------------------------------------------------------------ control

    def stop(self) -> None:
        """Ask :meth:`run` to finish; safe from any thread and from signal handlers."""
        self._stop.set()
        self._wake.set()

    def _on_published(self, mid: int, ok: bool) -> None:  # paho's network thread
        self._acks.append((mid, ok))
        self._wake.set()

    def run(self, duration_s: Optional[float] = None) -> AgentReport:
        """Sample and publish until :meth:`stop` or ``duration_s``, then shut down cleanly."""
        mono = self.clock.monotonic
        start = mono()
        end = None if duration_s is None else start + duration_s
        if self.start_seq is not None:
            self.spool.seq_floor = self.start_seq
        # Read every sensor once before connecting, so that the birth message
        # already says which sensors work.
        self._sample_due(start)
        self.connection.add_birth(
            self.status_topic, lambda: contract.encode_status(self.status("online"))
        )
        self.connection.start()
        self.notifier.ready(f"publishing to {self.connection.broker}")
        bucket = _TokenBucket(self.replay_rate_per_s, start)
        next_watchdog = start
        try:
            while not self._stop.is_set():
                now = mono()
                if end is not None and now >= end:
                    break
                self._sample_due(now)
                self._release_held()
                if self._buffer and (
                    len(self._buffer) >= self.batch_size
                    or now - (self._buffer_since or now) >= self.max_batch_delay_s
                ):
                    self._spool_buffer()
                self._process_acks()
                backlog = self._publish_from_spool(bucket, now)
                if self._status_dirty and self.connection.connected:
                    self._status_dirty = False
                    self._publish_status("online")
                wd = self.notifier.watchdog_interval_s
                if wd is not None and now >= next_watchdog:
                    self.notifier.watchdog()
                    next_watchdog = now + wd
                wake = min(s.next_due for s in self.scheduled) if self.scheduled else now + 60
                if self._buffer_since is not None:
                    wake = min(wake, self._buffer_since + self.max_batch_delay_s)
                if self._held:
                    wake = min(wake, now + CLOCK_POLL_S)
                if backlog:
                    wake = min(wake, now + bucket.wait_s())
                if wd is not None:
                    wake = min(wake, next_watchdog)
                if end is not None:
                    wake = min(wake, end)
                self._wake.wait(max(wake - mono(), 0.0))
                self._wake.clear()
        finally:
            report = self._shutdown(bucket)
        return report

    # ------------------------------------------------------------------ sampling

    def _sample_due(self, now: float) -> None:
        changed = False
        for s in self.scheduled:
            if now < s.next_due:
                continue
            state = self._read(s, now)
            if state == "ok":
                s.failures = 0
                # After a stall, skip missed ticks instead of sampling in a burst.
                s.next_due = (
                    max(s.next_due + s.interval_s, now) if s.next_due else now + s.interval_s
                )
            else:
                s.failures += 1
                cap = max(s.interval_s, RETRY_MAX_S)
                s.next_due = now + min(s.interval_s * 2 ** min(s.failures - 1, 20), cap)
            with self._states_lock:
                previous, s.state = s.state, state
            if previous != state:
                changed = True
                if state != "ok":
                    log.warning("sensor %s: %s", s.driver.name, state)
                elif previous is not None:
                    log.info("sensor %s: ok again", s.driver.name)
        if changed:
            self._status_dirty = True

    def _read(self, s: Scheduled, now: float) -> str:
        try:
            samples = s.driver.read()
            for sample in samples:
                if not math.isfinite(sample.value) or abs(sample.value) > contract.MAX_ABS_VALUE:
                    raise SensorError(f"{sample.sensor}: value {sample.value!r} out of range")
                contract.check_id("sensor", sample.sensor)
        except SensorError as exc:
            return f"error: {exc}"
        except contract.ContractError as exc:
            return f"error: {exc.detail}"
        except Exception as exc:  # a driver bug must not stop the other sensors
            log.exception("sensor %s failed", s.driver.name)
            return f"error: {type(exc).__name__}: {exc}"
        if self.clock.is_sane():
            self._release_held()  # older readings first, so seq order is time order
            ts = self.clock.wall_ms()
            for sample in samples:
                self._add(Reading(sample.sensor, ts, sample.value, sample.unit), now)
        else:
            self._held.extend((now, sample) for sample in samples)
            if len(self._held) > MAX_HELD_READINGS:
                dropped = len(self._held) - MAX_HELD_READINGS
                del self._held[:dropped]
                self.dropped_held += dropped
                log.error("clock not set: dropped the %d oldest held-back readings", dropped)
            self._set_extra(
                "_clock", f"{self.clock.why_not()}; {len(self._held)} readings held back"
            )
        return "ok"

    def _add(self, reading: Reading, now: float) -> None:
        if not self._buffer:
            self._buffer_since = now
        self._buffer.append(reading)
        if len(self._buffer) >= self.batch_size:
            self._spool_buffer()

    def _release_held(self) -> None:
        """Stamp held-back readings with their real time once the clock is sane."""
        if not self._held or not self.clock.is_sane():
            return
        held, self._held = self._held, []
        log.info("clock is set: releasing %d held-back readings with corrected times", len(held))
        for taken, sample in held:
            ts = self.clock.stamp_ms(taken)
            self._add(Reading(sample.sensor, ts, sample.value, sample.unit), taken)
        self._set_extra("_clock", None)

    def _spool_buffer(self) -> None:
        while self._buffer:
            batch = self._buffer[: self.batch_size]
            before = self.spool.dropped_readings
            self.spool.append(batch, self.clock.wall_ms(), self.telemetry_schema)
            del self._buffer[: self.batch_size]
            if self.spool.dropped_readings != before:
                self._set_extra(
                    "_spool", f"full: {self.spool.dropped_readings} readings dropped so far"
                )
        self._buffer_since = None
        self._wake.set()

    # ------------------------------------------------------------------ publishing

    def _process_acks(self) -> None:
        done: list[int] = []
        while self._acks:
            mid, ok = self._acks.popleft()
            seq = self._inflight.pop(mid, None)
            if seq is None:
                continue  # a status message
            readings = self._readings_by_seq.pop(seq, 0)
            if ok:
                self.published_messages += 1
                self.published_readings += readings
            else:
                # An MQTT 5 broker said no (e.g. not authorized): resending would
                # be refused forever and block everything behind it.
                self.rejected_messages += 1
                log.error("broker refused telemetry seq %d (%d readings)", seq, readings)
            done.append(seq)
        if done:
            self.spool.delete(done)

    def _publish_from_spool(self, bucket: _TokenBucket, now: float) -> bool:
        """Publish what the rate and the in-flight window allow; True if more is waiting."""
        if not self.connection.connected:
            return False
        room = MAX_INFLIGHT - len(self._inflight)
        if room <= 0 or self.spool.pending_batches <= len(self._inflight):
            return False
        for item in self.spool.peek(self._published_upto, room):
            if not bucket.take(now):
                return True
            try:
                info = self.connection.publish(self.topic, item.payload, TELEMETRY_QOS)
            except PublishError as exc:
                log.error("%s; retrying later", exc)
                return True
            self._inflight[info.mid] = item.seq
            self._readings_by_seq[item.seq] = item.readings
            self._published_upto = item.seq
        return self.spool.pending_batches > len(self._inflight)

    # ------------------------------------------------------------------ stopping

    def _shutdown(self, bucket: _TokenBucket) -> AgentReport:
        """Spool what is buffered, deliver what can be (bounded), say offline, disconnect."""
        self.notifier.stopping()
        if self._held:
            # Never sent with a wrong time: they are lost, and counted.
            self.dropped_held += len(self._held)
            log.error("the clock was never set: %d held-back readings are lost", len(self._held))
            self._held = []
        if self._buffer:
            self._spool_buffer()
        # Deliver what can be delivered in ack_timeout_s (at the replay rate);
        # what is left stays in an on-disk spool for the next start.
        mono = self.clock.monotonic
        deadline = mono() + self.ack_timeout_s
        while mono() < deadline and self.connection.connected:
            self._process_acks()
            if not self.spool.pending_batches:
                break
            self._publish_from_spool(bucket, mono())
            self._wake.wait(min(0.05, bucket.wait_s() or 0.05))
            self._wake.clear()
        self._process_acks()
        unacked = self.spool.pending_batches
        if unacked and self.spool.durable:
            log.info(
                "%d messages stay in the spool %s for the next start", unacked, self.spool.path
            )
        elif unacked:
            log.warning("%d telemetry messages were not acknowledged by the broker", unacked)
        info = self._publish_status("offline")
        if info is not None and self.connection.connected:
            try:
                info.wait_for_publish(self.ack_timeout_s)
            except (RuntimeError, ValueError) as exc:
                log.warning("offline status not delivered: %s", exc)
        self.connection.close()
        report = AgentReport(
            self.published_messages,
            self.published_readings,
            unacked,
            self.dropped_readings,
            self.spool.durable,
        )
        self.spool.close()
        self.notifier.close()
        return report
