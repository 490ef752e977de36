"""InfluxDB writers and sink against real servers (InfluxDB 1.x, VictoriaMetrics).

Outages come from FaultProxy in front of the real InfluxDB; only answers that
neither will give on demand (scripted sequences, 401, 413, HTTP-date
Retry-After) come from a tiny fake HTTP server; every happy path is proven on
the real thing.
"""

from __future__ import annotations

import gzip
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import TestingSink, TestingSource, cluster_main, run_main
from fieldline_edge.contract import DEAD_LETTER_TOPIC_PREFIX, decode_dead_letter
from fieldline_localstack.faultproxy import FaultProxy
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.victoriametrics import VictoriaMetrics
from fieldline_pipeline.connectors import influx
from fieldline_pipeline.connectors.influx import (
    REASON_REFUSED,
    REASON_SERIES_LIMIT,
    REASON_TAG_LIMIT,
    InfluxSink,
    InfluxV1Config,
    InfluxV2Config,
    InfluxWriteError,
    InfluxWriter,
    RefusedLines,
    V1Writer,
    V2Writer,
    WriteOptions,
    WriterStats,
    make_writer,
)
from fieldline_pipeline.lineprotocol import format_line
from fieldline_pipeline.metrics import PipelineMetrics

FAST_RETRIES = WriteOptions(
    max_retries=2, retry_initial_delay_s=0.001, retry_max_delay_s=0.01, retry_jitter_s=0.001
)
# The pipeline's semantics (no retry limit) with delays small enough to record.
FOREVER = WriteOptions(retry_initial_delay_s=0.001, retry_max_delay_s=0.01, retry_jitter_s=0.001)
T0_MS = 1_700_000_000_000

# Tag values that need escaping, and floats that only survive an exact format.
AWKWARD_TAGS = {"device": "dev 1,a=b", "site": "ünïcødé 温度", "sensor": "C:\\temp"}
AWKWARD_FLOATS = [0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -2.5e-10, 123456789.123456789]
# VictoriaMetrics stores values as decimals with a shared exponent per block: it
# is exact for sensor-like values only, so the v2 test uses those.
SENSOR_FLOATS = [21.5, 0.125, -3.75, 1013.25, 42.0, 0.001]


@pytest.fixture
def v1_config(influxdb: InfluxDB, influx_db: str) -> InfluxV1Config:
    return InfluxV1Config(influxdb.url, influx_db)


