"""Anomalies: every anomaly the detectors flagged, per detector, with scores."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as cm

from fieldline_dashboards.common import base_dashboard, query, tag_variable
from fieldline_dashboards.influxql import Select, agg, col, tag_matches
from fieldline_dashboards.targets import DATASOURCE, InfluxQL

UID = "fieldline-anomalies"

_FILTER = [tag_matches("site", "site"), tag_matches("detector", "detector")]


def anomaly_rows() -> Select:
    return Select(
        "anomaly",
        [
            col("site"),
            col("device"),
            col("sensor"),
            col("detector"),
            col("value"),
            col("expected"),
            col("score"),
        ],
        where=_FILTER,
        order_desc=True,
        limit=500,
    )


def anomalies_per_detector() -> Select:
    return Select(
        "anomaly",
        [agg("count", "score", "anomalies")],
        where=_FILTER,
        group_by_time="$__interval",
        group_by_tags=["detector"],
        fill="0",
    )


def scores() -> Select:
    return Select("anomaly", [col("score")], where=_FILTER, group_by_tags=["detector"])


def totals_per_detector() -> Select:
    return Select("anomaly", [agg("count", "score", "anomalies")], where=_FILTER,
                  group_by_tags=["detector"])  # fmt: skip


def build() -> db.Dashboard:
    d = base_dashboard(
        UID,
        "Fieldline · Anomalies",
        "Anomalies flagged by the pipeline's detectors: how many per detector over time, "
        "their scores, and every anomaly with its value and the expected value.",
    )
    d = d.with_variable(tag_variable("site", "anomaly", "site", label="Site"))
    d = d.with_variable(
        tag_variable("detector", "anomaly", "detector", label="Detector", depends_on=("site",))
    )
    d = d.with_panel(
        stat.Panel()
        .title("Anomalies by detector")
        .datasource(DATASOURCE)
        .with_target(query(totals_per_detector()).alias("$tag_detector"))
        .reduce_options(cb.ReduceDataOptions().calcs(["sum"]).values(False))
        .color_mode(cm.BigValueColorMode.VALUE)
        .height(5)
        .span(24)
    )
    d = d.with_panel(
        timeseries.Panel()
        .title("Anomalies per detector over time")
        .datasource(DATASOURCE)
        .interval("10s")
        .with_target(query(anomalies_per_detector()).alias("$tag_detector"))
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(60)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        timeseries.Panel()
        .title("Anomaly scores")
        .description("Each anomaly's score, per detector.")
        .datasource(DATASOURCE)
        .with_target(query(scores()).alias("$tag_detector"))
        .draw_style(cm.GraphDrawStyle.POINTS)
        .point_size(6)
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        table.Panel()
        .title("Anomalies (newest first)")
        .datasource(DATASOURCE)
        .with_target(InfluxQL(anomaly_rows()).table())
        .sort_by([cb.TableSortByFieldState().display_name("Time").desc(True)])
        .height(12)
        .span(24)
    )
    return d
