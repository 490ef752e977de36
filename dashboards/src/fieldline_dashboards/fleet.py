"""Fleet overview: is the fleet up, how much does it send, what did it see."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import stat, table, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

from fieldline_dashboards.common import (
    base_dashboard,
    last_value,
    query,
    tag_variable,
    thresholds,
)
from fieldline_dashboards.influxql import Select, agg, raw, tag_matches, time_since
from fieldline_dashboards.targets import DATASOURCE, InfluxQL

UID = "fieldline-fleet"

_SITE = tag_matches("site", "site")


def _last_status() -> Select:
    """Each device's last status in the range (subquery: one row per device)."""
    return Select(
        "device_status",
        [agg("last", "online", "online")],
        where=[_SITE],
        group_by_tags=["site", "device"],
    )


def devices_online() -> Select:
    return Select(_last_status(), [agg("sum", "online", "online")], time_filter=False)


def devices_offline() -> Select:
    return Select(
        _last_status(),
        [raw('count("online") - sum("online")', "offline")],
        time_filter=False,
    )


def readings_per_second() -> Select:
    # Windows are stamped with their start: the readings of the windows that
    # started in a bucket, per second of the bucket.
    return Select(
        "reading_window",
        [agg("sum", "count", "readings/s").over("$__interval_ms * 1000")],
        where=[_SITE],
        group_by_time="$__interval",
        group_by_tags=["site"],
        fill="0",
    )


def latest_values() -> Select:
    return Select(
        "reading_window",
        [agg("last", "last", "value"), agg("last", "mean", "window mean")],
        where=[_SITE],
        group_by_tags=["site", "device", "sensor", "unit"],
    )


def anomalies_last_hour() -> Select:
    return Select("anomaly", [agg("count", "score", "anomalies")], where=[_SITE])


def last_seen() -> Select:
    return Select(
        "reading_window",
        [agg("last", "count", "last window readings")],
        where=[_SITE],
        group_by_tags=["site", "device"],
    )


def seen_recently() -> Select:
    return Select(
        "reading_window",
        [agg("sum", "count", "recent readings")],
        where=[_SITE, time_since("$silent_after")],
        time_filter=False,
        group_by_tags=["site", "device"],
    )


def build() -> db.Dashboard:
    d = base_dashboard(
        UID,
        "Fieldline · Fleet overview",
        "Devices online and offline, readings per second, the latest values per site, "
        "anomalies of the last hour and devices that went silent.",
    )
    d = d.with_variable(tag_variable("site", "reading_window", "site", label="Site"))
    d = d.with_variable(
        db.TextBoxVariable("silent_after")
        .label("Silent after")
        .default_value("5m")
        .description("A device with no readings for this long is listed as silent.")
    )
    d = d.with_panel(
        stat.Panel()
        .title("Devices online")
        .description("Devices whose last status message in the range says online.")
        .datasource(DATASOURCE)
        .with_target(query(devices_online()))
        .reduce_options(last_value())
        .color_mode(cm.BigValueColorMode.VALUE)
        .thresholds(thresholds((None, "green")))
        .no_value("0")
        .height(5)
        .span(4)
    )
    d = d.with_panel(
        stat.Panel()
        .title("Devices offline")
        .description(
            "Devices whose last status message in the range says offline "
            "(an agent's last will, or a clean shutdown)."
        )
        .datasource(DATASOURCE)
        .with_target(query(devices_offline()))
        .reduce_options(last_value())
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .thresholds(thresholds((None, "green"), (1, "red")))
        .no_value("0")
        .height(5)
        .span(4)
    )
    d = d.with_panel(
        stat.Panel()
        .title("Anomalies in the last hour")
        .datasource(DATASOURCE)
        .time_from("1h")
        .with_target(query(anomalies_last_hour()))
        .reduce_options(last_value())
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .thresholds(thresholds((None, "green"), (1, "orange"), (20, "red")))
        .no_value("0")
        .height(5)
        .span(4)
    )
    d = d.with_panel(
        stat.Panel()
        .title("Readings/s")
        .description("Readings per second over the whole fleet (from the closed windows).")
        .datasource(DATASOURCE)
        .interval("10s")
        .with_target(query(readings_per_second()))
        .reduce_options(cb.ReduceDataOptions().calcs(["mean"]).values(False))
        .unit("reqps")
        .graph_mode(cm.BigValueGraphMode.AREA)
        .height(5)
        .span(12)
    )
    d = d.with_panel(
        timeseries.Panel()
        .title("Readings/s by site")
        .datasource(DATASOURCE)
        .interval("10s")
        .with_target(query(readings_per_second()).alias("$tag_site"))
        .unit("reqps")
        .fill_opacity(20)
        .stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
        .height(8)
        .span(24)
    )
    d = d.with_panel(
        table.Panel()
        .title("Latest values")
        .description("The last reading and window mean of every sensor, per site and device.")
        .datasource(DATASOURCE)
        .with_target(InfluxQL(latest_values()).table())
        .with_transformation(_organize({"Time": True}, {"Time": 0}))
        .height(10)
        .span(14)
    )
    d = d.with_panel(
        table.Panel()
        .title("Silent devices")
        .description(
            "Devices seen in the range with no readings in the last $silent_after: "
            "the two queries are joined by device and the rows with recent readings dropped."
        )
        .datasource(DATASOURCE)
        .with_target(InfluxQL(last_seen()).table().ref_id("A"))
        .with_target(InfluxQL(seen_recently()).table().ref_id("B"))
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="joinByField", options={"byField": "device", "mode": "outer"}
            )
        )
        .with_transformation(
            dm.DataTransformerConfig(
                id_val="filterByValue",
                options={
                    "type": "include",
                    "match": "all",
                    "filters": [
                        {"fieldName": "recent readings", "config": {"id": "isNull", "options": {}}}
                    ],
                },
            )
        )
        .with_transformation(
            _organize(
                {"Time 2": True, "site 2": True, "recent readings": True},
                {},
                {"Time 1": "last seen", "site 1": "site"},
            )
        )
        .override_by_name(
            "last seen", [dm.DynamicConfigValue(id_val="unit", value="dateTimeFromNow")]
        )
        .no_value("No silent devices")
        .height(10)
        .span(10)
    )
    return d


def _organize(
    hide: dict[str, bool], order: dict[str, int], rename: dict[str, str] | None = None
) -> dm.DataTransformerConfig:
    return dm.DataTransformerConfig(
        id_val="organize",
        options={"excludeByName": hide, "indexByName": order, "renameByName": rename or {}},
    )
