from __future__ import annotations

from pathlib import Path

import pytest
from fieldline_edge.sensors import CpuTemperature, Sensor, SensorError, SimulatedSensor


def make_zone(root: Path, zone: int, content: str) -> Path:
    d = root / "sys" / "class" / "thermal" / f"thermal_zone{zone}"
    d.mkdir(parents=True)
    (d / "temp").write_text(content)
    (d / "type").write_text("cpu-thermal\n")
    return d / "temp"


def test_cpu_temperature_reads_millidegrees(tmp_path: Path) -> None:
    make_zone(tmp_path, 0, "48312\n")
    sensor = CpuTemperature(sysfs_root=str(tmp_path))
    assert sensor.read() == 48.312
    assert (sensor.name, sensor.unit) == ("cpu_temp", "°C")
    assert isinstance(sensor, Sensor)


def test_cpu_temperature_negative(tmp_path: Path) -> None:
    make_zone(tmp_path, 0, "-5000\n")
    assert CpuTemperature(sysfs_root=str(tmp_path)).read() == -5.0


def test_cpu_temperature_picks_lowest_zone_numerically(tmp_path: Path) -> None:
    make_zone(tmp_path, 10, "70000")
    make_zone(tmp_path, 2, "42000")
    (tmp_path / "sys" / "class" / "thermal" / "cooling_device0").mkdir()
    assert CpuTemperature(sysfs_root=str(tmp_path)).read() == 42.0
    assert CpuTemperature(sysfs_root=str(tmp_path), zone=10).read() == 70.0


def test_cpu_temperature_follows_file_changes(tmp_path: Path) -> None:
    temp = make_zone(tmp_path, 0, "40000")
    sensor = CpuTemperature(sysfs_root=str(tmp_path))
    assert sensor.read() == 40.0
    temp.write_text("41500\n")
    assert sensor.read() == 41.5


def test_cpu_temperature_no_thermal_dir(tmp_path: Path) -> None:
    with pytest.raises(SensorError, match="no thermal zones"):
        CpuTemperature(sysfs_root=str(tmp_path)).read()


def test_cpu_temperature_no_zone(tmp_path: Path) -> None:
    (tmp_path / "sys" / "class" / "thermal" / "cooling_device0").mkdir(parents=True)
    with pytest.raises(SensorError, match="no thermal zones"):
        CpuTemperature(sysfs_root=str(tmp_path)).read()


def test_cpu_temperature_missing_zone_file(tmp_path: Path) -> None:
    make_zone(tmp_path, 0, "40000")
    with pytest.raises(SensorError, match=r"thermal_zone3/temp does not exist"):
        CpuTemperature(sysfs_root=str(tmp_path), zone=3).read()


@pytest.mark.parametrize("content", ["", "hot\n", "48.5\n", "\xff\xfe"])
def test_cpu_temperature_malformed(tmp_path: Path, content: str) -> None:
    temp = make_zone(tmp_path, 0, "")
    temp.write_bytes(content.encode("latin-1"))
    with pytest.raises(SensorError, match="temp"):
        CpuTemperature(sysfs_root=str(tmp_path)).read()


def test_simulated_sensor_is_deterministic() -> None:
    a = SimulatedSensor("temperature", "°C", seed=7)
    b = SimulatedSensor("temperature", "°C", seed=7)
    values = [a.read() for _ in range(100)]
    assert values == [b.read() for _ in range(100)]
    assert a.index == 100
    other = SimulatedSensor("temperature", "°C", seed=8)
    assert values != [other.read() for _ in range(100)]


def test_simulated_sensor_signal_shape() -> None:
    s = SimulatedSensor("x", seed=1, base=10.0, amplitude=2.0, noise=0.0, period_s=4.0)
    assert [round(s.read(), 12) for _ in range(4)] == [10.0, 12.0, 10.0, 8.0]
    assert isinstance(s, Sensor)


def test_simulated_sensor_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="period_s"):
        SimulatedSensor("x", period_s=0)
    with pytest.raises(ValueError, match="noise"):
        SimulatedSensor("x", noise=-1)
