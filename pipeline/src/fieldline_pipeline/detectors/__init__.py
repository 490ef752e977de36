"""Streaming anomaly detectors, by name.

>>> det = create("novelty")
>>> det.update(1_700_000_000_000, 21.5)
0.0
"""

from __future__ import annotations

from collections.abc import Callable

from fieldline_pipeline.detectors.base import Detector, Hit
from fieldline_pipeline.detectors.ewma import EwmaDetector
from fieldline_pipeline.detectors.mad import MadDetector
from fieldline_pipeline.detectors.novelty import NoveltyDetector

__all__ = ["DEFAULT_DETECTOR", "REGISTRY", "Detector", "Hit", "create", "detector_class"]

#: name -> class (the factory: ``REGISTRY[name]()`` is a detector with default settings).
REGISTRY: dict[str, type[Detector]] = {
    cls.name: cls for cls in (NoveltyDetector, EwmaDetector, MadDetector)
}
#: The detector the pipeline runs unless told otherwise (the best on NAB).
DEFAULT_DETECTOR = NoveltyDetector.name


def detector_class(name: str) -> type[Detector]:
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY))
        raise ValueError(f"unknown detector {name!r} (known: {known})") from None


def create(name: str = DEFAULT_DETECTOR) -> Detector:
    """A fresh detector with its default settings."""
    factory: Callable[[], Detector] = detector_class(name)
    return factory()
