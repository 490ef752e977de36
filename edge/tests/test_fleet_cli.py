"""Misusing flash / deploy / rollback / credentials: usage or one clear line, exit 2."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from fieldline_edge.edge_cli import edge_main

REPO = Path(__file__).resolve().parents[2]


def test_flash_without_arguments_prints_usage_through_the_fieldline_command() -> None:
    proc = subprocess.run(
        ["uv", "run", "fieldline", "edge", "flash"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "usage: fieldline edge flash" in proc.stderr
    assert "--image" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "psk").write_text("a-long-enough-psk\n")
    (tmp_path / "img").write_bytes(b"\0" * 1024)
    (tmp_path / "bad.toml").write_text('[[devices]]\nhost = "h"\nhots = "typo"\n')
    return {"{psk}": str(tmp_path / "psk"), "{img}": str(tmp_path / "img"),
            "{bad}": str(tmp_path / "bad.toml")}  # fmt: skip


FLASH = ["flash", "--image", "{img}", "--device-id", "d", "--site", "s"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["deploy"], "one of the arguments --host --inventory is required"),
        (["deploy", "--host", "h", "--inventory", "{bad}"], "not allowed with argument"),
        (
            ["deploy", "--host", "h", "--device-id", "d"],
            "--device-id, --site and --broker go together",
        ),
        (["deploy", "--host", "h", "--port", "0"], "0 is not a port number"),
        (["deploy", "--host", "h", "--root", "rel"], "--root must be an absolute path"),
        (["deploy", "--inventory", "{bad}"], "devices[1]: unknown key(s) hots"),
        (["deploy", "--inventory", "{bad}", "--site", "s"], "described in the inventory"),
        (["rollback", "--host", "h", "--parallel", "x"], "'x' is not an integer"),
        (["flash", "--device-id", "d"], "the following arguments are required: --image"),
        ([*FLASH, "--broker", "http://b"], "must start with mqtt:// or mqtts://"),
        ([*FLASH, "--broker", "mqtt://u:pw@b"], "must not contain a user or password"),
        ([*FLASH, "--broker", "mqtt://b", "--wifi-ssid", "x"], "Wi-Fi needs --wifi-ssid"),
        (
            [
                *FLASH,
                "--broker",
                "mqtt://b",
                "--wifi-ssid",
                "x",
                "--wifi-psk-file",
                "{psk}",
                "--wifi-country",
                "uk",
            ],
            "two-letter country code",
        ),
        ([*FLASH, "--broker", "mqtt://b", "--wifi-psk-file", "/nonexistent"], "no such file"),
        ([*FLASH, "--broker", "mqtt://b", "--hostname", "Bad_Host"], "not a valid host name"),
        (
            [
                "flash",
                "--image",
                "{img}",
                "--device-id",
                "a/b",
                "--site",
                "s",
                "--broker",
                "mqtt://b",
            ],
            "device 'a/b' is not a valid id",
        ),
        (["credentials", "--device-id", "d"], "the following arguments are required: --site"),
    ],
)
def test_misuse_gives_one_clear_line_and_exit_2(
    args: list[str], message: str, files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [files.get(a, a) for a in args]
    assert edge_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert "a-long-enough-psk" not in err


def test_a_psk_is_not_taken_from_the_command_line(
    files: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Not even as an abbreviation of --wifi-psk-file.
    argv = [files.get(a, a) for a in FLASH] + ["--broker", "mqtt://b", "--wifi-psk", "x"]
    assert edge_main(argv) == 2
    assert "unrecognized arguments: --wifi-psk" in capsys.readouterr().err
