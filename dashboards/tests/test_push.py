"""``fieldline dashboards push`` speaks Grafana's dashboard API (to a loopback stand-in).

No Grafana can run here: a small HTTP server checks each request the way
Grafana's API would (path, method, bearer token, body shape) and answers like it.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fieldline_dashboards.build import BUILDERS
from fieldline_localstack.processes import fieldline_command as fieldline

TOKEN = "glsa_test-token-0123456789abcdef"


@dataclass
class FakeGrafana:
    """Records requests; ``status`` forces an error answer on dashboard saves."""

    url: str = ""
    folders: list[dict[str, Any]] = field(default_factory=list)
    requests: list[tuple[str, str, dict[str, str], Any]] = field(default_factory=list)
    saved: dict[str, Any] = field(default_factory=dict)
    status: int = 200
    errors: list[str] = field(default_factory=list)


def _handler(g: FakeGrafana) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # keep pytest output clean
            pass

        def _answer(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            g.requests.append((self.command, self.path, dict(self.headers), body))
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                return self._answer(401, {"message": "invalid API key"})
            if body is not None and self.headers.get("Content-Type") != "application/json":
                g.errors.append(f"{self.path}: no JSON content type")
            if self.command == "GET" and self.path.startswith("/api/folders"):
                return self._answer(200, g.folders)
            if self.command == "POST" and self.path == "/api/folders":
                if set(body) != {"uid", "title"}:
                    g.errors.append(f"folder body {body}")
                g.folders.append({"id": len(g.folders) + 1, **body})
                return self._answer(200, {"id": len(g.folders), **body})
            if self.command == "POST" and self.path == "/api/dashboards/db":
                if g.status != 200:
                    return self._answer(g.status, {"message": "refused", "status": "x"})
                d = body.get("dashboard", {})
                if not (
                    body.get("overwrite") is True
                    and isinstance(body.get("folderUid"), str)
                    and any(f["uid"] == body["folderUid"] for f in g.folders)
                    and d.get("uid")
                    and d.get("title")
                    and "id" not in d
                    and isinstance(d.get("panels"), list)
                ):
                    g.errors.append(f"dashboard body: {json.dumps(body)[:300]}")
                    return self._answer(400, {"message": "bad request"})
                g.saved[d["uid"]] = body
                return self._answer(
                    200,
                    {"id": 1, "uid": d["uid"], "status": "success", "version": 1,
                     "url": f"/d/{d['uid']}/slug"},
                )  # fmt: skip
            g.errors.append(f"unexpected {self.command} {self.path}")
            return self._answer(404, {"message": "not found"})

        do_GET = _handle  # noqa: N815  (http.server names)
        do_POST = _handle  # noqa: N815

    return Handler


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    g = FakeGrafana()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(g))
    g.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield g
    server.shutdown()
    server.server_close()


def _push(grafana: FakeGrafana, token_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    args = ["--url", grafana.url, "--token-file", str(token_file), *extra]
    return subprocess.run(
        fieldline("dashboards", "push", *args), capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    p = tmp_path / "token"
    p.write_text(TOKEN + "\n")
    return p


def test_push_creates_the_folder_and_every_dashboard(
    grafana: FakeGrafana, token_file: Path
) -> None:
    r = _push(grafana, token_file, "--folder", "Field Ops")
    assert r.returncode == 0, r.stderr
    assert grafana.errors == []
    assert [f["title"] for f in grafana.folders] == ["Field Ops"]
    assert len(grafana.saved) == len(BUILDERS)
    assert {b["folderUid"] for b in grafana.saved.values()} == {grafana.folders[0]["uid"]}
    assert r.stdout.count(f"{grafana.url}/d/") == len(BUILDERS)
    methods = [(m, p) for m, p, _, _ in grafana.requests]
    assert methods[:2] == [("GET", "/api/folders?limit=1000"), ("POST", "/api/folders")]
    assert TOKEN not in r.stdout + r.stderr

    # Again: the folder exists now and is reused, dashboards are overwritten.
    r = _push(grafana, token_file, "--folder", "Field Ops")
    assert r.returncode == 0, r.stderr
    assert len(grafana.folders) == 1


@pytest.mark.parametrize(
    ("status", "words"), [(403, "Editor"), (412, "Precondition Failed"), (500, "HTTP 500")]
)
def test_errors_are_explained_without_the_token(
    grafana: FakeGrafana, token_file: Path, status: int, words: str
) -> None:
    grafana.status = status
    r = _push(grafana, token_file)
    assert r.returncode == 1
    assert words in r.stderr
    assert "refused" in r.stderr
    assert "Traceback" not in r.stderr
    assert TOKEN not in r.stdout + r.stderr


def test_a_wrong_token_is_a_401(grafana: FakeGrafana, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_text("glsa_wrong-secret-value")
    r = _push(grafana, bad)
    assert r.returncode == 1
    assert "401 Unauthorized" in r.stderr
    assert "glsa_wrong-secret-value" not in r.stdout + r.stderr


def test_unreachable_grafana_and_bad_arguments(tmp_path: Path, token_file: Path) -> None:
    dead = FakeGrafana(url="http://127.0.0.1:9")
    r = _push(dead, token_file)
    assert r.returncode == 1
    assert "cannot reach Grafana" in r.stderr
    empty = tmp_path / "empty"
    empty.write_text("\n")
    r = _push(dead, empty)
    assert r.returncode == 2
    assert "is empty" in r.stderr
    r = subprocess.run(fieldline("dashboards", "push", "--url", "http://x"),
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "--token-file" in r.stderr
