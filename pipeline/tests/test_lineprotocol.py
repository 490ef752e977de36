"""Line protocol formatting: escaping, values, whole lines (pure, no server)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fieldline_pipeline.lineprotocol import (
    escape_field_key,
    escape_field_string,
    escape_measurement,
    escape_tag,
    format_line,
    format_value,
)
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ("a,b", r"a\,b"),
        ("a b", r"a\ b"),
        ("a=b", r"a\=b"),
        ("a, b=c", r"a\,\ b\=c"),
        # A lone backslash is literal to the parser: it passes through as is.
        (r"C:\temp", r"C:\temp"),
        ("ünïcødé 温度", r"ünïcødé\ 温度"),
        ('quote"d', 'quote"d'),
    ],
)
def test_escape_tag(raw: str, escaped: str) -> None:
    assert escape_tag(raw) == escaped


@pytest.mark.parametrize(
    "bad",
    ["", "two\nlines", "cr\rhere", "ends\\", "a\\,b", "a\\ b", "a\\=b"],
)
def test_escape_tag_rejects_what_line_protocol_cannot_carry(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every case has its own message
        escape_tag(bad)


def test_escape_measurement() -> None:
    # Measurements escape comma and space, but not the equals sign.
    assert escape_measurement("reading window,x=1") == r"reading\ window\,x=1"
    assert escape_measurement("température") == "température"


@pytest.mark.parametrize("bad", ["", "#comment", "a\nb", "ends\\", "a\\=b"])
def test_escape_measurement_rejects(bad: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        escape_measurement(bad)


def test_escape_field_key() -> None:
    assert escape_field_key("mean value,=") == r"mean\ value\,\="


def test_escape_field_string() -> None:
    assert escape_field_string('say "hi"') == r'"say \"hi\""'
    assert escape_field_string("back\\slash") == r'"back\\slash"'
    assert escape_field_string("a, b=c") == '"a, b=c"'
    assert escape_field_string("") == '""'
    # Newlines are fine inside a quoted string field.
    assert escape_field_string("l1\nl2") == '"l1\nl2"'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (True, "true"),
        (False, "false"),
        (0, "0i"),
        (-42, "-42i"),
        (2**63 - 1, "9223372036854775807i"),
        (-(2**63), "-9223372036854775808i"),
        (1.0, "1.0"),
        (0.1, "0.1"),
        (-0.0, "-0.0"),
        (1e100, "1e+100"),
        (5e-324, "5e-324"),
        (np.float64(2.5), "2.5"),
        ("text", '"text"'),
    ],
)
def test_format_value(value: float | int | bool | str, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 2**63, -(2**63) - 1])
def test_format_value_rejects_unrepresentable_numbers(bad: float) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        format_value(bad)


def test_format_value_rejects_other_types() -> None:
    with pytest.raises(TypeError):
        format_value(None)  # type: ignore[arg-type]


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trips_exactly(x: float) -> None:
    text = format_value(x)
    assert float(text) == x
    assert math.copysign(1.0, float(text)) == math.copysign(1.0, x)
    assert not text.endswith("i")


def test_format_line_sorts_tags_and_drops_empty_values() -> None:
    line = format_line(
        "reading_window",
        {"sensor": "temp", "device": "dev 1", "site": "", "area": "a,b"},
        {"mean": 21.5, "count": 3, "ok": True, "note": 'a "b"'},
        1_700_000_000_000,
    )
    assert line == (
        r"reading_window,area=a\,b,device=dev\ 1,sensor=temp "
        r'mean=21.5,count=3i,ok=true,note="a \"b\"" 1700000000000'
    )


def test_format_line_without_tags_or_timestamp() -> None:
    assert format_line("pipeline", {}, {"lag_ms": 12}, None) == "pipeline lag_ms=12i"


def test_format_line_needs_a_field() -> None:
    with pytest.raises(ValueError, match="at least one field"):
        format_line("m", {"a": "b"}, {}, 1)


@pytest.mark.parametrize(
    ("tags", "fields"),
    [({"time": "x"}, {"v": 1.0}), ({}, {"time": 1.0}), ({"": "x"}, {"v": 1.0})],
)
def test_format_line_rejects_bad_keys(tags: dict[str, str], fields: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        format_line("m", tags, fields, 1)


def test_format_line_rejects_non_int_timestamp() -> None:
    with pytest.raises(TypeError):
        format_line("m", {}, {"v": 1.0}, 1.5)  # type: ignore[arg-type]
