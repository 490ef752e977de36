"""Grafana provisioning files: data sources, the dashboards provider, alert rules.

Grafana reads them from ``/etc/grafana/provisioning/{datasources,dashboards,alerting}``
at start. Secrets stay out of the files: Grafana expands ``$VAR`` from its
environment in data source files (not in alert rule queries, so ``$timeFilter``
there is left alone).
"""

from __future__ import annotations

from typing import Any

from fieldline_dashboards.alerts import ALERT_DATASOURCE_UID

__all__ = ["DASHBOARDS_PATH", "V1_UID", "V2_UID", "dashboard_provider", "datasources"]

V2_UID = ALERT_DATASOURCE_UID
V1_UID = "fieldline-influxdb-v1"
#: Where the provider reads the dashboard JSON inside the Grafana container.
DASHBOARDS_PATH = "/var/lib/grafana/dashboards/fieldline"


def datasources() -> dict[str, Any]:
    """Two InfluxDB data sources queried with InfluxQL.

    2.x (and 3.x) answer InfluxQL at ``/query`` for a database/retention policy
    mapped to a bucket (DBRP), authenticated by a token sent as
    ``Authorization: Token ...``. 1.x takes a user and password.
    """
    return {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Fieldline InfluxDB 2.x",
                "uid": V2_UID,
                "type": "influxdb",
                "access": "proxy",
                "url": "${INFLUXDB_URL}",
                "isDefault": True,
                "editable": False,
                "jsonData": {
                    "version": "InfluxQL",
                    "dbName": "${INFLUXDB_DBRP_DB}",
                    "httpMode": "POST",
                    "httpHeaderName1": "Authorization",
                    "timeInterval": "10s",
                },
                "secureJsonData": {"httpHeaderValue1": "Token ${GRAFANA_INFLUX_TOKEN}"},
            },
            {
                "name": "Fieldline InfluxDB 1.x",
                "uid": V1_UID,
                "type": "influxdb",
                "access": "proxy",
                "url": "${INFLUXDB_V1_URL}",
                "editable": False,
                "user": "${INFLUXDB_V1_USER}",
                "jsonData": {
                    "version": "InfluxQL",
                    "dbName": "${INFLUXDB_V1_DB}",
                    "httpMode": "POST",
                    "timeInterval": "10s",
                },
                "secureJsonData": {"password": "${INFLUXDB_V1_PASSWORD}"},
            },
        ],
    }


def dashboard_provider(folder: str = "Fieldline") -> dict[str, Any]:
    """A file provider for the dashboard JSON files, in their own folder."""
    return {
        "apiVersion": 1,
        "providers": [
            {
                "name": "fieldline",
                "orgId": 1,
                "folder": folder,
                "folderUid": "fieldline",
                "type": "file",
                "disableDeletion": False,
                # Changes made in the UI are kept until the files change again.
                "allowUiUpdates": True,
                "updateIntervalSeconds": 30,
                "options": {"path": DASHBOARDS_PATH, "foldersFromFilesStructure": False},
            }
        ],
    }
