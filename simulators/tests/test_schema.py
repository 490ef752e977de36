"""--schema and the scenario key telemetry_schema: version 1 unless asked, version 2 on request."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_edge.contract import SCHEMA_TELEMETRY_V1, SCHEMA_TELEMETRY_V2, Reading
from fieldline_localstack.processes import fieldline_command as fieldline
from fieldline_sim import cli
from fieldline_sim.generator import FleetGenerator, Outgoing
from fieldline_sim.groundtruth import load_readings
from fieldline_sim.scenario import Scenario, ScenarioError, parse_scenario

Subscribe = Callable[[str, list[str]], Any]
START_MS = 1_777_593_600_000


def scenario(**top: Any) -> Scenario:
    return parse_scenario(
        {
            "site": "t",
            "seed": 3,
            "start": "2026-05-01T00:00:00Z",
            "duration_s": 120,
            "devices": [{"prefix": "d", "count": 4, "rate_hz": 1.0, "samples_per_message": 3}],
            "faults": [
                {"kind": "duplicate", "count": 2, "duration_s": [5, 10]},
                {"kind": "out_of_order", "count": 1, "duration_s": [3, 6]},
            ],
            **top,
        },
        "x.toml",
    )


def by_sensor(readings: list[Reading]) -> dict[str, list[Reading]]:
    # Version 2 groups a message's readings by sensor: each sensor keeps its order.
    out: dict[str, list[Reading]] = {}
    for r in readings:
        out.setdefault(r.sensor, []).append(r)
    return out


def generate(s: Scenario) -> tuple[list[Outgoing], FleetGenerator]:
    gen = FleetGenerator(s, START_MS)
    out = [m for tick in gen.ticks() for m in tick.messages]
    return out + gen.finish(), gen


# --------------------------------------------------------------------------- scenario key


def test_the_scenario_key_defaults_to_version_1() -> None:
    assert scenario().telemetry_schema == SCHEMA_TELEMETRY_V1
    assert scenario(telemetry_schema=1).telemetry_schema == SCHEMA_TELEMETRY_V1
    assert scenario(telemetry_schema=2).telemetry_schema == SCHEMA_TELEMETRY_V2


@pytest.mark.parametrize("value", [3, 0, "2", 2.0, True])
def test_a_bad_scenario_schema_names_the_file_and_key(value: Any) -> None:
    with pytest.raises(ScenarioError) as exc:
        scenario(telemetry_schema=value)
    assert str(exc.value) == (
        "x.toml: telemetry_schema: must be 1 (fieldline.telemetry/1) or 2 "
        f"(fieldline.telemetry/2), got {value!r}"
    )


def test_schema_on_the_command_line_wins_over_the_scenario(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("telemetry_schema = 2\n[[devices]]\ncount = 1\n")
    assert cli._scenario(path, None, None, None).telemetry_schema == SCHEMA_TELEMETRY_V2
    forced = cli._scenario(path, None, None, None, cli.Version.V1)
    assert forced.telemetry_schema == SCHEMA_TELEMETRY_V1


def test_version_2_messages_carry_exactly_the_version_1_readings() -> None:
    v1, gen = generate(scenario())
    v2, _ = generate(scenario(telemetry_schema=2))
    assert len(v1) == len(v2)
    assert any(m.duplicate for m in v2)
    for a, b in zip(v1, v2):
        assert (a.device, a.seq, a.readings, a.duplicate) == (
            b.device,
            b.seq,
            b.readings,
            b.duplicate,
        )
        topic = gen.topics[b.device]
        old = contract.decode_telemetry(topic, a.payload)
        new = contract.decode_telemetry(topic, b.payload)
        assert (old.schema, new.schema) == (SCHEMA_TELEMETRY_V1, SCHEMA_TELEMETRY_V2)
        assert old.readings == a.readings
        assert (new.device, new.seq) == (old.device, old.seq)
        assert by_sensor(new.readings) == by_sensor(a.readings)
    assert sum(len(m.payload) for m in v2) < sum(len(m.payload) for m in v1)


# --------------------------------------------------------------------------- command line


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fieldline("sim", *args),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


@pytest.mark.parametrize("command", [["run"], ["fleet", "s.toml"], ["replay", "x.csv"]])
def test_an_unknown_schema_is_a_usage_error(command: list[str]) -> None:
    proc = run(*command, "--schema", "3")
    assert proc.returncode == 2
    assert "Usage: " in proc.stderr
    assert "'3' is not one of '1', '2'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


@pytest.mark.services
def test_sim_run_publishes_version_2_when_asked(
    mosquitto: Any, subscribe: Subscribe, tmp_path: Path
) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    proc = run(
        "run", "--broker", mosquitto.url, "--site", site, "--devices", "2", "--rate-hz", "5",
        "--batch-size", "3", "--duration-s", "1", "--ground-truth", str(tmp_path),
        "--instance", f"t-{uuid.uuid4().hex[:8]}", "--schema", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    truth = load_readings(tmp_path)
    assert len(truth) == 2 * 2 * 5

    def received(ms: list[Any]) -> list[contract.Telemetry]:
        return [contract.decode_telemetry(m.topic, m.payload) for m in ms]

    msgs = sub.wait_for(lambda ms: sum(len(t.readings) for t in received(ms)) >= len(truth))
    batches = received(msgs)
    assert {t.schema for t in batches} == {SCHEMA_TELEMETRY_V2}
    got = [(t.site, t.device, r.sensor, r.ts, r.value) for t in batches for r in t.readings]
    assert Counter(got) == Counter(truth)


@pytest.mark.services
def test_sim_replay_publishes_version_2_when_asked(
    mosquitto: Any, subscribe: Subscribe, tmp_path: Path
) -> None:
    site = f"r{uuid.uuid4().hex[:8]}"
    rows = [(1_425_168_000_000 + 60_000 * i, i * 1.5 - 2) for i in range(7)]
    csv = tmp_path / "pump.csv"
    csv.write_text("timestamp,value\n" + "".join(f"{ts},{v}\n" for ts, v in rows))
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry"])
    proc = run(
        "replay", str(csv), "--broker", mosquitto.url, "--site", site, "--speed", "0",
        "--batch", "3", "--sensor", "flow", "--schema", "2", "--quiet",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"devices": 1, "readings": 7, "messages": 3, "unacked": 0}
    msgs = sub.wait_for(lambda ms: len(ms) == 3)
    batches = [contract.decode_telemetry(m.topic, m.payload) for m in msgs]
    assert {t.schema for t in batches} == {SCHEMA_TELEMETRY_V2}
    assert [t.seq for t in batches] == list(range(batches[0].seq, batches[0].seq + 3))
    assert [(r.sensor, r.ts, r.value) for t in batches for r in t.readings] == [
        ("flow", ts, v) for ts, v in rows
    ]
