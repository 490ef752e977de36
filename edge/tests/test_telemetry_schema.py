"""agent.telemetry_schema: spooled batches as written, v1 or v2 on the wire (the key
itself is checked in test_config.py)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_edge.agent import AgentReport, DevicePublisher
from fieldline_edge.contract import SCHEMA_TELEMETRY_V1, SCHEMA_TELEMETRY_V2, Reading
from fieldline_edge.edge_cli import agent_from_config
from fieldline_edge.mqtt import Connection, parse_broker_url
from fieldline_edge.sensors import SimulatedSensor
from fieldline_edge.spool import Spool

Subscribe = Callable[[str, list[str]], Any]
NOW_MS = 1_764_253_800_000


def mixed_readings(n: int) -> list[Reading]:
    """Two sensors interleaved, as the agent batches them."""
    out = []
    for i in range(n):
        out.append(Reading("temperature", NOW_MS + i, 20.0 + i / 4, "°C"))
        out.append(Reading("humidity", NOW_MS + i, 50.0 - i, "%"))
    return out


def decode(device: str, payload: bytes) -> contract.Telemetry:
    return contract.decode_telemetry(contract.telemetry_topic("home", device), payload)


def by_sensor(readings: list[Reading]) -> dict[str, list[Reading]]:
    # v2 groups readings by sensor; each sensor's own order is what must hold.
    out: dict[str, list[Reading]] = {}
    for r in readings:
        out.setdefault(r.sensor, []).append(r)
    return out


# --------------------------------------------------------------------------- spool


def test_the_spool_stores_each_batch_in_the_schema_it_was_appended_in(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    spool = Spool(path, "pi-1")
    first = spool.append(mixed_readings(3), NOW_MS)
    second = spool.append(mixed_readings(5), NOW_MS, SCHEMA_TELEMETRY_V2)
    with pytest.raises(ValueError, match="unknown telemetry schema"):
        spool.append(mixed_readings(1), NOW_MS, "fieldline.telemetry/3")
    assert spool.pending_batches == 2  # the refused batch left nothing behind
    spool.close()

    # After a restart (say with the other setting) each batch is replayed as written.
    again = Spool(path, "pi-1")
    items = again.peek(-1, 10)
    assert [m.seq for m in items] == [first, second]
    v1, v2 = (decode("pi-1", m.payload) for m in items)
    assert (v1.schema, v1.seq, v1.readings) == (SCHEMA_TELEMETRY_V1, first, mixed_readings(3))
    assert (v2.schema, v2.seq) == (SCHEMA_TELEMETRY_V2, second)
    assert by_sensor(v2.readings) == by_sensor(mixed_readings(5))
    assert [m.readings for m in items] == [6, 10]
    assert again.pending_bytes == sum(len(m.payload) for m in items)
    assert len(items[1].payload) < len(contract.encode_telemetry("pi-1", second, mixed_readings(5)))
    again.close()


# --------------------------------------------------------------------------- on the wire


@pytest.mark.services
def test_a_device_publisher_sends_the_schema_it_was_given(
    mosquitto: Any, subscribe: Subscribe
) -> None:
    device = f"dev-{uuid.uuid4().hex[:12]}"
    topic = contract.telemetry_topic("home", device)
    sub = subscribe(mosquitto.url, [topic])
    conn = Connection(parse_broker_url(mosquitto.url), f"schema-{uuid.uuid4().hex[:8]}")
    with pytest.raises(ValueError, match="unknown telemetry schema 'v2'"):
        DevicePublisher(conn.client, "home", device, schema="v2")
    conn.connect()
    try:
        old = DevicePublisher(conn.client, "home", device, start_seq=1)
        new = DevicePublisher(conn.client, "home", device, start_seq=2, schema=SCHEMA_TELEMETRY_V2)
        for pub in (old, new):
            for r in mixed_readings(4):
                pub.add(r)
            assert pub.flush() is not None
            assert pub.wait_for_acks(10.0) == 0
    finally:
        conn.close()
    msgs = sub.wait_for(lambda ms: len(ms) == 2)
    got = sorted((decode(device, m.payload) for m in msgs), key=lambda t: t.seq)
    assert [t.schema for t in got] == [SCHEMA_TELEMETRY_V1, SCHEMA_TELEMETRY_V2]
    assert got[0].readings == mixed_readings(4)
    assert by_sensor(got[1].readings) == by_sensor(mixed_readings(4))


@pytest.mark.services
def test_an_agent_configured_for_v2_replays_its_v1_backlog_then_sends_v2(
    tmp_path: Path, mosquitto: Any, subscribe: Subscribe
) -> None:
    device = f"dev-{uuid.uuid4().hex[:12]}"
    topic = contract.telemetry_topic("home", device)
    spool_path = tmp_path / "spool.db"
    # A backlog spooled while the device still sent version 1.
    backlog = Spool(str(spool_path), device)
    old_seq = backlog.append(mixed_readings(2), NOW_MS)
    backlog.close()
    conf = tmp_path / "edge.toml"
    conf.write_text(
        f'[device]\nid = "{device}"\nsite = "home"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\n'
        '[spool]\npath = "spool.db"\n'
        '[agent]\nbatch_max = 4\nflush_interval_s = 0.5\nclock_sync_file = ""\n'
        "telemetry_schema = 2\n"
        '[[sensors]]\nname = "t"\ndriver = "simulated"\ninterval_s = 0.05\nunit = "°C"\nseed = 7\n'
    )
    sub = subscribe(mosquitto.url, [topic])
    agent, _ = agent_from_config(str(conf))
    assert agent.telemetry_schema == SCHEMA_TELEMETRY_V2
    result: list[AgentReport] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()))
    thread.start()
    try:
        sub.wait_for(lambda ms: len(ms) >= 4)
    finally:
        agent.stop()
        thread.join()
    report = result[0]
    assert (report.unacked_messages, report.dropped_readings) == (0, 0)
    msgs = sub.wait_for(lambda ms: len(ms) == report.published_messages)
    batches = [decode(device, m.payload) for m in msgs]
    # The backlog goes first and as it was written; everything after it is v2.
    assert (batches[0].seq, batches[0].schema) == (old_seq, SCHEMA_TELEMETRY_V1)
    assert batches[0].readings == mixed_readings(2)
    assert {b.schema for b in batches[1:]} == {SCHEMA_TELEMETRY_V2}
    # (A reopened spool's first seq is at least the time in ms, then +1 each.)
    seq1 = batches[1].seq
    assert seq1 > old_seq
    assert [b.seq for b in batches[1:]] == list(range(seq1, seq1 + len(batches) - 1))
    values = [r.value for b in batches[1:] for r in b.readings]
    reference = SimulatedSensor("t", "°C", seed=7, interval_s=0.05)
    assert values == [reference.read() for _ in values]
    assert {r.unit for b in batches[1:] for r in b.readings} == {"°C"}
