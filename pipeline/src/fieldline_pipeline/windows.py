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
device remembers two *runs* of sequence numbers, each the :data:`SEQ_WINDOW`
numbers ending at the highest ``seq`` of the run, in a bitmap of that many bits,
and a message whose ``seq`` was already seen in a run is dropped and counted.

A ``seq`` inside a run's window is checked against that run. Otherwise one less
than :data:`SEQ_WINDOW` above a run's highest extends that run (the nearer one).
Any other ``seq`` -- a jump of at least :data:`SEQ_WINDOW` forward or backward
from both runs -- is a *restarted counter* (or a message from far back): it is
accepted and starts a new run, which replaces the run used less recently. So a
device whose counter restarts keeps its duplicates caught in the new run while
stragglers of the old counter are still checked against the old run, and the
memory per device is two bitmaps whatever the gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from fieldline_edge.contract import Telemetry

from fieldline_pipeline.aggregates import Agg
from fieldline_pipeline.decode import Columns, Series, columns_of, group_indices

#: How many recent sequence numbers per device and run are remembered for deduplication.
SEQ_WINDOW = 4096
_SEQ_BITS = (1 << SEQ_WINDOW) - 1


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


def _merged(a: Agg, b: Agg) -> Agg:
    """``a`` merged with ``b`` (which arrived after it), as a new aggregate."""
    out = Agg.from_state(a.state())
    out.merge(b)
    return out


