"""The ingest clock follows the watermarks in the ingest log, never the wall clock."""

import threading
from pathlib import Path

from fieldline_edge.contract import Reading, encode_telemetry, telemetry_topic
from fieldline_pipeline.clock import IngestClock, WallClock, wall_ms
from fieldline_pipeline.connectors.log_source import IngestLogSource, log_path, partition_name
from fieldline_pipeline.decode import decode_columns
from fieldline_pipeline.ingest_log import (
    HEARD_GAP_MS,
    RECONNECT_GRACE_MAX_MS,
    WATERMARK_TOPIC,
    IngestLog,
    pause_of_gap,
)
from fieldline_pipeline.windows import DeviceWindows, WindowConfig
from hypothesis import given
from hypothesis import strategies as st

T0 = 1_700_000_000_000
PART = partition_name(0)


def wm(sent_ms: int) -> tuple[str, bytes, int]:
    return (WATERMARK_TOPIC, b"", sent_ms)


def msg(received_ms: int) -> tuple[str, bytes, int]:
    return ("fieldline/s/d/telemetry", b"x", received_ms)


def partition(tmp_path: Path, clock: IngestClock, resume: int | None = None) -> object:
    source = IngestLogSource(tmp_path, 0, clock, threading.Event())
    return source.build_part("in", PART, resume)


def drain(part: object) -> int:
    """Read the partition to its end; returns how many messages it emitted."""
    n = 0
    while batch := part.next_batch():  # type: ignore[attr-defined]
        n += len(batch)
    return n


