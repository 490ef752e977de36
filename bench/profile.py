"""Where the pipeline's time goes: py-spy's raw (collapsed) stacks summarised.

``py-spy record --format raw`` writes one line per distinct stack,
``frame;frame;...;frame COUNT``, root first. Self time is the leaf's; total
time counts each function once per stack it appears in. Samples of idle threads
are not recorded, so percentages are of the time some thread was busy; time in
Bytewax's native (Rust) runtime shows as self time of the Python frame that
called into it (``runner.py:run_pipeline`` for ``cli_main``).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

_LOCATION = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
#: Frames every stack goes through (thread start-up, the command line): left out
#: of the "total" list, where they would only push the informative ones down.
_PLUMBING = ("threading.py:", "<frozen runpy>:", "core.py:", "main.py:", "__main__.py:", "cli.py:")


def _name(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``module.py:func``, without line numbers."""
    m = _LOCATION.match(frame.strip())
    if not m:
        return frame.strip()
    return f"{Path(m['file']).name}:{m['func']}"


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    total_time: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        if frames and frames[0].startswith(("process ", "thread ")):
            # --threads/--subprocesses put the thread (and process) first.
            while frames and frames[0].startswith(("process ", "thread ")):
                head = frames.pop(0)
            threads[head] += count
        if not frames:
            continue
        names = [_name(f) for f in frames]
        self_time[names[-1]] += count
        for n in set(names):
            if not n.startswith(_PLUMBING):
                total_time[n] += count

    def pct(c: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": k, "percent": round(100.0 * v / max(samples, 1), 1)}
            for k, v in c.most_common(top)
        ]

    return {
        "samples": samples,
        "self": pct(self_time),
        "total": pct(total_time),
        "threads": pct(threads),
    }
