"""``fieldline edge deploy`` and ``rollback`` over a real OpenSSH server into a temporary root."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fieldline_edge import bundle
from fieldline_edge.credentials import password_line
from fieldline_edge.edge_cli import edge_main
from fieldline_localstack.mosquitto import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion

SSHD = "/usr/sbin/sshd"
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SshServer:
    port: int
    identity: Path
    known_hosts: Path

    def args(self) -> list[str]:
        return [
            "--port", str(self.port), "--identity", str(self.identity),
            "--known-hosts", str(self.known_hosts),
            "--ssh-option", "StrictHostKeyChecking=yes",
        ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30
    )


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    """An OpenSSH server on 127.0.0.1 that lets this user in with a generated key."""
    assert Path(SSHD).exists(), "sshd missing: apt-get install openssh-server"
    d = tmp_path / "sshd"
    d.mkdir()
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nStrictModes no\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        f"PermitRootLogin prohibit-password\nPidFile {d / 'sshd.pid'}\nLogLevel VERBOSE\n"
    )
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = (d / "sshd.log").open("w")
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "sshd did not start listening"
                time.sleep(0.1)
        yield SshServer(port, d / "client_key", d / "known_hosts")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture
def unit() -> Path:
    """The unit the repository ships (deploy/systemd), which flash and deploy install."""
    return bundle.find_unit()


def deploy(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = edge_main([*args, "--json"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    report: dict[str, object] = json.loads(out.out)
    return code, report


def results(report: dict[str, object]) -> list[dict[str, object]]:
    found = report["results"]
    assert isinstance(found, list)
    return found


def test_deploy_upgrade_and_rollback_over_ssh(
    tmp_path: Path, sshd: SshServer, unit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "device"
    root.mkdir()
    op = tmp_path / "operator"
    device = [
        "--host", f"{os.environ.get('USER', 'root')}@127.0.0.1", *sshd.args(),
        "--root", str(root), "--device-id", "pi-3", "--site", "farm",
        "--broker", "mqtt://broker.lan:1883", "--operator-dir", str(op), "--unit", str(unit),
    ]  # fmt: skip
    code, report = deploy(["deploy", *device], capsys)
    assert code == 0, report
    (first,) = results(report)
    assert first["ok"] is True
    assert first["device"] == "pi-3"
    assert str(first["restart"]).startswith("skipped")  # no systemd under a temporary root
    v1 = str(first["release"])
    assert os.readlink(root / "opt/fieldline/current") == f"releases/{v1}"
    password = (op / "devices/farm/pi-3/password").read_text()
    assert (root / "etc/fieldline/mqtt.password").read_text() == password
    assert (root / "etc/fieldline/mqtt.password").stat().st_mode & 0o777 == 0o600
    assert 'username = "farm/pi-3"' in (root / "etc/fieldline/edge.toml").read_text()
    assert (root / "etc/systemd/system/fieldline-edge.service").read_text() == unit.read_text()
    assert "farm/pi-3:$7$" in (op / "mosquitto/passwd").read_text()

    # Version 2: current moves, the previous release stays.
    wheel = bundle.wheel_from_installed("fieldline-edge", tmp_path / "wheels", version="2.0.0")
    code, report = deploy(["deploy", *device, "--wheel", str(wheel)], capsys)
    assert code == 0, report
    (second,) = results(report)
    v2 = str(second["release"])
    assert v2.startswith("2.0.0-")
    assert second["previous"] == v1
    assert os.readlink(root / "opt/fieldline/current") == f"releases/{v2}"
    assert os.readlink(root / "opt/fieldline/previous") == f"releases/{v1}"
    assert (root / "opt/fieldline/releases" / v1 / "bin/fieldline").is_file()
    # The upgrade kept the device's password (the broker still has it).
    assert (root / "etc/fieldline/mqtt.password").read_text() == password

    ssh_only = ["--host", "127.0.0.1", *sshd.args(), "--root", str(root)]
    code, report = deploy(["rollback", *ssh_only], capsys)
    assert code == 0, report
    (back,) = results(report)
    assert (back["release"], back["previous"]) == (v1, v2)
    assert os.readlink(root / "opt/fieldline/current") == f"releases/{v1}"

    # Plain output: one line per device.
    assert edge_main(["rollback", *ssh_only]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("ok")
    assert f"rollback {v2} (previous {v1})" in line


def test_a_fleet_with_an_unreachable_device_reports_each_and_fails(
    tmp_path: Path, sshd: SshServer, unit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "device"
    root.mkdir()
    closed = _free_port()  # nothing listens there
    inventory = tmp_path / "fleet.toml"
    inventory.write_text(
        f"""
[defaults]
site = "farm"
broker = "mqtts://broker.lan:8883"
identity = "{sshd.identity}"
known_hosts = "{sshd.known_hosts}"
ssh_options = ["StrictHostKeyChecking=yes"]
root = "{root}"

[[devices]]
host = "127.0.0.1"
port = {sshd.port}
device_id = "pi-1"

