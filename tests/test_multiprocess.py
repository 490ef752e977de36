"""``fieldline pipeline run --processes N``: a Bytewax cluster of N processes.

A 2-process run and a 1-process run consume the same telemetry (each in its
own shared-subscription group) and must write exactly the same windows, both
equal to the simulator's ground truth.
"""

from __future__ import annotations

import json
import math
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fieldline_edge.mqtt import parse_broker_url
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_localstack.processes import terminate
from fieldline_localstack.pytest_plugin import fresh_database
from fieldline_localstack.watch import MetricsWatcher
from groundtruth_check import assert_windows_match_ground_truth, stored_windows

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000
START_TIMEOUT_S = 60.0


class Cluster:
    """``fieldline pipeline run --processes N`` as a process, and its per-process metrics."""

    def __init__(
        self, args: list[str], instance: str, processes: int, log: Path, watch: MetricsWatcher
    ) -> None:
        self.instance = instance
        self.instances = [f"{instance}-{i}" for i in range(processes)]
        self.log = log
        self.watch = watch
        with log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> list[dict[str, Any]]:
        latest = self.watch.latest("pipeline")
        return [latest.get(name, {}) for name in self.instances]

    def total(self, key: str) -> int:
        return sum(int(m.get(key) or 0) for m in self.metrics())

    def wait_started(self) -> None:
        ok = self.watch.wait_for(
            lambda _w: (
                all(m.get("subscribed_clients") for m in self.metrics())
                or self.proc.poll() is not None
            ),
            START_TIMEOUT_S,
        )
        assert ok, f"cluster did not start:\n{self.log_text()[-3000:]}"
        assert self.proc.poll() is None, f"cluster exited:\n{self.log_text()[-3000:]}"

    def children(self) -> list[int]:
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [int(pid) for pid in path.read_text().split()]

    def stop(self, timeout_s: float = 60.0) -> int:
        code = terminate(self.proc, timeout_s)
        assert code is not None, f"cluster did not stop:\n{self.log_text()[-3000:]}"
        return code


@pytest.fixture
def start_cluster(mosquitto: Mosquitto, influxdb: InfluxDB, tmp_path: Path) -> Iterator[Any]:
    """Start ``--processes N`` against the session broker, writing to database ``db``."""
    b = parse_broker_url(mosquitto.url)
    watch = MetricsWatcher(b.host, b.port, f"watch-{secrets.token_hex(4)}")
    started: list[Cluster] = []

    def start(db: str, *extra: str, processes: int = 2) -> Cluster:
        tag = secrets.token_hex(4)
        args = fieldline(
            "pipeline", "run",
            "--broker", mosquitto.url,
            "--influx-url", influxdb.url,
            "--influx-db", db,
            "--group", f"g{tag}",
            "--client-id", f"p{tag}",
            "--instance", f"test-{tag}",
            "--state-dir", str(tmp_path / f"state-{tag}"),
            "--flush-on-stop",
            "--processes", str(processes),
            *extra,
        )  # fmt: skip
        cluster = Cluster(args, f"test-{tag}", processes, tmp_path / f"cluster-{tag}.log", watch)
        started.append(cluster)
        cluster.wait_started()
        return cluster

    yield start
    for c in started:
        if c.proc.poll() is None:
            c.proc.kill()
            c.proc.wait()
    watch.close()


@pytest.fixture
def second_db(influxdb: InfluxDB) -> Iterator[str]:
    yield from fresh_database(influxdb)


def test_two_processes_write_the_same_windows_as_one(
    mosquitto: Mosquitto,
    influxdb: InfluxDB,
    influx_db: str,
    second_db: str,
    start_pipeline: Any,
    start_cluster: Any,
    tmp_path: Path,
) -> None:
    single = start_pipeline("--window-s", "1", "--lateness-s", "1")
    cluster = start_cluster(second_db, "--window-s", "1", "--lateness-s", "1")
    site = f"mp-{secrets.token_hex(3)}"
    gt = tmp_path / "gt"
    sim = subprocess.run(
        fieldline(
            "sim", "run", "--broker", mosquitto.url, "--site", site, "--devices", "8",
            "--rate-hz", "20", "--batch-size", "5", "--duration-s", "4", "--seed", "11",
            "--ground-truth", str(gt), "--instance", f"sim-{site}",
        ),
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr.decode()[-3000:]
    summary = json.loads((gt / "summary.json").read_text())
    assert summary["unacked_messages"] == 0
    published = summary["published_readings"]

    assert single.wait_readings(published), single.log_text()[-3000:]
    assert cluster.watch.wait_for(lambda _w: cluster.total("readings") >= published, 60.0), (
        cluster.metrics(),
        cluster.log_text()[-3000:],
    )
    # The broker shared the messages between both intakes.
    assert all(int(m.get("ingested") or 0) > 0 for m in cluster.metrics()), cluster.metrics()
    assert single.stop() == 0, single.log_text()[-3000:]
    assert cluster.stop() == 0, cluster.log_text()[-3000:]
    finals = cluster.metrics()
    assert all(m.get("done") is True for m in finals), finals
    assert [m["process_id"] for m in finals] == [0, 1]
    assert cluster.total("readings") == published
    assert cluster.total("late_readings") == 0
    assert cluster.total("duplicates") == 0
    assert cluster.total("dead_letters") == 0

    assert assert_windows_match_ground_truth(influxdb, second_db, gt, WINDOW_MS) == published
    assert assert_windows_match_ground_truth(influxdb, influx_db, gt, WINDOW_MS) == published
    one, two = stored_windows(influxdb, influx_db), stored_windows(influxdb, second_db)
    assert one.keys() == two.keys()
    for key, a in one.items():
        b = two[key]
        assert a["count"] == b["count"], key
        for name in ("mean", "min", "max", "stddev", "first", "last"):
            assert math.isclose(a[name], b[name], rel_tol=1e-9, abs_tol=1e-9), (key, name)


def test_a_failed_process_stops_the_cluster_with_its_exit_code(
    second_db: str, start_cluster: Any
) -> None:
    cluster = start_cluster(second_db)
    children = cluster.children()
    assert len(children) == 2
    subprocess.run(["kill", "-9", str(children[1])], check=True)
    code = cluster.proc.wait(90)
    assert code == 128 + signal.SIGKILL, cluster.log_text()[-3000:]
    deadline = time.monotonic() + 10
    while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)  # reaped by the supervisor before it exits
    assert not Path(f"/proc/{children[0]}").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--processes", "2", "--addresses", "127.0.0.1:1,127.0.0.1:2"),
        ("--processes", "2", "--process-id", "1"),
        ("--addresses", "127.0.0.1:1,127.0.0.1:2", "--process-id", "2"),
        ("--addresses", "127.0.0.1:1,nohost"),
        ("--processes", "0"),
        ("--processes", "2", "--broker", "http://not-mqtt"),
    ],
)
def test_misused_cluster_flags_are_refused_clearly(args: tuple[str, ...]) -> None:
    res = subprocess.run(
        fieldline("pipeline", "run", *args), capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stdout + res.stderr