@pytest.fixture
def recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry delays the writer asked for; recorded instead of slept."""
    sleeps: list[float] = []
    monkeypatch.setattr(influx, "_sleep", sleeps.append)
    return sleeps


def _writer(config: InfluxV1Config | InfluxV2Config, options: WriteOptions) -> InfluxWriter:
    return make_writer(config, options)


def _free_port() -> int:
    # Bound then closed at once: nothing listens there afterwards.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.services
@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
def test_v1_round_trip_is_exact(
    influxdb: InfluxDB, v1_config: InfluxV1Config, use_gzip: bool
) -> None:
    lines = [
        format_line(
            "reading window",
            {**AWKWARD_TAGS, "i": str(i)},
            {"mean": x, "count": i, "ok": i % 2 == 0, "note": 'say "hi"\\'},
            T0_MS + i,
        )
        for i, x in enumerate(AWKWARD_FLOATS)
    ]
    writer = _writer(v1_config, WriteOptions(gzip=use_gzip))
    try:
        writer.write(lines)
        assert writer.stats.writes == 1
        assert writer.stats.lines == len(lines)
    finally:
        writer.close()

    rows = influxdb.points('SELECT * FROM "reading window" ORDER BY time', v1_config.database)
    assert len(rows) == len(AWKWARD_FLOATS)
    for i, (row, x) in enumerate(zip(rows, AWKWARD_FLOATS)):
        assert row["time"] == T0_MS + i
        assert row["mean"] == x
        assert row["count"] == i
        assert row["ok"] is (i % 2 == 0)
        assert row["note"] == 'say "hi"\\'
        assert {k: row[k] for k in AWKWARD_TAGS} == AWKWARD_TAGS
    tag_values = influxdb.query('SHOW TAG VALUES WITH KEY = "device"', v1_config.database)
    assert tag_values["results"][0]["series"][0]["values"] == [["device", "dev 1,a=b"]]


@pytest.mark.services
def test_v1_writes_in_chunks(influxdb: InfluxDB, v1_config: InfluxV1Config) -> None:
    lines = [
        format_line("bulk", {"device": f"d{i % 7}"}, {"v": float(i)}, T0_MS + i)
        for i in range(12_000)
    ]
    writer = _writer(v1_config, WriteOptions(batch_size_lines=5000))
    try:
        writer.write(lines)
        assert (writer.stats.writes, writer.stats.lines) == (3, 12_000)
    finally:
        writer.close()
    rows = influxdb.points("SELECT COUNT(v), SUM(v) FROM bulk", v1_config.database)
    assert rows[0]["count"] == 12_000
    assert rows[0]["sum"] == sum(range(12_000))


@pytest.mark.services
def test_v1_rewrite_overwrites(influxdb: InfluxDB, v1_config: InfluxV1Config) -> None:
    tags = {"device": "d 1", "sensor": "t"}
    writer = _writer(v1_config, WriteOptions())
    try:
        writer.write([format_line("reading_window", tags, {"mean": 1.0}, T0_MS)])
        # A replay after recovery writes the same point again, maybe with a new value.
        writer.write([format_line("reading_window", tags, {"mean": 2.0}, T0_MS)])
        writer.write([format_line("reading_window", tags, {"mean": 2.0}, T0_MS)])
    finally:
        writer.close()
    rows = influxdb.points("SELECT mean FROM reading_window", v1_config.database)
    assert rows == [{"time": T0_MS, "mean": 2.0}]


@pytest.mark.services
def test_v1_unparsable_line_is_refused_alone(
    influxdb: InfluxDB, v1_config: InfluxV1Config, recorded_sleeps: list[float]
) -> None:
    good = [format_line("m", {"k": f"ok{i}"}, {"v": 1.0}, T0_MS) for i in range(5)]
    bad = "m,k=bad v=notanumber 1"
    writer = _writer(v1_config, FAST_RETRIES)
    try:
        refused = writer.write([*good[:2], bad, *good[2:]])
        assert refused == [RefusedLines(REASON_REFUSED, refused[0].detail, (bad,))]
        assert "unable to parse" in refused[0].detail
        assert "notanumber" in refused[0].detail
        stats = writer.stats
        assert (stats.lines, stats.refused, stats.errors, stats.retries) == (5, 1, 0, 0)
        assert recorded_sleeps == []
    finally:
        writer.close()
    rows = influxdb.points("SELECT COUNT(v) FROM m", v1_config.database)
    assert rows[0]["count"] == 5


@pytest.mark.services
@pytest.mark.parametrize(
    ("database", "rp", "status"),
    [("no_such_db", None, 404), (None, "no_such_rp", 500)],
    ids=["database", "retention-policy"],
)
def test_v1_missing_target_is_not_retried(
    influxdb: InfluxDB,
    influx_db: str,
    recorded_sleeps: list[float],
    database: str | None,
    rp: str | None,
    status: int,
) -> None:
    # 1.x answers a missing retention policy with a 500, which is not transient.
    config = InfluxV1Config(influxdb.url, database or influx_db, retention_policy=rp)
    writer = _writer(config, FAST_RETRIES)
    try:
        with pytest.raises(InfluxWriteError, match="not found") as info:
            writer.write(["m v=1 1"])
        assert info.value.status == status
        assert writer.stats.retries == 0
    finally:
        writer.close()


@pytest.mark.services
def test_v1_ping(influxdb: InfluxDB, v1_config: InfluxV1Config) -> None:
    writer = V1Writer(v1_config)
    refused = V1Writer(InfluxV1Config(f"http://127.0.0.1:{_free_port()}", "x"))
    try:
        assert writer.ping() is True
        assert refused.ping() is False
    finally:
        writer.close()
        refused.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_connection_refused_retries_then_raises(
    api: str, recorded_sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    config = InfluxV1Config(url, "x") if api == "v1" else InfluxV2Config(url, "o", "b")
    writer = _writer(config, FAST_RETRIES)
    try:
        with (
            caplog.at_level(logging.WARNING, logger=influx.__name__),
            pytest.raises(InfluxWriteError, match="after 2 retries") as info,
        ):
            writer.write(["m v=1 1"])
        assert info.value.status is None
        assert (writer.stats.retries, writer.stats.errors, writer.stats.writes) == (2, 1, 0)
        assert len(recorded_sleeps) == 2
        # Exponential backoff with jitter, capped at retry_max_delay_s.
        assert 0.001 <= recorded_sleeps[0] <= 0.002
        assert 0.002 <= recorded_sleeps[1] <= 0.003
        retries = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert [r.getMessage().split("retry ")[1][:3] for r in retries] == ["1/2", "2/2"]
    finally:
        writer.close()


class _FakeInflux:
    """Answers the first requests from a script, then 204; records bodies."""

    def __init__(self, script: Sequence[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.bodies: list[bytes] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                fake.bodies.append(data)
                status, headers = fake.script.pop(0) if fake.script else (204, {})
                body = b'{"error":"slow down"}' if status != 204 else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def fake_influx(request: pytest.FixtureRequest) -> Iterator[_FakeInflux]:
    fake = _FakeInflux(request.param)
    try:
        yield fake
    finally:
        fake.close()


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize(
    ("fake_influx", "expected_sleeps"),
    [
        ([(429, {"Retry-After": "0"})], [0.0]),
        # Capped at retry_max_delay_s (0.01 s in FAST_RETRIES).
        ([(503, {"Retry-After": "120"})], [0.01]),
        ([(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})], [0.0]),
    ],
    indirect=["fake_influx"],
    ids=["429-after-0", "503-capped", "429-http-date"],
)
def test_retry_after_is_honoured(
    api: str,
    fake_influx: _FakeInflux,
    expected_sleeps: list[float],
    recorded_sleeps: list[float],
) -> None:
    url = fake_influx.url
    config = InfluxV1Config(url, "x") if api == "v1" else InfluxV2Config(url, "o", "b")
    writer = _writer(config, FAST_RETRIES)
    try:
        writer.write(["m v=1 1", "m v=2 2"])
        assert recorded_sleeps == expected_sleeps
        assert (writer.stats.retries, writer.stats.writes, writer.stats.lines) == (1, 1, 2)
    finally:
        writer.close()
    assert fake_influx.bodies == [b"m v=1 1\nm v=2 2"] * 2


@pytest.mark.services
@pytest.mark.parametrize("use_gzip", [True, False], ids=["gzip", "plain"])
def test_v2_writes_to_victoriametrics(victoriametrics: VictoriaMetrics, use_gzip: bool) -> None:
    measurement = f"v2_{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    lines = [
        format_line(measurement, AWKWARD_TAGS, {"mean": x, "count": i}, now_ms + i)
        for i, x in enumerate(SENSOR_FLOATS)
    ]
    config = InfluxV2Config(victoriametrics.url, org="fieldline", bucket="telemetry")
    writer = V2Writer(config, WriteOptions(gzip=use_gzip, batch_size_lines=4))
    try:
        assert writer.ping() is True
        writer.write(lines)
        assert (writer.stats.writes, writer.stats.lines) == (2, len(lines))
    finally:
        writer.close()

    # VictoriaMetrics names a series measurement_field and keeps tags as labels.
    series = _export_when_present(victoriametrics, f'{{__name__="{measurement}_mean"}}')
    assert len(series) == 1
    assert series[0]["metric"] == {"__name__": f"{measurement}_mean", **AWKWARD_TAGS}
    assert series[0]["timestamps"] == [now_ms + i for i in range(len(SENSOR_FLOATS))]
    assert series[0]["values"] == SENSOR_FLOATS
    counts = _export_when_present(victoriametrics, f'{{__name__="{measurement}_count"}}')
    assert counts[0]["values"] == list(range(len(SENSOR_FLOATS)))


def _export_when_present(vm: VictoriaMetrics, match: str) -> list[dict[str, Any]]:
    # Ingestion is asynchronous even after force_flush; wait for the data, but
    # fail (not hang) if it never comes.
    deadline = time.monotonic() + 30
    while True:
        vm.force_flush()
        series = vm.export(match)
        if series or time.monotonic() > deadline:
            return series
        time.sleep(0.1)


def _flow(lines: list[str], sink: InfluxSink, *, redistribute: bool = False) -> Dataflow:
    flow = Dataflow("influx_sink_test")
    stream = op.input("lines", flow, TestingSource(lines, batch_size=250))
    if redistribute:
        stream = op.redistribute("spread", stream)
    op.output("influx", stream, sink)
    return flow


@pytest.mark.services
def test_sink_in_a_bytewax_run(influxdb: InfluxDB, v1_config: InfluxV1Config) -> None:
    lines = [
        format_line("sink", {"device": f"d {i % 5}"}, {"v": i}, T0_MS + i) for i in range(2_000)
    ]
    sink = InfluxSink(v1_config, WriteOptions(batch_size_lines=300))
    run_main(_flow(lines, sink))
    assert sink.stats().lines == 2_000
    assert sink.stats().errors == 0
    rows = influxdb.points("SELECT COUNT(v), SUM(v) FROM sink", v1_config.database)
    assert (rows[0]["count"], rows[0]["sum"]) == (2_000, sum(range(2_000)))


@pytest.mark.services
def test_sink_on_two_workers(influxdb: InfluxDB, v1_config: InfluxV1Config) -> None:
    lines = [format_line("sink2", {"device": "d"}, {"v": i}, T0_MS + i) for i in range(3_000)]
    sink = InfluxSink(v1_config)
    cluster_main(_flow(lines, sink, redistribute=True), [], 0, worker_count_per_proc=2)
    assert sink.stats().lines == 3_000
    rows = influxdb.points("SELECT COUNT(v) FROM sink2", v1_config.database)
    assert rows[0]["count"] == 3_000


def test_sink_failure_stops_the_dataflow(recorded_sleeps: list[float]) -> None:
    # Lines that cannot be written must never be dropped silently.
    sink = InfluxSink(InfluxV1Config(f"http://127.0.0.1:{_free_port()}", "x"), FAST_RETRIES)
    with pytest.raises(RuntimeError) as info:
        run_main(_flow(["m v=1 1"], sink))
    causes = []
    exc: BaseException | None = info.value
    while exc is not None:
        causes.append(exc)
        exc = exc.__cause__
    assert any(isinstance(c, InfluxWriteError) for c in causes)
    assert sink.stats().errors == 1


def test_configs_keep_secrets_out_of_repr() -> None:
    v1 = InfluxV1Config("http://h:8086", "db", username="user", password="hunter2")
    v2 = InfluxV2Config("http://h:8086", "org", "bucket", token="s3cr3t-token")
    assert "hunter2" not in repr(v1)
    assert "user" in repr(v1)
    assert "s3cr3t-token" not in repr(v2)
    assert "bucket" in repr(v2)


@pytest.mark.parametrize(
    "make",
    [
        lambda: InfluxV1Config("h:8086", "db"),
        lambda: InfluxV1Config("http://h:8086", ""),
        lambda: InfluxV2Config("http://h:8086", "o", ""),
        lambda: WriteOptions(batch_size_lines=0),
        lambda: WriteOptions(max_retries=-1),
        lambda: WriteOptions(max_retry_time_s=-1),
        lambda: WriteOptions(timeout_s=0),
    ],
)
def test_settings_are_validated(make: Any) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        make()


# ---------------------------------------------------------------- outages


def test_defaults_never_give_up() -> None:
    opts = WriteOptions()
    assert (opts.max_retries, opts.max_retry_time_s) == (None, None)


@pytest.mark.parametrize("api", ["v1", "v2"])
@pytest.mark.parametrize(
    "fake_influx", [[(500, {})] * 40 + [(503, {})] * 30], indirect=True, ids=["70x5xx"]
)
def test_transient_errors_are_retried_until_the_server_takes_the_lines(
    api: str,
    fake_influx: _FakeInflux,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = fake_influx.url
    config = InfluxV1Config(url, "x") if api == "v1" else InfluxV2Config(url, "o", "b")
    writer = _writer(config, FOREVER)
    seen: list[tuple[float, str]] = []
    monkeypatch.setattr(influx, "_sleep", lambda s: seen.append((s, writer.stats.state)))
    try:
        with caplog.at_level(logging.INFO, logger=influx.__name__):
            writer.write(["m v=1 1"])
        stats = writer.stats
        assert (stats.retries, stats.writes, stats.errors, stats.state) == (70, 1, 0, "ok")
    finally:
        writer.close()
    sleeps = [s for s, _ in seen]
    assert {state for _, state in seen} == {"retrying"}
    # Exponential from 1 ms, then capped (jitter included) at 10 ms, for ever.
    assert 0.001 <= sleeps[0] <= 0.002
    assert 0.002 <= sleeps[1] <= 0.003
    assert all(0.009 <= s <= 0.01 for s in sleeps[4:])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 70
    assert "HTTP 500" in warnings[0]
    assert "retry 1 in 0.00" in warnings[0]
    assert "retry 70 in" in warnings[-1]
    assert "HTTP 503" in warnings[-1]
    resumed = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert len(resumed) == 1
    assert "writes resumed after" in resumed[0]
    assert "(70 retries; last error: HTTP 503" in resumed[0]


@pytest.mark.services
def test_writer_waits_out_a_dead_server(
    influxdb: InfluxDB, influx_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sleeps: list[float] = []
    with FaultProxy(influxdb.url) as proxy:

        def sleep(s: float) -> None:
            sleeps.append(s)
            if len(sleeps) == 5:
                proxy.pass_through()  # the server comes back

        monkeypatch.setattr(influx, "_sleep", sleep)
        writer = _writer(InfluxV1Config(proxy.url, influx_db), FOREVER)
        try:
            assert writer.ping() is True  # a keep-alive connection that refuse() cuts
            proxy.refuse()
            writer.write([format_line("m", {"k": "v"}, {"v": 1.0}, T0_MS)])
            assert (writer.stats.retries, writer.stats.writes) == (5, 1)
            assert writer.stats.describe() == "ok"
        finally:
            writer.close()
    assert influxdb.points("SELECT v FROM m", influx_db) == [{"time": T0_MS, "v": 1.0}]


@pytest.mark.services
def test_writer_honours_retry_after_from_a_throttling_server(
    influxdb: InfluxDB, influx_db: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    sleeps: list[float] = []
    with FaultProxy(influxdb.url) as proxy:

        def sleep(s: float) -> None:
            sleeps.append(s)
            if len(sleeps) == 3:
                proxy.pass_through()

        monkeypatch.setattr(influx, "_sleep", sleep)
        proxy.throttle(retry_after_s=2)
        writer = _writer(InfluxV1Config(proxy.url, influx_db), WriteOptions())
        try:
            with caplog.at_level(logging.WARNING, logger=influx.__name__):
                writer.write([format_line("m", {"k": "v"}, {"v": 1.0}, T0_MS)])
        finally:
            writer.close()
        assert proxy.counts() == {"429": 3, "forwarded": 1}
    assert sleeps == [2.0, 2.0, 2.0]
    warnings = [r.getMessage() for r in caplog.records if r.name == influx.__name__]
    assert len(warnings) == 3
    assert all("HTTP 429" in w and "in 2.00 s (Retry-After)" in w for w in warnings)


def test_max_retry_time_bounds_the_retrying(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(s)
        clock[0] += s

    monkeypatch.setattr(influx, "_sleep", sleep)
    monkeypatch.setattr(influx, "_monotonic", lambda: clock[0])
    opts = WriteOptions(
        max_retry_time_s=5, retry_initial_delay_s=1, retry_max_delay_s=10, retry_jitter_s=0
    )
    writer = _writer(InfluxV1Config(f"http://127.0.0.1:{_free_port()}", "x"), opts)
    try:
        with pytest.raises(InfluxWriteError, match=r"after 3 retries in 5\.0 s: no answer") as info:
            writer.write(["m v=1 1"])
        assert info.value.retries == 3
        assert (writer.stats.errors, writer.stats.state) == (1, "retrying")
    finally:
        writer.close()
    # 1, 2, then 4 cut to 2 so that the last try comes at the deadline.
    assert sleeps == [1.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("fake_influx", "status", "hint"),
    [
        ([(400, {})], 400, "rejected the line protocol"),
        ([(401, {})], 401, "authentication failed"),
        ([(403, {})], 403, "authentication failed"),
        ([(404, {})], 404, "does not exist"),
        ([(413, {})], 413, "lower batch_size_lines"),
    ],
    indirect=["fake_influx"],
    ids=["400", "401", "403", "404", "413"],
)
def test_permanent_errors_raise_at_once_without_a_retry_limit(
    fake_influx: _FakeInflux, status: int, hint: str, recorded_sleeps: list[float]
) -> None:
    writer = _writer(InfluxV1Config(fake_influx.url, "x"), WriteOptions())
    try:
        with pytest.raises(InfluxWriteError, match=hint) as info:
            writer.write(["m v=1 1"])
        assert (info.value.status, info.value.retries) == (status, 0)
        assert (writer.stats.errors, writer.stats.retries, writer.stats.state) == (1, 0, "ok")
    finally:
        writer.close()
    assert recorded_sleeps == []


@pytest.mark.services
def test_sink_rides_out_5xx_in_a_bytewax_run(
    influxdb: InfluxDB, influx_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [format_line("outage", {"d": str(i % 3)}, {"v": i}, T0_MS + i) for i in range(1_000)]
    with FaultProxy(influxdb.url) as proxy:
        sink = InfluxSink(InfluxV1Config(proxy.url, influx_db), FOREVER)
        states: list[str] = []

        def sleep(_s: float) -> None:
            states.append(sink.stats().state)
            if len(states) == 4:
                proxy.pass_through()

        monkeypatch.setattr(influx, "_sleep", sleep)
        proxy.fail(500)
        run_main(_flow(lines, sink))
    stats = sink.stats()
    assert (stats.lines, stats.retries, stats.errors, stats.state) == (1_000, 4, 0, "ok")
    assert states == ["retrying"] * 4
    rows = influxdb.points("SELECT COUNT(v), SUM(v) FROM outage", influx_db)
    assert (rows[0]["count"], rows[0]["sum"]) == (1_000, sum(range(1_000)))


@pytest.mark.services
def test_sink_permanent_error_stops_the_dataflow(influxdb: InfluxDB) -> None:
    sink = InfluxSink(InfluxV1Config(influxdb.url, "no_such_db"))
    with pytest.raises(RuntimeError) as info:
        run_main(_flow(["m v=1 1"], sink))
    exc: BaseException | None = info.value
    while exc is not None and not isinstance(exc, InfluxWriteError):
        exc = exc.__cause__
    assert isinstance(exc, InfluxWriteError)
    assert exc.status == 404
    assert "database not found" in str(exc)


def test_stats_sum_is_retrying_while_any_writer_is() -> None:
    total = WriterStats()
    total += WriterStats(writes=2, lines=10)
    assert total.state == "ok"
    assert total.describe() == "ok"
    total += WriterStats(retries=3, retrying_since=200.0, last_error="HTTP 503: busy")
    total += WriterStats(retries=1, retrying_since=100.0, last_error="no answer: refused")
    total += WriterStats(writes=1, lines=5)
    assert (total.writes, total.lines, total.retries, total.errors) == (3, 15, 4, 0)
    assert (total.state, total.retrying_since) == ("retrying", 100.0)
    assert total.describe(now_s=112.5) == "retrying for 12.5 s (no answer: refused)"


# ------------------------------------------------------------ refused points
#
# InfluxDB 1.x stores what it can of a request and answers 400 "partial write:
# <one reason> dropped=N" for the rest. The writer must single the refused
# lines out, hand them back and go on.

HOUR_MS = 3_600_000


@pytest.fixture
def one_hour_db(influxdb: InfluxDB, influx_db: str) -> str:
    """``influx_db`` whose default retention policy keeps one hour."""
    influxdb.query(
        f'CREATE RETENTION POLICY "one_hour" ON "{influx_db}" DURATION 1h REPLICATION 1 DEFAULT'
    )
    return influx_db


@pytest.fixture(scope="module")
def tag_limited_influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """An InfluxDB that keeps at most 10 values of a tag (max-values-per-tag)."""
    server = InfluxDB(tmp_path_factory.mktemp("tag_limited"), max_values_per_tag=10)
    try:
        yield server.start()
    finally:
        server.stop()


def _recent_lines(now_ms: int, n: int, measurement: str = "rw") -> list[str]:
    return [
        format_line(measurement, {"device": f"d{i}", "sensor": "t"}, {"mean": float(i)}, now_ms - i)
        for i in range(n)
    ]


@pytest.mark.services
def test_v1_point_beyond_retention_is_singled_out(influxdb: InfluxDB, one_hour_db: str) -> None:
    now_ms = int(time.time() * 1000)
    lines = _recent_lines(now_ms, 40)
    old = format_line("rw", {"device": "old", "sensor": "t"}, {"mean": -1.0}, now_ms - 2 * HOUR_MS)
    lines.insert(17, old)
    writer = _writer(InfluxV1Config(influxdb.url, one_hour_db), WriteOptions())
    try:
        refused = writer.write(lines)
        stats = writer.stats
    finally:
        writer.close()
    assert len(refused) == 1
    assert (refused[0].reason, refused[0].lines, refused[0].exact) == (
        REASON_REFUSED, (old,), True,
    )  # fmt: skip
    assert "points beyond retention policy" in refused[0].detail
    assert (stats.lines, stats.refused, stats.errors) == (40, 1, 0)
    # Halving 41 lines down to one costs two requests a level: 6 levels.
    assert stats.writes <= 1 + 2 * 6
    rows = influxdb.points("SELECT COUNT(mean), SUM(mean) FROM rw", one_hour_db)
    assert (rows[0]["count"], rows[0]["sum"]) == (40, sum(range(40)))


@pytest.mark.services
def test_v1_each_refused_line_keeps_its_own_reason(influxdb: InfluxDB, one_hour_db: str) -> None:
    # InfluxDB names one reason per request, whatever the others: the search
    # must find every refused line and what the server said of it alone.
    now_ms = int(time.time() * 1000)
    writer = _writer(InfluxV1Config(influxdb.url, one_hour_db), WriteOptions())
    try:
        assert writer.write(_recent_lines(now_ms, 1)) == []  # mean is a float field
        old = format_line(
            "rw", {"device": "old", "sensor": "t"}, {"mean": 1.0}, now_ms - 2 * HOUR_MS
        )
        conflict = format_line("rw", {"device": "int", "sensor": "t"}, {"mean": 3}, now_ms)
        unparsable = f"rw,device=bad,sensor=t mean=nan? {now_ms}"
        lines = _recent_lines(now_ms - 10, 12)
        lines[2:2], lines[7:7], lines[11:11] = [old], [conflict], [unparsable]
        refused = writer.write(lines)
    finally:
        writer.close()
    by_line = {r.lines: r for r in refused}
    assert set(by_line) == {(old,), (conflict,), (unparsable,)}
    assert by_line[(old,)].detail == "partial write: points beyond retention policy"
    assert "field type conflict" in by_line[(conflict,)].detail
    assert "unable to parse" in by_line[(unparsable,)].detail
    assert {r.reason for r in refused} == {REASON_REFUSED}
    rows = influxdb.points("SELECT COUNT(mean) FROM rw", one_hour_db)
    assert rows[0]["count"] == 1 + 12


@pytest.mark.services
def test_v1_chunk_refused_whole_needs_no_search(influxdb: InfluxDB, one_hour_db: str) -> None:
    # A replay of old data: InfluxDB's dropped=N equals the chunk, so no halving.
    now_ms = int(time.time() * 1000)
    old = _recent_lines(now_ms - 3 * HOUR_MS, 25)
    writer = _writer(InfluxV1Config(influxdb.url, one_hour_db), WriteOptions(batch_size_lines=10))
    try:
        refused = writer.write(old)
        assert writer.stats.writes == 3
    finally:
        writer.close()
    assert [r.lines for r in refused] == [tuple(old[:10]), tuple(old[10:20]), tuple(old[20:])]
    assert influxdb.points("SELECT COUNT(mean) FROM rw", one_hour_db) == []


@pytest.mark.services
def test_v1_search_bound_returns_the_rest_whole(influxdb: InfluxDB, one_hour_db: str) -> None:
    now_ms = int(time.time() * 1000)
    lines = _recent_lines(now_ms, 16)
    old = format_line("rw", {"device": "old", "sensor": "t"}, {"mean": -1.0}, now_ms - 2 * HOUR_MS)
    lines.insert(5, old)
    # 2 extra requests: one halving, then the refused half is returned undivided.
    writer = _writer(
        InfluxV1Config(influxdb.url, one_hour_db), WriteOptions(max_refusal_requests=3)
    )
    try:
        refused = writer.write(lines)
        stats = writer.stats
    finally:
        writer.close()
    assert len(refused) == 1
    assert refused[0].exact is False
    assert refused[0].lines == tuple(lines[:8])  # the half that holds the old point
    assert (stats.writes, stats.refused, stats.lines) == (3, 8, 9)
    # What the bound left undivided was stored all the same, but for the old point.
    rows = influxdb.points("SELECT COUNT(mean) FROM rw", one_hour_db)
    assert rows[0]["count"] == 16


@pytest.mark.services
def test_v1_tag_value_limit_is_a_reason_of_its_own(
    tag_limited_influxdb: InfluxDB, caplog: pytest.LogCaptureFixture
) -> None:
    server = tag_limited_influxdb
    db = f"t_{uuid.uuid4().hex[:8]}"
    server.create_database(db)
    now_ms = int(time.time() * 1000)

    def line(i: int, t: int) -> str:
        return format_line("rw", {"device": "d1", "sensor": f"s{i:02d}"}, {"mean": float(i)}, t)

    writer = _writer(InfluxV1Config(server.url, db), WriteOptions())
    try:
        # InfluxDB 1.6 checks the limit against the values stored before a
        # request: fill the tag up to it, then come with 5 new names among old ones.
        assert writer.write([line(i, now_ms - 1) for i in range(10)]) == []
        lines = [line(i, now_ms) for i in (0, 10, 1, 2, 11, 3, 4, 12, 5, 6, 7, 13, 8, 9, 14)]
        with caplog.at_level(logging.WARNING, logger=influx.__name__):
            refused = writer.write(lines)
        stats = writer.stats
    finally:
        writer.close()
    # One log line for the refusal, however many messages.
    logged = [r.getMessage() for r in caplog.records if "InfluxDB refused" in r.getMessage()]
    assert len(logged) == 1
    assert "refused 5 of 15 lines (influx_tag_limit)" in logged[0]
    assert "(and 4 other messages)" in logged[0]
    # The message names the new value, so each line comes with its own.
    assert {(r.reason, r.exact) for r in refused} == {(REASON_TAG_LIMIT, True)}
    for r in refused:
        assert "max-values-per-tag limit exceeded" in r.detail
        assert all(
            f'value="{line_.split("sensor=")[1].split()[0]}"' in r.detail for line_ in r.lines
        )
    refused_lines = [line_ for r in refused for line_ in r.lines]
    assert sorted(refused_lines) == sorted(line(i, now_ms) for i in range(10, 15))
    # The old names' points of the second request were stored, the new ones not.
    rows = influxdb_points_at(server, db, now_ms)
    assert sorted(r["sensor"] for r in rows) == [f"s{i:02d}" for i in range(10)]
    assert (stats.lines, stats.refused) == (20, 5)


@pytest.fixture(scope="module")
def series_limited_influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """An InfluxDB that keeps at most 5 series a database (max-series-per-database)."""
    server = InfluxDB(tmp_path_factory.mktemp("series_limited"), max_series_per_database=5)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.mark.services
def test_v1_series_limit_is_a_reason_of_its_own(series_limited_influxdb: InfluxDB) -> None:
    server = series_limited_influxdb
    db = f"t_{uuid.uuid4().hex[:8]}"
    server.create_database(db)
    now_ms = int(time.time() * 1000)

    def line(i: int, t: int) -> str:
        return format_line("rw", {"device": f"d{i}", "sensor": "t"}, {"mean": float(i)}, t)

    writer = _writer(InfluxV1Config(server.url, db), WriteOptions())
    try:
        assert writer.write([line(i, now_ms - 1) for i in range(5)]) == []
        refused = writer.write([line(i, now_ms) for i in (5, 0, 1, 6, 2, 3, 4, 7)])
    finally:
        writer.close()
    assert [(r.reason, r.exact) for r in refused] == [(REASON_SERIES_LIMIT, True)]
    assert "max-series-per-database limit exceeded" in refused[0].detail
    assert sorted(refused[0].lines) == sorted(line(i, now_ms) for i in (5, 6, 7))
    assert len(influxdb_points_at(server, db, now_ms)) == 5


@pytest.mark.services
def test_sink_without_dead_letter_sink_logs_the_refused_lines(
    influxdb: InfluxDB, one_hour_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    now_ms = int(time.time() * 1000)
    old = _recent_lines(now_ms - 2 * HOUR_MS, 1, "gone")
    sink = InfluxSink(InfluxV1Config(influxdb.url, one_hour_db))
    with caplog.at_level(logging.WARNING, logger=influx.__name__):
        run_main(_flow([*_recent_lines(now_ms, 3), *old], sink))
    assert sink.stats().refused == 1
    logged = [r.getMessage() for r in caplog.records if "no dead-letter sink" in r.getMessage()]
    assert len(logged) == 1
    assert old[0] in logged[0]


def influxdb_points_at(server: InfluxDB, db: str, t_ms: int) -> list[dict[str, Any]]:
    q = f"SELECT mean, sensor FROM rw WHERE time = {t_ms}ms"
    return server.points(q, db)


class _DeadLetterSink(DynamicSink[tuple[str, bytes]]):
    """A dead-letter sink whose partitions always fail."""

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[tuple[str, bytes]]:
        class Failing(StatelessSinkPartition[tuple[str, bytes]]):
            def write_batch(self, items: list[tuple[str, bytes]]) -> None:
                raise ConnectionError("broker gone")

        return Failing()


@pytest.mark.services
def test_sink_dead_letters_refused_lines_and_goes_on(influxdb: InfluxDB, one_hour_db: str) -> None:
    now_ms = int(time.time() * 1000)
    lines = _recent_lines(now_ms, 500)
    old = [
        format_line("rw", {"device": f"old{i}", "sensor": "t"}, {"mean": 0.5}, now_ms - 2 * HOUR_MS)
        for i in range(3)
    ]
    for i, line in enumerate(old):
        lines.insert(100 + 150 * i, line)
    published: list[tuple[str, bytes]] = []
    metrics = PipelineMetrics()
    sink = InfluxSink(
        InfluxV1Config(influxdb.url, one_hour_db), WriteOptions(batch_size_lines=300),
        dead_letters=TestingSink(published), metrics=metrics,
    )  # fmt: skip
    run_main(_flow(lines, sink))
    assert sink.stats().errors == 0
    rows = influxdb.points("SELECT COUNT(mean) FROM rw", one_hour_db)
    assert rows[0]["count"] == 500
    assert {topic for topic, _ in published} == {f"{DEAD_LETTER_TOPIC_PREFIX}/{REASON_REFUSED}"}
    letters = [decode_dead_letter(body) for _, body in published]
    assert sorted(dl.payload.decode() for dl in letters) == sorted(old)
    assert {dl.reason for dl in letters} == {REASON_REFUSED}
    assert all("points beyond retention policy" in dl.detail for dl in letters)
    assert {dl.topic for dl in letters} == {f"influxdb:{one_hour_db}"}
    snap = metrics.snapshot()
    assert snap["dead_letters_by_reason"] == {REASON_REFUSED: 3}
    assert snap["refused_points"] == 3
    assert snap["messages"] == 0  # the messages behind the points were counted upstream


@pytest.mark.services
def test_sink_survives_a_failing_dead_letter_sink(
    influxdb: InfluxDB, one_hour_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    now_ms = int(time.time() * 1000)
    lines = [*_recent_lines(now_ms, 20), *_recent_lines(now_ms - 2 * HOUR_MS, 1, "gone")]
    sink = InfluxSink(InfluxV1Config(influxdb.url, one_hour_db), dead_letters=_DeadLetterSink())
    with caplog.at_level(logging.ERROR, logger=influx.__name__):
        run_main(_flow(lines, sink))
    assert sink.stats().refused == 1
    rows = influxdb.points("SELECT COUNT(mean) FROM rw", one_hour_db)
    assert rows[0]["count"] == 20
    assert any("publishing 1 dead letters (influx_refused) failed" in r.getMessage()
               for r in caplog.records)  # fmt: skip


class _FakeInflux2:
    """InfluxDB 2.x's ``/api/v2/write`` as far as refusals go: points older than
    ``cutoff_ms`` are beyond retention (422, "partial write"), the rest stored.

    VictoriaMetrics, the real server of the other v2 tests, has no such
    semantics: it answers 204 and stores any timestamp.
    """

    def __init__(self, cutoff_ms: int) -> None:
        self.stored: list[str] = []
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    data = gzip.decompress(data)
                fake.requests += 1
                lines = data.decode().split("\n")
                keep = [line for line in lines if int(line.rsplit(" ", 1)[1]) >= cutoff_ms]
                fake.stored += keep
                dropped = len(lines) - len(keep)
                body = b""
                status = 204
                if dropped:
                    status = 422
                    body = (
                        b'{"code":"unprocessable entity","message":"failure writing points to '
                        b"database: partial write: points beyond retention policy dropped="
                        + str(dropped).encode() + b'"}'
                    )  # fmt: skip
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_v2_partial_write_is_singled_out() -> None:
    now_ms = int(time.time() * 1000)
    lines = _recent_lines(now_ms, 30)
    old = _recent_lines(now_ms - 2 * HOUR_MS, 2, "old")
    lines[3:3] = [old[0]]
    lines[25:25] = [old[1]]
    fake = _FakeInflux2(cutoff_ms=now_ms - HOUR_MS)
    writer = V2Writer(InfluxV2Config(fake.url, "o", "b"), WriteOptions())
    try:
        refused = writer.write(lines)
        stats = writer.stats
    finally:
        writer.close()
        fake.close()
    assert [(r.reason, r.exact) for r in refused] == [(REASON_REFUSED, True)]
    assert sorted(refused[0].lines) == sorted(old)
    assert "points beyond retention policy" in refused[0].detail
    assert sorted(set(fake.stored)) == sorted(line for line in lines if line not in old)
    assert (stats.lines, stats.refused, stats.errors) == (30, 2, 0)
