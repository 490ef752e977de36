"""``fieldline edge run`` (also ``fieldline-edge run``): run the agent for one device.

``--config FILE`` runs it from its TOML configuration (how a device runs it, see
docs/edge-agent.md); ``--broker/--site/--device/--sensor`` run it from flags,
for trying it out, with the spool in memory unless ``--spool`` is given.

argparse only, so it works on a device without typer. Exit status: 0 after a
clean stop (messages not yet delivered stay in an on-disk spool), 1 if readings
were lost (dropped, or unacknowledged with the spool in memory) or the agent
failed, 2 on misuse or a bad configuration (one line on stderr, never a traceback).
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import zlib
from types import FrameType
from typing import Callable, Optional, Sequence

from fieldline_edge import contract, fleet_cli
from fieldline_edge.agent import ACK_TIMEOUT_S, MAX_BATCH_DELAY_S, Agent, Scheduled
from fieldline_edge.clock import Clock
from fieldline_edge.config import ConfigError, build_driver, load_config
from fieldline_edge.mqtt import BrokerURL, TLSConfig, parse_broker_url
from fieldline_edge.sdnotify import Notifier
from fieldline_edge.sensors import CpuTemperature, Sensor, SimulatedSensor
from fieldline_edge.spool import MEMORY, Spool, SpoolError

log = logging.getLogger("fieldline_edge")

SENSOR_HELP = "cpu_temp (SoC temperature from sysfs) or sim:NAME[:UNIT] (synthetic signal)"


def _broker(text: str) -> BrokerURL:
    try:
        return parse_broker_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _id(what: str) -> Callable[[str], str]:
    def check(text: str) -> str:
        if not contract.is_valid_id(text):
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a valid {what} id (1-64 letters, digits, '_', '.', '-';"
                " not starting with '_', '.' or '-')"
            )
        return text

    return check


def _float(text: str, minimum_exclusive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    ok = value > 0 if minimum_exclusive else value >= 0
    if not ok or not math.isfinite(value):
        bound = "> 0" if minimum_exclusive else ">= 0"
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number {bound}")
    return value


def _positive_float(text: str) -> float:
    return _float(text, minimum_exclusive=True)


def _non_negative_float(text: str) -> float:
    return _float(text, minimum_exclusive=False)


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 1 <= value <= contract.MAX_READINGS_PER_MESSAGE:
        raise argparse.ArgumentTypeError(
            f"{value} is outside 1..{contract.MAX_READINGS_PER_MESSAGE}"
        )
    return value


def _sensor_spec(text: str) -> tuple[str, str, str]:
    """``cpu_temp`` or ``sim:NAME[:UNIT]`` -> (kind, name, unit)."""
    if text == "cpu_temp":
        return ("cpu_temp", "cpu_temp", "°C")
    kind, _, rest = text.partition(":")
    if kind == "sim" and rest:
        name, _, unit = rest.partition(":")
        if not contract.is_valid_id(name):
            raise argparse.ArgumentTypeError(f"sensor name {name!r} is not a valid id")
        if len(unit) > contract.MAX_UNIT_LEN:
            raise argparse.ArgumentTypeError(
                f"unit {unit!r} is longer than {contract.MAX_UNIT_LEN} characters"
            )
        return ("sim", name, unit)
    raise argparse.ArgumentTypeError(f"{text!r} is not a sensor spec: use {SENSOR_HELP}")


def build_parser(prog: str = "fieldline edge") -> argparse.ArgumentParser:
    return _build_parsers(prog)[0]


def _build_parsers(prog: str) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    parser = argparse.ArgumentParser(
        prog=prog, description="Fieldline edge agent: publish sensor readings over MQTT."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    fleet_cli.add_commands(sub)  # flash, deploy, rollback, credentials (the operator's side)
    run = sub.add_parser(
        "run",
        help="sample sensors and publish telemetry until stopped",
        description="Sample sensors and publish telemetry until SIGTERM/SIGINT or --duration-s.",
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="the agent's TOML configuration (see docs/edge-agent.md); replaces the flags below",
    )
    run.add_argument(
        "--broker",
        type=_broker,
        metavar="URL",
        help="mqtt://[user:pass@]host[:port] or mqtts://... (TLS)",
    )
    run.add_argument(
        "--ca-file", metavar="PEM", help="CA certificates for mqtts:// (default: system)"
    )
    run.add_argument("--cert-file", metavar="PEM", help="client certificate for mqtts://")
    run.add_argument("--key-file", metavar="PEM", help="client certificate's key for mqtts://")
    run.add_argument("--site", type=_id("site"))
    run.add_argument("--device", type=_id("device"), metavar="ID")
    run.add_argument(
        "--sensor",
        dest="sensors",
        action="append",
        type=_sensor_spec,
        metavar="SPEC",
        help=f"repeatable; {SENSOR_HELP} (default: cpu_temp)",
    )
    run.add_argument(
        "--interval-s",
        type=_positive_float,
        default=1.0,
        help="seconds between samples (default: 1.0)",
    )
    run.add_argument(
        "--batch-size",
        type=_batch_size,
        default=10,
        help="readings per telemetry message (default: 10)",
    )
    run.add_argument(
        "--schema",
        type=int,
        choices=sorted(contract.TELEMETRY_SCHEMA_VERSIONS),
        default=None,
        help="telemetry payload version: 1 (a list of readings) or 2 (columns, for a pipeline "
        "that reads it); as agent.telemetry_schema in a config file (default: 1)",
    )
    run.add_argument(
        "--max-batch-delay-s",
        type=_non_negative_float,
        default=MAX_BATCH_DELAY_S,
        help=f"longest a reading waits before it is published (default: {MAX_BATCH_DELAY_S})",
    )
    run.add_argument(
        "--ack-timeout-s",
        type=_non_negative_float,
        default=ACK_TIMEOUT_S,
        help=f"on stop, how long to wait for the broker's acks (default: {ACK_TIMEOUT_S})",
    )
    run.add_argument(
        "--spool",
        default=MEMORY,
        metavar="FILE",
        help="SQLite spool for readings not yet delivered (default: in memory)",
    )
    run.add_argument(
        "--sysfs-root",
        default="/",
        metavar="DIR",
        help="where /sys is found (default: /; tests use a fake tree)",
    )
    run.add_argument(
        "--duration-s",
        type=_positive_float,
        default=None,
        metavar="N",
        help="stop after N seconds (default: run until stopped)",
    )
    run.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser, run


#: Flags that describe the device; with --config the file does.
_DEVICE_FLAGS = (
    "broker", "site", "device", "sensors", "ca_file", "cert_file", "key_file", "schema",
)  # fmt: skip


def make_sensors(
    specs: Sequence[tuple[str, str, str]], device: str, interval_s: float, sysfs_root: str
) -> list[Sensor]:
    """Build sensors from parsed specs; simulated ones are seeded from device and name."""
    sensors: list[Sensor] = []
    for kind, name, unit in specs:
        if kind == "cpu_temp":
            sensors.append(CpuTemperature(sysfs_root=sysfs_root, name=name, unit=unit))
        else:
            seed = zlib.crc32(f"{device}/{name}".encode())
            sensors.append(SimulatedSensor(name, unit, seed=seed, interval_s=interval_s))
    return sensors


def edge_main(argv: Optional[list[str]] = None) -> int:
    """Run ``fieldline edge`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    prog = "fieldline-edge" if argv is None else "fieldline edge"
    parser, run_parser = _build_parsers(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return exc.code if isinstance(exc.code, int) else 2
    if args.command in fleet_cli.COMMANDS:
        return fleet_cli.run(args, prog)

    def usage_error(message: str) -> int:
        run_parser.print_usage(sys.stderr)
        print(f"{prog} run: error: {message}", file=sys.stderr)
        return 2

    if args.config is not None:
        given = [f"--{f.replace('_', '-')}" for f in _DEVICE_FLAGS if getattr(args, f)]
        if given:
            return usage_error(f"--config cannot be combined with {', '.join(given)}")
        try:
            agent, level = agent_from_config(args.config)
        except (ConfigError, SpoolError) as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        where = args.config
    else:
        missing = [f"--{f}" for f in ("broker", "site", "device") if getattr(args, f) is None]
        if missing:
            return usage_error(
                f"the following arguments are required: {', '.join(missing)} (or --config FILE)"
            )
        try:
            agent = agent_from_flags(args)
        except SystemExit as exc:
            return int(exc.code or 2)
        except (ValueError, OSError, SpoolError) as exc:  # TLS options with mqtt://, bad CA
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
        level = "INFO"
        where = "flags"
    logging.basicConfig(
        level=args.log_level or level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        agent.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info(
            "agent %s/%s (%s) publishing to %s, spool %s",
            agent.site,
            agent.device,
            where,
            agent.connection.broker,
            agent.spool.path,
        )
        report = agent.run(args.duration_s)
    except Exception as exc:  # one clear line for the operator; details at DEBUG
        log.debug("agent failed", exc_info=True)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    kept = " (kept in the spool)" if report.kept and report.unacked_messages else ""
    log.info(
        "stopped: %d messages, %d readings published, %d unacknowledged%s, %d readings dropped",
        report.published_messages,
        report.published_readings,
        report.unacked_messages,
        kept,
        report.dropped_readings,
    )
    lost = report.dropped_readings or (report.unacked_messages and not report.kept)
    return 1 if lost else 0


def agent_from_config(path: str) -> tuple[Agent, str]:
    """The agent a configuration file describes, and its log level."""
    cfg = load_config(path)
    scheduled = [Scheduled(build_driver(s), s.interval_s) for s in cfg.sensors]
    spool = Spool(
        cfg.spool.path,
        cfg.device,
        max_bytes=int(cfg.spool.max_mb * 2**20),
        sync=cfg.spool.sync,
    )
    try:
        agent = Agent(
            cfg.mqtt.broker,
            cfg.site,
            cfg.device,
            scheduled,
            batch_size=cfg.agent.batch_max,
            max_batch_delay_s=cfg.agent.flush_interval_s,
            clock=Clock(cfg.agent.clock_sync_file),
            tls=cfg.mqtt.tls,
            spool=spool,
            replay_rate_per_s=cfg.spool.replay_rate_per_s,
            protocol=cfg.mqtt.protocol,
            keepalive_s=cfg.mqtt.keepalive_s,
            notifier=Notifier(),
            telemetry_schema=cfg.agent.telemetry_schema,
        )
    except (ValueError, OSError) as exc:  # e.g. an unreadable key that passed os.access
        spool.close()
        raise ConfigError("mqtt", str(exc)) from None
    return agent, cfg.agent.log_level


def agent_from_flags(args: argparse.Namespace) -> Agent:
    prog = "fieldline edge"
    specs = args.sensors or [_sensor_spec("cpu_temp")]
    names = [name for _, name, _ in specs]
    if len(set(names)) != len(names):
        print(
            f"{prog}: error: sensor names must be unique, got {', '.join(names)}", file=sys.stderr
        )
        raise SystemExit(2)
    sensors = make_sensors(specs, args.device, args.interval_s, args.sysfs_root)
    tls = None
    if args.ca_file or args.cert_file or args.key_file:
        tls = TLSConfig(args.ca_file, args.cert_file, args.key_file)
    spool = Spool(args.spool, args.device)
    try:
        return Agent(
            args.broker,
            args.site,
            args.device,
            sensors,
            interval_s=args.interval_s,
            batch_size=args.batch_size,
            max_batch_delay_s=args.max_batch_delay_s,
            ack_timeout_s=args.ack_timeout_s,
            tls=tls,
            spool=spool,
            notifier=Notifier(),
            telemetry_schema=contract.telemetry_schema(args.schema or 1),
        )
    except BaseException:
        spool.close()
        raise


if __name__ == "__main__":  # python -m fieldline_edge.edge_cli: no plugin discovery at all
    sys.exit(edge_main())
