import math
import statistics

from fieldline_pipeline.aggregates import Agg
from hypothesis import given
from hypothesis import strategies as st

values = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def _agg(pairs: list[tuple[int, float]]) -> Agg:
    a = Agg(*pairs[0])
    for ts, v in pairs[1:]:
        a.add(ts, v)
    return a


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


@given(st.lists(values, min_size=1, max_size=200))
def test_agg_matches_statistics(vs: list[float]) -> None:
    a = _agg([(i, v) for i, v in enumerate(vs)])
    assert a.count == len(vs)
    assert _close(a.mean, statistics.fmean(vs))
    assert a.min == min(vs)
    assert a.max == max(vs)
    assert a.first == vs[0]
    assert a.last == vs[-1]
    expected_sd = statistics.stdev(vs) if len(vs) > 1 else 0.0
    assert _close(a.stddev, expected_sd)


@given(st.lists(values, min_size=2, max_size=200), st.integers(min_value=1, max_value=199))
def test_merge_equals_single_pass(vs: list[float], cut: int) -> None:
    cut = min(cut, len(vs) - 1)
    pairs = [(i, v) for i, v in enumerate(vs)]
    whole = _agg(pairs)
    left, right = _agg(pairs[:cut]), _agg(pairs[cut:])
    left.merge(right)
    assert left.count == whole.count
    assert _close(left.mean, whole.mean)
    assert _close(left.stddev, whole.stddev)
    assert (left.min, left.max, left.first, left.last) == (
        whole.min,
        whole.max,
        whole.first,
        whole.last,
    )


def test_first_and_last_follow_timestamps_not_arrival() -> None:
    a = _agg([(5, 50.0), (1, 10.0), (9, 90.0), (3, 30.0)])
    assert (a.first, a.last) == (10.0, 90.0)


def test_ties_first_arrived_is_first_last_arrived_is_last() -> None:
    a = _agg([(1, 1.0), (1, 2.0), (1, 3.0)])
    assert (a.first, a.last) == (1.0, 3.0)


def test_state_round_trip() -> None:
    a = _agg([(1, 1.5), (2, -2.5), (3, 7.0)])
    b = Agg.from_state(a.state())
    assert repr(a) == repr(b)
