"""The whole system secured: TLS, a user per device and per service, least-privilege
InfluxDB, and no secret in any log, output or ``repr``."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.mqtt import TLSConfig, parse_broker_url
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_localstack.pytest_plugin import SECURE_DEVICES, SECURE_SITE
from fieldline_localstack.security import BrokerSecurity
from fieldline_pipeline.connectors.influx import InfluxV1Config, InfluxV2Config
from fieldline_pipeline.connectors.mqtt import MQTTSettings
from fieldline_pipeline.settings import PipelineSettings
from fieldline_sim.credentials import FleetCredentials
from fieldline_sim.fleet import FleetConfig
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services, pytest.mark.e2e]

#: Bound on waiting for the broker; a bound on failure, not a timing assertion.
WAIT_S = 30.0


def run_sim(
    broker: Mosquitto, security: BrokerSecurity, gt: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    """The simulator as each device's own user, over TLS, secrets only in env and files.

    Its own user goes to the service listener, the devices' to the device listener.
    """
    env = {
        **os.environ,
        "FIELDLINE_BROKER_URL": broker.service_url,
        "FIELDLINE_SIM_DEVICE_BROKER_URL": broker.tls_url,
        "FIELDLINE_MQTT_CA_FILE": str(security.ca_file),
        "FIELDLINE_SIM_CREDENTIALS": str(security.sim_credentials_file(SECURE_SITE)),
    }
    return subprocess.run(
        fieldline(
            "sim", "run", "--site", SECURE_SITE, "--devices", str(len(SECURE_DEVICES)),
            "--rate-hz", "20", "--batch-size", "5", "--duration-s", "3", "--seed", "3",
            "--ground-truth", str(gt), "--instance", f"sim-{secrets.token_hex(3)}", *extra,
        ),
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_pipeline_end_to_end_over_tls_with_least_privilege_users(
    secure_pipelines: Any,
    secure_mosquitto: Mosquitto,
    secure_influxdb: InfluxDB,
    broker_security: BrokerSecurity,
    tmp_path: Path,
) -> None:
    pipeline = secure_pipelines.start(
        "--window-s", "1", "--lateness-s", "1", "--log-level", "DEBUG"
    )
    sim = run_sim(secure_mosquitto, broker_security, tmp_path / "gt")
    assert sim.returncode == 0, sim.stderr[-3000:]
    summary = json.loads((tmp_path / "gt" / "summary.json").read_text())
    published = summary["published_readings"]
    assert summary["unacked_messages"] == 0
    assert published > 0
    # Every reading reached InfluxDB through the write-only user: the broker let
    # each device publish its own telemetry, and the pipeline read all of it.
    assert pipeline.wait_readings(published), pipeline.log_text()[-3000:]
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    final = pipeline.metrics()
    assert final.get("done") is True
    assert final["dead_letters"] == 0
    rows = secure_influxdb.points(
        "SELECT sum(count) AS n FROM reading_window", secure_pipelines.database
    )
    assert rows[0]["n"] == published
    devices = secure_influxdb.query(
        'SHOW TAG VALUES FROM reading_window WITH KEY = "device"', secure_pipelines.database
    )["results"][0]["series"][0]["values"]
    assert sorted(v for _, v in devices) == list(SECURE_DEVICES)

    every_secret = secure_pipelines.secrets + [u.password for u in broker_security.users.values()]
    outputs = {
        "pipeline log": pipeline.log_text(),
        "sim stdout": sim.stdout,
        "sim stderr": sim.stderr,
    }
    for name, text in outputs.items():
        leaked = [s for s in every_secret if s in text]
        assert not leaked, f"{name} shows a secret"


def test_a_device_key_cannot_take_the_pipelines_session_nothing_is_lost(
    secure_pipelines: Any,
    secure_mosquitto: Mosquitto,
    secure_influxdb: InfluxDB,
    broker_security: BrokerSecurity,
    tmp_path: Path,
) -> None:
    """Readings queued for a stopped pipeline survive a device key that connects
    with the pipeline's client id and clean_session=false to resume its session."""
    pipeline = secure_pipelines.start("--window-s", "1", "--lateness-s", "1")
    intake_id = pipeline.args[pipeline.args.index("--client-id") + 1] + "-0"
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    # The pipeline is away: its persistent session collects what the devices send.
    sim = run_sim(secure_mosquitto, broker_security, tmp_path / "gt")
    assert sim.returncode == 0, sim.stderr[-3000:]
    summary = json.loads((tmp_path / "gt" / "summary.json").read_text())
    published = int(summary["published_readings"])
    assert summary["unacked_messages"] == 0
    assert published > 0
    # Each device key, on the device listener, asks for the intake's session.
    thieves = [
        session_thief(secure_mosquitto, broker_security, device, intake_id)
        for device in SECURE_DEVICES
    ]
    assert thieves == [(False, 0)] * len(SECURE_DEVICES)  # (session present, messages)
    # On the service listener and in plaintext a device key does not log in at all.
    for port, tls in ((secure_mosquitto.service_port, True), (secure_mosquitto.port, False)):
        assert login(secure_mosquitto, broker_security, port, tls=tls) == "Not authorized"
    pipeline.restart()
    assert pipeline.wait_readings(published), pipeline.log_text()[-3000:]
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    rows = secure_influxdb.points(
        "SELECT sum(count) AS n FROM reading_window", secure_pipelines.database
    )
    assert rows[0]["n"] == published
    forget_session(secure_mosquitto, broker_security, intake_id)


