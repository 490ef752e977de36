"""The dataflow in memory: Bytewax TestingSource/TestingSink and run_main."""

import math
import statistics
from typing import Any

import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main
from fieldline_edge.contract import (
    DeadLetter,
    Reading,
    Status,
    decode_dead_letter,
    encode_status,
    encode_telemetry,
    status_topic,
    telemetry_topic,
)
from fieldline_pipeline.aggregates import Agg
from fieldline_pipeline.clock import IngestClock
from fieldline_pipeline.connectors.mqtt import MqttMessage
from fieldline_pipeline.dataflow import Accepted, _WindowLogic, build_dataflow, decode_message
from fieldline_pipeline.detection import Anomaly, DetectionConfig, DeviceDetectors
from fieldline_pipeline.detectors import detector_class
from fieldline_pipeline.metrics import PipelineMetrics
from fieldline_pipeline.windows import DeviceWindows, WindowConfig, WindowResult

T0 = 1_700_000_000_000
RECEIVED = T0 + 60_000  # when the intake received the messages


def telemetry(device: str, seq: int, readings: list[tuple[str, int, float]]) -> MqttMessage:
    payload = encode_telemetry(device, seq, [Reading(s, ts, v, "C") for s, ts, v in readings])
    return MqttMessage(telemetry_topic("lab", device), payload, RECEIVED)


class FrozenClock(IngestClock):
    """Ingest time standing at RECEIVED, as if the messages had just arrived."""

    def now_ms(self) -> int:
        return RECEIVED


def parse_line(line: str) -> tuple[dict[str, str], dict[str, float], int]:
    head, fields, ts = line.split(" ")
    tags = dict(kv.split("=") for kv in head.split(",")[1:])
    values = {k: float(v.rstrip("i")) for k, v in (kv.split("=") for kv in fields.split(","))}
    return tags, values, int(ts)


def run(
    msgs: list[MqttMessage], cfg: WindowConfig
) -> tuple[list[str], list[tuple[str, bytes]], PipelineMetrics]:
    lines: list[str] = []
    dead: list[tuple[str, bytes]] = []
    metrics = PipelineMetrics()
    flow = build_dataflow(
        TestingSource(msgs), TestingSink(lines), TestingSink(dead), cfg, metrics, FrozenClock()
    )
    run_main(flow)
    return lines, dead, metrics


def test_windows_per_device_and_sensor_match_the_readings() -> None:
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0)
    readings: dict[str, list[tuple[str, int, float]]] = {"d1": [], "d2": []}
    msgs = []
    for seq in range(30):
        for dev, scale in (("d1", 1.0), ("d2", -3.0)):
            batch = [
                ("temp", T0 + seq * 100 + k * 10, scale * (seq + k * 0.25)) for k in range(5)
            ] + [("hum", T0 + seq * 100, 50.0 + seq)]
            readings[dev].extend(batch)
            msgs.append(telemetry(dev, seq, batch))
    lines, dead, metrics = run(msgs, cfg)
    assert dead == []
    got = {}
    for line in lines:
        tags, f, ts = parse_line(line)
        assert line.startswith("reading_window,")
        got[(tags["device"], tags["sensor"], ts)] = f
    expected: dict[tuple[str, str, int], list[tuple[int, float]]] = {}
    for dev, rs in readings.items():
        for s, ts, v in rs:
            expected.setdefault((dev, s, ts - ts % 1_000), []).append((ts, v))
    assert set(got) == set(expected)
    for key, pairs in expected.items():
        vs = [v for _, v in pairs]
        f = got[key]
        assert f["count"] == len(vs)
        assert math.isclose(f["mean"], statistics.fmean(vs), rel_tol=1e-9)
        assert (f["min"], f["max"]) == (min(vs), max(vs))
        assert f["first"] == min(pairs, key=lambda p: p[0])[1]
        assert math.isclose(f["stddev"], statistics.stdev(vs) if len(vs) > 1 else 0.0, abs_tol=1e-9)
    snap = metrics.snapshot()
    assert snap["readings"] == sum(len(r) for r in readings.values())
    assert snap["messages"] == len(msgs)
    assert snap["windows"] == len(lines)
    assert snap["late_readings"] == 0


