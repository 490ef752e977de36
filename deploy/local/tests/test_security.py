"""The secured broker and InfluxDB for real: who may connect, publish, read and write.

Mosquitto 2.0 checks the ACL's ``write`` when a client publishes (a denied
PUBLISH is still acknowledged, then dropped) and ``read`` when it is about to
deliver a message; it grants every SUBSCRIBE. So "cannot publish as another
device" and "cannot read another device's topics" are proven by what a
subscriber receives: the allowed message arrives, the forbidden one never does.
Messages from one client are routed in the order they arrive, so once a later
allowed message is in, an earlier forbidden one would have been too.

Devices log in on a listener of their own (``tls_port``) where the broker
replaces their client id by their user name; service users log in on the
service listener (``service_port``, and a plaintext copy of it on loopback in
the test fixture). So a device key can neither take another client's session
nor log in anywhere its client id is not bound.
"""

from __future__ import annotations

import json
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
        client_id: str | None = None,
        clean_session: bool = True,
    ) -> None:
        self.host, self.port = host, port
        self.messages: list[tuple[str, bytes]] = []
        self.outcome: str | None = None  # "connected", "refused: ...", "error: ...", "lost: ..."
        self.session_present: bool | None = None
        self.lost: str | None = None  # why the broker closed an accepted connection
        self._cond = threading.Condition()
        self._subacks: list[list[Any]] = []
        self.client_id = client_id if client_id is not None else f"t-{secrets.token_hex(4)}"
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=clean_session,
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

    def _on_connect(self, _c: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self.session_present = bool(flags.session_present)
        self._set(f"refused: {reason}" if reason.is_failure else "connected")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._cond:
            if self.outcome == "connected" and self.lost is None:
                self.lost = str(reason)
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


def listener_of(broker: Mosquitto, username: str) -> int:
    """The TLS port where ``username`` may log in: devices (``site/device``) have their own."""
    port = broker.tls_port if "/" in username else broker.service_port
    assert port is not None
    return port


@pytest.fixture
def connect(secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, peers: list[Peer]) -> Any:
    """``connect(username, **peer_options)`` -> a connected Peer with that user, over TLS
    on its listener: a device's own, or the services'."""

    def make(username: str, **options: Any) -> Peer:
        cred = broker_security.user(username)
        port = listener_of(secure_mosquitto, username)
        peer = Peer(
            secure_mosquitto.host,
            port,
            (cred.username, cred.password),
            ca_file=broker_security.ca_file,
            **options,
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
        sec.device_password_file,
        sec.credentials_file,
        sec.server_key_file,
        sec.ca_file.with_suffix(".key"),
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(sec.directory.stat().st_mode) == 0o700
    assert (sec.directory / ".gitignore").read_text() == "*\n"
    services = sec.password_file.read_text()
    devices = sec.device_password_file.read_text()
    hashed = services + devices
    text = repr(sec) + repr(list(sec.users.values())) + hashed + sec.acl_file.read_text()
    for cred in sec.users.values():
        assert cred.password not in text
        assert f"{cred.username}:$7$" in hashed  # PBKDF2-SHA512, mosquitto_passwd -U
        # A device's password is valid on the device listener only, a service's on the others.
        own, other = (devices, services) if "/" in cred.username else (services, devices)
        assert f"{cred.username}:" in own
        assert f"{cred.username}:" not in other
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
    assert m.service_port is not None
    wrong = (PIPELINE_USER, "not-the-password")
    device = broker_security.device(SECURE_SITE, DEV_A)
    pipeline = broker_security.pipeline
    cases = [
        Peer(m.host, m.port),
        Peer(m.host, m.port, wrong),
        Peer(m.host, m.tls_port, ca_file=ca),
        Peer(m.host, m.tls_port, wrong, ca_file=ca),
        Peer(m.host, m.tls_port, (f"{SECURE_SITE}/unknown", "x"), ca_file=ca),
        Peer(m.host, m.service_port, ca_file=ca),
        Peer(m.host, m.service_port, wrong, ca_file=ca),
        # Valid passwords, wrong listener: a device key works only where its
        # client id is bound, and never in plaintext; services stay off the devices'.
        Peer(m.host, m.port, (device.username, device.password)),
        Peer(m.host, m.service_port, (device.username, device.password), ca_file=ca),
        Peer(m.host, m.tls_port, (pipeline.username, pipeline.password), ca_file=ca),
    ]
    peers.extend(cases)
    assert [p.connect() for p in cases] == ["refused: Not authorized"] * len(cases)


def test_tls_needs_the_ca_and_then_connects(
    secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, peers: list[Peer]
) -> None:
    m = secure_mosquitto
    assert m.service_port is not None
    pipe = broker_security.pipeline
    without_ca = Peer(m.host, m.service_port, (pipe.username, pipe.password), system_ca=True)
    with_ca = Peer(
        m.host, m.service_port, (pipe.username, pipe.password), ca_file=broker_security.ca_file
    )
    peers.extend([without_ca, with_ca])
    assert "certificate verify failed" in without_ca.connect()
    assert with_ca.connect() == "connected"


def test_required_client_certificate(
    tmp_path: Path, broker_security: BrokerSecurity, peers: list[Peer]
) -> None:
    sec = broker_security
    with Mosquitto(tmp_path / "mtls", security=sec, require_certificate=True) as m:
        assert m.service_port is not None
        pipe = (sec.pipeline.username, sec.pipeline.password)
        no_cert = Peer(m.host, m.service_port, pipe, ca_file=sec.ca_file)
        cert = Peer(
            m.host, m.service_port, pipe, ca_file=sec.ca_file,
            client_cert=(sec.client_cert_file, sec.client_key_file),
        )  # fmt: skip
        peers.extend([no_cert, cert])
        # TLS 1.3: the client finishes its handshake, then the server's alert ends it.
        assert no_cert.connect().startswith(("error:", "lost:"))
        assert cert.connect() == "connected"


# -- whose session a client may take ----------------------------------------------


def test_a_device_key_cannot_resume_the_pipelines_session(connect: Any) -> None:
    # The pipeline's intake: a persistent session (clean_session=false) in a shared
    # subscription, stopped; the broker queues what arrives meanwhile.
    intake_id = f"fieldline-pipeline-{secrets.token_hex(4)}-0"
    intake = connect(PIPELINE_USER, client_id=intake_id, clean_session=False)
    intake.subscribe(f"$share/{secrets.token_hex(4)}/fieldline/+/+/telemetry")
    intake.close()
    tag = secrets.token_hex(4)
    sent = [f"queued {i} {tag}".encode() for i in range(20)]
    dev = connect(f"{SECURE_SITE}/{DEV_B}")
    for payload in sent:
        dev.publish(telemetry(DEV_B), payload)
    # A device key asks for that session by the pipeline's client id: the broker
    # makes the id its user name, so it gets a fresh session of its own. (A clean
    # connection first drops a session of that device left by an earlier test.)
    connect(f"{SECURE_SITE}/{DEV_A}").close()
    thief = connect(f"{SECURE_SITE}/{DEV_A}", client_id=intake_id, clean_session=False)
    assert thief.session_present is False
    thief.subscribe(f"fieldline/{SECURE_SITE}/{DEV_A}/none")  # a round trip after CONNACK
    thief.close()
    # The pipeline comes back to its session with everything queued in it.
    back = connect(PIPELINE_USER, client_id=intake_id, clean_session=False)
    assert back.session_present is True
    got = back.wait_for(sent[-1])
    assert sorted(p for _, p in got) == sorted(sent)
    assert thief.messages == []
    back.close()
    connect(PIPELINE_USER, client_id=intake_id)  # clean session: drops it from the broker


def test_a_device_key_cannot_log_off_a_device_or_a_service(connect: Any) -> None:
    reader = connect(PIPELINE_USER)
    reader.subscribe(f"$share/{secrets.token_hex(4)}/fieldline/+/+/telemetry")
    victim = connect(f"{SECURE_SITE}/{DEV_B}")
    # Claiming another device's client id, then the pipeline's: each intruder is
    # itself on the broker (the second one replaces the first, same user).
    for claimed in (f"{SECURE_SITE}/{DEV_B}", reader.client_id):
        intruder = connect(f"{SECURE_SITE}/{DEV_A}", client_id=claimed)
        intruder.subscribe(f"fieldline/{SECURE_SITE}/{DEV_A}/none")  # its CONNECT was handled
        intruder.close()
    tag = secrets.token_hex(4).encode()
    victim.publish(telemetry(DEV_B), tag)
    assert reader.wait_for(tag) == [(telemetry(DEV_B), tag)]
    # Neither was disconnected (paho would have reconnected them: hence `lost`).
    assert (victim.lost, reader.lost) == (None, None)


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
        assert env["FIELDLINE_BROKER_URL"].endswith(f":{stack.mosquitto.service_port}")
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
        assert again.sim_env() == stack.sim_env()
        # The pipeline's InfluxDB user writes and cannot read.
        writer = InfluxDB(
            stack.influxdb.state_dir,
            stack.influxdb.port,
            credentials=(env["FIELDLINE_INFLUX_USER"], env["FIELDLINE_INFLUX_PASSWORD"]),
        )
        writer.write("m v=1", stack.database)
        with pytest.raises(InfluxQueryError, match="requires READ"):
            writer.query("SELECT * FROM m", stack.database)


def test_secure_local_stack_gives_each_tool_only_its_own_secrets(tmp_path: Path) -> None:
    with LocalStack(tmp_path / "stack", secure=True) as stack:
        sec = stack.security
        assert sec is not None
        assert stack.sim_env_file is not None
        assert stack.env_file is not None
        assert stat.S_IMODE(stack.sim_env_file.stat().st_mode) == 0o600
        pipeline_text = stack.env_file.read_text()
        sim_text = stack.sim_env_file.read_text()
        sim_vars = dict(line.split("=", 1) for line in sim_text.splitlines())
        assert sim_vars == stack.sim_env()
        assert sim_vars["FIELDLINE_SIM_DEVICE_BROKER_URL"] == stack.mosquitto.tls_url
        assert sim_vars["FIELDLINE_BROKER_URL"] == stack.mosquitto.service_url
        # What loading sim.env gives a simulator, files it names included.
        sim_reach = sim_text + Path(sim_vars["FIELDLINE_SIM_CREDENTIALS"]).read_text()
        influx = [c.password for c in stack.influx_users.values()]
        for secret in [sec.pipeline.password, sec.observer.password, *influx]:
            assert secret not in sim_reach
        assert not any(k.startswith("FIELDLINE_INFLUX") for k in sim_vars)
        # ...and the pipeline's file none of the simulator's or the devices'.
        others = [c.password for n, c in sec.users.items() if n != PIPELINE_USER]
        assert not [s for s in others if s in pipeline_text]
        assert "FIELDLINE_SIM_CREDENTIALS" not in pipeline_text


def test_secure_local_stack_speaks_tls_only(tmp_path: Path, peers: list[Peer]) -> None:
    with LocalStack(tmp_path / "stack", secure=True) as stack:
        m, sec = stack.mosquitto, stack.security
        assert sec is not None
        assert m.tls_port is not None
        assert m.service_port is not None
        # Every listener of the broker's configuration has a certificate.
        sections = Path(m.config_path).read_text().split("\nlistener ")[1:]
        assert len(sections) == 2
        assert all("\ncertfile " in section for section in sections)
        device = sec.device("demo", "dev-0001")
        pipe = sec.pipeline
        plain = [
            Peer(m.host, port, (user.username, user.password))
            for port in (m.tls_port, m.service_port)
            for user in (device, pipe)
        ]
        tls = Peer(m.host, m.tls_port, (device.username, device.password), ca_file=sec.ca_file)
        peers.extend([*plain, tls])
        # A plaintext CONNECT to a TLS listener: the broker drops it, no CONNACK.
        assert all(p.connect().startswith(("error:", "lost:")) for p in plain)
        assert tls.connect() == "connected"
