"""The scenario fleet simulator: generation rate, and 10,000 devices x 1 reading/s live.

- ``generation_readings_per_s``: simulators/scenarios/fleet-10k.toml's generator
  (numpy values for all devices per tick, faults, one encoded message per device
  and tick) flat out, no I/O, in this process; the best of :data:`REPEATS`.
- ``fleet_10k``: ``fieldline sim fleet`` with that scenario for :data:`RUN_S`
  seconds in real time over 4 shared connections, against its own Mosquitto on
  loopback: readings per wall second, PUBACKs missing at the end, and the CPU
  time of the simulator process (user + system, from ``wait4``) and of the
  broker (from /proc) per wall second, in % of one core.

Results go under the key ``fleet`` of the bench results; ``python -m bench.fleet``
measures and prints them alone (``--seconds`` for a shorter run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command
from fieldline_sim.generator import FleetGenerator
from fieldline_sim.scenario import load_scenario

SCENARIO = Path(__file__).resolve().parents[1] / "simulators" / "scenarios" / "fleet-10k.toml"
RUN_S = 60.0
GENERATION_VIRTUAL_S = 20.0
REPEATS = 3
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def generation_rate(virtual_s: float = GENERATION_VIRTUAL_S) -> int:
    """Readings per second the generator makes for fleet-10k, including JSON encoding."""
    scenario = load_scenario(SCENARIO).replace(duration_s=virtual_s)
    best = float("inf")
    readings = 0
    for _ in range(REPEATS):
        gen = FleetGenerator(scenario, 1_780_000_000_000)
        began = time.perf_counter()
        readings = sum(len(m.readings) for t in gen.ticks() for m in t.messages)
        best = min(best, time.perf_counter() - began)
    return round(readings / best)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def fleet_10k(seconds: float = RUN_S, connections: str = "4") -> dict[str, Any]:
    """Run fleet-10k for ``seconds`` in real time against a fresh Mosquitto."""
    with tempfile.TemporaryDirectory(prefix="fieldline-fleet-bench-") as tmp:
        broker = Mosquitto(Path(tmp) / "mosquitto").start()
        try:
            broker_pid = broker._pid  # the broker's CPU time
            assert broker_pid is not None
            broker_cpu0 = _cpu_s(broker_pid)
            args = fieldline_command(
                "sim", "fleet", str(SCENARIO), "--broker", broker.url, "--duration-s",
                str(seconds), "--quiet", "--instance", "fleet-bench",
            )  # fmt: skip
            args += (
                ["--connection-per-device"]
                if connections == "per-device"
                else ["--connections", connections]
            )
            out = Path(tmp) / "report.json"
            began = time.monotonic()
            with out.open("w") as f:
                proc = subprocess.Popen(args, stdout=f, stderr=subprocess.PIPE)
                _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - began
            proc.returncode = os.waitstatus_to_exitcode(status)
            stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            if proc.stderr:
                proc.stderr.close()
            broker_cpu = _cpu_s(broker_pid) - broker_cpu0
        finally:
            broker.stop()
        if proc.returncode != 0:
            return {"error": stderr.strip()[-500:] or f"exit {proc.returncode}"}
        report = json.loads(out.read_text())
    sim_cpu = usage.ru_utime + usage.ru_stime
    return {
        "devices": report["devices"],
        "connections": report["connections"],
        "seconds": seconds,
        "readings": report["readings"],
        "achieved_readings_per_s": round(report["readings_per_s"]),
        "max_lag_s": report["max_lag_s"],
        "unacked": report["unacked"],
        # Over the whole process life (start-up and connecting included).
        "cpu_percent": round(100 * sim_cpu / wall, 1),
        "broker_cpu_percent": round(100 * broker_cpu / wall, 1),
        "process_wall_s": round(wall, 1),
        "max_rss_mb": round(usage.ru_maxrss / 1024),
    }


def measure(seconds: float = RUN_S) -> dict[str, Any]:
    return {
        "generation_readings_per_s": generation_rate(),
        "fleet_10k": fleet_10k(seconds),
    }


def with_fleet(main: Callable[[], int], results: Path) -> Callable[[], int]:
    """Run ``main`` (the bench), then add ``fleet`` to the results it wrote."""

    def run() -> int:
        code = main()
        latest = results / "latest.json"
        if latest.is_file():
            data: dict[str, Any] = json.loads(latest.read_text())
            data["fleet"] = measure()
            text = json.dumps(data, indent=2) + "\n"
            latest.write_text(text)
            stamped = sorted(results.glob("2*.json"))
            if stamped:  # the run's own file: the newest
                stamped[-1].write_text(text)
            print(f"fleet: {json.dumps(data['fleet'])}")
        return code

    return run


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    ap.add_argument("--seconds", type=float, default=RUN_S)
    ap.add_argument("--connections", default="4", help="Shared connections, or 'per-device'.")
    a = ap.parse_args()
    print(
        json.dumps(
            {
                "generation_readings_per_s": generation_rate(),
                "fleet_10k": fleet_10k(a.seconds, a.connections),
            }
        )
    )
