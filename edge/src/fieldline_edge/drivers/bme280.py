"""Bosch BME280 (temperature, pressure, humidity) and BMP280 (no humidity) over I2C.

One forced-mode measurement per read with 1x oversampling, then the datasheet's
double-precision compensation (BME280 datasheet rev. 1.6, section 8.1; BMP280
datasheet section 8.1). The chip id register (0xD0) tells the two apart: 0x60 is
a BME280, 0x58 a BMP280, which is reported as such and gives no humidity.
"""

from __future__ import annotations

import struct
import time
from typing import Callable, NamedTuple, Optional

from fieldline_edge.drivers.base import DriverError, Sample
from fieldline_edge.drivers.i2c import I2CBus

ADDRESSES = (0x76, 0x77)
CHIP_ID_BME280 = 0x60
CHIP_ID_BMP280 = 0x58
REG_CHIP_ID = 0xD0
REG_CALIB_TP = 0x88  # 0x88..0x9F: dig_T1..dig_P9; 0xA1: dig_H1
REG_CALIB_H = 0xE1  # 0xE1..0xE7: dig_H2..dig_H6
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_DATA = 0xF7  # press[3], temp[3], hum[2]
#: ctrl_meas: osrs_t = 1x (bits 7..5), osrs_p = 1x (bits 4..2), mode = forced (01).
CTRL_MEAS_FORCED_1X = 0b001_001_01
CTRL_HUM_1X = 0b001
STATUS_MEASURING = 0x08
#: A 1x/1x/1x measurement takes at most 9.3 ms (datasheet 9.1); wait up to this long.
MEASURE_TIMEOUT_S = 0.1
#: The ADC value of a skipped measurement.
SKIPPED_20BIT = 0x80000
SKIPPED_16BIT = 0x8000


class Calibration(NamedTuple):
    t1: int
    t2: int
    t3: int
    p1: int
    p2: int
    p3: int
    p4: int
    p5: int
    p6: int
    p7: int
    p8: int
    p9: int
    h1: int = 0
    h2: int = 0
    h3: int = 0
    h4: int = 0
    h5: int = 0
    h6: int = 0


def parse_calibration(tp: bytes, h1: int, h: Optional[bytes]) -> Calibration:
    """Calibration from registers 0x88..0x9F (``tp``), 0xA1 (``h1``) and 0xE1..0xE7 (``h``)."""
    t_p: tuple[int, ...] = struct.unpack("<HhhHhhhhhhhh", tp)
    if h is None:
        return Calibration._make((*t_p, 0, 0, 0, 0, 0, 0))
    h2, h3 = struct.unpack_from("<hB", h, 0)
    e4, e5, e6 = h[3], h[4], h[5]
    # dig_H4 and dig_H5 are 12-bit signed values split across three registers.
    h4 = (_s8(e4) << 4) | (e5 & 0x0F)
    h5 = (_s8(e6) << 4) | (e5 >> 4)
    return Calibration._make((*t_p, h1, h2, h3, h4, h5, _s8(h[6])))


def _s8(b: int) -> int:
    return b - 256 if b > 127 else b


def compensate_temperature(c: Calibration, adc_t: int) -> tuple[float, float]:
    """(°C, t_fine) from the raw temperature."""
    var1 = (adc_t / 16384.0 - c.t1 / 1024.0) * c.t2
    var2 = ((adc_t / 131072.0 - c.t1 / 8192.0) * (adc_t / 131072.0 - c.t1 / 8192.0)) * c.t3
    # The datasheet passes t_fine on as a 32-bit integer (C truncation).
    return (var1 + var2) / 5120.0, float(int(var1 + var2))


def compensate_pressure(c: Calibration, adc_p: int, t_fine: float) -> float:
    """Pa from the raw pressure and the temperature's ``t_fine``."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * c.p6 / 32768.0
    var2 = var2 + var1 * c.p5 * 2.0
    var2 = var2 / 4.0 + c.p4 * 65536.0
    var1 = (c.p3 * var1 * var1 / 524288.0 + c.p2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * c.p1
    if var1 == 0.0:  # a blank calibration: the datasheet returns 0 to avoid dividing by it
        raise DriverError("pressure calibration is blank (dig_P1 = 0)")
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = c.p9 * p * p / 2147483648.0
    var2 = p * c.p8 / 32768.0
    return p + (var1 + var2 + c.p7) / 16.0


def compensate_humidity(c: Calibration, adc_h: int, t_fine: float) -> float:
    """%RH (0..100) from the raw humidity and the temperature's ``t_fine``."""
    h = t_fine - 76800.0
    h = (adc_h - (c.h4 * 64.0 + c.h5 / 16384.0 * h)) * (
        c.h2 / 65536.0 * (1.0 + c.h6 / 67108864.0 * h * (1.0 + c.h3 / 67108864.0 * h))
    )
    h = h * (1.0 - c.h1 * h / 524288.0)
    return min(max(h, 0.0), 100.0)


