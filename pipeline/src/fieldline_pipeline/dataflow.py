"""The Fieldline dataflow: decode → validate → window → sink.

::

    MQTT source ─► decode ─┬─ valid ─► key by device ─► windows ─┬─► line protocol ─► InfluxDB
                           │                           + detect ─┴─► alerts ─┐
                           └─ dead letter ─► MQTT fieldline/deadletter/<reason>, alerts

Sources and sinks are parameters, so the same flow runs against MQTT and
InfluxDB in production and against Bytewax's testing connectors in unit tests.
State is keyed by ``site/device``; Bytewax routes each device to one worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink
from fieldline_edge.contract import (
    TELEMETRY_SUBSCRIPTION,
    ContractError,
    DeadLetter,
    Status,
    dead_letter_topic,
    decode_status,
    encode_dead_letter,
)

from fieldline_pipeline.clock import IngestClock, WallClock
from fieldline_pipeline.connectors.mqtt import MqttMessage
from fieldline_pipeline.decode import Columns, decode_columns
from fieldline_pipeline.detection import (
    Anomaly,
    DetectionConfig,
    DeviceDetectors,
    anomaly_alert,
    anomaly_line,
)
from fieldline_pipeline.lineprotocol import format_line
from fieldline_pipeline.metrics import METRICS, PipelineMetrics
from fieldline_pipeline.windows import DeviceWindows, WindowConfig, WindowResult

__all__ = ["TELEMETRY_SUBSCRIPTION", "build_dataflow", "decode_message", "window_line"]

log = logging.getLogger(__name__)

T = TypeVar("T")

WINDOW_MEASUREMENT = "reading_window"
STATUS_MEASUREMENT = "device_status"
#: Readings stamped further ahead of the pipeline's receive time than this come
#: from a device whose clock is wrong; they would hold windows open and are
#: dead-lettered (reason ``future_timestamp``) instead.
DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000


class Accepted(NamedTuple):
    """A valid message, as per-sensor columns, and when the intake received it."""

    msg: Columns
    received_ms: int


class StatusUpdate(NamedTuple):
    """A device's status message, stored as a ``device_status`` point."""

    site: str
    status: Status


def decode_message(
    msg: MqttMessage,
    metrics: PipelineMetrics = METRICS,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
) -> Accepted | StatusUpdate | DeadLetter | None:
    """Decode one message, or turn it into a dead letter with the reason. Never raises.

    ``None`` is an empty status message: how a retained status is cleared
    (MQTT 3.1.1 §3.3.1.3), not an event.

    The future check compares with the message's receive time, not with the time
    of processing, so a replay decides exactly as the first run did.
    """
    try:
        if msg.topic.endswith("/status"):
            if not msg.payload:
                return None
            status = decode_status(msg.topic, msg.payload)
            return StatusUpdate(msg.topic.split("/", 2)[1], status)
        cols = decode_columns(msg.topic, msg.payload, msg.received_ms + max_future_ms)
    except ContractError as exc:
        metrics.on_dead_letter(exc.reason)
        return DeadLetter(exc.reason, exc.detail, msg.topic, msg.payload, msg.received_ms)
    except Exception as exc:  # a decoder bug must cost one message, not the pipeline
        metrics.on_dead_letter("internal_error")
        return DeadLetter(
            "internal_error", f"{type(exc).__name__}: {exc}"[:300], msg.topic, msg.payload,
            msg.received_ms,
        )  # fmt: skip
    metrics.on_message()
    return Accepted(cols, msg.received_ms)


def status_line(u: StatusUpdate) -> str:
    """A status message as an InfluxDB point; identity = site, device and status time."""
    st = u.status
    failing = sum(1 for v in (st.sensors or {}).values() if str(v) != "ok")
    return format_line(
        STATUS_MEASUREMENT,
        {"site": u.site, "device": st.device},
        {
            "state": st.state,
            "online": 1 if st.state == "online" else 0,
            "agent": st.agent,
            "sensors_error": failing,
        },
        st.ts,
    )


def window_line(w: WindowResult) -> str:
    """A closed window as an InfluxDB point; identity = tags + window start."""
    return format_line(
        WINDOW_MEASUREMENT,
        {"site": w.site, "device": w.device, "sensor": w.sensor, "unit": w.unit},
        {
            "count": w.count,
            "mean": w.mean,
            "min": w.min,
            "max": w.max,
            "stddev": w.stddev,
            "first": w.first,
            "last": w.last,
        },
        w.start_ms,
    )


