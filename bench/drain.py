"""(a) The drain limit: how fast the broker delivers to a paho subscriber that does nothing.

The subscriber has a persistent session (clean session off) with a QoS 1
shared subscription, as the pipeline's intake does. :func:`create_session`
subscribes and leaves; the backlog is then published into the session; then
:func:`subscriber_process`, in its own process, resumes the session, lets paho
acknowledge each message as it arrives, and reports the time of the first and
of the last of a fixed count.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from fieldline_edge.contract import TELEMETRY_SUBSCRIPTION
from paho.mqtt.enums import CallbackAPIVersion


def create_session(host: str, port: int, client_id: str, group: str) -> None:
    """Subscribe in a persistent session and disconnect: the broker now keeps
    QoS 1 messages for ``client_id``."""
    subscribed = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    client.subscribe(f"$share/{group}/{TELEMETRY_SUBSCRIPTION}", qos=1)
    if not subscribed.wait(30):
        raise RuntimeError("the broker did not acknowledge the subscription")
    client.disconnect()
    client.loop_stop()


def discard_session(host: str, port: int, client_id: str) -> None:
    """End ``client_id``'s persistent session (a clean-session connect, MQTT 3.1.1
    §3.1.2.4), so that the broker stops queueing later runs' messages for it."""
    connected = threading.Event()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip
    client.on_connect = lambda *_a: connected.set()
    client.connect(host, port, keepalive=60)
    client.loop_start()
    connected.wait(30)
    client.disconnect()
    client.loop_stop()


def subscriber_process(
    host: str, port: int, client_id: str, group: str, count: int, go: Any, results: Any
) -> None:
    """Count ``count`` messages; report ``("drained", first_t, last_t, received)``."""
    done = threading.Event()
    subscribed = threading.Event()
    state = {"n": 0, "first": 0.0, "last": 0.0}

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
        c.subscribe(f"$share/{group}/{TELEMETRY_SUBSCRIPTION}", qos=1)

    def on_subscribe(*_args: Any) -> None:
        subscribed.set()

    def on_message(_c: mqtt.Client, _u: Any, _m: mqtt.MQTTMessage) -> None:
        n = state["n"] = state["n"] + 1
        if n == 1:
            state["first"] = time.time()
        if n >= count:
            state["last"] = time.time()
            done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
        protocol=mqtt.MQTTv311,
    )  # fmt: skip
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_start()
    subscribed.wait(30)
    results.put(("ready", client_id, 0.0, 0.0))
    ok = done.wait(600)
    client.disconnect()
    client.loop_stop()
    results.put(("drained" if ok else "timeout", state["first"], state["last"], state["n"]))