class BME280:
    """A BME280 or BMP280 at ``address`` (0x76 or 0x77) on ``bus``.

    Readings: ``<name>.temperature`` (°C), ``<name>.pressure`` (hPa) and, on a
    BME280, ``<name>.humidity`` (%). ``chip`` says which chip answered after the
    first successful read.
    """

    def __init__(
        self,
        name: str,
        bus: I2CBus,
        address: int = 0x76,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if address not in ADDRESSES:
            raise ValueError(f"a BME280 is at 0x76 or 0x77, not 0x{address:02x}")
        self.name = name
        self.bus = bus
        self.address = address
        self.sleep = sleep
        self.chip: Optional[str] = None
        self._calibration: Optional[Calibration] = None

    def _setup(self) -> Calibration:
        chip_id = self.bus.read(self.address, REG_CHIP_ID, 1)[0]
        if chip_id == CHIP_ID_BME280:
            chip = "BME280"
        elif chip_id == CHIP_ID_BMP280:
            chip = "BMP280"
        else:
            raise DriverError(f"no BME280/BMP280 at 0x{self.address:02x} (chip id 0x{chip_id:02x})")
        tp = self.bus.read(self.address, REG_CALIB_TP, 24)
        h = None
        h1 = 0
        if chip == "BME280":
            h1 = self.bus.read(self.address, 0xA1, 1)[0]
            h = self.bus.read(self.address, REG_CALIB_H, 7)
        self.chip = chip
        return parse_calibration(tp, h1, h)

    def read(self) -> list[Sample]:
        try:
            return self._read()
        except DriverError:
            # Read the chip id and calibration again next time: the sensor may
            # have been replaced or power-cycled.
            self._calibration = None
            raise

    def _read(self) -> list[Sample]:
        if self._calibration is None:
            self._calibration = self._setup()
        cal = self._calibration
        humid = self.chip == "BME280"
        if humid:  # ctrl_hum takes effect only after a write to ctrl_meas (datasheet 5.4.3)
            self.bus.write(self.address, REG_CTRL_HUM, bytes([CTRL_HUM_1X]))
        self.bus.write(self.address, REG_CTRL_MEAS, bytes([CTRL_MEAS_FORCED_1X]))
        deadline = time.monotonic() + MEASURE_TIMEOUT_S
        while self.bus.read(self.address, REG_STATUS, 1)[0] & STATUS_MEASURING:
            if time.monotonic() > deadline:
                raise DriverError(f"0x{self.address:02x}: measurement did not finish")
            self.sleep(0.002)
        raw = self.bus.read(self.address, REG_DATA, 8 if humid else 6)
        adc_p = (raw[0] << 12) | (raw[1] << 4) | (raw[2] >> 4)
        adc_t = (raw[3] << 12) | (raw[4] << 4) | (raw[5] >> 4)
        if adc_t == SKIPPED_20BIT or adc_p == SKIPPED_20BIT:
            raise DriverError(f"0x{self.address:02x}: no measurement data (sensor reset?)")
        temperature, t_fine = compensate_temperature(cal, adc_t)
        pressure = compensate_pressure(cal, adc_p, t_fine)
        samples = [
            Sample(f"{self.name}.temperature", temperature, "°C"),
            Sample(f"{self.name}.pressure", pressure / 100.0, "hPa"),
        ]
        if humid:
            adc_h = (raw[6] << 8) | raw[7]
            if adc_h == SKIPPED_16BIT:
                raise DriverError(f"0x{self.address:02x}: no humidity data (sensor reset?)")
            samples.append(
                Sample(f"{self.name}.humidity", compensate_humidity(cal, adc_h, t_fine), "%")
            )
        return samples
