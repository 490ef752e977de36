"""Mosquitto 2.x broker on loopback with persistence in its state dir."""

from __future__ import annotations

import os

from fieldline_localstack._process import Service, port_open


class Mosquitto(Service):
    """A Mosquitto broker on 127.0.0.1:`port`, anonymous, persistent.

    `extra_config` is appended to the generated mosquitto.conf (e.g. TLS or
    password listeners). Persistence is saved every second and on SIGTERM, so
    queued QoS>0 messages and persistent sessions survive `restart()`.
    """

    name = "mosquitto"
    package = "mosquitto"

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        extra_config: str = "",
    ) -> None:
        super().__init__(state_dir, port)
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        """mqtt://127.0.0.1:PORT"""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> str:
        """Path of the generated mosquitto.conf."""
        return str(self.state_dir / "mosquitto.conf")

    def config_text(self) -> str:
        """The mosquitto.conf contents for the current port."""
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
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

    def _prepare(self, binary: str) -> list[str]:
        (self.state_dir / "mosquitto.conf").write_text(self.config_text())
        return [binary, "-c", self.config_path]

    def _ready(self) -> bool:
        return port_open(self.port, self.host)
