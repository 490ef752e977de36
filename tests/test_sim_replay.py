"""CSV replay through a real Mosquitto: each row arrives once, with its time and value, in order."""

from __future__ import annotations

import csv
import json
import secrets
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_edge.mqtt import parse_broker_url
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_sim.replay import parse_timestamp, replay_paths

pytestmark = [pytest.mark.services, pytest.mark.e2e]

Subscribe = Callable[[str, list[str]], Any]
NAB = Path(__file__).resolve().parents[1] / "third_party" / "nab" / "data"


def received_series(msgs: list[Any]) -> dict[str, list[tuple[int, float]]]:
    """device -> [(ts, value)] in arrival order; seq must grow by one per message."""
    out: dict[str, list[tuple[int, float]]] = defaultdict(list)
    seqs: dict[str, list[int]] = defaultdict(list)
    for m in msgs:
        t = contract.decode_telemetry(m.topic, m.payload)
        seqs[t.device].append(t.seq)
        for r in t.readings:
            out[t.device].append((r.ts, r.value))
    for s in seqs.values():
        assert s == list(range(s[0], s[0] + len(s)))
    return dict(out)


def file_series(path: Path) -> list[tuple[int, float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [(parse_timestamp(r["timestamp"]), float(r["value"])) for r in rows]


def test_small_csvs_through_the_python_api(
    mosquitto: Mosquitto, subscribe: Subscribe, tmp_path: Path
) -> None:
    site = f"rp-{secrets.token_hex(3)}"
    (tmp_path / "in").mkdir()
    a = tmp_path / "in" / "pump 1.csv"
    a.write_text(
        "timestamp,value\n" + "".join(f"2015-03-01 00:{m:02d}:00,{m * 1.25}\n" for m in range(30))
    )
    b = tmp_path / "in" / "tank.csv"
    b.write_text("timestamp,value\n2015-03-01T00:00:00Z,-1e-3\n2015-03-01T00:00:30Z,42\n")
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    report = replay_paths(
        [tmp_path / "in"], parse_broker_url(mosquitto.url), site=site, speed=0, batch=4,
        sensor="level",
    )  # fmt: skip
    assert report.to_dict() == {"devices": 2, "readings": 32, "messages": 8 + 1, "unacked": 0}
    msgs = sub.wait_for(lambda ms: len(ms) == 9)
    assert {m.topic for m in msgs} == {
        f"fieldline/{site}/pump-1/telemetry",
        f"fieldline/{site}/tank/telemetry",
    }
    got = received_series(msgs)
    assert got["pump-1"] == file_series(a)
    assert got["tank"] == [(1_425_168_000_000, -0.001), (1_425_168_030_000, 42.0)]
    for m in msgs:
        assert all(
            r.sensor == "level" for r in contract.decode_telemetry(m.topic, m.payload).readings
        )


def test_a_nab_file_through_the_command(
    mosquitto: Mosquitto, subscribe: Subscribe, tmp_path: Path
) -> None:
    nab = NAB / "realKnownCause" / "ambient_temperature_system_failure.csv"
    expected = file_series(nab)
    assert len(expected) > 7000
    site = f"nab-{secrets.token_hex(3)}"
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    proc = subprocess.run(
        fieldline(
            "sim", "replay", str(nab), "--broker", mosquitto.url, "--site", site, "--speed", "0",
        ),
        capture_output=True, text=True, timeout=240, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report == {
        "devices": 1,
        "readings": len(expected),
        "messages": len(expected),
        "unacked": 0,
    }
    msgs = sub.wait_for(lambda ms: len(ms) == len(expected))
    got = received_series(msgs)
    assert list(got) == ["ambient_temperature_system_failure"]
    assert got["ambient_temperature_system_failure"] == expected  # every row once, in order


def test_max_rows_and_a_folder_of_nab_files(
    mosquitto: Mosquitto, subscribe: Subscribe, tmp_path: Path
) -> None:
    folder = NAB / "artificialWithAnomaly"
    files = sorted(folder.glob("*.csv"))
    site = f"nabdir-{secrets.token_hex(3)}"
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    report = replay_paths(
        [folder], parse_broker_url(mosquitto.url), site=site, speed=0, max_rows=50, batch=10
    )
    assert report.devices == len(files)
    assert report.readings == 50 * len(files)
    msgs = sub.wait_for(lambda ms: len(ms) == report.messages)
    got = received_series(msgs)
    assert got == {f.stem: file_series(f)[:50] for f in files}


def test_unreachable_broker_exits_1(tmp_path: Path) -> None:
    f = tmp_path / "s.csv"
    f.write_text("timestamp,value\n2015-03-01 00:00:00,1\n")
    proc = subprocess.run(
        fieldline("sim", "replay", str(f), "--broker", "mqtt://127.0.0.1:1", "--quiet"),
        capture_output=True, text=True, timeout=120, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith(
        "fieldline sim: error: cannot connect to mqtt://127.0.0.1:1"
    )
    assert proc.stdout == ""
