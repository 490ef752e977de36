"""The edge agent as a process against a real Mosquitto: broker outages, a network
cut, kill -9 while replaying, TLS and per-device ACLs. Every reading arrives exactly
once (after dropping copies by seq), in order, with the time it was taken."""

from __future__ import annotations

import os
import secrets
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge import contract
from fieldline_edge.mqtt import parse_broker_url
from fieldline_edge.sensors import SimulatedSensor
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_localstack.processes import terminate
from fieldline_localstack.pytest_plugin import SECURE_SITE
from fieldline_localstack.security import BrokerSecurity
from netns import NetNamespace, start_broker_in
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WAIT_S = 120.0
INTERVAL_S = 0.1
SEED = 5


class Recorder:
    """A QoS 1 subscriber with a persistent session: the broker keeps what arrives
    while it is away (restarts, cuts), so nothing the agent delivers is missed."""

    def __init__(self, url: str, topics: list[str]) -> None:
        b = parse_broker_url(url)
        self.messages: list[tuple[str, bytes, float]] = []
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rec-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        if b.username is not None:
            self.client.username_pw_set(b.username, b.password)
        self.client.on_connect = lambda c, *a: c.subscribe([(t, 1) for t in topics])
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(b.host, b.port, 5)
        self.client.loop_start()
        assert subscribed.wait(30), "no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload), time.time()))
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[tuple[str, bytes, float]]], bool]) -> None:
        deadline = time.monotonic() + WAIT_S
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                assert left > 0, f"condition not met; {len(self.messages)} messages received"
                self._cond.wait(min(left, 1.0))

    def telemetry(self, topic: str) -> list[tuple[contract.Telemetry, float]]:
        with self._cond:
            return [
                (contract.decode_telemetry(t, p), at) for t, p, at in self.messages if t == topic
            ]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client.reinitialise()


def unique(
    batches: list[tuple[contract.Telemetry, float]],
) -> list[tuple[contract.Telemetry, float]]:
    """Drop copies by seq (as the pipeline does), keeping the first arrival."""
    seen: set[int] = set()
    out = []
    for t, at in batches:
        if t.seq not in seen:
            seen.add(t.seq)
            out.append((t, at))
    return out


def write_config(path: Path, url: str, device: str, **extra: str) -> Path:
    site = extra.pop("site", "edge")
    mqtt_extra = extra.pop("mqtt", "")
    spool_extra = extra.pop("spool", "")
    path.write_text(
        f'[device]\nid = "{device}"\nsite = "{site}"\n'
        f'[mqtt]\nurl = "{url}"\nkeepalive_s = 5\n{mqtt_extra}\n'
        f'[spool]\npath = "spool.db"\n{spool_extra}\n'
        '[agent]\nbatch_max = 5\nflush_interval_s = 0.3\nclock_sync_file = ""\n'
        f'[[sensors]]\nname = "t"\ndriver = "simulated"\ninterval_s = {INTERVAL_S}\n'
        f'seed = {SEED}\nunit = "°C"\n'
    )
    return path


def start_agent(conf: Path, log: Path, prefix: list[str] | None = None, **env: str) -> Any:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*(prefix or []), *fieldline("edge", "run", "--config", str(conf))],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
        )  # fmt: skip


def stop_agent(proc: Any, log: Path) -> str:
    code = terminate(proc, 60)
    text = log.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    return text


def assert_exactly_once_in_order(readings: list[contract.Reading]) -> None:
    """The simulated sensor's values are a fixed sequence: any gap, copy or swap shows."""
    reference = SimulatedSensor("t", "°C", seed=SEED, interval_s=INTERVAL_S)
    assert [r.value for r in readings] == [reference.read() for _ in readings]
    ts = [r.ts for r in readings]
    assert ts == sorted(ts)
    assert len(set(ts)) == len(ts)


def newest_ts(batches: list[tuple[contract.Telemetry, float]]) -> int:
    return max((r.ts for t, _ in batches for r in t.readings), default=0)


def spooled_while(batches: list[tuple[contract.Telemetry, float]], t0: float, t1: float) -> int:
    """Readings taken in [t0, t1] (by their own time) that arrived after t1."""
    return sum(
        1 for t, at in batches for r in t.readings if t0 * 1000 <= r.ts <= t1 * 1000 and at > t1
    )


