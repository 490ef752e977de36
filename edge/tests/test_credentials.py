"""Per-device credentials: Mosquitto's own tools and a real broker accept them."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge.credentials import (
    OperatorDir,
    acl_block,
    check_mosquitto_hash,
    mosquitto_hash,
    password_line,
)
from fieldline_edge.edge_cli import edge_main
from fieldline_localstack.mosquitto import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

WAIT_S = 30.0
OBSERVER = "observer"


class AuthMosquitto(Mosquitto):
    """Mosquitto with exactly the given password file and ACL, no anonymous clients."""

    def __init__(self, state_dir: Path, password_file: Path, acl_file: Path) -> None:
        super().__init__(state_dir)
        self.password_file = password_file
        self.acl_file = acl_file

    def _listener_lines(self) -> list[str]:
        return [
            "allow_anonymous false",
            f"password_file {self.password_file}",
            f"acl_file {self.acl_file}",
            f"listener {self.port} {self.host}",
        ]


def test_our_hash_and_mosquitto_passwd_agree(tmp_path: Path) -> None:
    passwd = tmp_path / "passwd"
    passwd.write_text("dev:correct horse\n")
    subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, timeout=30)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$")
    assert check_mosquitto_hash("correct horse", theirs)
    assert not check_mosquitto_hash("correct horsf", theirs)
    ours = mosquitto_hash("correct horse")
    assert ours.split("$")[1:3] == theirs.split("$")[1:3]  # same scheme and iterations
    assert check_mosquitto_hash("correct horse", ours)
    assert mosquitto_hash("x") != mosquitto_hash("x")  # a fresh salt every time


def test_operator_dir_reuses_a_password_until_rotated(tmp_path: Path) -> None:
    op = OperatorDir(tmp_path / "op")
    first = op.device("farm", "pi-1")
    assert first.created
    again = op.device("farm", "pi-1")
    assert not again.created
    assert again.password == first.password
    rotated = op.device("farm", "pi-1", rotate=True)
    assert rotated.password != first.password
    assert rotated.password not in repr(rotated)
    op.device("farm", "pi-2")
    for secret in (rotated.password_file, op.broker_password_file):
        assert secret.stat().st_mode & 0o777 == 0o600
    lines = op.broker_password_file.read_text().splitlines()
    assert [line.split(":")[0] for line in lines] == ["farm/pi-1", "farm/pi-2"]
    assert check_mosquitto_hash(rotated.password, lines[0].split(":", 1)[1])
    assert "topic write fieldline/farm/pi-2/#" in op.broker_acl_file.read_text()
    with pytest.raises(ValueError, match="not a valid device id"):
        op.device("farm", "../etc")


def test_devices_provisioned_at_once_all_reach_the_broker_files(tmp_path: Path) -> None:
    """A fleet deploy provisions from several threads; no device may be lost or fail."""
    op = OperatorDir(tmp_path / "op")  # not made yet: the threads race to make it
    devices = [f"pi-{i}" for i in range(12)]
    start = threading.Barrier(len(devices))
    creds: dict[str, str] = {}
    errors: list[BaseException] = []

    def provision(device: str) -> None:
        start.wait()
        try:
            creds[device] = op.device("farm", device).password
        except BaseException as exc:  # reported below with the device's name
            errors.append(exc)

    threads = [threading.Thread(target=provision, args=(d,)) for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    entries = dict(line.split(":", 1) for line in op.broker_password_file.read_text().splitlines())
    assert sorted(entries) == sorted(f"farm/{d}" for d in devices)
    for device, password in creds.items():
        assert check_mosquitto_hash(password, entries[f"farm/{device}"])
    acl = op.broker_acl_file.read_text()
    assert all(f"topic write fieldline/farm/{d}/#" in acl for d in devices)
    assert (op.path / ".gitignore").read_text() == "*\n"


def _connect(port: int, user: str, password: str) -> tuple[mqtt.Client, str]:
    """A connected client and the CONNACK's reason ('Success' or why not)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.username_pw_set(user, password)
    answered = threading.Event()
    reason: list[str] = []

    def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        reason.append(str(rc))
        answered.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    assert answered.wait(WAIT_S), "no CONNACK"
    return client, reason[0]


def test_a_real_mosquitto_accepts_the_device_and_confines_it(tmp_path: Path) -> None:
    out = tmp_path / "operator"
    for device in ("pi-1", "pi-2"):
        assert (
            edge_main(["credentials", "--device-id", device, "--site", "farm", "--out", str(out)])
            == 0
        )
    op = OperatorDir(out)
    pi1 = op.device("farm", "pi-1")
    # The operator's own monitoring user, added next to the generated entries.
    observer_password = "observer-password"
    passwd = tmp_path / "passwd"
    passwd.write_text(
        op.broker_password_file.read_text() + password_line(OBSERVER, observer_password)
    )
    acl = tmp_path / "acl"
    acl.write_text(op.broker_acl_file.read_text() + f"\nuser {OBSERVER}\ntopic read fieldline/#\n")

    with AuthMosquitto(tmp_path / "broker", passwd, acl) as broker:
        _, refused = _connect(broker.port, "farm/pi-1", pi1.password + "x")
        assert refused != "Success"
        observer, ok = _connect(broker.port, OBSERVER, observer_password)
        assert ok == "Success"
        received: list[str] = []
        got = threading.Condition()

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            with got:
                received.append(msg.topic)
                got.notify_all()

        observer.on_message = on_message
        subscribed = threading.Event()
        observer.on_subscribe = lambda *a: subscribed.set()
        observer.subscribe("fieldline/#", qos=1)
        assert subscribed.wait(WAIT_S)

        device, ok = _connect(broker.port, "farm/pi-1", pi1.password)
        assert ok == "Success"
        # Into another device's topic first, then its own: the broker handles one
        # client's messages in order, so once the second arrives the first would have.
        device.publish("fieldline/farm/pi-2/telemetry", b"spoofed", qos=1).wait_for_publish(WAIT_S)
        device.publish("fieldline/farm/pi-1/telemetry", b"mine", qos=1).wait_for_publish(WAIT_S)
        with got:
            assert got.wait_for(lambda: "fieldline/farm/pi-1/telemetry" in received, WAIT_S)
        assert "fieldline/farm/pi-2/telemetry" not in received
        for c in (device, observer):
            c.loop_stop()
            c.disconnect()


def test_acl_block_names_only_the_devices_own_topics() -> None:
    assert acl_block("farm", "pi-1") == "user farm/pi-1\ntopic write fieldline/farm/pi-1/#\n"


def test_credentials_command_never_prints_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "op"
    assert edge_main(["credentials", "--device-id", "d1", "--site", "s", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    password = (out / "devices/s/d1/password").read_text().strip()
    assert password not in printed.out + printed.err
    assert "s/d1" in printed.out
    assert str(out / "mosquitto/passwd") in printed.out
