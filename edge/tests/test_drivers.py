"""Drivers against fake sysfs trees and datasheet register maps (no hardware here)."""

from __future__ import annotations

import json
import os
import struct
import sys
from pathlib import Path

import pytest
from fieldline_edge.drivers import (
    BME280,
    DS18B20,
    CommandReader,
    CpuTemperature,
    DriverError,
    Extractor,
    FileReader,
    SystemMetrics,
)
from fieldline_edge.drivers.bme280 import (
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
)
from fieldline_edge.drivers.ds18b20 import parse_w1_slave

# ---------------------------------------------------------------- CPU temperature


def test_cpu_temperature_reads_the_lowest_zone(tmp_path: Path) -> None:
    for zone, value in ((1, "60000"), (0, "47234")):
        d = tmp_path / f"thermal_zone{zone}"
        d.mkdir()
        (d / "temp").write_text(value + "\n")
    (tmp_path / "cooling_device0").mkdir()
    [sample] = CpuTemperature("cpu", root=str(tmp_path)).read()
    assert (sample.sensor, sample.value, sample.unit) == ("cpu", 47.234, "°C")
    assert CpuTemperature("cpu", root=str(tmp_path), zone=1).read()[0].value == 60.0


def test_cpu_temperature_errors_say_why(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no thermal zones"):
        CpuTemperature("cpu", root=str(tmp_path)).read()
    (tmp_path / "thermal_zone0").mkdir()
    (tmp_path / "thermal_zone0" / "temp").write_text("hot\n")
    with pytest.raises(DriverError, match="expected integer millidegrees, got 'hot'"):
        CpuTemperature("cpu", root=str(tmp_path)).read()
    with pytest.raises(DriverError, match="does not exist"):
        CpuTemperature("cpu", root=str(tmp_path / "nope")).read()


# ---------------------------------------------------------------- DS18B20

GOOD = "72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
NEGATIVE = "5e ff 4b 46 7f ff 02 10 45 : crc=45 YES\n5e ff 4b 46 7f ff 02 10 45 t=-10125\n"
CRC_FAIL = "72 01 4b 46 7f ff 0e 10 57 : crc=a3 NO\n72 01 4b 46 7f ff 0e 10 57 t=23125\n"
POWER_ON = "50 05 4b 46 7f ff 0c 10 1c : crc=1c YES\n50 05 4b 46 7f ff 0c 10 1c t=85000\n"
STUCK_HIGH = "ff 07 4b 46 7f ff 01 10 2f : crc=2f YES\nff 07 4b 46 7f ff 01 10 2f t=127937\n"
DISCONNECTED = "00 00 00 00 00 00 00 00 00 : crc=00 YES\n00 00 00 00 00 00 00 00 00 t=-127000\n"


def w1_tree(tmp_path: Path, probes: dict[str, str]) -> Path:
    root = tmp_path / "w1"
    root.mkdir()
    (root / "w1_bus_master1").mkdir()
    for probe, text in probes.items():
        (root / probe).mkdir()
        (root / probe / "w1_slave").write_text(text)
    return root


def test_ds18b20_reads_the_only_probe(tmp_path: Path) -> None:
    root = w1_tree(tmp_path, {"28-000005e2fdc3": GOOD})
    [sample] = DS18B20("water", root=str(root)).read()
    assert (sample.sensor, sample.value, sample.unit) == ("water", 23.125, "°C")
    assert parse_w1_slave(NEGATIVE) == -10.125


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CRC_FAIL, "CRC check failed"),
        (POWER_ON, "85.0 °C is the power-on value"),
        (STUCK_HIGH, "127.937 °C is a fault value"),
        (DISCONNECTED, "-127 °C is a fault value"),
        ("72 01 4b 46 7f ff 0e 10 57 : crc=57 YES\n", "expected 2 lines"),
        ("72 01 : crc=57 YES\n72 01 t=abc\n", "no t=<millidegrees>"),
    ],
)
def test_ds18b20_refuses_bad_readings(tmp_path: Path, text: str, message: str) -> None:
    root = w1_tree(tmp_path, {"28-000005e2fdc3": text})
    with pytest.raises(DriverError, match=message):
        DS18B20("water", root=str(root)).read()


