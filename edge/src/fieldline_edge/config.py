"""The agent's configuration: one TOML file, secrets from the environment.

Example (``deploy/edge/fieldline-edge.example.toml`` has every key; docs/edge-agent.md
is the reference)::

    [device]
    id = "pi-kitchen"
    site = "home"

    [mqtt]
    url = "mqtts://broker.example.org:8883"
    username = "home/pi-kitchen"
    password_file = "/etc/fieldline/mqtt-password"
    ca_file = "/etc/fieldline/ca.crt"

    [[sensors]]
    name = "cpu"
    driver = "cpu_temperature"
    interval_s = 10

A problem is reported as a :class:`ConfigError` that names the key, e.g.
``mqtt.keepalive_s: must be an integer 5-65535, got 'abc'``. Unknown keys are
errors too (a typo must not silently fall back to a default). Relative paths
are relative to the configuration file's folder.

Environment variables override the file, so secrets need not be in it:
``FIELDLINE_MQTT_URL``, ``FIELDLINE_MQTT_USERNAME``, ``FIELDLINE_MQTT_PASSWORD``,
``FIELDLINE_MQTT_PASSWORD_FILE``, ``FIELDLINE_MQTT_CA_FILE``,
``FIELDLINE_MQTT_CERT_FILE``, ``FIELDLINE_MQTT_KEY_FILE``.
"""

from __future__ import annotations

import functools
import math
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from fieldline_edge import contract, toml
from fieldline_edge.drivers import (
    BME280,
    DS18B20,
    CommandReader,
    CpuTemperature,
    Driver,
    Extractor,
    FileReader,
    LinuxI2CBus,
    Simulated,
    SystemMetrics,
)
from fieldline_edge.drivers.cpu import THERMAL_ROOT
from fieldline_edge.drivers.ds18b20 import W1_ROOT
from fieldline_edge.mqtt import BrokerURL, TLSConfig, parse_broker_url
from fieldline_edge.sensors import SimulatedSensor

DEFAULT_SPOOL_PATH = "/var/lib/fieldline/spool.db"
DEFAULT_CLOCK_SYNC_FILE = "/run/systemd/timesync/synchronized"
PROTOCOLS = ("3.1.1", "5")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DRIVERS = ("cpu_temperature", "ds18b20", "bme280", "system", "command", "file", "simulated")
#: The longest suffix a driver adds to the sensor's name in its readings' ids.
_LONGEST_SUFFIX = {"system": ".mem_available_mb", "bme280": ".temperature"}
ENV_PREFIX = "FIELDLINE_MQTT_"


