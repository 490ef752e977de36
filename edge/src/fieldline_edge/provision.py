"""One device's bundle: the agent, its config and its credentials, ready to copy.

Used by ``flash`` (onto a boot partition) and ``deploy`` (over SSH) alike, so a
flashed device and a deployed one end up identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from fieldline_edge import bundle, devconfig
from fieldline_edge.credentials import DeviceCredentials, OperatorDir, device_username


@dataclass(frozen=True)
class DeviceSpec:
    """What the operator says about one device; ``ca_file`` is a path on this machine."""

    device: str
    site: str
    broker: str
    ca_file: Optional[Path] = None
    protocol: str = "3.1.1"

    def check(self) -> None:
        """Raise ValueError naming the first bad value."""
        self.render("check")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"CA file {self.ca_file} does not exist")

    def render(self, username: str) -> str:
        return devconfig.render(
            device=self.device,
            site=self.site,
            broker=self.broker,
            username=username,
            ca_file=devconfig.CA_PATH if self.ca_file is not None else None,
            protocol=self.protocol,
        )


def stage_device(
    dest: Path,
    spec: Optional[DeviceSpec],
    operator: OperatorDir,
    *,
    wheels: Sequence[Path] = (),
    unit: Optional[Path] = None,
    rotate: bool = False,
) -> Tuple[bundle.Bundle, Optional[DeviceCredentials]]:
    """Stage a bundle in ``dest``; with ``spec``, also the device's config and password.

    Without ``spec`` the bundle upgrades the code only and leaves the device's
    config and password as they are.
    """
    etc: Dict[str, bytes] = {}
    creds = None
    if spec is not None:
        spec.check()
        creds = operator.device(spec.site, spec.device, rotate=rotate)
        etc["edge.toml"] = spec.render(device_username(spec.site, spec.device)).encode()
        etc["mqtt.password"] = (creds.password + "\n").encode()
        if spec.ca_file is not None:
            etc["ca.crt"] = spec.ca_file.read_bytes()
    staged = bundle.stage(dest, wheels=wheels, unit=unit, etc=etc)
    return staged, creds
