"""Variables are substituted the way Grafana's InfluxDB data source does."""

from __future__ import annotations

import pytest
from fieldline_dashboards.build import dashboard_json
from fieldline_dashboards.templating import (
    ALL,
    DashboardQuery,
    TimeRange,
    dashboard_queries,
    duration_ms,
    interpolate,
    variables,
)

MODELS = {"site": {"multi": True, "includeAll": True, "allValue": ".*"}, "device": {}}


def q(text: str, **kw: str) -> DashboardQuery:
    return DashboardQuery("panel", "p", "A", text, "time_series", **kw)


def test_regex_context_escapes_and_joins_values() -> None:
    query = q('SELECT x FROM m WHERE "site" =~ /^$site$/ AND "device" = \'$device\'')
    out = interpolate(query, {"site": ["a.b", "c/d"], "device": "d.1"}, MODELS)
    assert '"site" =~ /^(a\\.b|c\\/d)$/' in out
    assert "\"device\" = 'd.1'" in out  # not in a regex: the value as it is
    assert "=~ /^x$/" in interpolate(
        q('SELECT x FROM m WHERE "site" =~ /^$site$/'), {"site": ["x"]}, MODELS
    )


def test_all_uses_the_custom_all_value() -> None:
    out = interpolate(q('SELECT x FROM m WHERE "site" =~ /^${site}$/'), {"site": ALL}, MODELS)
    assert out.endswith('"site" =~ /^.*$/')
    with pytest.raises(KeyError, match="no custom All"):
        interpolate(q("SELECT x FROM m WHERE d =~ /^$device$/"), {"device": ALL}, MODELS)


def test_time_filter_and_intervals() -> None:
    text = "SELECT sum(x) / $__interval_ms FROM m WHERE $timeFilter GROUP BY time($__interval)"
    rel = interpolate(q(text), {}, {}, TimeRange(last="6h"), "30s")
    assert rel == "SELECT sum(x) / 30000 FROM m WHERE time >= now() - 6h GROUP BY time(30s)"
    absolute = interpolate(q(text), {}, {}, TimeRange(from_ms=1000, to_ms=2000), "30s")
    assert "time >= 1000ms and time <= 2000ms" in absolute
    # The panel's minimum interval wins over a smaller one; its relative time over the range.
    panel = q(text, min_interval="1m", time_from="1h")
    assert interpolate(panel, {}, {}, TimeRange(last="6h"), "30s") == (
        "SELECT sum(x) / 60000 FROM m WHERE time >= now() - 1h GROUP BY time(1m)"
    )


def test_missing_values_are_named() -> None:
    with pytest.raises(KeyError, match=r"\$site"):
        interpolate(q('SELECT x FROM m WHERE "site" =~ /^$site$/'), {}, MODELS)
    with pytest.raises(ValueError, match="not a duration"):
        duration_ms("10 seconds")


def test_every_dashboard_query_is_found() -> None:
    dash = dashboard_json("device-detail")
    found = dashboard_queries(dash)
    kinds = {x.kind for x in found}
    assert kinds == {"panel", "annotation", "variable"}
    assert [x.title for x in found if x.kind == "variable"] == ["site", "device", "sensor"]
    assert set(variables(dash)) == {"datasource", "site", "device", "sensor"}
    # Every query can be sent once its variables have values.
    values = {"site": "s", "device": "d", "sensor": ["t", "h"]}
    for x in found:
        assert "$" not in interpolate(x, values, variables(dash)).replace("$/", "/")
