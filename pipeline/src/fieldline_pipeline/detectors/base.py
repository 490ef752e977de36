"""What every streaming detector offers, and the helpers they share.

A detector follows one series (one sensor of one device). It sees each reading
once, in arrival order, and returns an anomaly score in [0, 1] for it before it
learns from it, in O(1) time and memory: its state is a fixed set of numbers
(and small fixed-size lists), kept as ``__slots__`` and copied out by
:meth:`Detector.snapshot` as plain, picklable data for Bytewax recovery.

A reading is an anomaly when its score is at or above the detector's
threshold (``default_threshold`` unless the pipeline is told otherwise).

``_run`` is the one tight loop each detector implements, over the readings of
one series in one message; the public methods are thin wrappers around it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

D = TypeVar("D", bound="Detector")

#: A detection: (index in the block, score, expected value).
Hit = tuple[int, float, float]


class Detector(ABC):
    """A streaming anomaly detector for one series."""

    __slots__ = ("expected",)

    #: Registry name; the ``detector`` tag of ``anomaly`` points and alerts.
    name: ClassVar[str]
    #: Score at or above which a reading is reported, unless configured otherwise.
    default_threshold: ClassVar[float]
    #: Bumped when the meaning of the state changes; restore() rejects others.
    state_version: ClassVar[int] = 1

    def __init__(self) -> None:
        #: What the detector expected the last reading to be.
        self.expected = math.nan

    @abstractmethod
    def _run(
        self,
        ts: Sequence[int],
        values: Sequence[float],
        threshold: float,
        scores: list[float] | None,
    ) -> list[Hit]:
        """Score and learn ``values`` in order; append every score to ``scores``
        (if given) and return the readings scoring >= ``threshold``."""

    def update(self, ts_ms: int, value: float) -> float:
        """Score one reading, then learn from it."""
        out: list[float] = []
        self._run((ts_ms,), (value,), math.inf, out)
        return out[0]

    def update_block(self, ts: Sequence[int], values: Sequence[float]) -> list[float]:
        """Scores of many readings of the series, as many ``update`` calls would give."""
        out: list[float] = []
        self._run(ts, values, math.inf, out)
        return out

    def detect_block(
        self, ts: Sequence[int], values: Sequence[float], threshold: float | None = None
    ) -> list[Hit]:
        """Learn many readings; return (index, score, expected) of those at or above
        the threshold. The pipeline's path: no list of every score is built."""
        return self._run(
            ts, values, self.default_threshold if threshold is None else threshold, None
        )

    # ------------------------------------------------------------------ recovery

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain data: the slots' values (floats, ints, lists) in
        a fixed order. Compact on purpose: Bytewax pickles it every epoch for every
        series that saw a reading."""
        state = [getattr(self, slot) for slot in _slots(type(self))]
        return {
            "detector": self.name,
            "version": self.state_version,
            "state": [list(v) if isinstance(v, list) else v for v in state],
        }

    @classmethod
    def restore(cls: type[D], snap: dict[str, Any]) -> D:
        if snap.get("detector") != cls.name or snap.get("version") != cls.state_version:
            raise ValueError(
                f"state of {snap.get('detector')!r} v{snap.get('version')} "
                f"is not {cls.name!r} v{cls.state_version}"
            )
        slots = _slots(cls)
        values = snap["state"]
        if len(values) != len(slots):
            raise ValueError(f"state of {cls.name!r} has {len(values)} values, not {len(slots)}")
        det = cls.__new__(cls)
        for slot, value in zip(slots, values):
            setattr(det, slot, list(value) if isinstance(value, list) else value)
        return det


_SLOTS: dict[type[Detector], tuple[str, ...]] = {}


def _slots(cls: type[Detector]) -> tuple[str, ...]:
    """Every slot of ``cls`` and its bases, base first, in declaration order."""
    slots = _SLOTS.get(cls)
    if slots is None:
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            names.extend(klass.__dict__.get("__slots__", ()))
        slots = _SLOTS[cls] = tuple(names)
    return slots


def squash(z: float) -> float:
    """A non-negative deviation (in spreads) as a score in [0, 1): z / (1 + z)."""
    return z / (1.0 + z)