def test_ds18b20_with_several_probes_needs_an_id(tmp_path: Path) -> None:
    root = w1_tree(tmp_path, {"28-000005e2fdc3": GOOD, "28-0000075a1b2c": NEGATIVE})
    with pytest.raises(DriverError, match=r"2 probes .* set device_id"):
        DS18B20("water", root=str(root)).read()
    assert DS18B20("w", root=str(root), device_id="28-0000075a1b2c").read()[0].value == -10.125
    (tmp_path / "empty").mkdir()
    with pytest.raises(DriverError, match="no DS18B20 probe"):
        DS18B20("w", root=str(w1_tree(tmp_path / "empty", {}))).read()


# ---------------------------------------------------------------- BME280 / BMP280

#: The worked example of Bosch's datasheet (BMP280 datasheet section 3.12; the
#: BME280 uses the same temperature and pressure compensation): T = 25.08 °C,
#: p = 100653.27 Pa.
DATASHEET_TP = (27504, 26435, -1000, 36477, -10685, 3024, 2855, 140, -7, 15500, -14600, 6000)
ADC_T, ADC_P = 519888, 415148
#: Humidity trimming values in the typical range of production parts.
H1, H2, H3, H4, H5, H6 = 75, 362, 0, 333, 0, 30
ADC_H = 0x6FF0


class FakeRegisterMap:
    """An I2C bus with one device: a 256-byte register file, auto-incrementing reads."""

    def __init__(self, address: int, registers: dict[int, int]) -> None:
        self.address = address
        self.regs = bytearray(256)
        for reg, value in registers.items():
            self.regs[reg] = value
        self.writes: list[tuple[int, bytes]] = []

    def _check(self, address: int) -> None:
        if address != self.address:
            raise DriverError(f"no answer from 0x{address:02x}")

    def read(self, address: int, register: int, length: int) -> bytes:
        self._check(address)
        return bytes(self.regs[register : register + length])

    def write(self, address: int, register: int, data: bytes) -> None:
        self._check(address)
        self.writes.append((register, bytes(data)))


def bme280_registers(chip_id: int, adc_t: int, adc_p: int, adc_h: int) -> dict[int, int]:
    regs: dict[int, int] = {0xD0: chip_id}
    for i, b in enumerate(struct.pack("<HhhHhhhhhhhh", *DATASHEET_TP)):
        regs[0x88 + i] = b
    regs[0xA1] = H1
    e1, e2 = struct.pack("<h", H2)
    regs.update({0xE1: e1, 0xE2: e2, 0xE3: H3})
    regs[0xE4] = (H4 >> 4) & 0xFF
    regs[0xE5] = (H4 & 0x0F) | ((H5 & 0x0F) << 4)
    regs[0xE6] = (H5 >> 4) & 0xFF
    regs[0xE7] = H6 & 0xFF
    regs.update({0xF7: adc_p >> 12, 0xF8: (adc_p >> 4) & 0xFF, 0xF9: (adc_p & 0xF) << 4})
    regs.update({0xFA: adc_t >> 12, 0xFB: (adc_t >> 4) & 0xFF, 0xFC: (adc_t & 0xF) << 4})
    regs.update({0xFD: adc_h >> 8, 0xFE: adc_h & 0xFF})
    return regs


def humidity_int32(adc_h: int, t_fine: int) -> float:
    """The datasheet's 32-bit integer humidity compensation (BME280 section 4.2.3)."""
    v = t_fine - 76800
    v = ((((adc_h << 14) - (H4 << 20) - (H5 * v)) + 16384) >> 15) * (
        ((((((v * H6) >> 10) * (((v * H3) >> 11) + 32768)) >> 10) + 2097152) * H2 + 8192) >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * H1) >> 4)
    v = min(max(v, 0), 419430400)
    return (v >> 12) / 1024.0


