"""A reverse proxy that injects HTTP faults in front of a real server, for tests.

:class:`FaultProxy` listens on a free loopback port and forwards every request
to ``upstream`` (method, path and query, headers, body: unchanged, so a gzip
body stays gzip), until a test switches it, at run time, to a fault:

- :meth:`~FaultProxy.pass_through`: forward (the default);
- :meth:`~FaultProxy.fail`: answer every request with ``status`` (500);
- :meth:`~FaultProxy.throttle`: answer 429 with ``Retry-After: N``;
- :meth:`~FaultProxy.refuse`: close the listening socket and every open
  connection, so clients get "connection refused" (or a reset) as from a
  stopped server; the next other mode listens again on the same port.

Example::

    with FaultProxy(influxdb.url) as proxy:
        writer = make_writer(InfluxV1Config(proxy.url, "db"))
        proxy.throttle(retry_after_s=2)
        ...
        proxy.pass_through()

Only hop-by-hop headers (``Connection``, ``Transfer-Encoding``, ...) are not
forwarded, as any HTTP/1.1 proxy must; a chunked request body is forwarded
de-chunked with a ``Content-Length``. Every answer is counted
(:meth:`~FaultProxy.counts`), so a test can wait until a fault was really seen.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import threading
import time
import urllib.parse
from collections import Counter
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from fieldline_localstack._process import LOOPBACK, free_port

__all__ = ["FaultProxy", "Mode"]

log = logging.getLogger(__name__)

#: Headers that describe one connection, not the message (RFC 9110 §7.6.1).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
UPSTREAM_TIMEOUT_S = 30.0
#: How long to keep trying to listen again on the same port after refuse().
REBIND_TIMEOUT_S = 10.0


class Mode(str, Enum):
    """What the proxy does with the next request."""

    PASS = "pass"
    FAIL = "fail"
    THROTTLE = "throttle"
    REFUSE = "refuse"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the servers being proxied
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.proxy._track(self.connection, add=False)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, OSError):
            # refuse() shut the socket under us, or the client went away.
            self.close_connection = True

    def _handle(self) -> None:
        proxy = self.server.proxy
        mode, status, retry_after_s = proxy._fault()
        body = self._read_body()
        if mode is Mode.REFUSE:
            # Raced with refuse(): drop the connection without an answer.
            proxy._count("dropped")
            self.close_connection = True
            return
        if mode is Mode.FAIL:
            proxy._count(str(status))
            self._answer(status, [], _error_body(f"fault injected by FaultProxy: HTTP {status}"))
            return
        if mode is Mode.THROTTLE:
            proxy._count("429")
            headers = [("Retry-After", str(retry_after_s))]
            self._answer(429, headers, _error_body("fault injected by FaultProxy: throttled"))
            return
        self._forward(body)

    # http.server dispatches on do_<METHOD>; a proxy treats every method alike.
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle  # noqa: N815

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _forward(self, body: bytes | None) -> None:
        proxy = self.server.proxy
        conn = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=UPSTREAM_TIMEOUT_S
        )
        try:
            # Host and Accept-Encoding go through as the client sent them.
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                    conn.putheader(name, value)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            data = resp.read()
        except OSError as exc:
            proxy._count("502")
            self._answer(502, [], _error_body(f"FaultProxy: upstream unreachable: {exc}"))
            return
        finally:
            conn.close()
        headers = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP]
        proxy._count("forwarded")
        self._answer(resp.status, headers, data, reason=resp.reason)

    def _answer(
        self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str | None = None
    ) -> None:
        self.send_response(status, reason)
        has_length = False
        for name, value in headers:
            if name.lower() == "content-length":
                if self.command != "HEAD":
                    continue  # the body was read whole: its length is len(body)
                has_length = True
            self.send_header(name, value)
        if not has_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def _error_body(message: str) -> bytes:
    # InfluxDB's own error format, so clients show the message.
    return ('{"error":"' + message.replace('"', "'") + '"}').encode()


class FaultProxy:
    """An HTTP reverse proxy to ``upstream`` whose faults tests switch at run time.

    Thread-safe; a context manager (starts on enter, stops on exit).
    """

    def __init__(self, upstream: str, port: int | None = None) -> None:
        parts = urllib.parse.urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = upstream
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self._lock = threading.Condition()
        self._mode = Mode.PASS
        self._status = 500
        self._retry_after_s = 1
        self._counts: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        self._server: _Server | None = None
        self._started = False
        # Serialises listening and closing, which take a while, apart from _lock.
        self._switching = threading.Lock()

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    # -- switching ------------------------------------------------------
    def pass_through(self) -> None:
        """Forward every request to the upstream (listening again after refuse())."""
        self._switch(Mode.PASS)

    def fail(self, status: int = 500) -> None:
        """Answer every request with ``status`` and a JSON error body."""
        with self._lock:
            self._status = status
        self._switch(Mode.FAIL)

    def throttle(self, retry_after_s: int = 1) -> None:
        """Answer every request with 429 and ``Retry-After: retry_after_s``."""
        with self._lock:
            self._retry_after_s = retry_after_s
        self._switch(Mode.THROTTLE)

    def refuse(self) -> None:
        """Stop listening and cut every open connection: clients see a dead server."""
        self._switch(Mode.REFUSE)

    def _switch(self, mode: Mode) -> None:
        with self._switching:
            with self._lock:
                self._mode = mode
            if mode is Mode.REFUSE:
                self._stop_server()
                with self._lock:
                    connections = list(self._connections)
                for conn in connections:
                    with contextlib.suppress(OSError):  # already closed
                        conn.shutdown(socket.SHUT_RDWR)
            elif self._server is None and self._started:
                self._start_server()
        log.info("FaultProxy %s: %s", self.url, mode.value)

    # -- lifecycle ------------------------------------------------------
    def start(self) -> FaultProxy:
        """Listen (in the current mode, unless it is REFUSE) and serve on a thread."""
        self._started = True
        self._switch(self.mode)
        return self

    def stop(self) -> None:
        """Stop listening and close every connection."""
        self._switch(Mode.REFUSE)
        self._started = False

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"FaultProxy({self.url} -> {self.upstream}, mode={self.mode.value})"

    # -- what it did ----------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Answers so far by kind: ``forwarded``, ``"500"``, ``"429"``, ``"502"``, ``dropped``."""
        with self._lock:
            return dict(self._counts)

    def wait_for_count(self, kind: str, n: int, timeout_s: float) -> bool:
        """Wait until ``counts()[kind] >= n``; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: self._counts[kind] >= n, timeout_s)

    # -- internals ------------------------------------------------------
    def _fault(self) -> tuple[Mode, int, int]:
        with self._lock:
            return self._mode, self._status, self._retry_after_s

    def _count(self, kind: str) -> None:
        # Counted before the answer goes out: a client that has its answer sees it counted.
        with self._lock:
            self._counts[kind] += 1
            self._lock.notify_all()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _start_server(self) -> None:
        # The port was ours a moment ago; retry briefly in case a TIME_WAIT or
        # a stray client socket holds it.
        deadline = time.monotonic() + REBIND_TIMEOUT_S
        while True:
            try:
                server = _Server((self.host, self.port), self)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        self._server = server

    def _stop_server(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
