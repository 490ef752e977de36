"""Realistic sensor signals, generated with numpy for every device of a group per tick.

- temperature: a diurnal cycle (peak at ``peak_hour`` UTC) plus weather, an AR(1)
  process with time constant ``weather_tau_s``, plus measurement noise; each
  device has its own base level (``mean`` +- ``spread``).
- humidity: falls as temperature rises (``coupling`` %/°C around the device's
  base temperature) plus its own AR(1) weather; clipped to 0..100. It follows the
  group's first temperature sensor, or a hidden one if the group has none.
- vibration and current: a machine cycling on and off (group keys ``cycle_s`` and
  ``duty``; each device's cycle is 0.8-1.2 x ``cycle_s`` with its own phase);
  both sensors of a device follow the same machine.
- battery: exponential discharge from ``full`` towards ``empty``, reaching ~5 %
  of the way after ``life_days``; each device starts at its own age.
- anything else (generic): a sine of ``period_s`` plus AR(1) noise.

Determinism: tick ``k`` of a group depends only on (seed, group index, k): the
draws come from one generator per group, consumed in tick order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fieldline_sim.scenario import KIND_PARAMS, GroupConfig, SensorConfig

Array = npt.NDArray[np.float64]
DAY_S = 86_400.0


class _AR1:
    """x[k+1] = phi x[k] + sigma sqrt(1 - phi^2) e: stationary sd ``sigma``, time constant tau."""

    def __init__(self, init: np.random.Generator, n: int, sigma: float, tau_s: float, dt: float):
        self.phi = math.exp(-dt / tau_s) if tau_s > 0 else 0.0
        self.innovation = sigma * math.sqrt(1.0 - self.phi**2)
        self.x: Array = init.standard_normal(n) * sigma

    def step(self, z: Array) -> Array:
        self.x = self.phi * self.x + self.innovation * z
        return self.x


@dataclass
class _Plan:
    """One sensor's per-device constants and state; which fields matter depends on the kind."""

    sensor: SensorConfig
    noise_row: int
    weather_row: int = -1
    weather: _AR1 | None = None
    base: Array = field(default_factory=lambda: np.zeros(0))
    level: Array = field(default_factory=lambda: np.zeros(0))
    tau: Array = field(default_factory=lambda: np.zeros(0))
    age0: Array = field(default_factory=lambda: np.zeros(0))

    def weather_step(self, z: Array) -> Array:
        assert self.weather is not None
        return self.weather.step(z[self.weather_row])


class GroupSignals:
    """The true (fault-free, unrounded) values of every sensor of every device of a group."""

    def __init__(self, group: GroupConfig, seed: int, group_index: int, start_ms: int) -> None:
        self.group = group
        n = group.count
        self.n = n
        self.dt = 1.0 / group.rate_hz
        self.start_s = start_ms / 1000.0
        init = np.random.default_rng([seed, group_index, 0])
        self._rng = np.random.default_rng([seed, group_index, 1])
        self._rows = 0
        # Machine cycle, shared by vibration and current.
        self.cycle_s: Array = group.cycle_s * init.uniform(0.8, 1.2, n)
        self.phase: Array = init.uniform(0.0, 1.0, n)
        temperature = next((s for s in group.sensors if s.kind == "temperature"), None)
        self._climate: _Plan | None = None
        if temperature is None and any(s.kind == "humidity" for s in group.sensors):
            hidden = SensorConfig("_climate", "temperature", "", KIND_PARAMS["temperature"])
            self._climate = self._plan(hidden, init)
        self._plans = [self._plan(s, init) for s in group.sensors]
        if temperature is not None:
            self._climate = self._plans[group.sensors.index(temperature)]

    def _row(self) -> int:
        self._rows += 1
        return self._rows - 1

    def _plan(self, s: SensorConfig, init: np.random.Generator) -> _Plan:
        p, n, dt = s.params, self.n, self.dt
        plan = _Plan(s, self._row())
        if s.kind in ("temperature", "humidity", "generic"):
            plan.weather_row = self._row()
            plan.weather = _AR1(init, n, p["weather_sd"], p["weather_tau_s"], dt)
        if s.kind in ("temperature", "humidity"):
            plan.base = p["mean"] + p["spread"] * init.standard_normal(n)
        elif s.kind in ("vibration", "current"):
            plan.level = p["on_level"] * init.uniform(0.85, 1.15, n)
        elif s.kind == "battery":
            plan.tau = p["life_days"] * DAY_S / 3.0 * init.uniform(0.8, 1.2, n)
            plan.age0 = init.uniform(0.0, 0.5, n) * p["life_days"] * DAY_S
            plan.level = p["full"] - init.uniform(0.0, 0.05, n)
        else:
            plan.base = init.uniform(0.0, 2 * math.pi, n)  # the wave's phase
        return plan

    def machine_on(self, t_s: float) -> npt.NDArray[np.bool_]:
        cycles = (t_s - self.start_s) / self.cycle_s + self.phase
        on: npt.NDArray[np.bool_] = (cycles - np.floor(cycles)) < self.group.duty
        return on

    def step(self, ts_ms: int) -> Array:
        """Values at virtual time ``ts_ms``: shape (devices, sensors), in sensor order."""
        t_s = ts_ms / 1000.0
        z = self._rng.standard_normal((self._rows, self.n))
        hour = (t_s % DAY_S) / 3600.0
        # Humidity follows the temperature without its measurement noise.
        climate = self._climate
        climate_true = self._temperature(climate, hour, z) if climate is not None else None
        out = np.empty((self.n, len(self._plans)))
        on = None
        for j, plan in enumerate(self._plans):
            p, kind = plan.sensor.params, plan.sensor.kind
            noise = p["noise"] * z[plan.noise_row]
            if kind == "temperature":
                true = climate_true if plan is climate else self._temperature(plan, hour, z)
                assert true is not None
                out[:, j] = true + noise
            elif kind == "humidity":
                assert climate is not None
                assert climate_true is not None
                dry = p["coupling"] * (climate_true - climate.base)
                h = plan.base - dry + plan.weather_step(z) + noise
                out[:, j] = np.clip(h, 0.0, 100.0)
            elif kind in ("vibration", "current"):
                if on is None:
                    on = self.machine_on(t_s)
                level = np.where(on, plan.level, p["off_level"])
                if kind == "vibration":
                    out[:, j] = np.abs(level * (1.0 + noise))
                else:
                    out[:, j] = np.maximum(level + noise, 0.0)
            elif kind == "battery":
                charge = np.exp(-(plan.age0 + (t_s - self.start_s)) / plan.tau)
                out[:, j] = p["empty"] + (plan.level - p["empty"]) * charge + noise
            else:
                wave = np.sin(2 * math.pi * t_s / p["period_s"] + plan.base)
                out[:, j] = p["mean"] + p["amplitude"] * wave + plan.weather_step(z) + noise
        return out

    def _temperature(self, plan: _Plan, hour: float, z: Array) -> Array:
        p = plan.sensor.params
        diurnal = p["amplitude"] * math.cos(2 * math.pi * (hour - p["peak_hour"]) / 24)
        true: Array = plan.base + diurnal + plan.weather_step(z)
        return true