def temperature_int32(adc_t: int) -> tuple[int, int]:
    """The datasheet's 32-bit integer temperature: (centidegrees, t_fine)."""
    t1, t2, t3 = DATASHEET_TP[:3]
    var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11
    var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def test_compensation_matches_the_datasheet_example() -> None:
    cal = Calibration(*DATASHEET_TP, H1, H2, H3, H4, H5, H6)
    temperature, t_fine = compensate_temperature(cal, ADC_T)
    assert round(temperature, 2) == 25.08
    assert t_fine == 128422
    assert temperature_int32(ADC_T) == (2508, 128422)
    assert compensate_pressure(cal, ADC_P, t_fine) == pytest.approx(100653.27, abs=0.05)
    humidity = compensate_humidity(cal, ADC_H, t_fine)
    assert humidity == pytest.approx(humidity_int32(ADC_H, int(t_fine)), abs=0.01)
    assert 0 < humidity < 100


@pytest.mark.parametrize("address", [0x76, 0x77])
def test_bme280_reads_temperature_pressure_and_humidity(address: int) -> None:
    bus = FakeRegisterMap(address, bme280_registers(0x60, ADC_T, ADC_P, ADC_H))
    sensor = BME280("env", bus, address, sleep=lambda s: None)
    samples = {s.sensor: s for s in sensor.read()}
    assert sensor.chip == "BME280"
    assert set(samples) == {"env.temperature", "env.pressure", "env.humidity"}
    assert round(samples["env.temperature"].value, 2) == 25.08
    assert samples["env.pressure"].value == pytest.approx(1006.5327, abs=0.0005)
    assert samples["env.pressure"].unit == "hPa"
    assert samples["env.humidity"].value == pytest.approx(humidity_int32(ADC_H, 128422), abs=0.01)
    # ctrl_hum is written before ctrl_meas (forced mode, 1x oversampling).
    assert bus.writes == [(0xF2, b"\x01"), (0xF4, b"\x25")]


def test_a_bmp280_is_reported_as_such_without_humidity() -> None:
    bus = FakeRegisterMap(0x76, bme280_registers(0x58, ADC_T, ADC_P, ADC_H))
    sensor = BME280("env", bus, sleep=lambda s: None)
    samples = sensor.read()
    assert sensor.chip == "BMP280"
    assert [s.sensor for s in samples] == ["env.temperature", "env.pressure"]
    assert bus.writes == [(0xF4, b"\x25")]


def test_bme280_errors_name_the_problem() -> None:
    wrong = FakeRegisterMap(0x76, bme280_registers(0x55, ADC_T, ADC_P, ADC_H))
    with pytest.raises(DriverError, match=r"no BME280/BMP280 at 0x76 \(chip id 0x55\)"):
        BME280("env", wrong).read()
    elsewhere = FakeRegisterMap(0x77, bme280_registers(0x60, ADC_T, ADC_P, ADC_H))
    with pytest.raises(DriverError, match="no answer from 0x76"):
        BME280("env", elsewhere, 0x76).read()
    skipped = FakeRegisterMap(0x76, bme280_registers(0x60, 0x80000, ADC_P, ADC_H))
    with pytest.raises(DriverError, match="no measurement data"):
        BME280("env", skipped, sleep=lambda s: None).read()
    with pytest.raises(ValueError, match="0x76 or 0x77"):
        BME280("env", wrong, 0x40)


# ---------------------------------------------------------------- system metrics


def proc_tree(tmp_path: Path, throttled: str | None) -> Path:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "loadavg").write_text("0.52 0.58 0.59 1/389 12345\n")
    (tmp_path / "proc" / "meminfo").write_text(
        "MemTotal:        3884096 kB\nMemFree:          512000 kB\nMemAvailable:    2913072 kB\n"
    )
    (tmp_path / "proc" / "uptime").write_text("35.27 120.01\n")
    if throttled is not None:
        fw = tmp_path / "sys" / "devices" / "platform" / "soc" / "soc:firmware"
        fw.mkdir(parents=True)
        (fw / "get_throttled").write_text(throttled + "\n")
    return tmp_path