def test_late_readings_are_counted_and_the_window_is_not_rewritten() -> None:
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0)
    msgs = [
        telemetry("d1", 0, [("t", T0 + 10, 1.0)]),
        telemetry("d1", 1, [("t", T0 + 2_500, 2.0)]),  # closes [T0, T0+1s)
        telemetry("d1", 2, [("t", T0 + 20, 5.0), ("t", T0 + 2_600, 3.0)]),  # first one is late
    ]
    lines, dead, metrics = run(msgs, cfg)
    assert dead == []
    counts = {parse_line(line)[2]: parse_line(line)[1]["count"] for line in lines}
    assert counts == {T0: 1, T0 + 2_000: 2}
    assert metrics.snapshot()["late_readings"] == 1


def test_malformed_events_become_dead_letters_and_good_ones_still_flow() -> None:
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0)
    topic = telemetry_topic("lab", "d1")
    bad = [
        (b"not json at all", "not_json"),
        (b"[1,2,3]", "not_object"),
        (
            b'{"schema":"fieldline.telemetry/99","device":"d1","seq":1,"readings":[]}',
            "unknown_schema",
        ),
        (b'{"schema":"fieldline.telemetry/1","device":"d1","seq":"x","readings":[]}', "wrong_type"),
        (b'{"schema":"fieldline.telemetry/1","device":"d1","seq":1}', "missing_field"),
        (
            b'{"schema":"fieldline.telemetry/1","device":"d1","seq":1,'
            b'"readings":[{"sensor":"t","ts":1700000000000,"value":NaN}]}',
            "not_json",
        ),
        (b"x" * (1024 * 1024), "too_large"),
        (
            b'{"schema":"fieldline.telemetry/1","device":"d2","seq":1,'
            b'"readings":[{"sensor":"t","ts":1700000000000,"value":1}]}',
            "topic_mismatch",
        ),
    ]
    msgs = [MqttMessage(topic, payload, RECEIVED) for payload, _ in bad]
    msgs.append(telemetry("d1", 0, [("t", T0, 4.0)]))
    lines, dead, metrics = run(msgs, cfg)
    assert len(lines) == 1
    assert "count=1i" in lines[0]
    assert [t for t, _ in dead] == [f"fieldline/deadletter/{r}" for _, r in bad]
    for (payload, reason), (_, body) in zip(bad, dead):
        dl = decode_dead_letter(body)
        assert dl.reason == reason
        assert dl.payload == payload  # kept whole, so it can be replayed
        assert dl.topic == topic
        assert dl.detail
        assert orjson.loads(body)["received_ts"] == RECEIVED
    assert metrics.snapshot()["dead_letters_by_reason"]["not_json"] == 2


def test_duplicates_are_dropped_and_counted() -> None:
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0)
    first = telemetry("d1", 7, [("t", T0 + 10, 1.0)])
    msgs = [first, telemetry("d1", 8, [("t", T0 + 20, 2.0)]), first]  # QoS 1 redelivery
    lines, _, metrics = run(msgs, cfg)
    assert [parse_line(line)[1]["count"] for line in lines] == [2]
    assert metrics.snapshot()["duplicates"] == 1


def test_a_device_clock_far_ahead_is_dead_lettered_without_holding_others_back() -> None:
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0)
    hours_ahead = RECEIVED + 3 * 3600 * 1000
    msgs = [
        telemetry("skewed", 0, [("t", hours_ahead, 1.0)]),
        telemetry("d1", 0, [("t", T0 + 10, 1.0)]),
        telemetry("d1", 1, [("t", T0 + 1_500, 2.0)]),
        telemetry("d1", 2, [("t", T0 + 20, 3.0)]),  # late for d1 only
    ]
    lines, dead, metrics = run(msgs, cfg)
    assert [t for t, _ in dead] == ["fieldline/deadletter/future_timestamp"]
    assert sorted(parse_line(line)[1]["count"] for line in lines) == [1, 1]
    assert metrics.snapshot()["late_readings"] == 1


