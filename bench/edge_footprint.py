"""The edge agent's footprint: resident memory and CPU at 10 readings/s.

Runs ``fieldline edge run --config`` as a real process (its defaults: batches of
up to 100 readings every 5 s, the spool on disk with ``sync = "full"``) against
a Mosquitto started here, with one simulated sensor read every 0.1 s, and
samples ``/proc/<pid>`` for :data:`SECONDS` after a :data:`WARMUP_S` start-up.
Results go under the key ``edge_agent`` of the bench results:
``{rss_mb, peak_rss_mb, pss_mb, cpu_percent, readings_published, seconds}``
(CPU as a share of one core; RSS is what a Pi Zero 2 would have to spare, PSS
the same with shared libraries split among the processes that map them).

The process is started as ``python -m fieldline_edge.edge_cli``: what a device
runs (only fieldline-edge and paho-mqtt installed, no typer, so the ``fieldline``
command loads no other component's plugins), whereas ``python -m fieldline_edge``
in this workspace would also import the pipeline's and simulator's commands.

``python -m bench.edge_footprint`` prints them alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from subprocess import STDOUT, Popen
from typing import Any

from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import terminate

RATE_HZ = 10.0
SECONDS = 30.0
WARMUP_S = 5.0

CONFIG = """\
[device]
id = "bench-edge"
site = "bench"
[mqtt]
url = "{url}"
[spool]
path = "{spool}"
[agent]
clock_sync_file = ""
[[sensors]]
name = "t"
driver = "simulated"
interval_s = {interval}
"""


def _cpu_s(pid: int) -> float:
    # /proc/<pid>/stat fields 14 and 15: utime and stime in clock ticks.
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kb(pid: int, key: str) -> int:
    m = re.search(rf"^{key}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


def measure(seconds: float = SECONDS) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="fieldline-edge-bench-"))
    broker = Mosquitto(workdir / "mosquitto").start()
    log = workdir / "agent.log"
    try:
        conf = workdir / "edge.toml"
        conf.write_text(
            CONFIG.format(url=broker.url, spool=workdir / "spool.db", interval=1 / RATE_HZ)
        )
        with log.open("wb") as out:
            argv = [sys.executable, "-m", "fieldline_edge.edge_cli", "run", "--config", str(conf)]
            proc = Popen(argv, stdout=out, stderr=STDOUT)
        try:
            time.sleep(WARMUP_S)
            cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
            rss: list[int] = []
            while time.monotonic() - t0 < seconds:
                time.sleep(1.0)
                rss.append(_status_kb(proc.pid, "VmRSS"))
            cpu1, t1 = _cpu_s(proc.pid), time.monotonic()
            peak = _status_kb(proc.pid, "VmHWM")
            # PSS shares shared libraries (libpython, OpenSSL) among their users.
            pss = re.search(
                r"^Pss:\s+(\d+) kB", Path(f"/proc/{proc.pid}/smaps_rollup").read_text(), re.M
            )
        finally:
            code = terminate(proc, 60)
        text = log.read_text(errors="replace")
        m = re.search(r"stopped: \d+ messages, (\d+) readings published", text)
        published = int(m.group(1)) if m else 0
        return {
            "rss_mb": round(max(rss) / 1024, 1),
            "peak_rss_mb": round(peak / 1024, 1),
            "pss_mb": round(int(pss.group(1)) / 1024, 1) if pss else None,
            "cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "target_readings_per_s": RATE_HZ,
            "readings_published": published,
            "seconds": round(t1 - t0, 1),
            "exit_code": code,
        }
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def with_edge_footprint(main: Callable[[], int], results: Path) -> Callable[[], int]:
    """Run ``main`` (the bench), then add ``edge_agent`` to the results it wrote."""

    def run() -> int:
        code = main()
        latest = results / "latest.json"
        if latest.is_file():
            data: dict[str, Any] = json.loads(latest.read_text())
            data["edge_agent"] = measure()
            text = json.dumps(data, indent=2) + "\n"
            latest.write_text(text)
            stamped = sorted(results.glob("2*.json"))
            if stamped:  # the run's own file: the newest
                stamped[-1].write_text(text)
            print(f"edge agent at {RATE_HZ:g} readings/s: {data['edge_agent']}")
        return code

    return run


if __name__ == "__main__":
    print(json.dumps({"edge_agent": measure()}))