def test_broker_outage_every_reading_arrives_once_in_order(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = f"out-{secrets.token_hex(3)}"
    topic = contract.telemetry_topic("edge", device)
    rec = Recorder(fresh_mosquitto.url, [topic])
    conf = write_config(tmp_path / "edge.toml", fresh_mosquitto.url, device,
                        spool="replay_rate_per_s = 5")  # fmt: skip
    log = tmp_path / "agent.log"
    agent = start_agent(conf, log)
    try:
        rec.wait_for(lambda ms: len(ms) >= 3)
        t0 = time.time()
        fresh_mosquitto.stop()  # devices keep sampling; batches go to the spool
        time.sleep(4)
        t1 = time.time()
        fresh_mosquitto.start()
        # Oldest first: a reading taken after the restore means the backlog is through.
        rec.wait_for(lambda ms: newest_ts(rec.telemetry(topic)) > (t1 + 2) * 1000)
    finally:
        text = stop_agent(agent, log)
    assert "0 unacknowledged" in text
    batches = unique(rec.telemetry(topic))
    readings = [r for t, _ in batches for r in t.readings]
    assert_exactly_once_in_order(readings)
    assert [t.seq for t, _ in batches] == sorted(t.seq for t, _ in batches)
    # Taken during the outage, delivered after it, with the time they were taken.
    assert spooled_while(batches, t0, t1) >= 20
    rec.close()


def test_kill_9_while_replaying_loses_nothing_spooled(
    fresh_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    device = f"kill-{secrets.token_hex(3)}"
    topic = contract.telemetry_topic("edge", device)
    rec = Recorder(fresh_mosquitto.url, [topic])
    conf = write_config(tmp_path / "edge.toml", fresh_mosquitto.url, device,
                        spool="replay_rate_per_s = 3")  # fmt: skip
    log = tmp_path / "agent.log"
    agent = start_agent(conf, log)
    try:
        rec.wait_for(lambda ms: len(ms) >= 2)
        fresh_mosquitto.stop()
        time.sleep(5)  # ~10 batches pile up in the spool
        fresh_mosquitto.start()
        rec.wait_for(lambda ms: len(ms) >= 6)  # replay under way, at 3 messages/s
    finally:
        agent.kill()  # SIGKILL: no flush, no goodbye
        agent.wait()
    db = sqlite3.connect(tmp_path / "spool.db")
    left = [seq for (seq,) in db.execute("SELECT seq FROM batches ORDER BY seq")]
    last_seq = int(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])
    db.close()
    assert left, "the replay had already finished: nothing was tested"
    agent = start_agent(conf, log)  # the same spool
    try:
        rec.wait_for(lambda ms: {t.seq for t, _ in rec.telemetry(topic)} >= set(left))
    finally:
        stop_agent(agent, log)
    first_run = [t for t, _ in unique(rec.telemetry(topic)) if t.seq <= last_seq]
    # Every batch the first run spooled arrived: seqs without a gap, readings in order.
    seqs = sorted(t.seq for t in first_run)
    assert seqs == list(range(seqs[0], last_seq + 1))
    assert_exactly_once_in_order(
        [r for t in sorted(first_run, key=lambda t: t.seq) for r in t.readings]
    )
    rec.close()


def test_network_cut_every_reading_arrives_once_in_order(tmp_path: Path) -> None:
    device = f"cut-{secrets.token_hex(3)}"
    topic = contract.telemetry_topic("edge", device)
    with NetNamespace() as ns:
        broker = start_broker_in(ns, tmp_path / "broker")
        try:
            url = f"mqtt://{ns.ns_ip}:1883"
            # The recorder sits with the broker, on the far side of the cut.
            rec = Recorder(url, [topic])
            conf = write_config(tmp_path / "edge.toml", url, device)
            log = tmp_path / "agent.log"
            agent = start_agent(conf, log)
            try:
                rec.wait_for(lambda ms: len(ms) >= 3)
                t0 = time.time()
                ns.cut()
                time.sleep(12)  # longer than 1.5 keepalives: both ends give up the link
                t1 = time.time()
                ns.restore()
                rec.wait_for(lambda ms: newest_ts(rec.telemetry(topic)) > (t1 + 2) * 1000)
            finally:
                text = stop_agent(agent, log)
            assert "lost connection" in text, text[-2000:]
            batches = unique(rec.telemetry(topic))
            assert_exactly_once_in_order([r for t, _ in batches for r in t.readings])
            assert spooled_while(batches, t0, t1) >= 50  # taken during the cut, sent after
            rec.close()
        finally:
            broker.terminate()
            broker.wait(10)


def test_tls_acls_and_anonymous_refusal(
    secure_mosquitto: Mosquitto, broker_security: BrokerSecurity, tmp_path: Path
) -> None:
    sec = broker_security
    pipeline = sec.pipeline
    plain = parse_broker_url(secure_mosquitto.url)
    reader_url = f"mqtt://{pipeline.username}:{pipeline.password}@{plain.host}:{plain.port}"
    own = contract.telemetry_topic(SECURE_SITE, "dev-0001")
    other = contract.telemetry_topic(SECURE_SITE, "dev-0002")
    rec = Recorder(reader_url, [own, other])
    cred = sec.device(SECURE_SITE, "dev-0001")
    tls = f'username = "{cred.username}"\nca_file = "{sec.ca_file}"'

    # dev-0001 over TLS with its own user: delivered.
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    conf = write_config(good_dir / "edge.toml", secure_mosquitto.tls_url, "dev-0001",
                        site=SECURE_SITE, mqtt=tls)  # fmt: skip
    log = good_dir / "agent.log"
    agent = start_agent(conf, log, FIELDLINE_MQTT_PASSWORD=cred.password)
    try:
        rec.wait_for(lambda ms: len(rec.telemetry(own)) >= 3)
    finally:
        text = stop_agent(agent, log)
    assert cred.password not in text  # no secret in the logs

    # dev-0001's credentials claiming to be dev-0002 (MQTT 5): the broker refuses
    # every message, the agent says so, and nothing reaches dev-0002's topic.
    bad_dir = tmp_path / "impostor"
    bad_dir.mkdir()
    conf = write_config(bad_dir / "edge.toml", secure_mosquitto.tls_url, "dev-0002",
                        site=SECURE_SITE, mqtt=tls + '\nprotocol = "5"')  # fmt: skip
    log = bad_dir / "agent.log"
    agent = start_agent(conf, log, FIELDLINE_MQTT_PASSWORD=cred.password)
    deadline = time.monotonic() + WAIT_S
    while "broker refused telemetry" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    stop_agent(agent, log)
    assert "broker refused telemetry" in log.read_text(), log.read_text()[-2000:]
    assert rec.telemetry(other) == []

    # No user at all: the broker refuses the connection; the agent keeps its data.
    anon_dir = tmp_path / "anonymous"
    anon_dir.mkdir()
    conf = write_config(anon_dir / "edge.toml", secure_mosquitto.tls_url, "dev-0003",
                        site=SECURE_SITE, mqtt=f'ca_file = "{sec.ca_file}"')  # fmt: skip
    log = anon_dir / "agent.log"
    agent = start_agent(conf, log)
    deadline = time.monotonic() + WAIT_S
    while "refused the connection" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = stop_agent(agent, log)
    assert "refused the connection" in text, text[-2000:]
    assert "kept in the spool" in text
    rec.close()


def test_a_client_certificate_when_the_broker_requires_one(
    broker_security: BrokerSecurity, tmp_path: Path
) -> None:
    sec = broker_security
    broker = Mosquitto(tmp_path / "broker", security=sec, require_certificate=True).start()
    try:
        cred = sec.device(SECURE_SITE, "dev-0003")
        reader = sec.pipeline
        plain = parse_broker_url(broker.url)
        topic = contract.telemetry_topic(SECURE_SITE, "dev-0003")
        rec = Recorder(
            f"mqtt://{reader.username}:{reader.password}@{plain.host}:{plain.port}", [topic]
        )
        tls = f'username = "{cred.username}"\nca_file = "{sec.ca_file}"\n'
        with_cert = (
            tls + f'cert_file = "{sec.client_cert_file}"\nkey_file = "{sec.client_key_file}"'
        )
        for name, mqtt_keys, delivered in (("without", tls, False), ("with", with_cert, True)):
            d = tmp_path / name
            d.mkdir()
            conf = write_config(d / "edge.toml", broker.tls_url, "dev-0003",
                                site=SECURE_SITE, mqtt=mqtt_keys)  # fmt: skip
            log = d / "agent.log"
            agent = start_agent(conf, log, FIELDLINE_MQTT_PASSWORD=cred.password)
            if delivered:
                try:
                    rec.wait_for(lambda ms: len(ms) >= 2)
                finally:
                    stop_agent(agent, log)
            else:
                # The broker closes the TLS session without a certificate: no CONNACK.
                failed = ("cannot reach", "closed before it was accepted", "refused")
                deadline = time.monotonic() + WAIT_S
                while time.monotonic() < deadline and not any(f in log.read_text() for f in failed):
                    time.sleep(0.2)
                text = stop_agent(agent, log)
                assert any(f in text for f in failed), text[-2000:]
                assert "connected to" not in text
                assert "kept in the spool" in text
                assert rec.messages == []
        rec.close()
    finally:
        broker.stop()
