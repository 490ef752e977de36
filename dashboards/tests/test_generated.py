"""The committed deploy/grafana files are current and valid Grafana models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from fieldline_dashboards.alerts import RULES
from fieldline_dashboards.build import BUILDERS, dashboard_json, render, stale_files, write
from fieldline_dashboards.targets import InfluxAnnotationTarget, InfluxQLQuery, register
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.alerting import Rule
from grafana_foundation_sdk.models.dashboard import Dashboard

REPO = Path(__file__).resolve().parents[2]
DEPLOYED = REPO / "deploy" / "grafana"


def test_committed_files_are_up_to_date(tmp_path: Path) -> None:
    write(tmp_path)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(p.relative_to(DEPLOYED) for p in DEPLOYED.rglob("*") if p.is_file())
    assert fresh == committed, "deploy/grafana has other files than a build makes"
    stale = stale_files(DEPLOYED)
    assert not stale, f"stale: {stale}; run `fieldline dashboards build` and commit"


def test_a_changed_file_is_found_stale(tmp_path: Path) -> None:
    write(tmp_path)
    victim = tmp_path / "dashboards" / "anomalies.json"
    victim.write_text(victim.read_text().replace("Anomalies", "Anomalien"))
    (tmp_path / "provisioning" / "alerting" / "fieldline.yaml").unlink()
    assert stale_files(tmp_path) == [
        "dashboards/anomalies.json",
        "provisioning/alerting/fieldline.yaml",
    ]


def _contained(small: Any, big: Any, path: str = "") -> list[str]:
    """Where ``small`` has something ``big`` lacks or differs (``big`` may add defaults)."""
    if isinstance(small, dict) and isinstance(big, dict):
        out = []
        for k, v in small.items():
            out += _contained(v, big[k], f"{path}/{k}") if k in big else [f"{path}/{k} dropped"]
        return out
    if isinstance(small, list) and isinstance(big, list) and len(small) == len(big):
        out = []
        for i, (a, b) in enumerate(zip(small, big)):
            out += _contained(a, b, f"{path}[{i}]")
        return out
    return [] if small == big else [f"{path}: {small!r} became {big!r}"]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_dashboard_round_trips_through_the_sdk_models(name: str) -> None:
    register_default_plugins()
    register()
    data = json.loads((DEPLOYED / "dashboards" / f"{name}.json").read_text())
    # The SDK models an annotation's target as the built-in Grafana one; ours
    # are InfluxDB queries, checked with their own model.
    annotation_targets = [a.pop("target") for a in data["annotations"].get("list", [])]
    for t in annotation_targets:
        assert InfluxAnnotationTarget.from_json(t).to_json() == {**t}
    model = Dashboard.from_json(data)
    again = json.loads(json.dumps(model, cls=JSONEncoder))
    assert _contained(data, again) == []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            assert isinstance(InfluxQLQuery.from_json(target), InfluxQLQuery)
            assert target["datasource"] == {"type": "influxdb", "uid": "${datasource}"}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_dashboard_basics(name: str) -> None:
    d = dashboard_json(name)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    assert d["uid"].startswith("fieldline-")
    assert len(d["uid"]) <= 40
    assert d["templating"]["list"][0]["type"] == "datasource"
    for p in d["panels"]:
        assert p["title"], p
        assert p["targets"], p
        g = p["gridPos"]
        assert g["x"] >= 0
        assert g["x"] + g["w"] <= 24


def test_alert_rules_file() -> None:
    text = (DEPLOYED / "provisioning" / "alerting" / "fieldline.yaml").read_text()
    doc = yaml.safe_load(text)
    assert doc["apiVersion"] == 1
    (group,) = doc["groups"]
    assert {"orgId", "name", "folder", "interval", "rules"} <= set(group)
    assert [r["uid"] for r in group["rules"]] == [r.uid for r in RULES]
    register()
    for r in group["rules"]:
        rule = Rule.from_json(r)
        assert rule.condition == "C"
        assert [q.ref_id for q in rule.data] == ["A", "B", "C"]
        assert r["data"][0]["model"]["rawQuery"] is True
        assert r["data"][0]["relativeTimeRange"]["from"] > 0
        assert r["noDataState"] in ("OK", "NoData", "Alerting")
    titles = {r["title"] for r in group["rules"]}
    assert titles == {"Device offline", "Anomaly rate", "Pipeline lag"}


def test_datasources_take_secrets_from_the_environment() -> None:
    doc = yaml.safe_load((DEPLOYED / "provisioning" / "datasources" / "fieldline.yaml").read_text())
    v2, v1 = doc["datasources"]
    assert v2["type"] == v1["type"] == "influxdb"
    assert v2["jsonData"]["httpHeaderName1"] == "Authorization"
    assert v2["secureJsonData"]["httpHeaderValue1"] == "Token ${GRAFANA_INFLUX_TOKEN}"
    assert v1["secureJsonData"]["password"] == "${INFLUXDB_V1_PASSWORD}"
    providers = yaml.safe_load(
        (DEPLOYED / "provisioning" / "dashboards" / "fieldline.yaml").read_text()
    )["providers"]
    assert providers[0]["type"] == "file"
    assert set(render()) >= {f"dashboards/{n}.json" for n in BUILDERS}
