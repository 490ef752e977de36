"""Fieldline edge: the agent that runs on devices, and the event contract it owns."""

__version__ = "0.1.0"
