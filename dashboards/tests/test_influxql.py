"""The InfluxQL builder quotes what it must and leaves Grafana's macros alone."""

from __future__ import annotations

import pytest
from fieldline_dashboards.influxql import (
    Select,
    ShowTagValues,
    agg,
    col,
    field_compare,
    ident,
    raw,
    string,
    tag_equals,
    tag_matches,
    time_since,
)


def test_identifiers_and_strings_are_quoted_and_escaped() -> None:
    assert ident('a"b') == '"a\\"b"'
    assert ident("a\\b") == '"a\\\\b"'
    assert string("it's") == "'it\\'s'"


def test_select_with_everything() -> None:
    q = Select(
        "reading_window",
        [agg("mean", "mean"), agg("max", "max", "peak"), col("unit")],
        where=[
            tag_matches("site", "site"),
            tag_equals("sensor", "t'1"),
            field_compare("count", ">", 0),
        ],
        group_by_time="$__interval",
        group_by_tags=["device"],
        fill="previous",
        order_desc=True,
        limit=10,
        tz="Europe/Berlin",
    )
    assert q.render() == (
        'SELECT mean("mean") AS "mean", max("max") AS "peak", "unit" FROM "reading_window" '
        'WHERE $timeFilter AND "site" =~ /^$site$/ AND "sensor" = \'t\\\'1\' AND "count" > 0 '
        'GROUP BY time($__interval), "device" fill(previous) ORDER BY time DESC LIMIT 10 '
        "tz('Europe/Berlin')"
    )


def test_subquery_and_math() -> None:
    inner = Select("device_status", [agg("last", "online")], group_by_tags=["device"])
    outer = Select(inner, [raw('count("online") - sum("online")', "offline")], time_filter=False)
    assert outer.render() == (
        'SELECT count("online") - sum("online") AS "offline" FROM (SELECT last("online") AS '
        '"online" FROM "device_status" WHERE $timeFilter GROUP BY "device")'
    )
    rate = agg("sum", "count", "per_s").over("$__interval_ms * 1000")
    assert rate.render() == 'sum("count") / $__interval_ms * 1000 AS "per_s"'


def test_fixed_look_back_replaces_the_time_filter() -> None:
    q = Select("m", [agg("sum", "count")], where=[time_since("$silent_after")], time_filter=False)
    assert (
        q.render() == 'SELECT sum("count") AS "count" FROM "m" WHERE time > now() - $silent_after'
    )


def test_show_tag_values_narrowed_by_other_variables() -> None:
    q = ShowTagValues("reading_window", "device", [tag_matches("site", "site")])
    assert q.render() == (
        'SHOW TAG VALUES FROM "reading_window" WITH KEY = "device" WHERE "site" =~ /^$site$/'
    )


def test_nonsense_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        Select("m", [])
    with pytest.raises(ValueError, match="GROUP BY time"):
        Select("m", [agg("mean", "x")], fill="0")
