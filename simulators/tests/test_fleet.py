from __future__ import annotations

import json
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable

import pytest
from fieldline_edge import contract
from fieldline_edge.mqtt import ConnectError, parse_broker_url
from fieldline_sim.fleet import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SENSORS,
    Fleet,
    FleetConfig,
    SensorSpec,
    device_id,
    make_sensors,
    parse_sensors,
)
from fieldline_sim.groundtruth import GroundTruthWriter, load_readings, load_summary
from fieldline_sim.metrics import check_instance, metrics_topic

Subscribe = Callable[[str, list[str]], Any]
BROKER = parse_broker_url("mqtt://127.0.0.1:1883")


def values(seed: int, device_index: int, n: int = 50) -> list[list[float]]:
    sensors = make_sensors(DEFAULT_SENSORS, seed, device_index, rate_hz=10.0)
    return [[s.read() for _ in range(n)] for s in sensors]


def test_same_seed_same_values() -> None:
    assert values(42, 3) == values(42, 3)


def test_values_differ_by_seed_device_and_sensor() -> None:
    temperature, humidity = values(42, 0)
    assert temperature != humidity
    assert values(42, 0) != values(42, 1)
    assert values(42, 0) != values(43, 0)


def test_values_do_not_depend_on_the_other_sensors() -> None:
    only_humidity = make_sensors(parse_sensors("humidity"), 42, 0, rate_hz=10.0)[0]
    assert [only_humidity.read() for _ in range(50)] == values(42, 0)[1]


def test_default_sensor_values_are_plausible() -> None:
    temperature, humidity = values(42, 0, n=1000)
    assert all(10 < t < 32 for t in temperature)
    assert all(25 < h < 65 for h in humidity)


