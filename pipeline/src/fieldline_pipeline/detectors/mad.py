"""Robust z-score: distance from a streaming median, in streaming MADs.

Median and median absolute deviation are tracked in O(1) by stochastic
quantile steps (each reading nudges the estimate towards itself by a step
proportional to the current spread), so an outlier moves them by one step,
not by its size: a spike does not hide the next one, as it does with
:mod:`.ewma`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fieldline_pipeline.detectors.base import Detector, Hit

#: MAD * 1.4826 estimates the standard deviation of normal data.
MAD_TO_STD = 1.4826


class MadDetector(Detector):
    """Score = z / (1 + z), z = |x - median| / (1.4826 * MAD), both streaming estimates."""

    __slots__ = ("mad", "meandev", "median", "n", "rate", "warmup")

    name = "mad"
    #: z >= 6.
    default_threshold = 6.0 / 7.0

    def __init__(self, rate: float = 0.02, warmup: int = 100) -> None:
        super().__init__()
        if not 0.0 < rate < 0.5:
            raise ValueError(f"rate must be in (0, 0.5), got {rate}")
        self.rate = rate
        self.warmup = warmup
        self.n = 0
        self.median = 0.0
        self.mad = 0.0
        self.meandev = 0.0

    def _run(
        self,
        ts: Sequence[int],
        values: Sequence[float],
        threshold: float,
        scores: list[float] | None,
    ) -> list[Hit]:
        hits: list[Hit] = []
        rate, warmup = self.rate, self.warmup
        n, med, mad, meandev = self.n, self.median, self.mad, self.meandev
        up, down = 1.0 + rate, 1.0 / (1.0 + rate)
        for i, x in enumerate(values):
            if n == 0:
                med = x
                mad = 1e-3 * abs(x) + 1e-9
            dev = x - med
            adev = abs(dev)
            score = 0.0
            if n >= warmup:
                # A series that sits on one value more than half of the time has a
                # MAD of 0; its mean deviation still says how far it usually strays.
                scale = MAD_TO_STD * mad
                if scale < meandev:
                    scale = meandev
                z = adev / (scale + 1e-9 * (abs(med) + 1.0))
                score = z / (1.0 + z)
                if score >= threshold:
                    hits.append((i, score, med))
            if scores is not None:
                scores.append(score)
            # Quantile steps: the median moves by a fraction of the spread, the
            # MAD multiplicatively, so each settles where half the data is on either side.
            if dev > 0.0:
                med += rate * mad
            elif dev < 0.0:
                med -= rate * mad
            mad = mad * up if adev > mad else mad * down
            meandev += rate * (adev - meandev)
            n += 1
        self.expected = med if n else math.nan
        self.n, self.median, self.mad, self.meandev = n, med, mad, meandev
        return hits
