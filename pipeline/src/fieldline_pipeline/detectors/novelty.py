"""Novelty over a sliding horizon, in three views of the signal: level, spread, repeats.

A reading is anomalous when it takes the series somewhere it has not been
within the recent past (the *horizon*, about ``blocks * block`` readings):

* level: the value lies outside the range of the horizon (a spike, a jump, a
  drift beyond anything recent);
* spread: the short-term variability (an exponentially weighted mean absolute
  deviation around a short EWMA) exceeds its highest value in the horizon
  (noise bursts, oscillation, a sensor going erratic);
* repeats: the value has repeated exactly for more than twice the longest run
  of repeats seen in the horizon, and at least ``stuck_min`` times (a stuck
  sensor; series that idle at one value have long runs in their history and
  are not flagged).

The novelty (how far past the horizon's extreme, relative to the range; 1.0
for a stuck run) maps to a score in [0.5, 1): ``0.5 + 0.5 * nov / (nov + 0.05)``.
Readings that are not novel score in [0, 0.5): ``0.5 * z / (1 + z)`` with z the
distance from the short EWMA in units of the short-term spread, a graded
"how unusual" for dashboards that never reaches the threshold.

After a reading scores at or above ``fire`` (:data:`DEFAULT_THRESHOLD`), the
next ``rest`` readings score 0: one event raises one alert, not a burst
(Numenta's and CAD's detectors for NAB hold back in the same way).

State: a few floats and three rings of ``blocks`` per-block extremes; the
horizon's extremes are recomputed once per block, so each reading costs O(1)
(amortised ``blocks / block`` comparisons).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fieldline_pipeline.detectors.base import Detector, Hit

#: A novelty of 0.5 % of the horizon's range (or the spread's maximum x 20):
#: ``0.5 + 0.5 * nov / (nov + 0.05)`` with nov = 1/180. Chosen as "just past
#: the recent extreme", not fitted to any benchmark.
DEFAULT_THRESHOLD = 0.55


class NoveltyDetector(Detector):
    """Level, spread and stuck-value novelty against a sliding horizon (see module doc)."""

    __slots__ = (
        "alpha", "b_count", "b_hi", "b_lo", "b_run", "b_spread", "block", "blocks", "cont",
        "fire", "hi", "lo", "n", "pos", "prev", "quiet", "rest", "ring_hi", "ring_lo", "ring_run",
        "ring_spread", "run", "run_hi", "smean", "spread", "spread_hi", "spread_weight",
        "stuck_min", "warmup",
    )  # fmt: skip

    name = "novelty"
    default_threshold = DEFAULT_THRESHOLD

    def __init__(
        self,
        block: int = 128,
        blocks: int = 32,
        warmup: int = 150,
        alpha: float = 0.1,
        spread_weight: float = 0.1,
        cont: float = 0.05,
        rest: int = 30,
        fire: float = DEFAULT_THRESHOLD,
        stuck_min: int = 12,
    ) -> None:
        super().__init__()
        if block < 1 or blocks < 1:
            raise ValueError("block and blocks must be >= 1")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.block, self.blocks, self.warmup = block, blocks, warmup
        self.alpha, self.spread_weight, self.cont = alpha, spread_weight, cont
        self.rest, self.fire, self.stuck_min = rest, fire, stuck_min
        self.n = 0
        self.lo = self.hi = 0.0
        self.smean = self.spread = self.spread_hi = 0.0
        self.run = self.run_hi = 0
        self.prev = math.nan
        self.quiet = 0
        self.b_count = 0
        self.b_lo, self.b_hi, self.b_spread, self.b_run = math.inf, -math.inf, 0.0, 0
        self.pos = 0
        self.ring_lo: list[float] = []
        self.ring_hi: list[float] = []
        self.ring_spread: list[float] = []
        self.ring_run: list[int] = []

    def _run(
        self,
        ts: Sequence[int],
        values: Sequence[float],
        threshold: float,
        scores: list[float] | None,
    ) -> list[Hit]:
        hits: list[Hit] = []
        block, blocks, warmup = self.block, self.blocks, self.warmup
        alpha, sw, cont = self.alpha, self.spread_weight, self.cont
        rest, fire, stuck_min = self.rest, self.fire, self.stuck_min
        n, lo, hi = self.n, self.lo, self.hi
        smean, spread, spread_hi = self.smean, self.spread, self.spread_hi
        run, run_hi, prev, quiet = self.run, self.run_hi, self.prev, self.quiet
        b_count, b_lo, b_hi, b_spread, b_run = (
            self.b_count, self.b_lo, self.b_hi, self.b_spread, self.b_run
        )  # fmt: skip
        pos = self.pos
        ring_lo, ring_hi, ring_spread, ring_run = (
            self.ring_lo, self.ring_hi, self.ring_spread, self.ring_run
        )  # fmt: skip
        expected = self.expected
        # A reading that is not novel scores below 0.5: when no score is kept and
        # neither the threshold nor ``fire`` is below 0.5, its graded score cannot
        # change the outcome, and is not computed (most readings, most of the cost).
        graded = scores is not None or threshold < 0.5 or fire < 0.5
        for i, x in enumerate(values):
            if n == 0:
                lo = hi = smean = x
            dev = x - smean
            if dev < 0.0:
                dev = -dev
            new_spread = spread + alpha * (dev - spread)
            # Runs of exactly repeated values; a finished run enters the history.
            if x == prev:
                run += 1
            else:
                if run > b_run:
                    b_run = run
                run = 1
            expected = smean
            score = 0.0
            if n >= warmup:
                nov = 0.0
                if x > hi:
                    nov = (x - hi) / (hi - lo + 1e-12)
                    expected = hi
                elif x < lo:
                    nov = (lo - x) / (hi - lo + 1e-12)
                    expected = lo
                if spread_hi > 0.0 and new_spread > spread_hi:
                    s_nov = sw * (new_spread - spread_hi) / spread_hi
                    if s_nov > nov:
                        nov = s_nov
                # A stuck value fires once, when its run passes the bound.
                if (run == stuck_min or (run > stuck_min and run == 2 * run_hi + 1)) and (
                    run > 2 * run_hi
                ):
                    nov = 1.0
                    expected = smean
                if nov > 0.0:
                    score = 0.5 + 0.5 * nov / (nov + cont)
                elif graded:
                    z = dev / (spread + 1e-12 * (abs(smean) + 1.0))
                    score = 0.5 * z / (1.0 + z)
                if quiet > 0:
                    quiet -= 1
                    score = 0.0
                elif score >= fire:
                    quiet = rest
                if score >= threshold:
                    hits.append((i, score, expected))
            if scores is not None:
                scores.append(score)
            # Learn.
            smean += alpha * (x - smean)
            spread = new_spread
            prev = x
            if n >= 20:  # once the EWMA has settled
                if spread > spread_hi:
                    spread_hi = spread
                if spread > b_spread:
                    b_spread = spread
            if x < lo:
                lo = x
            if x > hi:
                hi = x
            if x < b_lo:
                b_lo = x
            if x > b_hi:
                b_hi = x
            n += 1
            b_count += 1
            if b_count >= block:
                # A block ends: it replaces the oldest in the rings, and the
                # horizon's extremes are those of the blocks kept.
                if len(ring_hi) < blocks:
                    ring_lo.append(b_lo)
                    ring_hi.append(b_hi)
                    ring_spread.append(b_spread)
                    ring_run.append(b_run)
                else:
                    ring_lo[pos], ring_hi[pos] = b_lo, b_hi
                    ring_spread[pos], ring_run[pos] = b_spread, b_run
                    pos = (pos + 1) % blocks
                lo, hi = min(ring_lo), max(ring_hi)
                spread_hi, run_hi = max(ring_spread), max(ring_run)
                b_count, b_lo, b_hi, b_spread, b_run = 0, math.inf, -math.inf, 0.0, 0
        self.n, self.lo, self.hi = n, lo, hi
        self.smean, self.spread, self.spread_hi = smean, spread, spread_hi
        self.run, self.run_hi, self.prev, self.quiet = run, run_hi, prev, quiet
        self.b_count, self.b_lo, self.b_hi, self.b_spread, self.b_run = (
            b_count, b_lo, b_hi, b_spread, b_run
        )  # fmt: skip
        self.pos = pos
        self.expected = expected
        return hits
