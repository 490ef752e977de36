"""The event contract: round trips, validation reasons, topics."""

import json

import pytest
from fieldline_edge import contract as c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TS = 1_700_000_000_000
TOPIC = c.telemetry_topic("plant-1", "dev-1")


def payload(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "schema": c.SCHEMA_TELEMETRY_V1,
        "device": "dev-1",
        "seq": 3,
        "readings": [{"sensor": "temp", "ts": TS, "value": 21.5, "unit": "C"}],
    }
    body.update(overrides)
    return json.dumps(body).encode()


@pytest.fixture(params=["installed", "stdlib"], autouse=True)
def json_parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run every test with the fast parser (orjson, as in the pipeline) and with the
    standard library's (as on a device), which must give the same answers."""
    if request.param == "stdlib":
        monkeypatch.setattr(c, "_loads", json.loads)
    return str(request.param)


finite = st.floats(min_value=-c.MAX_ABS_VALUE, max_value=c.MAX_ABS_VALUE)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(st.integers(c.MIN_TIMESTAMP_MS, c.MAX_TIMESTAMP_MS - 1), finite),
        min_size=1,
        max_size=50,
    )
)
def test_telemetry_round_trips_exactly(rows: list[tuple[int, float]]) -> None:
    readings = [c.Reading("temp", ts, v, "C") for ts, v in rows]
    tel = c.decode_telemetry(TOPIC, c.encode_telemetry("dev-1", 7, readings))
    assert tel == c.Telemetry("plant-1", "dev-1", 7, readings)


def test_integer_values_become_floats() -> None:
    tel = c.decode_telemetry(TOPIC, payload(readings=[{"sensor": "t", "ts": TS, "value": 3}]))
    assert tel.readings == [c.Reading("t", TS, 3.0, "")]
    assert type(tel.readings[0].value) is float


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{", "not_json"),
        (b'"just a string"', "not_object"),
        (payload(schema="fieldline.telemetry/3"), "unknown_schema"),
        (payload(schema=None), "unknown_schema"),
        (payload(device="dev-2"), "topic_mismatch"),
        (payload(seq=-1), "wrong_type"),
        (payload(seq=True), "wrong_type"),
        (payload(seq=1.5), "wrong_type"),
        (payload(readings={}), "wrong_type"),
        (payload(readings=[]), "empty_batch"),
        (payload(readings=[1]), "wrong_type"),
        (payload(readings=[{"sensor": "t", "ts": TS}]), "missing_field"),
        (payload(readings=[{"sensor": "t", "ts": TS, "value": "1"}]), "wrong_type"),
        (payload(readings=[{"sensor": "t", "ts": TS, "value": True}]), "wrong_type"),
        (payload(readings=[{"sensor": "t", "ts": 1.5e12, "value": 1}]), "wrong_type"),
        (payload(readings=[{"sensor": "t", "ts": 0, "value": 1}]), "bad_timestamp"),
        (payload(readings=[{"sensor": "t", "ts": 10**15, "value": 1}]), "bad_timestamp"),
        (payload(readings=[{"sensor": "a/b", "ts": TS, "value": 1}]), "bad_id"),
        (payload(readings=[{"sensor": "t", "ts": TS, "value": 1, "unit": 5}]), "wrong_type"),
        (
            payload(
                readings=[{"sensor": "t", "ts": TS, "value": 1}] * (c.MAX_READINGS_PER_MESSAGE + 1)
            ),
            "too_large",
        ),
        (b" " * (c.MAX_PAYLOAD_BYTES + 1), "too_large"),
    ],
)
def test_invalid_telemetry_names_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(TOPIC, body)
    assert info.value.reason == reason
    assert info.value.detail


def payload_v2(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "schema": c.SCHEMA_TELEMETRY_V2,
        "device": "dev-1",
        "seq": 3,
        "series": [{"sensor": "temp", "unit": "C", "ts": [TS, TS + 1], "values": [21.5, 3]}],
    }
    body.update(overrides)
    return json.dumps(body).encode()


