"""Upload dashboards to a running Grafana through its HTTP API.

- ``GET /api/folders`` finds the folder by title, ``POST /api/folders`` creates it;
- ``POST /api/dashboards/db`` with ``{"dashboard", "folderUid", "overwrite": true}``
  creates or replaces each dashboard (matched by ``uid``).

Requests carry ``Authorization: Bearer <token>`` (a service account token with
the Editor role). The token never appears in messages or exceptions.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["GrafanaError", "push"]

TIMEOUT_S = 30.0

_HINTS = {
    401: "Grafana refused the token (401 Unauthorized): is it a valid service account token?",
    403: "the token may not do this (403 Forbidden): its service account needs the Editor "
    "role (or dashboards:write and folders:create)",
    412: "Grafana refused to overwrite (412 Precondition Failed): a dashboard with the same "
    "title exists in that folder under another uid, or its version changed meanwhile",
}


class GrafanaError(Exception):
    """Grafana answered with an error, or could not be reached."""


class _Client:
    def __init__(self, url: str, token: str) -> None:
        self._url = url.rstrip("/")
        self._token = token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self._url + path,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self._token}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            message = _message(exc.read())
            hint = _HINTS.get(exc.code, f"HTTP {exc.code}")
            raise GrafanaError(f"{method} {path}: {hint}: {message}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GrafanaError(f"cannot reach Grafana at {self._url}: {reason}") from None
        return json.loads(raw) if raw else None


def _message(raw: bytes) -> str:
    try:
        body = json.loads(raw)
    except ValueError:
        return raw[:200].decode(errors="replace")
    return str(body.get("message", body)) if isinstance(body, dict) else str(body)


def _folder_uid(client: _Client, title: str) -> str:
    folders = client.request("GET", "/api/folders?limit=1000") or []
    for f in folders:
        if f.get("title") == title:
            return str(f["uid"])
    uid = re.sub(r"[^a-zA-Z0-9_-]+", "-", title.lower()).strip("-")[:40] or "fieldline"
    created = client.request("POST", "/api/folders", {"uid": uid, "title": title})
    return str(created["uid"])


def push(
    url: str, token: str, dashboards: Mapping[str, Mapping[str, Any]], folder: str
) -> list[str]:
    """Create or replace ``dashboards`` in ``folder`` (created if missing); their URLs."""
    client = _Client(url, token)
    folder_uid = _folder_uid(client, folder)
    urls = []
    for dashboard in dashboards.values():
        body = {
            # Without "id", Grafana matches the dashboard by uid.
            "dashboard": {k: v for k, v in dashboard.items() if k != "id"},
            "folderUid": folder_uid,
            "overwrite": True,
            "message": "fieldline dashboards push",
        }
        answer = client.request("POST", "/api/dashboards/db", body) or {}
        urls.append(url.rstrip("/") + str(answer.get("url", f"/d/{dashboard.get('uid')}")))
    return urls
