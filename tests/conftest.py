"""Fixtures for end-to-end tests: the pipeline as a real process against real services."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.mqtt import parse_broker_url
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_localstack.processes import terminate
from fieldline_localstack.security import BrokerSecurity
from fieldline_localstack.watch import MetricsWatcher
from paho.mqtt.enums import CallbackAPIVersion

START_TIMEOUT_S = 60.0


@dataclass
class PipelineProcess:
    proc: subprocess.Popen[bytes]
    instance: str
    log: Path
    watch: MetricsWatcher
    args: list[str] = field(default_factory=list)
    env: dict[str, str] | None = None

    def kill(self) -> None:
        """kill -9: no chance to flush, commit or say goodbye."""
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        """Start the same pipeline again (same identity, same state dir)."""
        assert self.proc.poll() is not None, "stop or kill it first"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env
            )

    def metrics(self) -> dict[str, object]:
        return self.watch.latest("pipeline").get(self.instance, {})

    def wait_readings(self, n: int, timeout_s: float = 60.0) -> bool:
        return self.watch.wait_for(
            lambda w: int(w.latest("pipeline").get(self.instance, {}).get("readings") or 0) >= n,
            timeout_s,
        )

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (drain, flush windows, exit) and return the exit code."""
        code = terminate(self.proc, timeout_s)
        assert code is not None, f"pipeline did not stop; log:\n{self.log.read_text()[-3000:]}"
        return code

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def forget_sessions(broker_url: str, client_id_prefix: str, processes: int = 4) -> None:
    """Drop a finished pipeline's persistent sessions. Left behind, each would keep
    receiving (and the broker queueing) every later test's telemetry."""
    b = parse_broker_url(broker_url)
    for i in range(processes):
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"{client_id_prefix}-{i}", clean_session=True
        )
        try:
            client.connect(b.host, b.port, keepalive=10)  # CONNACK drops the session
            client.loop(timeout=1.0)
            client.disconnect()
        except OSError:
            pass  # that broker is gone, and its sessions with it
        finally:
            client.reinitialise()  # closes paho's socket pair now


def launch(
    args: list[str], instance: str, log: Path, watch: MetricsWatcher,
    env: dict[str, str] | None = None,
) -> PipelineProcess:  # fmt: skip
    """Start a pipeline process and wait until its intake is subscribed."""
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
    p = PipelineProcess(proc, instance, log, watch, args, env)
    ok = watch.wait_for(
        lambda w: (
            bool(w.latest("pipeline").get(instance, {}).get("subscribed_clients"))
            or proc.poll() is not None
        ),
        START_TIMEOUT_S,
    )
    assert ok, f"pipeline did not start:\n{p.log_text()[-3000:]}"
    assert proc.poll() is None, f"pipeline exited:\n{p.log_text()[-3000:]}"
    return p


@pytest.fixture
def start_pipeline(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, tmp_path: Path
) -> Iterator[object]:
    """Start ``fieldline pipeline run`` against the session broker and a fresh database.

    Each pipeline gets its own shared-subscription group and client ids, so tests
    sharing the broker do not take each other's messages.
    """
    started: list[PipelineProcess] = []
    watchers: dict[str, MetricsWatcher] = {}

    def watcher(broker_url: str) -> MetricsWatcher:
        if broker_url not in watchers:
            b = parse_broker_url(broker_url)
            watchers[broker_url] = MetricsWatcher(b.host, b.port, f"watch-{secrets.token_hex(4)}")
        return watchers[broker_url]

    def start(
        *extra: str, flush_on_stop: bool = True, broker_url: str | None = None
    ) -> PipelineProcess:
        """Extra flags are appended; by default SIGTERM writes every open window.

        ``broker_url`` points the pipeline at another broker than the session's.
        """
        broker_url = broker_url or mosquitto.url
        watch = watcher(broker_url)
        tag = secrets.token_hex(4)
        instance = f"test-{tag}"
        log = tmp_path / f"pipeline-{tag}.log"
        args = fieldline(
            "pipeline", "run",
            "--broker", broker_url,
            "--influx-url", influxdb.url,
            "--influx-db", influx_db,
            "--group", f"g{tag}",
            "--client-id", f"p{tag}",
            "--instance", instance,
            "--state-dir", str(tmp_path / f"state-{tag}"),
            "--flush-on-stop" if flush_on_stop else "--no-flush-on-stop",
            *extra,
        )  # fmt: skip
        p = launch(args, instance, log, watch)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
        forget_sessions(
            p.args[p.args.index("--broker") + 1], p.args[p.args.index("--client-id") + 1]
        )
    for w in watchers.values():
        w.close()


