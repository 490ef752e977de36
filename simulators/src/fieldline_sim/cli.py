"""``fieldline sim ...``: simulated fleets and replays against a broker.

- ``run``: a uniform fleet of simple devices, stamped with the wall clock;
- ``fleet SCENARIO``: a scenario file's fleet with realistic signals and injected faults;
- ``generate SCENARIO``: the same readings and labels written to files, no broker;
- ``replay PATH...``: CSV time series (e.g. NAB) through MQTT, one device per file.

Exit status: 0 after a clean stop with every message acknowledged; 1 if the
broker was unreachable or messages stayed unacknowledged; 2 on bad arguments or
input. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import signal
import ssl
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import FrameType
from typing import Annotated, Callable, Optional

import typer
from fieldline_edge import contract
from fieldline_edge.mqtt import BrokerURL, ConnectError, MqttError, TLSConfig, parse_broker_url

from fieldline_sim.credentials import FleetCredentials
from fieldline_sim.fleet import Fleet, FleetConfig, parse_sensors
from fieldline_sim.generate import generate_files
from fieldline_sim.groundtruth import GroundTruthWriter
from fieldline_sim.metrics import FleetMetrics, default_instance
from fieldline_sim.progress import ProgressLine, count
from fieldline_sim.replay import ReplayProgress, replay_paths
from fieldline_sim.runner import DEFAULT_CONNECTIONS, Progress, RunConfig, ScenarioRunner
from fieldline_sim.scenario import Scenario, load_scenario

app = typer.Typer(
    help="Simulated device fleets, scenario files with injected faults, CSV replay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

log = logging.getLogger("fieldline_sim")

_SCHEMA_HELP = (
    "Telemetry schema version: 1 (fieldline.telemetry/1) or 2 (columnar fieldline.telemetry/2;"
    " only for a pipeline that reads it)."
)


class Version(str, enum.Enum):
    """``--schema``: anything but 1 or 2 is a usage error (exit 2) naming the choices."""

    V1 = "1"
    V2 = "2"

    @property
    def schema(self) -> str:
        return contract.telemetry_schema(int(self.value))


SchemaVersion = Annotated[Version, typer.Option("--schema", help=_SCHEMA_HELP)]
DeviceBroker = Annotated[
    Optional[str],
    typer.Option(
        envvar="FIELDLINE_SIM_DEVICE_BROKER_URL",
        help="Broker URL for the connections as a device's own user (credentials file), "
        "where a broker has a listener for devices [default: the broker URL].",
    ),
]


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
    device_broker: DeviceBroker = None,
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
    schema: SchemaVersion = Version.V1,
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
            device_broker=parse_broker_url(device_broker) if device_broker else None,
            tls=tls,
            schema=schema.schema,
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


# ---------------------------------------------------------------- scenarios and replay


def _broker_with_user(url: str, username: str | None, password_file: Path | None) -> BrokerURL:
    broker = parse_broker_url(url)
    if password_file is not None and username is None:
        raise ValueError("--password-file needs --username")
    if username is not None:
        password = None
        if password_file is not None:
            try:
                password = password_file.read_text(encoding="utf-8").splitlines()[0]
            except (OSError, IndexError) as exc:
                problem = getattr(exc, "strerror", None) or "it is empty"
                raise ValueError(f"cannot read password file {password_file}: {problem}") from None
        broker = broker._replace(username=username, password=password)
    return broker


def _tls(ca_file: str | None, cert_file: str | None, key_file: str | None) -> TLSConfig | None:
    if ca_file or cert_file or key_file:
        return TLSConfig(ca_file, cert_file, key_file).check()
    return None


def _start_ms(text: str | None) -> int | None:
    if text is None or text == "now":
        return None if text is None else int(time.time()) * 1000
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--start {text!r} is not an RFC 3339 time or 'now'") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _scenario(
    path: Path,
    duration_s: float | None,
    seed: int | None,
    site: str | None,
    schema: Version | None = None,
) -> Scenario:
    scenario = load_scenario(path)
    changes: dict[str, object] = {}
    if schema is not None:
        changes["telemetry_schema"] = schema.schema
    if duration_s is not None:
        if not (duration_s >= 0 and math.isfinite(duration_s)):
            raise ValueError("--duration-s must be >= 0 (0: until stopped)")
        changes["duration_s"] = duration_s
    if seed is not None:
        if seed < 0:
            raise ValueError("--seed must be >= 0")
        changes["seed"] = seed
    if site is not None:
        if not contract.is_valid_id(site):
            raise ValueError(f"--site {site!r} is not a valid id")
        changes["site"] = site
    return scenario.replace(**changes) if changes else scenario


def _fleet_progress(line: ProgressLine) -> Callable[[Progress], None]:
    def show(p: Progress) -> None:
        fraction = p.virtual_s / p.duration_s if p.duration_s > 0 else None
        acked = 100.0 * p.acked / p.messages if p.messages else 100.0
        line.show(
            fraction,
            f"{p.wall_s:5.0f}s  {count(p.devices)} devices  {count(p.readings_per_s)} readings/s  "
            f"{count(p.readings)} sent  {acked:.1f}% acked  {count(p.labels)} labels",
        )

    return show


Broker = Annotated[
    str,
    typer.Option(
        envvar="FIELDLINE_BROKER_URL",
        help="mqtt:// or mqtts://, then user:password@ (optional), host, :port (optional).",
    ),
]
Username = Annotated[
    Optional[str],
    typer.Option(envvar="FIELDLINE_MQTT_USERNAME", help="Broker user (replaces the URL's)."),
]
PasswordFile = Annotated[
    Optional[Path],
    typer.Option(
        envvar="FIELDLINE_MQTT_PASSWORD_FILE", help="File whose first line is the password."
    ),
]
CaFile = Annotated[
    Optional[str],
    typer.Option(envvar="FIELDLINE_MQTT_CA_FILE", help="CA certificates (PEM) for mqtts://."),
]
CertFile = Annotated[
    Optional[str],
    typer.Option(envvar="FIELDLINE_MQTT_CERT_FILE", help="Client certificate (PEM)."),
]
KeyFile = Annotated[
    Optional[str],
    typer.Option(envvar="FIELDLINE_MQTT_KEY_FILE", help="Client certificate's key (PEM)."),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress line on stderr.")]


@app.command()
def fleet(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (TOML).")],
    broker: Broker = "mqtt://127.0.0.1:1883",
    credentials: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            envvar="FIELDLINE_SIM_CREDENTIALS",
            help="JSON file with a simulator user and/or a user per device.",
        ),
    ] = None,
    device_broker: DeviceBroker = None,
    username: Username = None,
    password_file: PasswordFile = None,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    connections: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(
            help=f"MQTT connections shared by the devices [default: {DEFAULT_CONNECTIONS}]."
        ),
    ] = None,
    connection_per_device: Annotated[
        bool,
        typer.Option(
            "--connection-per-device",
            help="One connection per device, with its last will (one file descriptor each).",
        ),
    ] = False,
    speed: Annotated[
        float, typer.Option(help="Virtual seconds per second; 0 = as fast as possible.")
    ] = 1.0,
    duration_s: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Virtual seconds to run (0 = until stopped) [default: the scenario's]."),
    ] = None,
    seed: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Seed [default: the scenario's]."),
    ] = None,
    start: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Virtual start: RFC 3339 time or 'now' [default: the scenario's]."),
    ] = None,
    site: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Site id [default: the scenario's]."),
    ] = None,
    ground_truth: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write readings.csv and summary.json to this folder."),
    ] = None,
    labels: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="Write the injected anomalies' labels to this JSON-lines file."),
    ] = None,
    labels_topic: Annotated[
        bool,
        typer.Option("--labels-topic", help="Also publish labels on fieldline/_labels/<site>."),
    ] = False,
    instance: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Name in fieldline/_metrics/sim/<instance> [default: host-pid]."),
    ] = None,
    schema: Annotated[
        Optional[Version],  # noqa: UP045
        typer.Option(
            "--schema",
            help=_SCHEMA_HELP[:-1] + " [default: the scenario's telemetry_schema, else 1].",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Run a scenario's fleet against a broker; print a JSON report on stdout at the end."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        parsed = _scenario(scenario, duration_s, seed, site, schema)
        config = RunConfig(
            scenario=parsed,
            broker=_broker_with_user(broker, username, password_file),
            connections=connections,
            per_device=connection_per_device,
            credentials=FleetCredentials.load(credentials) if credentials is not None else None,
            device_broker=parse_broker_url(device_broker) if device_broker else None,
            tls=_tls(ca_file, cert_file, key_file),
            speed=speed,
            start_ms=_start_ms(start),
            instance=instance if instance is not None else default_instance(),
            ground_truth=ground_truth,
            labels_file=labels,
            labels_topic=labels_topic,
        ).validate()
        for url in (config.broker, config.device_broker or config.broker):
            if url.tls is False and config.tls is not None:
                raise ValueError(f"TLS options given for {url}: use an mqtts:// URL")
        line = ProgressLine(quiet=quiet)
        runner = ScenarioRunner(config, progress=_fleet_progress(line))
    except (ValueError, OSError) as exc:  # includes ScenarioError; OSError: TLS files
        raise _fail(str(exc), 2) from None
    try:
        runner.connect()
    except ConnectError as exc:
        raise _fail(str(exc), 1) from None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        runner.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = runner.run()
    except (OSError, MqttError) as exc:  # e.g. the ground-truth disk is full
        raise _fail(str(exc), 1) from None
    finally:
        line.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo(json.dumps(report.to_dict()))
    if report.unacked:
        raise typer.Exit(1)


@app.command()
def generate(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (TOML).")],
    out: Annotated[Path, typer.Option(help="Folder for readings.csv, labels.jsonl, summary.json.")],
    duration_s: Annotated[
        Optional[float],  # noqa: UP045
        typer.Option(help="Virtual seconds [default: the scenario's; must not be 0]."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed [default: the scenario's].")] = None,  # noqa: UP045
    start: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Virtual start: RFC 3339 time or 'now' [default: the scenario's]."),
    ] = None,
    site: Annotated[Optional[str], typer.Option(help="Site id.")] = None,  # noqa: UP045
    quiet: Quiet = False,
) -> None:
    """Write a scenario's readings and labels to files, as fast as possible, with no broker."""
    try:
        parsed = _scenario(scenario, duration_s, seed, site)
        if parsed.duration_s == 0:
            raise ValueError("generate needs a duration: set duration_s or --duration-s")
        start_ms = _start_ms(start)
    except ValueError as exc:
        raise _fail(str(exc), 2) from None
    line = ProgressLine(quiet=quiet)

    def show(fraction: float, readings: int, rate: float) -> None:
        line.show(fraction, f"{count(readings)} readings  {count(rate)} readings/s")

    try:
        report = generate_files(parsed, out, start_ms=start_ms, progress=show)
    except OSError as exc:
        raise _fail(f"cannot write to {out}: {exc}", 1) from None
    finally:
        line.close()
    typer.echo(json.dumps(report))


