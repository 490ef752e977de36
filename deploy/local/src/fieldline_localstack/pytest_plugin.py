"""Pytest fixtures starting real Mosquitto / InfluxDB 1.x / VictoriaMetrics.

Registered through the `pytest11` entry point, so every test in the workspace
can use them. A missing binary fails the test (ServiceError), never skips it:
a skipped service test would hide that nothing was tested.
"""

from __future__ import annotations

import atexit
import secrets
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from fieldline_localstack._process import Service
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.security import BrokerSecurity, generate_broker_security
from fieldline_localstack.subscriber import Subscriber
from fieldline_localstack.victoriametrics import VictoriaMetrics

#: The site and devices that have broker users on `secure_mosquitto`; the
#: simulator user of that site is there too (see `BrokerSecurity.sim_credentials_file`).
SECURE_SITE = "secure"
SECURE_DEVICES = ("dev-0001", "dev-0002", "dev-0003")

_S = TypeVar("_S", bound=Service)
_started: list[Service] = []


@atexit.register
def _kill_leftovers() -> None:
    # Safety net if pytest dies before teardown: never leave servers behind.
    for service in _started:
        service.kill()


def _run(service: _S) -> Iterator[_S]:
    _started.append(service)
    try:
        yield service.start()
    finally:
        service.stop()
        _started.remove(service)


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto broker shared by the session (`.url` is mqtt://127.0.0.1:PORT).

    Tests must not stop or restart it; use `fresh_mosquitto` for that.
    """
    yield from _run(Mosquitto(tmp_path_factory.mktemp("mosquitto")))


@pytest.fixture(scope="session")
def influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """An InfluxDB 1.x server shared by the session; prefer `influx_db` for a database."""
    yield from _run(InfluxDB(tmp_path_factory.mktemp("influxdb")))


@pytest.fixture(scope="session")
def victoriametrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VictoriaMetrics]:
    """A VictoriaMetrics server shared by the session (target for /api/v2/write)."""
    yield from _run(VictoriaMetrics(tmp_path_factory.mktemp("victoriametrics")))


def fresh_database(influxdb: InfluxDB) -> Iterator[str]:
    """Create a database with a fresh name, yield its name, drop it afterwards.

    For tests that need more than the one `influx_db`: ``yield from``
    it in a fixture of their own.
    """
    name = f"t_{secrets.token_hex(6)}"
    influxdb.create_database(name)
    try:
        yield name
    finally:
        influxdb.drop_database(name)


@pytest.fixture
def influx_db(influxdb: InfluxDB) -> Iterator[str]:
    """Name of a fresh, empty database on `influxdb`, dropped after the test."""
    yield from fresh_database(influxdb)


@pytest.fixture
def fresh_mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A Mosquitto private to the test: free to restart() or kill()."""
    yield from _run(Mosquitto(tmp_path_factory.mktemp("fresh_mosquitto")))


@pytest.fixture(scope="session")
def broker_security(tmp_path_factory: pytest.TempPathFactory) -> BrokerSecurity:
    """CA, certificates, users and ACLs for `SECURE_SITE`/`SECURE_DEVICES` (see security.py)."""
    return generate_broker_security(
        tmp_path_factory.mktemp("broker_security"),
        devices={SECURE_SITE: SECURE_DEVICES},
        sim_sites=[SECURE_SITE],
    )


@pytest.fixture(scope="session")
def secure_mosquitto(
    tmp_path_factory: pytest.TempPathFactory, broker_security: BrokerSecurity
) -> Iterator[Mosquitto]:
    """A broker shared by the session with no anonymous access, users, ACLs and TLS.

    `.tls_url` is the devices' TLS listener (client id = user name), `.service_url`
    the services' TLS one, `.url` a plaintext copy of the services' on loopback
    (devices' passwords are refused there); all want a password.
    """
    broker = Mosquitto(tmp_path_factory.mktemp("secure_mosquitto"), security=broker_security)
    yield from _run(broker)


@pytest.fixture(scope="session")
def secure_influxdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDB]:
    """An InfluxDB 1.x with authentication on; `.credentials` is its admin user."""
    admin = ("admin", secrets.token_urlsafe(16))
    yield from _run(
        InfluxDB(tmp_path_factory.mktemp("secure_influxdb"), auth_enabled=True, credentials=admin)
    )


@pytest.fixture
def subscribe() -> Iterator[Callable[[str, list[str]], Subscriber]]:
    """Factory: ``subscribe(url, topics)`` -> a connected :class:`Subscriber`, closed after."""
    subs: list[Subscriber] = []

    def make(url: str, topics: list[str]) -> Subscriber:
        sub = Subscriber(url, topics)
        subs.append(sub)
        return sub

    yield make
    for sub in subs:
        sub.close()
