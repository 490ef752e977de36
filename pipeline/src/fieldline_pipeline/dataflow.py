"""The Fieldline dataflow: decode → validate → window → sink.

::

    MQTT source ─► decode ─┬─ valid ─► key by device ─► windows ─┬─► line protocol ─► InfluxDB
                           │                           + detect ─┴─► alerts ─┐
                           └─ dead letter ─► MQTT fieldline/deadletter/<reason>, alerts

Sources and sinks are parameters, so the same flow runs against MQTT and
InfluxDB in production and against Bytewax's testing connectors in unit tests.
State is keyed by ``site/device``; Bytewax routes each device to one worker.

No message can stop the flow: every per-message step turns any exception into
a dead letter (reason ``internal_error``, with the exception, the original
topic and payload) or, for an output that has no single original message (a
window or anomaly point, an alert), into a logged and counted drop. A crash
there would repeat on every replay of the ingest log after a restart.
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
    alerts_topic,
    dead_letter_topic,
    decode_status,
    encode_dead_letter,
    status_clock_unset,
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
from fieldline_pipeline.windows import DeviceWindows, LateReadings, WindowConfig, WindowResult

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
    """A valid message, as per-sensor columns, and when the intake received it.

    The original topic and payload ride along, so that a failure further on
    still dead-letters the message whole.
    """

    msg: Columns
    received_ms: int
    topic: str = ""
    payload: bytes = b""
    #: On the ingest clock, for idle closing; None where it equals ``received_ms``.
    ingest_ms: int | None = None


class StatusUpdate(NamedTuple):
    """A device's status message, stored as a ``device_status`` point."""

    site: str
    status: Status
    topic: str = ""
    payload: bytes = b""
    received_ms: int = 0


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, short, for a dead letter's detail."""
    try:
        text = str(exc)
    except Exception:  # an exception whose __str__ fails
        text = "(message unavailable)"
    return f"{type(exc).__name__}: {text}"[:300]


def internal_error(
    step: str, exc: BaseException, topic: str, payload: bytes, received_ms: int,
    metrics: PipelineMetrics,
) -> DeadLetter:  # fmt: skip
    """A dead letter for a message that ``step`` failed on unexpectedly (a bug), counted."""
    log.error("%s failed on a message from %s: %s", step, topic, describe(exc), exc_info=exc)
    metrics.on_dead_letter("internal_error")
    return DeadLetter("internal_error", f"{step}: {describe(exc)}", topic, payload, received_ms)


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
            return StatusUpdate(
                msg.topic.split("/", 2)[1], status, msg.topic, msg.payload, msg.received_ms
            )
        cols = decode_columns(msg.topic, msg.payload, msg.received_ms + max_future_ms)
    except ContractError as exc:
        metrics.on_dead_letter(exc.reason)
        return DeadLetter(exc.reason, exc.detail, msg.topic, msg.payload, msg.received_ms)
    except Exception as exc:  # a decoder bug must cost one message, not the pipeline
        return internal_error("decode", exc, msg.topic, msg.payload, msg.received_ms, metrics)
    metrics.on_message()
    return Accepted(cols, msg.received_ms, msg.topic, msg.payload, msg.ingest_ms)


