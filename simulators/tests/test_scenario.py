from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from fieldline_localstack.processes import fieldline_command
from fieldline_sim.scenario import ScenarioError, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


@pytest.mark.parametrize("name", ["greenhouse", "factory", "fleet-10k"])
def test_shipped_scenarios_load(name: str) -> None:
    s = load_scenario(SCENARIOS / f"{name}.toml")
    assert s.name == name
    assert s.devices > 0
    assert s.groups
    assert s.faults


def test_fleet_10k_is_ten_thousand_readings_a_second() -> None:
    s = load_scenario(SCENARIOS / "fleet-10k.toml")
    assert s.devices == 10_000
    assert s.readings_per_s == 10_000


def test_defaults_and_parameters() -> None:
    s = parse_scenario(
        {
            "site": "lab",
            "start": "2026-01-01T00:00:00Z",
            "devices": [
                {
                    "prefix": "a",
                    "count": 3,
                    "sensors": ["temperature", "t_out", "flow"],
                    "params": {
                        "t_out": {"kind": "temperature", "mean": -5},
                        "flow": {"unit": "l/s"},
                    },
                }
            ],
        }
    )
    g = s.groups[0]
    assert g.device_ids() == ["a-0001", "a-0002", "a-0003"]
    assert [x.kind for x in g.sensors] == ["temperature", "temperature", "generic"]
    assert g.sensors[1].params["mean"] == -5.0
    assert g.sensors[0].params["mean"] == 21.0
    assert [x.unit for x in g.sensors] == ["°C", "°C", "l/s"]
    assert s.start_ms == 1_767_225_600_000
    assert s.duration_s == 60.0
    assert parse_scenario({"devices": [{"count": 1}]}).start_ms is None  # "now"


GOOD_DEVICES: list[dict[str, Any]] = [{"prefix": "d", "count": 2}]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({}, "devices: at least one [[devices]] group is needed"),
        ({"devices": [{"count": 0}]}, "devices[0].count: must be an integer >= 1"),
        ({"devices": [{"prefix": "d"}]}, "devices[0].count: is required"),
        ({"devices": [{"count": 1, "rate_hz": 0}]}, "devices[0].rate_hz: must be > 0"),
        ({"devices": [{"count": 1, "colour": 1}]}, "devices[0].colour: is not a known key"),
        (
            {"devices": [{"count": 1, "sensors": ["a/b"]}]},
            "devices[0].sensors: 'a/b' is not a valid",
        ),
        (
            {"devices": [{"count": 1, "params": {"temperature": {"mean": "hot"}}}]},
            "devices[0].params.temperature.mean: must be a number",
        ),
        (
            {"devices": [{"count": 1, "params": {"temperature": {"wobble": 1}}}]},
            "devices[0].params.temperature.wobble: is not a parameter of a temperature sensor",
        ),
        (
            {"devices": [{"count": 1, "params": {"co2": {}}}]},
            "devices[0].params.co2: is not one of this group's sensors",
        ),
        ({"devices": [*GOOD_DEVICES, *GOOD_DEVICES]}, "devices[1].prefix: 'd' is used by another"),
        ({"site": "a b", "devices": GOOD_DEVICES}, "site: 'a b' is not a valid id"),
        ({"start": "yesterday", "devices": GOOD_DEVICES}, "start: must be an RFC 3339 time"),
        ({"seed": -1, "devices": GOOD_DEVICES}, "seed: must be an integer >= 0"),
        ({"duration_s": "long", "devices": GOOD_DEVICES}, "duration_s: must be a number"),
        (
            {"devices": GOOD_DEVICES, "faults": [{"kind": "meteor"}]},
            "faults[0].kind: must be one of",
        ),
        (
            {"devices": GOOD_DEVICES, "faults": [{"kind": "spike"}]},
            "faults[0].count: give exactly one of count and rate_per_hour",
        ),
        (
            {"devices": GOOD_DEVICES, "faults": [{"kind": "spike", "count": 1, "duration_s": 5}]},
            "faults[0].duration_s: a spike is one reading long",
        ),
        (
            {
                "devices": GOOD_DEVICES,
                "faults": [{"kind": "stuck", "count": 1, "duration_s": [5, 1]}],
            },
            "faults[0].duration_s: must be a number > 0 or [min, max]",
        ),
        (
            {
                "devices": GOOD_DEVICES,
                "faults": [{"kind": "dropout", "count": 1, "sensors": ["x"]}],
            },
            "faults[0].sensors: a dropout fault hits the whole device",
        ),
        (
            {"devices": GOOD_DEVICES, "faults": [{"kind": "spike", "count": 1, "devices": ["z"]}]},
            "faults[0].devices: 'z' is not the prefix",
        ),
        (
            {
                "devices": GOOD_DEVICES,
                "faults": [{"kind": "spike", "count": 1, "sensors": ["co2"]}],
            },
            "faults[0].sensors: 'co2' is not a sensor of the targeted devices",
        ),
        (
            {"duration_s": 0, "devices": GOOD_DEVICES, "faults": [{"kind": "spike", "count": 1}]},
            "faults[0].count: needs a finite duration_s",
        ),
    ],
)
def test_bad_scenarios_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(raw, "x.toml")
    assert str(err.value).startswith("x.toml: ")
    assert message in str(err.value)


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("site = \n")
    with pytest.raises(ScenarioError, match=r"bad\.toml: not valid TOML: .*line 1"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match=r"missing\.toml: cannot read"):
        load_scenario(tmp_path / "missing.toml")


