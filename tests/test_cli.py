"""The ``fieldline`` command: every component's subcommands, help, and misuse."""

from __future__ import annotations

import subprocess

import pytest
from fieldline_localstack.processes import fieldline_command


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fieldline_command(*args),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    "args",
    [("edge", "run"), ("sim", "run"), ("pipeline", "run"), ("demo",), ("stack", "start")],
)
def test_every_subcommand_has_help(args: tuple[str, ...]) -> None:
    res = run(*args, "--help")
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()
    assert "Traceback" not in res.stdout + res.stderr


def test_top_level_help_lists_the_installed_components() -> None:
    res = run("--help")
    assert res.returncode == 0
    for name in ("edge", "sim", "pipeline", "demo", "stack", "dashboards"):
        assert name in res.stdout
    assert "unavailable" not in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("no-such-command",),
        ("pipeline", "run", "--window-s", "abc"),
        ("pipeline", "run", "--no-such-flag"),
        ("pipeline", "run", "--broker", "http://not-mqtt"),
        ("pipeline", "run", "--window-s", "0"),
        ("sim", "run", "--devices", "-3"),
        ("edge", "run"),
    ],
)
def test_misuse_prints_usage_or_a_clear_error_never_a_traceback(args: tuple[str, ...]) -> None:
    res = run(*args)
    assert res.returncode == 2, (res.stdout, res.stderr)
    out = res.stdout + res.stderr
    assert "Traceback" not in out
    assert "usage" in out.lower() or "error" in out.lower() or "fieldline" in out.lower()
