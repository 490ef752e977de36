"""The Fieldline event contract: topics, payloads, encode, decode and validate.

The producer owns the contract, so it lives here in ``fieldline-edge`` and every
service that reads events (simulator, pipeline, tools) imports it from here.
docs/events.md is the human-readable version; keep the two in step.

Versioning: every payload carries ``"schema": "fieldline.<kind>/<version>"``. A new
version is added beside the old one (a new ``SCHEMA_*`` constant and a decoder
branch); decoders accept every version they know and raise
:class:`ContractError` with reason ``unknown_schema`` for the rest.

Decoding runs on every message in the pipeline, so it uses orjson when it is
installed (the pipeline depends on it) and the standard library otherwise (the
edge agent stays free of compiled dependencies). Both give the same results:
orjson rejects ``NaN`` literals outright, and the validator rejects non-finite
numbers that the standard library lets through.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
import unicodedata
from typing import Any, Callable, NamedTuple, Optional, Union

try:  # pragma: no cover - which branch runs depends on what is installed
    import orjson

    _loads: Callable[[Union[bytes, str]], Any] = orjson.loads

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

except ImportError:  # pragma: no cover

    def _loads(data: Union[bytes, str]) -> Any:
        return json.loads(data)

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False).encode()


SCHEMA_TELEMETRY_V1 = "fieldline.telemetry/1"
#: The same telemetry as columns: one series per sensor, a list of timestamps
#: and a list of values. A third of v1's size at 100 readings, and a consumer
#: decodes it without touching each reading in Python.
SCHEMA_TELEMETRY_V2 = "fieldline.telemetry/2"
TELEMETRY_SCHEMAS = (SCHEMA_TELEMETRY_V1, SCHEMA_TELEMETRY_V2)
#: The version number a config file, scenario or flag gives -> the payload's schema.
TELEMETRY_SCHEMA_VERSIONS = {1: SCHEMA_TELEMETRY_V1, 2: SCHEMA_TELEMETRY_V2}
SCHEMA_STATUS_V1 = "fieldline.status/1"
SCHEMA_ALERT_V1 = "fieldline.alert/1"
SCHEMA_DEAD_LETTER_V1 = "fieldline.deadletter/1"

TOPIC_ROOT = "fieldline"
#: What the pipeline subscribes to (inside a shared subscription).
TELEMETRY_SUBSCRIPTION = TOPIC_ROOT + "/+/+/telemetry"
#: Device status (retained, last will ``offline``), which the pipeline stores as
#: ``device_status``.
STATUS_SUBSCRIPTION = TOPIC_ROOT + "/+/+/status"
#: Dead letters go to ``fieldline/deadletter/<reason>``; three levels, so no
#: ``fieldline/+/+/...`` subscription of a device-facing service sees them.
DEAD_LETTER_TOPIC_PREFIX = TOPIC_ROOT + "/deadletter"

#: Payloads larger than this are dead-lettered unread (bytes).
MAX_PAYLOAD_BYTES = 256 * 1024
#: Readings per telemetry message.
MAX_READINGS_PER_MESSAGE = 10_000
#: Timestamps before 2000-01-01 are a device whose clock was never set.
MIN_TIMESTAMP_MS = 946_684_800_000
#: Far enough ahead that any sane clock is below it (year 2100).
MAX_TIMESTAMP_MS = 4_102_444_800_000
MAX_SEQ = 2**63 - 1
MAX_UNIT_LEN = 16
#: Largest magnitude of a value. Far beyond any sensor, and small enough that
#: sums and squares over a window can never overflow a double.
MAX_ABS_VALUE = 1e100
#: A status payload is small: a state, a time, an agent name and a few sensors.
MAX_STATUS_BYTES = 64 * 1024
#: ``agent`` of a status: a name and version, stored as an InfluxDB string field.
MAX_AGENT_LEN = 128
#: Entries of a status's ``sensors`` mapping.
MAX_STATUS_SENSORS = 256
#: A ``sensors`` entry's text (``ok`` or ``error: ...``).
MAX_SENSOR_STATE_LEN = 512

# Site, device and sensor ids: 1-64 word characters (any script), dots and dashes,
# not starting with "_", "." or "-" (ids starting with "_" are reserved for the
# system's own topics). "/", "+", "#" and "$" can never appear, which keeps them
# safe as MQTT topic levels and as InfluxDB tag values.
_ID_RE = re.compile(r"[^\W_][\w.\-]{0,63}\Z")
# A status's ``sensors`` key: a sensor id, or one of the agent's own entries,
# which start with "_" (``_spool``, ``_clock``).
_STATUS_KEY_RE = re.compile(r"_?[^\W_][\w.\-]{0,63}\Z")


def telemetry_schema(version: object) -> str:
    """The schema of telemetry version ``version`` (the int 1 or 2); ``ValueError`` otherwise."""
    if type(version) is not int or version not in TELEMETRY_SCHEMA_VERSIONS:
        known = " or ".join(f"{v} ({s})" for v, s in TELEMETRY_SCHEMA_VERSIONS.items())
        raise ValueError(f"must be {known}, got {version!r}")
    return TELEMETRY_SCHEMA_VERSIONS[version]


def _show(value: object) -> str:
    """A short, safe rendering of a bad value for an error detail.

    Containers are named, not printed: a payload can nest a thousand levels
    deep, and repr() of that would recurse; strings are cut at 64 characters.
    """
    if isinstance(value, (dict, list)):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    if isinstance(value, str) and len(value) > 64:
        value = value[:64] + "…"
    return repr(value)


class ContractError(ValueError):
    """An event that does not follow the contract.

    ``reason`` is a short machine-readable code (it becomes the dead-letter topic's
    last level and a tag in InfluxDB); ``detail`` says what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Reading(NamedTuple):
    """One sensor value. ``ts`` is Unix time in milliseconds (UTC)."""

    sensor: str
    ts: int
    value: float
    unit: str = ""


