"""Run a scenario against a broker: pace the generator's ticks, publish, record.

One thread does everything: numpy makes each tick's values for all devices at
once (:mod:`fieldline_sim.generator`), and the messages go out through a
:class:`~fieldline_sim.pool.ClientPool`, whose sockets the same thread serves
between ticks. Tick ``k`` is due at wall time ``t0 + (ts_k - start) / speed``;
with ``speed`` 0 ticks follow each other as fast as the broker acknowledges.

Connections: ``connections`` shared clients (device ``i`` on client ``i % n``;
every message still on its own device's topic) or one per device, each with
the device's last will (and, with a credentials file, the device's own user).
Delivery: QoS 1; at the end the runner waits up to ``ack_timeout_s`` for every
PUBACK and reports how many are missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from fieldline_edge import contract
from fieldline_edge.contract import Status
from fieldline_edge.mqtt import BrokerURL, Message, PublishError, TLSConfig

from fieldline_sim import __version__
from fieldline_sim.credentials import FleetCredentials
from fieldline_sim.generator import FleetGenerator, Outgoing
from fieldline_sim.groundtruth import GroundTruthWriter
from fieldline_sim.labels import Label, LabelWriter, labels_topic
from fieldline_sim.metrics import (
    METRICS_INTERVAL_S,
    FleetMetrics,
    check_instance,
    default_instance,
    metrics_topic,
)
from fieldline_sim.pool import ClientPool
from fieldline_sim.scenario import Scenario

log = logging.getLogger(__name__)

AGENT_NAME = f"fieldline-sim/{__version__}"
ACK_TIMEOUT_S = 60.0
#: Unacknowledged messages per connection before the runner waits for PUBACKs
#: (paho's message ids are 16 bits; this also bounds memory at --speed 0).
MAX_UNACKED_PER_CONNECTION = 20_000
MAX_UNACKED = 200_000
#: Warn (once) when a tick goes out this late (seconds).
LAG_WARNING_S = 5.0
#: Default number of shared connections.
DEFAULT_CONNECTIONS = 4


@dataclass(frozen=True)
class RunConfig:
    scenario: Scenario
    broker: BrokerURL
    #: Shared connections (None: up to DEFAULT_CONNECTIONS); ignored with ``per_device``.
    connections: int | None = None
    per_device: bool = False
    credentials: FleetCredentials | None = None
    #: Where connections as a device's own user go (None: ``broker``).
    device_broker: BrokerURL | None = None
    tls: TLSConfig | None = None
    #: Virtual seconds per wall second; 0: as fast as possible.
    speed: float = 1.0
    #: Virtual start (Unix ms); None: the scenario's, or now.
    start_ms: int | None = None
    instance: str = field(default_factory=default_instance)
    ground_truth: Path | None = None
    labels_file: Path | None = None
    labels_topic: bool = False
    ack_timeout_s: float = ACK_TIMEOUT_S

    @property
    def n_connections(self) -> int:
        if self.per_device:
            return self.scenario.devices
        return self.connections or min(DEFAULT_CONNECTIONS, self.scenario.devices)

    def validate(self) -> RunConfig:
        n = self.scenario.devices
        if self.per_device and self.connections is not None:
            raise ValueError("give --connections or --connection-per-device, not both")
        if self.connections is not None and not 1 <= self.connections <= n:
            raise ValueError(f"connections must be in 1..{n} (the number of devices)")
        if not self.speed >= 0:
            raise ValueError("speed must be >= 0 (0: as fast as possible)")
        creds = self.credentials
        if creds is not None and creds.fleet is None and not self.per_device:
            # A shared connection speaks for many devices: it needs the simulator's user.
            raise ValueError("credentials without a simulator user need --connection-per-device")
        if self.labels_topic and creds is not None and creds.fleet is None and creds.devices:
            raise ValueError("--labels-topic needs a simulator user in the credentials file")
        check_instance(self.instance)
        return self


class RunReport(NamedTuple):
    devices: int
    connections: int
    readings: int
    messages: int
    duplicates: int
    labels: int
    unacked: int
    started_ms: int
    ended_ms: int
    wall_s: float
    #: Readings per second between the first and the last tick sent.
    readings_per_s: float
    #: How far behind its schedule the runner sent a tick, at worst (seconds).
    max_lag_s: float

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class Progress(NamedTuple):
    wall_s: float
    virtual_s: float
    duration_s: float  # 0: no end
    readings: int
    messages: int
    acked: int
    readings_per_s: float
    devices: int
    connections: int
    labels: int


class ScenarioRunner:
    """Runs a :class:`RunConfig` once; :meth:`stop` from any thread or signal handler."""

    def __init__(
        self, config: RunConfig, progress: Callable[[Progress], None] | None = None
    ) -> None:
        self.config = config.validate()
        s = config.scenario
        self.start_ms = (
            config.start_ms
            if config.start_ms is not None
            else s.start_ms
            if s.start_ms is not None
            else int(time.time()) * 1000
        )
        self.generator = FleetGenerator(s, self.start_ms)
        self.progress = progress
        self._stop = threading.Event()
        self.readings = 0
        self.messages = 0
        self.duplicates = 0
        self.labels = 0
        self.metrics_topic = metrics_topic(config.instance)
        self.labels_topic = labels_topic(s.site)
        self._build_pool()

    def _build_pool(self) -> None:
        c, devices = self.config, self.generator.devices
        creds = c.credentials
        brokers: list[BrokerURL] = []
        ids: list[str] = []
        wills: list[Message | None] = []
        if c.per_device:
            for d in devices:
                user = creds.devices.get(d) if creds is not None else None
                fleet_user = creds.fleet if creds is not None else None
                broker = c.broker
                if user is not None:
                    broker = user.apply(c.device_broker or broker)
                elif fleet_user is not None:
                    broker = fleet_user.apply(broker)
                brokers.append(broker)
                ids.append(f"fieldline-sim-{c.instance}-{d}")
                wills.append(
                    Message(contract.status_topic(c.scenario.site, d), self._status(d, "offline"))
                )
        else:
            for k in range(c.n_connections):
                broker = creds.fleet.apply(c.broker) if creds and creds.fleet else c.broker
                brokers.append(broker)
                ids.append(f"fieldline-sim-{c.instance}-{k}")
                wills.append(None)
        self.n_device_connections = len(brokers)
        # Device users may not publish metrics or labels: those need the fleet's user.
        self.service_connection: int | None = 0
        if c.per_device and creds is not None and creds.devices:
            self.service_connection = None
            if creds.fleet is not None:
                brokers.append(creds.fleet.apply(c.broker))
                ids.append(f"fieldline-sim-{c.instance}-service")
                wills.append(None)
                self.service_connection = len(brokers) - 1
        self.pool = ClientPool(brokers, ids, tls=c.tls, wills=wills)
        self.connection_of = [i % self.n_device_connections for i in range(len(devices))]
        site = c.scenario.site
        for i, d in enumerate(devices):
            topic = contract.status_topic(site, d)
            self.pool.add_birth(self.connection_of[i], topic, self._birth(d))

    def _birth(self, device: str) -> Callable[[], bytes]:
        return lambda: self._status(device, "online")

    def _status(self, device: str, state: str) -> bytes:
        sensors: dict[str, str] = {}
        for g in self.config.scenario.groups:
            if device.startswith(g.prefix + "-"):
                sensors = {s.name: "ok" for s in g.sensors}
        return contract.encode_status(
            Status(device, state, int(time.time() * 1000), AGENT_NAME, sensors)
        )

    def stop(self) -> None:
        self._stop.set()

    def connect(self) -> None:
        """Open every connection; ``ConnectError`` if one fails (nothing left open)."""
        self.pool.connect()

    # ------------------------------------------------------------------ running

    def run(self) -> RunReport:
        c = self.config
        s = c.scenario
        gt = GroundTruthWriter(c.ground_truth) if c.ground_truth is not None else None
        labels_out = LabelWriter(c.labels_file) if c.labels_file is not None else None
        t0 = time.monotonic()
        next_metrics = t0 + METRICS_INTERVAL_S
        last_readings, last_t = 0, t0
        limit = min(MAX_UNACKED_PER_CONNECTION * len(self.pool), MAX_UNACKED)
        virtual_s = 0.0
        unacked = 0
        first: tuple[float, int] | None = None
        last_sent = t0
        max_lag = 0.0
        try:
            for tick in self.generator.ticks():
                if self._stop.is_set():
                    break
                virtual_s = (tick.ts_ms - self.start_ms) / 1000.0
                due = t0 + virtual_s / c.speed if c.speed > 0 else t0
                while True:
                    now = time.monotonic()
                    if now >= next_metrics:
                        rate = (self.readings - last_readings) / max(now - last_t, 1e-9)
                        self._report(now - t0, virtual_s, rate)
                        last_readings, last_t = self.readings, now
                        next_metrics = max(next_metrics + METRICS_INTERVAL_S, now)
                    if self._stop.is_set():
                        break
                    if now < due:
                        self.pool.service(min(due, next_metrics) - now)
                    elif self.pool.unacked > limit:
                        self.pool.service(0.01)  # backpressure: let PUBACKs catch up
                    else:
                        break
                if self._stop.is_set():
                    break
                if c.speed > 0:
                    lag = time.monotonic() - due
                    if lag > LAG_WARNING_S and max_lag <= LAG_WARNING_S:
                        # Late ticks are sent at once, never skipped: the data stay
                        # complete, only the pace falls behind.
                        log.warning("running %.1f s behind schedule; catching up", lag)
                    max_lag = max(max_lag, lag)
                if tick.labels:
                    self._labels(tick.labels, labels_out)
                self._send(tick.messages, gt)
                last_sent = time.monotonic()
                if first is None:
                    first = (last_sent, self.readings)
                self.pool.service(0)
            self._send(self.generator.finish(), gt)
            unacked = self.pool.wait_for_acks(c.ack_timeout_s)
            if unacked:
                log.warning("%d telemetry messages were not acknowledged", unacked)
            self._offline()
            wall = time.monotonic() - t0
            finished = not self._stop.is_set() and s.duration_s > 0
            shown = s.duration_s if finished else virtual_s
            self._report(wall, shown, self.readings / max(wall, 1e-9), done=True)
        finally:
            self.pool.close()
            if labels_out is not None:
                labels_out.close()
        ended_ms = self.start_ms + round(virtual_s * 1000)
        rate = 0.0
        if first is not None and last_sent > first[0]:
            rate = (self.readings - first[1]) / (last_sent - first[0])
        report = RunReport(
            s.devices,
            self.n_device_connections,
            self.readings,
            self.messages,
            self.duplicates,
            self.labels,
            unacked,
            self.start_ms,
            ended_ms,
            round(time.monotonic() - t0, 3),
            round(rate, 1),
            round(max_lag, 3),
        )
        if gt is not None:
            gt.close(self.summary(report))
        return report

    def summary(self, r: RunReport) -> dict[str, Any]:
        """The ground truth's summary.json (the keys of ``sim run``'s, and the scenario's)."""
        s = self.config.scenario
        return {
            "published_readings": r.readings,
            "published_messages": r.messages,
            "duplicate_messages": r.duplicates,
            "unacked_messages": r.unacked,
            "devices": r.devices,
            "sensors": sorted({x.name for g in s.groups for x in g.sensors}),
            "started_ms": r.started_ms,
            "ended_ms": r.ended_ms,
            "seed": s.seed,
            "site": s.site,
            "scenario": s.name,
            "labels": r.labels,
            "dropped_readings": self.generator.dropped_readings,
            "connections": r.connections,
        }

    def _send(self, messages: list[Outgoing], gt: GroundTruthWriter | None) -> None:
        topics, devices, site = (
            self.generator.topics,
            self.generator.devices,
            self.config.scenario.site,
        )
        conn = self.connection_of
        for m in messages:
            try:
                # Second copies are left out of the acknowledged count, as of the published one.
                self.pool.publish(
                    conn[m.device], topics[m.device], m.payload, telemetry=not m.duplicate
                )
            except PublishError as exc:  # not queued by paho: counted as lost
                log.error("%s: %s", devices[m.device], exc)
                continue
            if m.duplicate:
                self.duplicates += 1
                continue
            self.messages += 1
            self.readings += len(m.readings)
            if gt is not None:
                gt.write(site, devices[m.device], m.readings)

    def _labels(self, labels: list[Label], out: LabelWriter | None) -> None:
        self.labels += len(labels)
        if out is not None:
            out.write(labels)
        if self.config.labels_topic and self.service_connection is not None:
            for label in labels:
                self.pool.publish(
                    self.service_connection,
                    self.labels_topic,
                    label.to_json().encode(),
                    telemetry=False,
                )

    def _offline(self) -> None:
        infos = []
        site = self.config.scenario.site
        for i, d in enumerate(self.generator.devices):
            try:
                infos.append(
                    self.pool.publish_retained(
                        self.connection_of[i],
                        contract.status_topic(site, d),
                        self._status(d, "offline"),
                    )
                )
            except PublishError as exc:
                log.error("offline status: %s", exc)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and not all(i.is_published() for i in infos):
            self.pool.service(0.05)

    def _report(self, wall_s: float, virtual_s: float, rate: float, done: bool = False) -> None:
        c = self.config
        if self.progress is not None:
            self.progress(
                Progress(
                    wall_s,
                    virtual_s,
                    c.scenario.duration_s,
                    self.readings,
                    self.messages,
                    self.pool.acked_telemetry,
                    rate,
                    c.scenario.devices,
                    self.n_device_connections,
                    self.labels,
                )
            )
        if self.service_connection is None:
            return
        metrics = FleetMetrics(
            self.readings,
            self.messages,
            self.pool.acked_telemetry,
            rate,
            c.scenario.devices,
            int(time.time() * 1000),
            done,
        )
        try:
            self.pool.publish(self.service_connection, self.metrics_topic, metrics.to_json(), qos=0)
        except PublishError as exc:  # QoS 0 while disconnected: metrics are best effort
            log.debug("metrics: %s", exc)