def test_a_window_that_cannot_be_written_costs_that_window_not_the_pipeline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldline_pipeline import dataflow

    real = dataflow.window_line

    def fussy(w: WindowResult) -> str:
        if w.device == "d1":
            raise ValueError("cannot be written")
        return real(w)

    monkeypatch.setattr(dataflow, "window_line", fussy)
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0)
    msgs = [telemetry("d1", 0, [("t", T0, 1.0)]), telemetry("d2", 0, [("t", T0, 2.0)])]
    lines, _, metrics = run(msgs, cfg)
    assert [parse_line(line)[0]["device"] for line in lines] == ["d2"]
    assert metrics.snapshot()["unwritable_windows"] == 1


def test_status_messages_become_device_status_points_and_bad_ones_dead_letters() -> None:
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0)
    online = encode_status(Status("d1", "online", T0, "fieldline-edge 0.2", {"t": "ok", "h": "x"}))
    offline = encode_status(Status("d2", "offline", T0 + 5, ""))
    # Sent before d5's clock was set: stored at its receive time, clock_set 0.
    booting = encode_status(Status("d5", "online", 42_000, "", {"_clock": "error: not set"}))
    msgs = [
        MqttMessage(status_topic("lab", "d1"), online, RECEIVED),
        MqttMessage(status_topic("lab", "d2"), offline, RECEIVED),
        MqttMessage(status_topic("lab", "d5"), booting, RECEIVED),
        MqttMessage(status_topic("lab", "d3"), b'{"schema":"fieldline.status/1"}', RECEIVED),
        MqttMessage(status_topic("lab", "d4"), b"", RECEIVED),  # a retained status cleared
        telemetry("d1", 0, [("t", T0, 4.0)]),
    ]
    lines, dead, _ = run(msgs, cfg)
    status = sorted(line for line in lines if line.startswith("device_status,"))
    assert status == [
        'device_status,device=d1,site=lab state="online",online=1i,'
        f'agent="fieldline-edge 0.2",sensors_error=1i,clock_set=1i {T0}',
        f'device_status,device=d2,site=lab state="offline",online=0i,agent="",sensors_error=0i,'
        f"clock_set=1i {T0 + 5}",
        f'device_status,device=d5,site=lab state="online",online=1i,agent="",sensors_error=1i,'
        f"clock_set=0i {RECEIVED}",
    ]
    assert len([line for line in lines if line.startswith("reading_window,")]) == 1
    assert [t for t, _ in dead] == ["fieldline/deadletter/missing_field"]


# ------------------------------------------------- no message may stop the dataflow


def dead_letters(dead: list[tuple[str, bytes]]) -> list[DeadLetter]:
    return [decode_dead_letter(body) for t, body in dead if t.startswith("fieldline/deadletter/")]


def window_counts(lines: list[str]) -> dict[tuple[str, str, int], tuple[float, float]]:
    """(device, sensor, start) -> (count, mean) of each reading_window line."""
    out = {}
    for line in lines:
        if line.startswith("reading_window,"):
            tags, f, ts = parse_line(line)
            out[(tags["device"], tags["sensor"], ts)] = (f["count"], f["mean"])
    return out


def two_sensors(device: str, seq: int, a: float, b: float, dt: int = 0) -> MqttMessage:
    return telemetry(device, seq, [("a", T0 + dt, a), ("b", T0 + dt, b)])