def forget_session(broker: Mosquitto, security: BrokerSecurity, client_id: str) -> None:
    """Drop a stopped pipeline's session, which would queue every later test's telemetry."""
    pipe = security.pipeline
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
    c.tls_set(ca_certs=str(security.ca_file))
    c.username_pw_set(pipe.username, pipe.password)
    connected = threading.Event()
    c.on_connect = lambda *_a: connected.set()
    assert broker.service_port is not None
    c.connect(broker.host, broker.service_port, keepalive=30)
    c.loop_start()
    try:
        assert connected.wait(WAIT_S), "no CONNACK"
    finally:
        c.disconnect()
        c.loop_stop()
        c.reinitialise()


def _device_client(
    security: BrokerSecurity, device: str, client_id: str, *, tls: bool = True
) -> tuple[mqtt.Client, list[Any], threading.Event]:
    cred = security.device(SECURE_SITE, device)
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip
    if tls:
        c.tls_set(ca_certs=str(security.ca_file))
    c.username_pw_set(cred.username, cred.password)
    events: list[Any] = []
    done = threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        events.append((str(reason), flags.session_present))
        done.set()

    c.on_connect = on_connect
    c.on_message = lambda _c, _u, m: events.append(m.topic)
    return c, events, done


def session_thief(
    broker: Mosquitto, security: BrokerSecurity, device: str, client_id: str
) -> tuple[bool, int]:
    """Connect as ``device`` with ``client_id`` and clean_session=false; return whether
    the broker resumed a session, and how many messages it delivered."""
    c, events, done = _device_client(security, device, client_id)
    subscribed = threading.Event()
    c.on_subscribe = lambda *_a: subscribed.set()
    assert broker.tls_port is not None
    c.connect(broker.host, broker.tls_port, keepalive=30)
    c.loop_start()
    try:
        assert done.wait(WAIT_S), "no CONNACK"
        reason, present = events[0]
        assert reason == "Success", reason
        # A round trip: had the broker resumed a session, its queue went out before this.
        c.subscribe(f"fieldline/{SECURE_SITE}/{device}/none", qos=1)
        assert subscribed.wait(WAIT_S), "no SUBACK"
        return bool(present), len(events) - 1
    finally:
        c.disconnect()
        c.loop_stop()
        c.reinitialise()


def login(broker: Mosquitto, security: BrokerSecurity, port: int | None, *, tls: bool) -> str:
    """The CONNACK's reason for dev-0001's valid password on ``port``."""
    c, events, done = _device_client(security, SECURE_DEVICES[0], "x", tls=tls)
    assert port is not None
    c.connect(broker.host, port, keepalive=30)
    c.loop_start()
    try:
        assert done.wait(WAIT_S), "no CONNACK"
        return str(events[0][0])
    finally:
        c.disconnect()
        c.loop_stop()
        c.reinitialise()


def test_a_refused_pipeline_and_simulator_say_why_without_the_password(
    secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, tmp_path: Path
) -> None:
    password = secrets.token_urlsafe(16)
    url = (
        f"mqtts://fieldline-pipeline:{password}@{secure_mosquitto.host}:"
        f"{secure_mosquitto.service_port}"
    )
    env = {
        **os.environ,
        "FIELDLINE_BROKER_URL": url,
        "FIELDLINE_MQTT_CA_FILE": str(broker_security.ca_file),
    }
    sim = subprocess.run(
        fieldline("sim", "run", "--site", SECURE_SITE, "--devices", "1", "--duration-s", "1"),
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert sim.returncode == 1
    assert "Not authorized" in sim.stderr
    assert "fieldline-pipeline:***@" in sim.stderr
    assert password not in sim.stdout + sim.stderr

    bad_influx = subprocess.run(
        fieldline(
            "pipeline", "run", "--influx-url", f"http://admin:{password}@127.0.0.1:8086",
            "--state-dir", str(tmp_path / "state"),
        ),
        capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert bad_influx.returncode == 2
    assert "must not contain credentials" in bad_influx.stderr
    assert password not in bad_influx.stdout + bad_influx.stderr


def test_no_secret_in_the_repr_of_any_settings(broker_security: BrokerSecurity) -> None:
    mqtt_pw, influx_pw, token = (secrets.token_urlsafe(16) for _ in range(3))
    tls = TLSConfig(str(broker_security.ca_file))
    mqtt = MQTTSettings(broker=parse_broker_url(f"mqtts://p:{mqtt_pw}@h:8883"), tls=tls)
    v1 = PipelineSettings(
        mqtt=mqtt, influx=InfluxV1Config("http://h:8086", "db", None, "u", influx_pw)
    )
    v2 = PipelineSettings(mqtt=mqtt, influx=InfluxV2Config("http://h:8086", "o", "b", token))
    creds = FleetCredentials.load(broker_security.sim_credentials_file(SECURE_SITE))
    fleet = FleetConfig(mqtt.broker, site=SECURE_SITE, devices=3, credentials=creds, tls=tls)
    text = repr(v1) + repr(v2) + str(mqtt.broker) + repr(fleet) + repr(creds)
    assert "p:***@h:8883" in text
    sim_secrets = [c.password for c in creds.devices.values()]
    assert creds.fleet is not None
    for secret in [mqtt_pw, influx_pw, token, creds.fleet.password, *sim_secrets]:
        assert secret not in text
    # TLS options without TLS would silently send passwords in the clear: refused.
    with pytest.raises(ValueError, match="mqtts://"):
        MQTTSettings(broker=parse_broker_url("mqtt://h"), tls=tls)
