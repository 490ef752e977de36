"""Grafana alert rules: device offline, anomaly rate, pipeline lag.

Built with the SDK's alerting builders (the HTTP API's model) and written in
Grafana's file-provisioning format (``apiVersion: 1``, ``groups``), which names
the folder and group on the group rather than on each rule.

Each rule is: an InfluxQL query (A) over a relative time range, a reduce
expression (B) to one number per series, and a threshold (C) on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from grafana_foundation_sdk.builders import alerting as ab
from grafana_foundation_sdk.builders import expr as eb
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import alerting as am
from grafana_foundation_sdk.models.dashboard import DataSourceRef

from fieldline_dashboards.influxql import Select, agg
from fieldline_dashboards.targets import InfluxQL

__all__ = ["ALERT_DATASOURCE_UID", "FOLDER", "GROUP", "RULES", "AlertRule", "provisioning"]

#: The data source the rules query: the InfluxDB 2.x one that deploy/ provisions.
ALERT_DATASOURCE_UID = "fieldline-influxdb-v2"
FOLDER = "Fieldline"
GROUP = "fieldline"
INTERVAL = "1m"

_EXPR = DataSourceRef(type_val="__expr__", uid="__expr__")

Op = Literal["gt", "lt"]
Reducer = Literal["sum", "mean", "min", "max", "count", "last", "median"]
NoData = Literal["Alerting", "NoData", "OK"]


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    query: Select
    range_s: int
    reducer: Reducer
    op: Op
    threshold: float
    for_: str
    no_data: NoData
    summary: str
    description: str
    severity: str = "warning"

    def builder(self, datasource_uid: str = ALERT_DATASOURCE_UID) -> ab.Rule:
        model = InfluxQL(self.query).ref_id("A")
        model.build().datasource = DataSourceRef(type_val="influxdb", uid=datasource_uid)
        return (
            ab.Rule(self.title)
            .uid(self.uid)
            .with_query(
                ab.Query("A")
                .datasource_uid(datasource_uid)
                .relative_time_range(am.RelativeTimeRange(from_val=self.range_s, to=0))
                .model(model)
            )
            .with_query(
                ab.Query("B")
                .datasource_uid("__expr__")
                .model(
                    eb.TypeReduce()
                    .ref_id("B")
                    .datasource(_EXPR)
                    .expression("A")
                    .reducer(self.reducer)
                )
            )
            .with_query(
                ab.Query("C")
                .datasource_uid("__expr__")
                .model(
                    eb.TypeThreshold()
                    .ref_id("C")
                    .datasource(_EXPR)
                    .expression("B")
                    .conditions(
                        [
                            eb.ExprTypeThresholdConditions().evaluator(
                                eb.ExprTypeThresholdConditionsEvaluator()
                                .type(self.op)
                                .params([self.threshold])
                            )
                        ]
                    )
                )
            )
            .condition("C")
            .for_val(self.for_)
            .no_data_state(self.no_data)
            .exec_err_state("Error")
            .labels({"severity": self.severity, "team": "fieldline"})
            .annotations({"summary": self.summary, "description": self.description})
            .rule_group(GROUP)
            .org_id(1)
        )


RULES: tuple[AlertRule, ...] = (
    AlertRule(
        uid="fieldline-device-offline",
        title="Device offline",
        query=Select(
            "device_status", [agg("last", "online", "online")], group_by_tags=["site", "device"]
        ),
        range_s=3600,
        reducer="last",
        op="lt",
        threshold=1,
        for_="2m",
        no_data="OK",
        summary="{{ $labels.site }}/{{ $labels.device }} is offline",
        description="The device's last status message says offline (its agent stopped, "
        "or the broker published its last will).",
    ),
    AlertRule(
        uid="fieldline-anomaly-rate",
        title="Anomaly rate",
        query=Select("anomaly", [agg("count", "score", "anomalies")], group_by_tags=["site"]),
        range_s=600,
        reducer="sum",
        op="gt",
        threshold=20,
        for_="0s",
        no_data="OK",
        summary="More than 20 anomalies in 10 minutes at site {{ $labels.site }}",
        description="The detectors flag many readings of this site: a fault in the field, "
        "or a detector that needs tuning (see the Anomalies dashboard).",
    ),
    AlertRule(
        uid="fieldline-pipeline-lag",
        title="Pipeline lag",
        query=Select("pipeline", [agg("max", "lag_ms", "lag_ms")], group_by_tags=["instance"]),
        range_s=300,
        reducer="max",
        op="gt",
        threshold=30_000,
        for_="5m",
        # No metrics at all means no pipeline running: that is an alert too.
        no_data="Alerting",
        summary="Pipeline {{ $labels.instance }} is more than 30 s behind",
        description="The newest reading processed is more than 30 s older than the wall "
        "clock: the pipeline cannot keep up, InfluxDB writes are being retried, or no "
        "device is sending (see the Pipeline health dashboard).",
        severity="critical",
    ),
)


def provisioning(datasource_uid: str = ALERT_DATASOURCE_UID) -> dict[str, Any]:
    """The alert rules file (``provisioning/alerting/*.yaml``) as a dict."""
    rules = []
    for rule in RULES:
        data = json.loads(json.dumps(rule.builder(datasource_uid).build(), cls=JSONEncoder))
        # The file format puts folder, group and org on the group.
        for key in ("folderUID", "ruleGroup", "orgID"):
            data.pop(key, None)
        data["isPaused"] = False
        rules.append(data)
    return {
        "apiVersion": 1,
        "groups": [
            {"orgId": 1, "name": GROUP, "folder": FOLDER, "interval": INTERVAL, "rules": rules}
        ],
    }