def test_a_message_failing_in_the_stateful_step_is_dead_lettered_whole_and_its_batch_lands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldline_pipeline import windows

    real = windows._merged

    def bug_on_99(x: Agg, y: Agg) -> Agg:
        if y.first == 99.0:
            raise ZeroDivisionError("a bug")
        return real(x, y)

    monkeypatch.setattr(windows, "_merged", bug_on_99)
    failing = two_sensors("d1", 1, 5.0, 99.0, 100)  # "a" merges, then "b" fails
    msgs = [
        two_sensors("d1", 0, 1.0, 1.0),
        failing,
        two_sensors("d1", 2, 2.0, 2.0, 200),
        two_sensors("d1", 1, 3.0, 3.0, 300),  # the failed seq, not taken for a duplicate
        two_sensors("d2", 0, 7.0, 7.0),
    ]
    lines: list[str] = []
    dead: list[tuple[str, bytes]] = []
    metrics = PipelineMetrics()
    flow = build_dataflow(
        TestingSource(msgs, batch_size=len(msgs)), TestingSink(lines), TestingSink(dead),
        WindowConfig(width_ms=1_000, lateness_ms=0), metrics, FrozenClock(),
    )  # fmt: skip
    run_main(flow)
    # Nothing of the failed message is in d1's windows, everything else is.
    assert window_counts(lines) == {
        ("d1", "a", T0): (3, 2.0),
        ("d1", "b", T0): (3, 2.0),
        ("d2", "a", T0): (1, 7.0),
        ("d2", "b", T0): (1, 7.0),
    }
    [dl] = dead_letters(dead)
    assert (dl.reason, dl.topic, dl.payload, dl.received_ts) == (
        "internal_error", failing.topic, failing.payload, RECEIVED,
    )  # fmt: skip
    assert "ZeroDivisionError: a bug" in dl.detail
    assert [t for t, _ in dead] == ["fieldline/deadletter/internal_error"]
    snap = metrics.snapshot()
    assert snap["dead_letters_by_reason"] == {"internal_error": 1}
    assert snap["readings"] == 8
    assert snap["duplicates"] == 0


def test_a_detector_failing_on_a_message_dead_letters_it_and_relearns_those_sensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cls = detector_class(DetectionConfig().detector)
    real = cls.detect_block

    def bug_on_99(self: Any, ts: Any, values: Any, threshold: Any = None) -> Any:
        out = real(self, ts, values, threshold)  # learns first: a half-done update
        if 99.0 in values:
            raise RuntimeError("detector bug")
        return out

    monkeypatch.setattr(cls, "detect_block", bug_on_99)
    logic = _WindowLogic(
        DeviceWindows(WindowConfig(width_ms=1_000, lateness_ms=0)), PipelineMetrics(),
        FrozenClock(), DeviceDetectors(DetectionConfig()),
    )  # fmt: skip
    batch = [
        decode_message(m)
        for m in (
            two_sensors("d1", 0, 1.0, 1.0),
            two_sensors("d1", 1, 99.0, 2.0, 100),
            two_sensors("d1", 2, 2.0, 2.0, 200),
        )
    ]
    assert all(isinstance(a, Accepted) for a in batch)
    assert logic._d is not None
    logic.on_batch(batch[:1])  # type: ignore[arg-type]
    learnt = dict(logic._d.sensors)
    assert set(learnt) == {"a", "b"}
    out, _ = logic.on_batch(batch[1:])  # type: ignore[arg-type]
    [dl] = [x for x in out if isinstance(x, DeadLetter)]
    assert dl.reason == "internal_error"
    assert "RuntimeError: detector bug" in dl.detail
    assert dl.payload == batch[1].payload  # type: ignore[union-attr]
    closed = logic._w.close_all()
    assert sorted((r.sensor, r.count, r.mean) for r in closed) == [("a", 2, 1.5), ("b", 2, 1.5)]
    # Both of the failed message's sensors started afresh (seq 2 taught the new ones).
    assert set(logic._d.sensors) == {"a", "b"}
    assert all(logic._d.sensors[s] is not learnt[s] for s in ("a", "b"))
    assert logic._w.is_duplicate(2)
    assert not logic._w.is_duplicate(1)


