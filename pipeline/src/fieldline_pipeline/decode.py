"""The hot path's telemetry decoder: whole messages into per-sensor columns.

The contract's decoder (:func:`fieldline_edge.contract.decode_telemetry`) is the
reference: it is what devices and other consumers use, and it names the reason
for every rejection. It builds one Python object per reading and validates each
in Python, which is most of the pipeline's cost at 100 readings per message.

Here msgspec decodes and type-checks a whole message in C (types, timestamp and
value bounds), the remaining checks run once per distinct sensor name and unit,
and the readings come out as columns, one :class:`Series` per sensor, which is
what the window aggregates and the detectors consume. A ``fieldline.telemetry/2``
message already is columns: its lists become the series as they are, and no
reading is touched in Python at all.

Any message this fast path does not accept is handed to the reference decoder,
so the outcome, and the dead-letter reason, is always the contract's. A test
checks both agree on generated valid and invalid messages.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Annotated, NamedTuple, TypeVar, Union

import msgspec
from fieldline_edge.contract import (
    MAX_ABS_VALUE,
    MAX_PAYLOAD_BYTES,
    MAX_READINGS_PER_MESSAGE,
    MAX_SEQ,
    MAX_TIMESTAMP_MS,
    MIN_TIMESTAMP_MS,
    SCHEMA_TELEMETRY_V1,
    SCHEMA_TELEMETRY_V2,
    ContractError,
    Telemetry,
    decode_telemetry,
    is_valid_id,
    parse_device_topic,
)
from fieldline_edge.contract import _unit_ok as unit_ok

__all__ = ["Columns", "Series", "columns_of", "decode_columns", "group_indices"]

K = TypeVar("K", bound=Hashable)


class Series(NamedTuple):
    """One sensor's readings of one message, in arrival order.

    ``units`` is the unit shared by all the readings, or one unit per reading
    when they differ (a window takes the unit of its first reading).
    """

    sensor: str
    ts: list[int]
    values: list[float]
    units: str | list[str]


class Columns(NamedTuple):
    """A valid telemetry message, as columns."""

    site: str
    device: str
    seq: int
    series: list[Series]
    count: int  # type: ignore[assignment]  # shadows tuple.count, on purpose
    newest_ts: int


class _Reading(msgspec.Struct, gc=False):
    sensor: str
    ts: Annotated[int, msgspec.Meta(ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS)]
    value: Annotated[float, msgspec.Meta(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]
    unit: str = ""


_Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
_Ts = Annotated[int, msgspec.Meta(ge=MIN_TIMESTAMP_MS, lt=MAX_TIMESTAMP_MS)]
_Value = Annotated[float, msgspec.Meta(ge=-MAX_ABS_VALUE, le=MAX_ABS_VALUE)]


class _TelemetryV1(msgspec.Struct, gc=False, tag_field="schema", tag=SCHEMA_TELEMETRY_V1):
    device: str
    seq: _Seq
    readings: list[_Reading]


class _SeriesV2(msgspec.Struct, gc=False):
    sensor: str
    ts: list[_Ts]
    values: list[_Value]
    unit: str = ""


class _TelemetryV2(msgspec.Struct, gc=False, tag_field="schema", tag=SCHEMA_TELEMETRY_V2):
    device: str
    seq: _Seq
    series: list[_SeriesV2]


_decoder = msgspec.json.Decoder(Union[_TelemetryV1, _TelemetryV2])

#: Topics, sensor names and units seen valid before; bounded so that a stream of
#: made-up names cannot grow them without end.
_CACHE_MAX = 100_000
_topics: dict[str, tuple[str, str]] = {}
_good_sensors: set[str] = set()
_good_units: set[str] = {""}


def _remember(cache: set[str], value: str) -> None:
    if len(cache) >= _CACHE_MAX:
        # Start over from what the cache was built with: the empty unit is
        # valid, an empty sensor name is not.
        cache.intersection_update(("",) if cache is _good_units else ())
    cache.add(value)


def decode_columns(topic: str, payload: bytes, latest_ts_ms: int | None = None) -> Columns:
    """Decode and validate one telemetry message; raise :class:`ContractError`.

    Same acceptance and reasons as :func:`fieldline_edge.contract.decode_telemetry`.
    """
    try:
        return _fast(topic, payload, latest_ts_ms)
    except (msgspec.MsgspecError, _DeclinedError, ContractError, UnicodeDecodeError):
        pass
    # The reference decoder raises with the reason; should it accept what the
    # fast path did not, its result stands.
    return columns_of(decode_telemetry(topic, payload, latest_ts_ms))


class _DeclinedError(Exception):
    """The fast path declines; the reference decoder decides."""


def _fast(topic: str, payload: bytes, latest_ts_ms: int | None) -> Columns:
    ids = _topics.get(topic)
    if ids is None:
        site, device, kind = parse_device_topic(topic)
        if kind != "telemetry":
            raise _DeclinedError
        if len(_topics) >= _CACHE_MAX:
            _topics.clear()
        ids = _topics[topic] = (site, device)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _DeclinedError
    msg = _decoder.decode(payload)
    if msg.device != ids[1]:
        raise _DeclinedError
    if type(msg) is _TelemetryV2:
        return _columns_v2(ids, msg, latest_ts_ms)
    assert type(msg) is _TelemetryV1
    rs = msg.readings
    n = len(rs)
    if n == 1:  # a reading per message: skip the column machinery
        r = rs[0]
        if latest_ts_ms is not None and r.ts > latest_ts_ms:
            raise _DeclinedError
        _check(r.sensor, r.unit)
        return Columns(
            ids[0], ids[1], msg.seq, [Series(r.sensor, [r.ts], [r.value], r.unit)], 1, r.ts
        )
    if not 0 < n <= MAX_READINGS_PER_MESSAGE:
        raise _DeclinedError
    ts = [r.ts for r in rs]
    newest = max(ts)
    if latest_ts_ms is not None and newest > latest_ts_ms:
        raise _DeclinedError
    sensors = [r.sensor for r in rs]
    units = [r.unit for r in rs]
    unit0 = units[0]
    one_unit = units.count(unit0) == n
    for u in (unit0,) if one_unit else set(units):
        if u not in _good_units:
            if not unit_ok(u):
                raise _DeclinedError
            _remember(_good_units, u)
    values = [r.value for r in rs]
    sensor0 = sensors[0]
    if sensors.count(sensor0) == n:
        if sensor0 not in _good_sensors:
            if not is_valid_id(sensor0):
                raise _DeclinedError
            _remember(_good_sensors, sensor0)
        series = [Series(sensor0, ts, values, unit0 if one_unit else units)]
    else:
        series = _split(sensors, ts, values, unit0 if one_unit else units)
        for s in series:
            if s.sensor not in _good_sensors:
                if not is_valid_id(s.sensor):
                    raise _DeclinedError
                _remember(_good_sensors, s.sensor)
    return Columns(ids[0], ids[1], msg.seq, series, n, newest)


def _columns_v2(ids: tuple[str, str], msg: _TelemetryV2, latest_ts_ms: int | None) -> Columns:
    series: list[Series] = []
    count = 0
    newest = MIN_TIMESTAMP_MS
    for s in msg.series:
        ts = s.ts
        n = len(ts)
        if n == 0 or n != len(s.values):
            raise _DeclinedError
        _check(s.sensor, s.unit)
        count += n
        top = max(ts)
        if top > newest:
            newest = top
        series.append(Series(s.sensor, ts, s.values, s.unit))
    if not 0 < count <= MAX_READINGS_PER_MESSAGE:
        raise _DeclinedError
    if len(series) > 1 and len({s.sensor for s in series}) != len(series):
        # A sensor in several series (its unit changed): the reference decoder
        # and columns_of join them into one.
        raise _DeclinedError
    if latest_ts_ms is not None and newest > latest_ts_ms:
        raise _DeclinedError
    return Columns(ids[0], ids[1], msg.seq, series, count, newest)


def _check(sensor: str, unit: str) -> None:
    if sensor not in _good_sensors:
        if not is_valid_id(sensor):
            raise _DeclinedError
        _remember(_good_sensors, sensor)
    if unit not in _good_units:
        if not unit_ok(unit):
            raise _DeclinedError
        _remember(_good_units, unit)


def group_indices(keys: Iterable[K]) -> dict[K, list[int]]:
    """The positions of each key, in order of first appearance."""
    idx: dict[K, list[int]] = {}
    for i, k in enumerate(keys):
        ix = idx.get(k)
        if ix is None:
            idx[k] = [i]
        else:
            ix.append(i)
    return idx


def _split(
    sensors: list[str], ts: list[int], values: list[float], units: str | list[str]
) -> list[Series]:
    """Group readings by sensor, keeping arrival order within each sensor."""
    out: list[Series] = []
    for s, ix in group_indices(sensors).items():
        u: str | list[str] = units
        if not isinstance(units, str):
            u = [units[i] for i in ix]
            if u.count(u[0]) == len(u):  # one unit per sensor, the usual case
                u = u[0]
        out.append(Series(s, [ts[i] for i in ix], [values[i] for i in ix], u))
    return out


def columns_of(tel: Telemetry) -> Columns:
    """The columns of a message the reference decoder accepted."""
    rs = tel.readings
    sensors = [r.sensor for r in rs]
    ts = [r.ts for r in rs]
    values = [r.value for r in rs]
    units = [r.unit for r in rs]
    one: str | list[str] = units[0] if units.count(units[0]) == len(units) else units
    series = _split(sensors, ts, values, one)
    return Columns(tel.site, tel.device, tel.seq, series, len(rs), max(ts))
