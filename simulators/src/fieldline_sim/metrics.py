"""Live metrics of a simulator run, published once per second for dashboards and tests.

Topic ``fieldline/_metrics/sim/<instance>``, QoS 0, not retained. The payload is
a JSON object: ``published_readings``, ``published_messages``,
``acked_messages``, ``readings_per_s`` (over the last interval; in the final
message, over the whole run), ``devices``, ``ts`` (Unix ms) and, in the last
message of a run only, ``"done": true``.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import NamedTuple

from fieldline_edge import contract

METRICS_TOPIC_PREFIX = contract.TOPIC_ROOT + "/_metrics/sim"
#: Seconds between two metrics messages (and progress lines).
METRICS_INTERVAL_S = 1.0
# fieldline/_metrics/sim/<instance> has the shape of fieldline/<site>/<device>/<kind>:
# an instance named like a kind would look like a device topic to wildcard subscribers.
_RESERVED_INSTANCES = {"telemetry", "status", "alerts"}


class FleetMetrics(NamedTuple):
    published_readings: int
    published_messages: int
    acked_messages: int
    readings_per_s: float
    devices: int
    ts: int
    done: bool = False

    def to_json(self) -> bytes:
        body: dict[str, object] = {
            "published_readings": self.published_readings,
            "published_messages": self.published_messages,
            "acked_messages": self.acked_messages,
            "readings_per_s": round(self.readings_per_s, 3),
            "devices": self.devices,
            "ts": self.ts,
        }
        if self.done:
            body["done"] = True
        return json.dumps(body, separators=(",", ":")).encode()


def metrics_topic(instance: str) -> str:
    return f"{METRICS_TOPIC_PREFIX}/{check_instance(instance)}"


def check_instance(instance: str) -> str:
    """Return ``instance`` if it can be the metrics topic's last level, else raise ValueError."""
    if not contract.is_valid_id(instance) or instance in _RESERVED_INSTANCES:
        raise ValueError(
            f"instance {instance!r} must be 1-64 letters, digits, '_', '.', '-', not starting"
            f" with '_', '.' or '-', and not one of {sorted(_RESERVED_INSTANCES)}"
        )
    return instance


def default_instance() -> str:
    """``<hostname>-<pid>``, made into a valid id."""
    host = re.sub(r"[^\w.\-]", "-", socket.gethostname()).lstrip("_.-")[:48] or "sim"
    return f"{host}-{os.getpid()}"