def test_any_seq_jump_is_accepted_and_stored() -> None:
    msgs = [
        telemetry("d1", 1, [("t", T0, 1.0)]),
        telemetry("d1", 1_800_000_000_000, [("t", T0 + 10, 2.0)]),  # restarted at its start time
        telemetry("d2", 5, [("t", T0, 3.0)]),
        telemetry("d2", 2**63 - 1, [("t", T0 + 10, 4.0)]),
        telemetry("d2", 0, [("t", T0 + 20, 5.0)]),
        telemetry("d2", 2**63 - 1, [("t", T0 + 30, 6.0)]),  # a copy: dropped
    ]
    lines, dead, metrics = run(msgs, WindowConfig(width_ms=1_000, lateness_ms=0))
    assert dead == []
    assert window_counts(lines) == {("d1", "t", T0): (2, 1.5), ("d2", "t", T0): (3, 4.0)}
    assert metrics.snapshot()["duplicates"] == 1


def hostile_statuses() -> list[tuple[bytes, str]]:
    def body(**kw: object) -> bytes:
        b: dict[str, object] = {
            "schema": "fieldline.status/1", "device": "d9", "state": "online", "ts": T0,
        }  # fmt: skip
        b.update(kw)
        return orjson.dumps(b)

    nested = b"[" * 1000 + b"]" * 1000
    return [
        (body(sensors=["x"]), "wrong_type"),
        (body(sensors="ok"), "wrong_type"),
        (body(sensors={"a": "ok"}).replace(b'"ok"', nested), "wrong_type"),
        (body(ts=10**19), "bad_timestamp"),
        (body(ts=9 * 10**15), "bad_timestamp"),
        (body(ts=9e15), "wrong_type"),
        (body(agent={"a": 1}), "wrong_type"),
    ]


def test_hostile_statuses_are_dead_lettered_and_telemetry_still_lands() -> None:
    bad = hostile_statuses()
    msgs = [MqttMessage(status_topic("lab", "d9"), p, RECEIVED) for p, _ in bad]
    msgs.append(telemetry("d1", 0, [("t", T0, 4.0)]))
    lines, dead, metrics = run(msgs, WindowConfig(width_ms=1_000, lateness_ms=0))
    assert [(dl.reason, dl.payload) for dl in dead_letters(dead)] == [(r, p) for p, r in bad]
    assert window_counts(lines) == {("d1", "t", T0): (1, 4.0)}
    assert not any(line.startswith("device_status,") for line in lines)
    assert metrics.snapshot()["dead_letters"] == len(bad)


def test_a_status_line_that_fails_is_dead_lettered_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldline_pipeline import dataflow

    def bug(u: Any) -> str:
        raise AttributeError("'list' object has no attribute 'values'")

    monkeypatch.setattr(dataflow, "status_line", bug)
    payload = encode_status(Status("d1", "online", T0, "x", {"t": "ok"}))
    msgs = [
        MqttMessage(status_topic("lab", "d1"), payload, RECEIVED),
        telemetry("d1", 0, [("t", T0, 4.0)]),
    ]
    lines, dead, metrics = run(msgs, WindowConfig(width_ms=1_000, lateness_ms=0))
    [dl] = dead_letters(dead)
    assert (dl.reason, dl.topic, dl.payload) == (
        "internal_error",
        status_topic("lab", "d1"),
        payload,
    )
    assert "status_line: AttributeError" in dl.detail
    assert window_counts(lines) == {("d1", "t", T0): (1, 4.0)}
    assert metrics.snapshot()["dead_letters_by_reason"] == {"internal_error": 1}


def test_a_decoder_bug_with_an_unencodable_message_is_still_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldline_pipeline import dataflow

    def bug(topic: str, payload: bytes, latest: Any) -> Any:
        raise KeyError("\ud800 a lone surrogate")  # not valid UTF-8 text for the encoder

    monkeypatch.setattr(dataflow, "decode_columns", bug)
    msg = telemetry("d1", 0, [("t", T0, 4.0)])
    _lines, dead, metrics = run([msg], WindowConfig(width_ms=1_000, lateness_ms=0))
    [dl] = dead_letters(dead)
    assert (dl.reason, dl.payload) == ("internal_error", msg.payload)
    assert "decode: KeyError" in dl.detail
    assert metrics.snapshot()["dead_letters"] == 1


