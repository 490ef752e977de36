"""The secured broker and InfluxDB for real: who may connect, publish, read and write.

Mosquitto 2.0 checks the ACL's ``write`` when a client publishes (a denied
PUBLISH is still acknowledged, then dropped) and ``read`` when it is about to
deliver a message; it grants every SUBSCRIBE. So "cannot publish as another
device" and "cannot read another device's topics" are proven by what a
subscriber receives: the allowed message arrives, the forbidden one never does.
Messages from one client are routed in the order they arrive, so once a later
allowed message is in, an earlier forbidden one would have been too.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.mqtt import BrokerURL, TLSConfig, configure_client
from fieldline_localstack.influxdb import InfluxDB, InfluxQueryError
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.pytest_plugin import SECURE_DEVICES, SECURE_SITE
from fieldline_localstack.security import (
    OBSERVER_USER,
    PIPELINE_USER,
    BrokerSecurity,
    acl_text,
    sim_username,
)
from fieldline_localstack.stack import LocalStack
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = pytest.mark.services

#: Bound on waiting for the broker; a bound on failure, not a timing assertion.
WAIT_S = 20.0
DEV_A, DEV_B = SECURE_DEVICES[0], SECURE_DEVICES[1]


def telemetry(device: str) -> str:
    return f"fieldline/{SECURE_SITE}/{device}/telemetry"


class Peer:
    """A paho client (MQTT 3.1.1) that records what happens to it."""

    def __init__(
        self,
        host: str,
        port: int,
        auth: tuple[str, str] | None = None,
        *,
        ca_file: Path | None = None,
        system_ca: bool = False,
        client_cert: tuple[Path, Path] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.messages: list[tuple[str, bytes]] = []
        self.outcome: str | None = None  # "connected", "refused: ...", "error: ...", "lost: ..."
        self._cond = threading.Condition()
        self._subacks: list[list[Any]] = []
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"t-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
        )
        tls = None
        if ca_file is not None or system_ca or client_cert is not None:
            cert, key = client_cert if client_cert is not None else (None, None)
            tls = TLSConfig(
                str(ca_file) if ca_file is not None else None,
                str(cert) if cert is not None else None,
                str(key) if key is not None else None,
            )
        user, password = auth if auth is not None else (None, None)
        configure_client(c, BrokerURL(host, port, tls is not None, user, password), tls)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        self.client = c

    def connect(self) -> str:
        """Connect and wait for the CONNACK (or the failure); return the outcome."""
        try:
            self.client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:  # ssl.SSLError included
            self._set(f"error: {exc}")
            return self.outcome or ""
        self.client.loop_start()
        self._wait(lambda: self.outcome is not None)
        return self.outcome or "timeout"

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self._wait(lambda: bool(self._subacks)), "no SUBACK"

    def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the PUBACK (sent even for a denied message)."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_for(self, payload: bytes) -> list[tuple[str, bytes]]:
        assert self._wait(lambda: any(p == payload for _, p in self.messages)), self.messages
        with self._cond:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.reinitialise()  # closes paho's socket pair now, not at gc time

    # -- callbacks (paho's network thread)
    def _set(self, outcome: str) -> None:
        with self._cond:
            if self.outcome is None:
                self.outcome = outcome
            self._cond.notify_all()

    def _wait(self, predicate: Callable[[], bool]) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, WAIT_S)

    def _on_connect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._set(f"refused: {reason}" if reason.is_failure else "connected")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._set(f"lost: {reason}")

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self._cond.notify_all()

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _m: int, reasons: Any, _p: Any) -> None:
        with self._cond:
            self._subacks.append(list(reasons))
            self._cond.notify_all()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def connect(secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, peers: list[Peer]) -> Any:
    """``connect(username)`` -> a connected Peer on the TLS listener with that user."""

    def make(username: str) -> Peer:
        cred = broker_security.user(username)
        assert secure_mosquitto.tls_port is not None
        peer = Peer(
            secure_mosquitto.host,
            secure_mosquitto.tls_port,
            (cred.username, cred.password),
            ca_file=broker_security.ca_file,
        )
        peers.append(peer)
        assert peer.connect() == "connected", peer.outcome
        return peer

    return make


# -- generated files ----------------------------------------------------------


def test_generated_secrets_are_private_and_never_in_repr(broker_security: BrokerSecurity) -> None:
    sec = broker_security
    for path in (
        sec.password_file,
        sec.credentials_file,
        sec.server_key_file,
        sec.ca_file.with_suffix(".key"),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(sec.directory.stat().st_mode) == 0o700
    assert (sec.directory / ".gitignore").read_text() == "*\n"
    hashed = sec.password_file.read_text()
    text = repr(sec) + repr(list(sec.users.values())) + hashed + sec.acl_file.read_text()
    for cred in sec.users.values():
        assert cred.password not in text
        assert f"{cred.username}:$7$" in hashed  # PBKDF2-SHA512, mosquitto_passwd -U
    sim = json.loads(sec.sim_credentials_file(SECURE_SITE).read_text())
    assert sim["username"] == sim_username(SECURE_SITE)
    assert sim["devices"][DEV_A]["username"] == f"{SECURE_SITE}/{DEV_A}"


def test_acl_confines_each_device_to_its_own_two_topics() -> None:
    text = acl_text({"s1": ["d1"]}, ["s1"])
    block = text.split("user s1/d1\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert block == ["topic write fieldline/s1/d1/telemetry", "topic write fieldline/s1/d1/status"]
    # Nothing before the first user line: anonymous clients would get no rights.
    assert all(not line.startswith("topic") for line in text.split("\nuser ", 1)[0].splitlines())


# -- who may connect ------------------------------------------------------------


def test_anonymous_and_wrong_password_are_refused_on_every_listener(
    secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, peers: list[Peer]
) -> None:
    m, ca = secure_mosquitto, broker_security.ca_file
    assert m.tls_port is not None
    wrong = (PIPELINE_USER, "not-the-password")
    cases = [
        Peer(m.host, m.port),
        Peer(m.host, m.port, wrong),
        Peer(m.host, m.tls_port, ca_file=ca),
        Peer(m.host, m.tls_port, wrong, ca_file=ca),
        Peer(m.host, m.tls_port, (f"{SECURE_SITE}/unknown", "x"), ca_file=ca),
    ]
    peers.extend(cases)
    assert [p.connect() for p in cases] == ["refused: Not authorized"] * len(cases)


def test_tls_needs_the_ca_and_then_connects(
    secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, peers: list[Peer]
) -> None:
    m = secure_mosquitto
    assert m.tls_port is not None
    pipe = broker_security.pipeline
    without_ca = Peer(m.host, m.tls_port, (pipe.username, pipe.password), system_ca=True)
    with_ca = Peer(
        m.host, m.tls_port, (pipe.username, pipe.password), ca_file=broker_security.ca_file
    )
    peers.extend([without_ca, with_ca])
    assert "certificate verify failed" in without_ca.connect()
    assert with_ca.connect() == "connected"


def test_required_client_certificate(
    tmp_path: Path, broker_security: BrokerSecurity, peers: list[Peer]
) -> None:
    sec = broker_security
    with Mosquitto(tmp_path / "mtls", security=sec, require_certificate=True) as m:
        assert m.tls_port is not None
        pipe = (sec.pipeline.username, sec.pipeline.password)
        no_cert = Peer(m.host, m.tls_port, pipe, ca_file=sec.ca_file)
        cert = Peer(
            m.host, m.tls_port, pipe, ca_file=sec.ca_file,
            client_cert=(sec.client_cert_file, sec.client_key_file),
        )  # fmt: skip
        peers.extend([no_cert, cert])
        # TLS 1.3: the client finishes its handshake, then the server's alert ends it.
        assert no_cert.connect().startswith(("error:", "lost:"))
        assert cert.connect() == "connected"


# -- who may publish and read what ------------------------------------------------


def test_a_device_cannot_publish_as_another_device(connect: Any) -> None:
    reader = connect(PIPELINE_USER)
    group = secrets.token_hex(4)
    reader.subscribe(f"$share/{group}/fieldline/+/+/telemetry")
    status = connect(OBSERVER_USER)
    status.subscribe(f"fieldline/{SECURE_SITE}/+/status")
    dev = connect(f"{SECURE_SITE}/{DEV_A}")
    tag = secrets.token_hex(4).encode()
    dev.publish(telemetry(DEV_B), b"forged " + tag)
    dev.publish(f"fieldline/{SECURE_SITE}/{DEV_B}/status", b"forged status " + tag)
    dev.publish(f"fieldline/{SECURE_SITE}/{DEV_A}/alerts", b"forged alert " + tag)
    dev.publish(f"fieldline/{SECURE_SITE}/{DEV_A}/status", b"own status " + tag)
    dev.publish(telemetry(DEV_A), b"own " + tag)
    got = reader.wait_for(b"own " + tag)
    assert got == [(telemetry(DEV_A), b"own " + tag)]
    statuses = status.wait_for(b"own status " + tag)
    assert [p for _, p in statuses if tag in p] == [b"own status " + tag]


def test_a_device_reads_nothing_not_even_its_neighbours_telemetry(connect: Any) -> None:
    spy = connect(f"{SECURE_SITE}/{DEV_A}")
    spy.subscribe("fieldline/#")  # granted by Mosquitto 2.0; the ACL acts on delivery
    spy.subscribe(telemetry(DEV_B))
    reader = connect(PIPELINE_USER)
    reader.subscribe(f"$share/{secrets.token_hex(4)}/fieldline/+/+/telemetry")
    other = connect(f"{SECURE_SITE}/{DEV_B}")
    tag = secrets.token_hex(4).encode()
    other.publish(telemetry(DEV_B), tag)
    reader.wait_for(tag)  # the broker has routed it...
    # ...so anything it sent the spy is on the wire before the PUBACK of this:
    spy.publish(telemetry(DEV_A), b"after " + tag)
    reader.wait_for(b"after " + tag)
    assert spy.messages == []


def test_the_pipeline_user_cannot_publish_as_a_device(connect: Any) -> None:
    reader = connect(PIPELINE_USER)
    reader.subscribe(f"$share/{secrets.token_hex(4)}/fieldline/+/+/telemetry")
    pipeline = connect(PIPELINE_USER)
    dev = connect(f"{SECURE_SITE}/{DEV_A}")
    tag = secrets.token_hex(4).encode()
    pipeline.publish(telemetry(DEV_A), b"forged " + tag)
    dev.publish(telemetry(DEV_A), b"own " + tag)
    assert reader.wait_for(b"own " + tag) == [(telemetry(DEV_A), b"own " + tag)]


def test_the_pipeline_and_the_observer_get_exactly_their_topics(connect: Any) -> None:
    observer = connect(OBSERVER_USER)
    observer.subscribe("fieldline/#")
    pipeline = connect(PIPELINE_USER)
    sim = connect(sim_username(SECURE_SITE))
    tag = secrets.token_hex(4).encode()
    allowed = [
        (pipeline, "fieldline/deadletter/not_json"),
        (pipeline, f"fieldline/{SECURE_SITE}/{DEV_A}/alerts"),
        (pipeline, "fieldline/_metrics/pipeline/p1"),
        (sim, "fieldline/_metrics/sim/s1"),
        (sim, f"fieldline/_labels/{SECURE_SITE}"),
        (sim, f"fieldline/{SECURE_SITE}/{DEV_B}/status"),
    ]
    denied = [
        (pipeline, "fieldline/_metrics/sim/p1"),
        (pipeline, f"fieldline/{SECURE_SITE}/{DEV_A}/status"),
        (sim, "fieldline/other-site/dev-0001/status"),
        (sim, "fieldline/_metrics/pipeline/s1"),
        (sim, "fieldline/_labels/other-site"),
        (observer, "fieldline/_metrics/sim/o1"),
    ]
    for peer, topic in denied + allowed:
        peer.publish(topic, topic.encode() + b" " + tag)
    last = allowed[-1][1].encode() + b" " + tag
    got = {t for t, p in observer.wait_for(last) if p.endswith(tag)}
    assert got == {topic for _, topic in allowed}


# -- InfluxDB -------------------------------------------------------------------


def test_influx_writer_user_may_only_write_its_database(secure_influxdb: InfluxDB) -> None:
    db, other = f"s_{secrets.token_hex(4)}", f"o_{secrets.token_hex(4)}"
    user, password = f"w_{secrets.token_hex(4)}", secrets.token_urlsafe(16)
    secure_influxdb.create_database(db)
    secure_influxdb.create_database(other)
    secure_influxdb.create_writer(user, password, db)
    writer = InfluxDB(secure_influxdb.state_dir, secure_influxdb.port, credentials=(user, password))
    anonymous = InfluxDB(secure_influxdb.state_dir, secure_influxdb.port)
    writer.write("m v=1 1000", db, precision="ms")
    assert secure_influxdb.points("SELECT v FROM m", db) == [{"time": 1000, "v": 1}]
    with pytest.raises(InfluxQueryError, match="requires READ"):
        writer.query("SELECT v FROM m", db)
    with pytest.raises(InfluxQueryError, match="HTTP 403"):
        writer.write("m v=1", other)
    with pytest.raises(InfluxQueryError, match=r"not authorized|requires admin"):
        writer.query(f'GRANT ALL ON "{other}" TO "{user}"')
    with pytest.raises(InfluxQueryError, match="HTTP 401"):
        anonymous.write("m v=1", db)
    with pytest.raises(InfluxQueryError, match="HTTP 401"):
        InfluxDB(secure_influxdb.state_dir, secure_influxdb.port, credentials=(user, "x")).write(
            "m v=1", db
        )
    # A failed CREATE USER names the statement, never the password.
    with pytest.raises(InfluxQueryError) as failed:
        writer.create_writer(f"x_{user}", password, db)
    assert password not in str(failed.value)
    assert "***" in str(failed.value)


# -- the secure local stack ---------------------------------------------------------


def test_secure_local_stack_keeps_secrets_in_private_files(tmp_path: Path) -> None:
    with LocalStack(tmp_path / "stack", secure=True) as stack:
        env = stack.env()
        assert stack.security is not None
        secret_values = [env["FIELDLINE_INFLUX_PASSWORD"], stack.security.pipeline.password]
        assert env["FIELDLINE_BROKER_URL"].startswith(f"mqtts://{PIPELINE_USER}:")
        assert stack.env_file is not None
        assert stat.S_IMODE(stack.env_file.stat().st_mode) == 0o600
        stack_json = stack.state_file.read_text()
        for value in secret_values:
            assert value not in stack_json
            assert value in stack.env_file.read_text()
        for path in stack.state_dir.rglob("*.log"):
            assert all(v not in path.read_text(errors="replace") for v in secret_values), path
        again = LocalStack.from_state(stack.state_dir)
        assert again.env() == env
        assert os.path.exists(env["FIELDLINE_SIM_CREDENTIALS"])
        # The pipeline's InfluxDB user writes and cannot read.
        writer = InfluxDB(
            stack.influxdb.state_dir,
            stack.influxdb.port,
            credentials=(env["FIELDLINE_INFLUX_USER"], env["FIELDLINE_INFLUX_PASSWORD"]),
        )
        writer.write("m v=1", stack.database)
        with pytest.raises(InfluxQueryError, match="requires READ"):
            writer.query("SELECT * FROM m", stack.database)
