"""Every query of a dashboard, and Grafana's substitution of its variables.

Used to run the dashboards' queries against a real InfluxDB without Grafana
(``fieldline dashboards check`` and the tests). The substitution follows
Grafana's InfluxDB data source:

- ``$timeFilter`` becomes ``time >= now() - 1h`` for a relative range, or
  ``time >= <from>ms and time <= <to>ms`` for an absolute one;
- ``$__interval`` / ``$interval`` a duration (never below the panel's minimum
  interval), ``$__interval_ms`` the same in milliseconds;
- a variable inside a regex (``=~ /^$site$/``) becomes its value with regex
  characters escaped, ``(a|b)`` for several values, or the variable's custom
  "All" value as it is; elsewhere the value itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "ALL",
    "LAST_HOUR",
    "DashboardQuery",
    "TimeRange",
    "dashboard_queries",
    "duration_ms",
    "interpolate",
    "variables",
]

#: Marker for a variable's "All" option.
ALL = object()

_DURATION = re.compile(r"^(\d+)(ms|s|m|h|d|w)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
# Grafana's escapeRegex: the characters special in a regex, and "/" (InfluxQL's delimiter).
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|\[\]{}/]")


def duration_ms(text: str) -> int:
    """``10s`` -> 10000."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"{text!r} is not a duration like 10s, 5m or 1h")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


@dataclass(frozen=True)
class TimeRange:
    """Relative (``last="1h"``) or absolute (``from_ms``/``to_ms``)."""

    last: str | None = "1h"
    from_ms: int | None = None
    to_ms: int | None = None

    def time_filter(self) -> str:
        if self.from_ms is not None and self.to_ms is not None:
            return f"time >= {self.from_ms}ms and time <= {self.to_ms}ms"
        if self.last is None:
            raise ValueError("a time range needs last= or from_ms= and to_ms=")
        duration_ms(self.last)  # checks the form
        return f"time >= now() - {self.last}"


LAST_HOUR = TimeRange(last="1h")


@dataclass(frozen=True)
class DashboardQuery:
    """One InfluxQL query of a dashboard and where it sits."""

    kind: Literal["panel", "annotation", "variable"]
    title: str  # panel title, annotation or variable name
    ref_id: str
    query: str
    result_format: str
    min_interval: str | None = None
    time_from: str | None = None

    def __str__(self) -> str:
        return f"{self.kind} {self.title!r} ({self.ref_id})"


def _panels(panels: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))  # panels of collapsed rows


def dashboard_queries(dashboard: Mapping[str, Any]) -> list[DashboardQuery]:
    """Every InfluxQL query of a dashboard: panels' targets, annotations, variables."""
    out: list[DashboardQuery] = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            out.append(DashboardQuery("variable", v["name"], "var", v["query"], "table"))
    for a in dashboard.get("annotations", {}).get("list", []):
        t = a.get("target") or {}
        if "query" in t:
            out.append(
                DashboardQuery("annotation", a["name"], t.get("refId", "Anno"), t["query"], "table")
            )
    for p in _panels(dashboard.get("panels", [])):
        for t in p.get("targets", []):
            out.append(
                DashboardQuery(
                    "panel",
                    p.get("title", ""),
                    t.get("refId", "A"),
                    t["query"],
                    t.get("resultFormat", "time_series"),
                    p.get("interval"),
                    p.get("timeFrom"),
                )
            )
    return out


def variables(dashboard: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The dashboard's variables by name."""
    return {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}


def _escape_regex(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _in_regex(query: str, name: str) -> bool:
    return re.search(rf"[=!]~\s*/[^/]*\$(\{{{name}\}}|{name}\b)", query) is not None


def interpolate(
    q: DashboardQuery,
    values: Mapping[str, str | Sequence[str] | object],
    variable_models: Mapping[str, Mapping[str, Any]],
    time_range: TimeRange | None = None,
    interval: str = "10s",
) -> str:
    """The query as Grafana would send it, for these variable values.

    ``values[name]`` is a string, a list of strings (a multi-value variable) or
    :data:`ALL`. Raises ``KeyError`` for a variable that has no value.
    """
    if q.time_from:
        time_range = TimeRange(last=q.time_from)
    elif time_range is None:
        time_range = LAST_HOUR
    iv_ms = duration_ms(interval)
    if q.min_interval and duration_ms(q.min_interval) > iv_ms:
        interval, iv_ms = q.min_interval, duration_ms(q.min_interval)
    text = q.query
    # Longest names first: "$__interval_ms" before "$__interval".
    text = text.replace("$timeFilter", time_range.time_filter())
    text = text.replace("$__timeFilter", time_range.time_filter())
    text = text.replace("$__interval_ms", str(iv_ms))
    text = text.replace("$__interval", interval).replace("$interval", interval)

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise KeyError(f"{q}: no value for variable ${name}")
        v = values[name]
        model = variable_models.get(name, {})
        if v is ALL:
            all_value = model.get("allValue")
            if not isinstance(all_value, str):
                raise KeyError(f"{q}: ${name} has no custom All value; pass its values")
            return all_value
        regex = _in_regex(q.query, name)
        if isinstance(v, str):
            return _escape_regex(v) if regex else v
        if not isinstance(v, Sequence) or not v:
            raise KeyError(f"{q}: ${name} needs a value")
        if len(v) == 1:
            return _escape_regex(v[0]) if regex else v[0]
        if not regex:
            raise ValueError(f"{q}: several values for ${name} outside a regex")
        return "(" + "|".join(_escape_regex(x) for x in v) + ")"

    return re.sub(r"\$\{(\w+)\}|\$(?!__)(\w+)", value, text)
