"""Write the agent, its config and credentials onto a Raspberry Pi OS image or SD card.

The boot partition is the first FAT partition of an MBR disk. Its offset is read
from the partition table here, and files are written with mtools
(``mcopy -i image@@offset``), so an image file needs no root, no loop device and
no mount. A block device (an SD card) works the same way as root, after a
confirmation, and never while one of its partitions is mounted.

What lands on the boot partition: ``user-data``, ``meta-data``,
``network-config`` (cloud-init, see :mod:`fieldline_edge.cloudinit`) and the
bundle in ``fieldline/`` (see :mod:`fieldline_edge.bundle`), which cloud-init
installs at first boot and then deletes, password included.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

from fieldline_edge import cloudinit
from fieldline_edge.credentials import DeviceCredentials, OperatorDir
from fieldline_edge.provision import DeviceSpec, stage_device

SECTOR = 512
#: MBR partition types of FAT file systems (FAT12, FAT16 <32M, FAT16, FAT32 CHS/LBA, FAT16 LBA).
FAT_TYPES = {0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E}
GPT_PROTECTIVE = 0xEE
MTOOLS_TIMEOUT_S = 120


class FlashError(Exception):
    """The image or device cannot be written; nothing was changed unless the message says so."""


class Partition(NamedTuple):
    number: int  # 1-based, as in /dev/sdX1
    kind: int  # the MBR partition type byte
    start_lba: int
    sectors: int

    @property
    def offset(self) -> int:
        return self.start_lba * SECTOR


def read_partitions(head: bytes) -> List[Partition]:
    """The primary partitions of an MBR (the first 512 bytes of a disk)."""
    if len(head) < SECTOR or head[510:512] != b"\x55\xaa":
        raise FlashError("no MBR partition table (missing 0x55AA signature): not a disk image")
    parts = []
    for i in range(4):
        entry = head[446 + 16 * i : 446 + 16 * (i + 1)]
        ptype = entry[4]
        start, count = struct.unpack_from("<II", entry, 8)
        if ptype != 0 and count:
            parts.append(Partition(i + 1, ptype, start, count))
    return parts


def boot_partition(path: Path) -> Partition:
    """The first FAT partition of the MBR image or device at ``path``."""
    with path.open("rb") as f:
        head = f.read(SECTOR)
        parts = read_partitions(head)
        if any(p.kind == GPT_PROTECTIVE for p in parts):
            raise FlashError(f"{path} has a GPT partition table; Raspberry Pi OS images use MBR")
        fat = [p for p in parts if p.kind in FAT_TYPES]
        if not fat:
            raise FlashError(f"{path} has no FAT partition (types found: "
                             f"{', '.join(hex(p.kind) for p in parts) or 'none'})")  # fmt: skip
        part = fat[0]
        f.seek(part.offset)
        boot_sector = f.read(SECTOR)
    if len(boot_sector) < SECTOR or boot_sector[510:512] != b"\x55\xaa":
        raise FlashError(f"partition {part.number} of {path} holds no FAT file system")
    return part


# -- mtools ------------------------------------------------------------------------------


class Fat:
    """The FAT file system at ``offset`` in ``image``, through mtools."""

    def __init__(self, image: Path, offset: int) -> None:
        self.image = image
        self.offset = offset
        for tool in ("mcopy", "mdir", "mmd", "mdeltree"):
            if shutil.which(tool) is None:
                raise FlashError(f"{tool} not found: install mtools (apt-get install mtools)")

    def _run(self, tool: str, *args: str) -> str:
        env = dict(os.environ, MTOOLS_SKIP_CHECK="1")  # images have no real disk geometry
        env.pop("MTOOLSRC", None)
        argv = [tool, "-i", f"{self.image}@@{self.offset}", *args]
        try:
            res = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=MTOOLS_TIMEOUT_S,
                stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise FlashError(f"{tool} timed out on {self.image}") from None
        if res.returncode != 0:
            raise FlashError(f"{tool} failed on {self.image}: {res.stderr.strip()[-400:]}")
        return res.stdout

    def exists(self, name: str) -> bool:
        try:
            self._run("mdir", "-b", f"::/{name}")
        except FlashError:
            return False
        return True

    def listing(self) -> List[str]:
        """Names at the top of the file system."""
        out = self._run("mdir", "-b", "::/")
        return sorted(line.rstrip("/").rsplit("/", 1)[-1] for line in out.splitlines() if line)

    def put(self, src: Path, name: str) -> None:
        """Copy a file or folder to ``::/name``, replacing what was there."""
        if src.is_dir() and self.exists(name):
            self._run("mdeltree", f"::/{name}")
        self._run("mcopy", "-o", "-s", "-Q", str(src), f"::/{name}")

    def read(self, name: str) -> bytes:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "f"
            self._run("mcopy", "-n", f"::/{name}", str(out))
            return out.read_bytes()


# -- flashing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FlashOptions:
    hostname: Optional[str] = None
    wifi: Optional[cloudinit.Wifi] = None
    ssh_user: Optional[str] = None
    ssh_keys: Sequence[str] = ()
    wheels: Sequence[Path] = ()
    unit: Optional[Path] = None
    rotate: bool = False


@dataclass(frozen=True)
class FlashResult:
    target: Path
    partition: Partition
    release: str
    hostname: str
    files: Sequence[str]
    credentials: DeviceCredentials
    warnings: Sequence[str]


def _mounted(device: Path) -> List[str]:
    """Mount points of ``device`` or of its partitions (/dev/sdb -> /dev/sdb1, ...)."""
    real = str(device.resolve())
    found: List[str] = []
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith(real):
            found.append(fields[1])
    return found


def check_target(path: Path, confirm: Callable[[str], bool]) -> None:
    """Refuse what must not be written; ask before writing a block device."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise FlashError(f"cannot open {path}: {exc.strerror}") from None
    if stat.S_ISBLK(mode):
        mounts = _mounted(path)
        if mounts:
            raise FlashError(f"{path} is mounted on {', '.join(mounts)}: unmount it first")
        size = _device_size(path)
        if not confirm(f"Write the Fieldline agent onto the boot partition of {path} ({size})?"):
            raise FlashError("not confirmed; nothing was written")
    elif not stat.S_ISREG(mode):
        raise FlashError(f"{path} is neither an image file nor a block device")
    if not os.access(path, os.R_OK | os.W_OK):
        raise FlashError(f"{path} is not writable (a block device needs root)")


