"""``fieldline demo``: a broker, InfluxDB, a simulated fleet and the pipeline, watched live.

The services run as separate processes that know each other only through MQTT
topics, as they would in production: the demo starts them, watches their
metrics reports, and stops them in the order that loses nothing (simulator
first, then the pipeline once it has caught up, then the stack). The live view
goes to stderr; the last line on stdout is a JSON summary.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Annotated, Any

import paho.mqtt.client as mqtt
import typer
from paho.mqtt.enums import CallbackAPIVersion
from rich.console import Console
from rich.live import Live
from rich.table import Table

from fieldline_localstack._process import ServiceError
from fieldline_localstack.processes import fieldline_command, terminate
from fieldline_localstack.stack import LocalStack
from fieldline_localstack.watch import MetricsWatcher

SITE = "demo"
PIPELINE_INSTANCE = "demo-pipeline"
SIM_INSTANCE = "demo-sim"
#: Seconds kept at the end of a timed demo for draining and shutting down.
DRAIN_BUDGET_S = 5.0
#: How often a deliberately malformed event is sent, to show dead-lettering.
BAD_EVENT_EVERY_S = 5.0
STARTUP_TIMEOUT_S = 60.0
CATCH_UP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
#: A small fleet with injected faults (spikes, level shifts, stuck sensors), run
#: next to the plain one so that the pipeline's anomaly alerts show.
FAULTS_SCENARIO = Path(__file__).resolve().parents[4] / "simulators/scenarios/demo-anomalies.toml"
FAULTS_INSTANCE = "demo-faults"
ALERTS_SUBSCRIPTION = "fieldline/+/+/alerts"


class AlertFeed:
    """Counts the pipeline's alerts and keeps the latest few, for the live view."""

    def __init__(self, host: str, port: int) -> None:
        self.count = 0
        self.latest: deque[str] = deque(maxlen=5)
        self._lock = threading.Lock()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fieldline-demo-alerts")
        self._client.on_connect = lambda c, *_a: c.subscribe(ALERTS_SUBSCRIPTION, qos=1)
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        from fieldline_edge.contract import ContractError, decode_alert

        try:
            a = decode_alert(bytes(msg.payload))
        except ContractError:
            return
        when = time.strftime("%H:%M:%S", time.gmtime(a.ts / 1000))
        with self._lock:
            self.count += 1
            self.latest.appendleft(
                f"{when} {a.device}/{a.sensor} = {a.value:.4g}"
                f" (expected {a.expected:.4g}, score {a.score:.3f})"
            )

    def rows(self) -> tuple[int, list[str]]:
        with self._lock:
            return self.count, list(self.latest)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


_err = Console(stderr=True)


def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            fieldline_command(*args),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal reaches only the demo
        )


