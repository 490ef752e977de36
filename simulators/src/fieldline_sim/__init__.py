"""Fieldline simulators: fleets of simulated devices publishing through the edge agent's code."""

__version__ = "0.1.0"
