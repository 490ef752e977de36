"""Run every query of the dashboards and alert rules against a real InfluxDB.

What Grafana would do, without Grafana: resolve the template variables by
running their queries (site, then the devices of those sites, ...), substitute
them into each panel's query (see :mod:`fieldline_dashboards.templating`), run
it over InfluxDB's HTTP API (``POST /query``, InfluxQL) and check that it
answers without error, with rows, and with the columns and tags the panel
shows. ``fieldline dashboards check`` and the tests use it.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fieldline_dashboards import alerts
from fieldline_dashboards.build import BUILDERS, dashboard_json
from fieldline_dashboards.templating import (
    ALL,
    LAST_HOUR,
    DashboardQuery,
    TimeRange,
    dashboard_queries,
    interpolate,
    variables,
)

__all__ = [
    "Check",
    "InfluxQuery",
    "alert_checks",
    "check_all",
    "expected_columns",
    "grouped_tags",
    "http_query",
]

#: Runs one InfluxQL statement and returns InfluxDB's JSON answer.
InfluxQuery = Callable[[str], Mapping[str, Any]]


@dataclass
class Check:
    """The outcome of one query."""

    dashboard: str
    query: DashboardQuery
    sent: str = ""
    error: str | None = None
    rows: int = 0
    columns: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        state = "ok" if self.ok else f"FAILED: {self.error}"
        return f"{self.dashboard}: {self.query}: {self.rows} rows, {state}\n    {self.sent}"


def http_query(
    url: str, database: str, headers: Mapping[str, str] | None = None, timeout_s: float = 30.0
) -> InfluxQuery:
    """An :data:`InfluxQuery` over HTTP (InfluxDB 1.x, or 2.x/3.x with a DBRP mapping)."""

    def run(q: str) -> Mapping[str, Any]:
        body = urllib.parse.urlencode({"q": q, "db": database, "epoch": "ms"}).encode()
        req = urllib.request.Request(
            f"{url.rstrip('/')}/query",
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                answer: Mapping[str, Any] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300].decode(errors="replace")
            return {"error": f"HTTP {exc.code}: {text}"}
        return answer

    return run


def _split_top(text: str, sep: str) -> list[str]:
    """Split at ``sep`` outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            start = i + len(sep)
            i = start
            continue
        i += 1
    parts.append(text[start:])
    return parts


def expected_columns(query: str) -> list[str]:
    """The columns the outer SELECT names (aliases, raw fields, function names)."""
    if query.startswith("SHOW TAG VALUES"):
        return ["key", "value"]
    if not query.startswith("SELECT "):
        raise ValueError(f"not a SELECT: {query!r}")
    projection = _split_top(query[len("SELECT ") :], " FROM ")[0]
    cols = []
    for expr in _split_top(projection, ","):
        expr = expr.strip()
        m = re.search(r'\sAS\s+"((?:[^"\\]|\\.)*)"$', expr)
        if m:
            cols.append(m.group(1))
        elif re.fullmatch(r'"(?:[^"\\]|\\.)*"', expr):
            cols.append(expr[1:-1])
        else:
            cols.append(expr.split("(", 1)[0])
    return cols


def grouped_tags(query: str) -> list[str]:
    """The tags of the outer ``GROUP BY`` (each series carries them)."""
    outer = _split_top(query, " GROUP BY ")
    if len(outer) < 2:
        return []
    clause = re.split(r" fill\(| ORDER BY | LIMIT | tz\(", outer[-1])[0]
    return [g.strip()[1:-1] for g in clause.split(",") if g.strip().startswith('"')]


def _series(answer: Mapping[str, Any]) -> tuple[list[Mapping[str, Any]], str | None]:
    if "error" in answer:
        return [], str(answer["error"])
    results = answer.get("results", [])
    if not results:
        return [], "no result"
    if "error" in results[0]:
        return [], str(results[0]["error"])
    return list(results[0].get("series", [])), None


def _check(dashboard: str, q: DashboardQuery, sent: str, run: InfluxQuery) -> Check:
    c = Check(dashboard, q, sent)
    series, error = _series(run(sent))
    if error:
        c.error = f"InfluxDB error: {error}"
        return c
    expected = expected_columns(sent)
    tags = grouped_tags(sent)
    non_null = 0
    for s in series:
        c.columns = list(s.get("columns", []))
        c.rows += len(s.get("values") or [])
        missing = [col for col in expected if col not in c.columns]
        if missing:
            c.error = f"columns {missing} missing from {c.columns}"
            return c
        missing_tags = [t for t in tags if t not in (s.get("tags") or {})]
        if missing_tags:
            c.error = f"series without the tags {missing_tags} it is grouped by"
            return c
        idx = [c.columns.index(col) for col in expected]
        non_null += sum(1 for row in s.get("values") or [] if any(row[i] is not None for i in idx))
    if c.rows == 0:
        c.error = "empty: no rows"
    elif non_null == 0:
        c.error = f"every value of {expected} is null"
    return c


def _tag_values(answer: Mapping[str, Any]) -> list[str]:
    series, error = _series(answer)
    if error:
        raise RuntimeError(error)
    return sorted({row[1] for s in series for row in s.get("values") or []})


def check_all(
    run: InfluxQuery,
    time_range: TimeRange = LAST_HOUR,
    interval: str = "10s",
    overrides: Mapping[str, str | Sequence[str]] | None = None,
    use_all: bool = False,
) -> list[Check]:
    """Check every dashboard's queries and the alert rules' queries.

    Query variables take every value their query finds (one, the first, for
    single-value ones), or the "All" value with ``use_all``; text boxes their
    default; ``overrides`` wins over both.
    """
    checks: list[Check] = []
    for name in BUILDERS:
        dash = dashboard_json(name)
        models = variables(dash)
        values: dict[str, str | Sequence[str] | object] = {
            v["name"]: (overrides or {}).get(v["name"], v.get("query", ""))
            for v in models.values()
            if v.get("type") == "textbox"
        }
        for q in dashboard_queries(dash):
            try:
                sent = interpolate(q, values, models, time_range, interval)
            except (KeyError, ValueError) as exc:
                checks.append(Check(name, q, q.query, f"cannot substitute: {exc}"))
                continue
            c = _check(name, q, sent, run)
            checks.append(c)
            if q.kind == "variable":
                found = _tag_values(run(sent)) if c.ok else []
                model = models[q.title]
                if q.title in (overrides or {}):
                    chosen = (overrides or {})[q.title]
                    picked = [chosen] if isinstance(chosen, str) else list(chosen)
                    if c.ok and not set(picked) <= set(found):
                        c.error = f"{picked} are not all among the variable's values {found}"
                    values[q.title] = chosen
                elif use_all and model.get("includeAll"):
                    values[q.title] = ALL
                else:
                    values[q.title] = found if model.get("multi") else found[:1]
    checks += alert_checks(run)
    return checks


def alert_checks(run: InfluxQuery) -> list[Check]:
    """The alert rules' InfluxQL queries over each rule's own relative range."""
    out = []
    for rule in alerts.RULES:
        text = rule.query.render()
        q = DashboardQuery("panel", f"alert {rule.title}", "A", text, "time_series")
        sent = interpolate(q, {}, {}, TimeRange(last=f"{rule.range_s}s"))
        out.append(_check("alerts", q, sent, run))
    return out
