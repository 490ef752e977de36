"""Bad input at scale against the running pipeline (issue "Nothing lost").

Hypothesis generates ``(topic, payload)`` events: valid telemetry (ids in any
script) and its mutations: random bytes, truncated JSON, wrong shapes and types,
NaN/Infinity literals, huge numbers, empty and ~1 MB payloads, timestamps in
1970, in 3000 and far ahead of the clock, unknown schemas, unicode, emoji,
control characters and ``+ # /`` in ids, topics of the wrong depth or with bad
ids, device mismatches, and duplicate sequence numbers. They are published with
QoS 1 (PUBACK awaited) to one real pipeline process, which must account for every
one of them:

* ``messages`` == the events published on ``fieldline/+/+/telemetry`` (events on
  other topics are not its input, and paho refuses topics with wildcards);
* every event the contract's decoder rejects (or that the pipeline's future
  check rejects) comes back on ``fieldline/deadletter/<reason>`` once, with
  exactly that reason, its topic and its original payload;
* every event it accepts is counted in ``readings``; a repeated ``(device, seq)``
  is counted in ``duplicates``, and the windows in InfluxDB hold every accepted
  reading that was neither a duplicate nor late;
* the pipeline never stops: a sentinel sent after the fuzz lands in InfluxDB as
  a window, and SIGTERM ends it with exit code 0;
* its memory stays bounded over a longer run (RSS after a warm-up vs at the end).

The expected outcome of each event is computed with the contract's own decoder
(:func:`fieldline_edge.contract.decode_telemetry`), so the test follows the
contract as it changes.

Events that once stopped the pipeline (windows whose sums overflow, units that
line protocol cannot carry) are also replayed on their own in
``test_a_window_line_protocol_cannot_carry_does_not_stop_the_pipeline``.
"""

from __future__ import annotations

import itertools
import secrets
import sys
import threading
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
import paho.mqtt.client as mqtt
import pytest
from fieldline_edge import contract as c
from fieldline_edge.contract import Reading
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_pipeline.dataflow import DEFAULT_MAX_FUTURE_MS
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

T = TypeVar("T")

pytestmark = [pytest.mark.services, pytest.mark.e2e]

#: Upper bound for waiting on the broker or the pipeline; a bound, not a timing.
WAIT_S = 60.0
NOW_MS = int(time.time() * 1000)
DAY_MS = 86_400_000
YEAR_1970_MS = 86_400_000  # 1970-01-02
YEAR_3000_MS = 32_503_680_000_000  # 3000-01-01
YEAR_2099_MS = 4_070_908_800_000  # 2099-01-01
MIB = 1024 * 1024
#: Memory growth allowed between the warm-up and the end of the long run.
RSS_GROWTH_LIMIT = 150 * MIB
#: Windows of one second, closed as soon as the next second has a reading.
PIPELINE_ARGS = ("--window-s", "1", "--lateness-s", "0")
#: Topic prefixes the test itself listens on; the fuzz never publishes there.
RESERVED_PREFIXES = (c.DEAD_LETTER_TOPIC_PREFIX + "/", "fieldline/_metrics/")


# --------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    kind: str  # what the generator meant; for coverage and failure messages
    topic: str
    payload: bytes

    def __repr__(self) -> str:
        p = self.payload if len(self.payload) <= 300 else self.payload[:300] + b"..."
        return f"Event({self.kind}, {self.topic!r}, {p!r} [{len(self.payload)} B])"


#: Fresh, increasing sequence numbers, so that accepted messages repeat a
#: ``(device, seq)`` only where a generator means to (duplicates). All of the same
#: width: Hypothesis needs the same draws for the same choices (truncated() draws
#: a cut below the payload's length).
_SEQ = itertools.count(10**15)
#: Devices of their own, for values that must not meet another reading in a window.
_LONER = itertools.count(10**6)

_ID_CHAR = st.characters(categories=("L", "Nd"))
valid_ids = st.builds(
    lambda first, rest: first + rest,
    _ID_CHAR,
    st.text(st.one_of(_ID_CHAR, st.sampled_from("_.-")), max_size=12),
)
_TEXT = st.characters(exclude_categories=("Cs",))  # orjson cannot encode lone surrogates
#: Ids that break the rules, as any JSON string may.
weird_ids = st.one_of(
    st.sampled_from(
        ["", "_x", ".x", "-x", "a b", "a/b", "a+b", "a#b", "+", "#", "/", "$SYS", "x" * 65,
         "dev\x00", "dev\n", "dev\t", "\x7f", "😀", "🌡️", "a\u200b", "dev\u0301", "\ufeffdev",
         "Ω.ok", "温度-1"]
    ),
    st.text(_TEXT, max_size=70),
)  # fmt: skip


def publishable_level(s: str) -> bool:
    """Whether ``s`` can be a topic level: Mosquitto drops the connection of a client
    that publishes control characters or non-characters, paho refuses wildcards."""
    return bool(s) and all(
        ch not in "+#/" and unicodedata.category(ch) not in ("Cc", "Cs", "Cn") for ch in s
    )


