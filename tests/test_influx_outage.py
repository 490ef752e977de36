"""InfluxDB outages lose nothing: the sink waits, holds back its source, resumes.

Simulator → Mosquitto → pipeline → InfluxDB as real processes, while InfluxDB
is stopped for over a minute, or a FaultProxy in front of it answers 500 or 429
with Retry-After. Every test ends with the exact comparison of every window in
InfluxDB with the simulator's ground truth.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fieldline_localstack.faultproxy import FaultProxy
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from groundtruth_check import assert_windows_match_ground_truth, stored_windows

pytestmark = [pytest.mark.services, pytest.mark.e2e]

WINDOW_MS = 1_000
# The idle timeout stays at its default (30 s), shorter than the outage on
# purpose: silence is measured in ingest time, so a stalled sink must not make
# the pipeline close windows early (late readings would fail the comparison).
PIPELINE_ARGS = ("--window-s", str(WINDOW_MS / 1000), "--lateness-s", "1")
OUTAGE_S = 62.0
FAULT_S = 10.0
#: Generous: what arrives during an outage waits in the ingest log on disk.
RSS_BOUND_KB = 500 * 1024
#: Lines of the windows sink's writer (not the metrics writer) in the pipeline log.
SINK_LOG = "influx_out worker"
WAIT_S = 120.0


# ------------------------------------------------------------ processes


@dataclass
class SimRun:
    """A simulator publishing until stopped, recording its ground truth."""

    proc: subprocess.Popen[bytes]
    gt: Path
    log: Path

    @classmethod
    def start(cls, mosquitto: Mosquitto, tmp_path: Path) -> SimRun:
        site = f"out-{secrets.token_hex(3)}"
        gt = tmp_path / f"gt-{site}"
        log = tmp_path / f"sim-{site}.log"
        args = fieldline(
            "sim", "run", "--broker", mosquitto.url, "--site", site, "--devices", "5",
            "--rate-hz", "10", "--batch-size", "5", "--duration-s", "0", "--seed", "11",
            "--ground-truth", str(gt), "--instance", f"sim-{site}",
        )  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        return cls(proc, gt, log)

    def stop(self) -> int:
        """SIGTERM, wait, and return the number of readings published (all acknowledged)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"simulator did not stop:\n{self.log.read_text()[-3000:]}"
            ) from None
        assert code == 0, self.log.read_text()[-3000:]
        summary = json.loads((self.gt / "summary.json").read_text())
        assert summary["unacked_messages"] == 0
        published: int = summary["published_readings"]
        return published

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def sim(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Callable[[], SimRun]]:
    runs: list[SimRun] = []

    def start() -> SimRun:
        run = SimRun.start(mosquitto, tmp_path)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.kill()


