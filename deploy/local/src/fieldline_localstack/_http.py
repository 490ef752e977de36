"""Minimal HTTP client on urllib (no third-party dependency)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[int, bytes]:
    """Send one request; return (status, body) for any HTTP status.

    Network failures (refused, timeout) raise OSError.
    """
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as err:
        # An HTTP error still carries the server's explanation in its body.
        with err:
            return int(err.code), bytes(err.read())


def answers(url: str, status: int, timeout_s: float = 1.0) -> bool:
    """True if GET `url` returns `status` (readiness probes)."""
    try:
        return http("GET", url, timeout_s=timeout_s)[0] == status
    except OSError:
        return False
