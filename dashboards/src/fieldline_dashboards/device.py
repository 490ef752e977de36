"""Device detail: one device's sensors, spread, anomalies and status history."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statetimeline, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from fieldline_dashboards.common import base_dashboard, mapping, query, tag_variable
from fieldline_dashboards.influxql import Select, agg, col, tag_matches
from fieldline_dashboards.targets import DATASOURCE, InfluxAnnotation, InfluxQL

UID = "fieldline-device"

_DEVICE = [tag_matches("site", "site"), tag_matches("device", "device")]
_SENSOR = [*_DEVICE, tag_matches("sensor", "sensor")]


def window_band() -> Select:
    return Select(
        "reading_window",
        [agg("mean", "mean", "mean"), agg("min", "min", "min"), agg("max", "max", "max")],
        where=_SENSOR,
        group_by_time="$__interval",
        group_by_tags=["sensor", "unit"],
    )


def window_stddev() -> Select:
    return Select(
        "reading_window",
        [agg("mean", "stddev", "stddev")],
        where=_SENSOR,
        group_by_time="$__interval",
        group_by_tags=["sensor"],
    )


def status_history() -> Select:
    return Select("device_status", [col("state", "status")], where=_DEVICE)


def anomaly_events() -> Select:
    """Anomalies of the device as rows (annotations and the table)."""
    return Select(
        "anomaly",
        [col("sensor"), col("detector"), col("value"), col("expected"), col("score")],
        where=_SENSOR,
    )


def _anomaly_annotation() -> db.AnnotationQuery:
    return (
        db.AnnotationQuery()
        .name("Anomalies")
        .datasource(DATASOURCE)
        .enable(True)
        .icon_color("red")
        .target(InfluxAnnotation(anomaly_events(), text_column="detector", tags_column="sensor"))
    )


def build() -> db.Dashboard:
    d = base_dashboard(
        UID,
        "Fieldline · Device detail",
        "One device: each sensor's window mean with its min/max band, the spread within "
        "windows, anomalies (as annotations and a table) and the status history.",
    )
    d = d.with_variable(tag_variable("site", "reading_window", "site", label="Site", multi=False))
    d = d.with_variable(
        tag_variable(
            "device", "reading_window", "device", label="Device", multi=False, depends_on=("site",)
        )
    )
    d = d.with_variable(
        tag_variable(
            "sensor", "reading_window", "sensor", label="Sensor", depends_on=("site", "device")
        )
    )
    d = d.annotation(_anomaly_annotation())
    d = d.with_panel(
        timeseries.Panel()
        .title("$sensor: window mean, min and max")
        .description("The band is each window's minimum to maximum; the line its mean.")
        .datasource(DATASOURCE)
        .repeat("sensor")
        .repeat_direction("h")
        .max_per_row(2)
        .with_target(query(window_band()).alias("$tag_sensor $col"))
        .override_by_regexp(
            ".* max$",
            [
                dm.DynamicConfigValue(id_val="custom.fillBelowTo", value="$sensor min"),
                dm.DynamicConfigValue(id_val="custom.lineWidth", value=0),
                dm.DynamicConfigValue(id_val="custom.fillOpacity", value=20),
            ],
        )
        .override_by_regexp(".* min$", [dm.DynamicConfigValue(id_val="custom.lineWidth", value=0)])
        .span_nulls(True)
        .height(9)
        .span(12)
    )
    d = d.with_panel(
        timeseries.Panel()
        .title("Spread within windows (stddev)")
        .datasource(DATASOURCE)
        .with_target(query(window_stddev()).alias("$tag_sensor"))
        .span_nulls(True)
        .height(8)
        .span(12)
    )
    d = d.with_panel(
        statetimeline.Panel()
        .title("Status history")
        .description("What the device's agent said: online, or offline (clean stop or last will).")
        .datasource(DATASOURCE)
        .with_target(query(status_history()).alias("status"))
        .mappings(mapping({"online": ("online", "green"), "offline": ("offline", "red")}))
        .show_value(cm.VisibilityMode.AUTO)
        .height(6)
        .span(24)
    )
    d = d.with_panel(
        table.Panel()
        .title("Anomalies")
        .datasource(DATASOURCE)
        .with_target(InfluxQL(anomaly_events()).table())
        .height(8)
        .span(24)
    )
    return d
