"""The cyclic garbage collector, set for a streaming hot path.

Each message allocates a handful of short-lived containers (its columns, its
log row) and almost no reference cycles. With the defaults, a young-generation
pass runs every 700 container allocations and promotes survivors into ever
larger scans of the long-lived state (open windows, detectors), so a pipeline
process spends a tenth of its time proving that nothing is garbage. Measured:
``make bench`` at 100 readings/message, 0.98 M readings/s before, 1.07-1.12 M
after, with the same peak RSS.
"""

from __future__ import annotations

import gc

#: Container allocations between two young-generation passes (default 700).
YOUNG_THRESHOLD = 50_000


def tune_gc() -> None:
    """Move everything built so far out of the collector's sight (start-up is
    done), and run young passes less often; the older generations keep their
    default ratios, and cycles are still collected."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 10, 10)
