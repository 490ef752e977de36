"""cloud-init files for a Raspberry Pi OS boot partition: user-data, meta-data, network-config.

Raspberry Pi OS images from late 2024 on (bookworm, trixie) run cloud-init's
NoCloud datasource from the boot partition, as Raspberry Pi Imager uses it. The
user-data sets the host name, optionally an SSH user, and runs the Fieldline
installer from the bundle on the boot partition once (``runcmd`` is
per-instance; meta-data's ``instance-id`` is new for every flash).

The Wi-Fi PSK goes into ``network-config`` only (netplan v2, the format cloud-init
renders for NetworkManager or networkd); ``user-data`` holds no secret.

YAML is written by a small emitter: every string is a JSON string, which YAML
reads as a double-quoted scalar, so no value can change the document's structure.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence

#: Where Raspberry Pi OS mounts the boot partition (bookworm on); /boot before that.
BOOT_MOUNTS = ("/boot/firmware", "/boot")
#: The bundle's folder on the boot partition.
BUNDLE_DIR = "fieldline"
_HOSTNAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


# -- YAML --------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} to YAML")


def _key(key: str) -> str:
    return key if _SIMPLE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _emit(value: Any, indent: int, out: List[str]) -> None:
    pad = "  " * indent
    if isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, (Mapping, list)) and v:
                out.append(f"{pad}{_key(k)}:")
                _emit(v, indent + 1, out)
            else:
                out.append(f"{pad}{_key(k)}: {_inline(v)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item:
                sub: List[str] = []
                _emit(item, indent + 1, sub)
                # The first key goes on the dash's line.
                out.append(f"{pad}- {sub[0].lstrip()}")
                out.extend(sub[1:])
            else:
                out.append(f"{pad}- {_inline(item)}")
    else:
        out.append(f"{pad}{_scalar(value)}")


def _inline(value: Any) -> str:
    # Flow style for scalars, empty collections and lists of scalars (runcmd argv).
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return _scalar(value)


def dump_yaml(value: Mapping[str, Any]) -> str:
    out: List[str] = []
    _emit(value, 0, out)
    return "\n".join(out) + "\n"


# -- the three files -----------------------------------------------------------------


@dataclass(frozen=True)
class Wifi:
    ssid: str
    psk: str
    country: str

    def __repr__(self) -> str:  # the PSK never reaches a log
        return f"Wifi(ssid={self.ssid!r}, country={self.country!r})"


def check_hostname(name: str) -> str:
    if not _HOSTNAME_RE.match(name):
        raise ValueError(
            f"{name!r} is not a valid host name (lower-case letters, digits and '-', 1-63)"
        )
    return name


def hostname_for(device: str) -> str:
    """A host name made from a device id (ids may hold '_' and '.', host names may not)."""
    name = re.sub(r"[^a-z0-9-]+", "-", device.lower()).strip("-")[:63].strip("-")
    return name or "fieldline"


def check_wifi(wifi: Wifi) -> Wifi:
    if not 1 <= len(wifi.ssid.encode()) <= 32:
        raise ValueError("the Wi-Fi SSID must be 1-32 bytes long")
    if not (8 <= len(wifi.psk) <= 63 or re.fullmatch(r"[0-9a-fA-F]{64}", wifi.psk)):
        raise ValueError("the Wi-Fi PSK must be 8-63 characters (or 64 hex digits)")
    if not _COUNTRY_RE.match(wifi.country):
        raise ValueError(
            f"--wifi-country must be a two-letter country code such as GB or DE, got "
            f"{wifi.country!r} (the radio stays off without it)"
        )
    return wifi


def install_command() -> str:
    """The first-boot shell command: find the bundle on the boot partition and install it."""
    dirs = " ".join(f"{m}/{BUNDLE_DIR}" for m in BOOT_MOUNTS)
    return (
        f"for d in {dirs}; do "
        'if [ -f "$d/install.py" ]; then '
        'exec python3 "$d/install.py" install --bundle "$d" --root / --no-block --consume; '
        "fi; done; "
        'echo "fieldline: no bundle on the boot partition" >&2; exit 1'
    )


def user_data(
    *,
    hostname: str,
    ssh_user: Optional[str] = None,
    ssh_keys: Sequence[str] = (),
) -> str:
    check_hostname(hostname)
    config: dict[str, Any] = {"hostname": hostname, "manage_etc_hosts": True}
    runcmd: List[Any] = []
    if ssh_keys:
        user = ssh_user or "pi"
        if not _USER_RE.match(user):
            raise ValueError(f"{user!r} is not a valid user name")
        for key in ssh_keys:
            if "\n" in key.strip() or not re.match(r"^(ssh-|ecdsa-|sk-)", key.strip()):
                raise ValueError("an SSH key must be one public key line (ssh-ed25519 AAAA...)")
        config["users"] = [
            {
                "name": user,
                "groups": "sudo",
                "shell": "/bin/bash",
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "lock_passwd": True,
                "ssh_authorized_keys": [k.strip() for k in ssh_keys],
            }
        ]
        config["ssh_pwauth"] = False
        # Raspberry Pi OS leaves the SSH server off until asked.
        runcmd.append(["systemctl", "enable", "--now", "ssh"])
    runcmd.append(["sh", "-c", install_command()])
    config["runcmd"] = runcmd
    return "#cloud-config\n" + dump_yaml(config)


def meta_data(*, hostname: str, instance_id: Optional[str] = None) -> str:
    """A fresh ``instance-id`` makes cloud-init treat the card as a new instance (runcmd runs)."""
    iid = instance_id or f"fieldline-{hostname}-{secrets.token_hex(4)}"
    return dump_yaml({"instance-id": iid, "local-hostname": hostname})


def network_config(wifi: Optional[Wifi]) -> str:
    """netplan v2: DHCP on Ethernet, and on Wi-Fi when ``wifi`` is given."""
    network: dict[str, Any] = {
        "version": 2,
        "ethernets": {"eth0": {"dhcp4": True, "optional": True}},
    }
    if wifi is not None:
        check_wifi(wifi)
        network["wifis"] = {
            "wlan0": {
                "dhcp4": True,
                "optional": True,
                "regulatory-domain": wifi.country,
                "access-points": {wifi.ssid: {"password": wifi.psk}},
            }
        }
    return dump_yaml({"network": network})
