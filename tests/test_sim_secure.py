"""Scenario fleets and replays against the secured broker: TLS, users, ACLs."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge import contract
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_localstack.pytest_plugin import SECURE_DEVICES, SECURE_SITE
from fieldline_localstack.security import BrokerSecurity
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WAIT_S = 60.0


class Reader:
    """The pipeline's user reading every telemetry topic (all it may read)."""

    def __init__(self, broker: Mosquitto, security: BrokerSecurity) -> None:
        self.messages: list[contract.Telemetry] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        user = security.pipeline
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(user.username, user.password)
        self.client.on_connect = lambda c, *a: c.subscribe(
            f"fieldline/{SECURE_SITE}/+/telemetry", 1
        )
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        assert self._subscribed.wait(WAIT_S), "no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(contract.decode_telemetry(msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def wait_readings(self, n: int, devices: set[str]) -> list[contract.Telemetry]:
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while True:
                mine = [t for t in self.messages if t.device in devices]
                if sum(len(t.readings) for t in mine) >= n:
                    return mine
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"only {len(mine)} messages of {sorted(devices)} arrived")
                self._cond.wait(remaining)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.reinitialise()


@pytest.fixture
def reader(secure_mosquitto: Mosquitto, broker_security: BrokerSecurity) -> Iterator[Reader]:
    r = Reader(secure_mosquitto, broker_security)
    yield r
    r.close()


def tls_env(broker: Mosquitto, security: BrokerSecurity) -> dict[str, str]:
    """The simulator's own user on the service listener, device users on theirs."""
    return {
        **os.environ,
        "FIELDLINE_BROKER_URL": broker.service_url,
        "FIELDLINE_SIM_DEVICE_BROKER_URL": broker.tls_url,
        "FIELDLINE_MQTT_CA_FILE": str(security.ca_file),
    }


def run(args: list[str], env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        fieldline("sim", *args, "--quiet"),
        capture_output=True, text=True, timeout=180, env=env, stdin=subprocess.DEVNULL,
        check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report: dict[str, object] = json.loads(proc.stdout)
    return report


@pytest.mark.parametrize("mode", [["--connection-per-device"], ["--connections", "2"]])
def test_fleet_over_tls_as_each_device_or_as_the_simulator(
    secure_mosquitto: Mosquitto,
    broker_security: BrokerSecurity,
    reader: Reader,
    tmp_path: Path,
    mode: list[str],
) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        f'site = "{SECURE_SITE}"\nstart = "now"\nduration_s = 3\n'
        f'[[devices]]\nprefix = "dev"\ncount = {len(SECURE_DEVICES)}\nrate_hz = 5\n'
    )
    env = {
        **tls_env(secure_mosquitto, broker_security),
        "FIELDLINE_SIM_CREDENTIALS": str(broker_security.sim_credentials_file(SECURE_SITE)),
    }
    report = run(["fleet", str(scenario), *mode, "--instance", f"s-{secrets.token_hex(3)}"], env)
    assert report["unacked"] == 0
    n = len(SECURE_DEVICES) * 2 * 15
    assert report["readings"] == n
    # The broker acknowledges what an ACL refuses too: the reader proves it was let through.
    got = reader.wait_readings(n, set(SECURE_DEVICES))
    assert {t.device for t in got} == set(SECURE_DEVICES)


def test_replay_over_tls_as_the_simulator_user(
    secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, reader: Reader, tmp_path: Path
) -> None:
    csv_file = tmp_path / "boiler.csv"
    csv_file.write_text(
        "timestamp,value\n" + "".join(f"2020-01-01 00:00:{s:02d},{s}\n" for s in range(40))
    )
    sim_user = json.loads(broker_security.sim_credentials_file(SECURE_SITE).read_text())
    password = tmp_path / "password"
    password.write_text(sim_user["password"] + "\n")
    report = run(
        [
            "replay", str(csv_file), "--site", SECURE_SITE, "--speed", "0", "--batch", "8",
            "--username", sim_user["username"], "--password-file", str(password),
        ],
        tls_env(secure_mosquitto, broker_security),
    )  # fmt: skip
    assert report == {"devices": 1, "readings": 40, "messages": 5, "unacked": 0}
    got = reader.wait_readings(40, {"boiler"})
    assert [r.value for t in got for r in t.readings] == [float(s) for s in range(40)]


def test_wrong_password_is_a_one_line_error(
    secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, tmp_path: Path
) -> None:
    csv_file = tmp_path / "x.csv"
    csv_file.write_text("timestamp,value\n2020-01-01 00:00:00,1\n")
    password = tmp_path / "password"
    password.write_text("not-the-password\n")
    proc = subprocess.run(
        fieldline(
            "sim", "replay", str(csv_file), "--site", SECURE_SITE, "--username",
            f"fieldline-sim-{SECURE_SITE}", "--password-file", str(password), "--quiet",
        ),
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
        env=tls_env(secure_mosquitto, broker_security),
    )  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "broker refused the connection" in lines[0]
    assert "not-the-password" not in proc.stderr
