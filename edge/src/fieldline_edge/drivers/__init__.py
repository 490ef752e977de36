"""Sensor drivers: kernel files (sysfs, 1-Wire, /proc), I2C, files and commands.

Each driver is a class with a ``name`` and ``read() -> list[Sample]``; see
:mod:`fieldline_edge.drivers.base`. :mod:`fieldline_edge.config` builds them
from the ``[[sensors]]`` tables of the agent's configuration.
"""

from fieldline_edge.drivers.base import Driver, DriverError, Sample
from fieldline_edge.drivers.bme280 import BME280
from fieldline_edge.drivers.cpu import CpuTemperature
from fieldline_edge.drivers.ds18b20 import DS18B20
from fieldline_edge.drivers.i2c import I2CBus, LinuxI2CBus
from fieldline_edge.drivers.reader import CommandReader, Extractor, FileReader
from fieldline_edge.drivers.simulated import Simulated
from fieldline_edge.drivers.system import SystemMetrics

__all__ = [
    "BME280",
    "DS18B20",
    "CommandReader",
    "CpuTemperature",
    "Driver",
    "DriverError",
    "Extractor",
    "FileReader",
    "I2CBus",
    "LinuxI2CBus",
    "Sample",
    "Simulated",
    "SystemMetrics",
]