@pytest.fixture
def private_influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """An InfluxDB of this test only, free to stop and start (same port and data)."""
    server = InfluxDB(tmp_path_factory.mktemp("influx_outage"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def proxy(influxdb: InfluxDB) -> Iterator[FaultProxy]:
    with FaultProxy(influxdb.url) as p:
        yield p


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in kB (VmRSS)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def window_count(influxdb: InfluxDB, db: str) -> int:
    try:
        rows = influxdb.points('SELECT COUNT("count") FROM reading_window', db)
    except OSError:
        return 0
    return int(rows[0]["count"]) if rows else 0


def start_with(start_pipeline: Any, influx_url: str, db: str | None = None) -> Any:
    # Options given twice take the last value: these override the fixture's.
    extra = ("--influx-url", influx_url, *(("--influx-db", db) if db else ()))
    pipeline = start_pipeline(*PIPELINE_ARGS, *extra)
    assert f"url='{influx_url}'" in pipeline.log_text(), pipeline.log_text()[-3000:]
    return pipeline


def sink_log(pipeline: Any) -> tuple[list[str], list[str]]:
    """The windows sink's retry warnings and "resumed" lines."""
    lines = [line for line in pipeline.log_text().splitlines() if SINK_LOG in line]
    retries = [line for line in lines if " WARNING " in line and "; retry " in line]
    resumed = [line for line in lines if "writes resumed after" in line]
    return retries, resumed


def finish(pipeline: Any, run: SimRun, influxdb: InfluxDB, db: str) -> dict[str, Any]:
    """Stop the simulator, let the pipeline catch up and stop, compare with the ground truth."""
    published = run.stop()
    started = time.monotonic()
    assert pipeline.wait_readings(published, WAIT_S), pipeline.log_text()[-3000:]
    caught_up_s = time.monotonic() - started
    assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
    final = pipeline.metrics()
    assert final.get("done") is True
    assert final["late_readings"] == 0, final
    assert final["dead_letters"] == 0, final
    assert final["readings"] == published
    assert assert_windows_match_ground_truth(influxdb, db, run.gt, WINDOW_MS) == published
    windows = len(stored_windows(influxdb, db))
    return {"published": published, "windows": windows, "caught_up_after_sim_stop_s": caught_up_s}


# ------------------------------------------------------------ tests


def test_influxdb_stopped_for_a_minute_loses_nothing(
    private_influx: InfluxDB, start_pipeline: Any, sim: Callable[[], SimRun]
) -> None:
    db = "fieldline"
    private_influx.create_database(db)
    pipeline = start_with(start_pipeline, private_influx.url, db)
    run = sim()
    wait_until(lambda: window_count(private_influx, db) >= 20, WAIT_S, "first windows")
    rss_before = rss_kb(pipeline.proc.pid)

    private_influx.stop()
    stopped = time.monotonic()
    rss = []
    while time.monotonic() - stopped < OUTAGE_S:
        assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
        assert run.proc.poll() is None, run.log.read_text()[-3000:]
        rss.append(rss_kb(pipeline.proc.pid))
        time.sleep(0.5)
    retries_in_outage, _ = sink_log(pipeline)
    private_influx.start()  # same port, same data
    outage_s = time.monotonic() - stopped
    wait_until(lambda: bool(sink_log(pipeline)[1]), WAIT_S, "the sink to resume")
    resumed_after_s = time.monotonic() - stopped - outage_s
    time.sleep(3)  # the fleet goes on a little after the outage

    result = finish(pipeline, run, private_influx, db)
    retries, resumed = sink_log(pipeline)
    print(
        f"\noutage {outage_s:.1f} s; sink retries {len(retries)} "
        f"({len(retries_in_outage)} during the outage); RSS before {rss_before} kB, "
        f"during outage max {max(rss)} kB over {len(rss)} samples; sink resumed "
        f"{resumed_after_s:.1f} s after restart; {result}\n  {resumed[0]}"
    )
    assert max(rss) < RSS_BOUND_KB
    assert retries_in_outage
    assert all("no answer" in line for line in retries_in_outage)
    assert len(resumed) == 1


@pytest.mark.parametrize("fault", ["500", "429"])
def test_influxdb_answering_errors_loses_nothing(
    influxdb: InfluxDB,
    influx_db: str,
    proxy: FaultProxy,
    start_pipeline: Any,
    sim: Callable[[], SimRun],
    fault: str,
) -> None:
    pipeline = start_with(start_pipeline, proxy.url)
    run = sim()
    wait_until(lambda: window_count(influxdb, influx_db) >= 20, WAIT_S, "first windows")

    if fault == "500":
        proxy.fail(500)
    else:
        proxy.throttle(retry_after_s=2)
    started = time.monotonic()
    time.sleep(FAULT_S)
    # Several refusals, so the sink's own writes met the fault (not only metrics).
    assert proxy.wait_for_count(fault, 4, WAIT_S), proxy.counts()
    wait_until(lambda: bool(sink_log(pipeline)[0]), WAIT_S, "a sink retry")
    proxy.pass_through()
    fault_s = time.monotonic() - started
    wait_until(lambda: bool(sink_log(pipeline)[1]), WAIT_S, "the sink to resume")
    time.sleep(2)

    result = finish(pipeline, run, influxdb, influx_db)
    retries, resumed = sink_log(pipeline)
    print(
        f"\nHTTP {fault} for {fault_s:.1f} s; proxy {proxy.counts()}; "
        f"sink retries {len(retries)}; {result}\n  {retries[0]}\n  {resumed[0]}"
    )
    assert all(f"HTTP {fault}" in line for line in retries)
    if fault == "429":
        assert all("in 2.00 s (Retry-After)" in line for line in retries), retries
    assert len(resumed) == 1