class Telemetry(NamedTuple):
    """A batch of readings of one device, as published on its telemetry topic."""

    site: str
    device: str
    seq: int
    readings: list[Reading]
    schema: str = SCHEMA_TELEMETRY_V1


class Status(NamedTuple):
    """A device's retained status; the agent's last will says ``offline``."""

    device: str
    state: str  # "online" | "offline"
    ts: int
    agent: str = ""
    #: Sensor id (or the agent's own ``_spool``/``_clock``) -> ``"ok"``, ``"error: ..."``;
    #: a decoded status may also carry numbers, booleans or null.
    sensors: Optional[dict[str, Any]] = None


class Alert(NamedTuple):
    """An anomaly the pipeline detected, for other services to react to."""

    device: str
    sensor: str
    ts: int
    value: float
    score: float
    expected: float
    detector: str


class DeadLetter(NamedTuple):
    """An event that failed decoding or validation, kept whole with the reason."""

    reason: str
    detail: str
    topic: str
    payload: bytes
    received_ts: int


# --------------------------------------------------------------------------- topics


def telemetry_topic(site: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{device}/telemetry"


def status_topic(site: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{device}/status"


def alerts_topic(site: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{site}/{device}/alerts"


def dead_letter_topic(reason: str) -> str:
    return f"{DEAD_LETTER_TOPIC_PREFIX}/{reason}"


def parse_device_topic(topic: str) -> tuple[str, str, str]:
    """Split ``fieldline/{site}/{device}/{kind}`` into ``(site, device, kind)``."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != TOPIC_ROOT:
        raise ContractError(
            "bad_topic", f"expected fieldline/<site>/<device>/<kind>, got {topic!r}"
        )
    _, site, device, kind = parts
    check_id("site", site)
    check_id("device", device)
    return site, device, kind


def initial_seq(now_s: Optional[float] = None) -> int:
    """Where a device without a persisted counter starts ``seq``: its start time in ms.

    Consumers drop a message whose ``seq`` they have seen (QoS 1 may deliver twice),
    so a restarted device must not count from 0 again. Starting at the Unix time
    in milliseconds keeps ``seq`` increasing across restarts as long as a device
    sends fewer than 1,000 messages a second.
    """
    return int((time.time() if now_s is None else now_s) * 1000)


def _nfc(value: str) -> bool:
    return value.isascii() or unicodedata.is_normalized("NFC", value)


def is_valid_id(value: object) -> bool:
    """An id by the rules above, in Unicode NFC (see :func:`check_id`)."""
    return isinstance(value, str) and _ID_RE.match(value) is not None and _nfc(value)


def check_id(what: str, value: object) -> str:
    """``value`` if it is a valid id; else :class:`ContractError` ``bad_id``.

    Ids are compared as strings everywhere (MQTT topics and ACLs, InfluxDB tags),
    so an id must be in Unicode NFC: ``"café"`` written with a combining accent
    (NFD) or ``"Å"`` as the Angstrom sign would look like another device's id
    and be a different one. Such an id is rejected, never normalized, so no two
    topics ever map onto one device.
    """
    if not is_valid_id(value):
        if isinstance(value, str) and _ID_RE.match(unicodedata.normalize("NFC", value)):
            raise ContractError(
                "bad_id",
                f"{what} {_show(value)} is not in Unicode NFC; its NFC form is "
                f"{_show(unicodedata.normalize('NFC', value))}",
            )
        raise ContractError("bad_id", f"{what} {_show(value)} is not a valid id")
    return value  # type: ignore[return-value]


# --------------------------------------------------------------------------- encode


def encode_telemetry(
    device: str, seq: int, readings: list[Reading], schema: str = SCHEMA_TELEMETRY_V1
) -> bytes:
    """One telemetry message in ``schema`` (v1: a list of readings; v2: columns)."""
    if schema == SCHEMA_TELEMETRY_V2:
        return _dumps(
            {"schema": schema, "device": device, "seq": seq, "series": _series_of(readings)}
        )
    if schema != SCHEMA_TELEMETRY_V1:
        raise ValueError(f"unknown telemetry schema {schema!r}; known: {TELEMETRY_SCHEMAS}")
    return _dumps(
        {
            "schema": SCHEMA_TELEMETRY_V1,
            "device": device,
            "seq": seq,
            "readings": [
                {"sensor": r.sensor, "ts": r.ts, "value": r.value, "unit": r.unit} for r in readings
            ],
        }
    )


def _series_of(readings: list[Reading]) -> list[dict[str, Any]]:
    """Readings as v2 series: one per sensor, in order of first appearance, with a
    new series for a sensor whose unit changes, so each sensor's readings keep
    their order when its series are read one after the other."""
    out: list[dict[str, Any]] = []
    last: dict[str, dict[str, Any]] = {}
    for r in readings:
        s = last.get(r.sensor)
        if s is None or s["unit"] != r.unit:
            s = last[r.sensor] = {"sensor": r.sensor, "unit": r.unit, "ts": [], "values": []}
            out.append(s)
        s["ts"].append(r.ts)
        s["values"].append(r.value)
    return out


def encode_status(status: Status) -> bytes:
    """One status message. A sensor's text longer than :data:`MAX_SENSOR_STATE_LEN`
    (an error message) is cut to it, so what a producer encodes always decodes."""
    body: dict[str, Any] = {
        "schema": SCHEMA_STATUS_V1,
        "device": status.device,
        "state": status.state,
        "ts": status.ts,
        "agent": status.agent,
    }
    if status.sensors is not None:
        body["sensors"] = {
            k: v[: MAX_SENSOR_STATE_LEN - 1] + "…"
            if isinstance(v, str) and len(v) > MAX_SENSOR_STATE_LEN
            else v
            for k, v in status.sensors.items()
        }
    return _dumps(body)


def encode_alert(alert: Alert) -> bytes:
    return _dumps({"schema": SCHEMA_ALERT_V1, **alert._asdict()})


def encode_dead_letter(dl: DeadLetter) -> bytes:
    body: dict[str, Any] = {
        "schema": SCHEMA_DEAD_LETTER_V1,
        "reason": dl.reason,
        "detail": dl.detail,
        "topic": dl.topic,
        "received_ts": dl.received_ts,
    }
    # Keep the original bytes whole, so nothing is lost and it can be replayed.
    try:
        body["payload"] = dl.payload.decode("utf-8")
    except UnicodeDecodeError:
        body["payload_b64"] = base64.b64encode(dl.payload).decode("ascii")
    return _dumps(body)


# --------------------------------------------------------------------------- decode


def _load_object(payload: bytes, max_bytes: Optional[int] = MAX_PAYLOAD_BYTES) -> dict[str, Any]:
    if max_bytes is not None and len(payload) > max_bytes:
        raise ContractError("too_large", f"{len(payload)} bytes > {MAX_PAYLOAD_BYTES}")
    try:
        obj = _loads(payload)
    except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
        raise ContractError("not_json", str(exc)[:200]) from None
    except RecursionError:  # the standard library's parser on very deep nesting
        raise ContractError("not_json", "nested too deeply") from None
    if not isinstance(obj, dict):
        raise ContractError("not_object", f"payload is a JSON {type(obj).__name__}, not an object")
    return obj


def _field(obj: dict[str, Any], name: str, where: str = "") -> Any:
    try:
        return obj[name]
    except KeyError:
        raise ContractError("missing_field", f"{where}{name} is missing") from None


def _unit_ok(unit: object) -> bool:
    # Units end up as InfluxDB tag values: no control characters (a line break
    # would end the line) and no backslash (line protocol cannot carry all uses).
    return (
        isinstance(unit, str)
        and len(unit) <= MAX_UNIT_LEN
        and unit.isprintable()
        and "\\" not in unit
    )


def _is_int(v: object) -> bool:
    return type(v) is int  # bool is a subclass of int; it is not a number here


def decode_telemetry(topic: str, payload: bytes, latest_ts_ms: Optional[int] = None) -> Telemetry:
    """Decode and validate one telemetry message; raise :class:`ContractError`.

    With ``latest_ts_ms``, a message that is otherwise valid but has a reading
    stamped after it fails with reason ``future_timestamp`` (a consumer's bound
    on device clocks that run ahead; the contract itself only bounds to 2100).
    """
    site, device, kind = parse_device_topic(topic)
    if kind != "telemetry":
        raise ContractError("bad_topic", f"not a telemetry topic: {topic!r}")
    obj = _load_object(payload)
    schema = obj.get("schema")
    if schema == SCHEMA_TELEMETRY_V1:
        return _telemetry_v1(site, device, obj, latest_ts_ms)
    if schema == SCHEMA_TELEMETRY_V2:
        return _telemetry_v2(site, device, obj, latest_ts_ms)
    raise ContractError("unknown_schema", f"schema {_show(schema)} is not one this decoder knows")


def _header(device: str, obj: dict[str, Any]) -> int:
    """Check the payload's device against the topic's; return ``seq``."""
    body_device = _field(obj, "device")
    if body_device != device:
        raise ContractError(
            "topic_mismatch", f"payload device {_show(body_device)} != topic device {device!r}"
        )
    seq = _field(obj, "seq")
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        raise ContractError("wrong_type", f"seq must be an integer in [0, 2^63), got {_show(seq)}")
    return seq  # type: ignore[no-any-return]


def _batch(obj: dict[str, Any], name: str) -> list[Any]:
    """The message's non-empty list ``name`` (v1's readings, v2's series)."""
    raw = _field(obj, name)
    if not isinstance(raw, list):
        raise ContractError("wrong_type", f"{name} must be a list")
    if not raw:
        raise ContractError("empty_batch", f"{name} is empty")
    return raw


def _check_unit(where: str, unit: object) -> None:
    if unit != "" and not _unit_ok(unit):
        raise ContractError(
            "wrong_type",
            f"{where}.unit must be a string of at most {MAX_UNIT_LEN} printable "
            "characters without a backslash",
        )


def _check_future(newest: int, latest_ts_ms: Optional[int]) -> None:
    if latest_ts_ms is not None and newest > latest_ts_ms:
        raise ContractError(
            "future_timestamp",
            f"a reading is stamped {(newest - latest_ts_ms) / 1000:.0f} s after the "
            "latest time accepted",
        )


def _telemetry_v1(
    site: str, device: str, obj: dict[str, Any], latest_ts_ms: Optional[int]
) -> Telemetry:
    seq = _header(device, obj)
    raw = _batch(obj, "readings")
    if len(raw) > MAX_READINGS_PER_MESSAGE:
        raise ContractError("too_large", f"{len(raw)} readings > {MAX_READINGS_PER_MESSAGE}")
    readings: list[Reading] = []
    append = readings.append
    newest = MIN_TIMESTAMP_MS
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            raise ContractError("wrong_type", f"readings[{i}] is not an object")
        try:
            sensor = r["sensor"]
            ts = r["ts"]
            value = r["value"]
        except KeyError as exc:
            raise ContractError(
                "missing_field", f"readings[{i}].{exc.args[0]} is missing"
            ) from None
        unit = r.get("unit", "")
        if not (isinstance(sensor, str) and _ID_RE.match(sensor) and _nfc(sensor)):
            check_id(f"readings[{i}].sensor", sensor)
        ts, value = _check_reading(f"readings[{i}]", ts, value)
        if ts > newest:
            newest = ts
        _check_unit(f"readings[{i}]", unit)
        append(Reading(sensor, ts, value, unit))
    _check_future(newest, latest_ts_ms)
    return Telemetry(site, device, seq, readings)


def _telemetry_v2(
    site: str, device: str, obj: dict[str, Any], latest_ts_ms: Optional[int]
) -> Telemetry:
    seq = _header(device, obj)
    raw = _batch(obj, "series")
    readings: list[Reading] = []
    newest = MIN_TIMESTAMP_MS
    for i, s in enumerate(raw):
        where = f"series[{i}]"
        if not isinstance(s, dict):
            raise ContractError("wrong_type", f"{where} is not an object")
        sensor = _field(s, "sensor", f"{where}.")
        ts = _field(s, "ts", f"{where}.")
        values = _field(s, "values", f"{where}.")
        unit = s.get("unit", "")
        if not (isinstance(sensor, str) and _ID_RE.match(sensor) and _nfc(sensor)):
            check_id(f"{where}.sensor", sensor)
        if not isinstance(ts, list) or not isinstance(values, list):
            raise ContractError("wrong_type", f"{where}.ts and {where}.values must be lists")
        if len(ts) != len(values):
            raise ContractError(
                "wrong_type", f"{where} has {len(ts)} timestamps but {len(values)} values"
            )
        if not ts:
            raise ContractError("empty_batch", f"{where} has no readings")
        if len(readings) + len(ts) > MAX_READINGS_PER_MESSAGE:
            raise ContractError("too_large", f"more than {MAX_READINGS_PER_MESSAGE} readings")
        _check_unit(where, unit)
        for j, (t, v) in enumerate(zip(ts, values)):
            t, v = _check_reading(f"{where}[{j}]", t, v)
            if t > newest:
                newest = t
            readings.append(Reading(sensor, t, v, unit))
    _check_future(newest, latest_ts_ms)
    return Telemetry(site, device, seq, readings, SCHEMA_TELEMETRY_V2)


def _check_reading(where: str, ts: object, value: object) -> tuple[int, float]:
    """A reading's timestamp and value, checked; an integer value as a float."""
    if type(ts) is not int:
        raise ContractError("wrong_type", f"{where}.ts must be integer milliseconds")
    if not MIN_TIMESTAMP_MS <= ts < MAX_TIMESTAMP_MS:
        raise ContractError("bad_timestamp", f"{where}.ts {ts} is outside 2000..2100")
    if type(value) is int:
        try:
            value = float(value)
        except OverflowError:
            raise ContractError("out_of_range", f"{where}.value is too large") from None
    elif type(value) is not float:
        raise ContractError("wrong_type", f"{where}.value must be a number")
    assert isinstance(value, float)
    if not -MAX_ABS_VALUE <= value <= MAX_ABS_VALUE:  # also False for NaN
        reason = "non_finite" if not math.isfinite(value) else "out_of_range"
        raise ContractError(reason, f"{where}.value {value!r} is out of range")
    return ts, value


def status_clock_unset(status: Status) -> bool:
    """True when the device stamped ``status`` before its clock was set (before 2000)."""
    return status.ts < MIN_TIMESTAMP_MS


def decode_status(topic: str, payload: bytes) -> Status:
    """Decode and validate one status message; raise :class:`ContractError`.

    Every device may publish its own status, retained, so it is checked as
    strictly as telemetry: ``ts`` before 2100 and not negative, ``agent`` a short
    printable string, ``sensors`` a flat mapping of at most
    :data:`MAX_STATUS_SENSORS` ids to short strings or numbers.
    """
    _, device, kind = parse_device_topic(topic)
    if kind != "status":
        raise ContractError("bad_topic", f"not a status topic: {topic!r}")
    if len(payload) > MAX_STATUS_BYTES:
        raise ContractError("too_large", f"{len(payload)} bytes > {MAX_STATUS_BYTES}")
    obj = _load_object(payload)
    if obj.get("schema") != SCHEMA_STATUS_V1:
        raise ContractError("unknown_schema", f"schema {_show(obj.get('schema'))} is not known")
    body_device = _field(obj, "device")
    if body_device != device:
        raise ContractError(
            "topic_mismatch", f"payload device {_show(body_device)} != topic device {device!r}"
        )
    state = _field(obj, "state")
    if state not in ("online", "offline"):
        raise ContractError("wrong_type", f"state must be online or offline, got {_show(state)}")
    ts = _field(obj, "ts")
    if not _is_int(ts):
        raise ContractError("wrong_type", f"ts must be integer milliseconds, got {_show(ts)}")
    # Unlike a reading's, a status's time may precede 2000: an agent whose clock
    # is not set yet still reports that it is online and why it holds readings
    # back (its ``_clock`` entry). The pipeline stores such a status at the time
    # it received it (see status_clock_unset).
    if not 0 <= ts < MAX_TIMESTAMP_MS:
        raise ContractError("bad_timestamp", f"ts {ts} is outside 1970..2100")
    agent = obj.get("agent", "")
    if not (isinstance(agent, str) and len(agent) <= MAX_AGENT_LEN and agent.isprintable()):
        raise ContractError(
            "wrong_type",
            f"agent must be a string of at most {MAX_AGENT_LEN} printable characters, "
            f"got {_show(agent)}",
        )
    return Status(device, state, ts, agent, _status_sensors(obj.get("sensors")))


def _status_sensors(raw: object) -> Optional[dict[str, Any]]:
    """A status's ``sensors``: None, or a flat mapping of id -> short text or number."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ContractError("wrong_type", f"sensors must be an object, got {_show(raw)}")
    if len(raw) > MAX_STATUS_SENSORS:
        raise ContractError("too_large", f"{len(raw)} sensors > {MAX_STATUS_SENSORS}")
    for key, value in raw.items():
        if not _STATUS_KEY_RE.match(key) or not _nfc(key):
            raise ContractError("bad_id", f"sensors key {_show(key)} is not a valid id")
        if isinstance(value, str):
            if len(value) > MAX_SENSOR_STATE_LEN:
                raise ContractError(
                    "wrong_type",
                    f"sensors[{key!r}] must be at most {MAX_SENSOR_STATE_LEN} characters",
                )
        elif type(value) is float and not math.isfinite(value):
            raise ContractError("non_finite", f"sensors[{key!r}] is {value!r}")
        elif not (value is None or type(value) in (bool, int, float)):
            raise ContractError(
                "wrong_type",
                f"sensors[{key!r}] must be a string, a number, true, false or null, "
                f"got {_show(value)}",
            )
    return raw


def decode_alert(payload: bytes) -> Alert:
    obj = _load_object(payload)
    if obj.get("schema") != SCHEMA_ALERT_V1:
        raise ContractError("unknown_schema", f"schema {_show(obj.get('schema'))} is not known")
    try:
        return Alert(**{k: obj[k] for k in Alert._fields})
    except KeyError as exc:
        raise ContractError("missing_field", f"{exc.args[0]} is missing") from None


def decode_dead_letter(payload: bytes) -> DeadLetter:
    # A dead letter wraps its original whole, however large that was.
    obj = _load_object(payload, max_bytes=None)
    if obj.get("schema") != SCHEMA_DEAD_LETTER_V1:
        raise ContractError("unknown_schema", f"schema {_show(obj.get('schema'))} is not known")
    if "payload_b64" in obj:
        original = base64.b64decode(obj["payload_b64"])
    else:
        original = str(_field(obj, "payload")).encode("utf-8")
    return DeadLetter(
        _field(obj, "reason"),
        _field(obj, "detail"),
        _field(obj, "topic"),
        original,
        _field(obj, "received_ts"),
    )