def test_watermarks_are_placed_after_the_messages_before_them(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log.db")
    assert log.append([msg(T0), msg(T0 + 1), wm(T0 + 5), msg(T0 + 6), wm(T0 + 9)]) == 3
    assert [e.topic for e in log.read(1)] == ["fieldline/s/d/telemetry"] * 3  # offsets: messages
    assert log.watermark_at(1) is None
    assert log.watermark_at(2) is None
    assert log.watermark_at(3) == (T0 + 5, 0)  # offsets 1, 2 read
    assert log.watermark_at(4) == (T0 + 9, 0)
    assert log.append([wm(T0 + 20)]) == 3  # no message since: same place, newer time
    assert log.watermark_at(4) == (T0 + 20, 0)
    log.close()


def test_a_watermark_never_goes_back_even_across_a_reopen(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log.db")
    log.append([msg(T0), wm(T0 + 100)])
    log.close()
    log = IngestLog(tmp_path / "log.db")
    log.append([msg(T0 + 1), wm(T0 + 50)])  # the wall clock stepped back
    assert log.watermark_at(3) == (T0 + 100, 0)
    log.close()


def test_truncation_keeps_the_watermark_a_resumed_reader_needs(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log.db")
    for i in range(5):
        log.append([msg(T0 + 10 * i), wm(T0 + 10 * i + 5)])
    assert log.truncate(below_offset=4) == 3
    assert log.watermark_at(4) == (T0 + 25, 0)  # after offset 3, which is gone
    assert log.watermark_at(6) == (T0 + 45, 0)
    assert log.watermark_at(3) is None  # older ones are gone with their messages
    log.close()


def test_the_clock_is_the_newest_watermark_read_not_the_wall_clock(tmp_path: Path) -> None:
    log = IngestLog(log_path(tmp_path, PART))
    log.append([msg(T0), msg(T0 + 10), wm(T0 + 20), msg(T0 + 30)])
    clock = IngestClock()
    part = partition(tmp_path, clock)
    assert drain(part) == 3
    assert clock.now_ms() == T0 + 20
    assert clock.watermark_ms() == T0 + 20
    assert clock.next_offsets() == {PART: 4}
    # Nothing more from the broker: the clock stands still, however long.
    assert drain(part) == 0
    assert clock.now_ms() == T0 + 20
    # A marker comes back with no message before it: the clock moves on.
    log.append([wm(T0 + 1_020)])
    assert drain(part) == 0
    assert clock.now_ms() == T0 + 1_020
    log.close()


def test_a_resumed_reader_starts_from_the_watermark_below_its_offset(tmp_path: Path) -> None:
    log = IngestLog(log_path(tmp_path, PART))
    log.append([msg(T0), wm(T0 + 20), msg(T0 + 30), wm(T0 + 40), msg(T0 + 50)])
    clock = IngestClock()
    part = partition(tmp_path, clock, resume=2)
    assert clock.now_ms() == T0 + 20  # as the first run was when it had read offset 1
    assert drain(part) == 2
    assert clock.now_ms() == T0 + 40
    log.close()


def test_without_watermarks_nothing_closes_for_silence(tmp_path: Path) -> None:
    """A new log, or one written before watermarks existed: "now" stays before
    every message read, so no window closes until the first watermark."""
    log = IngestLog(log_path(tmp_path, PART))
    log.append([msg(T0), msg(T0 + 60_000)])
    clock = IngestClock()
    assert clock.now_ms() == 0  # nothing read yet
    part = partition(tmp_path, clock)
    assert drain(part) == 2
    assert clock.now_ms() == T0 - 1
    assert clock.watermark_ms() is None

    upgraded = IngestClock()
    partition(tmp_path, upgraded, resume=3)  # a snapshot from before the upgrade
    assert upgraded.now_ms() == T0 + 60_000  # the last message it had read
    log.close()


def test_a_window_closes_for_silence_only_on_broker_evidence(tmp_path: Path) -> None:
    """The crash scenario: the device's messages wait in the broker while the
    pipeline is down; the wall clock passes the idle timeout, the watermark does not."""
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0, idle_timeout_ms=2_000)
    w = DeviceWindows(cfg)
    topic = telemetry_topic("s", "d")
    payload = encode_telemetry("d", 1, [Reading("t", T0, 1.0, "C")])
    w.add_columns(decode_columns(topic, payload, T0 + 1), T0)
    log = IngestLog(log_path(tmp_path, PART))
    log.append([(topic, payload, T0), wm(T0 + 500)])
    clock = IngestClock()
    part = partition(tmp_path, clock, resume=1)
    drain(part)
    assert wall_ms() > T0 + cfg.idle_timeout_ms
    assert w.on_time(clock.now_ms()) == []  # the wall clock says silent; the broker does not
    log.append([wm(T0 + 2_000)])  # the broker had nothing more from it at T0 + 2 s
    drain(part)
    assert [r.count for r in w.on_time(clock.now_ms())] == [1]
    log.close()


def test_a_gap_between_watermarks_and_the_reconnect_grace_after_it_are_not_silence() -> None:
    assert pause_of_gap(1_000, 0) == (0, 0)  # markers a second apart: all heard
    assert pause_of_gap(HEARD_GAP_MS, 0) == (0, 0)
    # A 10 s outage: not silence, and 20 s more of grace for devices to reconnect.
    assert pause_of_gap(HEARD_GAP_MS + 10_000, 0) == (10_000, 20_000)
    # The grace is spent by the next gaps: the clock stands still meanwhile...
    assert pause_of_gap(1_000, 10_000) == (1_000, 9_000)
    # ...and moves on once it is spent.
    assert pause_of_gap(1_500, 1_000) == (1_000, 0)
    long = HEARD_GAP_MS + 10 * RECONNECT_GRACE_MAX_MS
    assert pause_of_gap(long, 0) == (10 * RECONNECT_GRACE_MAX_MS, RECONNECT_GRACE_MAX_MS)


@given(st.lists(st.integers(min_value=0, max_value=10**7), max_size=50))
def test_the_ingest_clock_never_goes_back(gaps: list[int]) -> None:
    now, grace = 0, 0
    for gap in gaps:
        pause, grace = pause_of_gap(gap, grace)
        assert 0 <= pause <= gap
        assert 0 <= grace <= RECONNECT_GRACE_MAX_MS
        now += gap - pause
    assert now >= 0


def test_pauses_are_recorded_with_watermarks_and_survive_a_reopen(tmp_path: Path) -> None:
    log = IngestLog(tmp_path / "log.db")
    log.append([msg(T0), wm(T0 + 1_000), wm(T0 + 2_000)])
    assert log.watermark_at(2) == (T0 + 2_000, 0)
    log.append([msg(T0 + 2_500), wm(T0 + 62_000)])  # a minute without a marker
    pause = 60_000 - HEARD_GAP_MS
    assert log.watermark_at(3) == (T0 + 62_000, pause)
    log.close()
    log = IngestLog(tmp_path / "log.db")  # the pipeline restarted
    log.append([wm(T0 + 63_000)])  # within the grace: the clock stands still
    assert log.watermark_at(3) == (T0 + 63_000, pause + 1_000)
    # Message 2 follows the watermark after offset 1; a message 3 would follow the pause.
    assert log.pauses(1, 3) == [(1, 0), (2, pause + 1_000)]
    assert log.pauses(3, 3) == [(2, pause + 1_000)]
    log.close()


def test_a_device_is_not_silent_while_the_pipeline_could_not_hear_it(tmp_path: Path) -> None:
    """The broker down for a minute: the device's messages wait on the device, not
    in the broker. Silence counts again only once markers come back, after a
    grace for the device to reconnect; its later messages keep their place."""
    cfg = WindowConfig(width_ms=1_000, lateness_ms=0, idle_timeout_ms=5_000)
    w = DeviceWindows(cfg)
    topic = telemetry_topic("s", "d")
    first = encode_telemetry("d", 1, [Reading("t", T0, 1.0, "C")])
    log = IngestLog(log_path(tmp_path, PART))
    log.append([(topic, first, T0), wm(T0 + 500)])
    clock = IngestClock()
    part = partition(tmp_path, clock)
    [m] = part.next_batch()  # type: ignore[attr-defined]
    assert m.ingest_ms == T0
    w.add_columns(decode_columns(topic, first, T0 + 1), m.ingest_ms)
    # The outage: the next marker comes back a minute later.
    log.append([wm(T0 + 60_500)])
    drain(part)
    assert w.on_time(clock.now_ms()) == []
    # Markers every second after it: silent only once the grace has passed too.
    t = T0 + 60_500
    while not w.on_time(clock.now_ms()):
        t += 1_000
        assert t < T0 + 200_000, "never closed"
        log.append([wm(t)])
        drain(part)
    deaf = 60_000 - HEARD_GAP_MS
    # Heard: 500 ms before the outage, 2 s of the gap, then after the grace.
    assert t >= T0 + 60_500 + deaf + cfg.idle_timeout_ms - 2_500
    # A message after the pause gets its ingest time, on the same clock as "now".
    later = encode_telemetry("d", 2, [Reading("t", T0 + 1, 2.0, "C")])
    log.append([(topic, later, t + 10)])
    [m2] = part.next_batch()  # type: ignore[attr-defined]
    assert m2.received_ms == t + 10
    assert m2.ingest_ms is not None
    assert m2.ingest_ms - clock.now_ms() == 10
    log.close()


def test_the_wall_clock_for_sources_without_a_log() -> None:
    before = wall_ms()
    assert WallClock().now_ms() >= before