topic_weird_ids = weird_ids.filter(publishable_level)

# Units: any short text, including control characters and backslashes (which the
# contract rejects).
_units = st.text(st.characters(exclude_categories=("Cs",)), max_size=16)
# Values: any float, up to the largest doubles (the contract bounds them).
_values = st.one_of(
    st.floats(allow_nan=False),
    st.integers(-(2**63), 2**64 - 1),  # integers are read as floats
)
#: Accepted timestamps: around now, the contract's bounds, and nothing in
#: between now + 60 s and now + 1 day, so the pipeline's future check
#: (DEFAULT_MAX_FUTURE_MS) is never a matter of milliseconds.
_ts_now = st.integers(NOW_MS - 3_600_000, NOW_MS + 60_000)
_ts_future = st.sampled_from([NOW_MS + DAY_MS, YEAR_2099_MS, c.MAX_TIMESTAMP_MS - 1])
_ts_bad = st.sampled_from(
    [0, 1, -1, YEAR_1970_MS, 1_764_253_800, c.MIN_TIMESTAMP_MS - 1, c.MAX_TIMESTAMP_MS,
     YEAR_3000_MS, 2**63 - 1, -(2**63), 2**64 - 1]
)  # fmt: skip
readings = st.builds(Reading, sensor=valid_ids, ts=_ts_now, value=_values, unit=_units)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(_TEXT, max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(_TEXT, max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


@dataclass
class Body:
    """A valid telemetry message as a dict, to be mutated."""

    site: str
    device: str
    obj: dict[str, Any]

    @property
    def topic(self) -> str:
        return c.telemetry_topic(self.site, self.device)

    def event(self, kind: str, topic: str | None = None) -> Event:
        return Event(kind, self.topic if topic is None else topic, orjson.dumps(self.obj))


@st.composite
def bodies(draw: st.DrawFn, max_readings: int = 10) -> Body:
    site, device = draw(valid_ids), draw(valid_ids)
    rs = draw(st.lists(readings, min_size=1, max_size=max_readings))
    obj = orjson.loads(c.encode_telemetry(device, next(_SEQ), rs))
    return Body(site, device, obj)


def _reading(draw: st.DrawFn, body: Body) -> dict[str, Any]:
    rs: list[dict[str, Any]] = body.obj["readings"]
    return rs[draw(st.integers(0, len(rs) - 1))]


@st.composite
def valid(draw: st.DrawFn) -> list[Event]:
    return [draw(bodies()).event("valid")]


@st.composite
def random_bytes(draw: st.DrawFn) -> list[Event]:
    return [Event("random_bytes", draw(bodies()).topic, draw(st.binary(max_size=400)))]


@st.composite
def empty(draw: st.DrawFn) -> list[Event]:
    return [Event("empty", draw(bodies()).topic, b"")]


@st.composite
def truncated(draw: st.DrawFn) -> list[Event]:
    ev = draw(bodies()).event("truncated")
    cut = draw(st.integers(0, len(ev.payload) - 1))
    return [Event(ev.kind, ev.topic, ev.payload[:cut])]


@st.composite
def wrong_shape(draw: st.DrawFn) -> list[Event]:
    body = draw(bodies())
    shape = draw(st.sampled_from(["not_object", "other_object", "empty", "readings", "reading"]))
    if shape == "not_object":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return [Event("wrong_shape", body.topic, orjson.dumps(value))]
    if shape == "other_object":
        value = draw(st.dictionaries(st.text(_TEXT, max_size=8), json_values, max_size=4))
        return [Event("wrong_shape", body.topic, orjson.dumps(value))]
    if shape == "empty":
        body.obj["readings"] = []
    elif shape == "readings":
        body.obj["readings"] = draw(json_values.filter(lambda v: not isinstance(v, list)))
    else:
        body.obj["readings"].append(draw(json_values.filter(lambda v: not isinstance(v, dict))))
    return [body.event("wrong_shape")]


_FIELDS = ["schema", "device", "seq", "readings"]
_READING_FIELDS = ["sensor", "ts", "value", "unit"]


def _not_a_seq(v: object) -> bool:
    # A seq that happens to be valid would be an accepted message with a reused seq.
    return not (type(v) is int and 0 <= v <= c.MAX_SEQ)


_REPLACEMENTS = {
    "seq": json_values.filter(_not_a_seq),
    "unit": json_values,
    "value": json_values,
}


@st.composite
def wrong_field(draw: st.DrawFn) -> list[Event]:
    """A field missing, or of another type (also into ``readings[i]``)."""
    body = draw(bodies())
    name = draw(st.sampled_from(_FIELDS + [f"readings[].{f}" for f in _READING_FIELDS]))
    target = body.obj
    if name.startswith("readings[]."):
        target, name = _reading(draw, body), name.removeprefix("readings[].")
    if draw(st.booleans()):
        del target[name]
        return [body.event("missing_field")]
    target[name] = draw(_REPLACEMENTS.get(name, json_values))
    return [body.event("wrong_type")]


_NON_FINITE = [b"NaN", b"-NaN", b"nan", b"Infinity", b"-Infinity", b"inf", b"1e400", b"-1e400",
               b"1E+999", b"-0.0e99999", b"1" + b"0" * 400]  # fmt: skip
_PLACEHOLDER = "\x00placeholder\x00"


@st.composite
def non_finite(draw: st.DrawFn) -> list[Event]:
    """NaN and Infinity literals and numbers beyond a double, where numbers go."""
    body = draw(bodies())
    where = draw(st.sampled_from(["value", "value", "ts", "seq"]))
    if where == "seq":
        body.obj["seq"] = _PLACEHOLDER
    else:
        _reading(draw, body)[where] = _PLACEHOLDER
    literal = draw(st.sampled_from(_NON_FINITE))
    payload = orjson.dumps(body.obj).replace(orjson.dumps(_PLACEHOLDER), literal)
    return [Event("non_finite", body.topic, payload)]


_HUGE = [b"1.7976931348623157e308", b"-1.7976931348623157e308", b"5e-324", b"-0.0",
         b"9223372036854775807", b"9223372036854775808", b"18446744073709551615",
         b"18446744073709551616", b"-9223372036854775809", b"1" + b"0" * 30]  # fmt: skip


@st.composite
def huge_number(draw: st.DrawFn) -> list[Event]:
    """Numbers at and past the limits of doubles and 64-bit integers.

    On a device of its own with one reading: two readings of 1e308 in one window
    would overflow it (see the reproducer), and an accepted seq of 2^63 - 1 would
    make that device's later seqs look old.
    """
    site, device = draw(valid_ids), f"loner-{next(_LONER)}"
    obj = orjson.loads(c.encode_telemetry(device, next(_SEQ), [draw(readings)]))
    where = draw(st.sampled_from(["value", "value", "ts", "seq"]))
    if where == "seq":
        obj["seq"] = _PLACEHOLDER
    else:
        obj["readings"][0][where] = _PLACEHOLDER
    literal = draw(st.sampled_from(_HUGE))
    payload = orjson.dumps(obj).replace(orjson.dumps(_PLACEHOLDER), literal)
    return [Event("huge_number", c.telemetry_topic(site, device), payload)]


@st.composite
def timestamps(draw: st.DrawFn) -> list[Event]:
    """1970, 3000, the contract's bounds, far ahead of the clock, wrong units."""
    body = draw(bodies())
    r = _reading(draw, body)
    r["ts"] = draw(
        st.one_of(
            _ts_bad,
            _ts_future,
            st.sampled_from([c.MIN_TIMESTAMP_MS, float(NOW_MS), NOW_MS + 0.5, str(NOW_MS)]),
        )
    )
    return [body.event("timestamp")]


_SCHEMAS = ["fieldline.telemetry/2", "fieldline.telemetry/0", "fieldline.telemetry/1 ",
            "fieldline.telemetry/1.0", "FIELDLINE.TELEMETRY/1", "fieldline.telemetry/01",
            "fieldline.status/1", "fieldline.deadletter/1", "", None, 1, True, ["x"]]  # fmt: skip


@st.composite
def unknown_schema(draw: st.DrawFn) -> list[Event]:
    body = draw(bodies())
    if draw(st.booleans()):
        body.obj["schema"] = draw(st.one_of(st.sampled_from(_SCHEMAS), st.text(_TEXT, max_size=30)))
    else:
        del body.obj["schema"]
    return [body.event("unknown_schema")]


@st.composite
def payload_ids(draw: st.DrawFn) -> list[Event]:
    """Unicode, emoji, control characters, ``+ # /`` in the payload's ids."""
    body = draw(bodies())
    weird = draw(weird_ids)
    if draw(st.booleans()):
        _reading(draw, body)["sensor"] = weird
        return [body.event("payload_sensor_id")]
    body.obj["device"] = weird
    if publishable_level(weird):
        body.device = weird  # else the topic keeps the old device: a mismatch
    return [body.event("payload_device_id")]


_TOPIC_FORMS = {
    # not telemetry (the status form is decoded as a status, see expected_outcome)
    "short": "fieldline/{site}/telemetry",
    "long": "fieldline/{site}/{device}/x/telemetry",
    "status": "fieldline/{site}/{device}/status",
    "case": "fieldline/{site}/{device}/Telemetry",
    "root": "Fieldline/{site}/{device}/telemetry",
    "leading_slash": "/fieldline/{site}/{device}/telemetry",
    "trailing_slash": "fieldline/{site}/{device}/telemetry/",
    # input with a bad site or device id
    "bad_site": "fieldline/{bad}/{device}/telemetry",
    "bad_device": "fieldline/{site}/{bad}/telemetry",
    "empty_site": "fieldline//{device}/telemetry",
    # refused by paho: wildcards cannot be published
    "wildcard_plus": "fieldline/+/{device}/telemetry",
    "wildcard_hash": "fieldline/{site}/#",
    "wildcard_in_id": "fieldline/{site}/a+b/telemetry",
}
_TOPIC_GROUPS = [
    ["short", "long", "status", "case", "root", "leading_slash", "trailing_slash"],
    ["bad_site", "bad_device", "empty_site"],
    ["wildcard_plus", "wildcard_hash", "wildcard_in_id"],
]


@st.composite
def bad_topic(draw: st.DrawFn) -> list[Event]:
    body = draw(bodies())
    form = draw(st.sampled_from(sorted(_TOPIC_FORMS)))
    bad = draw(topic_weird_ids)
    if form == "bad_device":
        body.obj["device"] = bad
    topic = _TOPIC_FORMS[form].format(site=body.site, device=body.device, bad=bad)
    return [body.event(f"topic_{form}", topic)]


@st.composite
def mismatch(draw: st.DrawFn) -> list[Event]:
    body = draw(bodies())
    other = draw(valid_ids.filter(lambda d: d != body.device))
    return [body.event("mismatch", c.telemetry_topic(body.site, other))]


@st.composite
def duplicates(draw: st.DrawFn) -> list[Event]:
    """The same message again (a QoS 1 redelivery), or another one with the same seq."""
    body = draw(bodies())
    first = body.event("duplicate")
    if draw(st.booleans()):
        return [first, first]
    body.obj["readings"] = orjson.loads(
        c.encode_telemetry(body.device, 0, draw(st.lists(readings, min_size=1, max_size=5)))
    )["readings"]
    return [first, body.event("duplicate")]


@st.composite
def oddities(draw: st.DrawFn) -> list[Event]:
    """Valid JSON around the edges: extra fields, whitespace, BOM, bad UTF-8, deep nesting."""
    body = draw(bodies())
    form = draw(st.sampled_from(["extra_fields", "whitespace", "bom", "bad_utf8", "deep"]))
    if form == "extra_fields":
        body.obj[draw(st.text(_TEXT, max_size=8))] = draw(json_values)
        _reading(draw, body)[draw(st.text(_TEXT, max_size=8))] = draw(json_values)
        return [body.event(form)]
    payload = orjson.dumps(body.obj)
    if form == "whitespace":
        payload = b" \n\t" + payload + b"\r\n"
    elif form == "bom":
        payload = b"\xef\xbb\xbf" + payload
    elif form == "bad_utf8":
        payload = payload.replace(b'"device":"', b'"device":"\xff\xfe', 1)
    else:
        # orjson parses up to 1024 levels; the decoder puts some values in its error detail.
        depth = draw(st.sampled_from([600, 1010, 1030]))
        deep = b"[" * depth + b"]" * depth
        where = draw(st.sampled_from(["seq", "device", "sensor", "top"]))
        if where == "top":
            payload = deep
        else:
            if where == "sensor":
                _reading(draw, body)["sensor"] = _PLACEHOLDER
            else:
                body.obj[where] = _PLACEHOLDER
            payload = orjson.dumps(body.obj).replace(orjson.dumps(_PLACEHOLDER), deep)
    return [Event(form, body.topic, payload)]


#: Each generator makes one event, or two for duplicates.
GENERATORS = [
    valid(), random_bytes(), empty(), truncated(), wrong_shape(), wrong_field(), non_finite(),
    huge_number(), timestamps(), unknown_schema(), payload_ids(), bad_topic(), mismatch(),
    duplicates(), oddities(),
]  # fmt: skip


def _not_reserved(group: list[Event]) -> bool:
    return not group[0].topic.startswith(RESERVED_PREFIXES)


@st.composite
def batches(draw: st.DrawFn, per_generator: int) -> list[Event]:
    """Every generator's events, 1 to ``per_generator`` each (valid ones three times
    that), in an order of Hypothesis's choosing."""
    groups: list[list[Event]] = []
    for gen in GENERATORS:
        n = 3 * per_generator if gen is GENERATORS[0] else per_generator
        groups += draw(st.lists(gen.filter(_not_reserved), min_size=1, max_size=n))
    return [ev for group in draw(st.permutations(groups)) for ev in group]


def big_events(site: str) -> list[Event]:
    """Payloads of ~1 MB and at the 256 KiB limit, one of each (not from Hypothesis:
    a handful is enough, and they are slow to shrink and to draw)."""
    topic = c.telemetry_topic(site, "big")
    small = c.encode_telemetry("big", next(_SEQ), [Reading("t", NOW_MS, 1.0)])
    at_limit = small[:-1] + b" " * (c.MAX_PAYLOAD_BYTES - len(small)) + b"}"
    many = [Reading("t", NOW_MS + i, float(i)) for i in range(c.MAX_READINGS_PER_MESSAGE + 1)]
    return [
        Event("big_padded", topic, small[:-1] + b" " * MIB + b"}"),
        Event("big_binary", topic, bytes(range(256)) * (MIB // 256)),
        # JSON-escaped in the dead letter, this one grows to ~6 MB.
        Event("big_control_chars", topic, b"\x01" * MIB),
        Event("big_readings", topic, c.encode_telemetry("big", next(_SEQ), many)),
        Event("at_limit", topic, at_limit),  # exactly 256 KiB: accepted
        Event("over_limit", topic, at_limit[:-1] + b" }"),
        # A clock a day ahead, for certain (the drawn ones may fail for other reasons).
        Event(
            "clock_ahead",
            c.telemetry_topic(site, "ahead"),
            c.encode_telemetry("ahead", next(_SEQ), [Reading("t", NOW_MS + DAY_MS, 1.0)]),
        ),
    ]


# --------------------------------------------------------------------------- oracle


@dataclass(frozen=True)
class Outcome:
    input: bool  # on the pipeline's subscription
    reason: str | None = None  # dead-letter reason; None: accepted
    readings: int = 0
    key: tuple[str, str, int] | None = None  # (site, device, seq) of an accepted message


def expected_outcome(ev: Event, now_ms: int) -> Outcome:
    """What the pipeline must do with ``ev``, by the contract's own decoder."""
    if mqtt.topic_matches_sub(c.STATUS_SUBSCRIPTION, ev.topic):
        # The pipeline stores valid statuses (device_status), ignores an empty
        # one (a retained status cleared), and dead-letters the rest.
        if not ev.payload:
            return Outcome(False)
        try:
            as_the_pipeline_does(c.decode_status, ev.topic, ev.payload)
        except c.ContractError as exc:
            return Outcome(True, exc.reason)
        except Exception:
            return Outcome(True, "internal_error")
        return Outcome(False)
    if not mqtt.topic_matches_sub(c.TELEMETRY_SUBSCRIPTION, ev.topic):
        return Outcome(False)
    try:
        tel = decode_as_the_pipeline_does(ev.topic, ev.payload)
    except c.ContractError as exc:
        return Outcome(True, exc.reason)
    except Exception:  # a decoder bug; the pipeline keeps the event as internal_error
        return Outcome(True, "internal_error")
    # The pipeline also dead-letters clocks far ahead of its own (dataflow.decode_message).
    if max(r.ts for r in tel.readings) > now_ms + DEFAULT_MAX_FUTURE_MS:
        return Outcome(True, "future_timestamp")
    return Outcome(True, None, len(tel.readings), (tel.site, tel.device, tel.seq))


#: The pipeline runs with Python's default recursion limit.
PIPELINE_RECURSION_LIMIT = 1000


def decode_as_the_pipeline_does(topic: str, payload: bytes) -> c.Telemetry:
    return as_the_pipeline_does(c.decode_telemetry, topic, payload)


def as_the_pipeline_does(decode: Callable[[str, bytes], T], topic: str, payload: bytes) -> T:
    """``decode_telemetry`` under the pipeline's recursion limit: Hypothesis raises
    the limit while a test runs, and the decoder's errors can recurse (see
    test_deeply_nested_fields_are_a_contract_error)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(PIPELINE_RECURSION_LIMIT)
    try:
        return decode(topic, payload)
    finally:
        sys.setrecursionlimit(limit)


def has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic


@dataclass
class Ledger:
    """Everything published, and what the pipeline must have done with it."""

    published: list[tuple[Event, Outcome]] = field(default_factory=list)
    refused: list[Event] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    input_messages: int = 0
    readings: int = 0
    duplicate_messages: int = 0
    duplicate_readings: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[tuple[str, bytes, str]] = field(default_factory=Counter)
    internal_errors: list[Event] = field(default_factory=list)
    _keys: set[tuple[str, str, int]] = field(default_factory=set)

    def record(self, ev: Event, now_ms: int) -> None:
        out = expected_outcome(ev, now_ms)
        self.published.append((ev, out))
        self.kinds[ev.kind] += 1
        if not out.input:
            return
        self.input_messages += 1
        if out.reason is not None:
            self.reasons[out.reason] += 1
            self.dead_letters[(ev.topic, ev.payload, out.reason)] += 1
            if out.reason == "internal_error":
                self.internal_errors.append(ev)
            return
        self.readings += out.readings
        assert out.key is not None
        if out.key in self._keys:
            self.duplicate_messages += 1
            self.duplicate_readings += out.readings
        self._keys.add(out.key)

    def publish(self, pub: Publisher, batch: Iterable[Event]) -> None:
        """Publish with QoS 1, wait for every PUBACK, record what is expected."""
        infos = []
        for ev in batch:
            try:
                info = pub.client.publish(ev.topic, ev.payload, qos=1)
            except ValueError:  # paho: "Publish topic cannot contain wildcards."
                assert has_wildcard(ev.topic), ev
                self.refused.append(ev)
                self.kinds[ev.kind] += 1
                continue
            assert not has_wildcard(ev.topic), f"paho published {ev!r}"
            assert info.rc == mqtt.MQTT_ERR_SUCCESS, (ev, mqtt.error_string(info.rc))
            infos.append(info)
            self.record(ev, int(time.time() * 1000))
        for info in infos:
            info.wait_for_publish(WAIT_S)
            assert info.is_published(), "no PUBACK within the bound"


# --------------------------------------------------------------------------- MQTT


class Publisher:
    def __init__(self, mosquitto: Mosquitto) -> None:
        connected = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fuzz-pub-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(200)
        self.client.on_connect = lambda *_a: connected.set()
        self.client.connect(mosquitto.host, mosquitto.port, keepalive=60)
        self.client.loop_start()
        assert connected.wait(WAIT_S), "no CONNACK"

    def close(self) -> None:
        close_client(self.client)


class DeadLetterRecorder:
    """Every message on ``fieldline/deadletter/#``, subscribed before anything is published."""

    def __init__(self, mosquitto: Mosquitto) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"fuzz-dlq-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = lambda client, *_a: client.subscribe(
            c.DEAD_LETTER_TOPIC_PREFIX + "/#", qos=1
        )
        self.client.on_subscribe = lambda *_a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(mosquitto.host, mosquitto.port, keepalive=60)
        self.client.loop_start()
        assert subscribed.wait(WAIT_S), "no SUBACK"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_count(self, n: int) -> list[tuple[str, bytes]]:
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while len(self.messages) < n and (remaining := deadline - time.monotonic()) > 0:
                self._cond.wait(remaining)
            return list(self.messages)

    def close(self) -> None:
        close_client(self.client)


def close_client(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
    client.reinitialise()  # closes paho's socket pair now, not at gc time


def forget_session(mosquitto: Mosquitto, client_id: str) -> None:
    """Drop a stopped pipeline's persistent session, so the shared broker does not
    keep queueing the next tests' telemetry for it."""
    connected = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    client.on_connect = lambda *_a: connected.set()
    client.connect(mosquitto.host, mosquitto.port, keepalive=30)
    client.loop_start()
    try:
        assert connected.wait(WAIT_S), f"no CONNACK for {client_id}"
    finally:
        close_client(client)


def source_client_id(pipeline: Any) -> str:
    # start_pipeline names the instance test-<tag> and the client-id prefix p<tag>.
    return f"p{pipeline.instance.removeprefix('test-')}-0"


# --------------------------------------------------------------------------- pipeline


def counter(pipeline: Any, name: str) -> int:
    return int(pipeline.metrics().get(name) or 0)


def wait_accounted(pipeline: Any, ledger: Ledger, context: Callable[[], str] = str) -> None:
    """Wait until the pipeline has decoded or dead-lettered every input event."""
    pipeline.watch.wait_for(
        lambda _w: (
            counter(pipeline, "messages") >= ledger.input_messages
            or pipeline.proc.poll() is not None
        ),
        WAIT_S,
    )
    assert_alive(pipeline, context)
    assert counter(pipeline, "messages") == ledger.input_messages, (
        f"{counter(pipeline, 'messages')} messages counted, {ledger.input_messages} published "
        f"{context()}"
    )


def assert_alive(pipeline: Any, context: Callable[[], str] = str) -> None:
    assert pipeline.proc.poll() is None, (
        f"the pipeline stopped (exit {pipeline.proc.returncode}) {context()}\n"
        f"{pipeline.log_text()[-4000:]}"
    )


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def window_counts(influxdb: InfluxDB, db: str, where: str = "") -> dict[tuple[str, int], int]:
    """``count`` of every stored window by (device, start ms)."""
    res = influxdb.query(
        f'SELECT "count" FROM reading_window WHERE time >= 0 {where} GROUP BY "device"',
        db=db,
        epoch="ms",
    )
    out: dict[tuple[str, int], int] = {}
    for series in res["results"][0].get("series", []):
        for t, count in series["values"]:
            out[(series["tags"]["device"], t)] = out.get((series["tags"]["device"], t), 0) + count
    return out


def send_sentinel(pub: Publisher, ledger: Ledger, site: str) -> int:
    """Two readings a second apart on a fresh device; returns the first's window start."""
    start = (int(time.time() * 1000) // 1000) * 1000
    topic = c.telemetry_topic(site, "sentinel")
    batch = [
        Event("sentinel", topic, c.encode_telemetry("sentinel", next(_SEQ), [Reading("t", ts, v)]))
        for ts, v in ((start, 1.0), (start + 1500, 2.0))
    ]
    ledger.publish(pub, batch)
    return start


def wait_sentinel_window(influxdb: InfluxDB, db: str, site: str, start: int, pipeline: Any) -> None:
    """The sentinel's first window is closed by its second reading and written."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and pipeline.proc.poll() is None:
        if window_counts(influxdb, db, f"AND \"site\" = '{site}'").get(("sentinel", start)) == 1:
            return
        time.sleep(0.2)
    raise AssertionError(
        f"the sentinel's window never reached InfluxDB (pipeline exit code "
        f"{pipeline.proc.poll()})\n{pipeline.log_text()[-4000:]}"
    )


FUZZ_SETTINGS = settings(
    derandomize=True,  # the same events on every run (CI is reproducible)
    database=None,
    deadline=None,
    # Each example talks to a live pipeline: no shrinking against it; a failure
    # names the offending events instead.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.filter_too_much,
    ],
)


# --------------------------------------------------------------------------- tests


def test_every_fuzzed_event_is_processed_or_dead_lettered_with_its_reason(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    pipeline = start_pipeline(*PIPELINE_ARGS)
    site = f"fz-{secrets.token_hex(3)}"
    dlq = DeadLetterRecorder(mosquitto)
    pub = Publisher(mosquitto)
    ledger = Ledger()
    extra = iter(big_events(site))
    try:

        @settings(FUZZ_SETTINGS, max_examples=60)
        @given(batch=batches(per_generator=2))
        def fuzz(batch: list[Event]) -> None:
            batch = [*batch, *itertools.islice(extra, 1)]  # one big payload per example
            ledger.publish(pub, batch)
            assert_alive(pipeline, lambda: f"after publishing {batch!r}"[:20_000])

        fuzz()
        assert next(extra, None) is None, "not every big payload was sent"

        # The pipeline goes on: a fresh device's window lands while it runs.
        start = send_sentinel(pub, ledger, site)
        wait_sentinel_window(influxdb, influx_db, site, start, pipeline)
        wait_accounted(pipeline, ledger)
        received = dlq.wait_count(sum(ledger.dead_letters.values()))
        assert pipeline.proc.poll() is None
        assert pipeline.stop() == 0, pipeline.log_text()[-4000:]
        assert pipeline.watch.wait_for(lambda _w: pipeline.metrics().get("done") is True, WAIT_S)
    finally:
        pub.close()
        dlq.close()
    forget_session(mosquitto, source_client_id(pipeline))

    # Every event is accounted for, in the pipeline's counters ...
    final = pipeline.metrics()
    assert final["messages"] == ledger.input_messages
    assert final["dead_letters_by_reason"] == dict(ledger.reasons)
    # `readings` counts the readings of every message but the second copies.
    assert final["readings"] == ledger.readings - ledger.duplicate_readings
    assert final["duplicates"] == ledger.duplicate_messages

    # ... on the dead-letter topic: each once, with its reason and the original ...
    got: Counter[tuple[str, bytes, str]] = Counter()
    for mqtt_topic, body in received:
        dl = c.decode_dead_letter(body)
        assert mqtt_topic == c.dead_letter_topic(dl.reason), (mqtt_topic, dl.reason)
        assert isinstance(dl.detail, str)
        assert dl.detail
        assert isinstance(dl.received_ts, int)
        got[(dl.topic, dl.payload, dl.reason)] += 1
    missing = ledger.dead_letters - got
    unexpected = got - ledger.dead_letters
    assert not missing, f"{sum(missing.values())} dead letters missing: {list(missing)[:5]}"[:5000]
    assert not unexpected, f"unexpected dead letters: {list(unexpected)[:5]}"[:5000]

    # ... and in InfluxDB: every accepted reading is in a window, a duplicate or late.
    stored = sum(window_counts(influxdb, influx_db).values())
    assert stored == ledger.readings - ledger.duplicate_readings - final["late_readings"], (
        stored, ledger.readings, ledger.duplicate_readings, final["late_readings"],
    )  # fmt: skip

    # The fuzz covered what it is meant to.
    kinds = set(ledger.kinds)
    expected_kinds = {
        "valid", "random_bytes", "empty", "truncated", "wrong_shape", "missing_field",
        "wrong_type", "non_finite", "huge_number", "timestamp", "unknown_schema",
        "payload_sensor_id", "payload_device_id", "mismatch", "duplicate", "extra_fields",
        "whitespace", "bom", "bad_utf8", "deep", "big_padded", "big_binary",
        "big_control_chars", "big_readings", "at_limit", "over_limit", "sentinel",
    }  # fmt: skip
    assert expected_kinds <= kinds, f"not generated: {expected_kinds - kinds}"
    for group in _TOPIC_GROUPS:
        assert kinds & {f"topic_{form}" for form in group}, f"no topic of {group}"
    assert ledger.refused, "no topic with wildcards was tried"
    for reason in ("not_json", "not_object", "unknown_schema", "missing_field", "wrong_type",
                   "bad_timestamp", "bad_id", "topic_mismatch", "empty_batch",
                   "too_large", "future_timestamp"):  # fmt: skip
        assert ledger.reasons[reason], f"no event was dead-lettered as {reason}"
    assert ledger.duplicate_messages, "no duplicate was accepted"
    print(  # shown with -s: what the fuzz did
        f"\nfuzz: {len(ledger.published) + len(ledger.refused)} events, "
        f"{ledger.input_messages} on the pipeline's topics, {len(ledger.refused)} refused by "
        f"paho; {ledger.readings} readings accepted ({ledger.duplicate_messages} duplicate "
        f"messages, {final['late_readings']} late readings, {stored} stored in windows); "
        f"dead letters {dict(ledger.reasons)}; kinds {dict(ledger.kinds)}"
    )


def test_memory_stays_bounded_through_a_long_fuzz(
    mosquitto: Mosquitto, start_pipeline: Any
) -> None:
    pipeline = start_pipeline(*PIPELINE_ARGS)
    site = f"fzm-{secrets.token_hex(3)}"
    pub = Publisher(mosquitto)
    ledger = Ledger()
    examples = itertools.count()
    big = big_events(site)
    rss: dict[str, int] = {}
    warmup_examples = 20
    try:

        @settings(FUZZ_SETTINGS, max_examples=150)
        @given(batch=batches(per_generator=2))
        def fuzz(batch: list[Event]) -> None:
            i = next(examples)
            if i % 12 == 11:  # a big payload now and then
                batch = [*batch, big[(i // 12) % len(big)]]
            ledger.publish(pub, batch)
            assert_alive(pipeline)
            if i == warmup_examples - 1:
                wait_accounted(pipeline, ledger)
                rss["warm"] = rss_bytes(pipeline.proc.pid)

        fuzz()
        wait_accounted(pipeline, ledger)
        rss["end"] = rss_bytes(pipeline.proc.pid)
        assert pipeline.stop() == 0, pipeline.log_text()[-4000:]
    finally:
        pub.close()
    forget_session(mosquitto, source_client_id(pipeline))

    assert ledger.input_messages > 3000
    assert sum(len(ev.payload) >= MIB for ev, _ in ledger.published) >= 5
    growth = rss["end"] - rss["warm"]
    print(  # shown with -s or on failure: the numbers behind the bound
        f"\nmemory fuzz: {len(ledger.published)} events ({ledger.input_messages} input), "
        f"RSS {rss['warm'] / MIB:.0f} MiB after warm-up, {rss['end'] / MIB:.0f} MiB at the end"
    )
    assert growth < RSS_GROWTH_LIMIT, (rss, ledger.input_messages)


# --------------------------------------------------------------------------- reproducers

KILLERS = {
    # Two finite readings whose sum overflows: the window's mean is inf, which
    # line protocol cannot carry (lineprotocol.format_value raises ValueError).
    "overflowing_window": [Reading("t", 0, 1.7e308), Reading("t", 1, 1.7e308)],
    # Readings spread so far apart that the variance overflows (stddev inf).
    "overflowing_stddev": [Reading("t", 0, 1e200), Reading("t", 1, -1e200)],
    # A unit the contract allows (<= 16 chars, no "\n") but line protocol rejects.
    "unit_with_carriage_return": [Reading("t", 0, 1.0, "\r")],
    "unit_ending_in_backslash": [Reading("t", 0, 1.0, "C\\")],
}


@pytest.mark.parametrize("case", sorted(KILLERS))
def test_a_window_line_protocol_cannot_carry_does_not_stop_the_pipeline(
    case: str, mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    pipeline = start_pipeline(*PIPELINE_ARGS)
    site = f"fzk-{secrets.token_hex(3)}"
    now = (int(time.time() * 1000) // 1000) * 1000
    # The killer's window is closed at once by a reading two seconds later.
    killer = [r._replace(ts=now + r.ts) for r in KILLERS[case]] + [Reading("t", now + 2000, 0.0)]
    pub = Publisher(mosquitto)
    ledger = Ledger()
    try:
        topic = c.telemetry_topic(site, "killer")
        ledger.publish(pub, [Event(case, topic, c.encode_telemetry("killer", 1, killer))])
        start = send_sentinel(pub, ledger, site)
        wait_sentinel_window(influxdb, influx_db, site, start, pipeline)
        assert pipeline.stop() == 0
    finally:
        pub.close()
        if pipeline.proc.poll() is not None:  # taking over a live pipeline's id would cut it off
            forget_session(mosquitto, source_client_id(pipeline))


@pytest.mark.parametrize("where", ["seq", "device", "sensor"])
def test_deeply_nested_fields_are_a_contract_error(where: str) -> None:
    obj = orjson.loads(c.encode_telemetry("d", 1, [Reading("t", NOW_MS, 1.0)]))
    if where == "sensor":
        obj["readings"][0]["sensor"] = _PLACEHOLDER
    else:
        obj[where] = _PLACEHOLDER
    deep = b"[" * 1010 + b"]" * 1010  # orjson parses up to 1024 levels
    payload = orjson.dumps(obj).replace(orjson.dumps(_PLACEHOLDER), deep)
    with pytest.raises(c.ContractError):
        c.decode_telemetry("fieldline/s/d/telemetry", payload)
