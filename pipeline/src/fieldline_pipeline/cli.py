"""``fieldline pipeline``: run the stream processor."""

from __future__ import annotations

import logging
import os
import socket
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


@app.command("run")
def run(
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
    workers: Annotated[int, typer.Option(min=1, help="Bytewax worker threads.")] = 1,
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
    process_id: Annotated[int, typer.Option(min=0, help="This process's index.")] = 0,
    flush_on_stop: Annotated[
        bool,
        typer.Option(
            help="On SIGTERM, close and write every open window (for a final stop); "
            "by default they are kept for the next start."
        ),
    ] = False,
    max_future_s: Annotated[
        float, typer.Option(help="Dead-letter readings stamped further ahead than this.")
    ] = 300.0,
    ingest_sync: Annotated[
        IngestSync, typer.Option(help="full: fsync each ingest commit; normal: crash-safe only.")
    ] = IngestSync.full,
    log_retention_s: Annotated[
        float, typer.Option(help="Keep processed messages in the ingest log this long.")
    ] = 3600.0,
    log_level: Annotated[str, typer.Option(envvar="FIELDLINE_LOG_LEVEL")] = "INFO",
) -> None:
    """Consume telemetry from MQTT, aggregate it in windows, write them to InfluxDB."""
    from fieldline_edge.mqtt import TLSConfig, parse_broker_url

    from fieldline_pipeline.connectors.influx import InfluxV1Config, InfluxV2Config
    from fieldline_pipeline.connectors.mqtt import MQTTSettings
    from fieldline_pipeline.runner import run_pipeline
    from fieldline_pipeline.settings import PipelineSettings
    from fieldline_pipeline.windows import WindowConfig

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
        workers=workers,
        instance=instance or f"{socket.gethostname()}-{os.getpid()}",
        state_dir=state_dir,
        process_id=process_id,
        max_future_ms=round(max_future_s * 1000),
        ingest_sync=ingest_sync.value,
        log_retention_s=log_retention_s,
    )
    run_pipeline(settings)
