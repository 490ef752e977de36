"""Scenario files: a fleet, its signals and the faults to inject, in TOML.

See docs/simulators.md for the format. :func:`load_scenario` raises
:class:`ScenarioError` whose message names the file, the key and the problem,
e.g. ``fleet.toml: devices[1].count: must be an integer >= 1, got 0``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fieldline_edge import contract

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: Sensor kinds and their parameters' defaults. ``scale`` is the sensor's typical
#: variability: the default size of injected faults is a multiple of it.
KIND_PARAMS: dict[str, dict[str, float]] = {
    "temperature": {
        "mean": 21.0,
        "spread": 1.5,
        "amplitude": 4.0,
        "peak_hour": 15.0,
        "weather_sd": 1.0,
        "weather_tau_s": 3600.0,
        "noise": 0.05,
        "decimals": 2,
        "scale": 1.0,
    },
    "humidity": {
        "mean": 55.0,
        "spread": 5.0,
        "coupling": 2.5,
        "weather_sd": 2.0,
        "weather_tau_s": 1800.0,
        "noise": 0.3,
        "decimals": 1,
        "scale": 3.0,
    },
    "vibration": {"on_level": 4.0, "off_level": 0.1, "noise": 0.1, "decimals": 3, "scale": 0.5},
    "current": {"on_level": 12.0, "off_level": 0.8, "noise": 0.2, "decimals": 3, "scale": 1.0},
    "battery": {
        "full": 4.15,
        "empty": 3.3,
        "life_days": 30.0,
        "noise": 0.003,
        "decimals": 3,
        "scale": 0.05,
    },
    "generic": {
        "mean": 0.0,
        "amplitude": 1.0,
        "period_s": 3600.0,
        "weather_sd": 0.3,
        "weather_tau_s": 600.0,
        "noise": 0.1,
        "decimals": 3,
        "scale": 0.5,
    },
}
KIND_UNITS = {
    "temperature": "°C",
    "humidity": "%",
    "vibration": "mm/s",
    "current": "A",
    "battery": "V",
    "generic": "",
}

#: Faults of one sensor's values.
VALUE_FAULTS = ("spike", "level_shift", "drift", "stuck", "noise_burst")
#: Faults of a whole device's delivery.
DEVICE_FAULTS = ("dropout", "clock_skew", "duplicate", "out_of_order")
#: Each fault kind's own parameters and its default length range (seconds).
FAULT_PARAMS: dict[str, tuple[tuple[str, ...], tuple[float, float]]] = {
    "spike": (("magnitude", "direction"), (0.0, 0.0)),
    "level_shift": (("shift", "direction"), (60.0, 600.0)),
    "drift": (("total", "direction"), (120.0, 900.0)),
    "stuck": ((), (30.0, 300.0)),
    "noise_burst": (("sigma",), (10.0, 120.0)),
    "dropout": ((), (10.0, 120.0)),
    "clock_skew": (("offset_s",), (30.0, 300.0)),
    "duplicate": ((), (5.0, 30.0)),
    "out_of_order": ((), (3.0, 20.0)),
}
DIRECTIONS = ("up", "down", "both")


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message names the file, key and problem."""


@dataclass(frozen=True)
class SensorConfig:
    name: str
    kind: str
    unit: str
    params: Mapping[str, float]


@dataclass(frozen=True)
class GroupConfig:
    """``count`` devices ``<prefix>-0001``... sampling every sensor ``rate_hz`` times a second."""

    prefix: str
    count: int
    rate_hz: float
    sensors: tuple[SensorConfig, ...]
    samples_per_message: int = 1
    #: A machine's on/off cycle (vibration and current follow it).
    cycle_s: float = 600.0
    duty: float = 0.6

    def device_ids(self) -> list[str]:
        width = max(4, len(str(self.count)))
        return [f"{self.prefix}-{i + 1:0{width}d}" for i in range(self.count)]


