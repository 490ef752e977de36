"""InfluxQL queries as foundation-SDK data queries (the SDK has no InfluxDB type).

:class:`InfluxQLQuery` is the JSON Grafana's InfluxDB data source stores for a
raw InfluxQL query; :func:`register` makes the SDK's ``from_json`` decode
panels of type ``influxdb`` into it, so generated dashboards round-trip
through the SDK's models.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models.dashboard import AnnotationTarget, DataSourceRef

from fieldline_dashboards.influxql import Select, ShowTagValues

__all__ = [
    "DATASOURCE",
    "InfluxAnnotation",
    "InfluxAnnotationTarget",
    "InfluxQL",
    "InfluxQLQuery",
    "register",
]

#: Every panel uses the data source picked in the dashboard's ``datasource``
#: variable (the InfluxDB 1.x or 2.x one provisioned, or one of your own).
DATASOURCE = DataSourceRef(type_val="influxdb", uid="${datasource}")

ResultFormat = Literal["time_series", "table"]


class InfluxQLQuery(cogvariants.Dataquery):
    """A raw InfluxQL target (``rawQuery: true``) of Grafana's InfluxDB data source."""

    def __init__(
        self,
        ref_id: str = "A",
        query: str = "",
        result_format: ResultFormat = "time_series",
        alias: str | None = None,
        datasource: DataSourceRef | None = None,
        hide: bool | None = None,
    ) -> None:
        self.ref_id = ref_id
        self.query = query
        self.result_format = result_format
        self.alias = alias
        self.datasource = datasource
        self.hide = hide

    def to_json(self) -> dict[str, object]:
        payload: dict[str, object] = {
            "refId": self.ref_id,
            "query": self.query,
            "rawQuery": True,
            "resultFormat": self.result_format,
        }
        if self.alias is not None:
            payload["alias"] = self.alias
        if self.datasource is not None:
            payload["datasource"] = self.datasource
        if self.hide is not None:
            payload["hide"] = self.hide
        return payload

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        if data.get("rawQuery") is not True or not isinstance(data.get("query"), str):
            raise ValueError(f"not a raw InfluxQL target: {data!r}")
        fmt = data.get("resultFormat", "time_series")
        if fmt not in ("time_series", "table"):
            raise ValueError(f"unknown resultFormat {fmt!r}")
        ds = data.get("datasource")
        return cls(
            ref_id=data.get("refId", "A"),
            query=data["query"],
            result_format=fmt,
            alias=data.get("alias"),
            datasource=DataSourceRef.from_json(ds) if ds is not None else None,
            hide=data.get("hide"),
        )


class InfluxQL(Builder[InfluxQLQuery]):
    """Builder of an :class:`InfluxQLQuery` in the SDK's style."""

    def __init__(self, query: Select | ShowTagValues | str) -> None:
        text = query if isinstance(query, str) else query.render()
        self._internal = InfluxQLQuery(query=text, datasource=DATASOURCE)

    def build(self) -> InfluxQLQuery:
        return self._internal

    def ref_id(self, ref_id: str) -> Self:
        self._internal.ref_id = ref_id
        return self

    def table(self) -> Self:
        """Rows with one column per field and tag (tables, annotations)."""
        self._internal.result_format = "table"
        return self

    def alias(self, alias: str) -> Self:
        """Series name pattern, e.g. ``$tag_device $col``."""
        self._internal.alias = alias
        return self


class InfluxAnnotationTarget(AnnotationTarget):
    """An InfluxDB annotation's target: the query, and the columns that give each
    event its text and tags. (The SDK models only the built-in Grafana
    annotation's target, so this one writes its own JSON.)"""

    def __init__(self, query: InfluxQLQuery, text_column: str, tags_column: str) -> None:
        super().__init__()
        self.query = query
        self.text_column = text_column
        self.tags_column = tags_column

    def to_json(self) -> dict[str, object]:
        return {
            **self.query.to_json(),
            "textColumn": self.text_column,
            "tagsColumn": self.tags_column,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        return cls(
            InfluxQLQuery.from_json(data), data.get("textColumn", ""), data.get("tagsColumn", "")
        )


class InfluxAnnotation(Builder[AnnotationTarget]):
    """Builder of an :class:`InfluxAnnotationTarget` (rows of a table query)."""

    def __init__(self, query: Select, *, text_column: str, tags_column: str = "") -> None:
        self._internal = InfluxAnnotationTarget(
            InfluxQLQuery(ref_id="Anno", query=query.render(), result_format="table"),
            text_column,
            tags_column,
        )

    def build(self) -> InfluxAnnotationTarget:
        return self._internal


def register() -> None:
    """Decode ``influxdb`` targets into :class:`InfluxQLQuery` in the SDK's ``from_json``."""
    cogruntime.register_dataquery_variant(
        cogruntime.DataqueryConfig(identifier="influxdb", from_json_hook=InfluxQLQuery.from_json)
    )
