"""Install, upgrade and roll back the agent on a device. Runs ON the device.

This file is copied into every bundle and run there as ``python3 install.py``
(by cloud-init at first boot, or over SSH by ``fieldline edge deploy``), before
anything of Fieldline is installed: it uses the standard library only and
imports nothing from ``fieldline_edge``. Python 3.9+.

Layout under ``--root`` (``/`` on a real device; a temporary folder in tests)::

    opt/fieldline/releases/<release>/lib/      the unpacked wheels (agent and paho-mqtt)
    opt/fieldline/releases/<release>/bin/fieldline
    opt/fieldline/current  -> releases/<release>     what runs
    opt/fieldline/previous -> releases/<older>       what ``rollback`` goes back to
    usr/local/bin/fieldline -> ../../../opt/fieldline/current/bin/fieldline
    etc/fieldline/edge.toml, mqtt.password (0600), ca.crt
    etc/systemd/system/fieldline-edge.service

A release is unpacked next to the others and switched to by replacing one
symlink (``rename(2)`` is atomic), so a device always has one complete release
to run, whatever moment an upgrade is interrupted at. The last line printed on
stdout is a JSON object with the result; everything else goes to stderr.
"""

from __future__ import annotations

import argparse
import compileall
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Tuple

UNIT_NAME = "fieldline-edge.service"
BASE = "opt/fieldline"
CONFIG_DIR = "etc/fieldline"
UNIT_DIR = "etc/systemd/system"
STATE_DIR = "var/lib/fieldline"
BIN_LINK = "usr/local/bin/fieldline"
MANIFEST = "manifest.json"
#: Groups the service user joins when they exist: I2C sensors (bme280) and GPIO.
SENSOR_GROUPS = ("i2c", "gpio")
SYSTEMCTL_TIMEOUT_S = 90

# The launcher finds its release through its own real path, so the `current`
# symlink (and /usr/local/bin/fieldline pointing through it) select the release.
LAUNCHER = """#!/usr/bin/env python3
import os
import sys

LIB = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "lib")
sys.path.insert(0, LIB)
from fieldline_edge.cli import main

sys.exit(main())
"""


class InstallError(Exception):
    """A step failed; the message says which and why."""


def log(message: str) -> None:
    print(f"fieldline-install: {message}", file=sys.stderr, flush=True)


# -- files ---------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` with ``data``; the file has ``mode`` from its creation on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # umask may have cut bits from open()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _symlink_atomic(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def _release_of(link: Path) -> Optional[str]:
    """The release a ``current``/``previous`` link points at, or None."""
    if not link.is_symlink():
        return None
    return PurePosixPath(os.readlink(link)).name


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def _unpack_wheel(wheel: Path, lib: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            # A wheel is a zip from the operator's machine: never write outside lib/.
            if info.filename.startswith("/") or ".." in parts:
                raise InstallError(f"{wheel.name}: unsafe path {info.filename!r}")
            if parts and parts[0].endswith(".data"):
                raise InstallError(f"{wheel.name}: wheels with .data are not supported")
        zf.extractall(lib)


# -- the service user and systemd ----------------------------------------------------


def _unit_user(unit_text: str) -> Optional[str]:
    for line in unit_text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "User" and value.strip():
            return value.strip()
    return None


def _ensure_user(name: str) -> str:
    """Create the system user ``name`` if missing; returns what was done."""
    try:
        pwd.getpwnam(name)
        done = f"user {name} exists"
    except KeyError:
        _run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
             "/var/lib/fieldline", "--shell", "/usr/sbin/nologin", name],
            "useradd",
        )  # fmt: skip
        done = f"user {name} created"
    for group in SENSOR_GROUPS:
        if _group_exists(group):
            _run(["usermod", "-a", "-G", group, name], "usermod")
    return done


def _group_exists(group: str) -> bool:
    import grp

    try:
        grp.getgrnam(group)
    except KeyError:
        return False
    return True


