"""A small typed InfluxQL builder for Grafana panels (pure, no I/O).

The foundation SDK has no InfluxDB query type, and InfluxQL written as strings
by hand goes wrong in quoting. Queries built here quote every identifier, and
leave Grafana's macros (``$timeFilter``, ``$__interval``) and template variables
(``$site``) in place for Grafana to substitute::

    >>> q = Select(
    ...     "reading_window",
    ...     [agg("mean", "mean")],
    ...     where=[tag_matches("site", "site")],
    ...     group_by_time="$__interval",
    ...     group_by_tags=["device"],
    ... )
    >>> print(q.render())  # doctest: +NORMALIZE_WHITESPACE
    SELECT mean("mean") AS "mean" FROM "reading_window"
    WHERE $timeFilter AND "site" =~ /^$site$/
    GROUP BY time($__interval), "device" fill(null)

InfluxQL runs unchanged on InfluxDB 1.x, on 2.x through a DBRP mapping and on
3.x, which is why Fieldline's dashboards use it rather than Flux or SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Condition",
    "Expr",
    "Select",
    "ShowTagValues",
    "agg",
    "col",
    "field_compare",
    "ident",
    "raw",
    "string",
    "tag_equals",
    "tag_matches",
    "time_since",
]

Fill = Literal["null", "none", "previous", "linear", "0"]


def ident(name: str) -> str:
    """Quote an identifier (measurement, tag or field key)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def string(value: str) -> str:
    """Quote a string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class Expr:
    """A projection: ``text`` as rendered, with an optional ``AS`` alias."""

    text: str
    alias: str | None = None

    def render(self) -> str:
        return f"{self.text} AS {ident(self.alias)}" if self.alias else self.text

    def over(self, divisor: str) -> Expr:
        """This expression divided by ``divisor`` (a number or a macro such as
        ``$__interval_ms``), e.g. a count per window into a rate."""
        return Expr(f"{self.text} / {divisor}", self.alias)

    def named(self, alias: str) -> Expr:
        return Expr(self.text, alias)


def col(name: str, alias: str | None = None) -> Expr:
    """A field or tag as it is (a raw, non-aggregated column)."""
    return Expr(ident(name), alias)


def agg(function: str, key: str, alias: str | None = None, *args: str | int | float) -> Expr:
    """``function("key"[, args])``, aliased to ``alias`` (default: the key).

    Nested functions (``non_negative_derivative(max("x"), 1s)``) go through :func:`raw`.
    """
    extra = "".join(f", {a}" for a in args)
    return Expr(f"{function}({ident(key)}{extra})", key if alias is None else alias)


def raw(text: str, alias: str | None = None) -> Expr:
    """An expression written out, e.g. ``non_negative_derivative(max("readings"), 1s)``."""
    return Expr(text, alias)


@dataclass(frozen=True)
class Condition:
    text: str


def tag_matches(key: str, variable: str) -> Condition:
    """``"key" =~ /^$variable$/``: Grafana puts ``(a|b)`` there for several values."""
    return Condition(f"{ident(key)} =~ /^${variable}$/")


def tag_equals(key: str, value: str) -> Condition:
    return Condition(f"{ident(key)} = {string(value)}")


def time_since(duration: str) -> Condition:
    """``time > now() - duration``: a fixed look-back, whatever the dashboard's range."""
    return Condition(f"time > now() - {duration}")


def field_compare(
    key: str, op: Literal["=", "!=", "<", "<=", ">", ">="], value: float
) -> Condition:
    return Condition(f"{ident(key)} {op} {value!r}")


@dataclass(frozen=True)
class Select:
    """``SELECT ... FROM ... WHERE $timeFilter AND ... GROUP BY ...``.

    ``source`` is a measurement name or another :class:`Select` (a subquery).
    ``time_filter`` adds Grafana's ``$timeFilter``; a ``group_by_time`` of
    ``"$__interval"`` lets Grafana pick the bucket width from the panel's width.
    """

    source: str | Select
    fields: Sequence[Expr]
    where: Sequence[Condition] = ()
    time_filter: bool = True
    group_by_time: str | None = None
    group_by_tags: Sequence[str] = ()
    fill: Fill | None = None
    order_desc: bool = False
    limit: int | None = None
    tz: str | None = None

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError("a SELECT needs at least one field")
        if self.fill is not None and self.group_by_time is None:
            raise ValueError("fill() needs GROUP BY time()")

    def render(self) -> str:
        src = f"({self.source.render()})" if isinstance(self.source, Select) else ident(self.source)
        parts = [f"SELECT {', '.join(f.render() for f in self.fields)} FROM {src}"]
        conds = (["$timeFilter"] if self.time_filter else []) + [c.text for c in self.where]
        if conds:
            parts.append("WHERE " + " AND ".join(conds))
        groups = [f"time({self.group_by_time})"] if self.group_by_time else []
        groups += [ident(t) for t in self.group_by_tags]
        if groups:
            parts.append("GROUP BY " + ", ".join(groups))
        if self.group_by_time:
            parts.append(f"fill({self.fill or 'null'})")
        if self.order_desc:
            parts.append("ORDER BY time DESC")
        if self.limit is not None:
            parts.append(f"LIMIT {self.limit}")
        if self.tz:
            parts.append(f"tz({string(self.tz)})")
        return " ".join(parts)


@dataclass(frozen=True)
class ShowTagValues:
    """``SHOW TAG VALUES FROM "m" WITH KEY = "k" [WHERE ...]``: a template variable's query."""

    measurement: str
    key: str
    where: Sequence[Condition] = ()

    def render(self) -> str:
        q = f"SHOW TAG VALUES FROM {ident(self.measurement)} WITH KEY = {ident(self.key)}"
        if self.where:
            q += " WHERE " + " AND ".join(c.text for c in self.where)
        return q
