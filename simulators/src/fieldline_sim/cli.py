"""``fieldline sim run``: run a simulated fleet against a broker.

Exit status: 0 after a clean stop with every message acknowledged; 1 if the
broker was unreachable or messages stayed unacknowledged; 2 on bad arguments.
Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Annotated, Callable, Optional

import typer
from fieldline_edge.mqtt import ConnectError, MqttError, TLSConfig, parse_broker_url

from fieldline_sim.credentials import FleetCredentials
from fieldline_sim.fleet import Fleet, FleetConfig, parse_sensors
from fieldline_sim.groundtruth import GroundTruthWriter
from fieldline_sim.metrics import FleetMetrics, default_instance

app = typer.Typer(
    help="Simulated device fleets publishing through the edge agent's code.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("fieldline_sim")


def _fail(message: str, code: int) -> typer.Exit:
    typer.echo(f"fieldline sim: error: {message}", err=True)
    return typer.Exit(code)


def _progress(started: float) -> Callable[[FleetMetrics], None]:
    def show(m: FleetMetrics) -> None:
        print(
            f"sim {time.monotonic() - started:6.1f}s  {m.devices} devices  "
            f"{m.published_readings} readings in {m.published_messages} messages "
            f"({m.readings_per_s:.0f}/s)  acked {m.acked_messages}",
            file=sys.stderr,
            flush=True,
        )

    return show


@app.command()
def run(
    broker: Annotated[
        str, typer.Option(envvar="FIELDLINE_BROKER_URL", help="mqtt://[user:pass@]host[:port]")
    ] = "mqtt://127.0.0.1:1883",
    credentials: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            envvar="FIELDLINE_SIM_CREDENTIALS",
            help="JSON file with a simulator user and/or a user per device (replaces the URL's).",
        ),
    ] = None,
    ca_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="FIELDLINE_MQTT_CA_FILE", help="CA certificates (PEM) for mqtts://."),
    ] = None,
    cert_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="FIELDLINE_MQTT_CERT_FILE", help="Client certificate (PEM)."),
    ] = None,
    key_file: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(envvar="FIELDLINE_MQTT_KEY_FILE", help="Client certificate's key (PEM)."),
    ] = None,
    site: Annotated[str, typer.Option(help="Site id of every device.")] = "demo",
    devices: Annotated[int, typer.Option(help="Number of devices (dev-0001, ...).")] = 50,
    sensors: Annotated[
        str, typer.Option(help="Comma-separated NAME[:UNIT] per device.")
    ] = "temperature,humidity",
    rate_hz: Annotated[float, typer.Option(help="Readings per second per sensor.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Readings per telemetry message.")] = 10,
    duration_s: Annotated[float, typer.Option(help="Seconds to run; 0 = until stopped.")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of all simulated values.")] = 42,
    ground_truth: Annotated[
        Optional[Path],  # noqa: UP045 - typer needs a runtime-evaluable annotation
        typer.Option(help="Write readings.csv and summary.json to this folder."),
    ] = None,
    connections: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="MQTT clients shared by the devices [default: one per device, max 100]."),
    ] = None,
    instance: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Name in fieldline/_metrics/sim/<instance> [default: host-pid]."),
    ] = None,
) -> None:
    """Publish simulated telemetry in real time; stop on SIGTERM/SIGINT or after --duration-s."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        tls = None
        if ca_file or cert_file or key_file:
            tls = TLSConfig(ca_file, cert_file, key_file)
        config = FleetConfig(
            broker=parse_broker_url(broker),
            site=site,
            devices=devices,
            sensors=parse_sensors(sensors),
            rate_hz=rate_hz,
            batch_size=batch_size,
            duration_s=duration_s,
            seed=seed,
            connections=connections,
            instance=instance if instance is not None else default_instance(),
            credentials=FleetCredentials.load(credentials) if credentials is not None else None,
            tls=tls,
        ).validate()
    except ValueError as exc:
        raise _fail(str(exc), 2) from None

    try:
        fleet = Fleet(config, progress=_progress(time.monotonic()))
    except (ValueError, OSError) as exc:  # unreadable CA or certificate files
        raise _fail(f"TLS: {exc}", 2) from None
    try:
        fleet.connect()
    except ConnectError as exc:
        raise _fail(str(exc), 1) from None
    if ground_truth is not None:
        try:
            fleet.ground_truth = GroundTruthWriter(ground_truth)
        except OSError as exc:
            fleet.close()
            raise _fail(f"cannot write ground truth to {ground_truth}: {exc}", 1) from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        fleet.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = fleet.run()
    except (OSError, MqttError) as exc:  # e.g. the ground-truth disk is full
        raise _fail(str(exc), 1) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo(
        f"fieldline sim: published {report.published_readings} readings in "
        f"{report.published_messages} messages from {report.devices} devices; "
        f"{report.unacked_messages} unacknowledged",
        err=True,
    )
    if report.unacked_messages:
        raise typer.Exit(1)
