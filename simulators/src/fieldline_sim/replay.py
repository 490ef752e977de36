"""Replay CSV time series (the NAB corpus among them) through MQTT, one device per file.

Input: CSV files, with a header (or none: then time, value). The time column is
the first named ``timestamp``, ``time``, ``datetime``, ``date`` or ``ts`` (else
the first not named ``value``); the value column is ``value`` (else the first
other one). Timestamps are
ISO 8601 (``2014-04-01 00:00:00``, ``2014-04-01T00:00:00Z``, with an offset or
not; without one they are UTC) or Unix seconds or milliseconds. Every file is
read and checked before anything is sent: a bad row stops the replay with
``file:line: problem`` and nothing published.

Device ids: the file's stem with every character that an id may not hold
(anything but letters, digits, ``_``, ``.``, ``-``) replaced by ``-``, leading
``_``, ``.``, ``-`` removed, cut to 64 characters
(``realKnownCause/nyc_taxi.csv`` -> ``nyc_taxi``). Two files that map to the
same id are an error.

Pacing: every file starts at once; a row is due ``(ts - first ts of its file) /
speed`` after the start (``speed`` 0: no waiting). A message of ``batch`` rows is
sent when its last row is due. Readings keep their original timestamps; ``seq``
starts at the wall clock in ms (as the edge agent's does) and grows by one per
message, so a second replay is not taken for duplicates of the first. Messages
are in ``schema`` (``fieldline.telemetry/1`` unless told otherwise).

Delivery: QoS 1 over one connection; :func:`replay_paths` returns after every
PUBACK (or ``ack_timeout_s``) with the counts.
"""

from __future__ import annotations

import csv
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple, NoReturn

from fieldline_edge import contract
from fieldline_edge.contract import Reading
from fieldline_edge.mqtt import BrokerURL, TLSConfig

from fieldline_sim.pool import ClientPool

ACK_TIMEOUT_S = 60.0
#: Unacknowledged messages before the replay waits for PUBACKs (16-bit message ids).
MAX_UNACKED = 20_000
_BAD_ID_CHARS = re.compile(r"[^\w.\-]")
#: Header names of the time column (else the first column not named ``value``).
_TIME_NAMES = ("timestamp", "time", "datetime", "date", "ts")


class ReplayError(ValueError):
    """Input that cannot be replayed; the message names the file (and line)."""


class Series(NamedTuple):
    path: Path
    device: str
    #: (ts in Unix ms, value), in file order.
    rows: list[tuple[int, float]]


class ReplayReport(NamedTuple):
    devices: int
    readings: int
    messages: int
    unacked: int

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()


class ReplayProgress(NamedTuple):
    wall_s: float
    readings: int
    total: int
    messages: int
    acked: int


def device_id_for(path: str | os.PathLike[str]) -> str:
    """The device id of a file (see the module docstring); ValueError if none is left."""
    stem = Path(path).stem
    device = _BAD_ID_CHARS.sub("-", stem).lstrip("_.-")[:64]
    if not contract.is_valid_id(device):
        raise ReplayError(f"{path}: no device id can be made of the name {stem!r}")
    return device


