import pytest
from fieldline_edge.contract import Reading, Telemetry
from fieldline_pipeline.aggregates import Agg
from fieldline_pipeline.windows import SEQ_WINDOW, DeviceWindows, WindowConfig
from hypothesis import given, settings
from hypothesis import strategies as st

T0 = 1_700_000_000_000  # a multiple of 10 s
CFG = WindowConfig(width_ms=10_000, lateness_ms=2_000, idle_timeout_ms=30_000)


def msg(seq: int, *readings: tuple[str, int, float]) -> Telemetry:
    return Telemetry("site", "dev", seq, [Reading(s, ts, v, "u") for s, ts, v in readings])


def test_window_closes_only_after_lateness() -> None:
    w = DeviceWindows(CFG)
    closed, late = w.add(msg(0, ("t", T0 + 1_000, 1.0), ("t", T0 + 9_999, 3.0)), 0)
    assert closed == []
    assert late == []
    closed, _ = w.add(msg(1, ("t", T0 + 11_999, 5.0)), 0)  # 10 s + 2 s lateness not reached
    assert closed == []
    closed, _ = w.add(msg(2, ("t", T0 + 12_000, 7.0)), 0)
    assert [(c.start_ms, c.count, c.mean, c.min, c.max, c.first, c.last) for c in closed] == [
        (T0, 2, 2.0, 1.0, 3.0, 1.0, 3.0)
    ]
    assert closed[0].site == "site"
    assert closed[0].unit == "u"


def test_out_of_order_within_lateness_is_kept() -> None:
    w = DeviceWindows(CFG)
    w.add(msg(0, ("t", T0 + 11_000, 1.0)), 0)
    closed, late = w.add(msg(1, ("t", T0 + 9_000, 2.0)), 0)  # behind, but window still open
    assert late == []
    assert closed == []
    closed = w.close_all()
    assert sorted((c.start_ms, c.count) for c in closed) == [(T0, 1), (T0 + 10_000, 1)]


def test_late_readings_are_counted_not_merged() -> None:
    w = DeviceWindows(CFG)
    w.add(msg(0, ("t", T0 + 1_000, 1.0), ("h", T0 + 1_000, 1.0)), 0)
    closed, _ = w.add(msg(1, ("t", T0 + 25_000, 2.0)), 0)
    assert [(c.sensor, c.start_ms) for c in closed] == [("h", T0), ("t", T0)] or [
        (c.sensor, c.start_ms) for c in closed
    ] == [("t", T0), ("h", T0)]
    closed, late = w.add(msg(2, ("t", T0 + 2_000, 9.0), ("t", T0 + 3_000, 9.0), ("h", T0, 1.0)), 0)
    assert closed == []
    assert {(lr.sensor, lr.count) for lr in late} == {("t", 2), ("h", 1)}


def test_idle_device_windows_close_by_system_time() -> None:
    w = DeviceWindows(CFG)
    w.add(msg(0, ("t", T0 + 1_000, 1.0)), received_ms=100)
    assert w.next_idle_close_ms() == 100 + 30_000
    assert w.on_time(100 + 29_999) == []
    closed = w.on_time(100 + 30_000)
    assert [(c.start_ms, c.count) for c in closed] == [(T0, 1)]
    assert w.next_idle_close_ms() is None
    _, late = w.add(msg(1, ("t", T0 + 5_000, 1.0)), received_ms=40_000)
    assert [lr.count for lr in late] == [1]


def test_snapshot_restore_continues_identically() -> None:
    a = DeviceWindows(CFG)
    a.add(msg(0, ("t", T0 + 1_000, 1.0), ("t", T0 + 2_000, 4.0)), 0)
    b = DeviceWindows.restore(a.snapshot(), CFG)
    for w in (a, b):
        w.add(msg(1, ("t", T0 + 3_000, 2.0)), 0)
    assert a.close_all() == b.close_all()


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"width_ms": 0}, "width"),
        ({"lateness_ms": -1}, "lateness"),
        ({"idle_timeout_ms": 0}, "idle"),
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, int], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        WindowConfig(**kwargs)


