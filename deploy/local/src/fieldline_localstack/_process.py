"""Process plumbing shared by the services: ports, binaries, start/stop/restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TypeVar

LOOPBACK = "127.0.0.1"
_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/bin")
_handed_out: set[int] = set()
# Popen objects of servers meant to outlive this process (`Service.detach`).
# Holding them keeps Popen.__del__ from warning that the child still runs.
_detached: list[subprocess.Popen[bytes]] = []

_S = TypeVar("_S", bound="Service")


class ServiceError(RuntimeError):
    """A server could not be found, started, queried or stopped."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free now.

    Never returns the same port twice in one process, so services created
    back to back do not collide before either has bound its port.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def find_binary(name: str, package: str) -> str:
    """Return the path of executable `name` from PATH or the sbin/bin dirs.

    Raises ServiceError telling how to install `package` when it is missing
    (sbin is not on a normal user's PATH, but Debian puts mosquitto there).
    """
    path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BIN_DIRS])
    found = shutil.which(name, path=path)
    if found is None:
        raise ServiceError(f"{name} not found: install it with `sudo apt-get install {package}`")
    return found


def port_open(port: int, host: str = LOOPBACK, timeout_s: float = 0.5) -> bool:
    """True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """True if `pid` is a live (not zombie) process."""
    try:
        # Reap it if it is our own exited child, otherwise it lingers as a zombie.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def pid_cmdline(pid: int) -> str:
    """The command line of `pid` joined by spaces ('' if unknown)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Servers run in their own session, so pid == pgid and the group holds any children.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


class Service:
    """A server process on 127.0.0.1 with all its state in `state_dir`.

    Subclasses write their config in `_prepare` and tell readiness in `_ready`.
    The port is chosen once (free_port unless given) and kept across
    restarts, as is the state dir, so data persists over `restart()`.
    """

    name: ClassVar[str]
    package: ClassVar[str]
    start_timeout_s: float = 30.0

    def __init__(self, state_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        # Ports we picked may be re-picked if someone grabs them before we bind;
        # after a first successful start they are fixed (restart reuses them).
        self._ports_fixed = port is not None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None

    # -- subclass hooks -------------------------------------------------
    def _prepare(self, binary: str) -> list[str]:
        """Write config files into state_dir and return the argv to run."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """True once the server answers."""
        raise NotImplementedError

    def _repick_ports(self) -> None:
        self.port = free_port()

    # -- public API -----------------------------------------------------
    @property
    def log_path(self) -> Path:
        """File receiving the server's stdout and stderr."""
        return self.state_dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        """Where clients connect (scheme://127.0.0.1:PORT)."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """Pid of the server process, or None if never started."""
        return self._pid

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid)

    def start(self: _S) -> _S:
        """Start the server and wait until it is ready (no-op if running).

        Raises ServiceError with the log tail if it exits or is not ready
        within `start_timeout_s`.
        """
        if self.running:
            return self
        binary = find_binary(self.name, self.package)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._ports_fixed else 3
        for attempt in range(attempts):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            argv = self._prepare(binary)
            with self.log_path.open("ab") as log:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.state_dir,
                    start_new_session=True,
                )
            self._pid = self._proc.pid
            problem = self._wait_ready()
            if problem is None:
                self._ports_fixed = True
                return self
            self.kill()
            new_log = self._log_since(offset)
            if "address already in use" in new_log.lower() and attempt + 1 < attempts:
                self._repick_ports()
                continue
            tail = "\n".join(new_log.splitlines()[-20:])
            raise ServiceError(f"{self.name} {problem} (log {self.log_path}):\n{tail}")
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout_s: float = 10) -> None:
        """SIGTERM the server, SIGKILL it after `timeout_s`; wait until it is gone."""
        if self._pid is None or not self.running:
            return
        _signal_group(self._pid, signal.SIGTERM)
        if not self._wait_exit(timeout_s):
            _signal_group(self._pid, signal.SIGKILL)
            self._wait_exit(timeout_s)

    def kill(self) -> None:
        """SIGKILL the server (a crash, for tests) and wait until it is gone."""
        if self._pid is None or not self.running:
            return
        _signal_group(self._pid, signal.SIGKILL)
        self._wait_exit(10)

    def restart(self: _S, timeout_s: float = 10) -> _S:
        """Stop then start on the same port and state dir."""
        self.stop(timeout_s)
        return self.start()

    def detach(self) -> None:
        """Let the server outlive this Python process (used by `stack start`)."""
        if self._proc is not None:
            _detached.append(self._proc)
            self._proc = None

    def adopt(self, pid: int) -> bool:
        """Take control of a server started by another process; True if it runs.

        A live `pid` whose command line does not mention state_dir is a
        recycled pid, not this server: it is never signalled.
        """
        self._proc = None
        mine = pid_alive(pid) and str(self.state_dir) in pid_cmdline(pid)
        self._pid = pid if mine else None
        return mine

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(port={self.port}, pid={self._pid}, dir={self.state_dir})"

    # -- internals ------------------------------------------------------
    def _wait_ready(self) -> str | None:
        """None when ready, else why not."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                return "exited during startup"
            if self._ready():
                return None
            time.sleep(0.05)
        return f"not ready after {self.start_timeout_s:g} s"

    def _wait_exit(self, timeout_s: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while self.running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""