def series(**overrides: object) -> list[dict[str, object]]:
    s: dict[str, object] = {"sensor": "t", "ts": [TS], "values": [1.0]}
    s.update(overrides)
    return [s]


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["temp", "hum", "vib"]),
            st.sampled_from(["", "C", "%"]),
            st.integers(c.MIN_TIMESTAMP_MS, c.MAX_TIMESTAMP_MS - 1),
            finite,
        ),
        min_size=1,
        max_size=50,
    )
)
def test_v2_carries_the_same_readings_as_v1(rows: list[tuple[str, str, int, float]]) -> None:
    """Any batch encoded as v2 decodes to the v1 batch's readings, each sensor's in
    the same order (sensors grouped; a change of unit starts a new series)."""
    readings = [c.Reading(s, ts, v, u) for s, u, ts, v in rows]
    v1 = c.decode_telemetry(TOPIC, c.encode_telemetry("dev-1", 7, readings))
    v2 = c.decode_telemetry(TOPIC, c.encode_telemetry("dev-1", 7, readings, c.SCHEMA_TELEMETRY_V2))
    assert v2.schema == c.SCHEMA_TELEMETRY_V2
    assert (v2.site, v2.device, v2.seq) == (v1.site, v1.device, v1.seq)
    for sensor in {r.sensor for r in readings}:
        assert [r for r in v2.readings if r.sensor == sensor] == [
            r for r in v1.readings if r.sensor == sensor
        ]
    assert sorted(v2.readings) == sorted(v1.readings)


def test_v2_is_smaller_than_v1_for_a_batch() -> None:
    readings = [c.Reading(("temp", "hum")[i % 2], TS + i, i / 8, "C") for i in range(100)]
    v1 = c.encode_telemetry("dev-1", 1, readings)
    v2 = c.encode_telemetry("dev-1", 1, readings, c.SCHEMA_TELEMETRY_V2)
    assert len(v2) < len(v1) / 2


def test_unknown_schema_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="telemetry/9"):
        c.encode_telemetry("dev-1", 1, [c.Reading("t", TS, 1.0)], "fieldline.telemetry/9")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (payload_v2(device="dev-2"), "topic_mismatch"),
        (payload_v2(seq="1"), "wrong_type"),
        (payload_v2(series=None), "wrong_type"),
        (payload_v2(series=[]), "empty_batch"),
        (payload_v2(series=[[]]), "wrong_type"),
        (payload_v2(series=[{"sensor": "t", "ts": [TS]}]), "missing_field"),
        (payload_v2(series=series(sensor="a b")), "bad_id"),
        (payload_v2(series=series(ts=TS)), "wrong_type"),
        (payload_v2(series=series(values={"a": 1})), "wrong_type"),
        (payload_v2(series=series(ts=[TS, TS + 1])), "wrong_type"),
        (payload_v2(series=series(ts=[], values=[])), "empty_batch"),
        (payload_v2(series=series(ts=[str(TS)])), "wrong_type"),
        (payload_v2(series=series(ts=[0])), "bad_timestamp"),
        (payload_v2(series=series(values=[None])), "wrong_type"),
        (payload_v2(series=series(values=[True])), "wrong_type"),
        (payload_v2(series=series(values=[1e101])), "out_of_range"),
        (payload_v2(series=series(unit="a\\b")), "wrong_type"),
        (
            payload_v2(series=series(ts=[TS] * 6000, values=[1] * 6000) * 2),
            "too_large",
        ),
    ],
)
def test_invalid_v2_telemetry_names_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(TOPIC, body)
    assert info.value.reason == reason
    assert info.value.detail


def test_v2_future_timestamps_are_rejected() -> None:
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(TOPIC, payload_v2(), latest_ts_ms=TS)
    assert info.value.reason == "future_timestamp"
    assert c.decode_telemetry(TOPIC, payload_v2(), latest_ts_ms=TS + 1).readings == [
        c.Reading("temp", TS, 21.5, "C"),
        c.Reading("temp", TS + 1, 3.0, "C"),
    ]


def test_huge_integers_are_rejected_whichever_json_parser_runs() -> None:
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(TOPIC, payload(readings=[{"sensor": "t", "ts": TS, "value": 10**400}]))
    assert info.value.reason in ("not_json", "out_of_range")


def test_nan_and_infinity_are_rejected_whichever_json_parser_runs() -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = payload().replace(b"21.5", literal)
        with pytest.raises(c.ContractError) as info:
            c.decode_telemetry(TOPIC, body)
        assert info.value.reason in ("not_json", "non_finite")


@pytest.mark.parametrize(
    "topic",
    [
        "fieldline/a/b",
        "other/a/b/telemetry",
        "fieldline/a/b/status",
        "fieldline/_x/b/telemetry",
        "fieldline//b/telemetry",
    ],
)
def test_bad_topics_are_rejected(topic: str) -> None:
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(topic, payload())
    assert info.value.reason in ("bad_topic", "bad_id")


@pytest.mark.parametrize("good", ["dev-1", "Ünïcødé", "温度計", "a.b_c-d", "x" * 64])
def test_valid_ids(good: str) -> None:
    assert c.is_valid_id(good)


@pytest.mark.parametrize(
    "bad", ["", "_sys", ".x", "-x", "a/b", "a+b", "a#", "$x", "a b", "x" * 65, 5]
)
def test_invalid_ids(bad: object) -> None:
    assert not c.is_valid_id(bad)


