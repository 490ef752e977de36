"""The hot path's decoder agrees with the contract's reference decoder."""

from __future__ import annotations

import json
from typing import Any

import pytest
from fieldline_edge.contract import (
    SCHEMA_TELEMETRY_V2,
    ContractError,
    Reading,
    decode_telemetry,
    encode_telemetry,
    telemetry_topic,
)
from fieldline_pipeline.decode import Columns, columns_of, decode_columns
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

T0 = 1_700_000_000_000
TOPIC = telemetry_topic("lab", "d1")


def outcome(fn: Any, topic: str, payload: bytes, latest: int | None) -> Columns | str:
    try:
        out = fn(topic, payload, latest)
    except ContractError as exc:
        return exc.reason
    return out if isinstance(out, Columns) else columns_of(out)


def edgy(valid: st.SearchStrategy[Any], invalid: st.SearchStrategy[Any]) -> Any:
    """Mostly valid values, sometimes one just past the contract's edge."""
    return st.integers(0, 12).flatmap(lambda i: invalid if i == 0 else valid)


# Values close to the contract's edges, so both sides of every check are drawn.
sensors = edgy(
    st.sampled_from(["t", "hum", "a.b-c_d", "é", "t" * 64, "\u00c5"]),
    # "e" + combining accent and the Angstrom sign: ids that are not in Unicode NFC
    st.sampled_from(["", "_x", "x y", "t" * 65, "t\n", 7, "e\u0301", "\u212b"]),
)
stamps = edgy(
    st.integers(min_value=T0 - 20_000, max_value=T0 + 90_000)
    | st.sampled_from([946_684_800_000, 4_102_444_799_999]),
    st.sampled_from([946_684_799_999, 4_102_444_800_000, 1.7e12, True, "1700000000000", -1]),
)
values = edgy(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e100, max_value=1e100)
    | st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([1.0000000000000002e100, -1e101, 10**120, 1e300, True, None, "1"]),
)
units = edgy(
    st.sampled_from(["", "C", "%", "m/s²", "x" * 16]),
    st.sampled_from(["a\\b", "a\nb", "x" * 17, None, 3]),
)


@st.composite
def readings(draw: st.DrawFn) -> dict[str, Any]:
    r: dict[str, Any] = {"sensor": draw(sensors), "ts": draw(stamps), "value": draw(values)}
    if draw(st.booleans()):
        r["unit"] = draw(units)
    if draw(st.integers(0, 29)) == 0:
        del r[draw(st.sampled_from(["sensor", "ts", "value"]))]
    if draw(st.integers(0, 9)) == 0:
        r["extra"] = {"nested": [1, 2]}
    return r


def damaged(draw: st.DrawFn, obj: dict[str, Any]) -> bytes:
    """``obj`` as JSON, now and then without one of its fields or cut short."""
    if draw(st.integers(0, 19)) == 0:
        del obj[draw(st.sampled_from(list(obj)))]
    text = json.dumps(obj)
    if draw(st.integers(0, 19)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode()


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = {
        "schema": draw(edgy(st.just("fieldline.telemetry/1"), st.just("fieldline.telemetry/2"))),
        "device": draw(edgy(st.just("d1"), st.just("d2"))),
        "seq": draw(edgy(st.integers(0, 2**63 - 1), st.sampled_from([2**63, -1, True, 1.0, "1"]))),
        "readings": draw(st.lists(readings(), min_size=0, max_size=6)),
    }
    return damaged(draw, obj)


@st.composite
def series_v2(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 5)) if draw(st.integers(0, 19)) else 0
    s: dict[str, Any] = {
        "sensor": draw(sensors),
        "ts": draw(st.lists(stamps, min_size=n, max_size=n)),
        "values": draw(st.lists(values, min_size=n, max_size=n)),
    }
    if draw(st.booleans()):
        s["unit"] = draw(units)
    if draw(st.integers(0, 14)) == 0:  # lengths that differ
        s["values"] = s["values"] + [1.0]
    if draw(st.integers(0, 29)) == 0:
        del s[draw(st.sampled_from(["sensor", "ts", "values"]))]
    if draw(st.integers(0, 29)) == 0:
        s[draw(st.sampled_from(["ts", "values"]))] = draw(st.sampled_from([5, None, "x"]))
    return s


@st.composite
def messages_v2(draw: st.DrawFn) -> bytes:
    obj: dict[str, Any] = {
        "schema": draw(edgy(st.just("fieldline.telemetry/2"), st.just("fieldline.telemetry/1"))),
        "device": draw(edgy(st.just("d1"), st.just("d2"))),
        "seq": draw(edgy(st.integers(0, 2**63 - 1), st.sampled_from([2**63, -1, True, 1.0, "1"]))),
        "series": draw(edgy(st.lists(series_v2(), min_size=1, max_size=4), st.just([]))),
    }
    return damaged(draw, obj)