def _device_size(path: Path) -> str:
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
    except OSError:
        return "size unknown"
    return f"{size / 1e9:.1f} GB"


def flash(
    target: Path,
    spec: DeviceSpec,
    operator: OperatorDir,
    options: FlashOptions,
    *,
    confirm: Callable[[str], bool],
) -> FlashResult:
    """Write the device's bundle and cloud-init files onto ``target``'s boot partition."""
    spec.check()
    hostname = cloudinit.check_hostname(options.hostname or cloudinit.hostname_for(spec.device))
    files: Dict[str, str] = {
        "user-data": cloudinit.user_data(
            hostname=hostname, ssh_user=options.ssh_user, ssh_keys=options.ssh_keys
        ),
        "meta-data": cloudinit.meta_data(hostname=hostname),
        "network-config": cloudinit.network_config(options.wifi),
    }
    check_target(target, confirm)
    part = boot_partition(target)
    fat = Fat(target, part.offset)
    present = set(fat.listing())
    warnings = []
    if not present & {"cmdline.txt", "config.txt"}:
        raise FlashError(
            f"partition {part.number} of {target} has no cmdline.txt or config.txt: "
            "not a Raspberry Pi boot partition"
        )
    if "user-data" not in present and "meta-data" not in present:
        warnings.append(
            "the image has no cloud-init files yet; Raspberry Pi OS images older than "
            "late 2024 ignore them (then use `fieldline edge deploy` after the first boot)"
        )
    with tempfile.TemporaryDirectory(prefix="fieldline-flash-") as tmp:
        staging = Path(tmp) / cloudinit.BUNDLE_DIR
        staged, creds = stage_device(
            staging, spec, operator, wheels=options.wheels, unit=options.unit,
            rotate=options.rotate,
        )  # fmt: skip
        assert creds is not None  # a spec always yields credentials
        fat.put(staging, cloudinit.BUNDLE_DIR)
        for name, text in files.items():
            path = Path(tmp) / name
            path.write_text(text)
            fat.put(path, name)
    return FlashResult(
        target, part, staged.release, hostname, sorted([*files, cloudinit.BUNDLE_DIR + "/"]),
        creds, warnings,
    )  # fmt: skip