def status_line(u: StatusUpdate) -> str:
    """A status message as an InfluxDB point; identity = site, device and status time.

    A status stamped before the device's clock was set is stored at the time the
    intake received it (logged with the message, so a replay writes the same
    point), with ``clock_set`` 0: the operator sees the device and why it holds
    its readings back, not a point in 1970.
    """
    st = u.status
    failing = sum(1 for v in (st.sensors or {}).values() if str(v) != "ok")
    unset = status_clock_unset(st)
    return format_line(
        STATUS_MEASUREMENT,
        {"site": u.site, "device": st.device},
        {
            "state": st.state,
            "online": 1 if st.state == "online" else 0,
            "agent": st.agent,
            "sensors_error": failing,
            "clock_set": 0 if unset else 1,
        },
        u.received_ms if unset else st.ts,
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


Out = WindowResult | Anomaly | DeadLetter


class _WindowLogic(StatefulBatchLogic[Accepted, Out, dict[str, Any]]):
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

    def on_batch(self, values: list[Accepted]) -> tuple[list[Out], bool]:
        """Each message in turn, all or nothing (:meth:`_apply`).

        A message that fails is dead-lettered (``internal_error``) with the
        device's state as it was before it; the batch's other messages go on.
        """
        w = self._w
        out: list[Out] = []
        readings = late_total = duplicates = anomalies = windows = 0
        for a in values:
            try:
                ingest_ms = a.received_ms if a.ingest_ms is None else a.ingest_ms
                applied = self._apply(a.msg, ingest_ms)
            except Exception as exc:
                out.append(
                    internal_error("windows", exc, a.topic, a.payload, a.received_ms, self._metrics)
                )
                continue
            if applied is None:
                duplicates += 1
                continue
            found, closed, late = applied
            anomalies += len(found)
            out.extend(found)
            windows += len(closed)
            out.extend(closed)
            readings += a.msg.count
            for lr in late:
                late_total += lr.count
        m = self._metrics
        m.on_readings(readings, late_total, duplicates)
        m.on_event_time(w.max_ts)
        m.on_windows(windows)
        if anomalies:
            m.on_anomalies(anomalies)
        return out, StatefulBatchLogic.RETAIN

    def _apply(
        self, cols: Columns, ingest_ms: int
    ) -> tuple[list[Anomaly], list[WindowResult], list[LateReadings]] | None:
        """Add one message (received at ``ingest_ms`` on the ingest clock) to the
        device's state; None for a duplicate.

        The windows are computed first without being changed, then the
        detectors learn, then the windows and the dedupe take the message in
        plain assignments. Whatever raises on the way, the windows and the
        dedupe are as they were; the detectors of the message's sensors, which
        may have learnt part of it, start afresh.
        """
        w = self._w
        seq_state = w.seq_state()
        try:
            if w.is_duplicate(cols.seq):
                return None
            pending = w.prepare(cols, ingest_ms)
            found: list[Anomaly] = []
            d = self._d
            if d is not None:  # after the dedupe: a redelivered message is not scored twice
                try:
                    found = d.update(cols)
                except Exception:
                    d.forget(s.sensor for s in cols.series)
                    raise
        except Exception:
            w.set_seq_state(seq_state)
            raise
        closed, late = w.commit(pending)
        return found, closed, late

    def on_notify(self) -> tuple[list[Out], bool]:
        now = self._clock.now_ms()
        out: list[Out] = list(self._w.on_time(now))
        self._metrics.on_windows(len(out))
        if self._w.expired(now):
            return out, StatefulBatchLogic.DISCARD
        return out, StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Out], bool]:
        if not self._w.config.flush_on_eof:
            return [], StatefulBatchLogic.RETAIN
        out: list[Out] = list(self._w.close_all())
        self._metrics.on_windows(len(out))
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        # The wake-up is in ingest time; sleep until the ingest clock could reach it,
        # but no longer than the idle timeout: the ingest clock can run ahead of the
        # wall clock (a backlog read after a restart) or start from nothing (a log
        # with no watermark yet), and a silent device gets no other call to wake it.
        wait_ms = max(0, self._w.next_wakeup_ms() - self._clock.now_ms())
        wait_ms = min(wait_ms, self._w.config.idle_timeout_ms)
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
    fit line protocol, or formatting it fail in any other way, it is logged
    (with all its values) and counted (``unwritable_windows``) and dropped: a
    crash here would repeat on every replay of the same input.
    """

    def to_line(item: T) -> str | None:
        try:
            return fmt(item)
        except Exception:
            log.exception("%s cannot be written as line protocol: %r", what, item)
            metrics.on_unwritable_window()
            return None

    return to_line


def _status_out(metrics: PipelineMetrics) -> Callable[[StatusUpdate], str | DeadLetter]:
    """:func:`status_line`, or the status as an ``internal_error`` dead letter."""

    def out(u: StatusUpdate) -> str | DeadLetter:
        try:
            return status_line(u)
        except Exception as exc:
            return internal_error("status_line", exc, u.topic, u.payload, u.received_ms, metrics)

    return out


def _alert_out(metrics: PipelineMetrics) -> Callable[[tuple[str, Anomaly]], tuple[str, bytes]]:
    """The alert of an anomaly, or, should it not encode, a dead letter that says so."""

    def out(kv: tuple[str, Anomaly]) -> tuple[str, bytes]:
        a = kv[1]
        try:
            return anomaly_alert(a)
        except Exception as exc:
            # No original message: the dead letter carries the anomaly itself.
            dl = internal_error(
                "alert_encode", exc, alerts_topic(a.site, a.device), repr(a).encode(), a.ts,
                metrics,
            )  # fmt: skip
            return dead_letter_topic(dl.reason), _encode_dead_letter(dl)

    return out


def _text(s: str) -> str:
    """``s`` as text any JSON encoder takes (lone surrogates escaped)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _encode_dead_letter(d: DeadLetter) -> bytes:
    try:
        return encode_dead_letter(d)
    except Exception:
        # A detail or topic that is not valid Unicode text (lone surrogates).
        return encode_dead_letter(d._replace(detail=_text(d.detail), topic=_text(d.topic)))