class _WindowLogic(StatefulBatchLogic[Accepted, WindowResult | Anomaly, dict[str, Any]]):
    def __init__(
        self,
        windows: DeviceWindows,
        metrics: PipelineMetrics,
        clock: IngestClock,
        detectors: DeviceDetectors | None = None,
    ) -> None:
        self._w = windows
        self._metrics = metrics
        self._clock = clock
        self._d = detectors

    def on_batch(self, values: list[Accepted]) -> tuple[list[WindowResult | Anomaly], bool]:
        w = self._w
        d = self._d
        out: list[WindowResult | Anomaly] = []
        readings = late_total = duplicates = anomalies = 0
        for cols, received_ms in values:
            if w.is_duplicate(cols.seq):
                duplicates += 1
                continue
            if d is not None:  # after the dedupe: a redelivered message is not scored twice
                found = d.update(cols)
                if found:
                    anomalies += len(found)
                    out.extend(found)
            readings += cols.count
            closed, late = w.add_columns(cols, received_ms)
            out.extend(closed)
            for lr in late:
                late_total += lr.count
        m = self._metrics
        m.on_readings(readings, late_total, duplicates)
        m.on_event_time(w.max_ts)
        m.on_windows(len(out) - anomalies)
        if anomalies:
            m.on_anomalies(anomalies)
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[WindowResult | Anomaly], bool]:
        now = self._clock.now_ms()
        out: list[WindowResult | Anomaly] = list(self._w.on_time(now))
        self._metrics.on_windows(len(out))
        if self._w.expired(now):
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[WindowResult | Anomaly], bool]:
        if not self._w.config.flush_on_eof:
            return [], StatefulBatchLogic.RETAIN
        out: list[WindowResult | Anomaly] = list(self._w.close_all())
        self._metrics.on_windows(len(out))
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # The wake-up is in ingest time; sleep until the ingest clock could reach it.
        wait_ms = max(0, self._w.next_wakeup_ms() - self._clock.now_ms())
        return datetime.now(timezone.utc) + timedelta(milliseconds=wait_ms)

    def snapshot(self) -> dict[str, Any]:
        snap = self._w.snapshot()
        if self._d is not None:
            # Beside the windows' keys; a snapshot without it restores with fresh detectors.
            snap["detection"] = self._d.snapshot()
        return snap


def _writable(
    what: str, fmt: Callable[[T], str], metrics: PipelineMetrics
) -> Callable[[T], str | None]:
    """``fmt`` that costs the point, never the pipeline, when it cannot be written.

    The contract keeps values, ids and units writable; should a point still not
    fit line protocol, it is logged and counted and dropped: a crash here would
    repeat on every replay of the same input.
    """

    def to_line(item: T) -> str | None:
        try:
            return fmt(item)
        except ValueError:
            log.exception("%s cannot be written as line protocol: %r", what, item)
            metrics.on_unwritable_window()
            return None

    return to_line


def build_dataflow(
    source: Source[MqttMessage],
    windows_sink: Sink[str],
    dead_letter_sink: Sink[tuple[str, bytes]],
    config: WindowConfig,
    metrics: PipelineMetrics = METRICS,
    clock: IngestClock | None = None,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    name: str = "fieldline",
    detection: DetectionConfig | None = None,
) -> Dataflow:
    """The dataflow; ``windows_sink`` gets line protocol, ``dead_letter_sink`` MQTT messages.

    ``clock`` is the source's ingest clock (see :mod:`fieldline_pipeline.clock`).
    With ``detection``, each device's readings are also scored in the same
    stateful step: ``anomaly`` points join the line protocol, alerts the MQTT output.
    """
    clock_ = clock if clock is not None else WallClock()
    flow = Dataflow(name)
    msgs = op.input("mqtt_in", flow, source)
    decoded = op.map("decode", msgs, lambda m: decode_message(m, metrics, max_future_ms))
    split = op.branch("valid", decoded, lambda x: isinstance(x, Accepted))
    valid: Any = split.trues
    others = op.branch("status", split.falses, lambda x: isinstance(x, StatusUpdate))
    statuses: Any = others.trues
    invalid: Any = others.falses

    dead = op.filter_map(
        "dead_letter_encode",
        invalid,
        lambda d: None if d is None else (dead_letter_topic(d.reason), encode_dead_letter(d)),
    )
    keyed = op.key_on("by_device", valid, lambda a: f"{a.msg.site}/{a.msg.device}")

    def builder(resume: dict[str, Any] | None) -> _WindowLogic:
        w = DeviceWindows(config) if resume is None else DeviceWindows.restore(resume, config)
        d = None
        if detection is not None:
            d = DeviceDetectors.restore((resume or {}).get("detection"), detection)
        return _WindowLogic(w, metrics, clock_, d)

    results: Any = op.stateful_batch("windows", keyed, builder)
    windows: Any = results
    found: Any = None
    if detection is not None:
        by_kind = op.branch("anomaly_or_window", results, lambda kv: isinstance(kv[1], Anomaly))
        found, windows = by_kind.trues, by_kind.falses

    def keyed_window(kv: tuple[str, WindowResult]) -> str:
        return window_line(kv[1])

    def keyed_anomaly(kv: tuple[str, Anomaly]) -> str:
        return anomaly_line(kv[1])

    window_lines = _writable("window", keyed_window, metrics)
    all_lines = [
        op.filter_map("window_line", windows, window_lines),
        op.filter_map("status_line", statuses, _writable("status", status_line, metrics)),
    ]
    if found is not None:
        anomaly_lines = _writable("anomaly", keyed_anomaly, metrics)
        all_lines.append(op.filter_map("anomaly_line", found, anomaly_lines))
        alerts = op.map("alert_encode", found, lambda kv: anomaly_alert(kv[1]))
        dead = op.merge("mqtt_messages", dead, alerts)
    op.output("dead_letters_out", dead, dead_letter_sink)
    op.output("influx_out", op.merge("influx_lines", *all_lines), windows_sink)
    return flow
