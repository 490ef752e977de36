"""``fieldline pipeline``: run the stream processor."""

from __future__ import annotations

import logging
import os
import socket
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The Fieldline stream processor (Bytewax).", no_args_is_help=True)


class IngestSync(str, Enum):
    full = "full"
    normal = "normal"


class InfluxAPI(str, Enum):
    v1 = "v1"
    v2 = "v2"


def _fail(message: str) -> typer.Exit:
    typer.echo(f"fieldline pipeline: {message}", err=True)
    return typer.Exit(2)


#: Flags the supervisor of ``--processes N`` sets itself for each child.
_PER_PROCESS = ("processes", "process_id", "addresses", "instance")


def parse_addresses(text: str, process_id: int) -> tuple[str, ...]:
    """``host:port,host:port`` -> a tuple; checks the form and ``process_id``."""
    addresses = tuple(a.strip() for a in text.split(",") if a.strip())
    for a in addresses:
        host, sep, port = a.rpartition(":")
        if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"address {a!r} is not host:port")
    if len(set(addresses)) != len(addresses):
        raise ValueError("--addresses must not repeat an address")
    if not process_id < len(addresses):
        raise ValueError(f"--process-id {process_id} is not among the {len(addresses)} --addresses")
    return addresses


def child_command(
    ctx: typer.Context, process_id: int, addresses: list[str], instance: str
) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of process ``process_id`` of ``--processes N``.

    Flags given on the command line are passed on; those that have an environment
    variable (the infrastructure and secrets) go through the environment, so no
    password appears on a child's command line. The rest of the environment is
    inherited.
    """
    args = [sys.executable, "-m", "fieldline_pipeline", "run"]
    env: dict[str, str] = {}
    for param in ctx.command.params:
        name = param.name
        source = ctx.get_parameter_source(name) if name is not None else None
        opts: list[str] = getattr(param, "opts", [])
        if name is None or name in _PER_PROCESS or not opts or source is None:
            continue
        if source.name != "COMMANDLINE":
            continue  # defaults stay defaults; the environment is inherited
        value = ctx.params[name]
        if isinstance(value, Enum):
            value = value.value
        secondary: list[str] = getattr(param, "secondary_opts", [])
        envvar = getattr(param, "envvar", None)
        if getattr(param, "is_flag", False) and secondary:
            args.append(opts[0] if value else secondary[0])
        elif isinstance(envvar, str):
            env[envvar] = str(value)
        else:
            args += [opts[0], str(value)]
    args += [
        "--process-id", str(process_id),
        "--addresses", ",".join(addresses),
        "--instance", instance,
    ]  # fmt: skip
    return args, env


def _free_loopback_ports(n: int) -> list[int]:
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@app.command("run")
def run(
    ctx: typer.Context,
    broker: Annotated[
        str,
        typer.Option(
            envvar="FIELDLINE_BROKER_URL",
            help="Broker URL: mqtt://host:port or mqtts://user:password@host:port.",
        ),
    ] = "mqtt://127.0.0.1:1883",
    ca_file: Annotated[
        str | None,
        typer.Option(
            envvar="FIELDLINE_MQTT_CA_FILE",
            help="CA certificates (PEM) for an mqtts:// broker [default: the system's].",
        ),
    ] = None,
    cert_file: Annotated[
        str | None,
        typer.Option(
            envvar="FIELDLINE_MQTT_CERT_FILE", help="Client certificate (PEM) for mqtts://."
        ),
    ] = None,
    key_file: Annotated[
        str | None,
        typer.Option(envvar="FIELDLINE_MQTT_KEY_FILE", help="Client certificate's key (PEM)."),
    ] = None,
    group: Annotated[str, typer.Option(help="Shared-subscription group name.")] = "fieldline",
    client_id: Annotated[
        str, typer.Option(help="Client-id prefix; worker i uses <prefix>-<i> (persistent session).")
    ] = "fieldline-pipeline",
    influx_url: Annotated[
        str, typer.Option(envvar="FIELDLINE_INFLUX_URL", help="InfluxDB base URL.")
    ] = "http://127.0.0.1:8086",
    influx_api: Annotated[
        InfluxAPI,
        typer.Option(
            envvar="FIELDLINE_INFLUX_API", help="v1: /write (InfluxDB 1.x); v2: /api/v2/write."
        ),
    ] = InfluxAPI.v1,
    influx_db: Annotated[
        str, typer.Option(envvar="FIELDLINE_INFLUX_DB", help="v1 database.")
    ] = "fieldline",
    influx_rp: Annotated[str | None, typer.Option(help="v1 retention policy.")] = None,
    influx_user: Annotated[str | None, typer.Option(envvar="FIELDLINE_INFLUX_USER")] = None,
    influx_password: Annotated[
        str | None, typer.Option(envvar="FIELDLINE_INFLUX_PASSWORD", show_default=False)
    ] = None,
    influx_org: Annotated[
        str, typer.Option(envvar="FIELDLINE_INFLUX_ORG", help="v2 org.")
    ] = "fieldline",
    influx_bucket: Annotated[
        str, typer.Option(envvar="FIELDLINE_INFLUX_BUCKET", help="v2 bucket.")
    ] = "fieldline",
    influx_token: Annotated[
        str | None, typer.Option(envvar="FIELDLINE_INFLUX_TOKEN", show_default=False)
    ] = None,
    window_s: Annotated[float, typer.Option(help="Tumbling window width (event time).")] = 10.0,
    lateness_s: Annotated[
        float, typer.Option(help="Allowed lateness before a window closes.")
    ] = 2.0,
    idle_timeout_s: Annotated[
        float, typer.Option(help="Close a silent device's windows after this long (system time).")
    ] = 30.0,
    workers: Annotated[int, typer.Option(min=1, help="Bytewax worker threads per process.")] = 1,
    processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Bytewax processes on this host: this process starts and supervises them, "
            "each with its own MQTT client and ingest log, sharing --state-dir.",
        ),
    ] = 1,
    addresses: Annotated[
        str | None,
        typer.Option(
            envvar="FIELDLINE_ADDRESSES",
            help="host:port of every process of a cluster across hosts, comma-separated, "
            "the same list everywhere; run one process per host with its --process-id.",
        ),
    ] = None,
    instance: Annotated[
        str | None, typer.Option(help="Name in metrics; default <host>-<pid>.")
    ] = None,
    keepalive_s: Annotated[
        int, typer.Option(min=1, help="MQTT keepalive: how fast a dead link is noticed.")
    ] = 30,
    state_dir: Annotated[
        Path,
        typer.Option(
            envvar="FIELDLINE_STATE_DIR",
            help="Ingest log and recovery snapshots; keep it across restarts.",
        ),
    ] = Path(".fieldline-state"),
    process_id: Annotated[
        int,
        typer.Option(
            min=0,
            envvar="FIELDLINE_PROCESS_ID",
            help="This process's index in --addresses (names its ingest log).",
        ),
    ] = 0,
    flush_on_stop: Annotated[
        bool,
        typer.Option(
            help="On SIGTERM, close and write every open window (for a final stop); "
            "by default they are kept for the next start."
        ),
    ] = False,
    detector: Annotated[
        str,
        typer.Option(help="Anomaly detector: novelty, ewma or mad (see docs/detection.md)."),
    ] = "novelty",
    anomaly_threshold: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Score from which a reading is an anomaly [default: the detector's].",
        ),
    ] = None,
    detection: Annotated[
        bool, typer.Option(help="Score every reading for anomalies (alerts, anomaly points).")
    ] = True,
    max_future_s: Annotated[
        float, typer.Option(help="Dead-letter readings stamped further ahead than this.")
    ] = 300.0,
    ingest_sync: Annotated[
        IngestSync, typer.Option(help="full: fsync each ingest commit; normal: crash-safe only.")
    ] = IngestSync.full,
    log_retention_s: Annotated[
        float, typer.Option(help="Keep processed messages in the ingest log this long.")
    ] = 3600.0,
    metrics_interval_s: Annotated[
        float,
        typer.Option(
            min=0.05,
            help="How often counters are published on MQTT (InfluxDB gets them every ~5 s).",
        ),
    ] = 1.0,
    log_level: Annotated[str, typer.Option(envvar="FIELDLINE_LOG_LEVEL")] = "INFO",
) -> None:
    """Consume telemetry from MQTT, aggregate it in windows, write them to InfluxDB."""
    from fieldline_edge.mqtt import TLSConfig, parse_broker_url

    from fieldline_pipeline.connectors.influx import InfluxV1Config, InfluxV2Config
    from fieldline_pipeline.connectors.mqtt import MQTTSettings
    from fieldline_pipeline.detection import DetectionConfig
    from fieldline_pipeline.runner import run_pipeline
    from fieldline_pipeline.settings import PipelineSettings
    from fieldline_pipeline.windows import WindowConfig

    cluster: tuple[str, ...] = ()
    try:
        if processes > 1 and addresses is not None:
            raise ValueError(
                "use --processes N on one host, or --addresses with --process-id per host"
            )
        if processes > 1 and process_id != 0:
            raise ValueError("--process-id is set for each process by --processes itself")
        if addresses is not None:
            cluster = parse_addresses(addresses, process_id)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    # In a cluster every line says which process wrote it.
    who = f"[p{process_id}] " if len(cluster) > 1 else ""
    logging.basicConfig(
        level=log_level.upper(), format=f"%(asctime)s %(levelname)s {who}%(name)s: %(message)s"
    )
    base_instance = instance or f"{socket.gethostname()}-{os.getpid()}"
    # Each process of a cluster reports on its own topic; watchers sum them.
    instance = f"{base_instance}-{process_id}" if len(cluster) > 1 else base_instance
    try:
        tls = None
        if ca_file or cert_file or key_file:
            tls = TLSConfig(ca_file, cert_file, key_file)
        mqtt_settings = MQTTSettings(
            broker=parse_broker_url(broker),
            group=group,
            client_id_prefix=client_id,
            tls=tls,
            keepalive_s=keepalive_s,
        )
        windows = WindowConfig(
            width_ms=round(window_s * 1000),
            lateness_ms=round(lateness_s * 1000),
            idle_timeout_ms=round(idle_timeout_s * 1000),
            flush_on_eof=flush_on_stop,
        )
        detection_config = DetectionConfig(detector, anomaly_threshold) if detection else None
        influx: InfluxV1Config | InfluxV2Config
        if influx_api is InfluxAPI.v1:
            influx = InfluxV1Config(influx_url, influx_db, influx_rp, influx_user, influx_password)
        else:
            influx = InfluxV2Config(influx_url, influx_org, influx_bucket, influx_token)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    settings = PipelineSettings(
        mqtt=mqtt_settings,
        influx=influx,
        windows=windows,
        detection=detection_config,
        workers=workers,
        instance=instance,
        state_dir=state_dir,
        process_id=process_id,
        addresses=cluster if len(cluster) > 1 else (),
        max_future_ms=round(max_future_s * 1000),
        ingest_sync=ingest_sync.value,
        log_retention_s=log_retention_s,
        metrics_interval_s=metrics_interval_s,
    )
    if processes > 1:  # the settings are valid: start the processes that use them
        raise typer.Exit(_supervise(ctx, processes, workers, state_dir, base_instance))
    run_pipeline(settings)


def _supervise(
    ctx: typer.Context, processes: int, workers: int, state_dir: Path, instance: str
) -> int:
    """``--processes N``: N pipeline processes on loopback ports; the worst exit code."""
    from fieldline_pipeline.runner import prepare_state_dir, supervise

    # Before the children start, so that they all find the same recovery partitions.
    prepare_state_dir(state_dir, partitions=processes * workers)
    addresses = [f"127.0.0.1:{port}" for port in _free_loopback_ports(processes)]
    commands, env = [], dict(os.environ)
    for i in range(processes):
        cmd, extra = child_command(ctx, i, addresses, instance)
        commands.append(cmd)
        env.update(extra)
    return supervise(commands, env)
