"""A fleet of simulated devices publishing through the edge agent's code path.

Every device is a :class:`fieldline_edge.agent.DevicePublisher` (same topic,
encoding in ``schema``, per-device ``seq``, QoS 1) fed by
:class:`fieldline_edge.sensors.SimulatedSensor` instances. Values are
deterministic: sample ``k`` of sensor ``s`` of device index ``i`` depends only on
``(seed, i, s, k)``; timestamps are the wall clock, paced in real time at
``rate_hz`` samples per second per sensor.

Connections: ``connections`` paho clients, device ``i`` on client ``i % connections``.
The default is one client per device up to :data:`DEFAULT_MAX_CONNECTIONS`
devices (each then has its own last will, like a real device), and that many
shared clients beyond. Shared clients carry no last will (MQTT allows one per
connection); a clean stop still publishes every device's ``offline`` status.

Delivery: at least once while the process lives (QoS 1). On stop the fleet
flushes every buffer, waits up to ``ack_timeout_s`` for all PUBACKs and reports
how many messages stayed unacknowledged.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import paho.mqtt.client as mqtt
from fieldline_edge import contract
from fieldline_edge.agent import DevicePublisher
from fieldline_edge.contract import Reading, Status
from fieldline_edge.mqtt import (
    STATUS_QOS,
    BrokerURL,
    Connection,
    Message,
    PublishError,
    TLSConfig,
)
from fieldline_edge.sensors import SimulatedSensor

from fieldline_sim import __version__
from fieldline_sim.credentials import FleetCredentials
from fieldline_sim.groundtruth import GroundTruthWriter
from fieldline_sim.metrics import (
    METRICS_INTERVAL_S,
    FleetMetrics,
    check_instance,
    default_instance,
    metrics_topic,
)

log = logging.getLogger(__name__)

AGENT_NAME = f"fieldline-sim/{__version__}"
#: Up to this many devices each get their own client; more devices share this many.
DEFAULT_MAX_CONNECTIONS = 100
#: How long a stopping fleet waits for all outstanding PUBACKs (seconds).
ACK_TIMEOUT_S = 30.0
#: QoS 1 messages in flight per client; a shared client carries many devices.
MAX_INFLIGHT_MESSAGES = 200
#: Warn once when the fleet runs this far behind its schedule (seconds).
LAG_WARNING_S = 1.0


class SensorSpec(NamedTuple):
    """A simulated sensor: name, unit and the shape of its signal (see SimulatedSensor)."""

    name: str
    unit: str = ""
    base: float = 0.0
    amplitude: float = 1.0
    noise: float = 0.1
    period_s: float = 600.0


#: Known sensor names and their plausible signals; other names get a generic one.
SENSOR_PROFILES: dict[str, SensorSpec] = {
    "temperature": SensorSpec("temperature", "°C", 21.0, 4.0, 0.3, 600.0),
    "humidity": SensorSpec("humidity", "%", 45.0, 10.0, 1.0, 900.0),
    "pressure": SensorSpec("pressure", "hPa", 1013.0, 5.0, 0.5, 1800.0),
    "co2": SensorSpec("co2", "ppm", 600.0, 150.0, 20.0, 1200.0),
}
DEFAULT_SENSORS = (SENSOR_PROFILES["temperature"], SENSOR_PROFILES["humidity"])


def parse_sensors(text: str) -> tuple[SensorSpec, ...]:
    """``"temperature,humidity,flow:l/min"`` -> specs; ``NAME[:UNIT]``, names unique."""
    specs: list[SensorSpec] = []
    for item in (part.strip() for part in text.split(",")):
        name, sep, unit = item.partition(":")
        if not contract.is_valid_id(name):
            raise ValueError(f"sensor name {name!r} is not a valid id")
        if len(unit) > contract.MAX_UNIT_LEN:
            raise ValueError(f"unit {unit!r} is longer than {contract.MAX_UNIT_LEN} characters")
        spec = SENSOR_PROFILES.get(name, SensorSpec(name))
        specs.append(spec._replace(unit=unit) if sep else spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"sensor names must be unique, got {','.join(names)}")
    return tuple(specs)


def device_id(index: int) -> str:
    """Device index 0 is ``dev-0001``."""
    return f"dev-{index + 1:04d}"


def sensor_seed(seed: int, device_index: int, sensor: str) -> int:
    """A 64-bit seed from (run seed, device index, sensor name), stable across Pythons."""
    digest = hashlib.sha256(f"{seed}/{device_index}/{sensor}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def make_sensors(
    specs: Sequence[SensorSpec], seed: int, device_index: int, rate_hz: float
) -> list[SimulatedSensor]:
    return [
        SimulatedSensor(
            s.name,
            s.unit,
            seed=sensor_seed(seed, device_index, s.name),
            base=s.base,
            amplitude=s.amplitude,
            noise=s.noise,
            period_s=s.period_s,
            interval_s=1.0 / rate_hz,
        )
        for s in specs
    ]


@dataclass(frozen=True)
class FleetConfig:
    """What to simulate; :meth:`validate` raises ``ValueError`` with a one-line reason."""

    broker: BrokerURL
    site: str = "demo"
    devices: int = 50
    sensors: tuple[SensorSpec, ...] = DEFAULT_SENSORS
    rate_hz: float = 1.0
    batch_size: int = 10
    duration_s: float = 30.0  # 0: until stopped
    seed: int = 42
    connections: int | None = None  # None: see DEFAULT_MAX_CONNECTIONS
    instance: str = field(default_factory=default_instance)
    ack_timeout_s: float = ACK_TIMEOUT_S
    #: Users replacing the broker URL's: see :mod:`fieldline_sim.credentials`.
    credentials: FleetCredentials | None = None
    #: Where connections as a device's own user go (None: ``broker``): a broker
    #: may give devices a listener of their own (docs/deploy.md).
    device_broker: BrokerURL | None = None
    tls: TLSConfig | None = None
    #: The payloads' schema: one of ``contract.TELEMETRY_SCHEMAS``.
    schema: str = contract.SCHEMA_TELEMETRY_V1

    @property
    def n_connections(self) -> int:
        return self.connections or min(self.devices, DEFAULT_MAX_CONNECTIONS)

    def validate(self) -> FleetConfig:
        if not contract.is_valid_id(self.site):
            raise ValueError(f"site {self.site!r} is not a valid id")
        if self.devices < 1:
            raise ValueError("devices must be >= 1")
        if not self.sensors:
            raise ValueError("at least one sensor is needed")
        if not (self.rate_hz > 0 and math.isfinite(self.rate_hz)):
            raise ValueError("rate-hz must be a finite number > 0")
        if not 1 <= self.batch_size <= contract.MAX_READINGS_PER_MESSAGE:
            raise ValueError(f"batch-size must be in 1..{contract.MAX_READINGS_PER_MESSAGE}")
        if not (self.duration_s >= 0 and math.isfinite(self.duration_s)):
            raise ValueError("duration-s must be >= 0 (0: until stopped)")
        if self.connections is not None and not 1 <= self.connections <= self.devices:
            raise ValueError(f"connections must be in 1..{self.devices} (the number of devices)")
        if self.ack_timeout_s < 0:
            raise ValueError("ack timeout must be >= 0")
        if self.schema not in contract.TELEMETRY_SCHEMAS:
            raise ValueError(f"unknown telemetry schema {self.schema!r}")
        if self.tls is not None:
            for url in (self.broker, self.device_broker or self.broker):
                if not url.tls:
                    raise ValueError(f"TLS options given for {url}: use an mqtts:// URL")
            self.tls.check()
        if self.credentials is not None and self.credentials.devices:
            # A connection authenticates as one user: per-device users need their own.
            if self.n_connections != self.devices:
                raise ValueError("per-device credentials need one connection per device")
            missing = [
                device_id(i)
                for i in range(self.devices)
                if device_id(i) not in self.credentials.devices
            ]
            if missing:
                raise ValueError(
                    f"no credentials for device {missing[0]} (and {len(missing) - 1} more)"
                )
        check_instance(self.instance)
        return self

    def broker_for(self, device: str | None) -> BrokerURL:
        """The broker URL (with user) a connection for ``device`` uses; None: a shared one."""
        creds = self.credentials
        if creds is None:
            return self.broker
        if device is not None and device in creds.devices:
            return creds.devices[device].apply(self.device_broker or self.broker)
        return creds.fleet.apply(self.broker) if creds.fleet is not None else self.broker


class FleetReport(NamedTuple):
    published_readings: int
    published_messages: int
    unacked_messages: int
    devices: int
    started_ms: int
    ended_ms: int


class _Device(NamedTuple):
    publisher: DevicePublisher
    sensors: list[SimulatedSensor]
    connection: Connection


class Fleet:
    """Runs a :class:`FleetConfig`: connect, publish in real time, stop cleanly.

    Single-threaded: one loop samples and publishes for all devices; paho's
    network threads (one per connection) do the I/O.
    """

    def __init__(
        self,
        config: FleetConfig,
        *,
        ground_truth: GroundTruthWriter | None = None,
        progress: Callable[[FleetMetrics], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config.validate()
        self.ground_truth = ground_truth
        self.progress = progress
        self.clock = clock
        self.metrics_topic = metrics_topic(config.instance)
        self._stop = threading.Event()
        self.connections: list[Connection] = []
        self.devices: list[_Device] = []
        #: Carries the fleet's metrics: device users may not publish them.
        self.metrics_connection: Connection | None = None
        self._connected = False
        self._build()

    def _build(self) -> None:
        c = self.config
        n = c.n_connections
        own = n == c.devices  # one device per client: its own will (and user)
        for k in range(n):
            will = None
            if own:
                will = Message(
                    contract.status_topic(c.site, device_id(k)),
                    contract.encode_status(self._status(device_id(k), "offline")),
                )
            self.connections.append(
                Connection(
                    c.broker_for(device_id(k) if own else None),
                    f"fieldline-sim-{c.instance}-{k}",
                    will=will,
                    tls=c.tls,
                    max_inflight=MAX_INFLIGHT_MESSAGES,
                )
            )
        self.metrics_connection = self.connections[0]
        if c.credentials is not None and c.credentials.devices and c.credentials.fleet:
            self.metrics_connection = Connection(
                c.broker_for(None), f"fieldline-sim-{c.instance}-metrics", tls=c.tls
            )
            self.connections.append(self.metrics_connection)
        # Like the agent, each device counts from the start time, so a fleet
        # restarted against a running pipeline is not taken for duplicates.
        seq0 = contract.initial_seq()
        for i in range(c.devices):
            conn = self.connections[i % n]
            dev = device_id(i)
            pub = DevicePublisher(
                conn.client, c.site, dev, start_seq=seq0, on_published=self._record, schema=c.schema
            )
            sensors = make_sensors(c.sensors, c.seed, i, c.rate_hz)
            self.devices.append(_Device(pub, sensors, conn))
            conn.add_birth(contract.status_topic(c.site, dev), self._birth(dev))

    def _birth(self, device: str) -> Callable[[], bytes]:
        return lambda: contract.encode_status(self._status(device, "online"))

    def _status(self, device: str, state: str) -> Status:
        sensors = {s.name: "ok" for s in self.config.sensors}
        return Status(device, state, int(self.clock() * 1000), AGENT_NAME, sensors)

    def _record(self, pub: DevicePublisher, seq: int, readings: Sequence[Reading]) -> None:
        if self.ground_truth is not None:
            self.ground_truth.write(pub.site, pub.device, readings)

    def stop(self) -> None:
        """Ask :meth:`run` to finish; safe from any thread and from signal handlers."""
        self._stop.set()

    def connect(self) -> None:
        """Connect every client; raise ``ConnectError`` (closing them all) if one fails."""
        try:
            for conn in self.connections:
                conn.connect()
        except Exception:
            self.close()
            raise
        self._connected = True

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
        self._connected = False

    # ------------------------------------------------------------------ running

    @property
    def published_readings(self) -> int:
        return sum(d.publisher.published_readings for d in self.devices)

    @property
    def published_messages(self) -> int:
        return sum(d.publisher.published_messages for d in self.devices)

    def metrics(self, readings_per_s: float, done: bool = False) -> FleetMetrics:
        return FleetMetrics(
            self.published_readings,
            self.published_messages,
            sum(d.publisher.acked_messages for d in self.devices),
            readings_per_s,
            len(self.devices),
            int(self.clock() * 1000),
            done,
        )

    def run(self) -> FleetReport:
        """Publish until ``duration_s`` passed or :meth:`stop`; then shut down cleanly.

        Connects first if :meth:`connect` was not called (raising ``ConnectError``).
        """
        if not self._connected:
            self.connect()
        c = self.config
        period = 1.0 / c.rate_hz
        started_ms = int(self.clock() * 1000)
        t0 = time.monotonic()
        end = t0 + c.duration_s if c.duration_s > 0 else math.inf
        next_metrics = t0 + METRICS_INTERVAL_S
        last_readings, last_t = 0, t0
        lag_warned = False
        tick = 0
        try:
            while not self._stop.is_set():
                tick_t = t0 + tick * period
                if tick_t >= end:
                    break
                now = time.monotonic()
                if now >= next_metrics:
                    readings = self.published_readings
                    self._emit(self.metrics((readings - last_readings) / (now - last_t)))
                    last_readings, last_t = readings, now
                    next_metrics = max(next_metrics + METRICS_INTERVAL_S, now)
                    continue
                if now < tick_t:
                    self._stop.wait(min(tick_t, next_metrics) - now)
                    continue
                if not lag_warned and now - tick_t > LAG_WARNING_S:
                    # Missed ticks are caught up, not skipped, so the reading count
                    # stays duration x rate; warn that timestamps bunch up.
                    log.warning("running %.1f s behind schedule; catching up", now - tick_t)
                    lag_warned = True
                self._sample(int(self.clock() * 1000))
                tick += 1
        finally:
            unacked = self._shutdown(t0)
        report = FleetReport(
            self.published_readings,
            self.published_messages,
            unacked,
            len(self.devices),
            started_ms,
            int(self.clock() * 1000),
        )
        if self.ground_truth is not None:
            self.ground_truth.close(self.summary(report))
        return report

    def summary(self, report: FleetReport) -> dict[str, Any]:
        """The ground truth's ``summary.json`` for ``report``."""
        c = self.config
        return {
            "published_readings": report.published_readings,
            "published_messages": report.published_messages,
            "unacked_messages": report.unacked_messages,
            "devices": report.devices,
            "sensors": [s.name for s in c.sensors],
            "started_ms": report.started_ms,
            "ended_ms": report.ended_ms,
            "seed": c.seed,
            "site": c.site,
            "rate_hz": c.rate_hz,
            "batch_size": c.batch_size,
            "duration_s": c.duration_s,
            "connections": c.n_connections,
        }

    def _sample(self, ts: int) -> None:
        batch_size = self.config.batch_size
        for dev in self.devices:
            pub = dev.publisher
            for sensor in dev.sensors:
                if pub.add(Reading(sensor.name, ts, sensor.read(), sensor.unit)) >= batch_size:
                    self._flush(pub)

    def _flush(self, pub: DevicePublisher) -> None:
        try:
            pub.flush()
        except PublishError as exc:  # readings stay buffered for the next flush
            log.error("%s: %s", pub.device, exc)

    def _emit(self, metrics: FleetMetrics) -> mqtt.MQTTMessageInfo | None:
        if self.progress is not None:
            self.progress(metrics)
        try:
            conn = self.metrics_connection or self.connections[0]
            return conn.publish(self.metrics_topic, metrics.to_json(), qos=0)
        except PublishError as exc:  # QoS 0 while disconnected: metrics are best effort
            log.debug("metrics: %s", exc)
            return None

    def _shutdown(self, t0: float) -> int:
        """Flush, wait for PUBACKs, publish ``offline``, final metrics, close; return unacked."""
        for dev in self.devices:
            self._flush(dev.publisher)
        deadline = time.monotonic() + self.config.ack_timeout_s
        unacked = sum(
            dev.publisher.wait_for_acks(max(deadline - time.monotonic(), 0.0))
            for dev in self.devices
        )
        if unacked:
            log.warning("%d telemetry messages were not acknowledged", unacked)
        offline: list[mqtt.MQTTMessageInfo] = []
        for dev in self.devices:
            topic = contract.status_topic(self.config.site, dev.publisher.device)
            payload = contract.encode_status(self._status(dev.publisher.device, "offline"))
            try:
                offline.append(dev.connection.publish(topic, payload, STATUS_QOS, retain=True))
            except PublishError as exc:
                log.error("offline status: %s", exc)
        elapsed = max(time.monotonic() - t0, 1e-9)
        final = self._emit(self.metrics(self.published_readings / elapsed, done=True))
        for info in [*offline, *([final] if final is not None else [])]:
            remaining = max(deadline - time.monotonic(), 0.0)
            try:
                info.wait_for_publish(min(remaining, 5.0))
            except (RuntimeError, ValueError) as exc:
                log.debug("not delivered: %s", exc)
        self.close()
        return unacked
