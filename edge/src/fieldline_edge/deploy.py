"""Install, upgrade and roll back the agent on running devices over SSH.

One ``ssh`` connection per device and action (the OpenSSH client, so the
operator's keys, agent and ``~/.ssh/config`` apply): the bundle goes over
stdin as a tar stream, is unpacked into a temporary folder on the device and
installed by its own ``install.py`` (see :mod:`fieldline_edge.install`), whose
JSON result comes back on stdout. The device needs python3 (3.9+) and tar, as
every Raspberry Pi OS has; a non-root login uses ``sudo -n``.

A fleet is a TOML inventory; devices are handled in parallel, each one's
failure is reported and the others go on.
"""

from __future__ import annotations

import io
import json
import shlex
import subprocess
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fieldline_edge.credentials import OperatorDir
from fieldline_edge.provision import DeviceSpec, stage_device

CONNECT_TIMEOUT_S = 15
#: Longest one device may take (copy, unpack, restart) before it is reported failed.
DEVICE_TIMEOUT_S = 300

# Runs on the device under `sh -c`; "$@" are install.py's arguments.
_REMOTE = r"""set -eu
d=$(mktemp -d "${TMPDIR:-/tmp}/fieldline.XXXXXX")
trap 'rm -rf "$d"' EXIT
tar -xf - -C "$d"
if [ "$(id -u)" -ne 0 ] && [ "$FIELDLINE_SUDO" = yes ]; then
  sudo -n python3 "$d/install.py" "$@" --bundle "$d"
else
  python3 "$d/install.py" "$@" --bundle "$d"
fi
"""


@dataclass(frozen=True)
class Target:
    """One device to reach: ``host`` is ``[user@]host``; paths are on this machine."""

    host: str
    port: Optional[int] = None
    identity: Optional[Path] = None
    known_hosts: Optional[Path] = None
    ssh_options: Tuple[str, ...] = ()
    root: str = "/"
    spec: Optional[DeviceSpec] = None

    @property
    def name(self) -> str:
        return self.spec.device if self.spec is not None else self.host


@dataclass(frozen=True)
class Result:
    host: str
    device: Optional[str]
    action: str
    ok: bool
    release: Optional[str] = None
    previous: Optional[str] = None
    restart: Optional[str] = None
    error: Optional[str] = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        d = {
            "host": self.host,
            "device": self.device,
            "action": self.action,
            "ok": self.ok,
            "release": self.release,
            "previous": self.previous,
            "restart": self.restart,
            "error": self.error,
        }
        d.update(self.extra)
        return d

    def line(self) -> str:
        who = f"{self.host} ({self.device})" if self.device else self.host
        if not self.ok:
            return f"FAILED {who}: {self.error}"
        what = f"{self.release}" + (f" (previous {self.previous})" if self.previous else "")
        return f"ok     {who}: {self.action} {what}; restart {self.restart}"


def ssh_argv(target: Target, remote_command: str) -> List[str]:
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
    if target.port is not None:
        argv += ["-p", str(target.port)]
    if target.identity is not None:
        argv += ["-i", str(target.identity), "-o", "IdentitiesOnly=yes"]
    if target.known_hosts is not None:
        argv += ["-o", f"UserKnownHostsFile={target.known_hosts}"]
    for opt in target.ssh_options:
        argv += ["-o", opt]
    return [*argv, "--", target.host, remote_command]