def _run(argv: List[str], what: str) -> str:
    try:
        res = subprocess.run(
            argv, capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallError(f"{what} failed: {exc}") from None
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip()[-500:]
        raise InstallError(f"{what} failed (exit {res.returncode}): {tail}")
    return res.stdout


def _systemd_reason(root: Path) -> Optional[str]:
    """None if units can be restarted here, else why not."""
    if root.resolve() != Path("/"):
        return f"installed under {root}, not the running system"
    if not Path("/run/systemd/system").is_dir():
        return "systemd is not running"
    if shutil.which("systemctl") is None:
        return "no systemctl"
    return None


def restart_service(root: Path, no_block: bool) -> str:
    """Reload units, enable and (re)start the agent; 'restarted', 'queued' or 'skipped: ...'."""
    reason = _systemd_reason(root)
    if reason is not None:
        return f"skipped: {reason}"
    _run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
    _run(["systemctl", "enable", UNIT_NAME], "systemctl enable")
    if no_block:
        # At first boot this runs inside cloud-init's own unit: waiting for the
        # agent's start job from there could wait on cloud-init itself.
        _run(["systemctl", "restart", "--no-block", UNIT_NAME], "systemctl restart")
        return "queued"
    _run(["systemctl", "restart", UNIT_NAME], "systemctl restart")
    state = subprocess.run(
        ["systemctl", "is-active", UNIT_NAME], capture_output=True, text=True, check=False
    ).stdout.strip()
    if state != "active":
        raise InstallError(f"{UNIT_NAME} is {state or 'unknown'} after the restart")
    return "restarted"


# -- install and rollback ----------------------------------------------------------------


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / BASE
        self.releases = self.base / "releases"
        self.current = self.base / "current"
        self.previous = self.base / "previous"

    def lock(self) -> int:
        """Hold an exclusive lock so two deploys to one device cannot interleave."""
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.base / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    def switch(self, release: str) -> Optional[str]:
        """Point ``current`` at ``release``; the one it left becomes ``previous``."""
        old = _release_of(self.current)
        if old is not None and old != release and (self.releases / old).is_dir():
            _symlink_atomic(self.previous, f"releases/{old}")
        _symlink_atomic(self.current, f"releases/{release}")
        return _release_of(self.previous)

    def prune(self) -> List[str]:
        """Delete every release but the current and the previous one (SD cards are small)."""
        keep = {_release_of(self.current), _release_of(self.previous)}
        removed: List[str] = []
        if self.releases.is_dir():
            for path in sorted(self.releases.iterdir()):
                if path.is_dir() and path.name not in keep:
                    shutil.rmtree(path)
                    removed.append(path.name)
        return [name for name in removed if not name.startswith(".")]


def install(
    bundle: Path, root: Path, *, no_block: bool = False, consume: bool = False
) -> Dict[str, Any]:
    try:
        manifest = json.loads((bundle / MANIFEST).read_text())
        release = str(manifest["release"])
        wheels = dict(manifest["wheels"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InstallError(f"bad bundle {bundle}: no readable {MANIFEST} ({exc})") from None
    if not release or "/" in release or release.startswith("."):
        raise InstallError(f"bad release name {release!r}")
    for name, digest in wheels.items():
        path = bundle / "wheels" / name
        if not path.is_file() or _sha256(path) != digest:
            raise InstallError(f"wheel {name} is missing or damaged (checksum mismatch)")

    layout = Layout(root)
    lock = layout.lock()
    try:
        target = layout.releases / release
        changed = not target.is_dir()
        if changed:
            tmp = layout.releases / f".{release}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / "lib").mkdir(parents=True)
            for name in sorted(wheels):
                _unpack_wheel(bundle / "wheels" / name, tmp / "lib")
            # The agent cannot write bytecode next to its code (read-only /opt under
            # the unit's ProtectSystem=strict): compile it now, or every start pays.
            compileall.compile_dir(str(tmp / "lib"), quiet=1)
            _write_atomic(tmp / "bin" / "fieldline", LAUNCHER.encode(), 0o755)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            os.replace(tmp, target)
            log(f"unpacked release {release}")
        else:
            log(f"release {release} is already on the device")

        unit = bundle / UNIT_NAME
        unit_text = unit.read_text() if unit.is_file() else ""
        if unit_text:
            _write_atomic(root / UNIT_DIR / UNIT_NAME, unit_text.encode(), 0o644)
        user = _unit_user(unit_text)
        # Users and ownership are only touched on the live system, as root.
        live = root.resolve() == Path("/") and os.geteuid() == 0
        user_note = None
        if user and live and user != "root":
            user_note = _ensure_user(user)
        owner = _owner(user) if live else None

        etc = root / CONFIG_DIR
        etc.mkdir(parents=True, exist_ok=True)
        written = []
        for name, mode in (("edge.toml", 0o644), ("ca.crt", 0o644), ("mqtt.password", 0o600)):
            src = bundle / "etc" / name
            if src.is_file():
                _write_atomic(etc / name, src.read_bytes(), mode)
                if name == "mqtt.password" and owner is not None:
                    os.chown(etc / name, *owner)
                written.append(f"/{CONFIG_DIR}/{name}")
        state = root / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(state, *owner)

        previous = layout.switch(release)
        _symlink_atomic(root / BIN_LINK, "../../../" + BASE + "/current/bin/fieldline")
        pruned = layout.prune()
        ok = True
        try:
            restart = restart_service(root, no_block)
        except InstallError as exc:
            ok, restart = False, f"failed: {exc}"
    finally:
        os.close(lock)
    if consume:
        # The boot partition is FAT and readable by every local user: the
        # password must not stay there once it is installed.
        shutil.rmtree(bundle, ignore_errors=True)
    return {
        "ok": ok,
        "action": "install",
        "release": release,
        "previous": previous,
        "changed": changed,
        "files": written,
        "user": user_note,
        "pruned": pruned,
        "restart": restart,
    }


def _owner(user: Optional[str]) -> Optional[Tuple[int, int]]:
    if not user or os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    return (entry.pw_uid, entry.pw_gid)


def rollback(root: Path) -> Dict[str, Any]:
    layout = Layout(root)
    lock = layout.lock()
    try:
        current = _release_of(layout.current)
        previous = _release_of(layout.previous)
        if previous is None or not (layout.releases / previous).is_dir():
            raise InstallError("no previous release to roll back to")
        _symlink_atomic(layout.current, f"releases/{previous}")
        if current is not None:
            _symlink_atomic(layout.previous, f"releases/{current}")
        ok = True
        try:
            restart = restart_service(root, no_block=False)
        except InstallError as exc:
            ok, restart = False, f"failed: {exc}"
    finally:
        os.close(lock)
    return {
        "ok": ok,
        "action": "rollback",
        "release": previous,
        "previous": current,
        "changed": True,
        "restart": restart,
    }


def status(root: Path) -> Dict[str, Any]:
    layout = Layout(root)
    releases = sorted(p.name for p in layout.releases.iterdir()) if layout.releases.is_dir() else []
    return {
        "ok": True,
        "action": "status",
        "release": _release_of(layout.current),
        "previous": _release_of(layout.previous),
        "releases": [r for r in releases if not r.startswith(".")],
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="install.py", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["install", "rollback", "status"])
    parser.add_argument("--root", default="/", help="install prefix (default: /)")
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--no-block", action="store_true", help="queue the restart, do not wait")
    parser.add_argument("--consume", action="store_true", help="delete the bundle when installed")
    args = parser.parse_args(argv)
    root = Path(args.root)
    try:
        if args.action == "install":
            result = install(Path(args.bundle), root, no_block=args.no_block, consume=args.consume)
        elif args.action == "rollback":
            result = rollback(root)
        else:
            result = status(root)
    except (InstallError, OSError) as exc:
        log(f"error: {exc}")
        print(json.dumps({"ok": False, "action": args.action, "error": str(exc)}), flush=True)
        return 1
    log(f"{result['action']}: {result.get('release')} (restart: {result.get('restart', '-')})")
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
