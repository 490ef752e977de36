from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_sim.groundtruth import load_readings, load_summary

Subscribe = Callable[[str, list[str]], Any]
REPO = Path(__file__).resolve().parents[2]


def sim(*args: str) -> list[str]:
    return ["uv", "run", "fieldline", "sim", "run", *args]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "0"], "devices must be >= 1"),
        (["--sensors", "a/b"], "sensor name 'a/b' is not a valid id"),
        (["--broker", "http://x"], "must start with mqtt://"),
        (["--rate-hz", "-1"], "rate-hz must be a finite number > 0"),
        (["--instance", "status"], "instance 'status'"),
    ],
)
def test_bad_values_exit_2_with_one_line(args: list[str], message: str) -> None:
    proc = subprocess.run(
        sim(*args), cwd=REPO, capture_output=True, text=True, check=False, timeout=120
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("fieldline sim: error: ")
    assert message in lines[0]
    assert "Traceback" not in proc.stderr


def test_unreachable_broker_exits_1_with_one_line() -> None:
    proc = subprocess.run(
        sim("--broker", "mqtt://127.0.0.1:1", "--duration-s", "1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "fieldline sim: error: cannot connect to mqtt://127.0.0.1:1: [Errno 111] Connection refused"
    )


def test_broker_url_from_environment() -> None:
    proc = subprocess.run(
        sim("--duration-s", "1"),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "FIELDLINE_BROKER_URL": "mqtt://127.0.0.1:1"},
    )
    assert proc.returncode == 1
    assert "mqtt://127.0.0.1:1" in proc.stderr


@pytest.mark.services
def test_sigterm_flushes_and_writes_ground_truth(
    mosquitto: Any, subscribe: Subscribe, tmp_path: Path
) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    with (tmp_path / "sim.log").open("w+") as log:
        proc = subprocess.Popen(
            sim(
                "--broker",
                mosquitto.url,
                "--site",
                site,
                "--devices",
                "4",
                "--rate-hz",
                "20",
                "--batch-size",
                "7",
                "--duration-s",
                "0",
                "--ground-truth",
                str(tmp_path / "gt"),
            ),
            cwd=REPO,
            stderr=log,
            text=True,
        )
        try:
            sub.wait_for(lambda ms: len(ms) >= 8)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        log.seek(0)
        err = log.read()
    assert "Traceback" not in err
    assert "0 unacknowledged" in err
    summary = load_summary(tmp_path / "gt")
    truth = load_readings(tmp_path / "gt")
    assert summary["published_readings"] == len(truth)
    assert summary["unacked_messages"] == 0
    # The partial batches flushed at stop arrived too.
    msgs = sub.wait_for(lambda ms: len(ms) == summary["published_messages"])
    assert sum(m.payload.count(b'"sensor"') for m in msgs) == len(truth)
