"""Ground truth: what a simulator run published, and the windows it implies.

A run folder holds two files:

``readings.csv``
    Header ``site,device,sensor,ts,value``, then one row per published reading
    in publish order (message by message, readings in message order). ``ts`` is
    integer Unix milliseconds, ``value`` is ``repr(float)``, so ``float(value)``
    gives back the exact value that was sent.
``summary.json``
    ``published_readings``, ``published_messages``, ``unacked_messages``,
    ``devices`` (count), ``sensors`` (names), ``started_ms``, ``ended_ms``,
    ``seed``, plus the run's parameters (``site``, ``rate_hz``, ``batch_size``,
    ``duration_s``, ``connections``).

Readings of messages that were never acknowledged are in the file too; the
summary's ``unacked_messages`` says whether any exist.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fieldline_edge.contract import Reading

READINGS_FILE = "readings.csv"
SUMMARY_FILE = "summary.json"
HEADER = ("site", "device", "sensor", "ts", "value")
#: Write buffer of readings.csv (bytes): a run writes in large chunks, not per row.
WRITE_BUFFER_BYTES = 1 << 20

#: (site, device, sensor, ts, value), as published.
Row = tuple[str, str, str, int, float]
#: (site, device, sensor, window_start_ms)
WindowKey = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Aggregates of one sensor of one device over one tumbling window.

    ``mean`` is ``math.fsum(values) / count``; ``stddev`` is the sample standard
    deviation (ddof=1) computed in two passes with ``math.fsum``, ``0.0`` when
    ``count == 1``. ``first`` is the value with the earliest ``ts`` (ties: the
    first published), ``last`` the value with the latest ``ts`` (ties: the last
    published). Compare ``mean`` and ``stddev`` with a relative tolerance (a
    different summation order changes the last bits); the rest exactly.
    """

    count: int
    mean: float
    min: float
    max: float
    stddev: float
    first: float
    last: float


class GroundTruthWriter:
    """Streams published readings to ``readings.csv``; :meth:`close` writes ``summary.json``."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(  # noqa: SIM115 - closed in close()
            self.directory / READINGS_FILE,
            "w",
            newline="",
            encoding="utf-8",
            buffering=WRITE_BUFFER_BYTES,
        )
        self._csv = csv.writer(self._file, lineterminator="\n")
        self._csv.writerow(HEADER)
        self.rows = 0

    def write(self, site: str, device: str, readings: Iterable[Reading]) -> None:
        """Record the readings of one published message, in message order."""
        rows = [(site, device, r.sensor, r.ts, repr(r.value)) for r in readings]
        self._csv.writerows(rows)
        self.rows += len(rows)

    def close(self, summary: Mapping[str, Any]) -> None:
        """Flush ``readings.csv`` and write ``summary.json`` (atomically, by rename)."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        tmp = self.directory / (SUMMARY_FILE + ".tmp")
        tmp.write_text(json.dumps(dict(summary), indent=2, sort_keys=True) + "\n")
        tmp.replace(self.directory / SUMMARY_FILE)


def load_readings(directory: str | os.PathLike[str]) -> list[Row]:
    """The rows of ``readings.csv`` in publish order, with exact float values."""
    with open(Path(directory) / READINGS_FILE, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(header) != HEADER:
            raise ValueError(f"{f.name}: expected header {','.join(HEADER)}, got {header}")
        return [
            (site, dev, sensor, int(ts), float(value)) for site, dev, sensor, ts, value in reader
        ]


def load_summary(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The contents of ``summary.json``."""
    with open(Path(directory) / SUMMARY_FILE, encoding="utf-8") as f:
        summary: dict[str, Any] = json.load(f)
    return summary


def window_start(ts: int, width_ms: int) -> int:
    """Start of the tumbling window holding ``ts`` (also right for negative ``ts``)."""
    return ts - ts % width_ms


def expected_windows(readings: Sequence[Row], width_ms: int) -> dict[WindowKey, WindowStats]:
    """Aggregate readings (in publish order) into tumbling windows of ``width_ms``."""
    if width_ms <= 0:
        raise ValueError("width_ms must be > 0")
    groups: dict[WindowKey, list[tuple[int, float]]] = {}
    for site, device, sensor, ts, value in readings:
        key = (site, device, sensor, window_start(ts, width_ms))
        groups.setdefault(key, []).append((ts, value))
    return {key: _stats(points) for key, points in groups.items()}


def _stats(points: list[tuple[int, float]]) -> WindowStats:
    values = [v for _, v in points]
    n = len(values)
    mean = math.fsum(values) / n
    stddev = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    first_ts = min(ts for ts, _ in points)
    last_ts = max(ts for ts, _ in points)
    first = next(v for ts, v in points if ts == first_ts)
    last = next(v for ts, v in reversed(points) if ts == last_ts)
    return WindowStats(n, mean, min(values), max(values), stddev, first, last)