def _sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fieldline_command("sim", *args),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["fleet", "{bad}"], "bad.toml: devices[0].count: must be an integer >= 1"),
        (["generate", "{bad}", "--out", "{tmp}"], "devices[0].count"),
        (["fleet", "{missing}"], "missing.toml: cannot read"),
        (["fleet", "{good}", "--connections", "0"], "connections must be in 1..3"),
        (["fleet", "{good}", "--speed", "-1"], "speed must be >= 0"),
        (["fleet", "{good}", "--duration-s", "-5"], "--duration-s must be >= 0"),
        (["fleet", "{good}", "--start", "soon"], "--start 'soon' is not an RFC 3339 time"),
        (["fleet", "{good}", "--site", "a/b"], "--site 'a/b' is not a valid id"),
        (["fleet", "{good}", "--broker", "http://x"], "must start with mqtt://"),
        (["fleet", "{good}", "--password-file", "{good}"], "--password-file needs --username"),
        (
            ["generate", "{good}", "--out", "{tmp}", "--duration-s", "0"],
            "generate needs a duration",
        ),
        (["replay", "{missing}"], "missing.toml: no such file or directory"),
        (["replay", "{good}", "--speed", "-2"], "speed must be a finite number >= 0"),
        (["replay", "{good}", "--batch", "0"], "batch must be in 1..10000"),
        (["replay", "{good}", "--sensor", "a b"], "sensor 'a b' is not a valid id"),
    ],
)
def test_cli_misuse_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('site = "x"\n[[devices]]\ncount = 0\n')
    good = tmp_path / "good.toml"
    good.write_text('site = "x"\n[[devices]]\ncount = 3\n')
    paths = {
        "{bad}": str(bad),
        "{good}": str(good),
        "{missing}": str(tmp_path / "missing.toml"),
        "{tmp}": str(tmp_path / "out"),
    }
    proc = _sim(*[paths.get(a, a) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fieldline sim: error: ")
    assert message in lines[0]
    assert proc.stdout == ""


def test_cli_usage_error_exits_2() -> None:
    proc = _sim("fleet")  # no scenario
    assert proc.returncode == 2
    assert "Usage" in proc.stderr
    assert "Traceback" not in proc.stderr
