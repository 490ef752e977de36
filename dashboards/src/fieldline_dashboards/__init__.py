"""Fieldline Grafana dashboards, built as code."""

#: The dashboards this distribution will provide.
DASHBOARDS: tuple[str, ...] = ("fleet-overview", "device-detail", "anomalies", "pipeline-health")
