"""A scenario's readings and labels written to files, as fast as the CPU allows, no broker.

Writes ``readings.csv`` and ``summary.json`` (the ground-truth format of
:mod:`fieldline_sim.groundtruth`) and ``labels.jsonl`` (:mod:`fieldline_sim.labels`).
For a given scenario, seed and start the three files are identical, byte for
byte, on every run: nothing in them comes from the wall clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldline_sim.generator import FleetGenerator, Outgoing
from fieldline_sim.groundtruth import GroundTruthWriter
from fieldline_sim.labels import LabelWriter
from fieldline_sim.scenario import Scenario

LABELS_FILE = "labels.jsonl"
#: Seconds between two progress callbacks.
PROGRESS_INTERVAL_S = 0.5


def generate_files(
    scenario: Scenario,
    out: str | os.PathLike[str],
    *,
    start_ms: int | None = None,
    progress: Callable[[float, int, float], None] | None = None,
) -> dict[str, Any]:
    """Generate a finite scenario into folder ``out``; return counts and the rate.

    ``progress(fraction done, readings, readings per second)`` is called now and then.
    """
    if scenario.duration_s <= 0:
        raise ValueError("a generated scenario needs a duration > 0")
    start = start_ms if start_ms is not None else scenario.start_ms
    if start is None:
        start = int(time.time()) * 1000
    gen = FleetGenerator(scenario, start)
    folder = Path(out)
    gt = GroundTruthWriter(folder)
    labels = LabelWriter(folder / LABELS_FILE)
    readings = messages = duplicates = 0
    t0 = time.perf_counter()
    next_report = t0 + PROGRESS_INTERVAL_S

    def write(batch: list[Outgoing]) -> None:
        nonlocal readings, messages, duplicates
        for m in batch:
            if m.duplicate:
                duplicates += 1
                continue
            gt.write(scenario.site, gen.devices[m.device], m.readings)
            messages += 1
            readings += len(m.readings)

    try:
        for tick in gen.ticks():
            labels.write(tick.labels)
            write(tick.messages)
            if progress is not None and time.perf_counter() >= next_report:
                elapsed = time.perf_counter() - t0
                done = (tick.ts_ms - start) / 1000 / scenario.duration_s
                progress(done, readings, readings / elapsed)
                next_report += PROGRESS_INTERVAL_S
        write(gen.finish())
    finally:
        labels.close()
    elapsed = time.perf_counter() - t0
    summary = {
        "published_readings": readings,
        "published_messages": messages,
        "duplicate_messages": duplicates,
        "unacked_messages": 0,
        "devices": scenario.devices,
        "sensors": sorted({s.name for g in scenario.groups for s in g.sensors}),
        "started_ms": start,
        "ended_ms": gen.end_ms,
        "seed": scenario.seed,
        "site": scenario.site,
        "scenario": scenario.name,
        "labels": labels.count,
        "dropped_readings": gen.dropped_readings,
    }
    gt.close(summary)
    if progress is not None:
        progress(1.0, readings, readings / max(elapsed, 1e-9))
    return {
        "devices": scenario.devices,
        "readings": readings,
        "messages": messages,
        "duplicates": duplicates,
        "labels": labels.count,
        "wall_s": round(elapsed, 3),
        "readings_per_s": round(readings / max(elapsed, 1e-9)),
    }