def test_status_alert_and_dead_letter_round_trip() -> None:
    st_ = c.Status("dev-1", "online", TS, "fieldline-edge/0.1.0", {"cpu_temp": "ok"})
    assert c.decode_status(c.status_topic("s", "dev-1"), c.encode_status(st_)) == st_
    alert = c.Alert("dev-1", "temp", TS, 99.0, 7.5, 21.0, "mad")
    assert c.decode_alert(c.encode_alert(alert)) == alert
    for original in (b"plain text", b"\xff\xfe binary"):
        dl = c.DeadLetter("not_json", "bad", TOPIC, original, TS)
        assert c.decode_dead_letter(c.encode_dead_letter(dl)) == dl


def test_topics() -> None:
    assert c.telemetry_topic("s", "d") == "fieldline/s/d/telemetry"
    assert c.status_topic("s", "d") == "fieldline/s/d/status"
    assert c.alerts_topic("s", "d") == "fieldline/s/d/alerts"
    assert c.dead_letter_topic("not_json") == "fieldline/deadletter/not_json"
    assert c.parse_device_topic("fieldline/s/d/telemetry") == ("s", "d", "telemetry")


@pytest.mark.parametrize("value", [1e101, -1.7e308, 2e300])
def test_values_beyond_any_sensor_are_out_of_range(value: float) -> None:
    # Sums and squares over a window of such values would overflow a double.
    body = payload(readings=[{"sensor": "t", "ts": TS, "value": value}])
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(TOPIC, body)
    assert info.value.reason == "out_of_range"


@pytest.mark.parametrize("unit", ["\r", "C\\", "a\tb", "x" * 17])
def test_units_that_cannot_be_tag_values_are_rejected(unit: str) -> None:
    body = payload(readings=[{"sensor": "t", "ts": TS, "value": 1, "unit": unit}])
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(TOPIC, body)
    assert info.value.reason == "wrong_type"


@pytest.mark.parametrize("field", ["seq", "device", "schema"])
def test_deeply_nested_values_give_a_short_contract_error(field: str) -> None:
    nested = b"[" * 1000 + b"]" * 1000
    fields = {"schema": b'"fieldline.telemetry/1"', "device": b'"dev-1"', "seq": b"3"}
    fields[field] = nested
    body = b"{" + b",".join(b'"%s":%s' % (k.encode(), v) for k, v in fields.items())
    body += b',"readings":[{"sensor":"t","ts":1700000000000,"value":1}]}'
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(TOPIC, body)
    assert len(str(info.value)) < 200


# --------------------------------------------------------------------------- statuses

STATUS_TOPIC = c.status_topic("plant-1", "dev-1")


def status(**overrides: object) -> bytes:
    body: dict[str, object] = {
        "schema": c.SCHEMA_STATUS_V1,
        "device": "dev-1",
        "state": "online",
        "ts": TS,
        "agent": "fieldline-edge/0.1.0",
        "sensors": {"cpu_temp": "ok", "bme280": "error: no device at 0x76"},
    }
    body.update(overrides)
    return json.dumps(body).encode()


NESTED = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (status(sensors=["x"]), "wrong_type"),
        (status(sensors="ok"), "wrong_type"),
        (status(sensors={"a": ["x"]}), "wrong_type"),
        (status(sensors={"a": {"b": "ok"}}), "wrong_type"),
        (status(sensors={"a": "x" * (c.MAX_SENSOR_STATE_LEN + 1)}), "wrong_type"),
        (status(sensors={f"s{i}": "ok" for i in range(c.MAX_STATUS_SENSORS + 1)}), "too_large"),
        (status(sensors={"a/b": "ok"}), "bad_id"),
        (status(sensors={"__x": "ok"}), "bad_id"),
        (status(ts=10**19), "bad_timestamp"),
        (status(ts=9 * 10**15), "bad_timestamp"),
        (status(ts=-1), "bad_timestamp"),
        (status(ts=9e15), "wrong_type"),
        (status(ts="now"), "wrong_type"),
        (status(ts=True), "wrong_type"),
        (status(agent=["x"]), "wrong_type"),
        (status(agent=NESTED), "wrong_type"),  # a string, but too long
        (status(agent="a\nb"), "wrong_type"),
        (status(agent=5), "wrong_type"),
        (status(state="sleeping"), "wrong_type"),
        (status(state=["online"]), "wrong_type"),
        (status(device="dev-2"), "topic_mismatch"),
        (status(schema="fieldline.status/9"), "unknown_schema"),
        (b'{"schema":"fieldline.status/1","device":"dev-1","state":"online"}', "missing_field"),
        (status(agent="x" * c.MAX_STATUS_BYTES), "too_large"),
        (b"[[]]", "not_object"),
    ],
)
def test_invalid_statuses_name_the_reason(body: bytes, reason: str) -> None:
    with pytest.raises(c.ContractError) as info:
        c.decode_status(STATUS_TOPIC, body)
    assert info.value.reason == reason
    assert len(str(info.value)) < 300  # a short detail, however large the input


