"""What every driver is: ``read()`` returns samples or raises :class:`DriverError`.

A driver belongs to one configured sensor (its ``name``) and may yield several
quantities per read (a BME280 gives temperature, pressure and humidity); each
becomes a reading named ``<name>`` or ``<name>.<quantity>``. A driver touches the
hardware only through paths (or a bus) given to it, so tests point it at a fake
sysfs tree or register map.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Protocol, runtime_checkable

from fieldline_edge.sensors import SensorError

#: A driver could not read; ``str(exc)`` is one line for the device status.
DriverError = SensorError
#: Longest text read from one sysfs/proc file: they are all tiny.
MAX_FILE_BYTES = 64 * 1024


class Sample(NamedTuple):
    """One value of one read: ``sensor`` is the reading's sensor id."""

    sensor: str
    value: float
    unit: str = ""


@runtime_checkable
class Driver(Protocol):
    """A configured sensor: ``name`` and ``read()``."""

    name: str

    def read(self) -> list[Sample]: ...


def read_text(path: str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a (small) kernel file; :class:`DriverError` saying why not."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except FileNotFoundError:
        raise DriverError(f"{path} does not exist") from None
    except OSError as exc:
        raise DriverError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise DriverError(f"{path} is not text") from None


def list_dir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        raise DriverError(f"{path} does not exist") from None
    except OSError as exc:
        raise DriverError(f"cannot list {path}: {exc.strerror or exc}") from None
