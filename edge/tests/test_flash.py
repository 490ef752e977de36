"""``fieldline edge flash`` on a real FAT image: mtools reads back, cloud-init validates."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import subprocess
from pathlib import Path

import pytest
from fieldline_edge import bundle, cloudinit, config, toml
from fieldline_edge.credentials import OperatorDir
from fieldline_edge.edge_cli import edge_main
from fieldline_edge.flash import FlashError, boot_partition, read_partitions

START_LBA = 8192  # 4 MiB, where Raspberry Pi OS images start their boot partition
IMAGE_MB = 80
PSK = "correct-horse-battery"


def make_image(path: Path, *, files: dict[str, str], part_type: int = 0x0C) -> Path:
    """An MBR disk image with one FAT32 partition holding ``files``."""
    sectors = IMAGE_MB * 2048 - START_LBA
    mbr = bytearray(512)
    mbr[446:462] = struct.pack("<B3sB3sII", 0, b"\0" * 3, part_type, b"\0" * 3, START_LBA, sectors)
    mbr[510:512] = b"\x55\xaa"
    with path.open("wb") as f:
        f.truncate(IMAGE_MB * 1024 * 1024)
        f.write(mbr)
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-s", "1", "-n", "BOOTFS", "--offset", str(START_LBA),
         str(path), str(sectors // 2)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for name, text in files.items():
        src = path.parent / f"src-{name}"
        src.write_text(text)
        mtools("mcopy", path, str(src), f"::/{name}")
    return path


def mtools(tool: str, image: Path, *args: str) -> str:
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    res = subprocess.run(
        [tool, "-i", f"{image}@@{START_LBA * 512}", *args],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    )  # fmt: skip
    return res.stdout


def read_back(image: Path, dest: Path) -> Path:
    """Copy the whole boot partition out of the image, as a Pi would see it."""
    dest.mkdir()
    mtools("mcopy", image, "-s", "-n", "::/*", str(dest))
    return dest


RPI_BOOT = {
    "cmdline.txt": "console=serial0,115200 root=PARTUUID=x-02 rootwait\n",
    "config.txt": "[all]\n",
    "user-data": "#cloud-config\n",  # what a cloud-init image already has
    "meta-data": "instance-id: rpios-image\n",
}


@pytest.fixture
def unit() -> Path:
    """The unit the repository ships (deploy/systemd), which flash and deploy install."""
    return bundle.find_unit()


def flash_args(image: Path, op: Path, unit: Path, *extra: str) -> list[str]:
    return [
        "flash", "--image", str(image), "--device-id", "pi-7", "--site", "farm",
        "--broker", "mqtts://broker.example:8883", "--operator-dir", str(op),
        "--unit", str(unit), *extra,
    ]  # fmt: skip


def test_flash_writes_a_valid_first_boot_and_a_complete_bundle(
    tmp_path: Path, unit: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    image = make_image(tmp_path / "rpi.img", files=RPI_BOOT)
    psk_file = tmp_path / "psk"
    psk_file.write_text(PSK + "\n")
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx operator@laptop\n")
    op = tmp_path / "operator"
    extra = [
        "--wifi-ssid", "Farm Wi-Fi", "--wifi-psk-file", str(psk_file), "--wifi-country", "GB",
        "--ca-file", str(ca), "--ssh-key", str(key), "--hostname", "barn-7",
    ]  # fmt: skip
    code = edge_main(flash_args(image, op, unit, *extra))
    printed = capsys.readouterr()
    assert code == 0, printed.err
    # No secret reaches the terminal or a log.
    password = (op / "devices/farm/pi-7/password").read_text().strip()
    for secret in (PSK, password):
        assert secret not in printed.out + printed.err + caplog.text
    assert "farm/pi-7" in printed.out

    boot = read_back(image, tmp_path / "boot")
    assert (boot / "cmdline.txt").read_text() == RPI_BOOT["cmdline.txt"]  # left alone
    user_data = boot / "user-data"
    assert PSK not in user_data.read_text()
    assert password not in user_data.read_text()
    schema = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(user_data)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert schema.returncode == 0, schema.stdout + schema.stderr
    assert "Valid cloud-config" in schema.stdout
    assert 'hostname: "barn-7"' in user_data.read_text()
    assert "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDx operator@laptop" in user_data.read_text()
    assert "install.py" in user_data.read_text()
    meta = (boot / "meta-data").read_text()
    assert "rpios-image" not in meta  # a new instance, so runcmd runs at first boot
    assert 'local-hostname: "barn-7"' in meta

    # cloud-init itself parses the network config and renders it for netplan.
    rendered = tmp_path / "rendered"
    subprocess.run(
        ["cloud-init", "devel", "net-convert", "-p", str(boot / "network-config"), "-k", "yaml",
         "-d", str(rendered), "-D", "debian", "-O", "netplan"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    netplan = next(rendered.rglob("*.yaml")).read_text()
    assert "Farm Wi-Fi" in netplan
    assert PSK in netplan  # the PSK reached the network config, and only it
    assert "regulatory-domain: GB" in netplan

    bundle = boot / cloudinit.BUNDLE_DIR
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, digest in manifest["wheels"].items():
        assert hashlib.sha256((bundle / "wheels" / name).read_bytes()).hexdigest() == digest
    assert {n.split("-")[0] for n in manifest["wheels"]} == {"fieldline_edge", "paho_mqtt"}
    assert (bundle / "etc/mqtt.password").read_text().strip() == password
    assert (bundle / "etc/ca.crt").read_bytes() == ca.read_bytes()
    assert (bundle / "fieldline-edge.service").read_text() == unit.read_text()
    # The agent's own loader accepts the config as written.
    cfg_text = (bundle / "etc/edge.toml").read_text()
    data = toml.loads(cfg_text)
    data["mqtt"]["ca_file"] = str(bundle / "etc/ca.crt")  # where it is on this machine
    cfg = config.parse_config(data, {"FIELDLINE_MQTT_PASSWORD": "x"})
    assert (cfg.site, cfg.device) == ("farm", "pi-7")
    assert cfg.mqtt.broker.username == "farm/pi-7"
    assert [s.driver for s in cfg.sensors] == ["cpu_temperature", "system"]
    assert 'password_file = "/etc/fieldline/mqtt.password"' in cfg_text
    assert 'ca_file = "/etc/fieldline/ca.crt"' in cfg_text


def test_first_boot_install_from_the_image(tmp_path: Path, unit: Path) -> None:
    """What cloud-init runs at first boot, pointed at a copy of the boot partition."""
    image = make_image(tmp_path / "rpi.img", files=RPI_BOOT)
    assert edge_main(flash_args(image, tmp_path / "op", unit, "--yes")) == 0
    boot = read_back(image, tmp_path / "boot")
    root = tmp_path / "root"
    res = subprocess.run(
        ["/usr/bin/python3", "-I", str(boot / "fieldline/install.py"), "install", "--bundle",
         str(boot / "fieldline"), "--root", str(root), "--no-block", "--consume"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["ok"] is True
    assert not (boot / "fieldline").exists()  # the password does not stay on the FAT partition
    password = root / "etc/fieldline/mqtt.password"
    assert (
        password.read_text().strip()
        == (tmp_path / "op/devices/farm/pi-7/password").read_text().strip()
    )
    assert password.stat().st_mode & 0o777 == 0o600
    assert (root / "opt/fieldline/current/bin/fieldline").is_file()


def test_reflashing_keeps_the_devices_password(tmp_path: Path, unit: Path) -> None:
    image = make_image(tmp_path / "rpi.img", files=RPI_BOOT)
    op = tmp_path / "op"
    assert edge_main(flash_args(image, op, unit)) == 0
    first = OperatorDir(op).device("farm", "pi-7").password
    assert edge_main(flash_args(image, op, unit)) == 0
    boot = read_back(image, tmp_path / "boot")
    assert (boot / "fieldline/etc/mqtt.password").read_text().strip() == first
    assert edge_main(flash_args(image, op, unit, "--rotate-password")) == 0
    assert OperatorDir(op).device("farm", "pi-7").password != first


def test_the_validator_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    bad = tmp_path / "user-data"
    bad.write_text(cloudinit.user_data(hostname="pi").replace("runcmd:", "runcmd: 5\nx_runcmd:"))
    res = subprocess.run(
        ["cloud-init", "schema", "--config-file", str(bad)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert res.returncode != 0


def test_partition_table_parsing(tmp_path: Path) -> None:
    image = make_image(tmp_path / "rpi.img", files={"config.txt": ""})
    part = boot_partition(image)
    assert (part.number, part.kind, part.start_lba, part.offset) == (
        1,
        0x0C,
        START_LBA,
        START_LBA * 512,
    )
    with pytest.raises(FlashError, match="no MBR"):
        read_partitions(b"\0" * 512)
    linux_only = make_image(tmp_path / "linux.img", files={}, part_type=0x83)
    with pytest.raises(FlashError, match="no FAT partition"):
        boot_partition(linux_only)


@pytest.mark.parametrize(
    ("files", "part_type", "message"),
    [
        ({"readme.txt": "x"}, 0x0C, "not a Raspberry Pi boot partition"),
        ({"config.txt": ""}, 0xEE, "GPT"),
    ],
)
def test_flash_refuses_what_is_not_a_pi_image(
    tmp_path: Path, unit: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str],
    part_type: int, message: str,
) -> None:  # fmt: skip
    image = make_image(tmp_path / "x.img", files=files, part_type=part_type)
    before = image.read_bytes()
    assert edge_main(flash_args(image, tmp_path / "op", unit)) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert image.read_bytes() == before


def test_flash_refuses_a_character_device(
    tmp_path: Path, unit: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert edge_main(flash_args(Path("/dev/null"), tmp_path / "op", unit)) == 1
    assert "neither an image file nor a block device" in capsys.readouterr().err