@dataclass
class SecurePipelines:
    """Starts pipelines on the secured broker (TLS, own user) and InfluxDB (write-only user)."""

    broker: Mosquitto
    influxdb: InfluxDB
    security: BrokerSecurity
    database: str
    influx_user: str
    influx_password: str
    tmp_path: Path
    watch: MetricsWatcher
    started: list[PipelineProcess] = field(default_factory=list)

    @property
    def secrets(self) -> list[str]:
        """Every password this pipeline is given (none may show up in its output)."""
        return [self.influx_password, self.security.pipeline.password]

    def env(self) -> dict[str, str]:
        """Secrets go through the environment, never the command line (ps shows that)."""
        pipe = self.security.pipeline
        return {
            **os.environ,
            "FIELDLINE_BROKER_URL": (
                f"mqtts://{pipe.username}:{pipe.password}@{self.broker.host}:{self.broker.service_port}"
            ),
            "FIELDLINE_MQTT_CA_FILE": str(self.security.ca_file),
            "FIELDLINE_INFLUX_USER": self.influx_user,
            "FIELDLINE_INFLUX_PASSWORD": self.influx_password,
        }

    def start(self, *extra: str) -> PipelineProcess:
        tag = secrets.token_hex(4)
        instance = f"secure-{tag}"
        log = self.tmp_path / f"pipeline-{tag}.log"
        args = fieldline(
            "pipeline", "run",
            "--influx-url", self.influxdb.url,
            "--influx-db", self.database,
            "--group", f"g{tag}",
            "--client-id", f"p{tag}",
            "--instance", instance,
            "--state-dir", str(self.tmp_path / f"state-{tag}"),
            "--flush-on-stop",
            *extra,
        )  # fmt: skip
        p = launch(args, instance, log, self.watch, self.env())
        self.started.append(p)
        return p


@pytest.fixture
def secure_pipelines(
    secure_mosquitto: Mosquitto,
    secure_influxdb: InfluxDB,
    broker_security: BrokerSecurity,
    tmp_path: Path,
) -> Iterator[SecurePipelines]:
    """Pipelines against `secure_mosquitto` over TLS as ``fieldline-pipeline``, writing
    to a fresh database of `secure_influxdb` as a user that may only write there.

    Their metrics are watched as the read-only observer user.
    """
    tag = secrets.token_hex(4)
    database, user, password = f"s_{tag}", f"pipeline_{tag}", secrets.token_urlsafe(24)
    secure_influxdb.create_database(database)
    secure_influxdb.create_writer(user, password, database)
    observer = broker_security.observer
    # Service users connect to the service listener (devices have their own).
    assert secure_mosquitto.service_port is not None
    watch = MetricsWatcher(
        secure_mosquitto.host,
        secure_mosquitto.service_port,
        f"watch-{tag}",
        auth=(observer.username, observer.password),
        ca_file=str(broker_security.ca_file),
    )
    pipelines = SecurePipelines(
        secure_mosquitto,
        secure_influxdb,
        broker_security,
        database,
        user,
        password,
        tmp_path,
        watch,
    )
    yield pipelines
    for p in pipelines.started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
    watch.close()
    secure_influxdb.drop_database(database)
