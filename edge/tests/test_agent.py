"""The agent against a real Mosquitto (fixtures from fieldline_localstack)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_edge.agent import Agent, AgentReport, DevicePublisher
from fieldline_edge.contract import Reading
from fieldline_edge.mqtt import Connection, parse_broker_url
from fieldline_edge.sensors import CpuTemperature, SimulatedSensor

pytestmark = pytest.mark.services

Subscribe = Callable[[str, list[str]], Any]


def new_device() -> str:
    # The session broker keeps retained statuses: every test gets its own device.
    return f"dev-{uuid.uuid4().hex[:12]}"


def statuses(messages: list[Any], topic: str) -> list[contract.Status]:
    return [contract.decode_status(m.topic, m.payload) for m in messages if m.topic == topic]


def telemetry(messages: list[Any], topic: str) -> list[contract.Telemetry]:
    return [contract.decode_telemetry(m.topic, m.payload) for m in messages if m.topic == topic]


class RunningAgent:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.report: AgentReport | None = None
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        self.report = self.agent.run()

    def stop(self) -> AgentReport:
        self.agent.stop()
        self.thread.join()
        assert self.report is not None
        return self.report


def make_agent(url: str, device: str, **kwargs: Any) -> Agent:
    sensors = kwargs.pop("sensors", None) or [
        SimulatedSensor("temperature", "°C", seed=1),
        SimulatedSensor("humidity", "%", seed=2),
    ]
    return Agent(
        parse_broker_url(url), "test", device, sensors, interval_s=0.02, batch_size=4, **kwargs
    )


def test_agent_publishes_telemetry_and_status(mosquitto: Any, subscribe: Subscribe) -> None:
    device = new_device()
    tele_topic = contract.telemetry_topic("test", device)
    status_topic = contract.status_topic("test", device)
    sub = subscribe(mosquitto.url, [f"fieldline/test/{device}/#"])
    running = RunningAgent(make_agent(mosquitto.url, device))
    try:
        msgs = sub.wait_for(lambda ms: len(telemetry(ms, tele_topic)) >= 5)
    finally:
        report = running.stop()

    batches = telemetry(msgs, tele_topic)
    seq0 = batches[0].seq  # the agent's start time in ms (contract.initial_seq)
    assert abs(seq0 - time.time() * 1000) < 3_600_000
    assert [t.seq for t in batches[:5]] == list(range(seq0, seq0 + 5))
    for batch in batches:
        assert batch.device == device
        assert len(batch.readings) == 4  # batch_size, two sensors sampled together
        assert {r.sensor for r in batch.readings} == {"temperature", "humidity"}
        assert {r.unit for r in batch.readings} == {"°C", "%"}
    assert statuses(msgs, status_topic)[0].state == "online"
    assert statuses(msgs, status_topic)[0].sensors == {"temperature": "ok", "humidity": "ok"}

    # Everything the agent published was acknowledged and arrives, in order.
    assert report.unacked_messages == 0
    assert report.dropped_readings == 0
    msgs = sub.wait_for(lambda ms: len(telemetry(ms, tele_topic)) == report.published_messages)
    batches = telemetry(msgs, tele_topic)
    assert [t.seq for t in batches] == list(range(seq0, seq0 + report.published_messages))
    assert sum(len(t.readings) for t in batches) == report.published_readings

    # The readings are the simulated sensors' deterministic values.
    temps = [r.value for t in batches for r in t.readings if r.sensor == "temperature"]
    reference = SimulatedSensor("temperature", "°C", seed=1)
    assert temps == [reference.read() for _ in temps]

    # After a clean stop the retained status says offline.
    late = subscribe(mosquitto.url, [status_topic])
    retained = late.wait_for(lambda ms: len(ms) >= 1)[0]
    assert retained.retain
    assert contract.decode_status(retained.topic, retained.payload).state == "offline"


def test_birth_is_retained_online(mosquitto: Any, subscribe: Subscribe) -> None:
    device = new_device()
    status_topic = contract.status_topic("test", device)
    watcher = subscribe(mosquitto.url, [status_topic])
    running = RunningAgent(make_agent(mosquitto.url, device))
    try:
        watcher.wait_for(lambda ms: len(ms) >= 1)
        late = subscribe(mosquitto.url, [status_topic])
        retained = late.wait_for(lambda ms: len(ms) >= 1)[0]
        assert retained.retain
        status = contract.decode_status(retained.topic, retained.payload)
        assert (status.device, status.state) == (device, "online")
        assert status.agent.startswith("fieldline-edge/")
    finally:
        running.stop()


def test_failing_sensor_is_reported_and_not_fatal(
    mosquitto: Any, subscribe: Subscribe, tmp_path: Path
) -> None:
    device = new_device()
    tele_topic = contract.telemetry_topic("test", device)
    status_topic = contract.status_topic("test", device)
    sub = subscribe(mosquitto.url, [f"fieldline/test/{device}/#"])
    sensors = [CpuTemperature(sysfs_root=str(tmp_path)), SimulatedSensor("humidity", "%")]
    running = RunningAgent(make_agent(mosquitto.url, device, sensors=sensors))
    try:
        msgs = sub.wait_for(lambda ms: len(telemetry(ms, tele_topic)) >= 2)
    finally:
        running.stop()
    online = statuses(msgs, status_topic)[0]
    assert online.state == "online"
    assert online.sensors is not None
    assert online.sensors["humidity"] == "ok"
    assert online.sensors["cpu_temp"].startswith("error: no thermal zones")
    for batch in telemetry(msgs, tele_topic):
        assert {r.sensor for r in batch.readings} == {"humidity"}


def test_sensor_recovery_updates_status(
    mosquitto: Any, subscribe: Subscribe, tmp_path: Path
) -> None:
    device = new_device()
    status_topic = contract.status_topic("test", device)
    sub = subscribe(mosquitto.url, [status_topic])
    running = RunningAgent(
        make_agent(mosquitto.url, device, sensors=[CpuTemperature(sysfs_root=str(tmp_path))])
    )
    try:
        sub.wait_for(lambda ms: len(ms) >= 1)
        zone = tmp_path / "sys" / "class" / "thermal" / "thermal_zone0"
        zone.mkdir(parents=True)
        (zone / "temp").write_text("45000\n")

        def recovered(ms: list[Any]) -> bool:
            return any(s.sensors == {"cpu_temp": "ok"} for s in statuses(ms, status_topic))

        msgs = sub.wait_for(recovered)
    finally:
        running.stop()
    states = statuses(msgs, status_topic)
    assert states[0].sensors is not None
    assert states[0].sensors["cpu_temp"].startswith("error:")
    assert all(s.state == "online" for s in states)


def test_agent_reconnects_after_broker_restart(fresh_mosquitto: Any, subscribe: Subscribe) -> None:
    device = new_device()
    tele_topic = contract.telemetry_topic("test", device)
    status_topic = contract.status_topic("test", device)
    running = RunningAgent(make_agent(fresh_mosquitto.url, device))
    try:
        before = subscribe(fresh_mosquitto.url, [tele_topic])
        last_seq = telemetry(before.wait_for(lambda ms: len(ms) >= 1), tele_topic)[-1].seq
        fresh_mosquitto.restart()
        after = subscribe(fresh_mosquitto.url, [f"fieldline/test/{device}/#"])

        def resumed(ms: list[Any]) -> bool:
            return any(t.seq > last_seq + 1 for t in telemetry(ms, tele_topic))

        msgs = after.wait_for(resumed)
        # The birth is published again on reconnect, so the retained status is online.
        late = subscribe(fresh_mosquitto.url, [status_topic])
        retained = late.wait_for(lambda ms: len(ms) >= 1)[0]
        assert contract.decode_status(retained.topic, retained.payload).state == "online"
    finally:
        report = running.stop()
    seqs = [t.seq for t in telemetry(msgs, tele_topic)]
    assert seqs == sorted(seqs)
    assert report.unacked_messages == 0


def test_publishers_can_share_one_client(mosquitto: Any, subscribe: Subscribe) -> None:
    devices = [new_device() for _ in range(3)]
    sub = subscribe(mosquitto.url, [f"fieldline/test/{d}/telemetry" for d in devices])
    conn = Connection(parse_broker_url(mosquitto.url), f"shared-{uuid.uuid4().hex[:8]}")
    conn.connect()
    try:
        pubs = [DevicePublisher(conn.client, "test", d, start_seq=10) for d in devices]
        for i in range(3):
            for pub in pubs:
                pub.add(Reading("temperature", 1_700_000_000_000 + i, float(i), "°C"))
                assert pub.flush() is not None
        assert pubs[0].flush() is None  # nothing buffered
        assert [pub.wait_for_acks(10.0) for pub in pubs] == [0, 0, 0]
        assert [pub.acked_messages for pub in pubs] == [3, 3, 3]
    finally:
        conn.close()
    msgs = sub.wait_for(lambda ms: len(ms) == 9)
    for d in devices:
        batches = telemetry(msgs, contract.telemetry_topic("test", d))
        assert [t.seq for t in batches] == [10, 11, 12]
        assert [t.readings[0].value for t in batches] == [0.0, 1.0, 2.0]
