"""Mosquitto 2.x broker on loopback with persistence in its state dir."""

from __future__ import annotations

import os
from pathlib import Path

from fieldline_localstack._process import Service, free_port, port_open
from fieldline_localstack.security import BrokerSecurity


class Mosquitto(Service):
    """A Mosquitto broker on 127.0.0.1:`port`, anonymous, persistent.

    `extra_config` is appended to the generated mosquitto.conf. Persistence is
    saved every second and on SIGTERM, so queued QoS>0 messages and persistent
    sessions survive `restart()`.

    With `security` (see :mod:`fieldline_localstack.security`) no client is
    anonymous and every listener has its own users (``per_listener_settings``),
    all confined by the one ACL file:

    - `tls_port` (`tls_url`), the device listener: TLS, device users only, and
      ``use_username_as_clientid``: the broker replaces whatever client id a
      device sends by its user name, so no device key can take over another
      client's session (the pipeline's persistent one included);
    - `service_port` (`service_url`), the service listener: TLS, the service
      users (pipeline, simulators, observer) with the client ids they choose
      (the pipeline runs several connections per process);
    - `port` (`url`): a plaintext copy of the service listener on loopback,
      for tests, unless `plaintext=False` (then `url` is `service_url`).

    With `require_certificate` a TLS client must also present a certificate
    signed by the security's CA.
    """

    name = "mosquitto"
    package = "mosquitto"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        extra_config: str = "",
        security: BrokerSecurity | None = None,
        tls_port: int | None = None,
        service_port: int | None = None,
        plaintext: bool = True,
        require_certificate: bool = False,
    ) -> None:
        super().__init__(state_dir, port)
        self.extra_config = extra_config
        self.security = security
        self.plaintext = plaintext or security is None
        self.require_certificate = require_certificate
        self.tls_port: int | None = None
        self.service_port: int | None = None
        self._repick_tls_ports = tls_port is None and service_port is None
        if security is not None:
            self.tls_port = tls_port if tls_port is not None else free_port()
            self.service_port = service_port if service_port is not None else free_port()

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:PORT; `service_url` if there is no plaintext listener."""
        if not self.plaintext:
            return self.service_url
        return f"mqtt://{self.host}:{self.port}"

    @property
    def tls_url(self) -> str:
        """mqtts://127.0.0.1:TLS_PORT, the device listener (only with `security`)."""
        if self.tls_port is None:
            raise AttributeError("this broker has no TLS listener (no security)")
        return f"mqtts://{self.host}:{self.tls_port}"

    @property
    def service_url(self) -> str:
        """mqtts://127.0.0.1:SERVICE_PORT, the service listener (only with `security`)."""
        if self.service_port is None:
            raise AttributeError("this broker has no TLS listener (no security)")
        return f"mqtts://{self.host}:{self.service_port}"

    @property
    def config_path(self) -> str:
        """Path of the generated mosquitto.conf."""
        return str(self.state_dir / "mosquitto.conf")

    def config_text(self) -> str:
        """The mosquitto.conf contents for the current port."""
        lines = [*self._listener_lines(), "persistence true"]
        lines += [
            # mosquitto concatenates location + "mosquitto.db": the slash matters.
            f"persistence_location {self.state_dir}/",
            # Save every second, so even a SIGKILL loses at most ~1 s of queued state.
            "autosave_interval 1",
            f"log_dest file {self.log_path}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            # Tests and backfills park large backlogs in persistent sessions; the
            # default (1000) silently drops the rest.
            "max_queued_messages 1000000",
            # Default is 20 in flight per client; more keeps slow-ack consumers fed
            # while staying bounded (0 would mean unlimited).
            "max_inflight_messages 1000",
            "set_tcp_nodelay true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto switches to user 'mosquitto', which cannot write
            # a state dir created by root.
            lines.append("user root")
        text = "\n".join(lines) + "\n"
        if self.extra_config:
            text += self.extra_config.rstrip("\n") + "\n"
        return text

    def _listener_lines(self) -> list[str]:
        sec = self.security
        if sec is None:
            return [f"listener {self.port} {self.host}", "allow_anonymous true"]

        # Mosquitto does not tie client ids to users: any user may connect with
        # any id and so take over that id's session (and consume what the
        # broker queued for it). Devices therefore get a listener of their own
        # where their id is their user name, and their passwords are valid
        # there only; services keep the ids they choose on the other listener.
        def auth(password_file: Path) -> list[str]:
            return [
                "allow_anonymous false",
                f"password_file {password_file}",
                f"acl_file {sec.acl_file}",
            ]

        tls = [
            f"cafile {sec.ca_file}",
            f"certfile {sec.server_cert_file}",
            f"keyfile {sec.server_key_file}",
            "tls_version tlsv1.2",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
        ]
        lines = ["per_listener_settings true"]
        if self.plaintext:
            lines += [f"listener {self.port} {self.host}", *auth(sec.password_file)]
        lines += [f"listener {self.service_port} {self.host}", *auth(sec.password_file), *tls]
        lines += [
            f"listener {self.tls_port} {self.host}",
            *auth(sec.device_password_file),
            "use_username_as_clientid true",
            *tls,
        ]
        return lines

    def _repick_ports(self) -> None:
        super()._repick_ports()
        if self.tls_port is not None and self._repick_tls_ports:
            self.tls_port, self.service_port = free_port(), free_port()

    def _prepare(self, binary: str) -> list[str]:
        (self.state_dir / "mosquitto.conf").write_text(self.config_text())
        return [binary, "-c", self.config_path]

    def _ready(self) -> bool:
        ports = [self.port] if self.plaintext else []
        ports += [p for p in (self.service_port, self.tls_port) if p is not None]
        return all(port_open(p, self.host) for p in ports)
