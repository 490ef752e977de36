from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_edge.edge_cli import edge_main

Subscribe = Callable[[str, list[str]], Any]
REPO = Path(__file__).resolve().parents[2]


def test_missing_arguments_print_usage() -> None:
    proc = subprocess.run(
        ["uv", "run", "fieldline", "edge", "run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "usage:" in proc.stderr
    assert "--broker" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "required: COMMAND"),
        (["run"], "the following arguments are required: --broker, --site, --device"),
        (["fly"], "invalid choice: 'fly'"),
        (
            ["run", "--broker", "http://x", "--site", "s", "--device", "d"],
            "must start with mqtt:// or mqtts://",
        ),
        (
            ["run", "--broker", "mqtt://h", "--site", "a/b", "--device", "d"],
            "'a/b' is not a valid site id",
        ),
        (
            ["run", "--broker", "mqtt://h", "--site", "s", "--device", "d", "--sensor", "gps"],
            "'gps' is not a sensor spec",
        ),
        (
            ["run", "--broker", "mqtt://h", "--site", "s", "--device", "d", "--interval-s", "0"],
            "must be a finite number > 0",
        ),
        (
            ["run", "--broker", "mqtt://h", "--site", "s", "--device", "d", "--batch-size", "x"],
            "'x' is not an integer",
        ),
        (
            [
                "run",
                "--broker",
                "mqtt://h",
                "--site",
                "s",
                "--device",
                "d",
                "--sensor",
                "sim:t",
                "--sensor",
                "sim:t:K",
            ],
            "sensor names must be unique",
        ),
        (
            ["run", "--broker", "mqtt://h", "--site", "s", "--device", "d", "--schema", "3"],
            "argument --schema: invalid choice: 3 (choose from 1, 2)",
        ),
        (
            ["run", "--config", "edge.toml", "--schema", "2"],
            "--config cannot be combined with --schema",
        ),
    ],
)
def test_bad_values_give_one_clear_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert edge_main(args) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1
    assert message in error_lines[0]
    assert "Traceback" not in err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert edge_main(["run", "--help"]) == 0
    assert "--sensor SPEC" in capsys.readouterr().out


def agent_command(url: str, device: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fieldline_edge.edge_cli",
        "run",
        "--broker",
        url,
        "--site",
        "test",
        "--device",
        device,
        "--sensor",
        "sim:temperature:°C",
        "--interval-s",
        "0.05",
        "--batch-size",
        "2",
        *extra,
    ]


@pytest.mark.services
def test_sigkill_makes_the_broker_publish_the_last_will(
    mosquitto: Any, subscribe: Subscribe, tmp_path: Path
) -> None:
    device = f"dev-{uuid.uuid4().hex[:12]}"
    status_topic = contract.status_topic("test", device)
    tele_topic = contract.telemetry_topic("test", device)
    sub = subscribe(mosquitto.url, [f"fieldline/test/{device}/#"])
    with (tmp_path / "agent.log").open("w") as log:
        proc = subprocess.Popen(agent_command(mosquitto.url, device), stderr=log)
        try:
            sub.wait_for(lambda ms: any(m.topic == tele_topic for m in ms))
        finally:
            proc.kill()  # SIGKILL: no DISCONNECT packet, the socket just closes
            proc.wait()

    def will_arrived(ms: list[Any]) -> bool:
        return any(
            m.topic == status_topic
            and contract.decode_status(m.topic, m.payload).state == "offline"
            for m in ms
        )

    msgs = sub.wait_for(will_arrived)
    states = [
        contract.decode_status(m.topic, m.payload).state for m in msgs if m.topic == status_topic
    ]
    assert states[0] == "online"
    assert states[-1] == "offline"
    late = subscribe(mosquitto.url, [status_topic])
    retained = late.wait_for(lambda ms: len(ms) >= 1)[0]
    assert retained.retain
    assert contract.decode_status(retained.topic, retained.payload).state == "offline"


@pytest.mark.services
@pytest.mark.parametrize(
    ("flags", "schema"),
    [([], contract.SCHEMA_TELEMETRY_V1), (["--schema", "2"], contract.SCHEMA_TELEMETRY_V2)],
)
def test_sigterm_stops_cleanly(
    mosquitto: Any, subscribe: Subscribe, flags: list[str], schema: str
) -> None:
    device = f"dev-{uuid.uuid4().hex[:12]}"
    tele_topic = contract.telemetry_topic("test", device)
    status_topic = contract.status_topic("test", device)
    sub = subscribe(mosquitto.url, [f"fieldline/test/{device}/#"])
    proc = subprocess.Popen(
        agent_command(mosquitto.url, device, *flags), stderr=subprocess.PIPE, text=True
    )
    try:
        sub.wait_for(lambda ms: any(m.topic == tele_topic for m in ms))
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "0 unacknowledged" in err
    msgs = sub.wait_for(
        lambda ms: any(m.topic == status_topic and b'"offline"' in m.payload for m in ms)
    )
    tele = [m.payload for m in msgs if m.topic == tele_topic]
    assert {json.loads(p)["schema"] for p in tele} == {schema}
    batches = [contract.decode_telemetry(tele_topic, p) for p in tele]
    seq0 = batches[0].seq
    assert [t.seq for t in batches] == list(range(seq0, seq0 + len(batches)))


def test_duration_and_unreachable_broker_do_not_hang(capsys: pytest.CaptureFixture[str]) -> None:
    # Nothing listens on port 1 on loopback: the agent keeps retrying until the
    # duration ends, then reports its telemetry as unacknowledged (exit 1).
    code = edge_main(
        [
            "run",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--site",
            "test",
            "--device",
            "d1",
            "--sensor",
            "sim:t",
            "--interval-s",
            "0.05",
            "--duration-s",
            "0.3",
            "--batch-size",
            "1",
            "--ack-timeout-s",
            "0.2",
        ]
    )
    assert code == 1