class ConfigError(ValueError):
    """A configuration problem: ``key`` (``mqtt.url``, ``sensors[2].interval_s``) and what."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class MqttSettings:
    broker: BrokerURL
    protocol: str = "3.1.1"
    keepalive_s: int = 30
    tls: Optional[TLSConfig] = None


@dataclass(frozen=True)
class SpoolSettings:
    path: str = DEFAULT_SPOOL_PATH
    max_mb: float = 64.0
    replay_rate_per_s: float = 20.0
    sync: str = "full"


@dataclass(frozen=True)
class AgentSettings:
    batch_max: int = 100
    flush_interval_s: float = 5.0
    log_level: str = "INFO"
    clock_sync_file: str = DEFAULT_CLOCK_SYNC_FILE
    telemetry_schema: str = contract.SCHEMA_TELEMETRY_V1


@dataclass(frozen=True)
class SensorSettings:
    name: str
    driver: str
    interval_s: float
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    site: str
    device: str
    mqtt: MqttSettings
    spool: SpoolSettings
    agent: AgentSettings
    sensors: tuple[SensorSettings, ...]


# ---------------------------------------------------------------- loading


def load_config(path: str, env: Optional[Mapping[str, str]] = None) -> Config:
    """Read and check the TOML file at ``path``; raise :class:`ConfigError`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(path, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "is not UTF-8 text") from None
    try:
        data = toml.loads(text)
    except ValueError as exc:
        raise ConfigError(path, f"not valid TOML: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    return parse_config(data, os.environ if env is None else env, base)


def parse_config(data: Mapping[str, Any], env: Mapping[str, str], base_dir: str = ".") -> Config:
    """Check parsed TOML (``data``) with ``env`` overrides; raise :class:`ConfigError`."""
    _only(data, "", ("device", "mqtt", "spool", "agent", "sensors"))

    def rel(p: Optional[str]) -> Optional[str]:
        return os.path.join(base_dir, p) if p and not os.path.isabs(p) else p

    dev = _Table(data, "device", required=True)
    device = dev.id("id")
    site = dev.id("site")
    dev.done()

    mq = _Table(data, "mqtt", required=True)
    url = _env_or(env, "URL", lambda: mq.text("url"))
    try:
        broker = parse_broker_url(url)
    except ValueError as exc:
        raise ConfigError(_env_key(env, "URL", "mqtt.url"), str(exc)) from None
    username = _env_or(env, "USERNAME", lambda: mq.opt_text("username"))
    password_file = rel(_env_or(env, "PASSWORD_FILE", lambda: mq.opt_text("password_file")))
    password = env.get(ENV_PREFIX + "PASSWORD") or None
    if password is None and password_file:
        key = _env_key(env, "PASSWORD_FILE", "mqtt.password_file")
        password = _read_secret(key, password_file)
    if username:
        broker = broker._replace(username=username)
    if password is not None:
        if broker.username is None:
            raise ConfigError("mqtt.username", "a password is configured but no username")
        broker = broker._replace(password=password)
    protocol = mq.get("protocol", "3.1.1")
    if protocol == 5:
        protocol = "5"
    if protocol not in PROTOCOLS:
        raise ConfigError("mqtt.protocol", f'must be "3.1.1" or "5", got {protocol!r}')
    keepalive = mq.integer("keepalive_s", 30, 5, 65535)
    files = {}
    for name in ("ca_file", "cert_file", "key_file"):
        value = rel(_env_or(env, name.upper(), functools.partial(mq.opt_text, name)))
        if value:
            key = _env_key(env, name.upper(), f"mqtt.{name}")
            if not broker.tls:
                raise ConfigError(key, "TLS files need an mqtts:// url")
            if not os.access(value, os.R_OK):
                raise ConfigError(key, f"cannot read {value}")
            files[name] = value
    if "key_file" in files and "cert_file" not in files:
        raise ConfigError("mqtt.key_file", "a client key needs mqtt.cert_file")
    tls = TLSConfig(files.get("ca_file"), files.get("cert_file"), files.get("key_file"))
    mq.done()
    mqtt = MqttSettings(broker, protocol, keepalive, tls if broker.tls else None)

    sp = _Table(data, "spool")
    spool = SpoolSettings(
        path=rel(sp.text("path", DEFAULT_SPOOL_PATH)) or "",
        max_mb=sp.number("max_mb", 64.0),
        replay_rate_per_s=sp.number("replay_rate_per_s", 20.0),
        sync=sp.choice("sync", ("full", "normal"), "full"),
    )
    if not spool.path:
        raise ConfigError("spool.path", "must not be empty")
    sp.done()

    ag = _Table(data, "agent")
    level = ag.get("log_level", "INFO")
    if not isinstance(level, str) or level.upper() not in LOG_LEVELS:
        raise ConfigError(
            "agent.log_level", f"must be one of {', '.join(LOG_LEVELS)}, got {level!r}"
        )
    agent = AgentSettings(
        batch_max=ag.integer("batch_max", 100, 1, contract.MAX_READINGS_PER_MESSAGE),
        flush_interval_s=ag.number("flush_interval_s", 5.0),
        log_level=level.upper(),
        clock_sync_file=ag.text("clock_sync_file", DEFAULT_CLOCK_SYNC_FILE, allow_empty=True),
        telemetry_schema=_telemetry_schema(ag),
    )
    ag.done()

    sensors = _sensors(data.get("sensors"), device, rel)
    return Config(site, device, mqtt, spool, agent, sensors)


def _telemetry_schema(ag: _Table) -> str:
    # Version 1 stays the default: a device must not switch a pipeline that
    # predates version 2 to a format it cannot read.
    try:
        return contract.telemetry_schema(ag.get("telemetry_schema", 1))
    except ValueError as exc:
        raise ConfigError("agent.telemetry_schema", str(exc)) from None


def _sensors(
    raw: Any, device: str, rel: Callable[[Optional[str]], Optional[str]]
) -> tuple[SensorSettings, ...]:
    if raw is None:
        raise ConfigError("sensors", "at least one [[sensors]] table is needed")
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError("sensors", "must be an array of tables ([[sensors]])")
    out: list[SensorSettings] = []
    seen: set[str] = set()
    for i, tbl in enumerate(raw):
        where = f"sensors[{i}]"
        t = _Table({where: tbl}, where)
        name = t.id("name")
        if name in seen:
            raise ConfigError(f"{where}.name", f"{name!r} is used by another sensor")
        seen.add(name)
        driver = t.choice("driver", DRIVERS)
        suffix = _LONGEST_SUFFIX.get(driver, "")
        if suffix and not contract.is_valid_id(name + suffix):
            raise ConfigError(f"{where}.name", f"too long for the {driver} driver's readings")
        interval = t.number("interval_s", 10.0)
        options = _driver_options(t, driver, device, name, rel)
        t.done()
        out.append(SensorSettings(name, driver, interval, options))
    return tuple(out)


def _driver_options(
    t: _Table, driver: str, device: str, name: str, rel: Callable[[Optional[str]], Optional[str]]
) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if driver == "cpu_temperature":
        o["root"] = t.text("root", THERMAL_ROOT)
        o["zone"] = t.opt_integer("zone", 0, 10_000)
    elif driver == "ds18b20":
        o["root"] = t.text("root", W1_ROOT)
        device_id = t.opt_text("device_id")
        if device_id is not None and not re.fullmatch(r"28-[0-9a-fA-F]{12}", device_id):
            raise ConfigError(
                t.key("device_id"), f"must look like 28-0123456789ab, got {device_id!r}"
            )
        o["device_id"] = device_id
    elif driver == "bme280":
        o["bus"] = t.integer("bus", 1, 0, 1023)
        address = t.get("address", 0x76)
        if isinstance(address, str) and re.fullmatch(r"0[xX][0-9a-fA-F]{1,2}", address):
            address = int(address, 16)
        if address not in (0x76, 0x77) or isinstance(address, bool):
            raise ConfigError(t.key("address"), f"must be 0x76 or 0x77, got {address!r}")
        o["address"] = address
        o["dev_dir"] = t.text("dev_dir", "/dev")
    elif driver == "system":
        o["root"] = t.text("root", "/")
        o["disk_path"] = t.text("disk_path", "/")
    elif driver in ("command", "file"):
        if driver == "command":
            command = t.get("command")
            ok = (isinstance(command, str) and command.strip()) or (
                isinstance(command, list) and command and all(isinstance(a, str) for a in command)
            )
            if not ok:
                raise ConfigError(t.key("command"), "must be a command line or a list of arguments")
            o["command"] = command
            o["timeout_s"] = t.number("timeout_s", 5.0)
        else:
            o["path"] = rel(t.text("path"))
        regex = t.opt_text("regex")
        pointer = t.opt_text("json_pointer", allow_empty=True)
        if regex is not None and pointer is not None:
            raise ConfigError(t.key("regex"), "use regex or json_pointer, not both")
        try:
            o["extract"] = Extractor(
                regex,
                pointer,
                t.number("scale", 1.0, positive=False),
                t.number("offset", 0.0, positive=False),
            )
        except re.error as exc:
            raise ConfigError(t.key("regex"), f"not a regular expression: {exc}") from None
        except ValueError as exc:
            raise ConfigError(t.key("json_pointer"), str(exc)) from None
        o["unit"] = t.unit()
    elif driver == "simulated":
        o["unit"] = t.unit()
        o["base"] = t.number("base", 20.0, positive=False)
        o["amplitude"] = t.number("amplitude", 5.0, positive=False)
        o["period_s"] = t.number("period_s", 600.0)
        o["noise"] = t.number("noise", 0.2, positive=False)
        if o["noise"] < 0:
            raise ConfigError(t.key("noise"), f"must be >= 0, got {o['noise']!r}")
        o["seed"] = t.integer("seed", zlib.crc32(f"{device}/{name}".encode()), 0, 2**32)
    return o


def build_driver(s: SensorSettings) -> Driver:
    """The driver a checked ``[[sensors]]`` entry describes."""
    o = s.options
    if s.driver == "cpu_temperature":
        return CpuTemperature(s.name, o["root"], o["zone"])
    if s.driver == "ds18b20":
        return DS18B20(s.name, o["root"], o["device_id"])
    if s.driver == "bme280":
        return BME280(s.name, LinuxI2CBus(o["bus"], o["dev_dir"]), o["address"])
    if s.driver == "system":
        return SystemMetrics(s.name, o["root"], o["disk_path"])
    if s.driver == "command":
        return CommandReader(s.name, o["command"], o["extract"], o["unit"], o["timeout_s"])
    if s.driver == "file":
        return FileReader(s.name, o["path"], o["extract"], o["unit"])
    if s.driver == "simulated":
        sensor = SimulatedSensor(
            s.name,
            o["unit"],
            seed=o["seed"],
            base=o["base"],
            amplitude=o["amplitude"],
            period_s=o["period_s"],
            noise=o["noise"],
            interval_s=s.interval_s,
        )
        return Simulated(s.name, sensor)
    raise ConfigError("sensors", f"unknown driver {s.driver!r}")  # checked in parse_config


# ---------------------------------------------------------------- checking helpers


def _only(data: Mapping[str, Any], prefix: str, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(
                f"{prefix}{key}", f"unknown key (expected one of {', '.join(allowed)})"
            )


def _env_or(env: Mapping[str, str], name: str, fallback: Callable[[], Any]) -> Any:
    # The file's value is read (and checked) even when the environment overrides
    # it, so a key present in both is not taken for an unknown one.
    from_file = fallback()
    value = env.get(ENV_PREFIX + name)
    return value if value else from_file


def _env_key(env: Mapping[str, str], name: str, key: str) -> str:
    return ENV_PREFIX + name if env.get(ENV_PREFIX + name) else key


def _read_secret(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    if not secret:
        raise ConfigError(key, f"{path} is empty")
    return secret


class _Table:
    """One table of the file: typed getters that name the key in their errors."""

    def __init__(self, data: Mapping[str, Any], name: str, required: bool = False) -> None:
        raw = data.get(name)
        if raw is None:
            if required:
                raise ConfigError(name, f"the [{name}] table is missing")
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError(name, "must be a table")
        self.name = name
        self.data: dict[str, Any] = raw
        self.used: set[str] = set()

    def key(self, key: str) -> str:
        return f"{self.name}.{key}"

    def get(self, key: str, default: Any = None) -> Any:
        self.used.add(key)
        return self.data.get(key, default)

    def done(self) -> None:
        for key in self.data:
            if key not in self.used:
                known = ", ".join(sorted(self.used))
                raise ConfigError(self.key(key), f"unknown key (expected one of {known})")

    def text(self, key: str, default: Optional[str] = None, allow_empty: bool = False) -> str:
        value = self.get(key, default)
        if value is None:
            raise ConfigError(self.key(key), "is required")
        if not isinstance(value, str) or (not value and not allow_empty):
            raise ConfigError(self.key(key), f"must be a non-empty string, got {value!r}")
        return value

    def opt_text(self, key: str, allow_empty: bool = False) -> Optional[str]:
        if self.data.get(key) is None:
            self.used.add(key)
            return None
        return self.text(key, allow_empty=allow_empty)

    def id(self, key: str) -> str:
        value = self.text(key)
        if not contract.is_valid_id(value):
            raise ConfigError(
                self.key(key),
                f"{value!r} is not a valid id (1-64 letters, digits, '_', '.', '-';"
                " not starting with '_', '.' or '-')",
            )
        return value

    def unit(self) -> str:
        unit = self.text("unit", "", allow_empty=True)
        if len(unit) > contract.MAX_UNIT_LEN or not unit.isprintable() or "\\" in unit:
            raise ConfigError(
                self.key("unit"), f"at most {contract.MAX_UNIT_LEN} printable characters"
            )
        return unit

    def integer(self, key: str, default: Optional[int], lo: int, hi: int) -> int:
        value = self.get(key, default)
        if value is None:
            raise ConfigError(self.key(key), "is required")
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ConfigError(self.key(key), f"must be an integer {lo}-{hi}, got {value!r}")
        return value

    def opt_integer(self, key: str, lo: int, hi: int) -> Optional[int]:
        if self.data.get(key) is None:
            self.used.add(key)
            return None
        return self.integer(key, None, lo, hi)

    def number(self, key: str, default: float, positive: bool = True) -> float:
        value: Union[int, float, Any] = self.get(key, default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value) and (value > 0 or not positive)
        if not ok:
            what = "a number > 0" if positive else "a finite number"
            raise ConfigError(self.key(key), f"must be {what}, got {value!r}")
        return float(value)

    def choice(self, key: str, choices: tuple[str, ...], default: Optional[str] = None) -> str:
        value = self.get(key, default)
        if value not in choices:
            got = "nothing" if value is None else repr(value)
            raise ConfigError(self.key(key), f"must be one of {', '.join(choices)}, got {got}")
        return str(value)
