"""Development credentials for the broker: a CA, TLS certificates, users and ACLs.

Everything is generated into one folder (mode 0700; every secret file 0600, and
a ``.gitignore`` that ignores the folder's contents, so it never ends up in the
repository). Passwords come from :func:`secrets.token_urlsafe`; they are written
to files and never logged, and :class:`Credential` keeps them out of ``repr``.

Users and what the ACL lets each of them do (Mosquitto checks ``write`` when a
client publishes and ``read`` when the broker is about to deliver a message; a
denied publish is acknowledged and dropped, a denied read is never delivered):

======================  ================================================================
user                    topics
======================  ================================================================
``<site>/<device>``     write ``fieldline/<site>/<device>/telemetry`` and ``.../status``
                        (its last will goes there too); reads nothing
``fieldline-pipeline``  read ``fieldline/+/+/telemetry`` and ``.../status`` (also
                        through ``$share/<group>/``); write ``fieldline/deadletter/#``,
                        ``fieldline/+/+/alerts``, ``fieldline/_metrics/pipeline/#``
``fieldline-sim-<site>``  write ``fieldline/<site>/+/telemetry``, ``fieldline/<site>/+/status``,
                        ``fieldline/_labels/<site>``, ``fieldline/_metrics/sim/#``
``fieldline-observer``  read ``fieldline/_metrics/#``, ``fieldline/deadletter/#``,
                        ``fieldline/+/+/status``, ``fieldline/+/+/alerts``,
                        ``fieldline/_labels/#``
======================  ================================================================

Device user names contain ``/``, which no id may contain, so ``<site>/<device>``
is unambiguous and can never collide with a service user.

Devices and services have separate password files: a broker gives each its own
listener (:class:`~fieldline_localstack.mosquitto.Mosquitto`), so a device's
password is valid only where the broker binds its client id to its user name.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fieldline_localstack._process import ServiceError, find_binary

PIPELINE_USER = "fieldline-pipeline"
OBSERVER_USER = "fieldline-observer"
SIM_USER_PREFIX = "fieldline-sim-"
#: Certificates of a development CA: long enough for a dev machine, not forever.
CERT_DAYS = 825
#: Name of the JSON file holding every user's password (mode 0600).
CREDENTIALS_FILE = "credentials.json"
INFLUX_CREDENTIALS_FILE = "influx.json"
#: Mosquitto password file of the device users only (the device listener's).
DEVICE_PASSWORDS_FILE = "device-passwords"
INFLUX_ADMIN_USER = "fieldline-admin"
INFLUX_PIPELINE_USER = "fieldline-pipeline"
_CURVE = "prime256v1"  # EC keys: generated in milliseconds, unlike RSA


def device_username(site: str, device: str) -> str:
    """The broker user of device ``device`` at ``site``: ``<site>/<device>``."""
    return f"{site}/{device}"


def sim_username(site: str) -> str:
    """The broker user of a simulator publishing for every device of ``site``."""
    return f"{SIM_USER_PREFIX}{site}"


@dataclass(frozen=True)
class Credential:
    """A user name and its password; the password is left out of ``repr``."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class BrokerSecurity:
    """What :func:`generate_broker_security` wrote (paths), and the users it made.

    ``client_cert_file``/``client_key_file`` are a client certificate signed by
    the CA, for brokers that require one. ``password_file`` holds the service
    users (pipeline, observer, simulators), ``device_password_file`` the
    devices. ``sim_credentials_file(site)`` is the file ``fieldline sim run
    --credentials`` takes.
    """

    directory: Path
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path
    password_file: Path
    device_password_file: Path
    acl_file: Path
    credentials_file: Path
    users: Mapping[str, Credential] = field(repr=False)

    def user(self, username: str) -> Credential:
        """The credential of ``username``; KeyError if there is no such user."""
        return self.users[username]

    @property
    def pipeline(self) -> Credential:
        return self.users[PIPELINE_USER]

    @property
    def observer(self) -> Credential:
        return self.users[OBSERVER_USER]

    def device(self, site: str, device: str) -> Credential:
        return self.users[device_username(site, device)]

    def sim_credentials_file(self, site: str) -> Path:
        return self.directory / f"sim-{site}.json"

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> BrokerSecurity:
        """Rebuild from a folder written by :func:`generate_broker_security`."""
        d = Path(directory).resolve()
        try:
            raw = json.loads((d / CREDENTIALS_FILE).read_text())
        except (OSError, ValueError) as exc:
            raise ServiceError(f"no readable {CREDENTIALS_FILE} in {d}: {exc}") from None
        users = {name: Credential(name, str(pw)) for name, pw in raw.items()}
        return cls(
            directory=d,
            ca_file=d / "ca.crt",
            server_cert_file=d / "server.crt",
            server_key_file=d / "server.key",
            client_cert_file=d / "client.crt",
            client_key_file=d / "client.key",
            password_file=d / "passwords",
            device_password_file=d / DEVICE_PASSWORDS_FILE,
            acl_file=d / "acl",
            credentials_file=d / CREDENTIALS_FILE,
            users=users,
        )