def test_parse_sensors() -> None:
    assert [s.name for s in parse_sensors("temperature,humidity")] == ["temperature", "humidity"]
    assert parse_sensors("temperature")[0].unit == "°C"
    assert parse_sensors("temperature:K")[0].unit == "K"
    assert parse_sensors("flow:l/min")[0] == SensorSpec("flow", "l/min")
    assert parse_sensors("vibration")[0] == SensorSpec("vibration", "")
    for bad, message in [
        ("a/b", "not a valid id"),
        ("", "not a valid id"),
        ("t,t", "unique"),
        ("t:" + "x" * 17, "longer than"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_sensors(bad)


def test_device_ids() -> None:
    assert [device_id(i) for i in (0, 1, 49, 9999)] == [
        "dev-0001",
        "dev-0002",
        "dev-0050",
        "dev-10000",
    ]


def test_default_connections() -> None:
    assert FleetConfig(BROKER, devices=5).n_connections == 5
    assert FleetConfig(BROKER, devices=500).n_connections == DEFAULT_MAX_CONNECTIONS
    assert FleetConfig(BROKER, devices=5, connections=2).n_connections == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"devices": 0}, "devices must be >= 1"),
        ({"rate_hz": 0.0}, "rate-hz"),
        ({"rate_hz": float("nan")}, "rate-hz"),
        ({"batch_size": 0}, "batch-size"),
        ({"duration_s": -1.0}, "duration-s"),
        ({"connections": 6}, "connections must be in 1..5"),
        ({"site": "a b"}, "site"),
        ({"instance": "telemetry"}, "instance"),
        ({"instance": "_x"}, "instance"),
        ({"sensors": ()}, "sensor"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FleetConfig(BROKER, **{"devices": 5, **kwargs}).validate()


def test_metrics_topic() -> None:
    assert metrics_topic("lab-1") == "fieldline/_metrics/sim/lab-1"
    with pytest.raises(ValueError, match="instance"):
        check_instance("a/b")


def test_unreachable_broker() -> None:
    config = FleetConfig(parse_broker_url("mqtt://127.0.0.1:1"), devices=2, instance="t")
    fleet = Fleet(config)
    with pytest.raises(ConnectError, match=r"cannot connect to mqtt://127\.0\.0\.1:1"):
        fleet.connect()


# ------------------------------------------------------------------ against Mosquitto


def run_fleet(url: str, tmp_path: Path, **kwargs: Any) -> tuple[Fleet, Any]:
    config = FleetConfig(
        parse_broker_url(url),
        site=kwargs.pop("site", f"s{uuid.uuid4().hex[:8]}"),
        instance=kwargs.pop("instance", f"test-{uuid.uuid4().hex[:8]}"),
        **kwargs,
    )
    fleet = Fleet(config, ground_truth=GroundTruthWriter(tmp_path))
    return fleet, fleet.run()


@pytest.mark.services
@pytest.mark.parametrize("connections", [None, 2])
def test_subscriber_receives_exactly_the_ground_truth(
    mosquitto: Any, subscribe: Subscribe, tmp_path: Path, connections: int | None
) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    instance = f"test-{uuid.uuid4().hex[:8]}"
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/telemetry", metrics_topic(instance)])
    # batch_size 3 with 2 sensors: batches straddle ticks, and the last one is partial.
    _, report = run_fleet(
        mosquitto.url,
        tmp_path,
        site=site,
        instance=instance,
        devices=5,
        rate_hz=5.0,
        batch_size=3,
        duration_s=2.0,
        connections=connections,
    )
    assert report.unacked_messages == 0
    assert report.published_readings == 5 * 2 * 10  # devices x sensors x duration x rate

    msgs = sub.wait_for(
        lambda ms: sum(m.topic.endswith("/telemetry") for m in ms) == report.published_messages
    )
    batches = [
        contract.decode_telemetry(m.topic, m.payload)
        for m in msgs
        if m.topic.endswith("/telemetry")
    ]
    received = [(t.site, t.device, r.sensor, r.ts, r.value) for t in batches for r in t.readings]
    truth = load_readings(tmp_path)
    assert len(received) == len(truth) == report.published_readings
    assert Counter(received) == Counter(truth)
    # Per device, order and seq are preserved.
    per_device: dict[str, list[int]] = defaultdict(list)
    for t in batches:
        per_device[t.device].append(t.seq)
        assert 1 <= len(t.readings) <= 3
    assert sorted(per_device) == [device_id(i) for i in range(5)]
    for seqs in per_device.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    for dev in per_device:
        assert [r for r in received if r[1] == dev] == [r for r in truth if r[1] == dev]

    summary = load_summary(tmp_path)
    assert summary["published_readings"] == len(truth)
    assert summary["published_messages"] == len(batches)
    assert summary["unacked_messages"] == 0
    assert summary["devices"] == 5
    assert summary["sensors"] == ["temperature", "humidity"]
    assert summary["seed"] == 42
    assert summary["started_ms"] <= min(r[3] for r in truth)
    assert summary["ended_ms"] >= max(r[3] for r in truth)

    # Live metrics: JSON once per second, the last one says done and matches.
    metrics = sub.wait_for(lambda ms: any(b'"done":true' in m.payload for m in ms))
    bodies = [json.loads(m.payload) for m in metrics if m.topic == metrics_topic(instance)]
    assert bodies[-1]["done"] is True
    assert bodies[-1]["published_readings"] == len(truth)
    assert bodies[-1]["acked_messages"] == len(batches)
    assert bodies[-1]["devices"] == 5
    assert set(bodies[0]) >= {
        "published_readings",
        "published_messages",
        "acked_messages",
        "readings_per_s",
        "devices",
        "ts",
    }


@pytest.mark.services
def test_same_seed_same_published_values(mosquitto: Any, tmp_path: Path) -> None:
    run_fleet(mosquitto.url, tmp_path / "a", devices=3, rate_hz=10.0, duration_s=0.5, seed=7)
    run_fleet(mosquitto.url, tmp_path / "b", devices=3, rate_hz=10.0, duration_s=0.5, seed=7)
    run_fleet(mosquitto.url, tmp_path / "c", devices=3, rate_hz=10.0, duration_s=0.5, seed=8)

    def values_of(d: str) -> list[tuple[str, str, float]]:
        return [(dev, sensor, v) for _, dev, sensor, _, v in load_readings(tmp_path / d)]

    assert values_of("a") == values_of("b")
    assert values_of("a") != values_of("c")
    assert len(values_of("a")) == 3 * 2 * 5


@pytest.mark.services
def test_statuses_online_then_offline(mosquitto: Any, subscribe: Subscribe, tmp_path: Path) -> None:
    site = f"s{uuid.uuid4().hex[:8]}"
    sub = subscribe(mosquitto.url, [f"fieldline/{site}/+/status"])
    run_fleet(mosquitto.url, tmp_path, site=site, devices=3, duration_s=0.3, rate_hz=10.0)
    msgs = sub.wait_for(lambda ms: len(ms) == 6)
    states: dict[str, list[str]] = defaultdict(list)
    for m in msgs:
        status = contract.decode_status(m.topic, m.payload)
        states[status.device].append(status.state)
        assert status.sensors == {"temperature": "ok", "humidity": "ok"}
    assert states == {device_id(i): ["online", "offline"] for i in range(3)}
