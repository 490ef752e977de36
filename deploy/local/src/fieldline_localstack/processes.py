"""Running Fieldline's own services as processes, the way a deployment would."""

from __future__ import annotations

import signal
import subprocess
import sys


def fieldline_command(*args: str) -> list[str]:
    """Command line for ``fieldline ARGS`` with the current interpreter.

    ``python -m fieldline_edge`` is the ``fieldline`` command without relying on
    the console script being on PATH.
    """
    return [sys.executable, "-m", "fieldline_edge", *args]


def terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """SIGTERM (a Fieldline service then drains and stops cleanly) and wait.

    Returns the exit code, or None if the process had to be killed after
    ``timeout_s``.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None
