"""The ``pipeline`` point carries what the Pipeline health dashboard reads."""

from __future__ import annotations

from fieldline_pipeline.metrics import PipelineMetrics, metrics_lines


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
