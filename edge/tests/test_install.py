"""The on-device installer: releases, the current/previous switch, rollback, pruning."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from fieldline_edge import bundle, install

SYSTEM_PYTHON = "/usr/bin/python3"  # has no paho-mqtt: the bundled one must be used


@pytest.fixture
def unit() -> Path:
    """The unit the repository ships (deploy/systemd), which flash and deploy install."""
    return bundle.find_unit()


def make_bundle(dest: Path, unit: Path, version: str | None = None, **etc: bytes) -> bundle.Bundle:
    wheels = []
    if version is not None:
        wheels.append(
            bundle.wheel_from_installed("fieldline-edge", dest.parent / "w", version=version)
        )
    return bundle.stage(
        dest, wheels=wheels, unit=unit, etc={k.replace("_", "."): v for k, v in etc.items()}
    )


def run_installer(bundle_dir: Path, root: Path, action: str = "install") -> dict[str, object]:
    """Run install.py as the device does: the bundle's copy, on a Python without Fieldline."""
    res = subprocess.run(
        [SYSTEM_PYTHON, "-I", str(bundle_dir / "install.py"), action, "--bundle", str(bundle_dir),
         "--root", str(root)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    result: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    assert (res.returncode == 0) == result["ok"], res.stderr
    return result


def current(root: Path) -> str:
    return os.readlink(root / "opt/fieldline/current")


def test_install_lays_out_a_release_that_runs_on_the_system_python(
    tmp_path: Path, unit: Path
) -> None:
    b = make_bundle(tmp_path / "b1", unit, edge_toml=b"[device]\n", mqtt_password=b"s3cret\n")
    root = tmp_path / "root"
    result = run_installer(b.path, root)
    assert result["release"] == b.release
    assert result["changed"] is True
    assert result["previous"] is None
    assert str(result["restart"]).startswith("skipped: installed under")
    assert current(root) == f"releases/{b.release}"
    assert (root / "etc/fieldline/edge.toml").read_bytes() == b"[device]\n"
    password = root / "etc/fieldline/mqtt.password"
    assert password.read_bytes() == b"s3cret\n"
    assert password.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/systemd/system/fieldline-edge.service").read_text() == unit.read_text()
    # The command works through /usr/local/bin and the current link, with the bundled paho.
    res = subprocess.run(
        [SYSTEM_PYTHON, str(root / "usr/local/bin/fieldline"), "edge", "run", "--help"],
        capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"}, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import paho.mqtt, fieldline_edge;"
        "print(paho.mqtt.__file__); print(fieldline_edge.__file__)"
    )
    lib = root / "opt/fieldline/current/lib"
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", probe, str(lib)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert all(Path(p).resolve().is_relative_to(lib.resolve()) for p in out), out


def test_upgrade_moves_current_keeps_previous_and_rollback_goes_back(
    tmp_path: Path, unit: Path
) -> None:
    root = tmp_path / "root"
    v1 = make_bundle(tmp_path / "b1", unit)
    v2 = make_bundle(tmp_path / "b2", unit, version="0.2.0")
    assert v2.release.startswith("0.2.0-")
    assert v1.release != v2.release
    run_installer(v1.path, root)
    up = run_installer(v2.path, root)
    assert (up["release"], up["previous"]) == (v2.release, v1.release)
    assert current(root) == f"releases/{v2.release}"
    assert os.readlink(root / "opt/fieldline/previous") == f"releases/{v1.release}"
    meta = (root / "opt/fieldline/current/lib/fieldline_edge-0.2.0.dist-info/METADATA").read_text()
    assert "Version: 0.2.0" in meta

    back = run_installer(v2.path, root, "rollback")
    assert (back["release"], back["previous"]) == (v1.release, v2.release)
    assert current(root) == f"releases/{v1.release}"
    # And forward again: rollback swaps, it does not forget.
    forward = run_installer(v2.path, root, "rollback")
    assert forward["release"] == v2.release


def test_same_bundle_twice_is_a_no_op_and_a_third_release_prunes_the_oldest(
    tmp_path: Path, unit: Path
) -> None:
    root = tmp_path / "root"
    v1 = make_bundle(tmp_path / "b1", unit)
    again = make_bundle(tmp_path / "b1again", unit)
    assert again.release == v1.release  # rebuilt wheels are reproducible
    run_installer(v1.path, root)
    second = run_installer(again.path, root)
    assert second["changed"] is False
    assert second["previous"] is None
    v2 = make_bundle(tmp_path / "b2", unit, version="0.2.0")
    v3 = make_bundle(tmp_path / "b3", unit, version="0.3.0")
    run_installer(v2.path, root)
    third = run_installer(v3.path, root)
    assert third["pruned"] == [v1.release]
    releases = sorted(p.name for p in (root / "opt/fieldline/releases").iterdir())
    assert releases == sorted([v2.release, v3.release])


def test_a_damaged_wheel_changes_nothing(tmp_path: Path, unit: Path) -> None:
    root = tmp_path / "root"
    v1 = make_bundle(tmp_path / "b1", unit)
    run_installer(v1.path, root)
    v2 = make_bundle(tmp_path / "b2", unit, version="0.2.0")
    wheel = next((v2.path / "wheels").glob("fieldline_edge-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-100])  # a copy cut short
    result = run_installer(v2.path, root)
    assert result["ok"] is False
    assert "damaged" in str(result["error"])
    assert current(root) == f"releases/{v1.release}"


def test_rollback_without_a_previous_release_fails_clearly(tmp_path: Path, unit: Path) -> None:
    root = tmp_path / "root"
    v1 = make_bundle(tmp_path / "b1", unit)
    run_installer(v1.path, root)
    result = run_installer(v1.path, root, "rollback")
    assert result["ok"] is False
    assert result["error"] == "no previous release to roll back to"
    assert current(root) == f"releases/{v1.release}"


def test_the_shipped_unit_runs_what_the_installer_lays_out(unit: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    assert unit.resolve() == (repo / "deploy/systemd/fieldline-edge.service").resolve()
    text = unit.read_text()
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv[0] == "/" + install.BIN_LINK
    assert argv[argv.index("--config") + 1] == "/etc/fieldline/edge.toml"
    assert install._unit_user(text) == "fieldline"  # the user the installer creates
