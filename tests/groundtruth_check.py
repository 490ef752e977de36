"""The exact comparison every fault test ends with: InfluxDB against the ground truth."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fieldline_localstack.influxdb import InfluxDB
from fieldline_sim.groundtruth import expected_windows, load_readings


def stored_windows(influxdb: InfluxDB, db: str) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    res = influxdb.query("SELECT * FROM reading_window GROUP BY *", db=db, epoch="ms")
    out = {}
    for series in res["results"][0].get("series", []):
        tags = series["tags"]
        cols = series["columns"]
        for row in series["values"]:
            point = dict(zip(cols, row))
            out[(tags["site"], tags["device"], tags["sensor"], point["time"])] = point
    return out


def assert_windows_match_ground_truth(
    influxdb: InfluxDB, db: str, ground_truth: Path, width_ms: int, site: str | None = None
) -> int:
    """Every window equals the ground truth exactly (fp to 1e-9); returns the readings.

    With ``site``, only that site's windows in InfluxDB are compared.
    """
    readings = load_readings(ground_truth)
    expected = expected_windows(readings, width_ms)
    stored = stored_windows(influxdb, db)
    if site is not None:
        stored = {k: v for k, v in stored.items() if k[0] == site}
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    assert not missing, f"{len(missing)} windows missing, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} unexpected windows, e.g. {extra[:3]}"
    wrong = []
    for key, exp in expected.items():
        got = stored[key]
        if got["count"] != exp.count:
            wrong.append((key, "count", got["count"], exp.count))
            continue
        for name in ("mean", "min", "max", "stddev", "first", "last"):
            if not math.isclose(got[name], getattr(exp, name), rel_tol=1e-9, abs_tol=1e-9):
                wrong.append((key, name, got[name], getattr(exp, name)))
    assert not wrong, f"{len(wrong)} windows differ, e.g. {wrong[:5]}"
    assert sum(p["count"] for p in stored.values()) == len(readings)
    return len(readings)
