"""Sequences, not single messages: a hypothesis state machine drives a real pipeline.

Each example is a fleet (its own site) that interleaves valid telemetry, second
copies, forward ``seq`` jumps, hostile telemetry, hostile retained statuses,
readings InfluxDB refuses (older than the database's retention policy), and
``kill -9`` restarts of the pipeline. The invariant at the end of every example:
the pipeline is still up, every hostile message reached the dead-letter topic,
and every accepted reading is stored exactly once (windows equal to what the
readings give).

Real Mosquitto, InfluxDB and ``fieldline pipeline run``; the number of examples
and steps is small and fixed, so the test is bounded in time.
"""

from __future__ import annotations

import functools
import json
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.contract import (
    DEAD_LETTER_TOPIC_PREFIX,
    Reading,
    decode_dead_letter,
    encode_telemetry,
    status_topic,
    telemetry_topic,
)
from fieldline_edge.mqtt import parse_broker_url
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_sim.groundtruth import Row
from groundtruth_check import stored_windows
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000
IDLE_TIMEOUT_S = 2
DEVICES = ("d0", "d1", "d2")
SENSORS = ("temp", "hum")
MAX_RESTARTS = 2
#: Long enough for a loaded 2-core CI machine; a bound on failure, not a timing.
SETTLE_S = 120.0


def _hostile_telemetry(device: str, ts: int) -> list[bytes]:
    """Messages on a device's own telemetry topic that break the contract."""
    ok = {"sensor": "temp", "ts": ts, "value": 1.0}
    v1 = "fieldline.telemetry/1"
    # Deeper than json.dumps can write: built as text.
    nested = b"[" * 1000 + b"1" + b"]" * 1000
    return [
        b"not json at all",
        b"",
        b"\xff\xfe\x00garbage",
        json.dumps({"schema": "fieldline.telemetry/99", "device": device, "seq": 1,
                    "readings": [ok]}).encode(),
        json.dumps({"schema": v1, "device": device, "seq": "x", "readings": [ok]}).encode(),
        json.dumps({"schema": v1, "device": device, "seq": -1, "readings": [ok]}).encode(),
        json.dumps({"schema": v1, "device": device, "seq": 2**64, "readings": [ok]}).encode(),
        json.dumps({"schema": v1, "device": "someone-else", "seq": 1, "readings": [ok]}).encode(),
        json.dumps({"schema": v1, "device": device, "seq": 1,
                    "readings": [{"sensor": "temp", "ts": ts, "value": 0}]}).encode()
        .replace(b'"value": 0', b'"value": ' + nested),
        json.dumps({"schema": v1, "device": device, "seq": 1,
                    "readings": [{"sensor": "temp", "ts": 10**19, "value": 1.0}]}).encode(),
        json.dumps({"schema": v1, "device": device, "seq": 1,
                    "readings": [{"sensor": "te mp,x=1", "ts": ts, "value": 1.0}]}).encode(),
        b'{"schema":"fieldline.telemetry/1","device":"' + device.encode()
        + b'","seq":1,"readings":[{"sensor":"temp","ts":1,"value":Infinity}]}',
    ]  # fmt: skip


def _hostile_status(device: str, ts: int) -> list[bytes]:
    """Statuses a device user may publish (retained) that break the contract."""
    deep = b"[" * 1000 + b'"x"' + b"]" * 1000
    base = {"schema": "fieldline.status/1", "device": device, "state": "online", "ts": ts}
    return [
        json.dumps({**base, "sensors": ["x"]}).encode(),
        json.dumps({**base, "sensors": "ok"}).encode(),
        json.dumps({**base, "sensors": {"a": 0}}).encode().replace(b'"a": 0', b'"a": ' + deep),
        json.dumps({**base, "ts": 10**19}).encode(),
        json.dumps({**base, "ts": 9e15}).encode(),
        json.dumps({**base, "agent": {"not": "a string"}}).encode(),
        json.dumps({**base, "state": ["online"]}).encode(),
        b"{}",
        b"[1, 2, 3]",
    ]


