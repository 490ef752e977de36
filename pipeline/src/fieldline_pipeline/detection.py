"""Anomaly detection per device: one streaming detector per sensor; pure logic, no I/O.

The dataflow keeps one :class:`DeviceDetectors` in each device's state (next to
its windows), feeds it every non-duplicate message, and turns what it returns
into ``anomaly`` points and alerts. Readings are scored in arrival order, each
sensor's readings of a message in one block (:meth:`Detector.detect_block`).

Bounds: at most ``max_sensors`` detectors per device (readings of further
sensors are not scored, and counted in :attr:`DeviceDetectors.unscored`); each
detector's state is O(1). The state goes away with the device's state when the
device has been silent for the state TTL.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from fieldline_edge.contract import Alert, Telemetry, alerts_topic, encode_alert

from fieldline_pipeline.decode import Columns, columns_of
from fieldline_pipeline.detectors import DEFAULT_DETECTOR, Detector, detector_class
from fieldline_pipeline.lineprotocol import format_line

log = logging.getLogger(__name__)

ANOMALY_MEASUREMENT = "anomaly"


@dataclass(frozen=True)
class DetectionConfig:
    """Which detector runs, and from which score on a reading is an anomaly.

    >>> DetectionConfig("ewma", threshold=0.9).effective_threshold
    0.9
    """

    detector: str = DEFAULT_DETECTOR
    #: None: the detector's own default threshold.
    threshold: float | None = None
    max_sensors: int = 256

    def __post_init__(self) -> None:
        detector_class(self.detector)  # raises ValueError naming the known ones
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"the anomaly threshold must be in [0, 1], got {self.threshold}")
        if self.max_sensors < 1:
            raise ValueError(f"max_sensors must be >= 1, got {self.max_sensors}")

    @property
    def effective_threshold(self) -> float:
        if self.threshold is not None:
            return self.threshold
        return detector_class(self.detector).default_threshold


class Anomaly(NamedTuple):
    """One anomalous reading; ``ts`` is the reading's time (ms)."""

    site: str
    device: str
    sensor: str
    detector: str
    ts: int
    value: float
    score: float
    expected: float


def anomaly_line(a: Anomaly) -> str:
    """An ``anomaly`` point; identity = tags + reading time, so a replay overwrites it."""
    return format_line(
        ANOMALY_MEASUREMENT,
        {"site": a.site, "device": a.device, "sensor": a.sensor, "detector": a.detector},
        {"value": a.value, "score": a.score, "expected": a.expected},
        a.ts,
    )


def anomaly_alert(a: Anomaly) -> tuple[str, bytes]:
    """The alert event: (topic, payload) for the MQTT sink."""
    alert = Alert(a.device, a.sensor, a.ts, a.value, a.score, a.expected, a.detector)
    return alerts_topic(a.site, a.device), encode_alert(alert)


class DeviceDetectors:
    """The detectors of one device's sensors."""

    def __init__(self, config: DetectionConfig) -> None:
        self.config = config
        self._cls = detector_class(config.detector)
        self._threshold = config.effective_threshold
        self.sensors: dict[str, Detector] = {}
        #: Readings of sensors beyond ``max_sensors``, not scored.
        self.unscored = 0

    def update(self, msg: Columns | Telemetry) -> list[Anomaly]:
        """Score and learn one message's readings; return the anomalies among them.

        The dataflow passes the decoder's per-sensor columns; a :class:`Telemetry`
        is split into them first.
        """
        cols = msg if isinstance(msg, Columns) else columns_of(msg)
        out: list[Anomaly] = []
        sensors = self.sensors
        name = self._cls.name
        for sensor, ts_list, values, _units in cols.series:
            det = sensors.get(sensor)
            if det is None:
                if len(sensors) >= self.config.max_sensors:
                    self.unscored += len(values)
                    continue
                det = sensors[sensor] = self._cls()
            for i, score, expected in det.detect_block(ts_list, values, self._threshold):
                value = values[i]
                out.append(
                    Anomaly(
                        cols.site, cols.device, sensor, name, ts_list[i], value, score,
                        expected if math.isfinite(expected) else value,
                    )
                )  # fmt: skip
        return out

    def forget(self, sensors: Iterable[str]) -> None:
        """Drop these sensors' detectors: they start learning afresh.

        For a message that failed half-way through :meth:`update`: a detector
        that learnt part of it, or stopped inside its own update, is not
        trusted further.
        """
        for sensor in sensors:
            if self.sensors.pop(sensor, None) is not None:
                log.warning("sensor %r of %s starts learning afresh", sensor, self.config.detector)

    # ------------------------------------------------------------------ recovery

    def snapshot(self) -> dict[str, Any]:
        return {
            "detector": self._cls.name,
            "unscored": self.unscored,
            "sensors": {s: d.snapshot() for s, d in self.sensors.items()},
        }

    @classmethod
    def restore(cls, snap: dict[str, Any] | None, config: DetectionConfig) -> DeviceDetectors:
        """From a snapshot; a snapshot of another detector (or none) starts afresh."""
        dd = cls(config)
        if not snap:
            return dd
        if snap.get("detector") != dd._cls.name:
            log.info(
                "detector changed from %r to %r: sensors start learning afresh",
                snap.get("detector"),
                dd._cls.name,
            )
            return dd
        dd.unscored = int(snap.get("unscored", 0))
        for sensor, state in snap.get("sensors", {}).items():
            try:
                dd.sensors[sensor] = dd._cls.restore(state)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                # A state this version cannot read costs that sensor its history,
                # never the pipeline (a crash here would repeat on every restart).
                log.warning("sensor %r starts learning afresh: %s", sensor, exc)
                dd.sensors[sensor] = dd._cls()
        return dd