def test_a_nested_sensors_value_parsed_by_either_parser_is_a_contract_error() -> None:
    # Deeper than the parser allows: not_json; within it: a container, wrong_type.
    for depth in (100, 1000, 5000):
        body = status().replace(b'"ok"', b"[" * depth + b"]" * depth)
        with pytest.raises(c.ContractError) as info:
            c.decode_status(STATUS_TOPIC, body)
        assert info.value.reason in ("wrong_type", "not_json")


@pytest.mark.parametrize(
    "sensors",
    [
        None,
        {},
        {"cpu_temp": "ok", "_spool": "full: 3 readings dropped so far", "_clock": "not set"},
        {"t": 1, "h": 2.5, "x": True, "y": None},
    ],
)
def test_valid_statuses_are_accepted(sensors: object) -> None:
    st_ = c.decode_status(STATUS_TOPIC, status(sensors=sensors))
    assert st_.sensors == sensors
    assert (st_.device, st_.state, st_.ts, st_.agent) == (
        "dev-1", "online", TS, "fieldline-edge/0.1.0",
    )  # fmt: skip


def test_a_status_without_agent_or_sensors_is_accepted() -> None:
    body = b'{"schema":"fieldline.status/1","device":"dev-1","state":"offline","ts":%d}' % TS
    assert c.decode_status(STATUS_TOPIC, body) == c.Status("dev-1", "offline", TS, "", None)


# --------------------------------------------------------------------------- Unicode ids

NFC = "caf\u00e9"  # é as one code point
NFD = "cafe\u0301"  # e + combining acute accent: looks the same


def test_ids_must_be_in_nfc_with_a_reason_that_says_so() -> None:
    assert c.is_valid_id(NFC)
    for bad in (NFD, "\u212bngstr\u00f6m"):  # ANGSTROM SIGN, whose NFC is Å
        assert not c.is_valid_id(bad)
        with pytest.raises(c.ContractError) as info:
            c.check_id("device", bad)
        assert info.value.reason == "bad_id"
        assert "NFC" in info.value.detail


@pytest.mark.parametrize("where", ["site", "device", "sensor"])
def test_telemetry_with_an_nfd_id_is_rejected_as_bad_id(where: str) -> None:
    site, device, sensor = "plant-1", "dev-1", "temp"
    if where == "site":
        site = NFD
    elif where == "device":
        device = NFD
    else:
        sensor = NFD
    body = json.dumps(
        {"schema": c.SCHEMA_TELEMETRY_V1, "device": device, "seq": 1,
         "readings": [{"sensor": sensor, "ts": TS, "value": 1.0}]}
    ).encode()  # fmt: skip
    with pytest.raises(c.ContractError) as info:
        c.decode_telemetry(c.telemetry_topic(site, device), body)
    assert info.value.reason == "bad_id"
    assert "NFC" in info.value.detail
    # The NFC spelling of the same id is accepted.
    ok = body.replace(json.dumps(NFD).encode(), json.dumps(NFC).encode())
    topic = c.telemetry_topic(*(NFC if x == NFD else x for x in (site, device)))
    assert c.decode_telemetry(topic, ok).seq == 1


def test_a_long_sensor_error_is_cut_by_the_encoder_so_the_status_decodes() -> None:
    long = "error: " + "x" * 5000
    st_ = c.Status("dev-1", "online", TS, "a", {"t": long, "h": "ok"})
    got = c.decode_status(STATUS_TOPIC, c.encode_status(st_))
    assert got.sensors is not None
    assert len(got.sensors["t"]) == c.MAX_SENSOR_STATE_LEN
    assert got.sensors["t"].startswith("error: xxx")
    assert got.sensors["h"] == "ok"


def test_a_status_sent_before_the_clock_is_set_is_valid_and_says_so() -> None:
    """A Pi boots at 1970: its first statuses (with ``_clock``) still tell the operator."""
    topic = "fieldline/site-1/dev-1/status"
    body = json.dumps(
        {"schema": c.SCHEMA_STATUS_V1, "device": "dev-1", "state": "online", "ts": 12_345,
         "sensors": {"_clock": "error: clock not set; 3 readings held back"}}
    ).encode()  # fmt: skip
    st = c.decode_status(topic, body)
    assert c.status_clock_unset(st)
    assert st.sensors == {"_clock": "error: clock not set; 3 readings held back"}
    assert not c.status_clock_unset(st._replace(ts=c.MIN_TIMESTAMP_MS))
