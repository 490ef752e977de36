"""What every Fieldline dashboard shares: variables, data source, panel defaults."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from fieldline_dashboards.influxql import Condition, Select, ShowTagValues, tag_matches
from fieldline_dashboards.targets import DATASOURCE, InfluxQL

__all__ = [
    "ALL",
    "TAGS",
    "base_dashboard",
    "datasource_variable",
    "last_value",
    "mapping",
    "query",
    "tag_variable",
    "thresholds",
]

#: Tags on every Fieldline dashboard (Grafana lists and links them by tag).
TAGS = ["fieldline"]

#: The value of "All": the regex ``/^.*$/`` matches every tag value, without
#: Grafana listing every value in the query.
ALL = ".*"


def datasource_variable() -> db.DatasourceVariable:
    """``$datasource``: any InfluxDB data source (1.x, or 2.x/3.x with InfluxQL)."""
    return (
        db.DatasourceVariable("datasource")
        .label("InfluxDB")
        .type("influxdb")
        .description("The InfluxDB that the Fieldline pipeline writes to (InfluxQL).")
    )


def tag_variable(
    name: str,
    measurement: str,
    key: str,
    *,
    label: str,
    multi: bool = True,
    depends_on: tuple[str, ...] = (),
) -> db.QueryVariable:
    """A variable listing the values of tag ``key`` of ``measurement``, narrowed
    by the variables in ``depends_on`` (chained: device values of the chosen site)."""
    where: list[Condition] = [tag_matches(v, v) for v in depends_on]
    query = ShowTagValues(measurement, key, where).render()
    v = (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(multi)
    )
    if multi:
        v = v.include_all(True).all_value(ALL)
    return v


def base_dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    """A dashboard with Fieldline's defaults: last hour, 10 s refresh, shared crosshair."""
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .time("now-1h", "now")
        .refresh("10s")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .with_variable(datasource_variable())
        .link(
            db.DashboardLink("Fieldline")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds; the first step's value is ``None`` (from -inf)."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def mapping(values: dict[str, tuple[str, str]]) -> list[dm.ValueMapping]:
    """Value mappings ``{value: (text, color)}``."""
    return [
        dm.ValueMap(
            options={
                k: dm.ValueMappingResult(text=text, color=color, index=i)
                for i, (k, (text, color)) in enumerate(values.items())
            }
        )
    ]


def last_value() -> cb.ReduceDataOptions:
    return cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False)


def query(q: Select, ref: str = "A") -> InfluxQL:
    """A time-series target."""
    return InfluxQL(q).ref_id(ref)
