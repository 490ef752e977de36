"""Pipeline health: throughput, lag, late readings, dead letters, sink and MQTT state."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import statetimeline, timeseries
from grafana_foundation_sdk.models import common as cm

from fieldline_dashboards.common import base_dashboard, mapping, query, tag_variable, thresholds
from fieldline_dashboards.influxql import Expr, Select, agg, raw, tag_matches
from fieldline_dashboards.targets import DATASOURCE

UID = "fieldline-pipeline"

_INSTANCE = [tag_matches("instance", "instance")]


def _per_instance(
    fields: list[Expr], measurement: str = "pipeline", tags: tuple[str, ...] = ()
) -> Select:
    return Select(
        measurement,
        fields,
        where=_INSTANCE,
        group_by_time="$__interval",
        group_by_tags=["instance", *tags],
    )


def _rate(counter: str, alias: str) -> Expr:
    # Counters are cumulative per process (and restart at 0): a rate per
    # instance, never negative across a restart.
    return raw(f'non_negative_derivative(max("{counter}"), 1s)', alias)


def _increase(counter: str, alias: str) -> Expr:
    return raw(f'non_negative_difference(max("{counter}"))', alias)


def throughput() -> Select:
    return _per_instance(
        [_rate("readings", "readings/s"), _rate("messages", "messages/s"),
         _rate("windows", "windows/s")]
    )  # fmt: skip


def lag() -> Select:
    return _per_instance([agg("max", "lag_ms", "lag")])


def late_readings() -> Select:
    return _per_instance([_increase("late_readings", "late readings"),
                          _increase("duplicates", "duplicates")])  # fmt: skip


def dead_letters() -> Select:
    return _per_instance([_increase("count", "dead letters")], "dead_letters", ("reason",))


def sink_errors() -> Select:
    return _per_instance([_increase("sink_errors", "write errors"),
                          _increase("sink_retries", "write retries")])  # fmt: skip


def mqtt_state() -> Select:
    return Select(
        "pipeline",
        [agg("last", "mqtt_connected", "connected")],
        where=_INSTANCE,
        group_by_time="$__interval",
        group_by_tags=["instance"],
        fill="previous",
    )


def build() -> db.Dashboard:
    d = base_dashboard(
        UID,
        "Fieldline · Pipeline health",
        "The stream processor: throughput, end-to-end lag, late and duplicate readings, "
        "dead letters by reason, InfluxDB write errors and retries, MQTT connection state.",
    )
    d = d.with_variable(tag_variable("instance", "pipeline", "instance", label="Instance"))

    def ts(title: str, q: Select, alias: str, unit: str, description: str) -> timeseries.Panel:
        return (
            timeseries.Panel()
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .interval("10s")
            .with_target(query(q).alias(alias))
            .unit(unit)
            .span_nulls(True)
            .height(8)
            .span(12)
        )

    d = d.with_panel(
        ts("Throughput", throughput(), "$tag_instance $col", "reqps",
           "Readings, messages and closed windows per second, per pipeline process.")
    )  # fmt: skip
    d = d.with_panel(
        ts("End-to-end lag", lag(), "$tag_instance", "ms",
           "How far the newest reading processed is behind the wall clock: device clock to "
           "pipeline, including the MQTT hop and the ingest log.")
        .thresholds(thresholds((None, "green"), (10_000, "orange"), (30_000, "red")))
        .thresholds_style(cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE))
    )  # fmt: skip
    d = d.with_panel(
        ts("Late and duplicate readings", late_readings(), "$tag_instance $col", "short",
           "Readings that came after their window closed (late) and redelivered ones "
           "(duplicates, dropped by sequence number), per interval.")
    )  # fmt: skip
    d = d.with_panel(
        ts("Dead letters by reason", dead_letters(), "$tag_reason ($tag_instance)", "short",
           "Messages that failed decoding or validation, per interval, by reason: "
           "they are on the MQTT dead-letter topics.")
        .draw_style(cm.GraphDrawStyle.BARS)
        .fill_opacity(60)
    )  # fmt: skip
    d = d.with_panel(
        ts("InfluxDB write errors and retries", sink_errors(), "$tag_instance $col", "short",
           "Retries of transient write failures and chunks given up on, per interval.")
    )  # fmt: skip
    d = d.with_panel(
        statetimeline.Panel()
        .title("MQTT connection")
        .description("Whether each pipeline process's intake is connected and subscribed.")
        .datasource(DATASOURCE)
        .interval("10s")
        .with_target(query(mqtt_state()).alias("$tag_instance"))
        .mappings(mapping({"1": ("connected", "green"), "0": ("disconnected", "red")}))
        .height(8)
        .span(12)
    )
    return d
