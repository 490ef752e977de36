"""Mergeable window aggregates: count, mean, min, max, stddev, first, last.

A window's aggregate is built from partial aggregates (one per message and
window) merged in arrival order, so the per-reading work happens once per
message, not once per keyed-state update. The variance uses Chan et al.'s
pairwise update, which stays exact to rounding however the partials are split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from operator import mul


class Agg:
    """Running aggregate of one (device, sensor, window).

    ``first``/``last`` are the values at the earliest/latest timestamp; on equal
    timestamps the earlier-arrived reading is first and the later-arrived is last.
    """

    __slots__ = ("count", "first", "first_ts", "last", "last_ts", "m2", "max", "min", "total")

    def __init__(self, ts: int, value: float) -> None:
        self.count = 1
        self.total = value
        self.m2 = 0.0
        self.min = value
        self.max = value
        self.first_ts = ts
        self.first = value
        self.last_ts = ts
        self.last = value

    @classmethod
    def of(cls, ts: list[int], values: list[float]) -> Agg:
        """The aggregate of readings in arrival order, computed with builtins.

        Two passes (mean, then squared deviations) keep the variance exact to
        rounding, like Welford's update, at C speed for a whole message.
        """
        n = len(values)
        if n == 1:
            return cls(ts[0], values[0])
        agg = cls.__new__(cls)
        total = sum(values)
        mean = total / n
        d = [v - mean for v in values]
        agg.count = n
        agg.total = total
        agg.m2 = sum(map(mul, d, d))
        agg.min = min(values)
        agg.max = max(values)
        lo = min(ts)
        hi = max(ts)
        agg.first_ts = lo
        agg.first = values[ts.index(lo)]  # the earliest arrival among equal times
        agg.last_ts = hi
        # The latest arrival among equal times; readings usually arrive in order.
        agg.last = values[n - 1] if ts[n - 1] == hi else values[n - 1 - ts[::-1].index(hi)]
        return agg

    def add(self, ts: int, value: float) -> None:
        """Add one reading (Welford's update)."""
        old_mean = self.total / self.count
        self.count += 1
        self.total += value
        self.m2 += (value - old_mean) * (value - self.total / self.count)
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if ts < self.first_ts:
            self.first_ts, self.first = ts, value
        if ts >= self.last_ts:
            self.last_ts, self.last = ts, value

    def merge(self, other: Agg) -> None:
        """Merge a partial that arrived after this one."""
        n_a, n_b = self.count, other.count
        n = n_a + n_b
        delta = other.total / n_b - self.total / n_a
        self.m2 += other.m2 + delta * delta * n_a * n_b / n
        self.count = n
        self.total += other.total
        if other.min < self.min:
            self.min = other.min
        if other.max > self.max:
            self.max = other.max
        if other.first_ts < self.first_ts:
            self.first_ts, self.first = other.first_ts, other.first
        if other.last_ts >= self.last_ts:
            self.last_ts, self.last = other.last_ts, other.last

    @property
    def mean(self) -> float:
        return self.total / self.count

    @property
    def stddev(self) -> float:
        """Sample standard deviation (ddof=1); 0.0 for a single reading."""
        if self.count < 2:
            return 0.0
        return math.sqrt(max(self.m2, 0.0) / (self.count - 1))

    def state(self) -> tuple[int, float, float, float, float, int, float, int, float]:
        """A plain tuple, for snapshots."""
        return (
            self.count, self.total, self.m2, self.min, self.max,
            self.first_ts, self.first, self.last_ts, self.last,
        )  # fmt: skip

    @classmethod
    def from_state(cls, s: Sequence[float]) -> Agg:
        agg = cls.__new__(cls)
        (
            agg.count, agg.total, agg.m2, agg.min, agg.max,
            agg.first_ts, agg.first, agg.last_ts, agg.last,
        ) = s  # type: ignore[assignment]  # fmt: skip
        return agg

    def __repr__(self) -> str:
        return (
            f"Agg(count={self.count}, mean={self.mean!r}, min={self.min!r}, max={self.max!r}, "
            f"stddev={self.stddev!r}, first={self.first!r}, last={self.last!r})"
        )
