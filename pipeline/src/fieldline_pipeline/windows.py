"""Event-time tumbling windows per (device, sensor); pure logic, no I/O.

State is kept per device (the dataflow's key), with one set of open windows per
sensor. Windows are aligned to multiples of the width in Unix time, so every
worker and every replay cuts the same windows.

When a window closes:

* event time: once the device has sent a reading at or past
  ``window end + allowed lateness``;
* system time: once the device has been silent for ``idle_timeout_ms``, all its
  open windows close (a device that stops sending still gets its last windows);
* end of input: all open windows close when ``flush_on_eof`` is set.

A reading whose window has already closed is *late*: it is counted and reported,
never silently dropped, and the closed window is not rewritten (a rewrite with
only the late readings would overwrite the full window in InfluxDB).

"System time" is the pipeline's *ingest* time (when the intake received a
message), never the time of processing: a pipeline that replays a backlog after
a crash or a stalled sink sees the same silences as when the messages arrived,
so it closes the same windows.

Duplicates: QoS 1 delivers at least once, so a message can arrive twice. Each
device's recent sequence numbers (the last :data:`SEQ_WINDOW`) are remembered in
a bitmap, and a message whose ``seq`` was already seen is dropped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from fieldline_edge.contract import Telemetry

from fieldline_pipeline.aggregates import Agg
from fieldline_pipeline.decode import Columns, Series, columns_of, group_indices

#: How many recent sequence numbers per device are remembered for deduplication.
SEQ_WINDOW = 4096


@dataclass(frozen=True)
class WindowConfig:
    """Window width and lateness, in milliseconds.

    >>> WindowConfig(width_ms=10_000, lateness_ms=2_000).idle_timeout_ms
    30000
    """

    width_ms: int = 10_000
    lateness_ms: int = 2_000
    idle_timeout_ms: int = 30_000
    flush_on_eof: bool = True
    #: A device silent this long, with no open window, has its state dropped, so
    #: memory follows the active fleet, not every id ever seen. Only a copy of a
    #: message older than this could then be taken for new.
    state_ttl_ms: int = 6 * 3600 * 1000

    def __post_init__(self) -> None:
        if self.width_ms <= 0:
            raise ValueError(f"window width must be > 0 ms, got {self.width_ms}")
        if self.lateness_ms < 0:
            raise ValueError(f"allowed lateness must be >= 0 ms, got {self.lateness_ms}")
        if self.idle_timeout_ms <= 0:
            raise ValueError(f"idle timeout must be > 0 ms, got {self.idle_timeout_ms}")
        if self.state_ttl_ms < self.idle_timeout_ms:
            raise ValueError("the state TTL must not be shorter than the idle timeout")


class WindowResult(NamedTuple):
    """A closed window's aggregate; ``start_ms`` is the InfluxDB point time."""

    site: str
    device: str
    sensor: str
    unit: str
    start_ms: int
    count: int  # type: ignore[assignment]  # shadows tuple.count, on purpose
    mean: float
    min: float
    max: float
    stddev: float
    first: float
    last: float


class LateReadings(NamedTuple):
    """Readings that arrived after their window closed."""

    site: str
    device: str
    sensor: str
    count: int  # type: ignore[assignment]


class _Open:
    __slots__ = ("agg", "unit")

    def __init__(self, agg: Agg, unit: str) -> None:
        self.agg = agg
        self.unit = unit


def _partials(series: Series, width: int) -> list[tuple[int, Agg, str]]:
    """``(window start, aggregate, unit of its first reading)`` per window touched."""
    ts, values, units = series.ts, series.values, series.units
    lo, hi = min(ts), max(ts)
    start = lo - lo % width
    if hi < start + width:  # the usual case: the whole message in one window
        return [(start, Agg.of(ts, values), units if isinstance(units, str) else units[0])]
    out: list[tuple[int, Agg, str]] = []
    for s, ix in group_indices([t - t % width for t in ts]).items():
        out.append(
            (
                s,
                Agg.of([ts[i] for i in ix], [values[i] for i in ix]),
                units if isinstance(units, str) else units[ix[0]],
            )
        )
    return out