def test_duplicate_sequence_numbers_are_detected_within_the_window() -> None:
    w = DeviceWindows(CFG)
    assert [w.is_duplicate(s) for s in (5, 6, 5, 9, 7, 7, 6, 10)] == [
        False, False, True, False, False, True, True, False,
    ]  # fmt: skip


def test_a_counter_that_went_far_back_is_accepted() -> None:
    w = DeviceWindows(CFG)
    assert not w.is_duplicate(1_000_000)
    assert not w.is_duplicate(3)  # device restarted without its counter
    assert w.is_duplicate(1_000_000)


def test_dedupe_state_survives_snapshot() -> None:
    a = DeviceWindows(CFG)
    for s in (1, 2, 3):
        a.is_duplicate(s)
    b = DeviceWindows.restore(a.snapshot(), CFG)
    assert b.is_duplicate(2)
    assert not b.is_duplicate(4)


# ---------------------------------------------------------------- dedupe: any gap

W = SEQ_WINDOW


def bounded(w: DeviceWindows) -> bool:
    return w.seq_mask.bit_length() <= W and w.prev_seq_mask.bit_length() <= W


@pytest.mark.parametrize(
    "seqs",
    [
        [1, 1_800_000_000_000],  # a counter restarted at its start time in ms
        [5, 2**63 - 1],  # the contract's largest seq
        [0, 2**63 - 1, 1, 2**62],
        [2**63 - 1, 0],
    ],
)
def test_any_jump_keeps_the_dedupe_small_and_exact(seqs: list[int]) -> None:
    w = DeviceWindows(CFG)
    assert [w.is_duplicate(s) for s in seqs] == [False] * len(seqs)
    assert bounded(w)
    assert all(w.is_duplicate(s) for s in seqs[-2:])  # both runs are remembered


def test_a_restarted_counter_is_deduplicated_and_the_old_one_still_is() -> None:
    w = DeviceWindows(CFG)
    old = 1_800_000_000_000
    for s in range(old, old + 10):
        assert not w.is_duplicate(s)
    # The device restarts its counter at 0 (far below the window: a new run) ...
    assert [w.is_duplicate(s) for s in (0, 1, 2)] == [False, False, False]
    # ... and a copy of a message sent before the restart arrives late.
    assert w.is_duplicate(old + 9)
    assert [w.is_duplicate(s) for s in (1, 3, 2, old + 10, old + 10)] == [
        True, False, True, False, True,
    ]  # fmt: skip


def test_a_spool_replayed_beside_live_messages_is_deduplicated_in_both_runs() -> None:
    w = DeviceWindows(CFG)
    live = iter(range(100_000, 100_100))
    spooled = iter(range(10_000, 10_100))
    sent = []
    for _ in range(100):  # live and spooled messages interleaved
        for it in (live, spooled):
            s = next(it)
            assert not w.is_duplicate(s)
            sent.append(s)
    assert all(w.is_duplicate(s) for s in sent)  # each copy is caught


def test_a_third_far_run_forgets_the_run_used_least_recently() -> None:
    w = DeviceWindows(CFG)
    for s in (10**6, 10**9, 10**6 + 1, 10**12):  # 10**6's run was used after 10**9's
        assert not w.is_duplicate(s)
    assert w.is_duplicate(10**6 + 1)
    assert w.is_duplicate(10**12)
    assert not w.is_duplicate(10**9)  # forgotten: taken as new, never wrongly dropped


def test_a_snapshot_of_the_single_run_format_restores() -> None:
    a = DeviceWindows(CFG)
    for s in (7, 8, 9):
        a.is_duplicate(s)
    snap = a.snapshot()
    del snap["prev_max_seq"], snap["prev_seq_mask"]  # as written before the second run
    b = DeviceWindows.restore(snap, CFG)
    assert b.is_duplicate(8)
    assert not b.is_duplicate(10**15)
    assert b.is_duplicate(9)  # the restored run is kept beside the new one


