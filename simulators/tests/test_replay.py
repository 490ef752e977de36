"""Replay input handling (the broker part is in tests/test_sim_replay.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fieldline_sim.replay import (
    ReplayError,
    device_id_for,
    find_csv,
    load_all,
    load_series,
    parse_timestamp,
    plan_messages,
)


def test_device_ids_from_file_names() -> None:
    assert device_id_for("realKnownCause/nyc_taxi.csv") == "nyc_taxi"
    assert device_id_for("a/iio_us-east-1_i-a2eb1cd9_NetworkIn.csv") == (
        "iio_us-east-1_i-a2eb1cd9_NetworkIn"
    )
    assert device_id_for("x/my file (2).csv") == "my-file--2-"
    assert device_id_for("x/_hidden.csv") == "hidden"
    assert device_id_for("x/" + "a" * 80 + ".csv") == "a" * 64
    with pytest.raises(ReplayError, match="no device id"):
        device_id_for("x/___.csv")


def test_timestamps() -> None:
    assert parse_timestamp("2014-04-01 00:00:00") == 1_396_310_400_000
    assert parse_timestamp("2014-04-01T00:00:00Z") == 1_396_310_400_000
    assert parse_timestamp("2014-04-01T02:00:00+02:00") == 1_396_310_400_000
    assert parse_timestamp("2014-04-01 00:00:00.250") == 1_396_310_400_250
    assert parse_timestamp("1396310400") == 1_396_310_400_000
    assert parse_timestamp("1396310400123") == 1_396_310_400_123
    for bad in ("yesterday", "", "nan"):
        with pytest.raises(ValueError, match="timestamp"):
            parse_timestamp(bad)


def test_load_series(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text("timestamp,value\n2014-04-01 00:00:00,1.5\n2014-04-01 00:05:00,-2\n\n")
    assert load_series(f) == [(1_396_310_400_000, 1.5), (1_396_310_700_000, -2.0)]
    assert load_series(f, max_rows=1) == [(1_396_310_400_000, 1.5)]
    other = tmp_path / "o.csv"
    other.write_text("value,time\n3.0,2014-04-01 00:00:00\n")
    assert load_series(other) == [(1_396_310_400_000, 3.0)]  # columns by name
    bare = tmp_path / "b.csv"
    bare.write_text("2014-04-01 00:00:00,7\n")
    assert load_series(bare) == [(1_396_310_400_000, 7.0)]  # no header


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("timestamp,value\n", "has no rows"),
        ("timestamp\n", ":1: expected a time column and a value column"),
        ("timestamp,value\n2014-04-01 00:00:00,abc\n", ":2: value 'abc' is not a number"),
        ("timestamp,value\n2014-04-01 00:00:00,nan\n", ":2: value 'nan' is out of range"),
        ("timestamp,value\nsoon,1\n", ":2: timestamp 'soon' is not an ISO 8601 time"),
        (
            "timestamp,value\n1970-01-02 00:00:00,1\n",
            ":2: timestamp '1970-01-02 00:00:00' is outside",
        ),
        ("timestamp,value\n2014-04-01 00:00:00,1\n2014-04-01\n", ":3: expected at least 2 columns"),
    ],
)
def test_bad_files_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(ReplayError) as err:
        load_series(f)
    assert str(err.value).startswith(str(f))
    assert message in str(err.value)


def test_directories_and_collisions(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "deep").mkdir(parents=True)
    row = "timestamp,value\n2014-04-01 00:00:00,1\n"
    (tmp_path / "a" / "one.csv").write_text(row)
    (tmp_path / "b" / "deep" / "two.csv").write_text(row)
    (tmp_path / "b" / "notes.txt").write_text("not a series")
    assert [p.name for p in find_csv([tmp_path])] == ["one.csv", "two.csv"]
    assert [s.device for s in load_all([tmp_path])] == ["one", "two"]
    (tmp_path / "b" / "one.csv").write_text(row)
    with pytest.raises(ReplayError, match="both map to device id 'one'"):
        load_all([tmp_path])
    with pytest.raises(ReplayError, match="no such file"):
        find_csv([tmp_path / "nothing"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReplayError, match="no CSV files"):
        find_csv([empty])


def test_schedule_starts_every_file_at_once_and_batches_by_last_row(tmp_path: Path) -> None:
    (tmp_path / "early.csv").write_text(
        "timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:00:10,2\n2014-01-01 00:00:20,3\n"
    )
    (tmp_path / "late.csv").write_text(
        "timestamp,value\n2015-06-01 00:00:00,4\n2015-06-01 00:00:05,5\n"
        "2015-06-01 00:00:04,6\n"  # a step back in time keeps its place in the file
    )
    series = load_all([tmp_path])
    plan = [(b.due_ms, series[b.file].device, [r.value for r in b.readings]) for b in
            plan_messages(series, "v", 2)]  # fmt: skip
    assert plan == [
        (5_000, "late", [4.0, 5.0]),
        (5_000, "late", [6.0]),
        (10_000, "early", [1.0, 2.0]),
        (20_000, "early", [3.0]),
    ]
