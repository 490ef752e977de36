"""Synthetic telemetry for the benchmarks: generation, expected windows, publishers.

Messages follow the event contract (``fieldline_edge.contract.encode_telemetry``).
Each device sends ``msgs_per_device`` messages of ``batch`` readings, the two
sensors alternating; reading ``i`` of a device is stamped ``base_ts + i * dt_ms``
and its value is a multiple of 1/8, so sums are exact in floating point and the
expected windows can be computed from the spec alone.

Publishers run in their own processes (``multiprocessing`` spawn), one paho
client each, QoS 1, as fast as the broker acknowledges, or paced at a rate with
readings stamped at their publish time (for latency).
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from fieldline_edge.contract import (
    SCHEMA_TELEMETRY_V1,
    Reading,
    encode_telemetry,
    telemetry_topic,
)
from paho.mqtt.enums import CallbackAPIVersion

SENSORS = ("temperature", "humidity")
UNITS = ("C", "%")
#: Unacknowledged QoS 1 messages a publisher keeps in flight.
PUBLISH_INFLIGHT = 1000
#: Messages handed to paho and not yet acknowledged, at most: paho's message ids
#: are 16 bits (MQTT 3.1.1 §2.3.1), so more than 65,535 would collide.
MAX_OUTSTANDING = 20_000
#: The same bound for the paced (latency) publishers: about 30 ms of their rate.
PACED_OUTSTANDING = 200


def device_name(index: int) -> str:
    return f"b{index:05d}"


@dataclass(frozen=True)
class LoadSpec:
    """What one publisher sends: devices ``first_device .. first_device+devices-1``."""

    site: str
    first_device: int
    devices: int
    msgs_per_device: int
    batch: int
    base_ts: int
    dt_ms: int = 1
    seq0: int = 1
    schema: str = SCHEMA_TELEMETRY_V1

    @property
    def messages(self) -> int:
        return self.devices * self.msgs_per_device

    @property
    def readings(self) -> int:
        return self.messages * self.batch


def value(device: int, i: int) -> float:
    return float((i * 7 + device * 13) % 1000) / 8.0


#: Messages of a device before its first spike: the detectors' warm-up (100-150
#: readings of a series) at 5 readings of each sensor per message, with margin.
SPIKE_WARMUP_MSGS = 60


def spike(k: int) -> float:
    """The ``k``-th spike of a device (k >= 1). Each goes past the one before, so
    each leaves the recent range again (what the default detector looks for)."""
    return 1000.0 * k


def messages(spec: LoadSpec) -> list[tuple[str, bytes]]:
    """Every message of ``spec``, in publish order (round robin over the devices)."""
    topics = [
        telemetry_topic(spec.site, device_name(d))
        for d in range(spec.first_device, spec.first_device + spec.devices)
    ]
    out: list[tuple[str, bytes]] = []
    for k in range(spec.msgs_per_device):
        for n, topic in enumerate(topics):
            d = spec.first_device + n
            first = k * spec.batch
            readings = [
                Reading(SENSORS[i % 2], spec.base_ts + i * spec.dt_ms, value(d, i), UNITS[i % 2])
                for i in range(first, first + spec.batch)
            ]
            payload = encode_telemetry(device_name(d), spec.seq0 + k, readings, spec.schema)
            out.append((topic, payload))
    return out


def expected_windows(
    specs: list[LoadSpec], width_ms: int
) -> dict[tuple[str, str, int], tuple[int, float]]:
    """(device, sensor, window start) -> (count, sum of values), from the specs alone."""
    out: dict[tuple[str, str, int], tuple[int, float]] = {}
    for spec in specs:
        n = spec.msgs_per_device * spec.batch
        i = np.arange(n, dtype=np.int64)
        ts = spec.base_ts + i * spec.dt_ms
        start = ts - ts % width_ms
        for d in range(spec.first_device, spec.first_device + spec.devices):
            values = ((i * 7 + d * 13) % 1000).astype(np.float64) / 8.0
            for s, sensor in enumerate(SENSORS):
                sel = i % 2 == s
                starts, inverse, counts = np.unique(
                    start[sel], return_inverse=True, return_counts=True
                )
                sums = np.bincount(inverse, weights=values[sel])
                for w, c, total in zip(starts.tolist(), counts.tolist(), sums.tolist()):
                    out[(device_name(d), sensor, int(w))] = (int(c), float(total))
    return out


class _Acks:
    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def on_publish(self, *_args: Any) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.count < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True


def _connect(host: str, port: int, client_id: str, acks: _Acks) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(PUBLISH_INFLIGHT)
    client.max_queued_messages_set(0)
    client.on_publish = acks.on_publish
    client.connect(host, port, keepalive=60)
    client.loop_start()
    return client


def publish_process(
    host: str,
    port: int,
    client_id: str,
    spec: LoadSpec,
    go: Any,
    results: Any,
) -> None:
    """Encode ``spec`` first, then wait for ``go`` and publish everything (QoS 1)."""
    msgs = messages(spec)
    acks = _Acks()
    client = _connect(host, port, client_id, acks)
    results.put(("ready", client_id, 0.0, 0.0))
    go.wait()
    t0 = time.time()
    for n, (topic, payload) in enumerate(msgs):
        if n - acks.count >= MAX_OUTSTANDING:
            acks.wait(n - MAX_OUTSTANDING // 2, 600)
        info = client.publish(topic, payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise RuntimeError(f"publish failed: {mqtt.error_string(info.rc)}")
    ok = acks.wait(len(msgs), 600)
    t1 = time.time()
    client.disconnect()
    client.loop_stop()
    results.put(("done" if ok else "unacked", client_id, t0, t1))


def paced_process(
    host: str,
    port: int,
    client_id: str,
    site: str,
    first_device: int,
    devices: int,
    batch: int,
    msgs_per_s: float,
    duration_s: float,
    spike_every: int,
    go: Any,
    results: Any,
) -> None:
    """Publish ``msgs_per_s`` messages per second round robin over the devices for
    ``duration_s``, every reading stamped with its publish time (wall clock, ms).

    With ``spike_every``, every that many messages of a device (after a warm-up)
    carries a spike in its first reading (:func:`spike`), for alert latency.
    Reports ``(device, seq, ts, spike index or 0)`` of every message, for latency
    and ground truth, and the seconds it published for.

    At most :data:`PACED_OUTSTANDING` messages are handed to paho and not yet
    acknowledged: a publisher that cannot keep the rate falls behind (and says
    so, in its achieved rate) instead of queueing stamped messages in paho,
    which would count the publisher's own backlog as the pipeline's latency.
    """
    acks = _Acks()
    client = _connect(host, port, client_id, acks)
    results.put(("ready", client_id, []))
    go.wait()
    sent: list[tuple[int, int, int, int]] = []
    t0 = time.monotonic()
    n = 0
    seqs = [0] * devices
    spikes = [0] * devices
    while True:
        due = t0 + n / msgs_per_s
        now = time.monotonic()
        if due - t0 >= duration_s or now - t0 >= duration_s:
            break
        if due > now:
            time.sleep(due - now)
        if n - acks.count >= PACED_OUTSTANDING:
            acks.wait(n - PACED_OUTSTANDING + 1, 60)
        d = n % devices
        dev = first_device + d
        ts = int(time.time() * 1000)
        seqs[d] += 1
        readings = [Reading(SENSORS[j % 2], ts, value(dev, j), UNITS[j % 2]) for j in range(batch)]
        k = 0
        if spike_every and seqs[d] >= SPIKE_WARMUP_MSGS and seqs[d] % spike_every == 0:
            spikes[d] += 1
            k = spikes[d]
            readings[0] = readings[0]._replace(value=readings[0].value + spike(k))
        payload = encode_telemetry(device_name(dev), seqs[d], readings)
        client.publish(telemetry_topic(site, device_name(dev)), payload, qos=1)
        sent.append((dev, seqs[d], ts, k))
        n += 1
    elapsed = time.monotonic() - t0
    acks.wait(n, 120)
    client.disconnect()
    client.loop_stop()
    results.put(("done", client_id, sent, elapsed))


class Publishers:
    """Start publisher processes, let them prepare, then release them together."""

    def __init__(self) -> None:
        self._ctx = mp.get_context("spawn")
        self.go = self._ctx.Event()
        self.results: Any = self._ctx.Queue()
        self.procs: list[Any] = []

    def add(self, target: Any, *args: Any) -> None:
        p = self._ctx.Process(target=target, args=(*args, self.go, self.results), daemon=True)
        p.start()
        self.procs.append(p)

    def wait_ready(self, timeout_s: float = 300) -> None:
        for _ in self.procs:
            kind, *_rest = self.results.get(timeout=timeout_s)
            if kind != "ready":
                raise RuntimeError(f"publisher not ready: {kind}")

    def release(self) -> float:
        t = time.time()
        self.go.set()
        return t

    def join(self, timeout_s: float = 900) -> list[tuple[Any, ...]]:
        out = []
        deadline = time.monotonic() + timeout_s
        for _ in self.procs:
            try:
                out.append(self.results.get(timeout=max(1.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        return out
