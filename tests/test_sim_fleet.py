"""Scenario fleets against a real Mosquitto: what they say they published is what arrives."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_sim.groundtruth import load_readings, load_summary
from fieldline_sim.labels import Label, labels_topic, load_labels
from fieldline_sim.metrics import metrics_topic

pytestmark = [pytest.mark.services, pytest.mark.e2e]

Subscribe = Callable[[str, list[str]], Any]


def write_scenario(path: Path, site: str, body: str) -> Path:
    path.write_text(f'site = "{site}"\nseed = 11\nstart = "2026-06-01T12:00:00Z"\n{body}')
    return path


def run_fleet(scenario: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        fieldline("sim", "fleet", str(scenario), *args),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


FLEET = """
duration_s = 4

[[devices]]
prefix = "node"
count = 1000
rate_hz = 1.0
sensors = ["temperature"]

[[devices]]
prefix = "press"
count = 200
rate_hz = 2.0
sensors = ["vibration", "current"]
samples_per_message = 2
cycle_s = 10

[[faults]]
kind = "spike"
count = 20

[[faults]]
kind = "duplicate"
count = 10
duration_s = [1, 2]

[[faults]]
kind = "dropout"
devices = ["press"]
count = 5
duration_s = [1, 2]
"""


def test_a_1200_device_fleet_over_four_connections_delivers_what_it_published(
    mosquitto: Mosquitto, subscribe: Subscribe, tmp_path: Path
) -> None:
    site = f"fleet-{secrets.token_hex(3)}"
    sub = subscribe(
        mosquitto.url,
        [f"fieldline/{site}/+/telemetry", labels_topic(site), metrics_topic(f"t-{site}")],
    )
    scenario = write_scenario(tmp_path / "fleet.toml", site, FLEET)
    gt, labels_file = tmp_path / "gt", tmp_path / "labels.jsonl"
    report = run_fleet(
        scenario,
        "--broker", mosquitto.url, "--connections", "4", "--ground-truth", str(gt),
        "--labels", str(labels_file), "--labels-topic", "--instance", f"t-{site}", "--quiet",
    )  # fmt: skip
    assert report["devices"] == 1200
    assert report["connections"] == 4
    assert report["unacked"] == 0
    truth = load_readings(gt)
    assert report["readings"] == len(truth) == load_summary(gt)["published_readings"]
    assert report["duplicates"] > 0
    labels = load_labels(labels_file)
    assert report["labels"] == len(labels) == 20 + 10 + 5

    total = report["messages"] + report["duplicates"]
    msgs = sub.wait_for(lambda ms: sum(m.topic.endswith("/telemetry") for m in ms) >= total)
    msgs = sub.wait_for(lambda ms: sum(m.topic == labels_topic(site) for m in ms) >= len(labels))
    telemetry = [m for m in msgs if m.topic.endswith("/telemetry")]
    batches = [contract.decode_telemetry(m.topic, m.payload) for m in telemetry]
    # Every device on its own topic, whichever connection carried it.
    assert {t.device for t in batches} == {f"node-{i:04d}" for i in range(1, 1001)} | {
        f"press-{i:04d}" for i in range(1, 201)
    }
    firsts = {}
    copies = Counter()
    for t in batches:
        key = (t.device, t.seq)
        if key in firsts:
            copies[key] += 1
            assert firsts[key] == t.readings  # a duplicate is the same message
        else:
            firsts[key] = t.readings
    assert len(firsts) == report["messages"]
    assert sum(copies.values()) == report["duplicates"]
    received = [(site, dev, r.sensor, r.ts, r.value) for (dev, _), rs in firsts.items() for r in rs]
    assert Counter(received) == Counter(truth)
    # Per device, seq grows by one per message from the virtual start.
    seqs: dict[str, list[int]] = defaultdict(list)
    for dev, seq in firsts:
        seqs[dev].append(seq)
    for s in seqs.values():
        assert sorted(s) == list(range(min(s), min(s) + len(s)))

    published_labels = [Label.from_json(m.payload) for m in msgs if m.topic == labels_topic(site)]
    assert published_labels == labels

    # The live metrics' last word agrees with the report.
    msgs = sub.wait_for(lambda ms: any(b'"done":true' in m.payload for m in ms))
    final = json.loads(next(m.payload for m in msgs if b'"done":true' in m.payload))
    assert final["published_readings"] == report["readings"]
    assert final["published_messages"] == final["acked_messages"] == report["messages"]
    assert final["devices"] == 1200


def test_one_connection_per_device_with_statuses(
    mosquitto: Mosquitto, subscribe: Subscribe, tmp_path: Path
) -> None:
    site = f"own-{secrets.token_hex(3)}"
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry", f"fieldline/{site}/+/status"])
    body = '[[devices]]\nprefix = "pi"\ncount = 40\nsensors = ["temperature", "humidity"]\n'
    scenario = write_scenario(tmp_path / "own.toml", site, "duration_s = 2\n" + body)
    report = run_fleet(scenario, "--broker", mosquitto.url, "--connection-per-device", "--quiet")
    assert report["connections"] == 40
    assert report["unacked"] == 0
    assert report["messages"] == 40 * 2
    msgs = sub.wait_for(lambda ms: sum(m.topic.endswith("/status") for m in ms) == 80)
    states: dict[str, list[str]] = defaultdict(list)
    for m in msgs:
        if m.topic.endswith("/status"):
            status = contract.decode_status(m.topic, m.payload)
            states[status.device].append(status.state)
            assert status.sensors == {"temperature": "ok", "humidity": "ok"}
    assert states == {f"pi-{i:04d}": ["online", "offline"] for i in range(1, 41)}
    msgs = sub.wait_for(lambda ms: sum(m.topic.endswith("/telemetry") for m in ms) == 80)


def test_same_seed_same_readings_and_labels_through_the_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    body = (
        "duration_s = 300\n"
        '[[devices]]\nprefix = "gh"\ncount = 30\nsensors = ["temperature", "humidity", "battery"]\n'
        '[[faults]]\nkind = "stuck"\ncount = 3\nduration_s = [20, 60]\n'
        '[[faults]]\nkind = "clock_skew"\ncount = 2\nduration_s = [10, 30]\n'
        '[[faults]]\nkind = "out_of_order"\ncount = 2\nduration_s = 4\n'
    )
    site = f"det-{secrets.token_hex(3)}"
    scenario = write_scenario(tmp_path / "det.toml", site, body)
    runs = {}
    for name, seed in (("a", "11"), ("b", "11"), ("c", "12")):
        out = tmp_path / name
        runs[name] = run_fleet(
            scenario,
            "--broker", mosquitto.url, "--speed", "0", "--seed", seed, "--quiet",
            "--ground-truth", str(out), "--labels", str(out / "labels.jsonl"),
        )  # fmt: skip
        assert runs[name]["unacked"] == 0
    a, b, c = (tmp_path / n for n in "abc")
    assert (a / "readings.csv").read_bytes() == (b / "readings.csv").read_bytes()
    assert (a / "labels.jsonl").read_bytes() == (b / "labels.jsonl").read_bytes()
    assert (a / "readings.csv").read_bytes() != (c / "readings.csv").read_bytes()
    assert (a / "labels.jsonl").read_bytes() != (c / "labels.jsonl").read_bytes()
    assert len(load_labels(a / "labels.jsonl")) == 7
    assert runs["a"]["readings"] == 30 * 3 * 300


@pytest.mark.parametrize("mode", [["--connections", "3"], ["--connection-per-device"]])
def test_the_fleet_rides_out_a_broker_restart(
    fresh_mosquitto: Mosquitto, subscribe: Subscribe, tmp_path: Path, mode: list[str]
) -> None:
    site = f"restart-{secrets.token_hex(3)}"
    body = '[[devices]]\nprefix = "r"\ncount = 60\nsensors = ["temperature"]\n'
    scenario = write_scenario(tmp_path / "r.toml", site, "duration_s = 8\n" + body)
    sub = subscribe(fresh_mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    proc = subprocess.Popen(
        fieldline("sim", "fleet", str(scenario), "--broker", fresh_mosquitto.url, "--quiet", *mode),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        sub.wait_for(lambda ms: len(ms) >= 60)  # the first tick is out
        fresh_mosquitto.restart()
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()[-3000:]
    report = json.loads(out)
    # Messages published while the broker was away were queued and resent after
    # the reconnect: every one was acknowledged in the end.
    assert report["unacked"] == 0
    assert report["readings"] == 60 * 8
    assert b"lost connection" in err or b"cannot reach" in err
