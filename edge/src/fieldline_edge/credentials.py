"""Per-device broker credentials and the broker-side entries for the operator.

Each device gets its own MQTT user, ``<site>/<device>`` (ids cannot contain
``/``, so the name never collides with a service user), and a random password.
The device receives the password in a file of mode 0600; the operator receives
the Mosquitto side: a password-file line (PBKDF2-SHA512, the ``$7$`` format that
Mosquitto 2 writes with ``mosquitto_passwd``) and ACL lines under which the
device may publish under its own topics only and read nothing.

An operator directory keeps one folder per device, so provisioning the same
device again (an upgrade) reuses its password instead of locking it out of a
broker that still has the old one::

    <operator-dir>/devices/<site>/<device>/password        0600, the plaintext
    <operator-dir>/devices/<site>/<device>/mosquitto.passwd one password-file line
    <operator-dir>/devices/<site>/<device>/mosquitto.acl    the device's ACL block
    <operator-dir>/mosquitto/passwd                         every device's line, for password_file
    <operator-dir>/mosquitto/acl                            every device's block, for acl_file
    <operator-dir>/.lock                                    held while a device is added
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Iterator, List, NamedTuple, Tuple

from fieldline_edge import contract

#: Mosquitto 2's own defaults for ``$7$`` hashes (mosquitto_passwd).
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
HASH_BYTES = 64
#: 32 random bytes, URL-safe base64: no character a TOML, shell or URL needs escaped.
PASSWORD_BYTES = 32


def device_username(site: str, device: str) -> str:
    """The broker user of ``device`` at ``site``: ``<site>/<device>``."""
    return f"{site}/{device}"


def device_topic_root(site: str, device: str) -> str:
    """The level under which every topic of the device lives."""
    return f"{contract.TOPIC_ROOT}/{site}/{device}"


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_BYTES)


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """``$7$<iterations>$<salt>$<hash>`` as Mosquitto 2 stores it (base64 with padding)."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, HASH_BYTES)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_mosquitto_hash(password: str, hashed: str) -> bool:
    """True if ``password`` matches a ``$7$`` hash (as Mosquitto would decide)."""
    try:
        _, kind, iterations, salt, digest = hashed.split("$")
        if kind != "7":
            return False
        expected = base64.b64decode(digest, validate=True)
        got = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), base64.b64decode(salt, validate=True), int(iterations),
            len(expected),
        )  # fmt: skip
    except ValueError:
        return False
    return hmac.compare_digest(got, expected)


def password_line(username: str, password: str) -> str:
    return f"{username}:{mosquitto_hash(password)}\n"


def acl_block(site: str, device: str) -> str:
    """The Mosquitto ACL lines of one device: write under its own topics, read nothing."""
    return (
        f"user {device_username(site, device)}\ntopic write {device_topic_root(site, device)}/#\n"
    )


def write_secret(path: Path, text: str) -> None:
    """Write ``path`` with mode 0600 from the moment it exists, replacing it atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class DeviceCredentials(NamedTuple):
    """A device's user and password (kept out of ``repr``) and the files written for it."""

    site: str
    device: str
    password: str
    created: bool
    password_file: Path
    broker_password_file: Path
    broker_acl_file: Path

    @property
    def username(self) -> str:
        return device_username(self.site, self.device)

    def __repr__(self) -> str:
        return f"DeviceCredentials(username={self.username!r}, created={self.created})"


class OperatorDir:
    """The operator's folder of device passwords and broker-side files (see module doc)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def broker_password_file(self) -> Path:
        return self.path / "mosquitto" / "passwd"

    @property
    def broker_acl_file(self) -> Path:
        return self.path / "mosquitto" / "acl"

    def device_dir(self, site: str, device: str) -> Path:
        for what, value in (("site", site), ("device", device)):
            if not contract.is_valid_id(value):
                raise ValueError(f"{value!r} is not a valid {what} id")
        return self.path / "devices" / site / device

    def device(self, site: str, device: str, *, rotate: bool = False) -> DeviceCredentials:
        """The device's credentials, made on first use (or with ``rotate``), then reused."""
        d = self.device_dir(site, device)
        secret = d / "password"
        # A fleet deploy provisions devices from several threads (and an operator may
        # run two commands at once); the broker files are rebuilt from every device
        # folder, so each change and its rebuild must happen alone.
        with self._locked():
            created = rotate or not secret.is_file()
            if created:
                password = new_password()
                write_secret(secret, password + "\n")
                user = device_username(site, device)
                write_secret(d / "mosquitto.passwd", password_line(user, password))
                (d / "mosquitto.acl").write_text(acl_block(site, device))
                self.rebuild()
            else:
                password = secret.read_text().strip()
        if not created and not password:
            raise ValueError(f"{secret} is empty; use --rotate to make a new password")
        return DeviceCredentials(
            site, device, password, created, secret, self.broker_password_file,
            self.broker_acl_file,
        )  # fmt: skip

    def devices(self) -> List[Tuple[str, str]]:
        root = self.path / "devices"
        if not root.is_dir():
            return []
        return sorted(
            (s.name, d.name)
            for s in root.iterdir()
            if s.is_dir()
            for d in s.iterdir()
            if (d / "mosquitto.passwd").is_file()
        )

    def rebuild(self) -> None:
        """Rewrite the broker's password file and ACL from every device folder."""
        lines, blocks = [], ["# Fieldline devices: each may publish under its own topics only.\n"]
        for site, device in self.devices():
            d = self.device_dir(site, device)
            lines.append((d / "mosquitto.passwd").read_text())
            blocks.append("\n" + (d / "mosquitto.acl").read_text())
        write_secret(self.broker_password_file, "".join(lines))
        self.broker_acl_file.write_text("".join(blocks))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the operator dir's lock (an flock, so threads and processes both wait)."""
        self._init_dir()
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _init_dir(self) -> None:
        try:
            self.path.mkdir(parents=True)
        except FileExistsError:
            return
        self.path.chmod(0o700)
        # Even an operator dir inside a checkout must never be committed.
        (self.path / ".gitignore").write_text("*\n")
