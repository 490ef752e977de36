"""``fieldline edge flash | deploy | rollback | credentials``: put the agent on devices.

These run on the operator's machine. Each subcommand's exit status: 0 when
everything succeeded, 1 when something failed (for a fleet: any device), 2 on
misuse (usage or a one-line error on stderr, never a traceback). No secret is
ever printed: passwords stay in 0600 files, the Wi-Fi PSK is read from a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence

if TYPE_CHECKING:  # the agent on a device imports this module: keep its start-up light
    from fieldline_edge import deploy
    from fieldline_edge.provision import DeviceSpec

COMMANDS = ("flash", "deploy", "rollback", "credentials")
DEFAULT_OPERATOR_DIR = "fieldline-operator"


class UsageError(Exception):
    """Misuse found after parsing (exit 2)."""


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _add_device(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--device-id", required=required, metavar="ID", help="the device's id")
    p.add_argument("--site", required=required, help="the site the device belongs to")
    p.add_argument(
        "--broker",
        required=required,
        metavar="URL",
        help="mqtt://host[:port] or mqtts://host[:port]",
    )
    p.add_argument("--ca-file", type=_existing_file, metavar="PEM", help="CA of an mqtts:// broker")
    p.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1", help="MQTT version")


def _add_package(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--operator-dir",
        default=DEFAULT_OPERATOR_DIR,
        metavar="DIR",
        help="device passwords, the broker's password file and ACL"
        f" (default: {DEFAULT_OPERATOR_DIR})",
    )
    p.add_argument(
        "--rotate-password", action="store_true", help="make a new password even if one exists"
    )
    p.add_argument(
        "--wheel",
        dest="wheels",
        action="append",
        type=_existing_file,
        default=[],
        metavar="WHL",
        help="ship this wheel (repeatable; default: rebuilt from what is installed here)",
    )
    p.add_argument("--unit", type=_existing_file, metavar="FILE", help="systemd unit to install")


def _add_ssh(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", metavar="[USER@]HOST", help="one device")
    where.add_argument("--inventory", type=_existing_file, metavar="TOML", help="a fleet")
    p.add_argument("--port", type=_port, help="SSH port")
    p.add_argument("--identity", type=_existing_file, metavar="KEY", help="SSH private key")
    p.add_argument("--known-hosts", type=Path, metavar="FILE", help="SSH known_hosts file")
    p.add_argument(
        "--ssh-option",
        dest="ssh_options",
        action="append",
        default=[],
        metavar="OPT",
        help="extra ssh -o option (repeatable), e.g. StrictHostKeyChecking=accept-new",
    )
    p.add_argument(
        "--root", default=None, metavar="DIR", help="install prefix on the device (default: /)"
    )
    p.add_argument(
        "--parallel", type=_positive_int, default=4, help="devices at a time (default: 4)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")


def add_commands(sub: Any) -> None:
    """Add this module's subcommands to ``fieldline edge``'s subparsers."""
    fl = sub.add_parser(
        "flash",
        allow_abbrev=False,
        help="write the agent onto a Raspberry Pi OS image or SD card (cloud-init)",
        description="Write the agent, its config and credentials onto the boot partition of a "
        "Raspberry Pi OS image or SD card; cloud-init installs and starts it at first boot.",
    )
    fl.add_argument("--image", required=True, type=Path, metavar="IMG|DEVICE")
    _add_device(fl, required=True)
    fl.add_argument("--hostname", help="host name (default: from the device id)")
    fl.add_argument("--wifi-ssid", metavar="SSID")
    fl.add_argument(
        "--wifi-psk-file", type=_existing_file, metavar="FILE", help="file holding the PSK"
    )
    fl.add_argument(
        "--wifi-country", metavar="CC", help="Wi-Fi country code, e.g. GB (required with Wi-Fi)"
    )
    fl.add_argument(
        "--ssh-key", type=_existing_file, metavar="PUB", help="public key for an SSH login"
    )
    fl.add_argument("--ssh-user", default="pi", help="user created for that key (default: pi)")
    fl.add_argument("--yes", action="store_true", help="do not ask before writing a block device")
    _add_package(fl)

    de = sub.add_parser(
        "deploy",
        allow_abbrev=False,
        help="install or upgrade the agent on running devices over SSH",
        description="Install or upgrade the agent over SSH. With --device-id/--site/--broker (or "
        "an inventory's device_id) the device's config and credentials are written too; "
        "without, only the code is upgraded.",
    )
    _add_ssh(de)
    _add_device(de, required=False)
    _add_package(de)

    rb = sub.add_parser(
        "rollback",
        allow_abbrev=False,
        help="switch devices back to their previous release",
        description="Switch devices back to the release they ran before the last deploy.",
    )
    _add_ssh(rb)

    cr = sub.add_parser(
        "credentials",
        allow_abbrev=False,
        help="make a device's broker password and the Mosquitto entries",
        description="Make (or reuse) a device's broker password and write the Mosquitto "
        "password-file line and ACL under --out.",
    )
    cr.add_argument("--device-id", required=True, metavar="ID")
    cr.add_argument("--site", required=True)
    cr.add_argument("--out", default=DEFAULT_OPERATOR_DIR, metavar="DIR", help="operator directory")
    cr.add_argument("--rotate-password", action="store_true", help="make a new password")


# -- running ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, prog: str) -> int:
    """Run a parsed subcommand of this module; returns the exit status."""
    from fieldline_edge.bundle import BundleError
    from fieldline_edge.flash import FlashError

    handlers = {"flash": _flash, "deploy": _deploy, "rollback": _rollback, "credentials": _creds}
    try:
        return handlers[args.command](args)
    except (UsageError, ValueError) as exc:  # InventoryError is a ValueError
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FlashError, BundleError, OSError) as exc:
        print(f"{prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _spec(args: argparse.Namespace) -> Optional[DeviceSpec]:
    from fieldline_edge.provision import DeviceSpec

    given = [args.device_id, args.site, args.broker]
    if not any(given):
        if args.ca_file is not None:
            raise UsageError("--ca-file needs --device-id, --site and --broker")
        return None
    if not all(given):
        raise UsageError("--device-id, --site and --broker go together")
    spec = DeviceSpec(args.device_id, args.site, args.broker, args.ca_file, args.protocol)
    spec.check()
    return spec


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        raise UsageError(f"{question.rstrip('?')}: refusing without --yes (no terminal to ask)")
    answer = input(f"{question} This overwrites its cloud-init files. [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def _flash(args: argparse.Namespace) -> int:
    from fieldline_edge import cloudinit
    from fieldline_edge.credentials import OperatorDir
    from fieldline_edge.flash import FlashOptions, flash

    spec = _spec(args)
    assert spec is not None  # all three are required options
    wifi = None
    if args.wifi_ssid or args.wifi_psk_file:
        if not (args.wifi_ssid and args.wifi_psk_file and args.wifi_country):
            raise UsageError("Wi-Fi needs --wifi-ssid, --wifi-psk-file and --wifi-country")
        psk = args.wifi_psk_file.read_text(encoding="utf-8").rstrip("\r\n")
        wifi = cloudinit.check_wifi(cloudinit.Wifi(args.wifi_ssid, psk, args.wifi_country))
    keys = [args.ssh_key.read_text(encoding="utf-8").strip()] if args.ssh_key else []
    options = FlashOptions(
        hostname=args.hostname, wifi=wifi, ssh_user=args.ssh_user, ssh_keys=keys,
        wheels=args.wheels, unit=args.unit, rotate=args.rotate_password,
    )  # fmt: skip
    confirm: Callable[[str], bool] = (lambda q: True) if args.yes else _ask
    result = flash(args.image, spec, OperatorDir(args.operator_dir), options, confirm=confirm)
    creds = result.credentials
    print(
        f"flashed {spec.site}/{spec.device} onto {result.target} (boot partition "
        f"{result.partition.number}, offset {result.partition.offset}): release {result.release}"
    )
    print(f"  wrote: {', '.join(result.files)}; host name {result.hostname}")
    state = "new" if creds.created else "kept"
    print(f"  broker user {creds.username}: password ({state}) in {creds.password_file}")
    _print_broker_side(creds.broker_password_file, creds.broker_acl_file)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _print_broker_side(passwd: Path, acl: Path) -> None:
    print(f"  broker side: Mosquitto password_file {passwd}, acl_file {acl}")
    print("  (copy both to the broker and reload it: systemctl reload mosquitto)")


def _targets(args: argparse.Namespace, spec: Optional[DeviceSpec]) -> List[deploy.Target]:
    from fieldline_edge import deploy

    overrides = {
        "port": args.port,
        "identity": args.identity,
        "known_hosts": args.known_hosts,
        "root": args.root,
    }
    if args.root is not None and not args.root.startswith("/"):
        raise UsageError("--root must be an absolute path")
    if args.inventory is not None:
        if spec is not None:
            raise UsageError("with --inventory, devices are described in the inventory")
        targets = deploy.load_inventory(args.inventory)
    else:
        targets = [deploy.Target(host=args.host, spec=spec)]
    return [
        deploy.with_overrides(
            t, ssh_options=(*t.ssh_options, *args.ssh_options) or None, **overrides
        )
        for t in targets
    ]


def _report(results: Sequence[deploy.Result], as_json: bool) -> int:
    failed = sum(not r.ok for r in results)
    if as_json:
        body = {
            "ok": failed == 0,
            "devices": len(results),
            "failed": failed,
            "results": [r.as_dict() for r in results],
        }
        print(json.dumps(body, indent=2))
    else:
        for r in results:
            print(r.line())
        if len(results) > 1:
            print(f"{len(results) - failed} of {len(results)} devices ok")
    return 1 if failed else 0


def _deploy(args: argparse.Namespace) -> int:
    from fieldline_edge import deploy
    from fieldline_edge.credentials import OperatorDir

    spec = None if args.inventory else _spec(args)
    if args.inventory and any([args.device_id, args.site, args.broker, args.ca_file]):
        raise UsageError("with --inventory, devices are described in the inventory")
    targets = _targets(args, spec)
    operator = OperatorDir(args.operator_dir)

    def work(t: deploy.Target) -> deploy.Result:
        return deploy.deploy_one(
            t, operator, wheels=args.wheels, unit=args.unit, rotate=args.rotate_password
        )

    results = deploy.for_fleet(targets, work, args.parallel)
    code = _report(results, args.json)
    if any(t.spec for t in targets) and not args.json:
        _print_broker_side(operator.broker_password_file, operator.broker_acl_file)
    return code


def _rollback(args: argparse.Namespace) -> int:
    from fieldline_edge import deploy

    targets = _targets(args, None)
    return _report(deploy.for_fleet(targets, deploy.rollback_one, args.parallel), args.json)


def _creds(args: argparse.Namespace) -> int:
    from fieldline_edge.credentials import OperatorDir

    operator = OperatorDir(args.out)
    creds = operator.device(args.site, args.device_id, rotate=args.rotate_password)
    state = "new" if creds.created else "kept"
    print(f"broker user {creds.username}: password ({state}) in {creds.password_file}")
    print("  the device reads it from its password_file (mode 0600); it is not printed here")
    _print_broker_side(creds.broker_password_file, creds.broker_acl_file)
    return 0
