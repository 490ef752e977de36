"""InfluxDB 1.x (influxd) on loopback with its state in its state dir."""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from typing import Any

from fieldline_localstack._http import answers, http
from fieldline_localstack._process import Service, ServiceError, free_port


class InfluxQueryError(ServiceError):
    """InfluxDB answered a query or write with an error."""


class InfluxDB(Service):
    """An InfluxDB 1.x server on 127.0.0.1:`port` (HTTP API).

    The RPC (backup) listener gets its own free loopback port, because the
    default 8088 would clash between instances. With `auth_enabled`, pass
    `credentials` (user, password): `start()` makes that user the admin (the
    one statement InfluxDB allows before any user exists) and this object's
    own requests use it. :meth:`create_writer` adds a least-privilege user.

    Hardening, as far as InfluxDB 1.6 allows: the pprof endpoints
    (`/debug/pprof/*`) are off. `/debug/vars` and `/debug/requests` cannot be
    turned off or put behind authentication before 1.8, and the backup (RPC)
    port has no authentication in any 1.x: both listen on loopback only, so
    only this machine reaches them (see docs/reliability.md).

    `max_values_per_tag` sets InfluxDB's limit of distinct values of one tag
    (its default is 100,000) and `max_series_per_database` its limit of series
    (default 1,000,000); 0 means no limit. Tests set them low to see what
    happens beyond them.
    """

    name = "influxd"
    package = "influxdb"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        auth_enabled: bool = False,
        credentials: tuple[str, str] | None = None,
        max_values_per_tag: int | None = None,
        max_series_per_database: int | None = None,
    ) -> None:
        super().__init__(state_dir, port)
        self.rpc_port = free_port()
        self.auth_enabled = auth_enabled
        self.credentials = credentials
        for name, limit in (
            ("max_values_per_tag", max_values_per_tag),
            ("max_series_per_database", max_series_per_database),
        ):
            if limit is not None and limit < 0:
                raise ValueError(f"{name} must not be negative")
        self.max_values_per_tag = max_values_per_tag
        self.max_series_per_database = max_series_per_database

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://{self.host}:{self.port}"

    @property
    def config_path(self) -> str:
        """Path of the generated influxdb.conf."""
        return str(self.state_dir / "influxdb.conf")

    def config_text(self) -> str:
        """The influxdb.conf contents for the current ports."""

        def q(value: object) -> str:
            # JSON strings are valid TOML basic strings.
            return json.dumps(str(value))

        d = self.state_dir
        limits = ""
        if self.max_values_per_tag is not None:
            limits += f"\n  max-values-per-tag = {int(self.max_values_per_tag)}"
        if self.max_series_per_database is not None:
            limits += f"\n  max-series-per-database = {int(self.max_series_per_database)}"
        # bind-address: the backup (RPC) service, which asks for no credentials.
        return f"""\
reporting-disabled = true
bind-address = {q(f"{self.host}:{self.rpc_port}")}

[meta]
  dir = {q(d / "meta")}
  logging-enabled = false

[data]
  dir = {q(d / "data")}
  wal-dir = {q(d / "wal")}
  query-log-enabled = false{limits}

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = {q(f"{self.host}:{self.port}")}
  auth-enabled = {"true" if self.auth_enabled else "false"}
  log-enabled = false
  pprof-enabled = false
  debug-pprof-enabled = false

[logging]
  level = "warn"
  suppress-logo = true

[continuous_queries]
  log-enabled = false
"""

    def _prepare(self, binary: str) -> list[str]:
        (self.state_dir / "influxdb.conf").write_text(self.config_text())
        return [binary, "-config", self.config_path]

    def _ready(self) -> bool:
        return answers(f"{self.url}/ping", 204)

    def start(self) -> InfluxDB:
        super().start()
        if self.auth_enabled and self.credentials is not None:
            user, password = self.credentials
            # Idempotent: on a restart the admin exists and this is a no-op.
            self._query_secret(
                f"CREATE USER {_ident(user)} WITH PASSWORD {_string(password)} WITH ALL PRIVILEGES",
                f"CREATE USER {_ident(user)} WITH PASSWORD *** WITH ALL PRIVILEGES",
            )
        return self

    def create_writer(self, user: str, password: str, database: str) -> None:
        """Create `user` allowed to write to `database` and to do nothing else.

        InfluxDB 1.x `/write` needs only the WRITE privilege on the database:
        the user can neither read it nor see or touch any other database.
        """
        self._query_secret(
            f"CREATE USER {_ident(user)} WITH PASSWORD {_string(password)}",
            f"CREATE USER {_ident(user)} WITH PASSWORD ***",
        )
        self.query(f"GRANT WRITE ON {_ident(database)} TO {_ident(user)}")

    def _query_secret(self, q: str, shown: str) -> None:
        try:
            self.query(q)
        except InfluxQueryError as exc:
            # The error names the statement: show it without the password.
            raise InfluxQueryError(str(exc).replace(repr(q), repr(shown))) from None

    def _repick_ports(self) -> None:
        self.port = free_port()
        self.rpc_port = free_port()

    def _headers(self) -> dict[str, str]:
        if self.credentials is None:
            return {}
        token = base64.b64encode(":".join(self.credentials).encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def query(self, q: str, db: str | None = None, epoch: str = "ms") -> dict[str, Any]:
        """Run InfluxQL `q` (POST /query) and return the decoded JSON.

        Raises InfluxQueryError if the response or any statement has an error.
        """
        params = {"q": q, "epoch": epoch}
        if db is not None:
            params["db"] = db
        # POST works for every statement (GET refuses CREATE/DROP and the like).
        status, body = http(
            "POST",
            f"{self.url}/query",
            urllib.parse.urlencode(params).encode(),
            {"Content-Type": "application/x-www-form-urlencoded", **self._headers()},
        )
        try:
            result: dict[str, Any] = json.loads(body) if body else {}
        except ValueError as exc:
            raise InfluxQueryError(f"HTTP {status} from /query: {body[:500]!r}") from exc
        errors = [result["error"]] if "error" in result else []
        errors += [r["error"] for r in result.get("results", []) if "error" in r]
        if errors or status >= 400:
            raise InfluxQueryError(f"query {q!r} failed (HTTP {status}): {'; '.join(errors)}")
        return result

    def write(self, lines: str, db: str, precision: str = "ns") -> None:
        """Write line protocol to `db` (POST /write); raises InfluxQueryError on refusal."""
        params = urllib.parse.urlencode({"db": db, "precision": precision})
        status, body = http("POST", f"{self.url}/write?{params}", lines.encode(), self._headers())
        if status != 204:
            raise InfluxQueryError(f"write to {db!r} failed (HTTP {status}): {body[:500]!r}")

    def create_database(self, name: str) -> None:
        """CREATE DATABASE `name` (idempotent)."""
        self.query(f"CREATE DATABASE {_ident(name)}")

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name` (no error if absent)."""
        self.query(f"DROP DATABASE {_ident(name)}")

    def points(self, q: str, db: str) -> list[dict[str, Any]]:
        """Rows of the first series of `q` as dicts (column -> value); [] if none."""
        series = self.query(q, db)["results"][0].get("series", [])
        if not series:
            return []
        cols = series[0]["columns"]
        return [dict(zip(cols, row)) for row in series[0]["values"]]


def _string(value: str) -> str:
    """Quote an InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _ident(name: str) -> str:
    """Quote an InfluxQL identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
