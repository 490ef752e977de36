"""The generator: determinism, labels that match what was injected, realistic signals."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fieldline_edge import contract
from fieldline_sim.generate import LABELS_FILE, generate_files
from fieldline_sim.generator import FleetGenerator, Outgoing
from fieldline_sim.groundtruth import READINGS_FILE, SUMMARY_FILE, load_readings
from fieldline_sim.labels import Label, load_labels
from fieldline_sim.scenario import Scenario, load_scenario, parse_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
START = "2026-05-01T00:00:00Z"
START_MS = 1_777_593_600_000

ALL_FAULTS: list[dict[str, Any]] = [
    {"kind": "spike", "count": 4},
    {"kind": "level_shift", "count": 2, "duration_s": [20, 60]},
    {"kind": "drift", "count": 2, "duration_s": [30, 60]},
    {"kind": "stuck", "count": 2, "duration_s": [20, 40]},
    {"kind": "noise_burst", "count": 2, "duration_s": [20, 40]},
    {"kind": "dropout", "count": 2, "duration_s": [10, 30]},
    {"kind": "clock_skew", "count": 2, "duration_s": [10, 30]},
    {"kind": "duplicate", "count": 2, "duration_s": [5, 10]},
    {"kind": "out_of_order", "count": 2, "duration_s": [3, 6]},
    {"kind": "spike", "rate_per_hour": 2.0},
]


def scenario(faults: list[dict[str, Any]] | None = None, seed: int = 5, **group: Any) -> Scenario:
    devices = {"prefix": "d", "count": 8, "rate_hz": 1.0, **group}
    return parse_scenario(
        {
            "site": "t",
            "seed": seed,
            "start": START,
            "duration_s": 600,
            "devices": [devices],
            "faults": faults or [],
        }
    )


def run(s: Scenario) -> tuple[list[Outgoing], list[Label], FleetGenerator]:
    gen = FleetGenerator(s, s.start_ms or START_MS)
    messages: list[Outgoing] = []
    labels: list[Label] = []
    for tick in gen.ticks():
        messages.extend(tick.messages)
        labels.extend(tick.labels)
    messages.extend(gen.finish())
    return messages, labels, gen


def readings(messages: list[Outgoing], gen: FleetGenerator) -> dict[tuple[str, str, int], float]:
    """(device, sensor, ts) -> value of every reading sent (first copies only)."""
    out = {}
    for m in messages:
        if not m.duplicate:
            for r in m.readings:
                out[(gen.devices[m.device], r.sensor, r.ts)] = r.value
    return out


# ------------------------------------------------------------------ determinism


def test_same_seed_same_files_byte_for_byte(tmp_path: Path) -> None:
    sensors = ["temperature", "humidity", "vibration", "current"]
    s = scenario(ALL_FAULTS, sensors=sensors)
    generate_files(s, tmp_path / "a")
    generate_files(s, tmp_path / "b")
    generate_files(scenario(ALL_FAULTS, seed=6, sensors=sensors), tmp_path / "c")
    for name in (READINGS_FILE, LABELS_FILE, SUMMARY_FILE):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for name in (READINGS_FILE, LABELS_FILE):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    labels = load_labels(tmp_path / "a" / LABELS_FILE)
    assert {label.kind for label in labels} >= {f["kind"] for f in ALL_FAULTS}
    rows = load_readings(tmp_path / "a")
    summary = json.loads((tmp_path / "a" / SUMMARY_FILE).read_text())
    assert summary["published_readings"] == len(rows)
    assert summary["labels"] == len(labels)


def test_same_seed_same_messages_including_seq() -> None:
    s = scenario(ALL_FAULTS)
    a, la, _ = run(s)
    b, lb, _ = run(s)
    assert [m.payload for m in a] == [m.payload for m in b]
    assert la == lb
    c, lc, _ = run(scenario(ALL_FAULTS, seed=99))
    assert [m.payload for m in a] != [m.payload for m in c]
    assert la != lc


def test_timestamps_come_from_the_virtual_start_and_tick() -> None:
    messages, _, gen = run(scenario(rate_hz=2.0))
    first = [m for m in messages if m.device == 0]
    assert [r.ts for m in first[:4] for r in m.readings][::2] == [
        START_MS,
        START_MS + 500,
        START_MS + 1000,
        START_MS + 1500,
    ]
    assert first[0].seq == START_MS
    assert [m.seq for m in first] == list(range(START_MS, START_MS + len(first)))
    assert gen.end_ms == START_MS + 600_000


def test_messages_follow_the_contract() -> None:
    messages, _, gen = run(scenario(ALL_FAULTS, samples_per_message=3))
    for m in messages[:500]:
        t = contract.decode_telemetry(gen.topics[m.device], m.payload)
        assert t.device == gen.devices[m.device]
        assert t.seq == m.seq
        assert t.readings == m.readings
        assert 1 <= len(t.readings) <= 3 * 2


# ------------------------------------------------------------------ labels


def fault_run(kind_fault: dict[str, Any]) -> tuple[Any, Any, list[Label], FleetGenerator]:
    """The same scenario with one kind of fault and without: labels and both readings."""
    faulty, labels, gen = run(scenario([kind_fault]))
    clean, none, _ = run(scenario([]))
    assert none == []
    assert labels, "the fault was never placed"
    return readings(faulty, gen), readings(clean, gen), labels, gen


def outside_every_label(
    faulty: dict[tuple[str, str, int], float],
    clean: dict[tuple[str, str, int], float],
    labels: list[Label],
) -> None:
    """Readings outside every label window are exactly the clean ones."""
    for (device, sensor, ts), value in clean.items():
        if not any(label.covers(device, sensor, ts) for label in labels):
            assert faulty[(device, sensor, ts)] == value


def in_window(values: dict[tuple[str, str, int], float], label: Label) -> list[tuple[int, float]]:
    return sorted((ts, v) for (d, s, ts), v in values.items() if label.covers(d, s, ts))


def test_spike_labels_hold_the_spiked_reading() -> None:
    faulty, clean, labels, _ = fault_run({"kind": "spike", "count": 5, "magnitude": 10.0})
    outside_every_label(faulty, clean, labels)
    for label in labels:
        assert label.end_ms - label.start_ms == 1000  # one reading
        [(ts, value)] = in_window(faulty, label)
        expected = clean[(label.device, label.sensor, ts)] + label.params["magnitude"]
        assert abs(value - expected) <= 0.05  # both rounded to the sensor's decimals
        assert abs(label.params["magnitude"]) == 10.0


def test_level_shift_and_drift_labels() -> None:
    faulty, clean, labels, _ = fault_run({"kind": "level_shift", "count": 3, "shift": 5.0})
    outside_every_label(faulty, clean, labels)
    for label in labels:
        window = in_window(faulty, label)
        assert len(window) == (label.end_ms - label.start_ms) // 1000
        for ts, v in window:
            assert abs(v - clean[(label.device, label.sensor, ts)] - label.params["shift"]) <= 0.05

    faulty, clean, labels, _ = fault_run({"kind": "drift", "count": 3, "total": 6.0})
    outside_every_label(faulty, clean, labels)
    for label in labels:
        offsets = [
            v - clean[(label.device, label.sensor, ts)] for ts, v in in_window(faulty, label)
        ]
        assert abs(offsets[-1] - label.params["total"]) <= 0.05
        assert abs(offsets[0]) < abs(offsets[-1])


def test_stuck_readings_are_constant() -> None:
    faulty, clean, labels, _ = fault_run({"kind": "stuck", "count": 4, "duration_s": [20, 40]})
    outside_every_label(faulty, clean, labels)
    for label in labels:
        values = [v for _, v in in_window(faulty, label)]
        assert len(values) >= 20
        assert set(values) == {label.params["value"]}
        truth = [clean[(label.device, label.sensor, ts)] for ts, _ in in_window(faulty, label)]
        assert len(set(truth)) > 1  # the real signal moved meanwhile


def test_noise_burst_adds_noise() -> None:
    faulty, clean, labels, _ = fault_run({"kind": "noise_burst", "count": 3, "sigma": 4.0})
    outside_every_label(faulty, clean, labels)
    for label in labels:
        diffs = [v - clean[(label.device, label.sensor, ts)] for ts, v in in_window(faulty, label)]
        assert 1.5 < float(np.std(diffs)) < 8.0


def test_dropout_windows_have_no_readings() -> None:
    faulty, clean, labels, gen = fault_run({"kind": "dropout", "count": 3, "duration_s": [20, 40]})
    outside_every_label(faulty, clean, labels)
    assert len(faulty) < len(clean)
    for label in labels:
        assert label.sensor == "*"
        assert in_window(faulty, label) == []
        assert len(in_window(clean, label)) == 2 * (label.end_ms - label.start_ms) // 1000
    assert gen.dropped_readings == len(clean) - len(faulty)


def test_clock_skew_shifts_the_timestamps_of_its_window() -> None:
    faulty, clean, labels, _ = fault_run(
        {"kind": "clock_skew", "count": 3, "duration_s": [10, 20], "offset_s": 45.5}
    )
    for label in labels:
        assert label.params["offset_ms"] == 45_500
        for (d, s, ts), v in clean.items():
            if label.covers(d, s, ts):
                assert faulty[(d, s, ts + 45_500)] == v
    unaffected = {k: v for k, v in clean.items() if not any(lb.covers(*k) for lb in labels)}
    assert all(faulty[k] == v for k, v in unaffected.items())


def test_duplicates_carry_the_same_seq_and_payload() -> None:
    messages, labels, gen = run(scenario([{"kind": "duplicate", "count": 3, "duration_s": 8}]))
    copies = [m for m in messages if m.duplicate]
    assert copies
    by_key = {(m.device, m.seq): m for m in messages if not m.duplicate}
    for c in copies:
        original = by_key[(c.device, c.seq)]
        assert original.payload == c.payload
        ts = c.readings[0].ts
        assert any(label.covers(gen.devices[c.device], "*", ts) for label in labels)
    # Every message inside a window was sent twice.
    for label in labels:
        inside = [
            m
            for m in messages
            if gen.devices[m.device] == label.device
            and label.start_ms <= m.readings[0].ts < label.end_ms
        ]
        assert len(inside) == 2 * 8


def test_out_of_order_windows_arrive_reversed() -> None:
    messages, labels, gen = run(scenario([{"kind": "out_of_order", "count": 3, "duration_s": 5}]))
    for label in labels:
        sent = [m for m in messages if gen.devices[m.device] == label.device]
        ts = [m.readings[0].ts for m in sent]
        inside = [i for i, t in enumerate(ts) if label.start_ms <= t < label.end_ms]
        assert len(inside) == 5
        assert inside == list(range(inside[0], inside[0] + 5))  # sent together
        window = [ts[i] for i in inside]
        assert window == sorted(window, reverse=True)
        assert [sent[i].seq for i in inside] == sorted((sent[i].seq for i in inside), reverse=True)
        # Everything else of the device is in order.
        rest = [t for i, t in enumerate(ts) if i not in inside]
        assert rest == sorted(rest)


def test_faults_of_a_device_do_not_overlap() -> None:
    _, labels, _ = run(scenario([{**f, "count": 6} if "count" in f else f for f in ALL_FAULTS]))
    per_device: dict[str, list[Label]] = defaultdict(list)
    for label in labels:
        per_device[label.device].append(label)
    for items in per_device.values():
        items.sort(key=lambda x: x.start_ms)
        for a, b in zip(items, items[1:]):
            assert a.end_ms <= b.start_ms


def test_rate_faults_in_an_endless_run() -> None:
    s = scenario([{"kind": "spike", "rate_per_hour": 30.0}]).replace(duration_s=0)
    gen = FleetGenerator(s, START_MS)
    labels = []
    for tick in gen.ticks():
        labels.extend(tick.labels)
        if tick.ts_ms >= START_MS + 2 * 3600 * 1000:  # two virtual hours
            break
    # 8 devices x 30 / hour x 2 hours = 480 expected; Poisson spread.
    assert 380 < len(labels) < 580
    hours = {(label.start_ms - START_MS) // 3_600_000 for label in labels}
    assert hours == {0, 1}


# ------------------------------------------------------------------ signals


def series(s: Scenario, sensor: str) -> np.ndarray:
    """(devices, ticks) values of one sensor."""
    messages, _, gen = run(s)
    values: dict[int, list[float]] = defaultdict(list)
    for m in messages:
        values[m.device].extend(r.value for r in m.readings if r.sensor == sensor)
    return np.array([values[d] for d in range(len(gen.devices))])


def day(sensors: list[str], rate_hz: float = 1 / 60, days: float = 1.0, **extra: Any) -> Scenario:
    return scenario([], sensors=sensors, rate_hz=rate_hz, **extra).replace(duration_s=days * 86_400)


def test_humidity_is_anti_correlated_with_temperature() -> None:
    s = day(["temperature", "humidity"])
    t, h = series(s, "temperature"), series(s, "humidity")
    for device in range(len(t)):
        assert np.corrcoef(t[device], h[device])[0, 1] < -0.5
    assert (h >= 0).all()
    assert (h <= 100).all()


def test_temperature_follows_the_day() -> None:
    t = series(day(["temperature"]), "temperature")  # one reading a minute from midnight UTC
    afternoon = t[:, 14 * 60 : 16 * 60].mean()
    night = t[:, 2 * 60 : 4 * 60].mean()
    assert afternoon - night > 4.0  # amplitude 4: 2 x 4 x cos(1 h) minus the weather


def test_battery_decays() -> None:
    v = series(day(["battery"], rate_hz=1 / 600, days=10), "battery")
    for device in v:
        slope = np.polyfit(np.arange(len(device)), device, 1)[0]
        assert slope < 0
        assert device[-144:].mean() < device[:144].mean() - 0.05  # last day vs first day
        assert device.min() >= 3.3
        assert device.max() <= 4.2


def test_vibration_and_current_follow_the_duty_cycle() -> None:
    s = scenario([], sensors=["vibration", "current"], cycle_s=120, duty=0.6).replace(
        duration_s=3600
    )
    vib, cur = series(s, "vibration"), series(s, "current")
    vib_on, cur_on = vib > 2.0, cur > 6.0
    assert 0.5 < vib_on.mean() < 0.7
    assert (vib_on == cur_on).mean() > 0.99  # one machine drives both
    assert vib[vib_on].mean() > 10 * vib[~vib_on].mean()
    # The machines cycle: many on/off switches per device, not one long state.
    switches = (np.diff(vib_on.astype(int), axis=1) != 0).sum(axis=1)
    assert (switches >= 40).all()


@pytest.mark.parametrize("name", ["greenhouse", "factory"])
def test_shipped_scenarios_generate(tmp_path: Path, name: str) -> None:
    s = load_scenario(SCENARIOS / f"{name}.toml").replace(duration_s=1800)
    report = generate_files(s, tmp_path)
    assert report["readings"] > 0
    rows = load_readings(tmp_path)
    assert len(rows) == report["readings"]
    devices = {row[1] for row in rows}
    assert len(devices) == s.devices
