"""The per-device agent configuration (``/etc/fieldline/edge.toml``), written as TOML.

Only what the operator decides is written: the device's identity, the broker,
where the password and CA live on the device, and the sensors; everything else
keeps the agent's defaults (see docs/edge-agent.md for every key). The password
itself is never in this file: ``[mqtt] password_file`` points at a 0600 file.
"""

from __future__ import annotations

import math
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Union

from fieldline_edge import contract

CONFIG_PATH = "/etc/fieldline/edge.toml"
PASSWORD_PATH = "/etc/fieldline/mqtt.password"
CA_PATH = "/etc/fieldline/ca.crt"
SPOOL_PATH = "/var/lib/fieldline/spool.db"
PROTOCOLS = ("3.1.1", "5")

TomlValue = Union[str, int, float, bool]


@dataclass(frozen=True)
class SensorSpec:
    name: str
    driver: str
    interval_s: float
    options: Mapping[str, TomlValue] = field(default_factory=dict)


#: What a freshly flashed Pi measures: the SoC temperature, and load, memory and disk.
DEFAULT_SENSORS = (
    SensorSpec("cpu_temperature", "cpu_temperature", 10.0),
    SensorSpec("system", "system", 60.0),
)


def check_broker_url(url: str) -> str:
    """``mqtt://host[:port]`` or ``mqtts://host[:port]``; credentials are refused here."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"broker URL must start with mqtt:// or mqtts://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"broker URL {url!r} has no host")
    if parts.username is not None or parts.password is not None:
        # A password in a URL ends up in shell history and process lists.
        raise ValueError("the broker URL must not contain a user or password")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"broker URL {url!r} has a bad port") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {url!r} must be scheme://host[:port] only")
    return url.rstrip("/")


def toml_string(value: str) -> str:
    """A TOML basic string (every control character escaped, UTF-8 kept as is)."""
    out = ['"']
    for ch in value:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be written to the config")
        return repr(value)
    return toml_string(value)


def _table(name: str, values: Mapping[str, Optional[TomlValue]], array: bool = False) -> str:
    head = f"[[{name}]]" if array else f"[{name}]"
    lines = [head] + [f"{k} = {toml_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def render(
    *,
    device: str,
    site: str,
    broker: str,
    username: str,
    ca_file: Optional[str] = None,
    protocol: str = "3.1.1",
    sensors: Sequence[SensorSpec] = DEFAULT_SENSORS,
) -> str:
    """The TOML text of one device's config. Raises ValueError naming a bad value."""
    contract.check_id("device", device)
    contract.check_id("site", site)
    broker = check_broker_url(broker)
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if ca_file is not None and not broker.startswith("mqtts://"):
        raise ValueError("a CA file only makes sense with an mqtts:// broker")
    names = [s.name for s in sensors]
    if len(set(names)) != len(names):
        raise ValueError(f"sensor names must be unique, got {', '.join(names)}")
    mqtt: Dict[str, Optional[TomlValue]] = {
        "url": broker,
        "username": username,
        "password_file": PASSWORD_PATH,
        "protocol": protocol,
        "ca_file": ca_file,
    }
    parts: List[str] = [
        "# Fieldline edge agent: written by `fieldline edge flash/deploy`.\n"
        "# Every key is described in docs/edge-agent.md.\n",
        _table("device", {"id": device, "site": site}),
        _table("mqtt", mqtt),
        _table("spool", {"path": SPOOL_PATH}),
    ]
    for s in sensors:
        contract.check_id("sensor", s.name)
        values: Dict[str, Optional[TomlValue]] = {
            "name": s.name,
            "driver": s.driver,
            "interval_s": s.interval_s,
        }
        values.update(s.options)
        parts.append(_table("sensors", values, array=True))
    return "\n".join(parts)
