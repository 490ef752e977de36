"""Broker credentials of a simulated fleet, read from a JSON file (``--credentials``).

A simulator either speaks for every device of its site as one simulator user,
or connects each device as that device's own user (as real devices do, so the
broker's ACLs are exercised exactly as in production), or both (the simulator
user then carries the fleet's metrics, which device users may not publish)::

    {
      "username": "fieldline-sim-demo", "password": "...",
      "devices": {"dev-0001": {"username": "demo/dev-0001", "password": "..."}}
    }

Passwords never appear in ``repr`` nor in error messages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fieldline_edge.mqtt import BrokerURL


@dataclass(frozen=True)
class Credential:
    """A broker user name and its password (kept out of ``repr``)."""

    username: str
    password: str = field(repr=False)

    def apply(self, broker: BrokerURL) -> BrokerURL:
        """``broker`` with this user and password instead of the URL's."""
        return broker._replace(username=self.username, password=self.password)


@dataclass(frozen=True)
class FleetCredentials:
    """A simulator user (``fleet``) and/or per-device users (``devices``, by device id)."""

    fleet: Credential | None = None
    devices: Mapping[str, Credential] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FleetCredentials:
        """Read a credentials file; ``ValueError`` with a one-line reason if it is not one."""
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except OSError as exc:
            raise ValueError(f"cannot read credentials file {path}: {exc.strerror}") from None
        except ValueError:
            # The decoder's message quotes the file's text: it may hold a password.
            raise ValueError(f"credentials file {path} is not valid JSON") from None
        return cls.from_dict(raw, str(path))

    @classmethod
    def from_dict(cls, raw: Any, source: str = "credentials") -> FleetCredentials:
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: must be a JSON object")
        fleet = None
        if "username" in raw or "password" in raw:
            fleet = _credential(raw, source)
        devices = raw.get("devices", {})
        if not isinstance(devices, dict):
            raise ValueError(f"{source}: 'devices' must map device ids to credentials")
        per_device = {
            str(dev): _credential(entry, f"{source}: device {dev}")
            for dev, entry in devices.items()
        }
        if fleet is None and not per_device:
            raise ValueError(f"{source}: holds neither 'username'/'password' nor 'devices'")
        return cls(fleet, per_device)


def _credential(raw: Any, where: str) -> Credential:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be an object with 'username' and 'password'")
    username, password = raw.get("username"), raw.get("password")
    if not isinstance(username, str) or not username:
        raise ValueError(f"{where}: 'username' must be a non-empty string")
    if not isinstance(password, str):
        raise ValueError(f"{where}: 'password' must be a string")
    return Credential(username, password)