class DeviceWindows:
    """Open windows of one device; feed it messages, collect closed windows."""

    def __init__(self, config: WindowConfig, site: str = "", device: str = "") -> None:
        self.config = config
        self.site = site
        self.device = device
        # sensor -> window start -> open window
        self.open: dict[str, dict[int, _Open]] = {}
        self.max_ts = -(2**62)
        # Every window that ends at or before this has been closed.
        self.closed_until = -(2**62)
        self.last_seen_ms = 0
        # Bit i of seq_mask set <=> seq (max_seq - i) has been seen.
        self.max_seq = -1
        self.seq_mask = 0

    # ------------------------------------------------------------------ dedupe

    def is_duplicate(self, seq: int) -> bool:
        """Record ``seq``; True if it was seen before (within :data:`SEQ_WINDOW`)."""
        gap = seq - self.max_seq
        if gap > 0:
            self.seq_mask = ((self.seq_mask << gap) | 1) & ((1 << SEQ_WINDOW) - 1)
            self.max_seq = seq
            return False
        age = -gap
        if age >= SEQ_WINDOW:
            # Older than anything remembered: a device whose counter went back
            # (restart without persisted state) or a very old message; keep it.
            return False
        bit = 1 << age
        if self.seq_mask & bit:
            return True
        self.seq_mask |= bit
        return False

    # ------------------------------------------------------------------ input

    def add(
        self, msg: Telemetry, received_ms: int
    ) -> tuple[list[WindowResult], list[LateReadings]]:
        """:meth:`add_columns` for a message the contract's decoder returned."""
        return self.add_columns(columns_of(msg), received_ms)

    def add_columns(
        self, msg: Columns, received_ms: int
    ) -> tuple[list[WindowResult], list[LateReadings]]:
        """Add one message's readings; return the windows it closed and the late counts.

        Each sensor's readings are aggregated per window first (one partial
        aggregate per message and window, at C speed), then merged into the open
        window. ``received_ms`` is when the pipeline's intake received the
        message. The caller checks :meth:`is_duplicate` first.
        """
        self.site, self.device = msg.site, msg.device
        width = self.config.width_ms
        # Windows are closed whole: ``closed_until`` is always a window boundary,
        # so a reading is late exactly when its window starts before it.
        closed_until = self.closed_until
        late: dict[str, int] = {}
        open_ = self.open
        max_ts = self.max_ts
        for series in msg.series:
            sensor = series.sensor
            windows = open_.get(sensor)
            if windows is None:
                windows = open_[sensor] = {}
            for start, agg, unit in _partials(series, width):
                if start < closed_until:
                    late[sensor] = late.get(sensor, 0) + agg.count
                    continue
                if agg.last_ts > max_ts:
                    max_ts = agg.last_ts
                w = windows.get(start)
                if w is None:
                    windows[start] = _Open(agg, unit)
                else:
                    w.agg.merge(agg)
        self.max_ts = max_ts
        if received_ms > self.last_seen_ms:
            self.last_seen_ms = received_ms
        # A window [s, s+width) closes once a reading at s+width+lateness has been seen.
        horizon = max_ts - self.config.lateness_ms
        until = horizon - horizon % width
        closed = self._close_before(until) if until > closed_until else []
        return closed, [LateReadings(self.site, self.device, s, n) for s, n in late.items()]

    # ------------------------------------------------------------------ time

    def next_idle_close_ms(self) -> int | None:
        """System time at which the open windows close for silence, if any are open."""
        if not any(self.open.values()):
            return None
        return self.last_seen_ms + self.config.idle_timeout_ms

    def next_wakeup_ms(self) -> int:
        """Ingest time of the next idle close, or else of the state's expiry."""
        due = self.next_idle_close_ms()
        return due if due is not None else self.last_seen_ms + self.config.state_ttl_ms

    def expired(self, now_ms: int) -> bool:
        """Silent for the state TTL with nothing open: the state may be dropped."""
        return self.next_idle_close_ms() is None and (
            now_ms >= self.last_seen_ms + self.config.state_ttl_ms
        )

    def on_time(self, now_ms: int) -> list[WindowResult]:
        """Close everything if the device has been silent for the idle timeout.

        ``now_ms`` is ingest time (see the module docstring).
        """
        due = self.next_idle_close_ms()
        if due is None or now_ms < due:
            return []
        return self.close_all()

    def close_all(self) -> list[WindowResult]:
        width = self.config.width_ms
        end = self.max_ts - self.max_ts % width + width
        return self._close_before(end)

    def _close_before(self, until: int) -> list[WindowResult]:
        """Close every open window that ends at or before ``until``."""
        if until > self.closed_until:
            self.closed_until = until
        width = self.config.width_ms
        out: list[WindowResult] = []
        for sensor, windows in self.open.items():
            if not windows:
                continue
            for start in sorted(s for s in windows if s + width <= until):
                w = windows.pop(start)
                a = w.agg
                out.append(
                    WindowResult(
                        self.site,
                        self.device,
                        sensor,
                        w.unit,
                        start,
                        a.count,
                        a.mean,
                        a.min,
                        a.max,
                        a.stddev,
                        a.first,
                        a.last,
                    )
                )
        return out

    # ------------------------------------------------------------------ recovery

    def snapshot(self) -> dict[str, Any]:
        """Plain, picklable copy of the state."""
        return {
            "site": self.site,
            "device": self.device,
            "max_ts": self.max_ts,
            "closed_until": self.closed_until,
            "last_seen_ms": self.last_seen_ms,
            "max_seq": self.max_seq,
            "seq_mask": self.seq_mask,
            "open": {
                sensor: {start: (w.unit, w.agg.state()) for start, w in windows.items()}
                for sensor, windows in self.open.items()
                if windows
            },
        }

    @classmethod
    def restore(cls, snap: dict[str, Any], config: WindowConfig) -> DeviceWindows:
        dw = cls(config, snap["site"], snap["device"])
        dw.max_ts = snap["max_ts"]
        dw.closed_until = snap["closed_until"]
        dw.last_seen_ms = snap["last_seen_ms"]
        dw.max_seq = snap["max_seq"]
        dw.seq_mask = snap["seq_mask"]
        dw.open = {
            sensor: {start: _Open(Agg.from_state(st), unit) for start, (unit, st) in ws.items()}
            for sensor, ws in snap["open"].items()
        }
        return dw
