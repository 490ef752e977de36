"""The agent's TOML configuration: the schema, errors that name the key, env overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import tomllib
from fieldline_edge import toml
from fieldline_edge.config import ConfigError, build_driver, load_config, parse_config
from fieldline_edge.contract import SCHEMA_TELEMETRY_V1, SCHEMA_TELEMETRY_V2

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "edge" / "fieldline-edge.example.toml"

MINIMAL = """
[device]
id = "pi-1"
site = "home"

[mqtt]
url = "mqtt://127.0.0.1:1883"

[[sensors]]
name = "cpu"
driver = "cpu_temperature"
"""


def parse(text: str, env: dict[str, str] | None = None, base: str = ".") -> Any:
    return parse_config(tomllib.loads(text), env or {}, base)


def test_the_subset_parser_reads_the_example_like_tomllib() -> None:
    text = EXAMPLE.read_text()
    assert toml.parse_subset(text) == tomllib.loads(text)
    tricky = (
        'a = "tab\\there \\u00e9 \\"q\\""\nb = \'C:\\path\'\nc = [1, 2.5, -3e2, 0x1F, 0o17,'
        ' 0b101, 1_000,\n  true, # comment\n  "x"]\nd = { e = 1, f.g = "h" }\n'
        "[t.u]\nv = -0.0\n[[arr]]\nw = 1\n[[arr]]\nw = 2\n[arr.sub]\nx = inf\n"
    )
    assert toml.parse_subset(tricky) == tomllib.loads(tricky)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ('a = "unterminated\n', "line 1"),
        ("a = 1\na = 2\n", "line 2"),
        ("a = 1979-05-27\n", "line 1"),
        ('x = """\nmulti\n"""\n', "line 1"),
        ("[t]\n[t]\n", "line 2"),
    ],
)
def test_the_subset_parser_refuses_what_it_does_not_read(text: str, line: str) -> None:
    with pytest.raises(toml.TOMLSubsetError, match=line):
        toml.parse_subset(text)


def test_the_example_configuration_is_valid(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("not checked until connecting\n")
    text = EXAMPLE.read_text().replace("/etc/fieldline/ca.crt", str(ca))
    cfg = parse(text, {"FIELDLINE_MQTT_PASSWORD": "s3cret"})
    assert (cfg.site, cfg.device) == ("home", "pi-kitchen")
    assert cfg.mqtt.broker.tls
    assert cfg.mqtt.broker.password == "s3cret"
    assert "s3cret" not in repr(cfg)
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.tls.ca_file == str(ca)
    assert [s.driver for s in cfg.sensors] == [
        "cpu_temperature", "system", "ds18b20", "bme280", "command", "file"
    ]  # fmt: skip
    assert cfg.sensors[3].options["address"] == 0x76
    assert cfg.spool.path == "/var/lib/fieldline/spool.db"
    for s in cfg.sensors:
        assert build_driver(s).name == s.name


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    conf = tmp_path / "edge.toml"
    conf.write_text(
        MINIMAL.replace('url = "mqtt://127.0.0.1:1883"', 'url = "mqtt://h"\nusername = "u"\n'
                        'password_file = "pw"\nprotocol = "5"')
        + '[spool]\npath = "state/spool.db"\n'
    )  # fmt: skip
    cfg = load_config(str(conf), env={})
    assert cfg.mqtt.broker.password == "from-file"
    assert cfg.mqtt.protocol == "5"
    assert cfg.spool.path == str(tmp_path / "state" / "spool.db")
    assert (cfg.agent.batch_max, cfg.agent.flush_interval_s, cfg.spool.sync) == (100, 5.0, "full")
    assert cfg.sensors[0].interval_s == 10.0
    # The environment wins over the file.
    cfg = load_config(str(conf), env={"FIELDLINE_MQTT_PASSWORD": "from-env"})
    assert cfg.mqtt.broker.password == "from-env"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("[mqtt]", "[mqtt]\nkeepalive_s = 'abc'"), "mqtt.keepalive_s: must be an integer 5-65535, got 'abc'"),  # noqa: E501
        (("[mqtt]", "[mqtt]\nprotocol = \"4\""), 'mqtt.protocol: must be "3.1.1" or "5", got \'4\''),  # noqa: E501
        (("mqtt://127.0.0.1:1883", "http://x"), "mqtt.url: broker URL 'http://x' must start with mqtt://"),
        (("mqtt://127.0.0.1:1883", "mqtt://h:99999"), "mqtt.url: broker URL 'mqtt://h:99999' has an invalid port"),  # noqa: E501
        (("[mqtt]", "[mqtt]\nhots = 1"), "mqtt.hots: unknown key"),
        (("[mqtt]", "[mqtt]\nca_file = \"/etc/hosts\""), "mqtt.ca_file: TLS files need an mqtts:// url"),  # noqa: E501
        (('id = "pi-1"', 'id = "pi/1"'), "device.id: 'pi/1' is not a valid id"),
        (('site = "home"\n', ""), "device.site: is required"),
        (('driver = "cpu_temperature"', 'driver = "gps"'), "sensors[0].driver: must be one of"),
        (('driver = "cpu_temperature"', 'driver = "cpu_temperature"\ninterval_s = 0'),
         "sensors[0].interval_s: must be a number > 0, got 0"),
        (('driver = "cpu_temperature"', 'driver = "bme280"\naddress = 0x40'),
         "sensors[0].address: must be 0x76 or 0x77, got 64"),
        (('driver = "cpu_temperature"', 'driver = "command"'),
         "sensors[0].command: must be a command line or a list of arguments"),
        (('driver = "cpu_temperature"', 'driver = "file"\npath = "x"\nregex = "("'),
         "sensors[0].regex: not a regular expression"),
        (('driver = "cpu_temperature"', 'driver = "ds18b20"\ndevice_id = "10-1"'),
         "sensors[0].device_id: must look like 28-0123456789ab"),
        (("[[sensors]]", "[agent]\nlog_level = 'LOUD'\n[[sensors]]"),
         "agent.log_level: must be one of DEBUG, INFO, WARNING, ERROR, got 'LOUD'"),
        (("[[sensors]]", "[spool]\nmax_mb = -1\n[[sensors]]"), "spool.max_mb: must be a number > 0, got -1"),  # noqa: E501
        (('name = "cpu"', 'name = "cpu"\nzone = 1.5'), "sensors[0].zone: must be an integer"),
    ],
)  # fmt: skip
def test_errors_name_the_key_and_the_problem(change: tuple[str, str], message: str) -> None:
    text = MINIMAL.replace(*change)
    assert text != MINIMAL
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert str(exc.value).startswith(message), str(exc.value)


def test_duplicate_sensor_names_and_missing_sensors() -> None:
    with pytest.raises(ConfigError, match=r"sensors\[1\].name: 'cpu' is used by another sensor"):
        parse(MINIMAL + '[[sensors]]\nname = "cpu"\ndriver = "system"\n')
    with pytest.raises(ConfigError, match="sensors: at least one"):
        parse(MINIMAL.split("[[sensors]]")[0])


def test_a_password_needs_a_username_and_a_readable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mqtt\.username: a password is configured"):
        parse(MINIMAL, {"FIELDLINE_MQTT_PASSWORD": "pw"})
    text = MINIMAL.replace("[mqtt]", '[mqtt]\nusername = "u"\npassword_file = "missing"')
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: cannot read"):
        parse(text, base=str(tmp_path))


def test_a_file_that_is_not_toml_says_where(tmp_path: Path) -> None:
    conf = tmp_path / "edge.toml"
    conf.write_text("[device\nid = 1\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 1"):
        load_config(str(conf), env={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"), env={})


def test_environment_overrides_keys_that_are_also_in_the_file(tmp_path: Path) -> None:
    ca, other = tmp_path / "ca.crt", tmp_path / "other-ca.crt"
    ca.write_text("file's\n")
    other.write_text("env's\n")
    secret = tmp_path / "pw"
    secret.write_text("from-env-file\n")
    text = MINIMAL.replace("mqtt://127.0.0.1:1883", "mqtts://127.0.0.1:8883").replace(
        "[mqtt]", f'[mqtt]\nusername = "u"\npassword_file = "missing"\nca_file = "{ca}"'
    )
    cfg = parse(
        text,
        {"FIELDLINE_MQTT_PASSWORD_FILE": str(secret), "FIELDLINE_MQTT_CA_FILE": str(other)},
    )
    assert cfg.mqtt.broker.password == "from-env-file"
    assert cfg.mqtt.tls is not None
    assert cfg.mqtt.tls.ca_file == str(other)


def test_version_1_is_the_default_and_2_selects_the_columnar_schema() -> None:
    assert parse(MINIMAL).agent.telemetry_schema == SCHEMA_TELEMETRY_V1
    assert (
        parse(MINIMAL + "[agent]\ntelemetry_schema = 1\n").agent.telemetry_schema
        == SCHEMA_TELEMETRY_V1
    )
    assert (
        parse(MINIMAL + "[agent]\ntelemetry_schema = 2\n").agent.telemetry_schema
        == SCHEMA_TELEMETRY_V2
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("3", "3"),
        ("0", "0"),
        ('"2"', "'2'"),
        ('"fieldline.telemetry/2"', "'fieldline.telemetry/2'"),
        ("2.0", "2.0"),
        ("true", "True"),
        ("[2]", "[2]"),
    ],
)
def test_a_bad_schema_names_the_key_and_the_choices(value: str, shown: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(MINIMAL + f"[agent]\ntelemetry_schema = {value}\n")
    assert str(exc.value) == (
        "agent.telemetry_schema: must be 1 (fieldline.telemetry/1) or 2 (fieldline.telemetry/2),"
        f" got {shown}"
    )
