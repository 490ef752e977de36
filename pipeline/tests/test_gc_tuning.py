"""The collector, set for the hot path, still reclaims reference cycles by itself."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest
from fieldline_pipeline.gc_tuning import YOUNG_THRESHOLD, tune_gc


@pytest.fixture
def tuned() -> Iterator[None]:
    before = gc.get_threshold()
    tune_gc()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the cyclic collector can free it


def test_cycles_are_collected_without_an_explicit_collect(tuned: None) -> None:
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD
    freed = 0

    def count(_ref: object) -> None:
        nonlocal freed
        freed += 1

    refs = []
    for _ in range(3 * YOUNG_THRESHOLD):
        refs.append(weakref.ref(Node(), count))
    assert freed > YOUNG_THRESHOLD  # passes ran on their own and freed the cycles
    assert gc.get_freeze_count() > 0  # start-up objects are out of the collector's sight