def find_csv(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files as given, directories searched recursively for ``*.csv`` (sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*.csv") if f.is_file()))
        elif p.is_file():
            out.append(p)
        else:
            raise ReplayError(f"{p}: no such file or directory")
    if not out:
        raise ReplayError("no CSV files found in " + ", ".join(map(str, paths)))
    return out


def parse_timestamp(text: str) -> int:
    """Unix ms of an ISO 8601 time (UTC unless it says otherwise) or a Unix s/ms number."""
    t = text.strip()
    try:
        number = float(t)
    except ValueError:
        pass
    else:
        if not math.isfinite(number):
            raise ValueError(f"timestamp {t!r} is not a time")
        return round(number * 1000) if abs(number) < 1e11 else round(number)
    try:
        dt = datetime.fromisoformat(t[:-1] + "+00:00" if t.endswith(("Z", "z")) else t)
    except ValueError:
        raise ValueError(f"timestamp {t!r} is not an ISO 8601 time or Unix time") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return round(dt.timestamp() * 1000)


def load_series(path: Path, max_rows: int | None = None) -> list[tuple[int, float]]:
    """The (ts ms, value) rows of one CSV file; ReplayError naming ``file:line`` if one is bad."""
    rows: list[tuple[int, float]] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise ReplayError(f"{path}: is empty")
            ts_col, value_col, has_header = _columns(path, header)
            data: Iterable[list[str]] = reader if has_header else _chain(header, reader)
            for row in data:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if max_rows is not None and len(rows) >= max_rows:
                    break
                if len(row) <= max(ts_col, value_col):
                    raise ReplayError(
                        f"{path}:{line}: expected at least {max(ts_col, value_col) + 1} columns"
                    )
                try:
                    ts = parse_timestamp(row[ts_col])
                except ValueError as exc:
                    raise ReplayError(f"{path}:{line}: {exc}") from None
                if not contract.MIN_TIMESTAMP_MS <= ts < contract.MAX_TIMESTAMP_MS:
                    raise ReplayError(
                        f"{path}:{line}: timestamp {row[ts_col]!r} is outside 2000..2100"
                    )
                try:
                    value = float(row[value_col])
                except ValueError:
                    raise ReplayError(
                        f"{path}:{line}: value {row[value_col]!r} is not a number"
                    ) from None
                if not -contract.MAX_ABS_VALUE <= value <= contract.MAX_ABS_VALUE:
                    raise ReplayError(f"{path}:{line}: value {row[value_col]!r} is out of range")
                rows.append((ts, value))
    except OSError as exc:
        raise ReplayError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ReplayError(f"{path}: is not UTF-8 text") from None
    except csv.Error as exc:
        raise ReplayError(f"{path}: not valid CSV: {exc}") from None
    if not rows:
        raise ReplayError(f"{path}: has no rows")
    return rows


def _chain(first: list[str], rest: Iterable[list[str]]) -> Iterable[list[str]]:
    yield first
    yield from rest


def _columns(path: Path, header: list[str]) -> tuple[int, int, bool]:
    names = [h.strip().lower() for h in header]
    if len(names) < 2:
        raise ReplayError(f"{path}:1: expected a time column and a value column")
    try:
        parse_timestamp(header[0])
    except ValueError:
        named = [i for i, n in enumerate(names) if n in _TIME_NAMES]
        ts_col = named[0] if named else next(i for i, n in enumerate(names) if n != "value")
        others = [i for i in range(len(names)) if i != ts_col]
        value_col = names.index("value") if "value" in names else others[0]
        return ts_col, value_col, True
    return 0, 1, False  # no header: the first row is data


def load_all(paths: Sequence[str | os.PathLike[str]], max_rows: int | None = None) -> list[Series]:
    """Every file's series, checked, with unique device ids."""
    series: list[Series] = []
    owners: dict[str, Path] = {}
    for path in find_csv(paths):
        device = device_id_for(path)
        if device in owners:
            raise ReplayError(
                f"{path} and {owners[device]} both map to device id {device!r}: rename one"
            )
        owners[device] = path
        series.append(Series(path, device, load_series(path, max_rows)))
    return series


class PlannedMessage(NamedTuple):
    due_ms: int  # after the start, in the series' own time
    file: int
    row: int
    readings: list[Reading]


def plan_messages(series: Sequence[Series], sensor: str, batch: int) -> list[PlannedMessage]:
    out: list[PlannedMessage] = []
    for f, s in enumerate(series):
        first = s.rows[0][0]
        due = 0
        for b in range(0, len(s.rows), batch):
            chunk = s.rows[b : b + batch]
            # File order per device, even where a file's times go backwards.
            due = max(due, max(ts for ts, _ in chunk) - first)
            out.append(PlannedMessage(due, f, b, [Reading(sensor, ts, v) for ts, v in chunk]))
    out.sort(key=lambda m: (m.due_ms, m.file, m.row))
    return out


def replay_paths(
    paths: Sequence[str | os.PathLike[str]],
    broker: BrokerURL,
    *,
    site: str = "replay",
    speed: float = 1.0,
    sensor: str = "value",
    batch: int = 1,
    max_rows: int | None = None,
    tls: TLSConfig | None = None,
    ack_timeout_s: float = ACK_TIMEOUT_S,
    client_id: str | None = None,
    progress: Callable[[ReplayProgress], None] | None = None,
    stop: threading.Event | None = None,
    schema: str = contract.SCHEMA_TELEMETRY_V1,
) -> ReplayReport:
    """Replay ``paths`` (files or folders of ``*.csv``) to ``broker``; see the module docstring.

    Raises :class:`ReplayError` (bad arguments or input; nothing sent) or
    :class:`~fieldline_edge.mqtt.ConnectError`.
    """
    if not contract.is_valid_id(site):
        _bad(f"site {site!r} is not a valid id")
    if not contract.is_valid_id(sensor):
        _bad(f"sensor {sensor!r} is not a valid id")
    if not (speed >= 0 and math.isfinite(speed)):
        _bad("speed must be a finite number >= 0 (0: as fast as possible)")
    if not 1 <= batch <= contract.MAX_READINGS_PER_MESSAGE:
        _bad(f"batch must be in 1..{contract.MAX_READINGS_PER_MESSAGE}")
    if max_rows is not None and max_rows < 1:
        _bad("max-rows must be >= 1")
    if schema not in contract.TELEMETRY_SCHEMAS:
        _bad(f"unknown telemetry schema {schema!r}")
    series = load_all(paths, max_rows)
    messages = plan_messages(series, sensor, batch)
    total = sum(len(s.rows) for s in series)
    topics = [contract.telemetry_topic(site, s.device) for s in series]
    seq0 = contract.initial_seq()
    seqs = [seq0] * len(series)
    pool = ClientPool([broker], [client_id or f"fieldline-replay-{os.getpid()}"], tls=tls)
    stop = stop or threading.Event()
    pool.connect()
    sent_readings = sent = 0
    try:
        t0 = time.monotonic()
        next_report = t0 + 1.0
        for m in messages:
            due = t0 + m.due_ms / 1000.0 / speed if speed > 0 else t0
            while not stop.is_set():
                now = time.monotonic()
                if progress is not None and now >= next_report:
                    progress(
                        ReplayProgress(now - t0, sent_readings, total, sent, sent - pool.unacked)
                    )
                    next_report = now + 1.0
                if now < due:
                    pool.service(min(due - now, next_report - now))
                elif pool.unacked > MAX_UNACKED:
                    pool.service(0.01)
                else:
                    break
            if stop.is_set():
                break
            device = series[m.file].device
            payload = contract.encode_telemetry(device, seqs[m.file], m.readings, schema)
            seqs[m.file] += 1
            pool.publish(0, topics[m.file], payload)
            pool.service(0)
            sent += 1
            sent_readings += len(m.readings)
        unacked = pool.wait_for_acks(ack_timeout_s)
        if progress is not None:
            progress(
                ReplayProgress(time.monotonic() - t0, sent_readings, total, sent, sent - unacked)
            )
    finally:
        pool.close()
    return ReplayReport(len(series), sent_readings, sent, unacked)


def _bad(message: str) -> NoReturn:
    raise ReplayError(message)
