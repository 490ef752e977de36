"""When and where faults strike: a deterministic schedule of events on the tick grid.

``count`` faults are placed when the run starts, over ``[after_s, duration_s)``;
``rate_per_hour`` faults are drawn per device, one virtual hour at a time, just
before that hour is simulated, so runs without an end get them too. Events of one
device never overlap (a candidate that would is dropped), so every label
describes exactly what happened to its readings. Everything is drawn from
generators seeded by (seed, fault index[, hour]): same seed, same schedule.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fieldline_sim.scenario import DEVICE_FAULTS, FaultConfig, Scenario

#: Rate faults are drawn one epoch of virtual time at a time (seconds).
EPOCH_S = 3600.0
#: Tries to place one ``count`` event before giving up on it.
PLACEMENT_TRIES = 50


@dataclass(order=True)
class Event:
    """A fault on device ``device`` (index in its group) from tick ``start`` for ``ticks`` ticks."""

    start: int
    group: int
    device: int
    sensor: int  # index in the group's sensors; -1: the whole device
    kind: str = field(compare=False)
    ticks: int = field(compare=False)
    params: dict[str, Any] = field(compare=False, default_factory=dict)

    @property
    def end(self) -> int:
        """First tick after the event."""
        return self.start + self.ticks


class Schedule:
    """Fault events of a scenario, released per group in tick order."""

    def __init__(self, scenario: Scenario, seed: int) -> None:
        self.scenario = scenario
        self.seed = seed
        self.rates = [g.rate_hz for g in scenario.groups]
        self._pending: list[list[Event]] = [[] for _ in scenario.groups]
        self._busy: dict[tuple[int, int], list[tuple[float, float]]] = {}
        self._epochs_done = 0
        self.dropped = 0  # candidates that would have overlapped another event
        for i, f in enumerate(scenario.faults):
            if f.count is not None:
                self._place_count(i, f)

    # ------------------------------------------------------------------ placing

    def _targets(self, f: FaultConfig) -> list[tuple[int, list[int]]]:
        """(group index, eligible sensor indexes) of the groups a fault may hit."""
        out = []
        for gi, g in enumerate(self.scenario.groups):
            if f.groups and g.prefix not in f.groups:
                continue
            if f.kind in DEVICE_FAULTS:
                out.append((gi, [-1]))
                continue
            sensors = [j for j, s in enumerate(g.sensors) if not f.sensors or s.name in f.sensors]
            if sensors:
                out.append((gi, sensors))
        return out

    def _ticks(self, f: FaultConfig, gi: int, rng: np.random.Generator) -> int:
        if f.kind == "spike":
            return 1
        low, high = f.duration_s
        return max(1, round(rng.uniform(low, high) * self.rates[gi]))

    def _try_add(self, ev: Event) -> bool:
        rate = self.rates[ev.group]
        begin, end = ev.start / rate, ev.end / rate
        busy = self._busy.setdefault((ev.group, ev.device), [])
        if any(begin < b_end and b_begin < end for b_begin, b_end in busy):
            self.dropped += 1
            return False
        busy.append((begin, end))
        heapq.heappush(self._pending[ev.group], ev)
        return True

    def _event(
        self, f: FaultConfig, gi: int, device: int, sensor: int, start: int, ticks: int, rng: Any
    ) -> Event:
        return Event(start, gi, device, sensor, f.kind, ticks, self._params(f, gi, sensor, rng))

    def _place_count(self, index: int, f: FaultConfig) -> None:
        rng = np.random.default_rng([self.seed, 1000 + index])
        targets = self._targets(f)
        if not targets:
            return
        weights = np.array([self.scenario.groups[gi].count for gi, _ in targets], dtype=float)
        weights /= weights.sum()
        for _ in range(f.count or 0):
            for _try in range(PLACEMENT_TRIES):
                t = int(rng.choice(len(targets), p=weights))
                gi, sensors = targets[t]
                g = self.scenario.groups[gi]
                device = int(rng.integers(g.count))
                sensor = sensors[int(rng.integers(len(sensors)))]
                ticks = self._ticks(f, gi, rng)
                first = math.ceil(f.after_s * g.rate_hz)
                last = math.floor(self.scenario.duration_s * g.rate_hz) - ticks
                if last < first:
                    continue
                start = int(rng.integers(first, last + 1))
                if self._try_add(self._event(f, gi, device, sensor, start, ticks, rng)):
                    break

    def _place_epoch(self, epoch: int) -> None:
        s = self.scenario
        begin_s = epoch * EPOCH_S
        end_s = begin_s + EPOCH_S if s.duration_s == 0 else min(begin_s + EPOCH_S, s.duration_s)
        for index, f in enumerate(s.faults):
            if f.rate_per_hour is None or end_s <= max(begin_s, f.after_s):
                continue
            rng = np.random.default_rng([self.seed, 2000 + index, epoch])
            lo_s = max(begin_s, f.after_s)
            hours = (end_s - lo_s) / 3600.0
            for gi, sensors in self._targets(f):
                g = s.groups[gi]
                counts = rng.poisson(f.rate_per_hour * hours, g.count)
                for device in np.flatnonzero(counts).tolist():
                    for _ in range(int(counts[device])):
                        ticks = self._ticks(f, gi, rng)
                        first = math.ceil(lo_s * g.rate_hz)
                        last = math.ceil(end_s * g.rate_hz) - 1
                        start = int(rng.integers(first, max(first, last) + 1))
                        sensor = sensors[int(rng.integers(len(sensors)))]
                        self._try_add(self._event(f, gi, device, sensor, start, ticks, rng))

    def _params(self, f: FaultConfig, gi: int, sensor: int, rng: Any) -> dict[str, Any]:
        p = f.params
        scale = self.scenario.groups[gi].sensors[sensor].params["scale"] if sensor >= 0 else 1.0

        def signed(key: str, default: float) -> float:
            size = float(p.get(key, default * scale))
            direction = p.get("direction", "both")
            up = direction == "up" or (direction == "both" and rng.random() < 0.5)
            return round(size if up else -size, 6)

        if f.kind == "spike":
            return {"magnitude": signed("magnitude", 6.0)}
        if f.kind == "level_shift":
            return {"shift": signed("shift", 4.0)}
        if f.kind == "drift":
            return {"total": signed("total", 5.0)}
        if f.kind == "noise_burst":
            return {"sigma": round(float(p.get("sigma", 3.0 * scale)), 6)}
        if f.kind == "clock_skew":
            if "offset_s" in p:
                return {"offset_ms": round(float(p["offset_s"]) * 1000)}
            sign = 1 if rng.random() < 0.5 else -1
            return {"offset_ms": sign * int(rng.integers(10_000, 120_001))}
        return {}

    # ------------------------------------------------------------------ releasing

    def advance(self, ts_s: float) -> None:
        """Draw the rate faults of every epoch up to the one holding virtual second ``ts_s``."""
        if not any(f.rate_per_hour is not None for f in self.scenario.faults):
            return
        while self._epochs_done * EPOCH_S <= ts_s:
            self._place_epoch(self._epochs_done)
            self._epochs_done += 1

    def starting(self, group: int, tick: int) -> list[Event]:
        """Events of ``group`` that start at ``tick`` (or were left behind before it)."""
        pending = self._pending[group]
        out = []
        while pending and pending[0].start <= tick:
            out.append(heapq.heappop(pending))
        return out
