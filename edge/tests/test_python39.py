"""fieldline-edge runs on the Python 3.9 of older Raspberry Pi OS releases, with
paho-mqtt as its only third-party dependency."""

from __future__ import annotations

import ast
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fieldline_edge

SRC = Path(fieldline_edge.__file__).parent
EDGE_PROJECT = SRC.parents[1]
#: Optional imports, each used only when present and with a fallback.
OPTIONAL = {("contract.py", "orjson"), ("cli.py", "typer"), ("toml.py", "tomli")}


def _is_python39(exe: str) -> bool:
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(sys.version_info[:2] == (3, 9))"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except OSError:
        return False
    return out.stdout.strip() == "True"


def find_python39(uv: str) -> str:
    """A Python 3.9 interpreter: on PATH, from pyenv, or one uv finds or installs."""
    candidates = [shutil.which("python3.9") or ""]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for exe in candidates:
        if exe and _is_python39(exe):
            return exe
    for cmd in ([uv, "python", "find", "3.9"], [uv, "python", "install", "3.9"]):
        subprocess.run(cmd, capture_output=True, timeout=600)
        found = subprocess.run([uv, "python", "find", "3.9"], capture_output=True, text=True)
        exe = found.stdout.strip()
        if found.returncode == 0 and _is_python39(exe):
            return exe
    raise AssertionError("no Python 3.9 found or installable (tried PATH, pyenv and uv)")


def test_edge_sources_parse_as_python_3_9() -> None:
    for path in sorted(SRC.rglob("*.py")):
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


def test_edge_installs_imports_and_round_trips_on_python_3_9(tmp_path: Path) -> None:
    uv = shutil.which("uv") or str(Path(sys.prefix).parents[0] / ".tools" / "bin" / "uv")
    assert Path(uv).exists() or shutil.which(uv), "uv is needed to build the 3.9 environment"
    python39 = find_python39(uv)
    venv = tmp_path / "py39"
    subprocess.run([uv, "venv", "--quiet", "--python", python39, str(venv)], check=True)
    py = str(venv / "bin" / "python")
    res = subprocess.run(
        [uv, "pip", "install", "--quiet", "--python", py, str(EDGE_PROJECT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    script = (
        "import fieldline_edge.agent, fieldline_edge.sensors, fieldline_edge.mqtt\n"
        "from fieldline_edge import contract as c\n"
        "r = [c.Reading('t', 1700000000000, 1.5, 'C')]\n"
        "t = c.decode_telemetry(c.telemetry_topic('s', 'd'), c.encode_telemetry('d', 1, r))\n"
        "assert t.readings == r, t\n"
        "import importlib.util as u; assert u.find_spec('orjson') is None\n"
        # No tomllib before 3.11 and no tomli here: the agent's own TOML parser.
        "assert u.find_spec('tomllib') is None and u.find_spec('tomli') is None\n"
        "from fieldline_edge import config, spool, drivers, toml\n"
        "cfg = config.parse_config(toml.loads(open(%r).read()),"
        " {'FIELDLINE_MQTT_PASSWORD': 'x'}, '/')\n"
        "assert [s.driver for s in cfg.sensors][:2] == ['cpu_temperature', 'system'], cfg\n"
        "sp = spool.Spool(':memory:', 'd'); sp.append(r, 1764253800000)\n"
        # Version 2 through the standard library's json (no orjson here).
        "sp.append(r, 1764253800001, c.SCHEMA_TELEMETRY_V2)\n"
        "v1, v2 = (c.decode_telemetry(c.telemetry_topic('s', 'd'), m.payload)"
        " for m in sp.peek(-1, 2))\n"
        "assert (v1.schema, v2.schema) == (c.SCHEMA_TELEMETRY_V1, c.SCHEMA_TELEMETRY_V2)\n"
        "assert v1.readings == v2.readings == r; sp.close()\n"
        "import sys; print(sys.version_info[:2])\n"
    )
    example = EDGE_PROJECT.parent / "deploy" / "edge" / "fieldline-edge.example.toml"
    text = example.read_text().replace('ca_file = "/etc/fieldline/ca.crt"', "")
    conf = tmp_path / "edge.toml"
    conf.write_text(text.replace("mqtts://broker.example.org:8883", "mqtt://h"))
    res = subprocess.run([py, "-c", script % str(conf)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(3, 9)"
    # Without typer, `fieldline edge` still works (argparse).
    res = subprocess.run(
        [str(venv / "bin" / "fieldline"), "edge", "run", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()


def test_edge_imports_nothing_beyond_paho_and_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"paho", "fieldline_edge"}
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or (path.name, top) in OPTIONAL, f"{path.name} imports {name}"