def test_a_failed_update_leaves_the_windows_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    from fieldline_pipeline import windows

    w = DeviceWindows(CFG)
    w.add(msg(0, ("a", T0 + 1_000, 1.0), ("b", T0 + 1_000, 1.0)), 0)
    before = w.snapshot()
    real = windows._merged

    def fails_on_b(x: Agg, y: Agg) -> Agg:
        if y.first == 99.0:
            raise ZeroDivisionError("a bug")
        return real(x, y)

    monkeypatch.setattr(windows, "_merged", fails_on_b)
    with pytest.raises(ZeroDivisionError):  # "a" merges first, then "b" fails
        w.add(msg(1, ("a", T0 + 2_000, 5.0), ("b", T0 + 2_000, 99.0), ("a", T0 + 30_000, 1.0)), 7)
    assert w.snapshot() == before


@st.composite
def seq_streams(draw: st.DrawFn) -> list[int]:
    """Sequences that mix steps, repeats, and jumps of any size in both directions."""
    out: list[int] = []
    for _ in range(draw(st.integers(1, 80))):
        kind = draw(st.sampled_from(["step", "step", "step", "repeat", "near", "far"]))
        last = out[-1] if out else 0
        if kind == "step":
            s = last + draw(st.integers(1, 3))
        elif kind == "repeat" and out:
            s = draw(st.sampled_from(out))
        elif kind == "near":
            s = last + draw(st.integers(-W - 2, W + 2))
        else:
            s = draw(st.sampled_from([0, 1, W - 1, W, W + 1, 2 * W, 1_800_000_000_000]))
            s = draw(st.one_of(st.just(s), st.integers(0, 2**63 - 1), st.just(2**63 - 1)))
        out.append(min(max(s, 0), 2**63 - 1))
    return out


@settings(max_examples=400, deadline=None)
@given(seq_streams())
def test_dedupe_of_any_sequence_is_bounded_never_wrong_and_catches_copies_in_the_window(
    seqs: list[int],
) -> None:
    """A copy of ``s`` is caught while ``s`` is in the window below the highest
    seq seen (``> max - SEQ_WINDOW``) and no seq since has fallen below the
    window (a restart); a seq never seen is never taken for a copy."""
    w = DeviceWindows(CFG)
    seen: set[int] = set()
    must_catch: set[int] = set()
    top = -1
    for s in seqs:
        dup = w.is_duplicate(s)
        assert bounded(w)
        if dup:
            assert s in seen, f"{s} was never seen"
        top = max(top, s)
        if s > top - W:
            if s in must_catch:
                assert dup, f"the copy of {s} was not caught"
            must_catch.add(s)
        else:  # a restart: the model stops promising anything from before it
            must_catch.clear()
        seen.add(s)
    restored = DeviceWindows.restore(w.snapshot(), CFG)
    assert restored.seq_state() == w.seq_state()


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, W // 2), st.booleans()), max_size=120),
    st.integers(64 * W, 2**62),  # 120 steps of at most W/2 never bring them within W
)
def test_two_counters_far_apart_are_each_deduplicated(
    steps: list[tuple[bool, int, bool]], distance: int
) -> None:
    """A restarted counter beside the old one's stragglers, in any interleaving."""
    w = DeviceWindows(CFG)
    tops = [0, distance]
    sent: list[list[int]] = [[], []]
    for second, step, resend in steps:
        i = int(second)
        recent = [s for s in sent[i] if s > tops[i] - W]  # in its counter's window
        if resend and recent:
            s = recent[-1 - step % len(recent)]
            assert w.is_duplicate(s), f"copy of {s} not caught"
            continue
        tops[i] += step
        assert not w.is_duplicate(tops[i])
        sent[i].append(tops[i])
    assert bounded(w)
