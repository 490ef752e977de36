"""Run the dataflow as a service: signals, metrics reporting, clean shutdown.

SIGTERM or SIGINT asks the MQTT source to stop taking messages; the dataflow then
drains what it already holds, closes every open window (end of input), writes
them and exits. A second SIGINT aborts at once.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from types import FrameType
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from bytewax._bytewax import cli_main
from fieldline_edge.contract import TELEMETRY_SUBSCRIPTION
from paho.mqtt.enums import CallbackAPIVersion

from fieldline_pipeline.connectors.influx import InfluxSink, make_writer
from fieldline_pipeline.connectors.mqtt import (
    KEEPALIVE_S,
    MQTTSink,
    MQTTSource,
    subscribed_clients,
)
from fieldline_pipeline.dataflow import build_dataflow
from fieldline_pipeline.metrics import METRICS, METRICS_TOPIC_PREFIX, MetricsReporter
from fieldline_pipeline.settings import PipelineSettings

log = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("%s received: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def _metrics_publisher(settings: PipelineSettings) -> tuple[mqtt.Client, Any]:
    s = settings.mqtt
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{s.client_id_prefix}-metrics-{settings.instance}",
        protocol=mqtt.MQTTv311,
    )
    if s.broker.username is not None:
        client.username_pw_set(s.broker.username, s.broker.password)
    if s.broker.tls:
        client.tls_set()
    client.connect_async(s.broker.host, s.broker.port, keepalive=KEEPALIVE_S)
    client.loop_start()
    topic = f"{METRICS_TOPIC_PREFIX}/{settings.instance}"

    def publish(snap: dict[str, Any]) -> None:
        snap["subscribed_clients"] = subscribed_clients()
        snap["workers"] = settings.workers
        if not snap.get("done"):
            client.publish(topic, orjson.dumps(snap), qos=0)
            return
        # The final report goes with QoS 1 and is waited for: watchers rely on "done".
        info = client.publish(topic, orjson.dumps(snap), qos=1)
        try:
            info.wait_for_publish(timeout=5)
        except (ValueError, RuntimeError):
            log.warning("final metrics report not delivered: broker unreachable")

    return client, publish


def run_pipeline(settings: PipelineSettings) -> None:
    """Run until stopped (blocking)."""
    stop = settings.mqtt.stop
    install_signal_handlers(stop)
    log.info("starting pipeline: %r", settings)
    flow = build_dataflow(
        MQTTSource(settings.mqtt, TELEMETRY_SUBSCRIPTION),
        InfluxSink(settings.influx, settings.write),
        MQTTSink(settings.mqtt, "out"),
        settings.windows,
    )
    metrics_writer = make_writer(settings.influx, settings.write)
    client, publish = _metrics_publisher(settings)
    reporter = MetricsReporter(
        METRICS, settings.instance, publish, metrics_writer.write, settings.metrics_interval_s
    )
    reporter.start()
    try:
        cli_main(  # type: ignore[no-untyped-call]
            flow,
            workers_per_process=settings.workers,
            epoch_interval=timedelta(seconds=settings.epoch_interval_s),
        )
    finally:
        reporter.stop()
        metrics_writer.close()
        client.disconnect()
        client.loop_stop()
        log.info("pipeline stopped: %s", METRICS.snapshot())