def influx_credentials(directory: str | os.PathLike[str]) -> dict[str, Credential]:
    """The InfluxDB ``admin`` and write-only ``pipeline`` users of a local stack.

    Made (mode 0600) on first use and read back afterwards, so a restarted
    stack keeps its users.
    """
    path = Path(directory) / INFLUX_CREDENTIALS_FILE
    if not path.exists():
        users = {"admin": INFLUX_ADMIN_USER, "pipeline": INFLUX_PIPELINE_USER}
        body = {
            role: _as_dict(Credential(u, secrets.token_urlsafe(24))) for role, u in users.items()
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_secret(path, json.dumps(body, indent=2) + "\n")
    raw = json.loads(path.read_text())
    return {role: Credential(c["username"], c["password"]) for role, c in raw.items()}


def acl_text(devices: Mapping[str, Sequence[str]], sim_sites: Iterable[str] = ()) -> str:
    """The Mosquitto ACL file for ``devices`` (site -> device ids) and simulator sites.

    There are no rules before the first ``user`` line, so an anonymous client
    (should a listener ever allow one) may do nothing.
    """
    lines = ["# Generated by fieldline_localstack.security; every user is confined below."]
    for site, ids in devices.items():
        for device in ids:
            lines += [
                "",
                f"user {device_username(site, device)}",
                f"topic write fieldline/{site}/{device}/telemetry",
                f"topic write fieldline/{site}/{device}/status",
            ]
    lines += [
        "",
        f"user {PIPELINE_USER}",
        # Mosquitto 2.0 grants every SUBSCRIBE and checks `read` per delivered
        # message against its real topic, so this also covers $share/<group>/...
        "topic read fieldline/+/+/telemetry",
        "topic read fieldline/+/+/status",
        "topic write fieldline/deadletter/#",
        "topic write fieldline/+/+/alerts",
        "topic write fieldline/_metrics/pipeline/#",
        "topic readwrite fieldline/_pipeline/#",
    ]
    for site in sim_sites:
        lines += [
            "",
            f"user {sim_username(site)}",
            f"topic write fieldline/{site}/+/telemetry",
            f"topic write fieldline/{site}/+/status",
            f"topic write fieldline/_labels/{site}",
            "topic write fieldline/_metrics/sim/#",
        ]
    lines += [
        "",
        f"user {OBSERVER_USER}",
        "topic read fieldline/_metrics/#",
        "topic read fieldline/deadletter/#",
        "topic read fieldline/+/+/status",
        "topic read fieldline/+/+/alerts",
        "topic read fieldline/_labels/#",
    ]
    return "\n".join(lines) + "\n"


def generate_broker_security(
    directory: str | os.PathLike[str],
    *,
    devices: Mapping[str, Sequence[str]],
    sim_sites: Sequence[str] = (),
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
) -> BrokerSecurity:
    """Write a CA, server and client certificates, users, passwords and ACLs.

    ``devices`` maps each site to its device ids; every device gets its own
    user. ``hosts`` go into the server certificate's subjectAltName (IPs and
    DNS names), which is what clients check the broker's identity against.
    Raises ServiceError if ``openssl`` or ``mosquitto_passwd`` fails.
    """
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o700)
    # Belt and braces: even a state dir inside a checkout never gets committed.
    (d / ".gitignore").write_text("*\n")
    _make_ca(d)
    _make_cert(d, "server", "fieldline-broker", hosts, server=True)
    _make_cert(d, "client", "fieldline-client", (), server=False)

    services = [PIPELINE_USER, OBSERVER_USER, *(sim_username(site) for site in sim_sites)]
    device_users = [device_username(site, dev) for site, ids in devices.items() for dev in ids]
    users = {name: Credential(name, secrets.token_urlsafe(24)) for name in services + device_users}
    passwords = {u.username: u.password for u in users.values()}
    _write_secret(d / CREDENTIALS_FILE, json.dumps(passwords, indent=2) + "\n")
    for site in sim_sites:
        sim = users[sim_username(site)]
        per_device = {
            dev: _as_dict(users[device_username(site, dev)]) for dev in devices.get(site, ())
        }
        body = {**_as_dict(sim), "devices": per_device}
        _write_secret(d / f"sim-{site}.json", json.dumps(body, indent=2) + "\n")
    _write_password_file(d / "passwords", (users[name] for name in services))
    _write_password_file(d / DEVICE_PASSWORDS_FILE, (users[name] for name in device_users))
    (d / "acl").write_text(acl_text(devices, sim_sites))
    return BrokerSecurity.load(d)


