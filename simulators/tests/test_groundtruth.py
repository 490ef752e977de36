from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
from fieldline_edge.contract import Reading
from fieldline_sim.groundtruth import (
    GroundTruthWriter,
    Row,
    WindowStats,
    expected_windows,
    load_readings,
    load_summary,
    window_start,
)

T = 1_699_999_980_000  # a multiple of 1000 and of 60_000


def rows(device: str, sensor: str, points: list[tuple[int, float]]) -> list[Row]:
    return [("s", device, sensor, ts, v) for ts, v in points]


def test_window_start() -> None:
    assert window_start(T, 1000) == T
    assert window_start(T + 999, 1000) == T
    assert window_start(T + 1000, 1000) == T + 1000
    assert window_start(-1, 1000) == -1000  # floor, not truncation toward zero
    assert window_start(-1000, 1000) == -1000


def test_single_reading_window() -> None:
    w = expected_windows(rows("d", "t", [(T + 5, -3.5)]), 1000)
    assert w == {("s", "d", "t", T): WindowStats(1, -3.5, -3.5, -3.5, 0.0, -3.5, -3.5)}


def test_windows_split_by_time_device_and_sensor() -> None:
    readings = [
        *rows("d1", "t", [(T, 1.0), (T + 999, 3.0), (T + 1000, 10.0)]),
        *rows("d2", "t", [(T + 1, 5.0)]),
        *rows("d1", "h", [(T + 2, 7.0)]),
    ]
    w = expected_windows(readings, 1000)
    assert set(w) == {
        ("s", "d1", "t", T),
        ("s", "d1", "t", T + 1000),
        ("s", "d2", "t", T),
        ("s", "d1", "h", T),
    }
    assert w["s", "d1", "t", T] == WindowStats(2, 2.0, 1.0, 3.0, math.sqrt(2.0), 1.0, 3.0)
    assert w["s", "d1", "t", T + 1000].count == 1


def test_negative_values_and_sample_stddev() -> None:
    values = [-1.5, -20.25, 3.0, -0.0, 7.125]
    w = expected_windows(rows("d", "t", [(T + i, v) for i, v in enumerate(values)]), 60_000)
    stats = w["s", "d", "t", T]
    assert stats.count == 5
    assert stats.min == -20.25
    assert stats.max == 7.125
    assert stats.mean == pytest.approx(statistics.fmean(values), rel=1e-15)
    assert stats.stddev == pytest.approx(statistics.stdev(values), rel=1e-12)  # ddof=1
    assert (stats.first, stats.last) == (-1.5, 7.125)


def test_first_and_last_follow_timestamps_not_publish_order() -> None:
    # Published out of order: first/last go by ts.
    w = expected_windows(
        rows("d", "t", [(T + 500, 2.0), (T + 100, 1.0), (T + 900, 3.0), (T + 300, 4.0)]), 1000
    )
    stats = w["s", "d", "t", T]
    assert (stats.first, stats.last) == (1.0, 3.0)


def test_timestamp_ties() -> None:
    # Same ts: first is the first published of the earliest, last the last of the latest.
    points = [(T + 10, 1.0), (T + 10, 2.0), (T + 20, 3.0), (T + 20, 4.0), (T + 20, 5.0)]
    stats = expected_windows(rows("d", "t", points), 1000)["s", "d", "t", T]
    assert (stats.first, stats.last) == (1.0, 5.0)
    all_tied = [(T, 9.0), (T, -9.0), (T, 0.5)]
    stats = expected_windows(rows("d", "t", all_tied), 1000)["s", "d", "t", T]
    assert (stats.first, stats.last) == (9.0, 0.5)


def test_identical_values_have_zero_stddev() -> None:
    stats = expected_windows(rows("d", "t", [(T + i, 0.1) for i in range(10)]), 1000)
    assert stats["s", "d", "t", T].stddev == 0.0
    assert stats["s", "d", "t", T].mean == pytest.approx(0.1, rel=1e-15)


def test_rejects_bad_width() -> None:
    with pytest.raises(ValueError, match="width_ms"):
        expected_windows([], 0)


def test_writer_round_trips_floats_exactly(tmp_path: Path) -> None:
    values = [0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308, -123.456789012345678, 1 / 3]
    writer = GroundTruthWriter(tmp_path / "gt")
    writer.write("site", "dev-0001", [Reading("t", T + i, v, "°C") for i, v in enumerate(values)])
    writer.write("site", "dev-0002", [Reading("h", T, 2.5, "%")])
    writer.close({"published_readings": 7, "seed": 1})
    loaded = load_readings(tmp_path / "gt")
    assert loaded == [("site", "dev-0001", "t", T + i, v) for i, v in enumerate(values)] + [
        ("site", "dev-0002", "h", T, 2.5)
    ]
    assert math.copysign(1.0, loaded[1][4]) == -1.0  # -0.0 kept its sign
    assert load_summary(tmp_path / "gt") == {"published_readings": 7, "seed": 1}
    assert writer.rows == 7
    text = (tmp_path / "gt" / "readings.csv").read_text()
    assert text.splitlines()[0] == "site,device,sensor,ts,value"


def test_load_rejects_other_files(tmp_path: Path) -> None:
    (tmp_path / "readings.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected header"):
        load_readings(tmp_path)