def test_any_failure_to_format_a_window_costs_that_point_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldline_pipeline import dataflow

    real = dataflow.window_line

    def bug(w: WindowResult) -> str:
        if w.device == "d1":
            raise RecursionError("maximum recursion depth exceeded")
        return real(w)

    monkeypatch.setattr(dataflow, "window_line", bug)
    msgs = [telemetry("d1", 0, [("t", T0, 1.0)]), telemetry("d2", 0, [("t", T0, 2.0)])]
    lines, _, metrics = run(msgs, WindowConfig(width_ms=1_000, lateness_ms=0))
    assert [parse_line(line)[0]["device"] for line in lines] == ["d2"]
    assert metrics.snapshot()["unwritable_windows"] == 1


def test_an_alert_that_cannot_be_encoded_becomes_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldline_pipeline import dataflow

    def spotted(self: DeviceDetectors, cols: Any) -> list[Anomaly]:
        return [Anomaly(cols.site, cols.device, "t", "novelty", T0, 1.0, 0.99, 0.0)]

    def bug(a: Anomaly) -> tuple[str, bytes]:
        raise TypeError("cannot encode")

    monkeypatch.setattr(DeviceDetectors, "update", spotted)
    monkeypatch.setattr(dataflow, "anomaly_alert", bug)
    lines: list[str] = []
    out: list[tuple[str, bytes]] = []
    metrics = PipelineMetrics()
    flow = build_dataflow(
        TestingSource([telemetry("d1", 0, [("t", T0, 1.0)])]), TestingSink(lines),
        TestingSink(out), WindowConfig(width_ms=1_000, lateness_ms=0), metrics, FrozenClock(),
        detection=DetectionConfig(),
    )  # fmt: skip
    run_main(flow)
    [dl] = dead_letters(out)
    assert (dl.reason, dl.topic) == ("internal_error", "fieldline/lab/d1/alerts")
    assert b"Anomaly(" in dl.payload
    assert "alert_encode: TypeError" in dl.detail
    assert any(line.startswith("anomaly,") for line in lines)  # the point is still written
    assert window_counts(lines) == {("d1", "t", T0): (1, 1.0)}


class SettableClock(IngestClock):
    """An ingest clock a test moves by hand."""

    def __init__(self, now: int) -> None:
        super().__init__()
        self.now = now

    def now_ms(self) -> int:
        return self.now


def test_a_silent_device_is_looked_at_again_within_the_idle_timeout_whatever_the_clock() -> None:
    """A log with no watermark yet gives an ingest clock of 0: the wake-up must not
    be put off for decades, or a restored device that never sends again keeps its
    windows open; once the clock moves on, the next look closes them."""
    from datetime import datetime, timezone

    cfg = WindowConfig(width_ms=1_000, lateness_ms=0, idle_timeout_ms=5_000)
    clock = SettableClock(0)
    logic = _WindowLogic(DeviceWindows(cfg), PipelineMetrics(), clock)
    [accepted] = [decode_message(telemetry("d1", 0, [("t", T0, 1.0)]))]
    assert isinstance(accepted, Accepted)
    logic.on_batch([accepted])
    wake = logic.notify_at()
    assert wake is not None
    assert (wake - datetime.now(timezone.utc)).total_seconds() <= cfg.idle_timeout_ms / 1000
    assert logic.on_notify()[0] == []  # the clock says nothing yet: nothing closes
    clock.now = RECEIVED + cfg.idle_timeout_ms
    closed, _ = logic.on_notify()
    assert [(w.device, w.start_ms, w.count) for w in closed] == [("d1", T0 - T0 % 1_000, 1)]