@settings(
    max_examples=1500, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(payload=messages_v2(), latest=st.sampled_from([None, T0 + 5_000, T0 + 60_000]))
@example(payload=b'{"schema":"fieldline.telemetry/2","device":"d1","seq":1,"series":['
         b'{"sensor":"t","unit":"C","ts":[1700000000000],"values":[1]},'
         b'{"sensor":"t","unit":"F","ts":[1700000000001],"values":[2]}]}',
         latest=None)  # fmt: skip
def test_fast_decoder_agrees_with_the_contract_on_v2(payload: bytes, latest: int | None) -> None:
    assert outcome(decode_columns, TOPIC, payload, latest) == outcome(
        decode_telemetry, TOPIC, payload, latest
    )


def test_v2_and_v1_give_the_same_columns() -> None:
    rs = [Reading(("t", "h")[i % 2], T0 + i, i / 8, ("C", "%")[i % 2]) for i in range(40)]
    v1 = decode_columns(TOPIC, encode_telemetry("d1", 3, rs))
    v2 = decode_columns(TOPIC, encode_telemetry("d1", 3, rs, SCHEMA_TELEMETRY_V2))
    assert v1 == v2
    assert [s.units for s in v2.series] == ["C", "%"]


@settings(
    max_examples=1500, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(payload=messages(), latest=st.sampled_from([None, T0 + 5_000, T0 + 60_000]))
@example(payload=b'{"schema":"fieldline.telemetry/1","device":"d1","seq":1,"seq":2,'
         b'"readings":[{"sensor":"t","ts":1700000000000,"ts":1700000000001,"value":1}]}',
         latest=None)  # fmt: skip
@example(payload=b"[1]", latest=None)
@example(payload=b'{"schema":"fieldline.telemetry/1","device":"d1","seq":1,"readings":'
         b'[{"sensor":"t","ts":1700000000000,"value":NaN}]}', latest=None)  # fmt: skip
def test_fast_decoder_accepts_and_rejects_exactly_as_the_contract(
    payload: bytes, latest: int | None
) -> None:
    assert outcome(decode_columns, TOPIC, payload, latest) == outcome(
        decode_telemetry, TOPIC, payload, latest
    )


@pytest.mark.parametrize(
    "topic",
    [
        "fieldline/lab/d1/status",
        "fieldline/lab/d 1/telemetry",
        "other/lab/d1/telemetry",
        "fieldline/lab/cafe\u0301/telemetry",  # NFD
        "fieldline/\u212blab/d1/telemetry",  # ANGSTROM SIGN, not NFC
    ],
)
def test_bad_topics_get_the_contract_reason(topic: str) -> None:
    payload = encode_telemetry("d1", 1, [Reading("t", T0, 1.0)])
    assert outcome(decode_columns, topic, payload, None) == outcome(
        decode_telemetry, topic, payload, None
    )


def test_columns_group_by_sensor_in_arrival_order_and_keep_per_reading_units() -> None:
    rs = [
        Reading("t", T0 + 2, 1.0, "C"),
        Reading("h", T0, 50.0, "%"),
        Reading("t", T0 + 1, 2.0, "F"),
        Reading("t", T0 + 3, 3.0, "C"),
    ]
    cols = decode_columns(TOPIC, encode_telemetry("d1", 9, rs))
    assert (cols.site, cols.device, cols.seq, cols.count, cols.newest_ts) == (
        "lab", "d1", 9, 4, T0 + 3,
    )  # fmt: skip
    by = {s.sensor: s for s in cols.series}
    assert by["t"].ts == [T0 + 2, T0 + 1, T0 + 3]
    assert by["t"].values == [1.0, 2.0, 3.0]
    assert by["t"].units == ["C", "F", "C"]
    assert by["h"].units == "%"


def test_a_full_name_cache_starts_over_without_trusting_an_empty_sensor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldline_pipeline import decode

    monkeypatch.setattr(decode, "_CACHE_MAX", 2)
    monkeypatch.setattr(decode, "_good_sensors", set())
    monkeypatch.setattr(decode, "_good_units", {""})
    for i in range(5):  # fills and resets both caches
        decode_columns(TOPIC, encode_telemetry("d1", i, [Reading(f"s{i}", T0, 1.0, f"u{i}")]))
    bad = b'{"schema":"fieldline.telemetry/1","device":"d1","seq":9,"readings":[{"sensor":"","ts":1700000000000,"value":1}]}'  # noqa: E501
    assert outcome(decode_columns, TOPIC, bad, None) == "bad_id"
    ok = encode_telemetry("d1", 10, [Reading("t", T0, 1.0)])  # the empty unit stays valid
    assert outcome(decode_columns, TOPIC, ok, None) == outcome(decode_telemetry, TOPIC, ok, None)


@pytest.mark.parametrize("sensor", ["cafe\u0301", "\u212b"])
def test_a_sensor_id_not_in_nfc_is_bad_id_on_both_paths(sensor: str) -> None:
    for schema in ("fieldline.telemetry/1", SCHEMA_TELEMETRY_V2):
        payload = encode_telemetry("d1", 1, [Reading(sensor, T0, 1.0)], schema)
        assert outcome(decode_columns, TOPIC, payload, None) == "bad_id"
        assert outcome(decode_telemetry, TOPIC, payload, None) == "bad_id"
