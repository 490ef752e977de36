"""Fieldline's benchmark suite (``make bench``); see docs/performance.md."""
