"""The agent's runtime: clock sanity, driver retries, the spool path, systemd notifications."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_edge.agent import RETRY_MAX_S, Agent, AgentReport, Scheduled
from fieldline_edge.clock import FLOOR_MS, Clock
from fieldline_edge.drivers import DriverError, Sample, Simulated
from fieldline_edge.mqtt import parse_broker_url, reconnect_delay_s
from fieldline_edge.sensors import SimulatedSensor

Subscribe = Callable[[str, list[str]], Any]
REPO = Path(__file__).resolve().parents[2]


class Flaky:
    """A driver that fails while ``failing`` is set, and counts its reads."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.failing = True
        self.reads = 0

    def read(self) -> list[Sample]:
        self.reads += 1
        if self.failing:
            raise DriverError("no answer from 0x76")
        return [Sample(self.name, 1.0, "x")]


def test_a_failing_driver_is_retried_with_backoff_and_reported() -> None:
    flaky = Flaky("env")
    agent = Agent(parse_broker_url("mqtt://127.0.0.1:1"), "s", "d", [Scheduled(flaky, 1.0)])
    try:
        s = agent.scheduled[0]
        due = []
        now = 1000.0
        for _ in range(9):
            agent._sample_due(now)
            due.append(s.next_due - now)
            now = s.next_due
        # The interval doubles per failure, up to RETRY_MAX_S.
        assert due == [1, 2, 4, 8, 16, 32, RETRY_MAX_S, RETRY_MAX_S, RETRY_MAX_S]
        assert flaky.reads == 9
        status = agent.status("online")
        assert status.sensors == {"env": "error: no answer from 0x76"}
        agent._sample_due(now - 1.0)  # not due yet: no read
        assert flaky.reads == 9
        flaky.failing = False
        agent._sample_due(now)
        assert agent.status("online").sensors == {"env": "ok"}
        assert s.next_due == now + 1.0  # back to its interval
    finally:
        agent.connection.close()
        agent.spool.close()


def test_reconnect_delays_grow_with_jitter() -> None:
    import random

    rng = random.Random(7)
    delays = [[reconnect_delay_s(n, rng) for n in range(1, 9)] for _ in range(50)]
    for row in delays:
        caps = [1, 2, 4, 8, 16, 32, 60, 60]
        assert all(cap // 2 <= d <= cap or d == 1 for d, cap in zip(row, caps))
    assert len({row[5] for row in delays}) > 3  # devices do not all wait the same


class SettableClock:
    """A wall clock the test sets; monotonic time is real."""

    def __init__(self, wall_s: float) -> None:
        self.offset = wall_s - time.monotonic()

    def wall(self) -> float:
        return time.monotonic() + self.offset

    def set(self, wall_s: float) -> None:
        self.offset = wall_s - time.monotonic()


@pytest.mark.services
def test_readings_taken_before_the_clock_is_set_get_their_real_time(
    mosquitto: Any, subscribe: Subscribe
) -> None:
    device = f"dev-{uuid.uuid4().hex[:12]}"
    tele = contract.telemetry_topic("test", device)
    status_topic = contract.status_topic("test", device)
    sub = subscribe(mosquitto.url, [f"fieldline/test/{device}/#"])
    fake = SettableClock(86_400.0)  # 1970-01-02: a Pi without RTC after boot
    clock = Clock("", wall=fake.wall)
    sensor = SimulatedSensor("t", "°C", seed=3)
    agent = Agent(
        parse_broker_url(mosquitto.url), "test", device, [Scheduled(Simulated("t", sensor), 0.05)],
        batch_size=5, max_batch_delay_s=0.2, clock=clock,
    )  # fmt: skip
    result: list[AgentReport] = []
    thread = threading.Thread(target=lambda: result.append(agent.run()))
    thread.start()
    try:

        def held(ms: list[Any]) -> bool:
            st = [contract.decode_status(m.topic, m.payload) for m in ms if m.topic == status_topic]
            return any((s.sensors or {}).get("_clock", "").startswith("error:") for s in st)

        sub.wait_for(held)
        deadline = time.monotonic() + 20
        while sensor.index < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(m.topic == tele for m in sub.messages)  # nothing sent meanwhile
        before_sync = time.time()
        taken_before = sensor.index
        fake.set(time.time())  # NTP arrives
        msgs = sub.wait_for(
            lambda ms: sum(len(contract.decode_telemetry(m.topic, m.payload).readings)
                           for m in ms if m.topic == tele) >= taken_before + 5
        )  # fmt: skip
    finally:
        agent.stop()
        thread.join()
    batches = [contract.decode_telemetry(m.topic, m.payload) for m in msgs if m.topic == tele]
    readings = [r for b in batches for r in b.readings]
    assert all(r.ts >= FLOOR_MS for r in readings)  # never a 1970 timestamp
    # The held-back ones carry the time they were really taken: before the sync.
    early = readings[:taken_before]
    assert all(r.ts <= before_sync * 1000 + 50 for r in early)
    assert [r.ts for r in readings] == sorted(r.ts for r in readings)
    assert early[-1].ts - early[0].ts >= (taken_before - 1) * 50 * 0.9
    late = [
        contract.decode_status(m.topic, m.payload) for m in sub.messages if m.topic == status_topic
    ]
    assert "_clock" not in (late[-1].sensors or {})
    assert result[0].dropped_readings == 0


def test_sd_notify_ready_watchdog_and_stopping(tmp_path: Path, mosquitto: Any) -> None:
    sock_path = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(sock_path)
    server.settimeout(30)
    conf = tmp_path / "edge.toml"
    conf.write_text(
        f'[device]\nid = "dev-{uuid.uuid4().hex[:8]}"\nsite = "test"\n'
        f'[mqtt]\nurl = "{mosquitto.url}"\n[spool]\npath = "spool.db"\n'
        '[agent]\nclock_sync_file = ""\n'
        '[[sensors]]\nname = "t"\ndriver = "simulated"\ninterval_s = 0.1\n'
    )
    env = {**os.environ, "NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fieldline_edge", "edge", "run", "--config", str(conf)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        got: list[str] = []
        while got.count("WATCHDOG=1") < 3:
            got.append(server.recv(4096).decode())
        assert got[0].startswith("READY=1")
        proc.send_signal(signal.SIGTERM)
        while "STOPPING=1" not in got:
            got.append(server.recv(4096).decode())
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        server.close()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_a_bad_config_is_one_line_naming_the_key(tmp_path: Path) -> None:
    conf = tmp_path / "edge.toml"
    conf.write_text(
        '[device]\nid = "d"\nsite = "s"\n[mqtt]\nurl = "mqtt://h"\nkeepalive_s = "abc"\n'
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fieldline_edge", "edge", "run", "--config", str(conf)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "fieldline edge: error: mqtt.keepalive_s: must be an integer 5-65535, got 'abc'"
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "fieldline_edge", "edge", "run", "--config", str(conf),
         "--broker", "mqtt://h"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--config cannot be combined with --broker" in proc.stderr
