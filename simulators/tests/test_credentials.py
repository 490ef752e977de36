"""Reading ``--credentials`` files: structure errors say where, never show a password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fieldline_edge.mqtt import parse_broker_url
from fieldline_sim.credentials import FleetCredentials
from fieldline_sim.fleet import FleetConfig

BROKER = parse_broker_url("mqtt://url-user:url-pw@127.0.0.1:1")


def write(tmp_path: Path, body: object) -> Path:
    path = tmp_path / "creds.json"
    path.write_text(json.dumps(body))
    return path


def test_fleet_and_device_users_replace_the_urls(tmp_path: Path) -> None:
    creds = FleetCredentials.load(
        write(
            tmp_path,
            {
                "username": "sim",
                "password": "s3cret-sim",
                "devices": {"dev-0001": {"username": "demo/dev-0001", "password": "s3cret-d1"}},
            },
        )
    )
    config = FleetConfig(BROKER, devices=1, credentials=creds).validate()
    assert config.broker_for("dev-0001")[3:] == ("demo/dev-0001", "s3cret-d1")
    assert config.broker_for(None)[3:] == ("sim", "s3cret-sim")
    assert "s3cret" not in repr(config) + repr(creds)


def test_per_device_users_need_an_entry_and_a_connection_each(tmp_path: Path) -> None:
    body = {"devices": {"dev-0001": {"username": "demo/dev-0001", "password": "p"}}}
    creds = FleetCredentials.load(write(tmp_path, body))
    with pytest.raises(ValueError, match="no credentials for device dev-0002"):
        FleetConfig(BROKER, devices=2, credentials=creds).validate()
    with pytest.raises(ValueError, match="one connection per device"):
        FleetConfig(BROKER, devices=2, connections=1, credentials=creds).validate()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"username": "u", "password": "hunter2"', "not valid JSON"),
        ("[]", "must be a JSON object"),
        ("{}", "neither"),
        ('{"username": "u"}', "'password' must be a string"),
        ('{"devices": {"d": "hunter2"}}', "device d: must be an object"),
    ],
)
def test_malformed_files_are_refused_without_echoing_them(
    tmp_path: Path, raw: str, message: str
) -> None:
    path = tmp_path / "creds.json"
    path.write_text(raw)
    with pytest.raises(ValueError, match=message) as failed:
        FleetCredentials.load(path)
    assert "hunter2" not in str(failed.value)
