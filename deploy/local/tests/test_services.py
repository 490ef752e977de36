"""The local services run for real: MQTT round trips, persistence, restarts, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fieldline_localstack import services
from fieldline_localstack._http import http
from fieldline_localstack.cli import app
from fieldline_localstack.services import (
    InfluxDB,
    InfluxQueryError,
    LocalStack,
    Mosquitto,
    ServiceError,
    VictoriaMetrics,
)
from paho.mqtt.enums import CallbackAPIVersion
from typer.testing import CliRunner

pytestmark = pytest.mark.services


class _Inbox:
    """A paho client collecting messages; connected and subscribed on creation."""

    def __init__(self, broker: Mosquitto, client_id: str = "", clean: bool = True) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._got = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean
        )
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._got:
            self.messages.append(msg)
            self._got.notify_all()

    def subscribe(self, topic: str) -> None:
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(5), "no SUBACK"

    def wait_for(self, count: int, timeout_s: float = 5) -> list[mqtt.MQTTMessage]:
        with self._got:
            self._got.wait_for(lambda: len(self.messages) >= count, timeout_s)
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_mosquitto_round_trips_qos1(mosquitto: Mosquitto) -> None:
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    inbox = _Inbox(mosquitto)
    try:
        inbox.subscribe("rt/#")
        _publish(mosquitto, "rt/a", b"hello")
        [msg] = inbox.wait_for(1)
    finally:
        inbox.close()
    assert (msg.topic, msg.payload, msg.qos) == ("rt/a", b"hello", 1)


def test_persistent_session_survives_restart(fresh_mosquitto: Mosquitto) -> None:
    port, pid = fresh_mosquitto.port, fresh_mosquitto.pid
    inbox = _Inbox(fresh_mosquitto, client_id="keeper", clean=False)
    inbox.subscribe("keep/#")
    inbox.close()
    _publish(fresh_mosquitto, "keep/x", b"queued while away")

    fresh_mosquitto.restart()
    assert (fresh_mosquitto.port, fresh_mosquitto.running) == (port, True)
    assert fresh_mosquitto.pid != pid
    assert (fresh_mosquitto.state_dir / "mosquitto.db").exists()

    inbox = _Inbox(fresh_mosquitto, client_id="keeper", clean=False)
    try:
        [msg] = inbox.wait_for(1)
    finally:
        inbox.close()
    assert msg.payload == b"queued while away"


def test_kill_then_start_on_same_port(fresh_mosquitto: Mosquitto) -> None:
    fresh_mosquitto.kill()
    assert not fresh_mosquitto.running
    fresh_mosquitto.start()
    assert fresh_mosquitto.running
    _publish(fresh_mosquitto, "after/crash", b"ok")


def test_two_mosquittos_at_once(tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "a") as a, Mosquitto(tmp_path / "b") as b:
        assert a.port != b.port
        assert a.running
        assert b.running
        _publish(a, "t", b"1")
        _publish(b, "t", b"2")
    assert not a.running
    assert not b.running


def test_extra_config_is_appended(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, extra_config="max_keepalive 120")
    assert broker.config_text().endswith("max_keepalive 120\n")


def test_bad_config_raises_with_log_tail(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, extra_config="no_such_option 1")
    with pytest.raises(ServiceError, match="no_such_option"):
        broker.start()
    assert not broker.running


def test_missing_binary_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services.Mosquitto, "name", "mosquitto-not-installed")
    with pytest.raises(ServiceError, match=r"not found: install it with `sudo apt-get install"):
        services.Mosquitto("/nonexistent").start()


def test_influxdb_write_and_query(influxdb: InfluxDB, influx_db: str) -> None:
    influxdb.write("climate,site=lab temp=21.5 1700000000000", influx_db, precision="ms")
    result = influxdb.query("SELECT temp, site FROM climate", db=influx_db)
    [series] = result["results"][0]["series"]
    assert series["values"] == [[1700000000000, 21.5, "lab"]]


def test_influxdb_query_errors_raise(influxdb: InfluxDB, influx_db: str) -> None:
    with pytest.raises(InfluxQueryError, match="error parsing query"):
        influxdb.query("SELEKT 1", db=influx_db)
    with pytest.raises(InfluxQueryError, match="database not found"):
        influxdb.query("SELECT * FROM x", db="no_such_db")


def test_influx_db_fixture_is_fresh(influxdb: InfluxDB, influx_db: str) -> None:
    names = [v[0] for v in influxdb.query("SHOW DATABASES")["results"][0]["series"][0]["values"]]
    assert influx_db in names
    assert influxdb.points("SHOW MEASUREMENTS", influx_db) == []


def test_influxdb_data_survives_restart(tmp_path: Path) -> None:
    with InfluxDB(tmp_path) as db:
        db.create_database("keep")
        db.write("m v=1i 1000", "keep", precision="s")
        port = db.port
        db.restart()
        assert db.port == port
        assert db.points("SELECT v FROM m", "keep") == [{"time": 1000000, "v": 1}]


def test_victoriametrics_accepts_v2_write(victoriametrics: VictoriaMetrics) -> None:
    now_ns = time.time_ns()
    line = f"climate,site=lab,sensor=s1 temp=21.5 {now_ns}"
    status, _ = http(
        "POST", f"{victoriametrics.url}/api/v2/write?bucket=x&org=y", line.encode(), {}
    )
    assert status == 204
    [series] = victoriametrics.wait_export('climate_temp{sensor="s1"}')
    assert series["metric"] == {"__name__": "climate_temp", "site": "lab", "sensor": "s1"}
    assert series["values"] == [21.5]
    assert series["timestamps"] == [now_ns // 1_000_000]


def test_victoriametrics_wait_export_counts_samples(victoriametrics: VictoriaMetrics) -> None:
    url = f"{victoriametrics.url}/api/v2/write?bucket=x&org=y&precision=ms"
    now_ms = time.time_ns() // 1_000_000
    for i in range(3):
        status, _ = http("POST", url, f"multi,k=v x={i} {now_ms + i}".encode(), {})
        assert status == 204
    [series] = victoriametrics.wait_export("multi_x", samples=3)
    assert series["values"] == [0, 1, 2]


def test_local_stack_round_trip(tmp_path: Path) -> None:
    with LocalStack(tmp_path) as stack:
        state = json.loads((tmp_path / "stack.json").read_text())
        assert state["env"]["FIELDLINE_BROKER_URL"] == stack.mosquitto.url
        assert state["services"]["influxdb"]["pid"] == stack.influxdb.pid
        assert "fieldline" in json.dumps(stack.influxdb.query("SHOW DATABASES"))
        # Another process would do this: stop by the pids in stack.json.
        LocalStack.from_state(tmp_path).stop()
        assert not stack.mosquitto.running
        assert not stack.influxdb.running
    assert not (tmp_path / "stack.json").exists()


def test_cli_start_status_stop(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["start", "--dir", str(tmp_path)])
    try:
        assert result.exit_code == 0, result.output
        assert "export FIELDLINE_BROKER_URL=mqtt://127.0.0.1:" in result.output
        assert "export FIELDLINE_INFLUX_URL=http://127.0.0.1:" in result.output
        status = runner.invoke(app, ["status", "--dir", str(tmp_path)])
        assert status.exit_code == 0, status.output
        assert status.output.count("running") == 2
        again = runner.invoke(app, ["start", "--dir", str(tmp_path)])
        assert again.exit_code == 1
        assert "already running" in again.output
    finally:
        stopped = runner.invoke(app, ["stop", "--dir", str(tmp_path)])
    assert stopped.exit_code == 0, stopped.output
    after = runner.invoke(app, ["status", "--dir", str(tmp_path)])
    assert after.exit_code == 1
    assert "no stack" in after.output
    assert "Traceback" not in after.output


def test_cli_start_detaches_from_its_process(tmp_path: Path) -> None:
    # A real separate process: the servers must outlive it.
    cmd = [sys.executable, "-c", "from fieldline_localstack.cli import app; app()"]
    done = subprocess.run(
        [*cmd, "start", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    try:
        assert done.returncode == 0, done.stderr
        status = subprocess.run(
            [*cmd, "status", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60
        )
        assert status.returncode == 0, status.stdout + status.stderr
    finally:
        stop = subprocess.run(
            [*cmd, "stop", "--dir", str(tmp_path)], capture_output=True, text=True, timeout=60
        )
    assert stop.returncode == 0, stop.stderr


def test_cli_errors_are_clean(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["stop", "--dir", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "error:" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