class _DeadLetters:
    """Counts dead letters per original topic, from the moment it subscribes."""

    def __init__(self, url: str) -> None:
        b = parse_broker_url(url)
        self.by_topic: dict[str, int] = {}
        self._cond = threading.Condition()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.on_connect = lambda c, *_: c.subscribe(f"{DEAD_LETTER_TOPIC_PREFIX}/#", 1)
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(b.host, b.port, 30)
        self.client.loop_start()
        assert ready.wait(30), "no SUBACK for the dead-letter topic"

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        topic = decode_dead_letter(bytes(msg.payload)).topic
        with self._cond:
            self.by_topic[topic] = self.by_topic.get(topic, 0) + 1
            self._cond.notify_all()

    def count(self, prefix: str) -> int:
        with self._cond:
            return sum(n for t, n in self.by_topic.items() if t.startswith(prefix))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _publisher(url: str) -> mqtt.Client:
    b = parse_broker_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect(b.host, b.port, 30)
    client.loop_start()
    return client


def _publish(client: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    info = client.publish(topic, payload, qos=1, retain=retain)
    info.wait_for_publish(30)
    assert info.is_published(), f"broker did not acknowledge {topic}"


def _expected(rows: list[Row]) -> dict[tuple[str, str, str, int], tuple[int, float, float]]:
    out: dict[tuple[str, str, str, int], list[float]] = {}
    for site, device, sensor, ts, value in rows:
        out.setdefault((site, device, sensor, ts - ts % WINDOW_MS), []).append(value)
    return {k: (len(v), min(v), max(v)) for k, v in out.items()}


def _stored(influxdb: InfluxDB, db: str, site: str) -> dict[tuple[str, str, str, int], Any]:
    got = {k: v for k, v in stored_windows(influxdb, db).items() if k[0] == site}
    return {k: (p["count"], p["min"], p["max"]) for k, p in got.items()}


def _guarded(failures: list[str]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Record a step's failure instead of raising it into hypothesis.

    The pipeline and broker are shared by all examples, so hypothesis could not
    replay a failing example faithfully (it would find them changed); the test
    reports the first failing sequence, step by step, as it happened.
    """

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(fn)
        def run(self: Any, **kwargs: Any) -> None:
            shown = {k: v for k, v in kwargs.items() if not isinstance(v, st.DataObject)}
            self.steps.append(f"{fn.__name__}({shown})")
            if failures:
                return
            try:
                fn(self, **kwargs)
            except Exception:
                failures.append("\n".join(self.steps) + "\n" + traceback.format_exc())

        return run

    return wrap


def test_interleaved_hostile_sequences_keep_the_pipeline_up_and_data_exact(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    # A 1 h retention policy, so a reading 2 h old is refused by InfluxDB itself.
    influxdb.query(
        f'ALTER RETENTION POLICY "autogen" ON "{influx_db}" DURATION 1h SHARD DURATION 1h'
    )
    pipeline = start_pipeline(
        "--window-s", str(WINDOW_MS / 1000), "--lateness-s", "0",
        "--idle-timeout-s", str(IDLE_TIMEOUT_S),
    )  # fmt: skip
    publisher = _publisher(mosquitto.url)
    dead = _DeadLetters(mosquitto.url)
    failures: list[str] = []
    guarded = _guarded(failures)

    class Fleet(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.steps: list[str] = []
            self.site = f"fz-{secrets.token_hex(3)}"
            self.rows: list[Row] = []
            self.seq = {d: int(time.time() * 1000) for d in DEVICES}
            self.last_ts = dict.fromkeys(DEVICES, 0)
            # Copies that must be dropped as duplicates: sent since the last seq jump.
            self.sent: dict[str, list[bytes]] = {d: [] for d in DEVICES}
            self.hostile = 0
            self.restarts = 0
            self.retained: set[str] = set()
            self.old_device = 0

        def _ts(self, device: str) -> int:
            ts = max(int(time.time() * 1000), self.last_ts[device] + 1)
            self.last_ts[device] = ts
            return ts

        @rule(
            device=st.sampled_from(DEVICES),
            values=st.lists(
                st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=6
            ),
            schema=st.sampled_from(("fieldline.telemetry/1", "fieldline.telemetry/2")),
        )
        @guarded
        def valid(self, device: str, values: list[float], schema: str) -> None:
            self.seq[device] += 1
            readings = []
            for i, v in enumerate(values):
                sensor = SENSORS[i % len(SENSORS)]
                readings.append(Reading(sensor, self._ts(device), v, "C"))
            payload = encode_telemetry(device, self.seq[device], readings, schema)
            _publish(publisher, telemetry_topic(self.site, device), payload)
            self.sent[device].append(payload)
            self.rows += [(self.site, device, r.sensor, r.ts, r.value) for r in readings]

        @precondition(lambda self: any(self.sent.values()))
        @rule(data=st.data())
        @guarded
        def duplicate(self, data: st.DataObject) -> None:
            device = data.draw(st.sampled_from([d for d in DEVICES if self.sent[d]]))
            payload = data.draw(st.sampled_from(self.sent[device][-50:]))
            _publish(publisher, telemetry_topic(self.site, device), payload)

        @rule(device=st.sampled_from(DEVICES), gap=st.integers(min_value=2, max_value=2**40))
        @guarded
        def seq_jump(self, device: str, gap: int) -> None:
            """A device whose counter leaps forward (still allowed by the contract)."""
            self.seq[device] += gap - 1
            self.sent[device] = []

        @rule(device=st.sampled_from(DEVICES), data=st.data())
        @guarded
        def hostile_telemetry(self, device: str, data: st.DataObject) -> None:
            payload = data.draw(st.sampled_from(_hostile_telemetry(device, self._ts(device))))
            _publish(publisher, telemetry_topic(self.site, device), payload)
            self.hostile += 1

        @rule(device=st.sampled_from(DEVICES), data=st.data(), retain=st.booleans())
        @guarded
        def hostile_status(self, device: str, data: st.DataObject, retain: bool) -> None:
            payload = data.draw(st.sampled_from(_hostile_status(device, self._ts(device))))
            topic = status_topic(self.site, device)
            _publish(publisher, topic, payload, retain=retain)
            if retain:
                self.retained.add(topic)
            self.hostile += 1

        @rule()
        @guarded
        def beyond_retention(self) -> None:
            """A new device's first reading, 2 h old: InfluxDB refuses its window."""
            self.old_device += 1
            device = f"old{self.old_device}"
            ts = int(time.time() * 1000) - 2 * 3600 * 1000
            payload = encode_telemetry(device, 1, [Reading("temp", ts, 1.0, "C")])
            _publish(publisher, telemetry_topic(self.site, device), payload)

        @precondition(lambda self: self.restarts < MAX_RESTARTS)
        @rule(down_s=st.floats(min_value=0.0, max_value=2 * IDLE_TIMEOUT_S))
        @guarded
        def restart(self, down_s: float) -> None:
            assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
            pipeline.kill()
            time.sleep(down_s)  # devices keep their messages with the broker meanwhile
            pipeline.restart()
            self.restarts += 1

        @guarded
        def teardown(self) -> None:
            try:
                expected = _expected(self.rows)
                deadline = time.monotonic() + SETTLE_S
                while time.monotonic() < deadline:
                    assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
                    got = _stored(influxdb, influx_db, self.site)
                    if got == expected and dead.count(f"fieldline/{self.site}/") >= self.hostile:
                        break
                    time.sleep(0.5)
                assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
                got = _stored(influxdb, influx_db, self.site)
                missing = sorted(set(expected) - set(got))
                extra = sorted(set(got) - set(expected))
                wrong = [(k, got[k], v) for k, v in expected.items() if k in got and got[k] != v]
                assert not missing, f"{len(missing)} windows missing, e.g. {missing[:3]}"
                assert not extra, f"{len(extra)} windows not expected, e.g. {extra[:3]}"
                assert not wrong, f"{len(wrong)} windows differ, e.g. {wrong[:3]}"
                assert dead.count(f"fieldline/{self.site}/") >= self.hostile
            finally:
                for topic in self.retained:  # an empty retained message clears it
                    _publish(publisher, topic, b"", retain=True)

    try:
        run_state_machine_as_test(
            Fleet,
            settings=settings(
                max_examples=6,
                stateful_step_count=20,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                database=None,
                # The pipeline is shared across examples: a shrink would replay
                # against a pipeline already changed by the failure, so report
                # the first failing sequence as it happened.
                phases=[Phase.explicit, Phase.generate],
            ),
        )
        assert not failures, failures[0] + "\npipeline log:\n" + pipeline.log_text()[-3000:]
        assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
        assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    finally:
        dead.close()
        publisher.loop_stop()
        publisher.disconnect()
