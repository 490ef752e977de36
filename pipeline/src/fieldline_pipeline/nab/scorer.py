"""NAB's scoring rules (v1.1), written from its documentation (see docs/detection.md).

Each row past the probationary period gets a weight: inside an anomaly window,
the scaled sigmoid of its relative position (earliest is best); outside, a false
positive's cost, close to nothing right after a window and the full ``A_FP``
far from one. At a threshold θ a window scores its best detected row, or
``-A_FN`` if none; each false positive counts.

The corpus score as a function of θ is a step function that changes only at
the scores of rows, so one sorted pass over "events" (score, change of S)
gives the score at every threshold: a false positive adds its weight once it
fires; in a window, rows taken by falling score raise the window's best weight
from ``-A_FN`` step by step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from fieldline_pipeline.nab.loader import Profile

#: Rows at the start of a file that are neither hits nor false alarms.
PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750


def probation_length(rows: int) -> int:
    return min(math.floor(PROBATION_FRACTION * rows), PROBATION_MAX_ROWS)


def scaled_sigmoid(y: float) -> float:
    """``2 / (1 + e^(5y)) - 1``, and -1 from y = 3 on (NAB)."""
    if y >= 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


_MAX_TP = scaled_sigmoid(-1.0)


def row_weights(rows: int, windows: Sequence[tuple[int, int]], profile: Profile) -> list[float]:
    """The score each row earns if it is a detection (before probation is applied).

    Rows in a window: ``A_TP * σ(-(R - i + 1) / w) / σ(-1)`` (> 0); others:
    ``A_FP * σ(y)`` with y the distance past the preceding window relative to its
    width, or ``-A_FP`` before the first window.
    """
    weights = [-profile.fp] * rows
    prev_right: int | None = None
    prev_width = 0
    wins = sorted(windows)
    k = 0
    i = 0
    while i < rows:
        if k < len(wins) and i == wins[k][0]:
            left, right = wins[k]
            width = right - left + 1
            for j in range(left, min(right, rows - 1) + 1):
                weights[j] = profile.tp * scaled_sigmoid(-(right - j + 1) / width) / _MAX_TP
            prev_right, prev_width = right, width
            k += 1
            i = right + 1
            continue
        if prev_right is not None:
            y = (i - prev_right) / (prev_width - 1) if prev_width > 1 else math.inf
            weights[i] = profile.fp * scaled_sigmoid(y)
        i += 1
    return weights


@dataclass(frozen=True)
class FileEvents:
    """A file's contribution to the corpus score as (score, change of S) pairs."""

    windows: int
    events: list[tuple[float, float]]


def file_events(
    scores: Sequence[float], windows: Sequence[tuple[int, int]], profile: Profile
) -> FileEvents:
    """Events of one file: lowering θ to ``score`` changes S by ``delta``."""
    n = len(scores)
    start = probation_length(n)
    weights = row_weights(n, windows, profile)
    in_window = [False] * n
    events: list[tuple[float, float]] = []
    for left, right in windows:
        rows = [(scores[j], weights[j]) for j in range(max(left, start), right + 1)]
        for j in range(left, right + 1):
            in_window[j] = True
        # Falling score: each row that beats the best weight so far raises it.
        rows.sort(key=lambda r: -r[0])
        best = -profile.fn
        for score, weight in rows:
            if weight > best:
                events.append((score, weight - best))
                best = weight
    for j in range(start, n):
        if not in_window[j]:
            events.append((scores[j], weights[j]))
    return FileEvents(len(windows), events)


@dataclass(frozen=True)
class Sweep:
    """Corpus score of one profile at its best threshold, and the whole curve."""

    profile: Profile
    windows: int
    threshold: float  # math.inf when firing nowhere is best
    raw: float
    normalized: float
    #: (θ, S(θ)) for every distinct score, highest θ first.
    curve: list[tuple[float, float]]

    def raw_at(self, threshold: float) -> float:
        """S at any θ: the value of the lowest curve threshold still >= θ."""
        s = self.null
        for t, value in self.curve:
            if t < threshold:
                break
            s = value
        return s

    def normalized_at(self, threshold: float) -> float:
        return normalize(self.raw_at(threshold), self.profile, self.windows)

    @property
    def null(self) -> float:
        return -self.profile.fn * self.windows


def normalize(raw: float, profile: Profile, windows: int) -> float:
    """``100 * (S - S_null) / (S_perfect - S_null)``: 0 = never fires, 100 = perfect."""
    null = -profile.fn * windows
    perfect = profile.tp * windows
    return 100.0 * (raw - null) / (perfect - null)


def sweep(files: Sequence[FileEvents], profile: Profile) -> Sweep:
    """The best global θ (ties go to the higher θ) and S at every θ."""
    windows = sum(f.windows for f in files)
    events = sorted((e for f in files for e in f.events), key=lambda e: -e[0])
    null = -profile.fn * windows
    best_t, best_s = math.inf, null
    curve: list[tuple[float, float]] = []
    gain = 0.0
    i, n = 0, len(events)
    while i < n:
        t = events[i][0]
        while i < n and events[i][0] == t:
            gain += events[i][1]
            i += 1
        s = null + gain
        curve.append((t, s))
        if s > best_s:
            best_t, best_s = t, s
    return Sweep(profile, windows, best_t, best_s, normalize(best_s, profile, windows), curve)
