"""What travels to a device: the agent and paho-mqtt as wheels, the installer, the unit.

A bundle is a folder (copied onto the boot partition by ``flash``, streamed over
SSH by ``deploy``)::

    install.py                    fieldline_edge/install.py, run on the device
    manifest.json                 release id, version, wheel names and sha256
    wheels/*.whl                  fieldline-edge and paho-mqtt (pure Python)
    fieldline-edge.service        the systemd unit, installed as it is
    etc/edge.toml, etc/mqtt.password, etc/ca.crt   (when a device is configured)

The wheels are rebuilt from the distributions installed next to this code (so
flashing works offline, from a checkout or from an installed package) unless
prebuilt wheels are given, e.g. from ``uv build --package fieldline-edge``.
paho-mqtt travels too: the agent needs paho 2.x, and Debian bookworm (the base
of Raspberry Pi OS 12) ships 1.6, so the device installs nothing from the network.
Rebuilt wheels are byte-for-byte reproducible: the same code gives the same
release id, which makes a repeated deploy a no-op switch.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import json
import re
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from fieldline_edge import install

#: The distributions a device needs and the top-level package each one installs.
DISTRIBUTIONS = {"fieldline-edge": "fieldline_edge", "paho-mqtt": "paho"}
UNIT_NAME = install.UNIT_NAME
#: Files a device may receive in ``etc/`` and their modes on the device.
ETC_FILES = {"edge.toml": 0o644, "ca.crt": 0o644, "mqtt.password": 0o600}
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SKIP_DIST_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "WHEEL"}
_WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)-.+\.whl$")


class BundleError(Exception):
    """The bundle cannot be made: a missing wheel, unit or distribution."""


@dataclass(frozen=True)
class Bundle:
    path: Path
    release: str
    version: str
    wheels: Tuple[str, ...]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def wheel_info(path: Path) -> Tuple[str, str]:
    """(normalized distribution name, version) from a wheel's file name."""
    m = _WHEEL_RE.match(path.name)
    if m is None:
        raise BundleError(f"{path.name} is not a wheel file name (name-version-...-.whl)")
    return _norm(m["name"]), m["version"]


def _zip_add(zf: zipfile.ZipFile, arcname: str, data: bytes, record: List[str]) -> None:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_DATE)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    zf.writestr(info, data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{arcname},sha256={digest},{len(data)}")


def wheel_from_installed(dist_name: str, out_dir: Path, *, version: Optional[str] = None) -> Path:
    """Write a pure-Python wheel of the installed ``dist_name`` into ``out_dir``.

    Works for editable installs too: the package's files are read from where
    Python imports them. ``version`` overrides the version (tests use it to
    make an upgrade).
    """
    package = DISTRIBUTIONS.get(dist_name)
    try:
        dist = importlib.metadata.distribution(dist_name)
        spec = importlib.util.find_spec(package or _norm(dist_name))
    except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise BundleError(f"{dist_name} is not installed here: pass its wheel with --wheel")
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    version = version or dist.version
    info_dir = f"{_norm(dist_name)}-{version}.dist-info"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{_norm(dist_name)}-{version}-py3-none-any.whl"
    record: List[str] = []
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for file in sorted(pkg_dir.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                rel = file.relative_to(pkg_dir.parent).as_posix()
                _zip_add(zf, rel, file.read_bytes(), record)
        for f in sorted(dist.files or [], key=str):
            parts = Path(str(f)).parts
            if len(parts) < 2 or not parts[0].endswith(".dist-info"):
                continue
            rest = "/".join(parts[1:])
            if rest in _SKIP_DIST_INFO or rest.startswith("uv_"):
                continue
            data = Path(str(f.locate())).read_bytes()
            if rest == "METADATA":
                data = re.sub(rb"(?m)^Version: .*$", f"Version: {version}".encode(), data, count=1)
            _zip_add(zf, f"{info_dir}/{rest}", data, record)
        wheel_meta = (
            "Wheel-Version: 1.0\nGenerator: fieldline-edge\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        )
        _zip_add(zf, f"{info_dir}/WHEEL", wheel_meta.encode(), record)
        record.append(f"{info_dir}/RECORD,,")
        info = zipfile.ZipInfo(f"{info_dir}/RECORD", date_time=_ZIP_DATE)
        info.external_attr = 0o644 << 16
        zf.writestr(info, "\n".join(record) + "\n")
    path.write_bytes(buf.getvalue())
    return path


def find_unit(explicit: Optional[Path] = None) -> Path:
    """The systemd unit to install: ``explicit``, the packaged copy, or the checkout's."""
    if explicit is not None:
        if not explicit.is_file():
            raise BundleError(f"unit file {explicit} does not exist")
        return explicit
    here = Path(install.__file__).resolve().parent
    candidates = [here / "data" / UNIT_NAME]
    candidates += [p / "deploy" / "systemd" / UNIT_NAME for p in here.parents]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BundleError(f"no {UNIT_NAME} found: pass it with --unit FILE")


def stage(
    dest: Path,
    *,
    wheels: Sequence[Path] = (),
    unit: Optional[Path] = None,
    etc: Optional[Mapping[str, bytes]] = None,
) -> Bundle:
    """Fill the empty folder ``dest`` with a bundle; see the module doc for the layout."""
    wheel_dir = dest / "wheels"
    wheel_dir.mkdir(parents=True)
    chosen: Dict[str, Path] = {}
    for w in wheels:
        if not w.is_file():
            raise BundleError(f"wheel {w} does not exist")
        name, _ = wheel_info(w)
        if name in chosen:
            raise BundleError(f"two wheels of {name}: {chosen[name].name} and {w.name}")
        chosen[name] = Path(shutil.copy2(w, wheel_dir / w.name))
    for dist in DISTRIBUTIONS:
        if _norm(dist) not in chosen:
            chosen[_norm(dist)] = wheel_from_installed(dist, wheel_dir)
    version = wheel_info(chosen[_norm("fieldline-edge")])[1]
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in chosen.values()}
    combined = hashlib.sha256("".join(sorted(digests.values())).encode()).hexdigest()
    release = f"{version}-{combined[:8]}"
    manifest = {"release": release, "version": version, "wheels": digests}
    (dest / install.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    shutil.copyfile(install.__file__, dest / "install.py")
    shutil.copyfile(find_unit(unit), dest / UNIT_NAME)
    for name, data in (etc or {}).items():
        if name not in ETC_FILES:
            raise BundleError(f"unexpected device file {name!r}")
        target = dest / "etc" / name
        target.parent.mkdir(exist_ok=True)
        target.touch(mode=ETC_FILES[name])
        target.write_bytes(data)
    return Bundle(dest, release, version, tuple(sorted(digests)))
