"""A one-line progress bar with live rates on stderr, redrawn in place.

Shown only when the stream is a terminal and not ``quiet``: logs and pipes get
nothing but the final report. Cut to the terminal's width.
"""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

BAR_WIDTH = 24


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, quiet: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = not quiet and self.stream.isatty()
        self._width = 0

    def show(self, fraction: float | None, text: str) -> None:
        if not self.enabled:
            return
        if fraction is None:
            line = text
        else:
            f = min(max(fraction, 0.0), 1.0)
            filled = int(f * BAR_WIDTH)
            line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {f * 100:5.1f}%  {text}"
        # A line wider than the terminal wraps, and "\r" then redraws only its end.
        line = line[: max(shutil.get_terminal_size((120, 24)).columns - 1, 20)]
        pad = max(self._width - len(line), 0)
        self._width = len(line)
        self.stream.write("\r" + line + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def count(n: float) -> str:
    """``12345.6`` -> ``12,346``."""
    return f"{n:,.0f}"