def _dead_letter_message(d: DeadLetter | None) -> tuple[str, bytes] | None:
    """A dead letter as an MQTT message; None for nothing to publish.

    Should even that fail, the dead letter (already counted) is logged with
    its reason and topic and dropped, never the pipeline.
    """
    if d is None:
        return None
    try:
        return dead_letter_topic(d.reason), _encode_dead_letter(d)
    except Exception:
        log.exception("a dead letter (%s, from %r) cannot be encoded", d.reason, d.topic)
        return None


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

    keyed = op.key_on("by_device", valid, lambda a: f"{a.msg.site}/{a.msg.device}")

    def builder(resume: dict[str, Any] | None) -> _WindowLogic:
        w = DeviceWindows(config) if resume is None else DeviceWindows.restore(resume, config)
        d = None
        if detection is not None:
            d = DeviceDetectors.restore((resume or {}).get("detection"), detection)
        return _WindowLogic(w, metrics, clock_, d)

    results: Any = op.stateful_batch("windows", keyed, builder)
    failed = op.branch("failed", results, lambda kv: isinstance(kv[1], DeadLetter))
    windows: Any = failed.falses
    found: Any = None
    if detection is not None:
        by_kind = op.branch("anomaly_or_window", windows, lambda kv: isinstance(kv[1], Anomaly))
        found, windows = by_kind.trues, by_kind.falses

    def keyed_window(kv: tuple[str, WindowResult]) -> str:
        return window_line(kv[1])

    def keyed_anomaly(kv: tuple[str, Anomaly]) -> str:
        return anomaly_line(kv[1])

    status_out = op.branch(
        "status_ok", op.map("status_line", statuses, _status_out(metrics)),
        lambda x: isinstance(x, str),
    )  # fmt: skip
    all_lines: list[Any] = [
        op.filter_map("window_line", windows, _writable("window", keyed_window, metrics)),
        status_out.trues,
    ]
    unkeyed_failed = op.map("failed_message", failed.trues, lambda kv: kv[1])
    all_dead: Any = op.merge("all_dead_letters", invalid, status_out.falses, unkeyed_failed)
    dead = op.filter_map("dead_letter_encode", all_dead, _dead_letter_message)
    if found is not None:
        anomaly_lines = _writable("anomaly", keyed_anomaly, metrics)
        all_lines.append(op.filter_map("anomaly_line", found, anomaly_lines))
        alerts = op.map("alert_encode", found, _alert_out(metrics))
        dead = op.merge("mqtt_messages", dead, alerts)
    op.output("dead_letters_out", dead, dead_letter_sink)
    op.output("influx_out", op.merge("influx_lines", *all_lines), windows_sink)
    return flow
