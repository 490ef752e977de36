"""The local stack: Mosquitto + InfluxDB (+ optionally VictoriaMetrics) in one folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from fieldline_localstack._process import Service, ServiceError
from fieldline_localstack.influxdb import InfluxDB
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.security import (
    CREDENTIALS_FILE,
    BrokerSecurity,
    generate_broker_security,
    influx_credentials,
)
from fieldline_localstack.victoriametrics import VictoriaMetrics

DATABASE = "fieldline"
STATE_FILE = "stack.json"
#: Site and number of devices that get their own broker users in a secure stack.
SECURE_SITE = "demo"
SECURE_DEVICES = 50
ENV_FILE = "pipeline.env"
SIM_ENV_FILE = "sim.env"


class LocalStack:
    """Mosquitto and InfluxDB (database "fieldline") with state under `state_dir`.

    `start()` writes `<state_dir>/stack.json` (ports, pids, urls, env vars);
    `from_state()` rebuilds the stack from that file so another process can
    report on it or stop it. Services live in `<state_dir>/<service name>/`.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        victoriametrics: bool = False,
        secure: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.secure = secure
        self.security: BrokerSecurity | None = None
        influx_auth = None
        if secure:
            sec_dir = self.state_dir / "security"
            if (sec_dir / CREDENTIALS_FILE).exists():  # a restart keeps its users
                self.security = BrokerSecurity.load(sec_dir)
            else:
                devices = [f"dev-{i:04d}" for i in range(1, SECURE_DEVICES + 1)]
                self.security = generate_broker_security(
                    sec_dir, devices={SECURE_SITE: devices}, sim_sites=[SECURE_SITE]
                )
            influx_auth = influx_credentials(sec_dir)
        self.influx_users = influx_auth or {}
        # Secure: TLS only, no plaintext listener at all (not even on loopback).
        self.mosquitto = Mosquitto(
            self.state_dir / "mosquitto", security=self.security, plaintext=not secure
        )
        admin = self.influx_users.get("admin")
        self.influxdb = InfluxDB(
            self.state_dir / "influxdb",
            auth_enabled=secure,
            credentials=(admin.username, admin.password) if admin is not None else None,
        )
        self.victoriametrics = (
            VictoriaMetrics(self.state_dir / "victoriametrics") if victoriametrics else None
        )
        self.database = DATABASE

    @property
    def services(self) -> dict[str, Service]:
        """The stack's services by name, in start order."""
        found: dict[str, Service] = {"mosquitto": self.mosquitto, "influxdb": self.influxdb}
        if self.victoriametrics is not None:
            found["victoriametrics"] = self.victoriametrics
        return found

    @property
    def state_file(self) -> Path:
        """Path of stack.json."""
        return self.state_dir / STATE_FILE

    def env(self, *, secrets: bool = True) -> dict[str, str]:
        """Environment variables pointing the pipeline at this stack.

        Without security every tool may use them. In a secure stack they are
        the pipeline's alone: the service listener's TLS URL with its user, its
        write-only InfluxDB user; `secrets=False` leaves the passwords out. The
        simulator has its own, :meth:`sim_env`.
        """
        env = {
            "FIELDLINE_BROKER_URL": self.mosquitto.url,
            "FIELDLINE_INFLUX_URL": self.influxdb.url,
            "FIELDLINE_INFLUX_DB": self.database,
        }
        if self.security is not None:
            pipe = self.security.pipeline
            auth = f"{pipe.username}:{pipe.password}" if secrets else pipe.username
            url = self.mosquitto.service_url.replace("://", f"://{auth}@", 1)
            env["FIELDLINE_BROKER_URL"] = url
            env["FIELDLINE_MQTT_CA_FILE"] = str(self.security.ca_file)
            writer = self.influx_users["pipeline"]
            env["FIELDLINE_INFLUX_USER"] = writer.username
            if secrets:
                env["FIELDLINE_INFLUX_PASSWORD"] = writer.password
        if self.victoriametrics is not None:
            env["FIELDLINE_VM_URL"] = self.victoriametrics.url
        return env

    def sim_env(self) -> dict[str, str]:
        """Environment variables of ``fieldline sim run/fleet`` against this stack.

        In a secure stack: the service listener for the simulator's own user,
        the device listener for the devices' users (both from the credentials
        file, which this names), the CA. No password of the pipeline or of
        InfluxDB, and no password at all in the variables themselves.
        """
        if self.security is None:
            return {"FIELDLINE_BROKER_URL": self.mosquitto.url}
        return {
            "FIELDLINE_BROKER_URL": self.mosquitto.service_url,
            "FIELDLINE_SIM_DEVICE_BROKER_URL": self.mosquitto.tls_url,
            "FIELDLINE_MQTT_CA_FILE": str(self.security.ca_file),
            "FIELDLINE_SIM_CREDENTIALS": str(self.security.sim_credentials_file(SECURE_SITE)),
        }

    @property
    def env_file(self) -> Path | None:
        """In a secure stack: the pipeline's `KEY=VALUE` file (mode 0600), `env()` with secrets."""
        return self.security.directory / ENV_FILE if self.security is not None else None

    @property
    def sim_env_file(self) -> Path | None:
        """In a secure stack: the simulator's `KEY=VALUE` file (mode 0600), `sim_env()`."""
        return self.security.directory / SIM_ENV_FILE if self.security is not None else None

    def _write_env_files(self) -> None:
        # One file per tool, so that loading one hands no other tool's secret over.
        for path, env in ((self.env_file, self.env()), (self.sim_env_file, self.sim_env())):
            if path is None:
                continue
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.writelines(f"{k}={v}\n" for k, v in env.items())

    def start(self) -> LocalStack:
        """Start every service, create the database, write stack.json.

        On failure the services already started are stopped again and the
        ServiceError propagates.
        """
        if self._previous_still_running():
            raise ServiceError(f"a stack is already running in {self.state_dir}")
        try:
            for service in self.services.values():
                service.start()
            self.influxdb.create_database(self.database)
            if self.secure:
                writer = self.influx_users["pipeline"]
                self.influxdb.create_writer(writer.username, writer.password, self.database)
            self._write_env_files()
        except BaseException:
            self.stop()
            raise
        self._write_state()
        return self

    def _previous_still_running(self) -> bool:
        # A stack.json left by a crash or reboot is stale, not an obstacle.
        if not self.state_file.exists():
            return False
        try:
            return any(LocalStack.from_state(self.state_dir).status().values())
        except ServiceError:
            return False

    def stop(self, timeout_s: float = 10) -> None:
        """Stop every service (reverse order) and remove stack.json."""
        for service in reversed(list(self.services.values())):
            service.stop(timeout_s)
        self.state_file.unlink(missing_ok=True)

    def detach(self) -> None:
        """Let the services outlive this process (`fieldline stack start`)."""
        for service in self.services.values():
            service.detach()

    @property
    def running(self) -> bool:
        """True if every service is running."""
        return all(s.running for s in self.services.values())

    def status(self) -> dict[str, bool]:
        """Service name -> running."""
        return {name: s.running for name, s in self.services.items()}

    def describe(self) -> dict[str, Any]:
        """The stack.json contents."""
        services: dict[str, Any] = {}
        for name, s in self.services.items():
            services[name] = {"pid": s.pid, "port": s.port, "url": s.url}
        services["influxdb"]["rpc_port"] = self.influxdb.rpc_port
        if self.mosquitto.tls_port is not None:
            services["mosquitto"]["tls_port"] = self.mosquitto.tls_port
            services["mosquitto"]["tls_url"] = self.mosquitto.tls_url
        if self.mosquitto.service_port is not None:
            services["mosquitto"]["service_port"] = self.mosquitto.service_port
            services["mosquitto"]["service_url"] = self.mosquitto.service_url
        described: dict[str, Any] = {
            "state_dir": str(self.state_dir),
            "database": self.database,
            "secure": self.secure,
            "services": services,
            # Never a password here: stack.json is an ordinary readable file.
            "env": self.env(secrets=False),
            "sim_env": self.sim_env(),
        }
        if self.env_file is not None and self.sim_env_file is not None:
            described["env_file"] = str(self.env_file)
            described["sim_env_file"] = str(self.sim_env_file)
        return described

    def _write_state(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.describe(), indent=2) + "\n")
        tmp.replace(self.state_file)  # readers never see a half-written file

    @classmethod
    def from_state(cls, state_dir: str | os.PathLike[str]) -> LocalStack:
        """Rebuild a stack started by another process from its stack.json.

        Raises ServiceError if there is no (readable) stack.json.
        """
        path = Path(state_dir).resolve() / STATE_FILE
        try:
            state = json.loads(path.read_text())
            services = state["services"]
            stack = cls(
                state_dir,
                victoriametrics="victoriametrics" in services,
                secure=bool(state.get("secure", False)),
            )
            for name, service in stack.services.items():
                service.port = int(services[name]["port"])
                service.adopt(int(services[name]["pid"]))
            if "tls_port" in services["mosquitto"]:
                stack.mosquitto.tls_port = int(services["mosquitto"]["tls_port"])
            if "service_port" in services["mosquitto"]:
                stack.mosquitto.service_port = int(services["mosquitto"]["service_port"])
            stack.influxdb.rpc_port = int(services["influxdb"]["rpc_port"])
            stack.database = str(state["database"])
        except FileNotFoundError:
            raise ServiceError(f"no stack in {path.parent} ({STATE_FILE} not found)") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ServiceError(f"unreadable {path}: {exc!r}") from exc
        return stack

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
