"""A network namespace joined to the host by a veth pair, for partition tests.

The test creates it and removes it itself (root, or password-less sudo, is
needed for ``ip netns``); addresses are 10.213.<n>.1 (host) and .2 (namespace).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from fieldline_localstack._process import find_binary


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo", "-n"]


def _ip(*args: str) -> None:
    subprocess.run([*_sudo(), "ip", *args], check=True, capture_output=True, timeout=30)


class NetNamespace:
    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"fl-{tag}"
        self.host_if, self.ns_if = f"flh{tag}", f"fln{tag}"
        n = int(tag[:2], 16) % 250 + 1
        self.host_ip, self.ns_ip = f"10.213.{n}.1", f"10.213.{n}.2"

    def __enter__(self) -> NetNamespace:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _ip("link", "set", self.host_if, "up")
            ns = ("netns", "exec", self.name, "ip")
            _ip(*ns, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            _ip(*ns, "link", "set", self.ns_if, "up")
            _ip(*ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def prefix(self) -> list[str]:
        """Command prefix that runs a program inside the namespace."""
        return [*_sudo(), "ip", "netns", "exec", self.name]

    def cut(self) -> None:
        """Partition: the link goes down; packets in flight are lost."""
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        subprocess.run([*_sudo(), "ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run([*_sudo(), "ip", "netns", "del", self.name], capture_output=True)

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.close()


def start_broker_in(ns: NetNamespace, state: Path) -> subprocess.Popen[bytes]:
    """Mosquitto inside the namespace, persistent, listening on all its addresses."""
    state.mkdir()
    conf = state / "mosquitto.conf"
    conf.write_text(
        "listener 1883 0.0.0.0\nallow_anonymous true\npersistence true\n"
        f"persistence_location {state}/\nautosave_interval 1\nmax_queued_messages 1000000\n"
        f"log_dest file {state}/mosquitto.log\n" + ("user root\n" if os.geteuid() == 0 else "")
    )
    proc = subprocess.Popen([*ns.prefix(), find_binary("mosquitto", "mosquitto"), "-c", str(conf)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection((ns.ns_ip, 1883), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"mosquitto in {ns.name} did not start")
