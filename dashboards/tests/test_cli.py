"""``fieldline dashboards build``/``list``: files, staleness check, misuse."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fieldline_dashboards.build import render
from fieldline_localstack.processes import fieldline_command as fieldline


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        fieldline("dashboards", *args), capture_output=True, text=True, timeout=120
    )


def test_build_writes_every_file_and_check_notices_changes(tmp_path: Path) -> None:
    out = tmp_path / "grafana"
    r = run("build", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.split()) == sorted(str(out / rel) for rel in render())
    assert run("build", "--out", str(out), "--check").returncode == 0
    (out / "dashboards" / "fleet-overview.json").write_text("{}")
    r = run("build", "--out", str(out), "--check")
    assert r.returncode == 1
    assert "stale" in r.stderr
    assert "fleet-overview.json" in r.stderr


def test_list_names_the_dashboards() -> None:
    r = run("list")
    assert r.returncode == 0
    assert "fieldline-fleet" in r.stdout
    assert "Pipeline health" in r.stdout


def test_misuse_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = run("build", "--out", str(blocker))
    assert r.returncode == 2
    assert "cannot write" in r.stderr
    assert "Traceback" not in r.stderr
    r = run("check", "--last", "an hour")
    assert r.returncode == 2
    assert "--last" in r.stderr
    assert run("push").returncode == 2
    r = run("check", "--var", "device")
    assert r.returncode == 2
    assert "NAME=VALUE" in r.stderr