def _tar(folder: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if path.is_file():
                with path.open("rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def run_remote(target: Target, folder: Path, args: Sequence[str]) -> Dict[str, Any]:
    """Send ``folder`` and run its install.py with ``args``; its JSON result, or an error."""
    sudo = "yes" if target.root == "/" else "no"
    command = "FIELDLINE_SUDO={} sh -c {} fieldline {}".format(
        sudo, shlex.quote(_REMOTE), " ".join(shlex.quote(a) for a in [*args, "--root", target.root])
    )
    try:
        res = subprocess.run(
            ssh_argv(target, command), input=_tar(folder), capture_output=True,
            timeout=DEVICE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"no answer within {DEVICE_TIMEOUT_S} s"}
    except OSError as exc:
        return {"ok": False, "error": f"cannot run ssh: {exc}"}
    out = res.stdout.decode(errors="replace").strip().splitlines()
    err = res.stderr.decode(errors="replace").strip()
    if out and out[-1].startswith("{"):
        try:
            result: Dict[str, Any] = json.loads(out[-1])
            return result
        except ValueError:
            pass
    if res.returncode == 255:  # ssh's own failure: connection, host key, authentication
        return {"ok": False, "error": f"ssh: {_last_line(err) or 'connection failed'}"}
    return {"ok": False, "error": f"exit {res.returncode}: {_last_line(err) or 'no output'}"}


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def _to_result(target: Target, action: str, raw: Mapping[str, Any]) -> Result:
    return Result(
        host=target.host,
        device=target.spec.device if target.spec else None,
        action=action,
        ok=bool(raw.get("ok")),
        release=raw.get("release"),
        previous=raw.get("previous"),
        restart=raw.get("restart"),
        error=raw.get("error") or (None if raw.get("ok") else f"restart {raw.get('restart')}"),
    )


def deploy_one(
    target: Target,
    operator: OperatorDir,
    *,
    wheels: Sequence[Path] = (),
    unit: Optional[Path] = None,
    rotate: bool = False,
) -> Result:
    """Install (or upgrade to) this machine's agent on one device; never raises."""
    try:
        with tempfile.TemporaryDirectory(prefix="fieldline-deploy-") as tmp:
            staging = Path(tmp) / "bundle"
            stage_device(staging, target.spec, operator, wheels=wheels, unit=unit, rotate=rotate)
            raw = run_remote(target, staging, ["install"])
    except Exception as exc:  # one device's failure must not stop the fleet
        return Result(target.host, target.spec.device if target.spec else None, "install",
                      False, error=str(exc))  # fmt: skip
    return _to_result(target, "install", raw)


def rollback_one(target: Target) -> Result:
    """Switch one device back to its previous release; never raises."""
    from fieldline_edge import install

    try:
        with tempfile.TemporaryDirectory(prefix="fieldline-rollback-") as tmp:
            folder = Path(tmp)
            (folder / "install.py").write_bytes(Path(install.__file__).read_bytes())
            raw = run_remote(target, folder, ["rollback"])
    except Exception as exc:
        return Result(target.host, None, "rollback", False, error=str(exc))
    return _to_result(target, "rollback", raw)


def for_fleet(targets: Sequence[Target], work: Any, parallel: int) -> List[Result]:
    """``work(target)`` for every target, ``parallel`` at a time, results in inventory order."""
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(work, targets))


# -- inventory ------------------------------------------------------------------------


_TARGET_KEYS = {"host", "port", "identity", "known_hosts", "ssh_options", "root"}
_SPEC_KEYS = {"device_id", "site", "broker", "ca_file", "protocol"}
_ALL_KEYS = _TARGET_KEYS | _SPEC_KEYS


class InventoryError(ValueError):
    pass


def _load_toml(path: Path) -> Dict[str, Any]:
    from fieldline_edge import toml  # tomllib where there is one, else a small parser

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InventoryError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InventoryError(f"{path} is not UTF-8 text") from None
    try:
        return toml.loads(text)
    except ValueError as exc:
        raise InventoryError(f"{path}: not valid TOML: {exc}") from None


def load_inventory(path: Path) -> List[Target]:
    """Targets from a fleet TOML file (see docs/edge-deploy.md for the format).

    ``[defaults]`` applies to every ``[[devices]]`` entry. Relative paths are
    relative to the file.
    """
    data = _load_toml(path)
    unknown = set(data) - {"defaults", "devices"}
    if unknown:
        raise InventoryError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    defaults = data.get("defaults", {})
    devices = data.get("devices", [])
    if not isinstance(defaults, dict) or not isinstance(devices, list) or not devices:
        raise InventoryError(f"{path}: needs [[devices]] entries (and an optional [defaults])")
    targets = []
    for i, entry in enumerate(devices, 1):
        where = f"{path}: devices[{i}]"
        if not isinstance(entry, dict):
            raise InventoryError(f"{where} is not a table")
        merged = {**defaults, **entry}
        unknown = set(merged) - _ALL_KEYS
        if unknown:
            raise InventoryError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        targets.append(_target(merged, where, path.parent))
    names = [t.host + ":" + str(t.port) for t in targets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InventoryError(f"{path}: host listed twice: {', '.join(dupes)}")
    return targets


def _path(value: Any, key: str, where: str, base: Path) -> Optional[Path]:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{where}: {key} must be a path (a string)")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _target(d: Mapping[str, Any], where: str, base: Path) -> Target:
    host = d.get("host")
    if not isinstance(host, str) or not host:
        raise InventoryError(f"{where}: host is required ([user@]hostname)")
    port = d.get("port")
    if port is not None and (not isinstance(port, int) or not 0 < port < 65536):
        raise InventoryError(f"{where}: port must be an integer 1-65535, got {port!r}")
    opts = d.get("ssh_options", [])
    if not isinstance(opts, list) or not all(isinstance(o, str) for o in opts):
        raise InventoryError(f"{where}: ssh_options must be a list of strings")
    root = d.get("root", "/")
    if not isinstance(root, str) or not root.startswith("/"):
        raise InventoryError(f"{where}: root must be an absolute path")
    spec = None
    if "device_id" in d:
        missing = [k for k in ("site", "broker") if not isinstance(d.get(k), str)]
        if missing:
            raise InventoryError(f"{where}: device_id needs {' and '.join(missing)}")
        spec = DeviceSpec(
            device=str(d["device_id"]),
            site=str(d["site"]),
            broker=str(d["broker"]),
            ca_file=_path(d.get("ca_file"), "ca_file", where, base),
            protocol=str(d.get("protocol", "3.1.1")),
        )
        try:
            spec.check()
        except ValueError as exc:
            raise InventoryError(f"{where}: {exc}") from None
    return Target(
        host=host,
        port=port,
        identity=_path(d.get("identity"), "identity", where, base),
        known_hosts=_path(d.get("known_hosts"), "known_hosts", where, base),
        ssh_options=tuple(opts),
        root=root,
        spec=spec,
    )


def with_overrides(target: Target, **changes: Any) -> Target:
    """``target`` with every change that is not None (command-line options over the inventory)."""
    return replace(target, **{k: v for k, v in changes.items() if v is not None})
