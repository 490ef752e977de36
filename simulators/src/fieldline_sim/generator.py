"""A scenario's messages and labels, tick by tick, with no I/O and no clock.

:class:`FleetGenerator` turns a :class:`~fieldline_sim.scenario.Scenario` into the
exact sequence of telemetry messages to publish and the labels of the faults it
injected. Everything derives from the seed and the virtual start: tick ``k`` of a
group is stamped ``start_ms + round(k * 1000 / rate_hz)``, so the same scenario
and seed give the same messages, byte for byte, however fast they are sent.

Per tick and group, numpy computes every device's values at once
(:mod:`fieldline_sim.signals`); value faults change them; values are rounded to
each sensor's ``decimals``; then each device's readings become a message in
the scenario's ``telemetry_schema`` (or join its batch when
``samples_per_message`` > 1). Delivery faults act on
messages: a dropout loses the device's readings, clock skew shifts their
timestamps, a duplicate is sent twice with the same ``seq``, and out-of-order
messages are held and released in reverse order when their window ends.

``seq`` of each device starts at the virtual start in ms and grows by one per
message (as the agent's does), so it is deterministic too.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from fieldline_edge import contract
from fieldline_edge.contract import Reading

from fieldline_sim.faults import Event, Schedule
from fieldline_sim.labels import ALL_SENSORS, Label
from fieldline_sim.scenario import Scenario
from fieldline_sim.signals import GroupSignals


class Outgoing(NamedTuple):
    """One telemetry message: ``device`` is the index in :attr:`FleetGenerator.devices`."""

    device: int
    seq: int
    readings: list[Reading]
    payload: bytes
    #: A second copy of a message that was already emitted (a duplicate fault).
    duplicate: bool = False


class Tick(NamedTuple):
    """What happens at virtual time ``ts_ms``: faults that begin, messages to send."""

    ts_ms: int
    labels: list[Label]
    messages: list[Outgoing]


class FleetGenerator:
    """Deterministic messages and labels of a scenario run (see the module docstring)."""

    def __init__(self, scenario: Scenario, start_ms: int) -> None:
        self.scenario = scenario
        self.start_ms = start_ms
        self.site = scenario.site
        self.devices: list[str] = []
        self.offsets: list[int] = []
        for g in scenario.groups:
            self.offsets.append(len(self.devices))
            self.devices.extend(g.device_ids())
        if len(set(self.devices)) != len(self.devices):
            raise ValueError("device ids of two groups collide: choose other prefixes")
        self.topics = [contract.telemetry_topic(scenario.site, d) for d in self.devices]
        self.signals = [
            GroupSignals(g, scenario.seed, gi, start_ms) for gi, g in enumerate(scenario.groups)
        ]
        self.schedule = Schedule(scenario, scenario.seed)
        self._fault_rng = [
            np.random.default_rng([scenario.seed, gi, 2]) for gi in range(len(scenario.groups))
        ]
        self._active: list[list[Event]] = [[] for _ in scenario.groups]
        self._seq = [start_ms] * len(self.devices)
        self._batch: dict[int, list[Reading]] = {}
        self._held: dict[int, list[Outgoing]] = {}
        self._decimals = [[int(s.params["decimals"]) for s in g.sensors] for g in scenario.groups]
        self._meta = [[(s.name, s.unit) for s in g.sensors] for g in scenario.groups]
        self.end_ms = (
            start_ms + round(scenario.duration_s * 1000) if scenario.duration_s > 0 else None
        )
        #: Readings lost to dropouts.
        self.dropped_readings = 0

    def tick_ms(self, group: int, k: int) -> int:
        return self.start_ms + round(k * 1000 / self.scenario.groups[group].rate_hz)

    def ticks(self) -> Iterator[Tick]:
        """Every tick of the run in virtual-time order (endless when ``duration_s`` is 0).

        Call :meth:`finish` afterwards for the partial batches and held messages.
        """
        end = self.end_ms if self.end_ms is not None else math.inf
        heap = [(self.tick_ms(g, 0), g, 0) for g in range(len(self.scenario.groups))]
        heapq.heapify(heap)
        while heap:
            ts, g, k = heapq.heappop(heap)
            if ts >= end:
                continue
            yield self._tick(g, k, ts)
            heapq.heappush(heap, (self.tick_ms(g, k + 1), g, k + 1))

    def finish(self) -> list[Outgoing]:
        """Messages still buffered at the end: partial batches, then held messages."""
        out = [self._message(d, self._batch.pop(d)) for d in sorted(self._batch)]
        for d in sorted(self._held):
            out.extend(reversed(self._held.pop(d)))
        return out

    # ------------------------------------------------------------------ one tick

    def _tick(self, g: int, k: int, ts: int) -> Tick:
        group = self.scenario.groups[g]
        self.schedule.advance((ts - self.start_ms) / 1000.0)
        started = self._begin(g, k)
        values = self.signals[g].step(ts)
        active = self._active[g]
        stuck: list[Event] = []
        for ev in active:
            if ev.sensor < 0:
                continue
            d, s, kind = ev.device, ev.sensor, ev.kind
            if kind == "spike":
                values[d, s] += ev.params["magnitude"]
            elif kind == "level_shift":
                values[d, s] += ev.params["shift"]
            elif kind == "drift":
                values[d, s] += ev.params["total"] * (k - ev.start + 1) / ev.ticks
            elif kind == "noise_burst":
                values[d, s] += ev.params["sigma"] * self._fault_rng[g].standard_normal()
            elif kind == "stuck":
                stuck.append(ev)
        for j, decimals in enumerate(self._decimals[g]):
            values[:, j] = np.round(values[:, j], decimals)
        for ev in stuck:
            if "value" not in ev.params:  # the first reading of the window is the one held
                ev.params["value"] = float(values[ev.device, ev.sensor])
            values[ev.device, ev.sensor] = ev.params["value"]
        labels = [self._label(g, ev) for ev in started]

        dropout: set[int] = set()
        skew: dict[int, int] = {}
        duplicate: set[int] = set()
        reorder: set[int] = set()
        for ev in active:
            if ev.kind == "dropout":
                dropout.add(ev.device)
            elif ev.kind == "clock_skew":
                skew[ev.device] = ev.params["offset_ms"]
            elif ev.kind == "duplicate":
                duplicate.add(ev.device)
            elif ev.kind == "out_of_order":
                reorder.add(ev.device)

        messages: list[Outgoing] = []
        base = self.offsets[g]
        meta = self._meta[g]
        spm = group.samples_per_message
        flush = (k + 1) % spm == 0
        faulty = dropout or skew or duplicate or reorder
        for d, row in enumerate(values.tolist()):
            if faulty and d in dropout:
                self.dropped_readings += len(row)
                continue
            t = ts + skew.get(d, 0) if faulty else ts
            readings = [Reading(name, t, v, unit) for (name, unit), v in zip(meta, row)]
            gd = base + d
            if spm > 1:
                buffered = self._batch.setdefault(gd, [])
                buffered.extend(readings)
                if not flush:
                    continue
                readings = self._batch.pop(gd)
            msg = self._message(gd, readings)
            if faulty and d in reorder:
                self._held.setdefault(gd, []).append(msg)
                continue
            messages.append(msg)
            if faulty and d in duplicate:
                messages.append(msg._replace(duplicate=True))
        # Events that end with this tick; out-of-order messages go out now, reversed.
        still = []
        for ev in active:
            if ev.end > k + 1:
                still.append(ev)
            elif ev.kind == "out_of_order":
                messages.extend(reversed(self._held.pop(base + ev.device, [])))
        self._active[g] = still
        return Tick(ts, labels, messages)

    def _label(self, g: int, ev: Event) -> Label:
        group = self.scenario.groups[g]
        return Label(
            self.site,
            self.devices[self.offsets[g] + ev.device],
            group.sensors[ev.sensor].name if ev.sensor >= 0 else ALL_SENSORS,
            ev.kind,
            self.tick_ms(g, ev.start),
            self.tick_ms(g, ev.end),
            dict(ev.params),
        )

    def _begin(self, g: int, k: int) -> list[Event]:
        """Activate the events starting at tick ``k``, in a stable order."""
        group = self.scenario.groups[g]
        last = None
        if self.end_ms is not None:
            last = math.ceil((self.end_ms - self.start_ms) * group.rate_hz / 1000)
        started = []
        for ev in sorted(self.schedule.starting(g, k), key=lambda e: (e.device, e.sensor, e.kind)):
            if ev.start < k:  # drawn after its start tick: it starts now
                ev.ticks -= k - ev.start
                ev.start = k
            if last is not None:
                ev.ticks = min(ev.ticks, last - ev.start)
            if ev.ticks <= 0:
                continue
            self._active[g].append(ev)
            started.append(ev)
        return started

    def _message(self, device: int, readings: list[Reading]) -> Outgoing:
        seq = self._seq[device]
        self._seq[device] = seq + 1
        payload = contract.encode_telemetry(
            self.devices[device], seq, readings, self.scenario.telemetry_schema
        )
        return Outgoing(device, seq, readings, payload)
