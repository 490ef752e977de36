"""Streaming detectors on small synthetic series: what they flag, what they leave alone."""

from __future__ import annotations

import math
import pickle
import random

import pytest
from fieldline_pipeline.detectors import DEFAULT_DETECTOR, REGISTRY, Detector, create

T0 = 1_700_000_000_000
STEP_MS = 60_000
ALL = sorted(REGISTRY)


def sine(n: int, noise: float = 0.05, seed: int = 1, period: int = 150) -> list[float]:
    rng = random.Random(seed)
    return [20.0 + 5.0 * math.sin(2 * math.pi * i / period) + rng.gauss(0, noise) for i in range(n)]


def stamps(n: int) -> list[int]:
    return [T0 + i * STEP_MS for i in range(n)]


def flagged(det: Detector, values: list[float]) -> list[int]:
    """Indices of the readings at or above the detector's threshold (fed as one stream)."""
    scores = det.update_block(stamps(len(values)), values)
    return [i for i, s in enumerate(scores) if s >= det.default_threshold]


LEARN = 3000  # readings of normal behaviour before the event
BOUND = 20  # the event must be flagged within this many readings


@pytest.mark.parametrize("name", ALL)
def test_a_spike_is_flagged_at_once(name: str) -> None:
    values = sine(LEARN + 200)
    values[LEARN] += 30.0
    hits = flagged(create(name), values)
    assert LEARN in hits


@pytest.mark.parametrize("name", ALL)
def test_a_level_shift_is_flagged_within_a_few_readings(name: str) -> None:
    values = sine(LEARN + 200)
    for i in range(LEARN, len(values)):
        values[i] += 30.0  # about 8 times the spread of the sine
    hits = [i for i in flagged(create(name), values) if i >= LEARN]
    assert hits, "the shift was never flagged"
    assert hits[0] - LEARN < BOUND


def test_a_stuck_sensor_is_flagged_by_the_default_detector() -> None:
    values = sine(LEARN + 200)
    stuck = values[LEARN]
    for i in range(LEARN, len(values)):
        values[i] = stuck
    det = create(DEFAULT_DETECTOR)
    hits = [i for i in flagged(det, values) if i >= LEARN]
    assert hits, "the stuck value was never flagged"
    assert hits[0] - LEARN < BOUND
    assert len(hits) == 1  # one event, one alert


def test_a_series_that_idles_at_one_value_is_not_stuck() -> None:
    # A counter that sits at 0 for long stretches between bursts: long runs are its normal.
    rng = random.Random(3)
    values: list[float] = []
    while len(values) < LEARN + 2000:
        values += [0.0] * rng.randint(30, 60) + [float(rng.randint(1, 3)) for _ in range(5)]
    hits = [i for i in flagged(create(DEFAULT_DETECTOR), values) if i >= LEARN]
    assert hits == []


@pytest.mark.parametrize("name", ALL)
def test_a_clean_sine_with_mild_noise_stays_quiet(name: str) -> None:
    values = sine(20_000, noise=0.05, seed=7)
    hits = [i for i in flagged(create(name), values) if i >= LEARN]
    assert hits == []


@pytest.mark.parametrize("name", ALL)
def test_scores_are_in_the_unit_interval(name: str) -> None:
    values = sine(LEARN + 500, noise=0.5)
    values[LEARN] = 1e6
    values[LEARN + 100] = -1e6
    scores = create(name).update_block(stamps(len(values)), values)
    assert all(0.0 <= s <= 1.0 for s in scores)


@pytest.mark.parametrize("name", ALL)
def test_snapshot_restore_mid_stream_gives_identical_scores(name: str) -> None:
    values = sine(LEARN + 2000, noise=0.3, seed=11)
    values[LEARN + 500] += 25.0
    ts = stamps(len(values))
    whole = create(name).update_block(ts, values)
    for cut in (1, 137, LEARN + 499, LEARN + 1234):
        det = create(name)
        first = det.update_block(ts[:cut], values[:cut])
        state = pickle.loads(pickle.dumps(det.snapshot()))  # what Bytewax stores
        resumed = type(det).restore(state)
        rest = resumed.update_block(ts[cut:], values[cut:])
        assert first + rest == whole, f"cut at {cut}"


@pytest.mark.parametrize("name", ALL)
def test_block_and_single_updates_agree_and_detect_reports_the_same(name: str) -> None:
    values = sine(LEARN + 600, noise=0.3, seed=5)
    values[LEARN + 50] -= 40.0
    ts = stamps(len(values))
    one_by_one = create(name)
    singles = [one_by_one.update(t, v) for t, v in zip(ts, values)]
    blocks = create(name)
    scores: list[float] = []
    for i in range(0, len(values), 100):
        scores += blocks.update_block(ts[i : i + 100], values[i : i + 100])
    assert singles == scores
    det = create(name)
    hits = []
    for i in range(0, len(values), 100):
        hits += [(i + j, s) for j, s, _e in det.detect_block(ts[i : i + 100], values[i : i + 100])]
    assert hits == [(i, s) for i, s in enumerate(scores) if s >= det.default_threshold]
    assert hits  # the dip is among them


def test_state_of_another_detector_is_refused() -> None:
    state = create("ewma").snapshot()
    with pytest.raises(ValueError, match="ewma"):
        REGISTRY["novelty"].restore(state)


def test_unknown_detector_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="novelty"):
        create("nope")


def test_novelty_state_stays_bounded() -> None:
    det = create("novelty")
    values = sine(100_000, noise=1.0, seed=2)
    det.update_block(stamps(len(values)), values)
    sizes = [len(v) for v in det.snapshot()["state"] if isinstance(v, list)]
    assert sizes
    assert max(sizes) <= 32
