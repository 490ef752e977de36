"""The ``pipeline`` point carries what the Pipeline health dashboard reads; the
reporter logs an outage of InfluxDB once, not once per report."""

from __future__ import annotations

import logging
import threading

import pytest
from fieldline_pipeline.connectors.influx import InfluxWriteError
from fieldline_pipeline.metrics import MetricsReporter, PipelineMetrics, metrics_lines


def test_runner_fields_are_written_when_the_publisher_set_them() -> None:
    m = PipelineMetrics()
    m.on_dead_letter("bad_json")
    snap = m.snapshot()
    snap.update(sink_errors=2, sink_retries=7, subscribed_clients=1)
    lines = metrics_lines(snap, "i1")
    assert lines[0].startswith("pipeline,instance=i1 ")
    assert "sink_errors=2i" in lines[0]
    assert "sink_retries=7i" in lines[0]
    assert "mqtt_connected=1i" in lines[0]
    assert lines[1].startswith("dead_letters,instance=i1,reason=bad_json count=1i ")


def test_without_the_runner_fields_the_point_has_only_the_counters() -> None:
    lines = metrics_lines(PipelineMetrics().snapshot(), "i1")
    assert "sink_" not in lines[0]
    assert "mqtt_connected" not in lines[0]


def test_refused_points_are_dead_letters_and_a_pipeline_field() -> None:
    m = PipelineMetrics()
    m.on_refused_points("influx_refused", 3)
    m.on_refused_points("influx_tag_limit", 2)
    snap = m.snapshot()
    assert (snap["messages"], snap["dead_letters"], snap["refused_points"]) == (0, 5, 5)
    lines = metrics_lines(snap, "i1")
    assert "refused_points=5i" in lines[0]
    assert lines[1].startswith("dead_letters,instance=i1,reason=influx_refused count=3i ")
    assert lines[2].startswith("dead_letters,instance=i1,reason=influx_tag_limit count=2i ")


def test_a_metrics_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    done = threading.Event()

    def write(_lines: list[str]) -> None:
        calls.append(len(calls))
        if len(calls) >= 12:
            done.set()
        if 3 <= len(calls) <= 9:  # InfluxDB away for 7 reports
            raise InfluxWriteError("writing 2 lines failed after 0 retries in 0.0 s: no answer")

    reporter = MetricsReporter(
        PipelineMetrics(), "i1", lambda _snap: None, write, interval_s=0.005, write_every=1
    )
    with caplog.at_level(logging.INFO, logger="fieldline_pipeline.metrics"):
        reporter.start()
        assert done.wait(30)
        reporter.stop()
    records = [r for r in caplog.records if r.name == "fieldline_pipeline.metrics"]
    assert [r.levelno for r in records] == [logging.WARNING, logging.INFO]
    assert "writing metrics to InfluxDB failing since" in records[0].getMessage()
    assert "InfluxWriteError: writing 2 lines failed" in records[0].getMessage()
    assert "works again after" in records[1].getMessage()
    assert "(7 reports dropped)" in records[1].getMessage()
    assert all(r.exc_info is None for r in records)