[[devices]]
host = "127.0.0.1"
port = {closed}
device_id = "pi-2"
"""
    )
    args = ["deploy", "--inventory", str(inventory), "--operator-dir", str(tmp_path / "op")]
    code, report = deploy([*args, "--unit", str(unit)], capsys)
    assert code == 1
    assert (report["devices"], report["failed"], report["ok"]) == (2, 1, False), report
    ok, failed = results(report)
    assert (ok["device"], ok["ok"]) == ("pi-1", True)
    assert (failed["device"], failed["ok"]) == ("pi-2", False)
    assert "ssh:" in str(failed["error"])
    assert "refused" in str(failed["error"]).lower()
    assert (root / "opt/fieldline/current").is_symlink()
    # Both devices got credentials: the broker side is ready for when pi-2 is reachable.
    users = [
        line.split(":")[0] for line in (tmp_path / "op/mosquitto/passwd").read_text().splitlines()
    ]
    assert users == ["farm/pi-1", "farm/pi-2"]

    # Plain output: one line each and a summary.
    assert edge_main([*args, "--unit", str(unit)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ok     127.0.0.1 (pi-1)")
    assert lines[1].startswith("FAILED 127.0.0.1 (pi-2)")
    assert lines[2] == "1 of 2 devices ok"


def test_a_host_key_mismatch_is_a_failure_not_a_prompt(
    tmp_path: Path, sshd: SshServer, capsys: pytest.CaptureFixture[str]
) -> None:
    _keygen(tmp_path / "other_host_key")  # not the server's key
    other = (tmp_path / "other_host_key.pub").read_text().split()
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    args = [
        "rollback", "--host", "127.0.0.1", "--port", str(sshd.port), "--identity",
        str(sshd.identity), "--known-hosts", str(wrong), "--root", str(tmp_path),
    ]  # fmt: skip
    code, report = deploy(args, capsys)
    assert code == 1
    (result,) = results(report)
    assert result["ok"] is False
    assert str(result["error"]).startswith("ssh:")


class AuthMosquitto(Mosquitto):
    """Mosquitto with exactly the operator's password file and ACL, no anonymous clients."""

    def __init__(self, state_dir: Path, password_file: Path, acl_file: Path) -> None:
        super().__init__(state_dir)
        self.files = (password_file, acl_file)

    def _listener_lines(self) -> list[str]:
        return [
            "allow_anonymous false",
            f"password_file {self.files[0]}",
            f"acl_file {self.files[1]}",
            f"listener {self.port} {self.host}",
        ]


def test_the_deployed_agent_logs_in_with_its_generated_credentials(
    tmp_path: Path, sshd: SshServer, unit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Deploy, then start the installed agent with the installed config against a broker
    that knows only the generated password file and ACL (plus an observer)."""
    root = tmp_path / "device"
    root.mkdir()
    op = tmp_path / "operator"
    broker = AuthMosquitto(tmp_path / "broker", tmp_path / "passwd", tmp_path / "acl")
    args = [
        "deploy", "--host", "127.0.0.1", *sshd.args(), "--root", str(root),
        "--device-id", "pi-9", "--site", "farm", "--broker", f"mqtt://127.0.0.1:{broker.port}",
        "--operator-dir", str(op),
    ]  # fmt: skip
    code, report = deploy(args, capsys)
    assert code == 0, report
    observer = "observer-" + secrets.token_hex(4)
    observer_password = secrets.token_urlsafe(16)
    (tmp_path / "passwd").write_text(
        (op / "mosquitto/passwd").read_text() + password_line(observer, observer_password)
    )
    (tmp_path / "acl").write_text(
        (op / "mosquitto/acl").read_text() + f"\nuser {observer}\ntopic read fieldline/#\n"
    )
    # The config as installed, with its absolute paths moved under the temporary root
    # (the device's / is not this machine's) and no wait for an NTP-synchronised clock.
    installed = (root / "etc/fieldline/edge.toml").read_text()
    relocated = installed.replace('"/etc/fieldline/', f'"{root}/etc/fieldline/')
    relocated = relocated.replace('"/var/lib/fieldline/', f'"{root}/var/lib/fieldline/')
    config = root / "etc/fieldline/relocated.toml"
    config.write_text(relocated + '\n[agent]\nclock_sync_file = ""\n')

    with broker:
        received: list[str] = []
        got = threading.Condition()

        def on_message(c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
            with got:
                received.append(msg.topic)
                got.notify_all()

        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.username_pw_set(observer, observer_password)
        client.on_message = on_message
        client.on_connect = lambda c, *a: c.subscribe("fieldline/#", qos=1)
        client.connect("127.0.0.1", broker.port, 30)
        client.loop_start()
        agent = subprocess.Popen(
            ["/usr/bin/python3", str(root / "usr/local/bin/fieldline"), "edge", "run",
             "--config", str(config)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            with got:
                telemetry = "fieldline/farm/pi-9/telemetry"
                arrived = got.wait_for(lambda: telemetry in received, 120)
        finally:
            agent.terminate()
            output, _ = agent.communicate(timeout=60)
            client.loop_stop()
            client.disconnect()
        assert arrived, output
        assert "fieldline/farm/pi-9/status" in received
        password = (op / "devices/farm/pi-9/password").read_text().strip()
        assert password not in output
