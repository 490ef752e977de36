"""The agent's systemd unit: valid for systemd, hardened, and wired to sd_notify."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "fieldline-edge.service"


def directives() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_unit_is_hardened_and_notifies() -> None:
    d = directives()
    assert d["Type"] == ["notify"]
    assert d["WatchdogSec"] == ["60"]
    assert d["User"] == ["fieldline"]
    assert d["ProtectSystem"] == ["strict"]
    assert d["NoNewPrivileges"] == ["yes"]
    assert d["ReadWritePaths"] == ["/var/lib/fieldline"]
    assert d["CapabilityBoundingSet"] == [""]
    assert d["ExecStart"] == ["/usr/local/bin/fieldline edge run --config /etc/fieldline/edge.toml"]


def test_systemd_analyze_verify_accepts_it(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (Debian package systemd) is needed"
    # verify checks that ExecStart's program exists: point it at this interpreter.
    text = UNIT.read_text().replace(
        "/usr/local/bin/fieldline edge run --config /etc/fieldline/edge.toml",
        f"{Path(sys.executable).resolve()} -m fieldline_edge.edge_cli --help",
    )
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    res = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=120
    )
    problems = [line for line in (res.stdout + res.stderr).splitlines() if UNIT.name in line]
    assert res.returncode == 0, res.stderr
    assert problems == []
