"""I2C register access through Linux's ``/dev/i2c-N`` (i2c-dev), standard library only.

Drivers talk to an :class:`I2CBus`; tests give them a fake register map with the
same two methods.
"""

from __future__ import annotations

import fcntl
import os
from typing import Optional, Protocol

from fieldline_edge.drivers.base import DriverError

#: ioctl request of linux/i2c-dev.h: address the following read()/write() to a slave.
I2C_SLAVE = 0x0703


class I2CBus(Protocol):
    """Register reads and writes of devices on one bus."""

    def read(self, address: int, register: int, length: int) -> bytes: ...

    def write(self, address: int, register: int, data: bytes) -> None: ...


class LinuxI2CBus:
    """``/dev/i2c-<bus>``: a register read is a write of the register number then a read.

    The file is opened on first use and reopened after an error (a device
    unplugged and back, a bus driver reloaded).
    """

    def __init__(self, bus: int, dev_dir: str = "/dev") -> None:
        self.path = os.path.join(dev_dir, f"i2c-{bus}")
        self._fd: Optional[int] = None

    def _select(self, address: int) -> int:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR)
            except OSError as exc:
                raise DriverError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.ioctl(self._fd, I2C_SLAVE, address)
        except OSError as exc:
            self.close()
            raise DriverError(f"{self.path}: cannot address 0x{address:02x}: {exc}") from None
        return self._fd

    def read(self, address: int, register: int, length: int) -> bytes:
        fd = self._select(address)
        try:
            os.write(fd, bytes([register]))
            data = os.read(fd, length)
        except OSError as exc:
            self.close()
            raise DriverError(f"no answer from 0x{address:02x} on {self.path}: {exc}") from None
        if len(data) != length:
            raise DriverError(f"short read from 0x{address:02x}: {len(data)} of {length} bytes")
        return data

    def write(self, address: int, register: int, data: bytes) -> None:
        fd = self._select(address)
        try:
            os.write(fd, bytes([register]) + data)
        except OSError as exc:
            self.close()
            raise DriverError(f"no answer from 0x{address:02x} on {self.path}: {exc}") from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
