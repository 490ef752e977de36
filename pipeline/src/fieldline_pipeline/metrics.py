"""Counters of one pipeline process, and their reports.

Operators count into one process-wide :class:`PipelineMetrics` (Bytewax workers
of a process are threads); a reporter thread publishes a snapshot as JSON on
``fieldline/_metrics/pipeline/<instance>`` every second (the demo's live view and
other tools read it) and writes it to InfluxDB (measurements ``pipeline`` and
``dead_letters``), so what the pipeline did is visible in Grafana.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fieldline_edge.contract import TOPIC_ROOT

from fieldline_pipeline.lineprotocol import format_line

log = logging.getLogger(__name__)

METRICS_TOPIC_PREFIX = TOPIC_ROOT + "/_metrics/pipeline"


class PipelineMetrics:
    """Thread-safe counters; updated once per message or window, never per reading."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages = 0
        self.readings = 0
        self.late_readings = 0
        self.duplicates = 0
        self.windows = 0
        self.anomalies = 0
        self.unwritable_windows = 0
        self.refused_points = 0
        self.dead_letters: dict[str, int] = {}
        self.max_event_ms = 0
        self.started_ms = int(time.time() * 1000)

    def on_message(self) -> None:
        with self._lock:
            self.messages += 1

    def on_readings(self, accepted: int, late: int, duplicates: int) -> None:
        """Readings of non-duplicate messages; ``late`` of them came too late."""
        with self._lock:
            self.readings += accepted
            self.late_readings += late
            self.duplicates += duplicates

    def on_event_time(self, max_event_ms: int) -> None:
        if max_event_ms > self.max_event_ms:  # a racy read only delays the update
            with self._lock:
                self.max_event_ms = max(self.max_event_ms, max_event_ms)

    def on_dead_letter(self, reason: str) -> None:
        with self._lock:
            self.messages += 1
            self.dead_letters[reason] = self.dead_letters.get(reason, 0) + 1

    def on_refused_points(self, reason: str, count: int) -> None:
        """``count`` points InfluxDB refused, dead-lettered one by one with ``reason``.

        They count as dead letters, not as messages: their messages were counted
        when they came in.
        """
        with self._lock:
            self.refused_points += count
            self.dead_letters[reason] = self.dead_letters.get(reason, 0) + count

    def on_unwritable_window(self) -> None:
        with self._lock:
            self.unwritable_windows += 1

    def on_windows(self, count: int) -> None:
        with self._lock:
            self.windows += count

    def on_anomalies(self, count: int) -> None:
        with self._lock:
            self.anomalies += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            now_ms = int(time.time() * 1000)
            return {
                "messages": self.messages,
                "readings": self.readings,
                "late_readings": self.late_readings,
                "duplicates": self.duplicates,
                "windows": self.windows,
                "anomalies": self.anomalies,
                "unwritable_windows": self.unwritable_windows,
                "refused_points": self.refused_points,
                "dead_letters": sum(self.dead_letters.values()),
                "dead_letters_by_reason": dict(self.dead_letters),
                # How far the newest event seen is behind the wall clock.
                "lag_ms": (now_ms - self.max_event_ms) if self.max_event_ms else None,
                "ts": now_ms,
                "started_ms": self.started_ms,
            }


#: The process's counters (each Bytewax process has its own).
METRICS = PipelineMetrics()


#: Snapshot keys set by the runner, and their field names in ``pipeline``:
#: InfluxDB chunks given up on and retried, and 1/0 while the MQTT intake is
#: (not) subscribed.
_RUNNER_FIELDS = (
    ("sink_errors", "sink_errors"),
    ("sink_retries", "sink_retries"),
    ("subscribed_clients", "mqtt_connected"),
)


_COUNTERS = (
    "messages",
    "readings",
    "late_readings",
    "duplicates",
    "windows",
    "anomalies",
    "dead_letters",
    "refused_points",
)


def metrics_lines(snap: dict[str, Any], instance: str) -> list[str]:
    """Line protocol for one snapshot (time = snapshot time, ms)."""
    fields: dict[str, float | int] = {k: snap[k] for k in _COUNTERS}
    if snap["lag_ms"] is not None:
        fields["lag_ms"] = snap["lag_ms"]
    # Added to the snapshot by the runner's publisher (it owns the sink and the
    # MQTT intake), which runs before the write: the Pipeline health dashboard
    # and the alert rules read them.
    for key, name in _RUNNER_FIELDS:
        if isinstance(snap.get(key), int):
            fields[name] = int(snap[key])
    lines = [format_line("pipeline", {"instance": instance}, fields, snap["ts"])]
    for reason, count in sorted(snap["dead_letters_by_reason"].items()):
        lines.append(
            format_line(
                "dead_letters",
                {"instance": instance, "reason": reason},
                {"count": count},
                snap["ts"],
            )
        )
    return lines


class _Outage:
    """Logs one line when a report starts failing and one when it works again.

    A reporter fails every few seconds while InfluxDB or the broker is away; a
    warning with a traceback each time would bury the log, and the cause is the
    same each time.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._since: float | None = None
        self._failures = 0

    def failed(self, exc: Exception) -> None:
        self._failures += 1
        if self._since is None:
            self._since = time.time()
            log.warning(
                "%s failing since %s: %s: %s; reports are dropped until it works again",
                self._what, time.strftime("%H:%M:%S", time.localtime(self._since)),
                type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "",
            )  # fmt: skip

    def succeeded(self) -> None:
        if self._since is not None:
            log.info(
                "%s works again after %.1f s (%d reports dropped)",
                self._what, time.time() - self._since, self._failures,
            )  # fmt: skip
            self._since = None
            self._failures = 0


class MetricsReporter:
    """Calls ``publish(snapshot)`` every ``interval_s`` and ``write(lines)`` every
    ``write_every`` publishes, on a daemon thread; ``stop()`` reports once more.

    A failing publish or write drops that report (the next one carries the same
    cumulative counters) and is logged once per outage: one line when it starts
    failing, one when it works again.
    """

    def __init__(
        self,
        metrics: PipelineMetrics,
        instance: str,
        publish: Callable[[dict[str, Any]], None],
        write: Callable[[list[str]], object],
        interval_s: float = 1.0,
        write_every: int = 5,
    ) -> None:
        self._metrics = metrics
        self._instance = instance
        self._publish = publish
        self._write = write
        self._interval_s = interval_s
        self._write_every = write_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._publish_outage = _Outage("publishing metrics")
        self._write_outage = _Outage("writing metrics to InfluxDB")

    def start(self) -> None:
        self._thread.start()

    def _report(self, write: bool, final: bool = False) -> None:
        snap = self._metrics.snapshot()
        snap["instance"] = self._instance
        snap["done"] = final
        try:
            self._publish(snap)
        except Exception as exc:  # a metrics hiccup must never stop the pipeline
            self._publish_outage.failed(exc)
        else:
            self._publish_outage.succeeded()
        if write:
            try:
                self._write(metrics_lines(snap, self._instance))
            except Exception as exc:
                self._write_outage.failed(exc)
            else:
                self._write_outage.succeeded()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self._interval_s):
            n += 1
            self._report(write=n % self._write_every == 0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._report(write=True, final=True)
