"""FaultProxy in front of the real InfluxDB: forwards unchanged, injects faults on demand."""

from __future__ import annotations

import gzip
import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fieldline_localstack._process import free_port
from fieldline_localstack.faultproxy import FaultProxy, Mode
from fieldline_localstack.influxdb import InfluxDB

T0_MS = 1_700_000_000_000


@pytest.fixture
def proxy(influxdb: InfluxDB) -> Iterator[FaultProxy]:
    with FaultProxy(influxdb.url) as p:
        yield p


def _request(
    proxy: FaultProxy,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    conn: http.client.HTTPConnection | None = None,
) -> tuple[int, dict[str, str], bytes]:
    own = conn is None
    c = conn or http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        resp = c.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        if own:
            c.close()


def _write_path(db: str) -> str:
    return "/write?" + urllib.parse.urlencode({"db": db, "precision": "ms"})


@pytest.mark.services
def test_pass_through_writes_gzip_and_queries(
    influxdb: InfluxDB, influx_db: str, proxy: FaultProxy
) -> None:
    lines = "\n".join(f"m,device=d{i} v={i} {T0_MS + i}" for i in range(100)).encode()
    status, _, body = _request(
        proxy, "POST", _write_path(influx_db), gzip.compress(lines),
        {"Content-Encoding": "gzip", "Content-Type": "text/plain; charset=utf-8"},
    )  # fmt: skip
    assert (status, body) == (204, b"")
    # Read back through the proxy and straight from the server: the same answer.
    query = "/query?" + urllib.parse.urlencode(
        {"db": influx_db, "q": "SELECT COUNT(v), SUM(v) FROM m", "epoch": "ms"}
    )
    status, headers, body = _request(proxy, "GET", query)
    assert status == 200
    assert "X-Influxdb-Version" in headers
    values = json.loads(body)["results"][0]["series"][0]["values"]
    assert values == [[0, 100, sum(range(100))]]
    assert influxdb.points("SELECT COUNT(v) FROM m", influx_db)[0]["count"] == 100
    status, _, _ = _request(proxy, "GET", "/ping")
    assert status == 204
    assert proxy.counts() == {"forwarded": 3}


class _Echo:
    """An upstream that records each request and answers 201 with a custom header."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, list[tuple[str, str]], bytes]] = []
        echo = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                echo.requests.append(
                    (self.command, self.path, list(self.headers.items()), self.rfile.read(n))
                )
                self.send_response(201)
                self.send_header("X-Echo", "yes")
                self.send_header("Set-Cookie", "a=1")
                self.send_header("Set-Cookie", "b=2")
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"done")

            do_POST = do_PUT = _any  # noqa: N815

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def test_forwards_method_path_headers_and_body_unchanged() -> None:
    echo = _Echo()
    try:
        with FaultProxy(echo.url) as proxy:
            body = gzip.compress(b"m v=1 1\nm v=2 2")
            sent = {
                "Content-Encoding": "gzip",
                "Authorization": "Basic dTpw",
                "X-Custom": "a b,c",
            }
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
            try:
                conn.request("PUT", "/write?db=x&rp=y%20z", body=body, headers=sent)
                resp = conn.getresponse()
                assert (resp.status, resp.read()) == (201, b"done")
                assert resp.getheader("X-Echo") == "yes"
                assert resp.msg.get_all("Set-Cookie") == ["a=1", "b=2"]
                # A chunked body reaches the upstream de-chunked, bytes unchanged.
                conn.request("POST", "/api/v2/write", body=iter([body[:5], body[5:]]))
                resp = conn.getresponse()
                assert resp.status == 201
                resp.read()
            finally:
                conn.close()
    finally:
        echo.close()
    (m1, p1, h1, b1), (m2, p2, h2, b2) = echo.requests
    assert (m1, p1, b1) == ("PUT", "/write?db=x&rp=y%20z", body)
    assert set(sent.items()) <= set(h1)
    assert ("Host", f"{proxy.host}:{proxy.port}") in h1
    assert (m2, p2, b2) == ("POST", "/api/v2/write", body)
    assert ("Content-Length", str(len(body))) in h2
    assert not any(k.lower() == "transfer-encoding" for k, _ in h2)


@pytest.mark.services
def test_fail_then_pass_through(influx_db: str, proxy: FaultProxy) -> None:
    proxy.fail()
    assert proxy.mode is Mode.FAIL
    status, _, body = _request(proxy, "POST", _write_path(influx_db), b"m v=1 1")
    assert status == 500
    assert "fault injected" in json.loads(body)["error"]
    proxy.fail(503)
    assert _request(proxy, "GET", "/ping")[0] == 503
    proxy.pass_through()
    assert _request(proxy, "POST", _write_path(influx_db), b"m v=1 1")[0] == 204
    assert proxy.counts() == {"500": 1, "503": 1, "forwarded": 1}


@pytest.mark.services
def test_throttle_sends_retry_after(influx_db: str, proxy: FaultProxy) -> None:
    proxy.throttle(retry_after_s=2)
    status, headers, _ = _request(proxy, "POST", _write_path(influx_db), b"m v=1 1")
    assert (status, headers["Retry-After"]) == (429, "2")
    assert proxy.wait_for_count("429", 1, timeout_s=0)
    proxy.pass_through()
    assert _request(proxy, "POST", _write_path(influx_db), b"m v=1 1")[0] == 204


@pytest.mark.services
def test_refuse_closes_listener_and_open_connections(influx_db: str, proxy: FaultProxy) -> None:
    kept = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
    try:
        assert _request(proxy, "GET", "/ping", conn=kept)[0] == 204  # now a keep-alive
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            _request(proxy, "GET", "/ping")
        # The kept connection was cut too, as by a server that went away.
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            _request(proxy, "GET", "/ping", conn=kept)
    finally:
        kept.close()
    proxy.pass_through()  # listens again, on the same port
    assert _request(proxy, "POST", _write_path(influx_db), b"m v=1 1")[0] == 204


def test_unreachable_upstream_is_a_502() -> None:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        status, _, body = _request(proxy, "GET", "/ping")
    assert status == 502
    assert "upstream unreachable" in json.loads(body)["error"]


def test_refused_until_started_and_after_stop() -> None:
    proxy = FaultProxy("http://127.0.0.1:1")
    with pytest.raises(ConnectionRefusedError):
        _request(proxy, "GET", "/ping")
    proxy.start()
    proxy.stop()
    with pytest.raises(ConnectionRefusedError):
        _request(proxy, "GET", "/ping")
    with pytest.raises(ValueError, match="http://host:port"):
        FaultProxy("https://example.org")
