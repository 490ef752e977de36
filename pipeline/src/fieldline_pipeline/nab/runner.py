"""Run a detector over the NAB corpus as streams and score it.

Each file is one fresh detector of the pipeline's registry fed row by row
(timestamps as Unix ms), with the same code the dataflow runs per reading
(:meth:`Detector.update_block` and :meth:`Detector.detect_block` share one
loop). Files are independent, so they are spread over processes.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldline_pipeline.detectors import create, detector_class
from fieldline_pipeline.nab.loader import DataFile, load_file, load_profiles, load_windows
from fieldline_pipeline.nab.scorer import FileEvents, Sweep, file_events, sweep

#: How many rows go to the detector at once: the pipeline's block path.
BLOCK = 100


def detect_file(df: DataFile, detector: str) -> list[float]:
    """The detector's score for every row of ``df``, fed in blocks of :data:`BLOCK`."""
    det = create(detector)
    scores: list[float] = []
    for start in range(0, len(df.values), BLOCK):
        scores.extend(
            det.update_block(df.ts_ms[start : start + BLOCK], df.values[start : start + BLOCK])
        )
    return scores


def write_results(df: DataFile, scores: Sequence[float], detector: str, out_dir: Path) -> Path:
    """NAB's results layout: ``OUT/<category>/<detector>_<file>.csv``."""
    path = out_dir / df.category / f"{detector}_{df.name}"
    path.parent.mkdir(parents=True, exist_ok=True)
    label = [0] * len(scores)
    for left, right in df.windows:
        for j in range(left, right + 1):
            label[j] = 1
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["timestamp", "value", "anomaly_score", "label"])
        for row in zip(df.timestamps, df.values, scores, label):
            w.writerow(row)
    return path


@dataclass(frozen=True)
class _Job:
    nab_dir: Path
    key: str
    windows: list[tuple[str, str]]
    detector: str
    results_dir: Path | None


@dataclass(frozen=True)
class FileResult:
    key: str
    rows: int
    windows: list[tuple[int, int]]
    scores: list[float]


def _run_job(job: _Job) -> FileResult:
    df = load_file(job.nab_dir, job.key, job.windows)
    scores = detect_file(df, job.detector)
    if job.results_dir is not None:
        write_results(df, scores, job.detector, job.results_dir)
    return FileResult(job.key, len(scores), df.windows, scores)


def run_corpus(
    nab_dir: Path,
    detector: str,
    results_dir: Path | None = None,
    jobs: int = 2,
    progress: Callable[[int, int, FileResult], None] | None = None,
) -> list[FileResult]:
    """Scores of every labelled file, in the label file's (sorted) order."""
    detector_class(detector)  # an unknown name fails here, not in a worker
    windows = load_windows(nab_dir)
    todo = [_Job(nab_dir, key, windows[key], detector, results_dir) for key in sorted(windows)]
    results: dict[str, FileResult] = {}
    if jobs <= 1:
        done = map(_run_job, todo)
        for i, r in enumerate(done, start=1):
            results[r.key] = r
            if progress:
                progress(i, len(todo), r)
    else:
        # spawn: a forked copy of a threaded parent can deadlock.
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for i, r in enumerate(pool.imap_unordered(_run_job, todo), start=1):
                results[r.key] = r
                if progress:
                    progress(i, len(todo), r)
    return [results[j.key] for j in todo]


def score_results(nab_dir: Path, results: Sequence[FileResult]) -> dict[str, Sweep]:
    """Profile name -> the sweep over the corpus."""
    out: dict[str, Sweep] = {}
    for profile in load_profiles(nab_dir):
        events: list[FileEvents] = [file_events(r.scores, r.windows, profile) for r in results]
        out[profile.name] = sweep(events, profile)
    return out


def _json_number(x: float) -> float | None:
    return None if math.isinf(x) else x


def summary(detector: str, sweeps: dict[str, Sweep], shipped_threshold: float) -> dict[str, Any]:
    """The object ``fieldline nab score`` prints."""
    standard = sweeps["standard"]
    return {
        "detector": detector,
        "standard": round(standard.normalized, 2),
        "reward_low_FP_rate": round(sweeps["reward_low_FP_rate"].normalized, 2),
        "reward_low_FN_rate": round(sweeps["reward_low_FN_rate"].normalized, 2),
        # The standard profile's best threshold; null if firing nowhere is best.
        "threshold": _json_number(standard.threshold),
        "thresholds": {k: _json_number(s.threshold) for k, s in sweeps.items()},
        "shipped_threshold": shipped_threshold,
        "shipped_threshold_standard": round(standard.normalized_at(shipped_threshold), 2),
        "shipped_threshold_scores": {
            k: round(s.normalized_at(shipped_threshold), 2) for k, s in sweeps.items()
        },
    }


def score_corpus(
    nab_dir: Path,
    detector: str,
    results_dir: Path | None = None,
    jobs: int = 2,
    verbose: bool = True,
) -> dict[str, Any]:
    began = time.monotonic()

    def progress(i: int, total: int, r: FileResult) -> None:
        if verbose:
            print(f"[{i:>2}/{total}] {r.key} ({r.rows} rows)", file=sys.stderr, flush=True)

    results = run_corpus(nab_dir, detector, results_dir, jobs, progress)
    sweeps = score_results(nab_dir, results)
    out = summary(detector, sweeps, detector_class(detector).default_threshold)
    out["files"] = len(results)
    out["rows"] = sum(r.rows for r in results)
    out["seconds"] = round(time.monotonic() - began, 1)
    return out