@dataclass(frozen=True)
class FaultConfig:
    kind: str
    #: Group prefixes; empty: every group.
    groups: tuple[str, ...] = ()
    #: Sensor names; empty: every sensor of the device (value faults only).
    sensors: tuple[str, ...] = ()
    count: int | None = None
    rate_per_hour: float | None = None
    duration_s: tuple[float, float] = (0.0, 0.0)
    after_s: float = 0.0
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scenario:
    name: str
    site: str
    seed: int
    #: Virtual start (Unix ms); ``None``: the wall clock at start, to the second.
    start_ms: int | None
    #: Virtual seconds to simulate; 0: until stopped.
    duration_s: float
    groups: tuple[GroupConfig, ...]
    faults: tuple[FaultConfig, ...] = ()
    #: The payloads' schema (version 1 unless the file or ``--schema`` says 2).
    telemetry_schema: str = contract.SCHEMA_TELEMETRY_V1
    #: Where it came from, for error messages.
    source: str = field(default="scenario", compare=False)

    @property
    def devices(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def readings_per_s(self) -> float:
        """Readings per virtual second, before faults."""
        return sum(g.count * g.rate_hz * len(g.sensors) for g in self.groups)

    def replace(self, **changes: Any) -> Scenario:
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        values.update(changes)
        return check_runnable(Scenario(**values), self.source)


# --------------------------------------------------------------------------- parsing


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and check a scenario file; :class:`ScenarioError` if it is not a good one."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ScenarioError(f"{name}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{name}: not valid TOML: {exc}") from None
    return parse_scenario(raw, name)


def parse_scenario(raw: Mapping[str, Any], source: str = "scenario") -> Scenario:
    r = _Table(raw, source, "")
    site = r.id("site", "sim")
    groups_raw = r.get("devices", list, [])
    if not groups_raw:
        raise r.error("devices", "at least one [[devices]] group is needed")
    groups = tuple(
        _group(_Table(g, source, f"devices[{i}]."), i) if isinstance(g, dict) else None
        for i, g in enumerate(groups_raw)
    )
    if any(g is None for g in groups):
        raise r.error("devices", "must be an array of tables ([[devices]])")
    checked = tuple(g for g in groups if g is not None)
    prefixes = [g.prefix for g in checked]
    for i, p in enumerate(prefixes):
        if p in prefixes[:i]:
            raise r.error(f"devices[{i}].prefix", f"{p!r} is used by another group")
    faults_raw = r.get("faults", list, [])
    faults = []
    for i, f in enumerate(faults_raw):
        if not isinstance(f, dict):
            raise r.error("faults", "must be an array of tables ([[faults]])")
        faults.append(_fault(_Table(f, source, f"faults[{i}]."), checked))
    scenario = Scenario(
        name=r.get("name", str, "scenario"),
        site=site,
        seed=r.integer("seed", 0, minimum=0),
        start_ms=_start(r),
        duration_s=r.number("duration_s", 60.0, minimum=0.0),
        groups=checked,
        faults=tuple(faults),
        telemetry_schema=_schema(r),
        source=source,
    )
    r.done()
    return check_runnable(scenario, source)


def check_runnable(s: Scenario, source: str) -> Scenario:
    """Checks that involve several keys (also after command-line overrides)."""
    if s.duration_s == 0:
        for i, f in enumerate(s.faults):
            if f.count is not None:
                raise ScenarioError(
                    f"{source}: faults[{i}].count: needs a finite duration_s, not 0 "
                    "(use rate_per_hour for a run until stopped)"
                )
    return s


def _schema(r: _Table) -> str:
    r.seen.add("telemetry_schema")
    try:
        return contract.telemetry_schema(r.raw.get("telemetry_schema", 1))
    except ValueError as exc:
        raise r.error("telemetry_schema", str(exc)) from None


def _start(r: _Table) -> int | None:
    value = r.get("start", (str, datetime), "now")
    if value == "now":
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise r.error("start", f"must be an RFC 3339 time or 'now', got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    ms = int(dt.timestamp() * 1000)
    if not contract.MIN_TIMESTAMP_MS <= ms < contract.MAX_TIMESTAMP_MS:
        raise r.error("start", "must be between 2000 and 2100")
    return ms


def _group(r: _Table, index: int) -> GroupConfig:
    prefix = r.id("prefix", f"dev{index + 1}" if index else "dev")
    count = r.integer("count", None, minimum=1, maximum=1_000_000)
    rate_hz = r.number("rate_hz", 1.0, minimum=0.0, exclusive=True, maximum=1000.0)
    names = r.get("sensors", list, ["temperature", "humidity"])
    if not names:
        raise r.error("sensors", "needs at least one sensor")
    for n in names:
        if not contract.is_valid_id(n):
            raise r.error("sensors", f"{n!r} is not a valid id")
    if len(set(names)) != len(names):
        raise r.error("sensors", "names must be unique")
    params = r.get("params", dict, {})
    sensors = []
    for n in names:
        sensors.append(_sensor(n, _Table(params.get(n, {}), r.source, f"{r.prefix}params.{n}.")))
    for extra in sorted(set(params) - set(names)):
        raise r.error(f"params.{extra}", "is not one of this group's sensors")
    spm = r.integer("samples_per_message", 1, minimum=1)
    if spm * len(sensors) > contract.MAX_READINGS_PER_MESSAGE:
        raise r.error("samples_per_message", "makes messages larger than the contract allows")
    group = GroupConfig(
        prefix=prefix,
        count=count,
        rate_hz=rate_hz,
        sensors=tuple(sensors),
        samples_per_message=spm,
        cycle_s=r.number("cycle_s", 600.0, minimum=0.0, exclusive=True),
        duty=r.number("duty", 0.6, minimum=0.0, maximum=1.0),
    )
    r.done()
    return group


def _sensor(name: str, r: _Table) -> SensorConfig:
    kind = r.get("kind", str, name if name in KIND_PARAMS else "generic")
    if kind not in KIND_PARAMS:
        raise r.error("kind", f"must be one of {', '.join(KIND_PARAMS)}, got {kind!r}")
    unit = r.get("unit", str, KIND_UNITS[kind])
    if len(unit) > contract.MAX_UNIT_LEN or not unit.isprintable() or "\\" in unit:
        raise r.error("unit", f"must be at most {contract.MAX_UNIT_LEN} printable characters")
    params = dict(KIND_PARAMS[kind])
    for key in list(r.keys()):
        if key in params:
            params[key] = r.number(key, params[key])
    r.done(f"is not a parameter of a {kind} sensor (known: kind, unit, {', '.join(params)})")
    if params["decimals"] != int(params["decimals"]) or not 0 <= params["decimals"] <= 9:
        raise r.error("decimals", "must be an integer in 0..9")
    return SensorConfig(name, kind, unit, params)


def _fault(r: _Table, groups: tuple[GroupConfig, ...]) -> FaultConfig:
    kind = r.get("kind", str, None)
    if kind not in FAULT_PARAMS:
        raise r.error("kind", f"must be one of {', '.join(FAULT_PARAMS)}, got {kind!r}")
    own, default_len = FAULT_PARAMS[kind]
    prefixes = {g.prefix: g for g in groups}
    targets = tuple(r.get("devices", list, []))
    for t in targets:
        if t not in prefixes:
            raise r.error("devices", f"{t!r} is not the prefix of a [[devices]] group")
    chosen = [prefixes[t] for t in targets] or list(groups)
    sensors = tuple(r.get("sensors", list, []))
    if sensors and kind in DEVICE_FAULTS:
        raise r.error("sensors", f"a {kind} fault hits the whole device: leave sensors out")
    for s in sensors:
        if not any(s in (c.name for c in g.sensors) for g in chosen):
            raise r.error("sensors", f"{s!r} is not a sensor of the targeted devices")
    count = r.integer("count", None, minimum=0) if "count" in r else None
    rate = r.number("rate_per_hour", 0.0, minimum=0.0) if "rate_per_hour" in r else None
    if (count is None) == (rate is None):
        raise r.error("count", "give exactly one of count and rate_per_hour")
    if kind == "spike":
        if "duration_s" in r:
            raise r.error("duration_s", "a spike is one reading long: leave duration_s out")
        length = default_len
    else:
        length = _range(r, "duration_s", default_len)
    params: dict[str, Any] = {}
    for key in own:
        if key == "direction":
            params[key] = r.get(key, str, "both")
            if params[key] not in DIRECTIONS:
                raise r.error(key, f"must be one of {', '.join(DIRECTIONS)}")
        elif key in r:
            params[key] = r.number(key, 0.0, minimum=None if key == "offset_s" else 0.0)
    fault = FaultConfig(
        kind=kind,
        groups=targets,
        sensors=sensors,
        count=count,
        rate_per_hour=rate,
        duration_s=length,
        after_s=r.number("after_s", 0.0, minimum=0.0),
        params=params,
    )
    r.done()
    return fault


def _range(r: _Table, key: str, default: tuple[float, float]) -> tuple[float, float]:
    if key not in r:
        return default
    r.seen.add(key)
    value = r.raw[key]
    if _is_number(value) and value > 0:
        return (float(value), float(value))
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(_is_number(v) for v in value)
        and 0 < value[0] <= value[1]
    ):
        return (float(value[0]), float(value[1]))
    raise r.error(key, f"must be a number > 0 or [min, max] with 0 < min <= max, got {value!r}")


def _is_number(v: object) -> bool:
    return type(v) in (int, float) and math.isfinite(v)  # type: ignore[arg-type]


class _Table:
    """A TOML table read key by key, so an error names the key; unknown keys are errors."""

    def __init__(self, raw: Any, source: str, prefix: str) -> None:
        if not isinstance(raw, dict):
            raise ScenarioError(f"{source}: {prefix.rstrip('.')}: must be a table")
        self.raw: dict[str, Any] = raw
        self.source = source
        self.prefix = prefix
        self.seen: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def keys(self) -> list[str]:
        return list(self.raw)

    def error(self, key: str, problem: str) -> ScenarioError:
        return ScenarioError(f"{self.source}: {self.prefix}{key}: {problem}")

    def get(self, key: str, types: type | tuple[type, ...], default: Any) -> Any:
        self.seen.add(key)
        if key not in self.raw:
            if default is None:
                raise self.error(key, "is required")
            return default
        value = self.raw[key]
        if not isinstance(value, types) or isinstance(value, bool):
            names = (
                types.__name__
                if isinstance(types, type)
                else " or ".join(t.__name__ for t in types)
            )
            raise self.error(key, f"must be a {_toml_type(names)}, got {value!r}")
        return value

    def id(self, key: str, default: str) -> str:
        value: str = self.get(key, str, default)
        if not contract.is_valid_id(value):
            raise self.error(
                key,
                f"{value!r} is not a valid id (1-64 letters, digits, '_', '.', '-', "
                "not starting with '_', '.' or '-')",
            )
        return value

    def number(
        self,
        key: str,
        default: float | None,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        exclusive: bool = False,
    ) -> float:
        self.seen.add(key)
        if key not in self.raw:
            if default is None:
                raise self.error(key, "is required")
            return default
        value = self.raw[key]
        if not _is_number(value):
            raise self.error(key, f"must be a number, got {value!r}")
        v = float(value)
        low_bad = minimum is not None and (v <= minimum if exclusive else v < minimum)
        if low_bad or (maximum is not None and v > maximum):
            low = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            bounds = " and ".join(
                b
                for b in (low if minimum is not None else "", f"<= {maximum:g}" if maximum else "")
                if b
            )
            raise self.error(key, f"must be {bounds}, got {value!r}")
        return v

    def integer(
        self, key: str, default: int | None, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        self.seen.add(key)
        if key not in self.raw:
            if default is None:
                raise self.error(key, "is required")
            return default
        value = self.raw[key]
        if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
            top = f" and <= {maximum}" if maximum is not None else ""
            raise self.error(key, f"must be an integer >= {minimum}{top}, got {value!r}")
        return value

    def done(self, problem: str = "is not a known key") -> None:
        for key in self.raw:
            if key not in self.seen:
                raise self.error(key, problem)


def _toml_type(names: str) -> str:
    return names.replace("str", "string").replace("list", "array").replace("dict", "table")
