"""InfluxDB refusing points never stops the pipeline; refusing everything stops it plainly.

The real ``fieldline pipeline run`` against the real Mosquitto and InfluxDB 1.x:

- a database whose retention policy keeps one hour, and a device that sends a
  reading two hours old and then current ones: InfluxDB refuses the old window
  ("partial write: points beyond retention policy"). The pipeline stores the
  current windows, dead-letters the old one with InfluxDB's reason, counts it,
  and goes on; killed and restarted on the same state dir, it runs on.
- a database that does not exist: the pipeline exits 1 with one line that names
  the problem, not a traceback.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.contract import (
    DEAD_LETTER_TOPIC_PREFIX,
    Reading,
    decode_dead_letter,
    encode_telemetry,
    telemetry_topic,
)
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.subscriber import Received, Subscriber
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [pytest.mark.services, pytest.mark.e2e]

HOUR_MS = 3_600_000
WAIT_S = 60.0
PIPELINE_ARGS = ("--window-s", "1", "--lateness-s", "0")
REFUSED_TOPIC = f"{DEAD_LETTER_TOPIC_PREFIX}/influx_refused"


class Device:
    """Publishes telemetry of one device (QoS 1, each message acknowledged)."""

    def __init__(self, broker: Mosquitto, site: str, device: str = "dev-1") -> None:
        self.topic = telemetry_topic(site, device)
        self.device = device
        self.seq = int(time.time() * 1000)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{site}")
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def send(self, readings: list[Reading]) -> None:
        self.seq += 1
        info = self.client.publish(self.topic, encode_telemetry(self.device, self.seq, readings), 1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(predicate: Any, timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return bool(predicate())


def _windows(influxdb: InfluxDB, db: str, site: str) -> list[dict[str, Any]]:
    return influxdb.points(
        f'SELECT "count", "mean" FROM reading_window WHERE site = \'{site}\' ORDER BY time', db
    )


def _refused_windows(received: list[Received], site: str) -> list[Received]:
    return [m for m in received if m.topic == REFUSED_TOPIC and f"site={site}" in str(m.payload)]


def test_old_reading_beyond_retention_is_dead_lettered_and_the_pipeline_goes_on(
    mosquitto: Mosquitto, influxdb: InfluxDB, influx_db: str, start_pipeline: Any
) -> None:
    influxdb.query(
        f'CREATE RETENTION POLICY "one_hour" ON "{influx_db}" DURATION 1h REPLICATION 1 DEFAULT'
    )
    site = f"rp-{secrets.token_hex(3)}"
    dead = Subscriber(mosquitto.url, [f"{DEAD_LETTER_TOPIC_PREFIX}/#"])
    pipeline = start_pipeline(*PIPELINE_ARGS)
    device = Device(mosquitto, site)
    try:
        now_ms = int(time.time() * 1000)
        old_ms = now_ms - 2 * HOUR_MS
        device.send([Reading("t", old_ms, 7.5, "C")])
        # Current readings close the old window (event time), then their own.
        device.send([Reading("t", now_ms - 3000 + i, float(i), "C") for i in range(5)])
        device.send([Reading("t", now_ms + 2000, 1.0, "C")])

        refused = dead.wait_for(lambda got: len(_refused_windows(got, site)) >= 1)
        letter = decode_dead_letter(_refused_windows(refused, site)[0].payload)
        assert letter.reason == "influx_refused"
        assert "points beyond retention policy" in letter.detail
        assert letter.topic == f"influxdb:{influx_db}"
        line = letter.payload.decode()
        assert line.startswith("reading_window,")
        assert f"site={site}" in line
        assert line.endswith(f" {old_ms // 1000 * 1000}")  # the window start, in ms
        assert "count=1i" in line

        # The pipeline goes on: the current window is stored, the old one is not.
        assert _wait(lambda: any(w["count"] == 5 for w in _windows(influxdb, influx_db, site)))
        assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
        assert all(w["count"] != 1 or w["mean"] != 7.5 for w in _windows(influxdb, influx_db, site))
        assert pipeline.watch.wait_for(
            lambda w: w.latest("pipeline").get(pipeline.instance, {}).get("refused_points") == 1,
            WAIT_S,
        )
        metrics = pipeline.metrics()
        assert metrics["dead_letters_by_reason"] == {"influx_refused": 1}
        # One log line for the refusal, with the count and the reason.
        refusals = [ln for ln in pipeline.log_text().splitlines() if "InfluxDB refused" in ln]
        assert len(refusals) == 1
        assert "refused 1 of" in refusals[0]
        assert "(influx_refused)" in refusals[0]
        # ... and the count in the pipeline measurement, for Grafana.
        q = f"SELECT last(refused_points) FROM pipeline WHERE instance = '{pipeline.instance}'"
        assert _wait(lambda: [r["last"] for r in influxdb.points(q, influx_db)] == [1])

        # A crash now and a restart on the same state dir: the replay may write
        # the refused window again; that is refused again, never fatal.
        pipeline.kill()
        pipeline.restart()
        assert pipeline.watch.wait_for(
            lambda w: (
                bool(w.latest("pipeline").get(pipeline.instance, {}).get("subscribed_clients"))
                and pipeline.proc.poll() is None
            ),
            WAIT_S,
        ), pipeline.log_text()[-3000:]
        later_ms = int(time.time() * 1000)
        device.send([Reading("t", later_ms + 5000 + i, 2.0, "C") for i in range(3)])
        device.send([Reading("t", later_ms + 8000, 1.0, "C")])
        assert _wait(lambda: any(w["count"] == 3 for w in _windows(influxdb, influx_db, site)))
        assert pipeline.proc.poll() is None, pipeline.log_text()[-3000:]
        assert pipeline.stop() == 0, pipeline.log_text()[-3000:]
        assert "Traceback" not in pipeline.log_text()
    finally:
        device.close()
        dead.close()


def test_missing_database_stops_with_one_line_naming_it(
    fresh_mosquitto: Mosquitto, start_pipeline: Any
) -> None:
    missing = f"missing_{secrets.token_hex(3)}"
    site = f"nodb-{secrets.token_hex(3)}"
    # A broker of its own: on the shared one, other tests' retained statuses would
    # make the first write (and so the stop) before the pipeline reports it started.
    # The last --influx-db wins over the fixture's.
    pipeline = start_pipeline(
        *PIPELINE_ARGS, "--influx-db", missing, broker_url=fresh_mosquitto.url
    )
    device = Device(fresh_mosquitto, site)
    try:
        now_ms = int(time.time() * 1000)
        device.send([Reading("t", now_ms - 3000, 1.0, "C")])
        device.send([Reading("t", now_ms + 2000, 1.0, "C")])
        assert _wait(lambda: pipeline.proc.poll() is not None), pipeline.log_text()[-3000:]
    finally:
        device.close()
    assert pipeline.proc.returncode == 1
    log = pipeline.log_text()
    fatal = [ln for ln in log.splitlines() if "InfluxDB refuses every write" in ln]
    assert len(fatal) == 1, log[-3000:]
    assert f'database not found: "{missing}"' in fatal[0]
    assert "Traceback" not in log
    assert "╭" not in log  # no rich traceback box either