def _stop(proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    if proc is not None:
        terminate(proc, timeout_s)


def _view(
    watch: MetricsWatcher,
    started: float,
    stack: LocalStack,
    state: str,
    alerts: AlertFeed | None = None,
) -> Table:
    sim = watch.latest("sim").get(SIM_INSTANCE, {})
    pipe = watch.latest("pipeline").get(PIPELINE_INSTANCE, {})
    table = Table(title=f"Fieldline demo — {state} — {time.monotonic() - started:5.1f} s")
    table.add_column("service")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def row(service: str, name: str, value: Any) -> None:
        table.add_row(
            service,
            name,
            "—" if value is None else f"{value:,}" if isinstance(value, int) else str(value),
        )

    row("simulator", "devices", sim.get("devices"))
    row("simulator", "readings published", sim.get("published_readings"))
    rate = sim.get("readings_per_s")
    row("simulator", "readings/s", None if rate is None else f"{rate:,.0f}")
    row("pipeline", "messages in", pipe.get("messages"))
    row("pipeline", "readings in", pipe.get("readings"))
    row("pipeline", "windows written", pipe.get("windows"))
    row("pipeline", "late readings", pipe.get("late_readings"))
    row("pipeline", "dead letters", pipe.get("dead_letters"))
    lag = pipe.get("lag_ms")
    row("pipeline", "event lag", None if lag is None else f"{lag / 1000:.1f} s")
    if alerts is not None:
        count, latest = alerts.rows()
        row("pipeline", "anomaly alerts", count)
        for line in latest:
            row("", "alert", line)
    row("stack", "broker", stack.mosquitto.url)
    row("stack", "influxdb", f"{stack.influxdb.url} (database {stack.database})")
    return table


#: The generated Grafana files, in a source checkout (``fieldline dashboards build``).
GRAFANA_DIR = Path(__file__).resolve().parents[4] / "deploy/grafana"


def _grafana_hint(stack: LocalStack) -> None:
    """Where the dashboards are and how to watch this demo's data in a Grafana."""
    where = GRAFANA_DIR if GRAFANA_DIR.is_dir() else Path("deploy/grafana")
    _err.print(
        f"Grafana dashboards: {where}/dashboards/*.json, provisioning in {where}/provisioning/\n"
        f"  to watch this demo: in your Grafana add an InfluxDB data source (InfluxQL), URL "
        f"{stack.influxdb.url}, database {stack.database}, then import the JSON files or run\n"
        "  fieldline dashboards push --url http://localhost:3000 --token-file <token file>\n"
        "  (or the whole stack with Grafana, deploy/compose.yaml: see docs/dashboards.md)",
        highlight=False,
        soft_wrap=True,
    )


def _influx_totals(stack: LocalStack) -> dict[str, int]:
    def one(q: str) -> list[Any]:
        res = stack.influxdb.query(q, db=stack.database)
        series = res["results"][0].get("series") or []
        return series[0]["values"][0] if series else []

    windows = one('SELECT sum("count"), count("count") FROM reading_window')
    pipeline = one('SELECT last("late_readings"), last("dead_letters") FROM pipeline')
    return {
        "stored_readings": int(windows[1]) if windows else 0,
        "windows": int(windows[2]) if windows else 0,
        "late_readings": int(pipeline[1]) if pipeline else 0,
        "dead_letters": int(pipeline[2]) if pipeline else 0,
    }


def demo_command(
    seconds: Annotated[
        float,
        typer.Option(
            envvar="FIELDLINE_DEMO_SECONDS",
            help="Stop after this many seconds and print a JSON summary (0: until Ctrl-C).",
        ),
    ] = 0,
    devices: Annotated[int, typer.Option(min=1, help="Simulated devices.")] = 50,
    rate_hz: Annotated[float, typer.Option(help="Readings per second per sensor.")] = 2.0,
    batch_size: Annotated[int, typer.Option(min=1, help="Readings per message.")] = 10,
    window_s: Annotated[float, typer.Option(help="Window width.")] = 5.0,
    state_dir: Annotated[
        Path | None, typer.Option(help="Keep the stack's state here (default: a temp folder).")
    ] = None,
) -> None:
    """Run broker, InfluxDB, a simulated fleet and the pipeline locally, with a live view."""
    keep = state_dir is not None
    root = Path(state_dir or tempfile.mkdtemp(prefix="fieldline-demo-")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    stack = LocalStack(root / "stack")
    sim: subprocess.Popen[bytes] | None = None
    faults: subprocess.Popen[bytes] | None = None
    alerts: AlertFeed | None = None
    pipeline: subprocess.Popen[bytes] | None = None
    watch: MetricsWatcher | None = None
    interrupted = False
    try:
        _err.print(f"starting Mosquitto and InfluxDB (state in {root}) …")
        stack.start()
        _grafana_hint(stack)
        env = {**os.environ, **stack.env(), "FIELDLINE_LOG_LEVEL": "WARNING"}
        started = time.monotonic()
        watch = MetricsWatcher(stack.mosquitto.host, stack.mosquitto.port, "fieldline-demo-watch")
        pipeline = _spawn(
            [
                "pipeline",
                "run",
                "--instance",
                PIPELINE_INSTANCE,
                "--window-s",
                str(window_s),
                "--state-dir",
                str(root / "pipeline-state"),
                "--flush-on-stop",
            ],
            env,
            root / "pipeline.log",
        )
        ready = watch.wait_for(
            lambda w: (
                w.total("pipeline", "subscribed_clients") >= 1
                or (pipeline is not None and pipeline.poll() is not None)
            ),
            STARTUP_TIMEOUT_S,
        )
        if not ready or pipeline.poll() is not None:
            raise ServiceError(f"the pipeline did not start; see {root / 'pipeline.log'}")
        sim_seconds = 0.0
        if seconds > 0:
            sim_seconds = max(3.0, seconds - (time.monotonic() - started) - DRAIN_BUDGET_S)
        sim = _spawn(
            [
                "sim", "run", "--site", SITE, "--devices", str(devices), "--rate-hz", str(rate_hz),
                "--batch-size", str(batch_size), "--duration-s", str(sim_seconds),
                "--ground-truth", str(root / "ground-truth"), "--instance", SIM_INSTANCE,
            ],
            env,
            root / "simulator.log",
        )  # fmt: skip
        alerts = AlertFeed(stack.mosquitto.host, stack.mosquitto.port)
        if FAULTS_SCENARIO.is_file():  # in a source checkout
            # This fleet speaks the columnar telemetry/2, the other v1: one
            # pipeline takes both versions side by side.
            faults = _spawn(
                [
                    "sim", "fleet", str(FAULTS_SCENARIO), "--duration-s", str(sim_seconds),
                    "--schema", "2",
                    "--ground-truth", str(root / "faults-ground-truth"),
                    "--instance", FAULTS_INSTANCE, "--quiet",
                ],
                env,
                root / "faults.log",
            )  # fmt: skip
        bad = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fieldline-demo-bad-device")
        bad.connect(stack.mosquitto.host, stack.mosquitto.port)
        bad.loop_start()
        next_bad = time.monotonic() + BAD_EVENT_EVERY_S / 2
        try:
            with Live(
                _view(watch, started, stack, "running", alerts), console=_err, refresh_per_second=4
            ) as live:
                while sim.poll() is None:
                    time.sleep(0.25)
                    if time.monotonic() >= next_bad:
                        # A broken device: shows malformed events going to the dead-letter topic.
                        bad.publish(
                            f"fieldline/{SITE}/broken-device/telemetry", b"{not json", qos=1
                        )
                        next_bad += BAD_EVENT_EVERY_S
                    live.update(_view(watch, started, stack, "running", alerts))
                live.update(_view(watch, started, stack, "draining", alerts))
        except KeyboardInterrupt:
            interrupted = True
            _err.print("stopping …")
        finally:
            bad.disconnect()
            bad.loop_stop()
        _stop(sim, STOP_TIMEOUT_S)
        _stop(faults, STOP_TIMEOUT_S)
        # Both fleets record what they published (the broker acknowledged).
        published = 0
        for folder in ("ground-truth", "faults-ground-truth"):
            summary_file = root / folder / "summary.json"
            if summary_file.exists():
                published += int(json.loads(summary_file.read_text())["published_readings"])
        # Let the pipeline take in everything the simulator published, then stop it:
        # its end of input closes and writes every open window.
        watch.wait_for(lambda w: w.total("pipeline", "readings") >= published, CATCH_UP_TIMEOUT_S)
        _stop(pipeline, STOP_TIMEOUT_S)
        result: dict[str, Any] = {"published_readings": published, **_influx_totals(stack)}
        result["alerts"] = alerts.rows()[0]
        result["state_dir"] = str(root) if keep else None
    except (ServiceError, OSError) as exc:
        _err.print(f"[bold red]demo failed:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    finally:
        _stop(sim, 5)
        _stop(faults, 5)
        _stop(pipeline, 5)
        if alerts is not None:
            alerts.close()
        if watch is not None:
            watch.close()
        stack.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    if interrupted and seconds <= 0:
        _err.print("stopped.")
    _err.print()  # the live table leaves the cursor at the end of its last line
    print(json.dumps(result), flush=True)