def test_system_metrics_from_a_fake_proc_tree(tmp_path: Path) -> None:
    root = proc_tree(tmp_path, "50005")
    samples = {s.sensor: s for s in SystemMetrics("sys", root=str(root)).read()}
    assert samples["sys.load1"].value == 0.52
    assert samples["sys.mem_used_pct"].value == pytest.approx(25.0, abs=0.01)
    assert samples["sys.mem_available_mb"].value == pytest.approx(2844.8, abs=0.1)
    assert samples["sys.uptime_s"].value == 35.27
    assert samples["sys.throttled"].value == 0x50005
    st = os.statvfs("/")
    assert samples["sys.disk_free_mb"].value == pytest.approx(
        st.f_bavail * st.f_frsize / 2**20, rel=0.01
    )


def test_system_metrics_throttled_from_vcgencmd_or_left_out(tmp_path: Path) -> None:
    root = proc_tree(tmp_path, None)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "vcgencmd"
    fake.write_text(f"#!{sys.executable}\nprint('throttled=0x4')\n")
    fake.chmod(0o755)
    with_cmd = SystemMetrics("sys", root=str(root), vcgencmd=str(fake)).read()
    assert {s.sensor: s.value for s in with_cmd}["sys.throttled"] == 4
    without = SystemMetrics("sys", root=str(root), vcgencmd=str(bindir / "missing")).read()
    assert "sys.throttled" not in {s.sensor for s in without}


def test_system_metrics_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="proc/loadavg does not exist"):
        SystemMetrics("sys", root=str(tmp_path)).read()


# ---------------------------------------------------------------- file / command readers


def test_file_reader_with_regex_pointer_and_scale(tmp_path: Path) -> None:
    f = tmp_path / "value"
    f.write_text("level=1234 raw\n")
    reader = FileReader("tank", str(f), Extractor(regex=r"level=(\d+)", scale=0.1), "cm")
    [sample] = reader.read()
    assert (sample.sensor, sample.value, sample.unit) == ("tank", pytest.approx(123.4), "cm")
    j = tmp_path / "doc.json"
    j.write_text(json.dumps({"a": {"b/c": [1, {"v": "2.5"}]}}))
    extract = Extractor(json_pointer="/a/b~1c/1/v", offset=1.0)
    assert FileReader("x", str(j), extract).read()[0].value == 3.5
    with pytest.raises(DriverError, match="nothing at JSON pointer"):
        FileReader("x", str(j), Extractor(json_pointer="/a/zz")).read()
    with pytest.raises(DriverError, match="does not match"):
        FileReader("x", str(f), Extractor(regex=r"pressure=(\d+)")).read()
    f.write_text("nan\n")
    with pytest.raises(DriverError, match="non-finite"):
        FileReader("x", str(f), Extractor()).read()


def test_command_reader(tmp_path: Path) -> None:
    script = f'{sys.executable} -c "print(\'{{\\"t\\": 21.5}}\')"'
    [sample] = CommandReader("t", script, Extractor(json_pointer="/t"), "°C").read()
    assert sample.value == 21.5
    failing = [sys.executable, "-c", "import sys; sys.exit('sensor unplugged')"]
    with pytest.raises(DriverError, match="exited with 1: sensor unplugged"):
        CommandReader("t", failing, Extractor()).read()
    with pytest.raises(DriverError, match="cannot run"):
        CommandReader("t", [str(tmp_path / "missing")], Extractor()).read()
    slow = [sys.executable, "-c", "import time; time.sleep(30)"]
    with pytest.raises(DriverError, match=r"no result within 0\.5 s"):
        CommandReader("t", slow, Extractor(), timeout_s=0.5).read()