class PendingUpdate(NamedTuple):
    """One message's effect on a device's windows, before it is applied."""

    site: str
    device: str
    #: sensor -> window start -> the window as it is after this message
    updates: dict[str, dict[int, _Open]]
    #: (sensor, window start) of each window the message closes
    closing: list[tuple[str, int]]
    closed: list[WindowResult]
    late: list[LateReadings]
    max_ts: int
    closed_until: int
    last_seen_ms: int


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
        # Two runs of sequence numbers (module docstring); (max_seq, seq_mask) is
        # the one used last. Bit i of a mask set <=> seq (its max - i) was seen.
        # An empty run has max -1 and mask 0.
        self.max_seq = -1
        self.seq_mask = 0
        self.prev_max_seq = -1
        self.prev_seq_mask = 0

    # ------------------------------------------------------------------ dedupe

    def is_duplicate(self, seq: int) -> bool:
        """Record ``seq``; True if it was seen before in one of the two runs.

        Never a false duplicate, and bounded memory for any sequence of ``seq``
        values (see the module docstring for what a run and a restart are).
        """
        top, mask = self.max_seq, self.seq_mask
        age = top - seq
        if 0 <= age < SEQ_WINDOW:  # within the current run
            bit = 1 << age
            if mask & bit:
                return True
            self.seq_mask = mask | bit
            return False
        ptop, pmask = self.prev_max_seq, self.prev_seq_mask
        page = ptop - seq
        if 0 <= page < SEQ_WINDOW:  # within the other run: it becomes the current one
            bit = 1 << page
            self.prev_max_seq, self.prev_seq_mask = top, mask
            self.max_seq, self.seq_mask = ptop, pmask | bit
            return bool(pmask & bit)
        # Not seen in either run. Extend the nearer run it is just ahead of, if any.
        if -SEQ_WINDOW < age < 0 and not age < page < 0:
            self.seq_mask = ((mask << -age) | 1) & _SEQ_BITS
            self.max_seq = seq
        elif -SEQ_WINDOW < page < 0:
            self.prev_max_seq, self.prev_seq_mask = top, mask
            self.seq_mask = ((pmask << -page) | 1) & _SEQ_BITS
            self.max_seq = seq
        else:  # a restarted counter: a new run replaces the one used less recently
            self.prev_max_seq, self.prev_seq_mask = top, mask
            self.max_seq, self.seq_mask = seq, 1
        return False

    def seq_state(self) -> tuple[int, int, int, int]:
        """The dedupe state, to put back with :meth:`set_seq_state` (O(1), no copy)."""
        return self.max_seq, self.seq_mask, self.prev_max_seq, self.prev_seq_mask

    def set_seq_state(self, state: tuple[int, int, int, int]) -> None:
        self.max_seq, self.seq_mask, self.prev_max_seq, self.prev_seq_mask = state

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
        message, on the ingest clock (:mod:`fieldline_pipeline.clock`). The
        caller checks :meth:`is_duplicate` first.

        All or nothing: should anything raise, the state is as it was before.
        """
        return self.commit(self.prepare(msg, received_ms))

    def prepare(self, msg: Columns, received_ms: int) -> PendingUpdate:
        """Everything :meth:`add_columns` would change, computed without changing it.

        A window the message adds to is a new object here (the open one is not
        touched), so a failure while preparing leaves no half-merged window.
        """
        width = self.config.width_ms
        # Windows are closed whole: ``closed_until`` is always a window boundary,
        # so a reading is late exactly when its window starts before it.
        closed_until = self.closed_until
        late: dict[str, int] = {}
        open_ = self.open
        max_ts = self.max_ts
        updates: dict[str, dict[int, _Open]] = {}
        for series in msg.series:
            sensor = series.sensor
            windows = open_.get(sensor) or {}
            changed = updates.get(sensor)
            if changed is None:
                changed = updates[sensor] = {}
            for start, agg, unit in _partials(series, width):
                if start < closed_until:
                    late[sensor] = late.get(sensor, 0) + agg.count
                    continue
                if agg.last_ts > max_ts:
                    max_ts = agg.last_ts
                w = changed.get(start) or windows.get(start)
                changed[start] = (
                    _Open(agg, unit) if w is None else _Open(_merged(w.agg, agg), w.unit)
                )
        # A window [s, s+width) closes once a reading at s+width+lateness has been seen.
        horizon = max_ts - self.config.lateness_ms
        until = horizon - horizon % width
        closing: list[tuple[str, int]] = []
        closed: list[WindowResult] = []
        if until > closed_until:
            for sensor in [*open_, *(s for s in updates if s not in open_)]:
                view = {**open_.get(sensor, {}), **updates.get(sensor, {})}
                for start in sorted(st for st in view if st + width <= until):
                    closing.append((sensor, start))
                    closed.append(self._result(msg.site, msg.device, sensor, start, view[start]))
        return PendingUpdate(
            msg.site, msg.device, updates, closing, closed,
            [LateReadings(msg.site, msg.device, s, n) for s, n in late.items()],
            max_ts, max(until, closed_until), max(received_ms, self.last_seen_ms),
        )  # fmt: skip

    def commit(self, u: PendingUpdate) -> tuple[list[WindowResult], list[LateReadings]]:
        """Apply what :meth:`prepare` computed: plain assignments, nothing that can fail."""
        self.site, self.device = u.site, u.device
        open_ = self.open
        for sensor, changed in u.updates.items():
            windows = open_.get(sensor)
            if windows is None:
                open_[sensor] = changed
            else:
                windows.update(changed)
        for sensor, start in u.closing:
            del open_[sensor][start]
        self.max_ts = u.max_ts
        self.closed_until = u.closed_until
        self.last_seen_ms = u.last_seen_ms
        return u.closed, u.late

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
        """Close every open window that ends at or before ``until``.

        The results are built before any window is removed, so a failure on the
        way leaves the state as it was.
        """
        width = self.config.width_ms
        closing: list[tuple[dict[int, _Open], int]] = []
        out: list[WindowResult] = []
        for sensor, windows in self.open.items():
            if not windows:
                continue
            for start in sorted(s for s in windows if s + width <= until):
                closing.append((windows, start))
                out.append(self._result(self.site, self.device, sensor, start, windows[start]))
        for windows, start in closing:
            del windows[start]
        if until > self.closed_until:
            self.closed_until = until
        return out

    @staticmethod
    def _result(site: str, device: str, sensor: str, start: int, w: _Open) -> WindowResult:
        a = w.agg
        return WindowResult(
            site, device, sensor, w.unit, start,
            a.count, a.mean, a.min, a.max, a.stddev, a.first, a.last,
        )  # fmt: skip

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
            "prev_max_seq": self.prev_max_seq,
            "prev_seq_mask": self.prev_seq_mask,
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
        # Snapshots written before the second run existed have only the first.
        dw.prev_max_seq = snap.get("prev_max_seq", -1)
        dw.prev_seq_mask = snap.get("prev_seq_mask", 0)
        dw.open = {
            sensor: {start: _Open(Agg.from_state(st), unit) for start, (unit, st) in ws.items()}
            for sensor, ws in snap["open"].items()
        }
        return dw
