"""deploy/: the compose stack, its secrets and broker config, Kubernetes manifests, systemd.

Docker cannot run here: the compose file is checked by ``docker-compose config``
(Debian's docker-compose), its Mosquitto config by a real Mosquitto, the
manifests against the Kubernetes schemas (kubernetes-validate, offline) and the
unit by ``systemd-analyze``.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import paho.mqtt.client as mqtt
import pytest
import tomllib
import yaml
from fieldline_localstack._process import free_port
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.31"


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert path, f"{name} is missing: run deploy/local/bootstrap.sh (make setup)"
    return path


@pytest.fixture
def deploy_copy(tmp_path: Path) -> Path:
    """deploy/ without secrets, as a fresh clone has it, with secrets generated."""
    d = tmp_path / "deploy"
    d.mkdir()
    shutil.copy(DEPLOY / "compose.yaml", d)
    shutil.copytree(DEPLOY / "compose", d / "compose", ignore=shutil.ignore_patterns("secrets"))
    shutil.copytree(DEPLOY / "grafana", d / "grafana")
    return d


def _init_secrets(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(d / "compose" / "init-secrets.sh"), *args],
        env={**os.environ, "FIELDLINE_DEPLOY_DIR": str(d)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _env(d: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (d / ".env").read_text().splitlines())
    return {k: v for k, v in (p for p in pairs if len(p) == 2) if not k.startswith("#")}


def _compose_config(d: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_tool("docker-compose"), "--project-directory", str(d), "-f", str(d / "compose.yaml"),
         *extra, "config"],
        cwd=d, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


# --- secrets -----------------------------------------------------------------


def test_init_secrets_makes_private_random_secrets_and_a_valid_certificate(
    deploy_copy: Path,
) -> None:
    r = _init_secrets(deploy_copy, "--hostname", "broker.example.org")
    assert r.returncode == 0, r.stderr
    env = _env(deploy_copy)
    assert "CHANGE-ME" not in env.values()
    secrets_ = [env[k] for k in ("INFLUXDB_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
                                 "PIPELINE_MQTT_PASSWORD", "SIM_MQTT_PASSWORD")]  # fmt: skip
    assert len(set(secrets_)) == len(secrets_)
    assert all(len(s) >= 32 for s in secrets_)
    s = deploy_copy / "compose" / "secrets"
    assert (deploy_copy / ".env").stat().st_mode & 0o777 == 0o600
    for name in ("ca.key", "mosquitto.key", "mosquitto.passwd"):
        assert (s / name).stat().st_mode & 0o777 == 0o600, name
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", str(s / "ca.crt"), str(s / "mosquitto.crt")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    text = subprocess.run(
        ["openssl", "x509", "-in", str(s / "mosquitto.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    for name in ("DNS:mosquitto", "DNS:localhost", "IP Address:127.0.0.1", "broker.example.org"):
        assert name in text
    # Nothing a user has would be lost: a second run refuses, --force renews.
    again = _init_secrets(deploy_copy)
    assert again.returncode == 1
    assert "--force" in again.stderr
    assert _env(deploy_copy) == env
    assert _init_secrets(deploy_copy, "--force").returncode == 0
    assert _env(deploy_copy)["PIPELINE_MQTT_PASSWORD"] != env["PIPELINE_MQTT_PASSWORD"]
    bad = _init_secrets(deploy_copy, "--hostname", "a b")
    assert bad.returncode == 2
    assert "bad hostname" in bad.stderr


def test_committed_files_hold_no_secrets() -> None:
    example = (DEPLOY / "compose" / ".env.example").read_text()
    for line in example.splitlines():
        key, _, value = line.partition("=")
        if any(w in key for w in ("PASSWORD", "TOKEN")):
            assert value == "CHANGE-ME", line
    ignored = (DEPLOY / ".gitignore").read_text().split()
    assert ".env" in ignored
    assert "compose/secrets/" in ignored


# --- compose -------------------------------------------------------------------


def test_compose_config_is_valid_and_complete(deploy_copy: Path) -> None:
    assert _init_secrets(deploy_copy).returncode == 0
    r = _compose_config(deploy_copy, "--profile", "simulator")
    assert r.returncode == 0, r.stderr
    cfg: dict[str, Any] = yaml.safe_load(r.stdout)
    services = cfg["services"]
    assert set(services) == {"mosquitto", "influxdb", "grafana", "pipeline", "simulator"}
    env = _env(deploy_copy)
    # Every secret comes from .env, and every bind-mounted file exists.
    assert (
        services["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
        == env["INFLUXDB_ADMIN_TOKEN"]
    )
    assert (
        env["PIPELINE_MQTT_PASSWORD"] in services["pipeline"]["environment"]["FIELDLINE_BROKER_URL"]
    )
    assert "CHANGE-ME" not in r.stdout
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            source = v.split(":", 1)[0]
            if source.startswith("/"):
                assert Path(source).exists(), f"{name}: {source} does not exist"
        for p in svc.get("ports", []):
            assert str(p).startswith("127.0.0.1:"), f"{name} publishes {p} beyond loopback"
    assert services["pipeline"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["pipeline"]["environment"]["FIELDLINE_INFLUX_API"] == "v2"
    grafana_mounts = " ".join(services["grafana"]["volumes"])
    assert "/grafana/provisioning:/etc/grafana/provisioning" in grafana_mounts
    # The simulated fleet starts only with --profile simulator.
    assert services["simulator"]["profiles"] == ["simulator"]
    assert all("profiles" not in s for n, s in services.items() if n != "simulator")


def test_compose_without_secrets_says_what_to_run(deploy_copy: Path) -> None:
    r = _compose_config(deploy_copy)
    assert r.returncode != 0
    assert "init-secrets.sh" in r.stderr


def test_the_image_installs_every_workspace_member() -> None:
    members = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["uv"]["workspace"][
        "members"
    ]
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for m in members:
        assert f"COPY {m}/ {m}/" in dockerfile, m
    assert "uv sync --locked" in dockerfile
    assert "USER fieldline" in dockerfile


# --- the broker of the stack, for real ---------------------------------------------


#: A device user added to the compose broker's devices.passwd by `compose_broker`.
COMPOSE_DEVICE = ("demo/dev-1", "device-password")


@pytest.fixture
def compose_broker(deploy_copy: Path, tmp_path: Path) -> Iterator[tuple[int, Path, dict[str, str]]]:
    """Debian's Mosquitto with deploy/compose/mosquitto's config, ACL and generated
    secrets (the container's paths moved into a temp dir, the ports free ones).

    Yields the services' port, the CA and .env; the devices' port is in
    ``env["DEVICE_PORT"]``, with `COMPOSE_DEVICE` as its one user."""
    assert _init_secrets(deploy_copy).returncode == 0
    secrets_dir = deploy_copy / "compose" / "secrets"
    run = tmp_path / "mosquitto"
    (run / "secrets").mkdir(parents=True)
    for f in ("ca.crt", "mosquitto.crt", "mosquitto.key", "mosquitto.passwd", "devices.passwd"):
        shutil.copy(secrets_dir / f, run / "secrets" / f)
    # What start.sh does in the container: hash the plain-text password file.
    subprocess.run([_tool("mosquitto_passwd"), "-U", str(run / "secrets" / "mosquitto.passwd")],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([_tool("mosquitto_passwd"), "-b", str(run / "secrets" / "devices.passwd"),
                    *COMPOSE_DEVICE], check=True, capture_output=True)  # fmt: skip
    port, device_port = free_port(), free_port()
    conf = (DEPLOY / "compose" / "mosquitto" / "mosquitto.conf").read_text()
    conf = conf.replace("/mosquitto/data/secrets", str(run / "secrets"))
    conf = conf.replace("/mosquitto/config/acl", str(DEPLOY / "compose" / "mosquitto" / "acl"))
    conf = conf.replace("/mosquitto/data/", str(run) + "/")
    conf = conf.replace("listener 8883", f"listener {device_port} 127.0.0.1")
    conf = conf.replace("listener 8884", f"listener {port} 127.0.0.1")
    if os.geteuid() == 0:
        # As root, Mosquitto would switch to the user 'mosquitto', which cannot read
        # these files (the container's start.sh hands them to that user instead).
        conf += "user root\n"
    (run / "mosquitto.conf").write_text(conf)
    log = run / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [_tool("mosquitto"), "-c", str(run / "mosquitto.conf")], stdout=out, stderr=out
        )
    try:
        for _ in range(200):
            with socket.socket() as s, socket.socket() as d:
                up = s.connect_ex(("127.0.0.1", port)), d.connect_ex(("127.0.0.1", device_port))
                if up == (0, 0):
                    break
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        yield port, secrets_dir / "ca.crt", {**_env(deploy_copy), "DEVICE_PORT": str(device_port)}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _client(
    port: int, ca: Path, user: str | None, password: str | None,
    client_id: str | None = None, clean_session: bool = True,
) -> tuple[mqtt.Client, int]:  # fmt: skip
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or f"t-{user}-{os.getpid()}",
        clean_session=clean_session,
    )  # fmt: skip
    c.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    if user is not None:
        c.username_pw_set(user, password)
    result: list[int] = []
    # Filled from paho's thread: before any callback a caller could set after connecting.
    c.user_data_set({"session_present": None, "messages": []})
    c.on_message = lambda _c, u, m: u["messages"].append(bytes(m.payload))
    c.on_connect = lambda _c, u, f, rc, _p: (
        u.update(session_present=f.session_present),
        result.append(int(rc.value)),
    )
    c.connect("localhost", port, keepalive=10)
    c.loop_start()
    for _ in range(100):
        if result:
            break
        time.sleep(0.05)
    return c, result[0] if result else -1


def _close(c: mqtt.Client) -> None:
    c.disconnect()
    c.loop_stop()
    c.reinitialise()  # closes paho's sockets now


def test_compose_broker_wants_tls_logins_and_confines_users(
    compose_broker: tuple[int, Path, dict[str, str]],
) -> None:
    port, ca, env = compose_broker
    anon, rc = _client(port, ca, None, None)
    _close(anon)
    assert rc != 0, "anonymous login accepted"
    wrong, rc = _client(port, ca, "fieldline-pipeline", "wrong")
    _close(wrong)
    assert rc != 0, "wrong password accepted"

    got: dict[str, list[str]] = {"pipeline": [], "sim": []}
    ready = threading.Event()
    pipe, rc = _client(port, ca, "fieldline-pipeline", env["PIPELINE_MQTT_PASSWORD"])
    assert rc == 0
    pipe.on_message = lambda _c, _u, m: got["pipeline"].append(m.topic)
    pipe.on_subscribe = lambda *_a: ready.set()
    pipe.subscribe("fieldline/#", qos=1)
    assert ready.wait(10)
    sim, rc = _client(port, ca, "fieldline-sim", env["SIM_MQTT_PASSWORD"])
    assert rc == 0
    sim.on_message = lambda _c, _u, m: got["sim"].append(m.topic)
    sim.subscribe("fieldline/#", qos=1)
    for topic in ("fieldline/demo/dev-1/telemetry", "fieldline/demo/dev-1/status",
                  "fieldline/deadletter/forged"):  # fmt: skip
        sim.publish(topic, b"x", qos=1).wait_for_publish(10)
    pipe.publish("fieldline/_metrics/pipeline/p", b"m", qos=1).wait_for_publish(10)
    for _ in range(100):
        if len(got["pipeline"]) >= 3:
            break
        time.sleep(0.05)
    for c in (pipe, sim):
        _close(c)
    # The pipeline reads telemetry and status (and its own metrics); the simulator
    # may not forge dead letters and reads nothing.
    assert sorted(got["pipeline"]) == [
        "fieldline/_metrics/pipeline/p",
        "fieldline/demo/dev-1/status",
        "fieldline/demo/dev-1/telemetry",
    ]
    assert got["sim"] == []


def test_compose_broker_binds_device_client_ids(
    compose_broker: tuple[int, Path, dict[str, str]],
) -> None:
    """A device key can neither log in on the services' listener nor resume the
    pipeline's session by its client id: what was queued for it is all there."""
    port, ca, env = compose_broker
    device_port = int(env["DEVICE_PORT"])
    pipe_password = env["PIPELINE_MQTT_PASSWORD"]
    pipe, rc = _client(port, ca, "fieldline-pipeline", pipe_password, "compose-pipeline-0", False)
    assert rc == 0
    subscribed = threading.Event()
    pipe.on_subscribe = lambda *_a: subscribed.set()
    pipe.subscribe("fieldline/+/+/telemetry", qos=1)
    assert subscribed.wait(10)
    _close(pipe)  # a stopped pipeline: its session stays and collects
    dev, rc = _client(device_port, ca, *COMPOSE_DEVICE)
    assert rc == 0
    for i in range(5):
        dev.publish("fieldline/demo/dev-1/telemetry", str(i).encode(), qos=1).wait_for_publish(10)
    _close(dev)
    wrong_place, rc = _client(port, ca, *COMPOSE_DEVICE)
    _close(wrong_place)
    assert rc != 0, "a device logged in on the services' listener"
    services_on_devices, rc = _client(device_port, ca, "fieldline-pipeline", pipe_password)
    _close(services_on_devices)
    assert rc != 0, "a service logged in on the devices' listener"
    thief, rc = _client(device_port, ca, *COMPOSE_DEVICE, "compose-pipeline-0", False)
    present = thief.user_data_get()["session_present"]  # type: ignore[no-untyped-call]
    _close(thief)
    assert (rc, present) == (0, False)  # itself, in a fresh session of its own
    back, rc = _client(port, ca, "fieldline-pipeline", pipe_password, "compose-pipeline-0", False)
    got: list[bytes] = back.user_data_get()["messages"]  # type: ignore[no-untyped-call]
    for _ in range(600):
        if len(got) >= 5:
            break
        time.sleep(0.05)
    _close(back)
    assert rc == 0
    assert sorted(got) == [str(i).encode() for i in range(5)]


# --- Kubernetes ----------------------------------------------------------------------


def _manifests() -> list[Path]:
    return sorted(p for p in (DEPLOY / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("path", _manifests(), ids=lambda p: p.name)
def test_manifest_matches_the_kubernetes_schema(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    sts = yaml.safe_load((DEPLOY / "k8s" / "statefulset.yaml").read_text())
    sts["spec"]["template"]["spec"]["containers"][0]["envFrum"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_statefulset_and_configmap_agree() -> None:
    k8s = DEPLOY / "k8s"
    sts = yaml.safe_load((k8s / "statefulset.yaml").read_text())
    cm = yaml.safe_load((k8s / "configmap.yaml").read_text())
    svc = yaml.safe_load((k8s / "service.yaml").read_text())
    kust = yaml.safe_load((k8s / "kustomization.yaml").read_text())
    addresses = cm["data"]["FIELDLINE_ADDRESSES"].split(",")
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    assert len(addresses) == replicas
    for i, a in enumerate(addresses):
        assert a.startswith(f"{name}-{i}.{svc['metadata']['name']}."), a
        assert a.endswith(":2101")
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"
    container = sts["spec"]["template"]["spec"]["containers"][0]
    secret_refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]}
    assert secret_refs == {"fieldline-pipeline"}
    assert "FIELDLINE_PROCESS_ID" in container["args"][0]
    assert set(kust["resources"]) == {p.name for p in _manifests()} - {"secret.example.yaml"}


def test_pipeline_takes_its_cluster_place_from_the_environment(tmp_path: Path) -> None:
    """What the StatefulSet sets: FIELDLINE_ADDRESSES and FIELDLINE_PROCESS_ID."""
    env = {**os.environ, "FIELDLINE_ADDRESSES": "a:2101,b:2101", "FIELDLINE_PROCESS_ID": "2"}
    r = subprocess.run(
        [sys.executable, "-m", "fieldline_pipeline", "run", "--state-dir", str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2
    assert "--process-id 2 is not among the 2 --addresses" in r.stderr


# --- systemd -------------------------------------------------------------------------


def test_pipeline_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "fieldline-pipeline.service").read_text()
    assert "EnvironmentFile=/etc/fieldline/pipeline.env" in unit
    # The same unit, pointing at this checkout's fieldline instead of /opt/fieldline.
    local = tmp_path / "fieldline-pipeline.service"
    fieldline = Path(sys.executable).parent / "fieldline"
    local.write_text(unit.replace("/opt/fieldline/bin/fieldline", str(fieldline)))
    analyze = _tool("systemd-analyze")
    r = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""
    r = subprocess.run([analyze, "security", "--offline=yes", str(local)],
                       capture_output=True, text=True)  # fmt: skip
    line = next(x for x in r.stdout.splitlines() if "Overall exposure level" in x)
    assert float(line.split(":")[1].split()[0]) <= 2.0, line
    example = (DEPLOY / "systemd" / "fieldline-pipeline.env.example").read_text()
    assert "FIELDLINE_BROKER_URL=mqtts://" in example
