"""The progress line, and the file-descriptor bound of one connection per device."""

from __future__ import annotations

import io
import resource
import subprocess
from pathlib import Path

from fieldline_localstack.processes import fieldline_command
from fieldline_sim.progress import ProgressLine


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_in_place_on_a_terminal_only() -> None:
    tty = Terminal()
    line = ProgressLine(tty)
    line.show(0.5, "5,000 readings/s")
    line.show(1.0, "done")
    line.close()
    text = tty.getvalue()
    assert text.startswith("\r[" + "#" * 12 + "." * 12 + "]  50.0%  5,000 readings/s")
    assert "\r[" + "#" * 24 + "] 100.0%  done" in text
    # The shorter second line blanks what is left of the first.
    second = text.split("\r")[2]
    assert len(second.rstrip("\n")) == len(text.split("\r")[1])
    assert text.endswith("\n")

    for stream, quiet in ((io.StringIO(), False), (Terminal(), True)):
        silent = ProgressLine(stream, quiet=quiet)
        silent.show(0.5, "x")
        silent.close()
        assert stream.getvalue() == ""


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))


def test_connection_per_device_beyond_the_fd_limit_says_so(tmp_path: Path) -> None:
    scenario = tmp_path / "many.toml"
    scenario.write_text('[[devices]]\nprefix = "m"\ncount = 500\n')
    proc = subprocess.run(
        fieldline_command(
            "sim",
            "fleet",
            str(scenario),
            "--connection-per-device",
            "--broker",
            "mqtt://127.0.0.1:1",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        preexec_fn=_low_fd_limit,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "fieldline sim: error: 500 connections need about 564 file descriptors, but this "
        "process may open at most 200 (ulimit -n): raise the limit, or share connections "
        "with --connections N"
    )
