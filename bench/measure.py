"""Pieces the measurements share: metrics series, pipeline processes, InfluxDB checks,
a write-recording proxy in front of InfluxDB, machine facts."""

from __future__ import annotations

import gzip
import http.client
import os
import platform
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from fieldline_edge.contract import alerts_topic, decode_alert
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.processes import fieldline_command, terminate
from paho.mqtt.enums import CallbackAPIVersion

METRICS_FILTER = "fieldline/_metrics/#"
#: Every pipeline started here, so that an interrupted run leaves none behind.
STARTED: list[Pipeline] = []


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "memory_mb": mem_mb,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident set size of ``pid`` (``VmHWM``), in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class MetricsSeries:
    """Every metrics report on the broker (``fieldline/_metrics/<service>/<instance>``),
    in arrival order; ``instance`` is the topic's last level."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self._lock = threading.Condition()
        self.reports: list[dict[str, Any]] = []
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self._client.on_connect = lambda c, *_a: c.subscribe(METRICS_FILTER, qos=1)
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        try:
            snap = orjson.loads(msg.payload)
        except orjson.JSONDecodeError:
            return
        if len(parts) != 4 or not isinstance(snap, dict):
            return
        snap["instance"] = parts[3]
        with self._lock:
            self.reports.append(snap)
            self._lock.notify_all()

    def of(self, instances: list[str]) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.reports if r.get("instance") in instances]

    def latest(self, instances: list[str]) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for r in self.of(instances):
            out[r["instance"]] = r
        return out

    def total(self, instances: list[str], key: str) -> int:
        return sum(int(r.get(key) or 0) for r in self.latest(instances).values())

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._lock:
                self._lock.wait(min(left, 0.5))
        return True

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


#: Shortest span of metrics reports that a rate is computed over.
MIN_SPAN_MS = 3_000
#: How often the pipelines under test report their counters (s). Rates are timed
#: between reports, so this bounds their error: 0.1 s in a 5 s run is 2 %.
METRICS_INTERVAL_S = 0.1


def rate(
    reports: list[dict[str, Any]], key: str, target: int, released_ms: float
) -> tuple[float, float, float]:
    """Rate of the cluster-wide sum of counter ``key`` from its first report above 0
    to the first that reaches ``target``: (per second, start ts, end ts), ms clocks.

    Reports of several processes are merged by their own timestamps (the sum of
    each process's latest report at every report). A span of reports shorter than
    :data:`MIN_SPAN_MS` says little about a rate (reports come once a second, and
    several processes' reports interleave), so such a run is timed from
    ``released_ms``, when the publishers started: slower, never inflated.
    """
    latest: dict[str, int] = {}
    start: tuple[int, int] | None = None
    end: tuple[int, int] | None = None
    for r in sorted(reports, key=lambda r: int(r["ts"])):
        latest[r["instance"]] = int(r.get(key) or 0)
        total = sum(latest.values())
        if start is None and total > 0:
            start = (int(r["ts"]), total)
        if total >= target:
            end = (int(r["ts"]), total)
            break
    if start is None or end is None:
        return 0.0, 0.0, 0.0
    if end[0] - start[0] < MIN_SPAN_MS:
        start = (int(released_ms), 0)
    span_ms = max(end[0] - start[0], 1)  # released_ms comes from another clock read
    return (end[1] - start[1]) * 1000.0 / span_ms, start[0], end[0]


@dataclass
class Pipeline:
    """``fieldline pipeline run`` as a process; ``instances`` name its metrics reports."""

    proc: subprocess.Popen[bytes]
    instances: list[str]
    log: Path
    peak_rss_mb: dict[int, float] = field(default_factory=dict)

    def sample_rss(self) -> None:
        for pid in [self.proc.pid, *child_pids(self.proc.pid)]:
            rss = vm_hwm_mb(pid)
            if rss is not None:
                self.peak_rss_mb[pid] = max(rss, self.peak_rss_mb.get(pid, 0.0))

    def stop(self, timeout_s: float = 180) -> int:
        code = terminate(self.proc, timeout_s)
        return -9 if code is None else code

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_pipeline(
    broker_url: str,
    influx_url: str,
    db: str,
    workdir: Path,
    tag: str,
    metrics: MetricsSeries,
    *extra: str,
    processes: int = 1,
    instance: str | None = None,
) -> Pipeline:
    """Start a pipeline; ``tag`` names its group, client ids and state (the same tag
    resumes the same persistent sessions), ``instance`` its metrics."""
    instance = instance or f"bench-{tag}"
    args = fieldline_command(
        "pipeline", "run",
        "--broker", broker_url,
        "--influx-url", influx_url,
        "--influx-db", db,
        "--group", f"g-{tag}",
        "--client-id", f"p-{tag}",
        "--instance", instance,
        "--state-dir", str(workdir / f"state-{tag}"),
        "--flush-on-stop",
        "--log-level", "WARNING",
        "--metrics-interval-s", str(METRICS_INTERVAL_S),
        *(["--processes", str(processes)] if processes > 1 else []),
        *extra,
    )  # fmt: skip
    instances = [instance] if processes == 1 else [f"{instance}-{i}" for i in range(processes)]
    log = workdir / f"pipeline-{tag}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    p = Pipeline(proc, instances, log)
    STARTED.append(p)
    ok = metrics.wait_for(
        lambda: (
            proc.poll() is not None
            or (
                len(metrics.latest(instances)) == len(instances)
                and all(r.get("subscribed_clients") for r in metrics.latest(instances).values())
            )
        ),
        90,
    )
    if not ok or proc.poll() is not None:
        p.stop(10)
        raise RuntimeError(f"pipeline {tag} did not start:\n{p.tail()}")
    return p


def stored_windows(influx: InfluxDB, db: str) -> dict[tuple[str, str, int], tuple[int, float]]:
    """(device, sensor, start ms) -> (count, mean) of every window in ``db``."""
    res = influx.query("SELECT count, mean FROM reading_window GROUP BY device, sensor", db=db)
    out: dict[tuple[str, str, int], tuple[int, float]] = {}
    for series in res["results"][0].get("series", []):
        tags = series["tags"]
        for t, count, mean in series["values"]:
            out[(tags["device"], tags["sensor"], int(t))] = (int(count), float(mean))
    return out


def compare(
    expected: dict[tuple[str, str, int], tuple[int, float]],
    stored: dict[tuple[str, str, int], tuple[int, float]],
) -> dict[str, int]:
    """Readings lost (expected, not stored), windows missing, extra or different."""
    lost = 0
    wrong = 0
    for key, (count, total) in expected.items():
        got = stored.get(key)
        if got is None:
            lost += count
            continue
        if got[0] != count or abs(got[1] * got[0] - total) > 1e-6 * max(1.0, abs(total)):
            wrong += 1
        lost += max(0, count - got[0])
    return {
        "lost": lost,
        "windows_expected": len(expected),
        "windows_missing": sum(1 for k in expected if k not in stored),
        "windows_extra": sum(1 for k in stored if k not in expected),
        "windows_wrong": wrong,
    }


class AlertRecorder:
    """Subscribes to one site's alerts; ``seen[(device, sensor, reading ts)]`` is
    when (wall clock, ms) the first alert for that reading arrived."""

    def __init__(self, host: str, port: int, site: str) -> None:
        self.seen: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()
        subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"alerts-{site}", protocol=mqtt.MQTTv311
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.connect(host, port)
        self._client.loop_start()
        self._client.subscribe(alerts_topic(site, "+"), qos=1)
        if not subscribed.wait(30):
            raise RuntimeError("alert subscription not acknowledged")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time() * 1000
        alert = decode_alert(bytes(msg.payload))
        with self._lock:
            self.seen.setdefault((alert.device, alert.sensor, alert.ts), now)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class WriteRecorder:
    """A reverse proxy in front of InfluxDB that notes when each window was written.

    ``seen[(device, sensor, start ms)]`` is the wall-clock time (s) at which
    InfluxDB acknowledged the write that carried that window, i.e. from when
    a query could see it.
    """

    def __init__(self, upstream: str) -> None:
        u = urllib.parse.urlsplit(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 8086)
        self.seen: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                conn = http.client.HTTPConnection(*recorder.upstream, timeout=30)
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("connection", "keep-alive", "host")
                }
                conn.request("POST", self.path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
                now = time.time()
                if resp.status == 204:
                    recorder._record(self.headers.get("Content-Encoding"), body, now)
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "transfer-encoding", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _record(self, encoding: str | None, body: bytes, now: float) -> None:
        text = (gzip.decompress(body) if encoding == "gzip" else body).decode()
        found: list[tuple[str, str, int]] = []
        for line in text.splitlines():
            if not line.startswith("reading_window,"):
                continue
            head, _, rest = line.partition(" ")
            tags = dict(t.split("=", 1) for t in head.split(",")[1:])
            found.append((tags["device"], tags["sensor"], int(rest.rsplit(" ", 1)[1])))
        with self._lock:
            for key in found:
                self.seen.setdefault(key, now)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
