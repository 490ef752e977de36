import pytest
from fieldline_edge.contract import Reading, Telemetry
from fieldline_pipeline.windows import DeviceWindows, WindowConfig

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
