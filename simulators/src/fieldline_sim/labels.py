"""Ground-truth labels of injected anomalies: one JSON object per line, and an MQTT topic.

A label says which readings an injected fault touched::

    {"site": "greenhouse", "device": "gh-0003", "sensor": "temperature", "kind": "spike",
     "start_ms": 1772323200000, "end_ms": 1772323201000, "params": {"magnitude": 6.0}}

A reading of ``device``/``sensor`` is affected when ``start_ms <= ts < end_ms``,
in the device's true time (before any clock skew). ``sensor`` is ``"*"`` for a
fault of the whole device (dropout, clock skew, duplicate or out-of-order
delivery). Labels are written when the fault begins, in virtual-time order.

Topic: ``fieldline/_labels/<site>``, QoS 1, not retained, one label per message.
It has three levels, so no ``fieldline/+/+/...`` subscription of a device-facing
service ever sees it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from fieldline_edge import contract

LABELS_TOPIC_PREFIX = contract.TOPIC_ROOT + "/_labels"
#: Faults of a whole device carry this sensor name.
ALL_SENSORS = "*"


class Label(NamedTuple):
    """One injected anomaly: ``[start_ms, end_ms)`` of ``device``/``sensor``."""

    site: str
    device: str
    sensor: str
    kind: str
    start_ms: int
    end_ms: int
    params: dict[str, Any]

    def to_json(self) -> str:
        return json.dumps(self._asdict(), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_json(cls, line: str | bytes) -> Label:
        raw = json.loads(line)
        return cls(**{k: raw[k] for k in cls._fields})

    def covers(self, device: str, sensor: str, ts: int) -> bool:
        """Whether a reading of ``device``/``sensor`` at true time ``ts`` is in this label."""
        return (
            device == self.device
            and self.sensor in (sensor, ALL_SENSORS)
            and self.start_ms <= ts < self.end_ms
        )


def labels_topic(site: str) -> str:
    return f"{LABELS_TOPIC_PREFIX}/{contract.check_id('site', site)}"


class LabelWriter:
    """Appends labels to a JSON-lines file as they happen."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = open(self.path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
        self.count = 0

    def write(self, labels: Iterable[Label]) -> None:
        for label in labels:
            self._file.write(label.to_json() + "\n")
            self.count += 1

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def load_labels(path: str | os.PathLike[str]) -> list[Label]:
    """The labels of a JSON-lines file, in file order."""
    with open(path, encoding="utf-8") as f:
        return [Label.from_json(line) for line in f if line.strip()]
