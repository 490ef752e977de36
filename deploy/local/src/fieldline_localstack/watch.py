"""Watch the services' metrics reports on MQTT (``fieldline/_metrics/<service>/<instance>``).

The simulator and the pipeline each publish a JSON snapshot of their counters
every second; this keeps the latest one per service instance, for the demo's
live view and for tests that wait for the pipeline to catch up.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

METRICS_FILTER = "fieldline/_metrics/#"


class MetricsWatcher:
    """Latest metrics snapshot per ``(service, instance)``; a context manager."""

    def __init__(
        self,
        host: str,
        port: int,
        client_id: str = "fieldline-watch",
        *,
        auth: tuple[str, str] | None = None,
        ca_file: str | None = None,
    ) -> None:
        """``auth`` is (user, password) on a secured broker; ``ca_file`` turns on TLS."""
        self._lock = threading.Condition()
        self._latest: dict[tuple[str, str], dict[str, Any]] = {}
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if auth is not None:
            self._client.username_pw_set(*auth)
        if ca_file is not None:
            self._client.tls_set(ca_certs=ca_file)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not rc.is_failure:
            client.subscribe(METRICS_FILTER, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 4:
            return
        try:
            snap = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self._latest[(parts[2], parts[3])] = snap
            self._lock.notify_all()

    def latest(self, service: str) -> dict[str, dict[str, Any]]:
        """Snapshots of every instance of ``service``, by instance name."""
        with self._lock:
            return {inst: dict(s) for (svc, inst), s in self._latest.items() if svc == service}

    def total(self, service: str, key: str) -> int:
        """Sum of a counter over every instance of ``service``."""
        return sum(int(s.get(key) or 0) for s in self.latest(service).values())

    def wait_for(self, predicate: Callable[[MetricsWatcher], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(self)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                self._lock.release()
                try:
                    if predicate(self):
                        return True
                finally:
                    self._lock.acquire()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.5))

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MetricsWatcher:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
