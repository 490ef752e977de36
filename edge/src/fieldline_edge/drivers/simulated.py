"""A synthetic signal (for trying the agent out, demos and benchmarks)."""

from __future__ import annotations

from fieldline_edge.drivers.base import Sample
from fieldline_edge.sensors import SimulatedSensor


class Simulated:
    """:class:`~fieldline_edge.sensors.SimulatedSensor` as a driver."""

    def __init__(self, name: str, sensor: SimulatedSensor) -> None:
        self.name = name
        self.sensor = sensor

    def read(self) -> list[Sample]:
        return [Sample(self.name, self.sensor.read(), self.sensor.unit)]
