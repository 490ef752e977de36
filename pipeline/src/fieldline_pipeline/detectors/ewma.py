"""EWMA z-score: distance from an exponentially weighted mean, in weighted stddevs.

The textbook baseline: cheap and quick to adapt, but one spike inflates the
variance for a while and hides the next (see :mod:`.mad` for the robust one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fieldline_pipeline.detectors.base import Detector, Hit


class EwmaDetector(Detector):
    """Score = z / (1 + z), z = |x - mean| / std of the exponentially weighted moments."""

    __slots__ = ("alpha", "mean", "n", "var", "warmup")

    name = "ewma"
    #: z >= 6.
    default_threshold = 6.0 / 7.0

    def __init__(self, alpha: float = 0.01, warmup: int = 100) -> None:
        super().__init__()
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        self.alpha = alpha
        self.warmup = warmup
        self.n = 0
        self.mean = 0.0
        self.var = 0.0

    def _run(
        self,
        ts: Sequence[int],
        values: Sequence[float],
        threshold: float,
        scores: list[float] | None,
    ) -> list[Hit]:
        hits: list[Hit] = []
        alpha, warmup = self.alpha, self.warmup
        n, mean, var = self.n, self.mean, self.var
        sqrt = math.sqrt
        for i, x in enumerate(values):
            if n == 0:
                mean = x
            diff = x - mean
            score = 0.0
            if n >= warmup:
                # The floor keeps a series that never moved from scoring infinity.
                z = abs(diff) / (sqrt(var) + 1e-9 * (abs(mean) + 1.0))
                score = z / (1.0 + z)
                if score >= threshold:
                    hits.append((i, score, mean))
            if scores is not None:
                scores.append(score)
            incr = alpha * diff
            mean += incr
            var = (1.0 - alpha) * (var + diff * incr)
            n += 1
        self.expected = mean if n else math.nan
        self.n, self.mean, self.var = n, mean, var
        return hits
