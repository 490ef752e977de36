"""NAB scoring: the identities on the real corpus, and a small case checked by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fieldline_pipeline.nab.loader import Profile, load_corpus, load_profiles
from fieldline_pipeline.nab.scorer import (
    file_events,
    probation_length,
    row_weights,
    scaled_sigmoid,
    sweep,
)

REPO = Path(__file__).resolve().parents[2]


def nab_dir() -> Path:
    """The NAB copy in the repository (third_party/nab), or FIELDLINE_NAB_DIR."""
    path = Path(os.environ.get("FIELDLINE_NAB_DIR") or REPO / "third_party" / "nab")
    assert (path / "labels" / "combined_windows.json").is_file(), f"no NAB data at {path}"
    return path


STANDARD = Profile("standard", 1.0, 1.0, 0.11)


def test_null_detector_scores_0_and_perfect_detector_100_in_every_profile() -> None:
    corpus = load_corpus(nab_dir())
    assert len(corpus) == 58
    assert sum(len(f.windows) for f in corpus) == 116
    null = [[0.0] * len(f.values) for f in corpus]
    perfect = []
    for f in corpus:
        s = [0.0] * len(f.values)
        for left, _right in f.windows:
            s[left] = 1.0
        perfect.append(s)
    for profile in load_profiles(nab_dir()):
        n = sweep([file_events(s, f.windows, profile) for s, f in zip(null, corpus)], profile)
        p = sweep([file_events(s, f.windows, profile) for s, f in zip(perfect, corpus)], profile)
        assert n.normalized == 0.0, profile.name
        assert p.normalized == 100.0, profile.name
        assert p.threshold == 1.0


def test_sigmoid_and_weights_by_hand() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)  # NAB's max TP
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == -1.0
    assert probation_length(20) == 3
    assert probation_length(100_000) == 750
    w = row_weights(20, [(8, 11)], STANDARD)
    assert w[5] == -0.11  # before any window: the full cost
    assert w[8] == pytest.approx(1.0)  # the window's first row: A_TP
    assert w[9] == pytest.approx(0.954045 / 0.986614, abs=1e-5)  # y = -3/4
    assert w[11] == pytest.approx(0.0, abs=1e-12) or w[11] > 0  # y = -1/4, near the right edge
    assert w[14] == pytest.approx(0.11 * -0.986614, abs=1e-6)  # y = (14 - 11) / (4 - 1) = 1


def test_a_small_file_scored_by_hand() -> None:
    # 20 rows, one window [8, 11] (width 4), probation 3 rows.
    scores = [0.0] * 20
    scores[1] = 0.9  # in probation: neither hit nor false alarm
    scores[5] = 0.6  # false positive before the window: -0.11
    scores[9] = 0.8  # y = -(11 - 9 + 1) / 4 = -0.75: 0.954045 / 0.986614 = 0.966989
    scores[10] = 0.95  # y = -0.5: 0.848284 / 0.986614 = 0.859793
    scores[14] = 0.7  # y = +1 past the window: 0.11 * -0.986614 = -0.108528
    s = sweep([file_events(scores, [(8, 11)], STANDARD)], STANDARD)
    assert s.raw_at(0.95) == pytest.approx(0.859793, abs=1e-6)
    assert s.raw_at(0.9) == pytest.approx(0.859793, abs=1e-6)
    assert s.raw_at(0.8) == pytest.approx(0.966989, abs=1e-6)  # the earlier hit counts
    assert s.raw_at(0.7) == pytest.approx(0.966989 - 0.108528, abs=1e-6)
    assert s.raw_at(0.6) == pytest.approx(0.966989 - 0.108528 - 0.11, abs=1e-6)
    assert s.raw_at(1.0) == -1.0  # nothing fires: the window is missed
    assert s.threshold == 0.8
    assert s.raw == pytest.approx(0.966989, abs=1e-6)
    assert s.normalized == pytest.approx(100 * (0.966989 + 1) / 2, abs=1e-4)


def test_ties_go_to_the_higher_threshold() -> None:
    # Firing at 0.5 adds a later hit in the same window, which counts nothing:
    # both thresholds score the same, and 0.9 wins.
    scores = [0.0] * 20
    scores[8] = 0.9
    scores[10] = 0.5
    s = sweep([file_events(scores, [(8, 11)], STANDARD)], STANDARD)
    assert s.raw_at(0.5) == s.raw_at(0.9) == 1.0
    assert s.threshold == 0.9


def test_cli_prints_the_scores_and_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "fieldline_edge", "nab", "score", "--nab-dir", str(nab_dir()),
         "--results-dir", str(out), "--detector", "ewma"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    for key in (
        "detector", "standard", "reward_low_FP_rate", "reward_low_FN_rate", "threshold",
        "shipped_threshold_standard",
    ):  # fmt: skip
        assert key in result
    assert result["detector"] == "ewma"
    assert "[58/58]" in proc.stderr
    files = sorted(out.glob("*/ewma_*.csv"))
    assert len(files) == 58
    header = files[0].read_text().splitlines()[0]
    assert header == "timestamp,value,anomaly_score,label"
    # The written scores give back the printed standard score.
    corpus = {f.key: f for f in load_corpus(nab_dir())}
    events = []
    for path in files:
        rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
        key = f"{path.parent.name}/{path.name.removeprefix('ewma_')}"
        events.append(file_events([float(r[2]) for r in rows], corpus[key].windows, STANDARD))
        assert [int(r[3]) for r in rows].count(1) == sum(
            r - left + 1 for left, r in corpus[key].windows
        )
    assert round(sweep(events, STANDARD).normalized, 2) == result["standard"]


def test_cli_misuse_is_a_one_line_error(tmp_path: Path) -> None:
    for args in (
        ["--nab-dir", str(tmp_path / "missing")],
        ["--nab-dir", str(nab_dir()), "--detector", "nope"],
        ["--nab-dir", str(tmp_path)],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "fieldline_edge", "nab", "score", *args],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().startswith("fieldline nab:"), proc.stderr


@pytest.mark.parametrize("name", ["novelty", "ewma", "mad"])
def test_the_pipelines_hit_path_reports_exactly_the_scores_at_or_above_threshold(
    name: str,
) -> None:
    """``detect_block`` (the pipeline's path, which may skip computing scores that
    cannot matter) finds exactly the readings whose full score reaches the
    threshold, on every NAB file, in 100-reading blocks as from messages."""
    from fieldline_pipeline.detectors import detector_class

    cls = detector_class(name)
    for f in load_corpus(nab_dir()):
        ts = list(range(len(f.values)))
        graded, fast = cls(), cls()
        want: list[int] = []
        got: list[int] = []
        for i in range(0, len(f.values), 100):
            block = f.values[i : i + 100]
            scores = graded.update_block(ts[i : i + 100], block)
            want += [i + j for j, s in enumerate(scores) if s >= cls.default_threshold]
            got += [i + j for j, _s, _e in fast.detect_block(ts[i : i + 100], block)]
        assert got == want, f.key
