"""What the local stack's InfluxDB serves to a client without credentials.

Asserted on the secure InfluxDB (authentication on, as ``fieldline stack start
--secure`` runs it), for the InfluxDB 1.x that Debian installs (1.6):

- the pprof endpoints (``/debug/pprof/*``) are off;
- ``/debug/vars`` and ``/debug/requests`` are served without credentials (1.6
  has no switch for them), and the backup (RPC) service copies the meta store
  without credentials (no 1.x asks for any): both listen on loopback only, so
  only this machine reaches them. docs/reliability.md says so.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from fieldline_localstack._http import http
from fieldline_localstack._process import port_open
from fieldline_localstack.influxdb import InfluxDB

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[3]


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 and IPv6 addresses with a TCP socket listening on ``port``."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _non_loopback_address() -> str | None:
    """This machine's address on its default route, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = s.getsockname()[0]
    return None if address.startswith("127.") else address


def test_pprof_is_off(secure_influxdb: InfluxDB) -> None:
    for path in ("/debug/pprof/", "/debug/pprof/cmdline", "/debug/pprof/heap"):
        status, _ = http("GET", secure_influxdb.url + path)
        assert status == 404, path
    # Authentication is on for the API itself.
    status, _ = http("GET", secure_influxdb.url + "/query?q=SHOW+DATABASES")
    assert status == 401


def test_debug_vars_and_requests_are_served_on_loopback_only(secure_influxdb: InfluxDB) -> None:
    status, body = http("GET", secure_influxdb.url + "/debug/vars")
    assert status == 200
    assert b'"memstats"' in body
    status, _ = http("GET", secure_influxdb.url + "/debug/requests?seconds=1")
    assert status == 200
    # 0100007F: 127.0.0.1 as /proc/net/tcp writes it.
    assert _listening_addresses(secure_influxdb.port) == {"0100007F"}
    address = _non_loopback_address()
    if address is not None:
        assert not port_open(secure_influxdb.port, address)


def test_backup_port_is_on_loopback_only(secure_influxdb: InfluxDB, tmp_path: Path) -> None:
    assert _listening_addresses(secure_influxdb.rpc_port) == {"0100007F"}
    address = _non_loopback_address()
    if address is not None:
        # Refused (influxd backup would retry a refused port for ever).
        assert not port_open(secure_influxdb.rpc_port, address)
    # From this machine it needs no credentials: the limit docs/reliability.md states.
    local = subprocess.run(
        ["influxd", "backup", "-portable", "-host", f"127.0.0.1:{secure_influxdb.rpc_port}",
         str(tmp_path / "local")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert list((tmp_path / "local").glob("*.meta"))


def test_rpc_ports_of_parallel_servers_differ(tmp_path: Path) -> None:
    a = InfluxDB(tmp_path / "a")
    b = InfluxDB(tmp_path / "b")
    assert a.rpc_port != b.rpc_port
    assert len({a.port, a.rpc_port, b.port, b.rpc_port}) == 4
    assert f'bind-address = "127.0.0.1:{a.rpc_port}"' in a.config_text()


def test_cardinality_limits_are_written_only_when_set(tmp_path: Path) -> None:
    default = InfluxDB(tmp_path / "a").config_text()
    assert "max-values-per-tag" not in default
    assert "max-series-per-database" not in default
    limited = InfluxDB(
        tmp_path / "b", max_values_per_tag=0, max_series_per_database=7
    ).config_text()
    assert "max-values-per-tag = 0" in limited
    assert "max-series-per-database = 7" in limited
    with pytest.raises(ValueError, match="max_values_per_tag must not be negative"):
        InfluxDB(tmp_path / "c", max_values_per_tag=-1)
    with pytest.raises(ValueError, match="max_series_per_database must not be negative"):
        InfluxDB(tmp_path / "d", max_series_per_database=-1)


def test_compose_influxdb_has_pprof_and_metrics_off() -> None:
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    env = compose["services"]["influxdb"]["environment"]
    assert env["INFLUXD_PPROF_DISABLED"] == "true"
    assert env["INFLUXD_METRICS_DISABLED"] == "true"
