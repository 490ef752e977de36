"""Detector throughput: readings per second of each detector, as the pipeline feeds them.

Each detector scores a noisy series with the pipeline's path: messages of
:data:`BATCH` readings of one sensor, decoded to columns and handed to
:class:`~fieldline_pipeline.detection.DeviceDetectors` (one block per sensor per
message). Single-threaded, in this process, no I/O; the best of
:data:`REPEATS` runs. Results go under the key ``detectors`` of the bench
results (``{name: readings_per_s}``).

``python -m bench.detectors`` prints them alone.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldline_pipeline.decode import Columns, Series
from fieldline_pipeline.detection import DetectionConfig, DeviceDetectors
from fieldline_pipeline.detectors import REGISTRY

BATCH = 100
READINGS = 200_000
REPEATS = 3
T0 = 1_700_000_000_000


def _messages(n: int, batch: int) -> list[Columns]:
    rng = random.Random(1)
    ts = [T0 + i * 1000 for i in range(n)]
    values = [20 + 5 * math.sin(i / 50) + rng.gauss(0, 0.3) for i in range(n)]
    return [
        Columns(
            "bench", "d1", seq, [Series("t", ts[i : i + batch], values[i : i + batch], "C")],
            len(ts[i : i + batch]), ts[min(i + batch, n) - 1],
        )
        for seq, i in enumerate(range(0, n, batch))
    ]  # fmt: skip


def measure(readings: int = READINGS, batch: int = BATCH) -> dict[str, int]:
    """name -> readings/s through ``DeviceDetectors.update`` at ``batch`` readings/message."""
    msgs = _messages(readings, batch)
    out: dict[str, int] = {}
    for name in sorted(REGISTRY):
        best = math.inf
        for _ in range(REPEATS):
            dd = DeviceDetectors(DetectionConfig(name))
            began = time.perf_counter()
            for m in msgs:
                dd.update(m)
            best = min(best, time.perf_counter() - began)
        out[name] = round(readings / best)
    return out


def with_detectors(main: Callable[[], int], results: Path) -> Callable[[], int]:
    """Run ``main`` (the bench), then add ``detectors`` to the results it wrote."""

    def run() -> int:
        code = main()
        latest = results / "latest.json"
        if latest.is_file():
            data: dict[str, Any] = json.loads(latest.read_text())
            data["detectors"] = measure()
            text = json.dumps(data, indent=2) + "\n"
            latest.write_text(text)
            stamped = sorted(results.glob("2*.json"))
            if stamped:  # the run's own file: the newest
                stamped[-1].write_text(text)
            print(f"detectors (readings/s at {BATCH}/message): {data['detectors']}")
        return code

    return run


if __name__ == "__main__":
    print(json.dumps({"detectors": measure()}))
