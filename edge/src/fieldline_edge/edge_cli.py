"""``fieldline edge run`` (also ``fieldline-edge run``): run the agent for one device.

argparse only, so it works on a device without typer. Exit status: 0 after a
clean stop, 1 if telemetry was left unacknowledged or the agent failed, 2 on
misuse (usage on stderr, never a traceback).
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
from fieldline_edge.agent import ACK_TIMEOUT_S, MAX_BATCH_DELAY_S, Agent
from fieldline_edge.mqtt import BrokerURL, TLSConfig, parse_broker_url
from fieldline_edge.sensors import CpuTemperature, Sensor, SimulatedSensor

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
        "--broker",
        required=True,
        type=_broker,
        metavar="URL",
        help="mqtt://[user:pass@]host[:port] or mqtts://... (TLS)",
    )
    run.add_argument(
        "--ca-file", metavar="PEM", help="CA certificates for mqtts:// (default: system)"
    )
    run.add_argument("--cert-file", metavar="PEM", help="client certificate for mqtts://")
    run.add_argument("--key-file", metavar="PEM", help="client certificate's key for mqtts://")
    run.add_argument("--site", required=True, type=_id("site"))
    run.add_argument("--device", required=True, type=_id("device"), metavar="ID")
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
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


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
    parser = build_parser(prog)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse already printed usage and the error
        return exc.code if isinstance(exc.code, int) else 2
    if args.command in fleet_cli.COMMANDS:
        return fleet_cli.run(args, prog)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    specs = args.sensors or [_sensor_spec("cpu_temp")]
    names = [name for _, name, _ in specs]
    if len(set(names)) != len(names):
        print(
            f"{prog}: error: sensor names must be unique, got {', '.join(names)}", file=sys.stderr
        )
        return 2
    sensors = make_sensors(specs, args.device, args.interval_s, args.sysfs_root)
    tls = None
    if args.ca_file or args.cert_file or args.key_file:
        tls = TLSConfig(args.ca_file, args.cert_file, args.key_file)
    try:
        agent = Agent(
            args.broker,
            args.site,
            args.device,
            sensors,
            interval_s=args.interval_s,
            batch_size=args.batch_size,
            max_batch_delay_s=args.max_batch_delay_s,
            ack_timeout_s=args.ack_timeout_s,
            tls=tls,
        )
    except (ValueError, OSError) as exc:  # TLS options with mqtt://, unreadable CA file
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        agent.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("agent %s/%s publishing to %s", args.site, args.device, args.broker)
        report = agent.run(args.duration_s)
    except Exception as exc:  # one clear line for the operator; details at DEBUG
        log.debug("agent failed", exc_info=True)
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info(
        "stopped: %d messages, %d readings published, %d unacknowledged",
        report.published_messages,
        report.published_readings,
        report.unacked_messages,
    )
    return 1 if report.unacked_messages or report.dropped_readings else 0


if __name__ == "__main__":  # python -m fieldline_edge.edge_cli: no plugin discovery at all
    sys.exit(edge_main())
