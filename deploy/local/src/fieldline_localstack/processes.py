"""Running Fieldline's own services as processes, the way a deployment would."""

from __future__ import annotations

import sys


def fieldline_command(*args: str) -> list[str]:
    """Command line for ``fieldline ARGS`` with the current interpreter.

    ``python -m fieldline_edge`` is the ``fieldline`` command without relying on
    the console script being on PATH.
    """
    return [sys.executable, "-m", "fieldline_edge", *args]