@app.command()
def replay(
    paths: Annotated[list[Path], typer.Argument(help="CSV files or folders (searched for *.csv).")],
    broker: Broker = "mqtt://127.0.0.1:1883",
    site: Annotated[str, typer.Option(help="Site id of every device.")] = "replay",
    speed: Annotated[
        float, typer.Option(help="Speed-up over the files' own time; 0 = as fast as possible.")
    ] = 1.0,
    sensor: Annotated[str, typer.Option(help="Sensor name of every reading.")] = "value",
    batch: Annotated[int, typer.Option(help="Readings per message.")] = 1,
    max_rows: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="Replay at most this many rows of each file."),
    ] = None,
    username: Username = None,
    password_file: PasswordFile = None,
    ca_file: CaFile = None,
    cert_file: CertFile = None,
    key_file: KeyFile = None,
    schema: SchemaVersion = Version.V1,
    quiet: Quiet = False,
) -> None:
    """Stream CSV time series (timestamp,value) through MQTT, one device per file.

    Prints {"devices", "readings", "messages", "unacked"} as JSON on stdout at the end.
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    line = ProgressLine(quiet=quiet)

    def show(p: ReplayProgress) -> None:
        line.show(
            p.readings / p.total if p.total else None,
            f"{p.wall_s:6.1f}s  {count(p.readings)}/{count(p.total)} readings  "
            f"acked {count(p.acked)}/{count(p.messages)} messages",
        )

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        report = replay_paths(
            paths,
            _broker_with_user(broker, username, password_file),
            site=site,
            speed=speed,
            sensor=sensor,
            batch=batch,
            max_rows=max_rows,
            tls=_tls(ca_file, cert_file, key_file),
            progress=show,
            stop=stop,
            schema=schema.schema,
        )
    except (ValueError, ssl.SSLError) as exc:  # ReplayError is a ValueError
        raise _fail(str(exc), 2) from None
    except ConnectError as exc:
        raise _fail(str(exc), 1) from None
    finally:
        line.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    typer.echo(json.dumps(report.to_dict()))
    if report.unacked:
        raise typer.Exit(1)