# -- files -------------------------------------------------------------------


def _as_dict(credential: Credential) -> dict[str, str]:
    return {"username": credential.username, "password": credential.password}


def _write_secret(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the start (no window where it is readable)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _write_password_file(path: Path, users: Iterable[Credential]) -> None:
    # mosquitto_passwd -U hashes a plaintext "user:password" file in place.
    _write_secret(path, "".join(f"{u.username}:{u.password}\n" for u in users))
    _run([find_binary("mosquitto_passwd", "mosquitto"), "-U", str(path)], "mosquitto_passwd")


def _run(argv: list[str], what: str) -> None:
    # Output is captured and only its tail is reported: these tools never print secrets.
    res = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        tail = (res.stderr or res.stdout)[-1000:]
        raise ServiceError(f"{what} failed (exit {res.returncode}): {tail}")


def _openssl(*args: str) -> None:
    _run([find_binary("openssl", "openssl"), *args], "openssl")


def _make_key(path: Path) -> None:
    path.unlink(missing_ok=True)
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{_CURVE}", "-out", str(path)
    )
    path.chmod(0o600)


def _make_ca(d: Path) -> None:
    _make_key(d / "ca.key")
    _openssl(
        "req", "-x509", "-new", "-key", str(d / "ca.key"), "-sha256",
        "-days", str(CERT_DAYS), "-subj", "/CN=Fieldline development CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", str(d / "ca.crt"),
    )  # fmt: skip


def _make_cert(d: Path, name: str, common_name: str, hosts: Sequence[str], *, server: bool) -> None:
    key, csr, crt, ext = (d / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    _make_key(key)
    _openssl("req", "-new", "-key", str(key), "-subj", f"/CN={common_name}", "-out", str(csr))
    lines = [
        "basicConstraints=critical,CA:FALSE",
        "keyUsage=critical,digitalSignature,keyEncipherment",
        f"extendedKeyUsage={'serverAuth' if server else 'clientAuth'}",
    ]
    if hosts:
        alt = [f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts]
        lines.append(f"subjectAltName={','.join(alt)}")
    ext.write_text("\n".join(lines) + "\n")
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-sha256", "-days", str(CERT_DAYS), "-extfile", str(ext),
        "-out", str(crt),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
