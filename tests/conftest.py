"""Fixtures for end-to-end tests: the pipeline as a real process against real services."""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_localstack.watch import MetricsWatcher

START_TIMEOUT_S = 60.0


@dataclass
class PipelineProcess:
    proc: subprocess.Popen[bytes]
    instance: str
    log: Path
    watch: MetricsWatcher
    extra: dict[str, str] = field(default_factory=dict)

    def metrics(self) -> dict[str, object]:
        return self.watch.latest("pipeline").get(self.instance, {})

    def wait_readings(self, n: int, timeout_s: float = 60.0) -> bool:
        return self.watch.wait_for(
            lambda w: int(w.latest("pipeline").get(self.instance, {}).get("readings") or 0) >= n,
            timeout_s,
        )

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (drain, flush windows, exit) and return the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"pipeline did not stop; log:\n{self.log.read_text()[-3000:]}"
            ) from None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def start_pipeline(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, tmp_path: Path
) -> Iterator[object]:
    """Start ``fieldline pipeline run`` against the session broker and a fresh database.

    Each pipeline gets its own shared-subscription group and client ids, so tests
    sharing the broker do not take each other's messages.
    """
    started: list[PipelineProcess] = []
    watch = MetricsWatcher(mosquitto.host, mosquitto.port, f"watch-{secrets.token_hex(4)}")

    def start(*extra: str) -> PipelineProcess:
        tag = secrets.token_hex(4)
        instance = f"test-{tag}"
        log = tmp_path / f"pipeline-{tag}.log"
        args = fieldline(
            "pipeline", "run",
            "--broker", mosquitto.url,
            "--influx-url", influxdb.url,
            "--influx-db", influx_db,
            "--group", f"g{tag}",
            "--client-id", f"p{tag}",
            "--instance", instance,
            *extra,
        )  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        p = PipelineProcess(proc, instance, log, watch)
        started.append(p)
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

    yield start
    for p in started:
        if p.proc.poll() is None:
            p.proc.kill()
            p.proc.wait()
    watch.close()
