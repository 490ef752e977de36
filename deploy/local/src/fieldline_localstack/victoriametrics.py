"""VictoriaMetrics single-node on loopback: a real target for InfluxDB v2 writes."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from fieldline_localstack._http import answers, http
from fieldline_localstack._process import Service, ServiceError


class VictoriaMetrics(Service):
    """A VictoriaMetrics server on 127.0.0.1:`port`, data in `state_dir/data`.

    It accepts InfluxDB line protocol on /write and /api/v2/write; each field
    becomes a metric `<measurement>_<field>` labelled by the tags (plus `db`
    from the ?db= / ?bucket= parameter).
    """

    name = "victoria-metrics"
    package = "victoria-metrics"

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://{self.host}:{self.port}"

    def _prepare(self, binary: str) -> list[str]:
        return [
            binary,
            f"-storageDataPath={self.state_dir / 'data'}",
            f"-httpListenAddr={self.host}:{self.port}",
            "-retentionPeriod=100y",  # tests write timestamps far in the past
            # Make points visible to queries at once (defaults: 30 s delay, cached results).
            "-search.latencyOffset=0s",
            "-search.disableCache",
            "-memory.allowedPercent=20",  # several instances may share a machine
        ]

    def _ready(self) -> bool:
        return answers(f"{self.url}/health", 200)

    def _get(self, path: str, params: list[tuple[str, str]]) -> bytes:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        status, body = http("GET", url)
        if status != 200:
            raise ServiceError(f"GET {path} failed (HTTP {status}): {body[:500]!r}")
        return body

    def force_flush(self) -> None:
        """Make just-written samples searchable (GET /internal/force_flush)."""
        self._get("/internal/force_flush", [])

    def export(self, match: str) -> list[dict[str, Any]]:
        """Raw series matching selector `match` (GET /api/v1/export).

        Each item is {"metric": {labels}, "values": [...], "timestamps": [ms...]}.
        Data written just before may be missing: see `wait_export`.
        """
        body = self._get("/api/v1/export", [("match[]", match)])
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def wait_export(
        self, match: str, samples: int = 1, timeout_s: float = 10
    ) -> list[dict[str, Any]]:
        """export(match) once its series hold `samples` samples in total.

        Returns what there is at timeout (the caller asserts). Polling is
        needed: on 1.79 force_flush() does not guarantee visibility; new
        series and some fresh samples show up to ~1 s later.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            self.force_flush()
            found = self.export(match)
            if sum(len(s["values"]) for s in found) >= samples or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def query(self, promql: str, time_s: float | None = None) -> list[dict[str, Any]]:
        """Instant PromQL query; returns data.result ({"metric", "value"} items)."""
        params = [("query", promql)]
        if time_s is not None:
            params.append(("time", repr(time_s)))
        reply = json.loads(self._get("/api/v1/query", params))
        if reply.get("status") != "success":
            raise ServiceError(f"query {promql!r} failed: {reply}")
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result
