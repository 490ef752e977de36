"""`make demo` end to end: its own broker, InfluxDB, two fleets and the pipeline."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from fieldline_localstack.processes import fieldline_command as fieldline

pytestmark = [pytest.mark.services, pytest.mark.e2e]


def test_a_timed_demo_stores_every_reading_shows_alerts_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    state = tmp_path / "demo"
    env = {**os.environ, "FIELDLINE_DEMO_SECONDS": "40", "COLUMNS": "120"}
    done = subprocess.run(
        fieldline("demo", "--state-dir", str(state)),
        env=env, capture_output=True, timeout=240, check=False,
    )  # fmt: skip
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 0, err[-3000:]
    summary = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert summary["published_readings"] > 0
    # Both fleets' readings are in windows, each exactly once.
    assert summary["stored_readings"] == summary["published_readings"] - summary["late_readings"]
    assert summary["dead_letters"] >= 1  # the deliberately broken device
    assert summary["alerts"] >= 1  # the faulty machines' spikes, shifts and stuck sensors
    assert "Grafana dashboards:" in err
    assert "deploy/grafana/provisioning" in err
    # Every service the demo started has stopped: no process runs in its state dir.
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if str(state).encode() in cmdline:
                leftovers.append(cmdline.replace(b"\0", b" ")[:200])
    assert leftovers == []
