#!/usr/bin/env bash
# Install what developing, testing and demoing Fieldline needs on Debian, Ubuntu or
# Raspberry Pi OS: the Debian packages of the real services (when run as root or
# with password-less sudo) and uv. Idempotent: it installs only what is missing.
set -euo pipefail

cd "$(dirname "$0")/../.."

# binary:package pairs; the services the tests and the demo start for real.
NEEDED="mosquitto:mosquitto mosquitto_pub:mosquitto-clients influxd:influxdb victoria-metrics:victoria-metrics docker-compose:docker-compose cloud-init:cloud-init mcopy:mtools mkfs.vfat:dosfstools sshd:openssh-server ssh:openssh-client systemd-analyze:systemd openssl:openssl"
missing=""
for pair in $NEEDED; do
  bin=${pair%%:*}; pkg=${pair##*:}
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$bin" >/dev/null 2>&1; then
    missing="$missing $pkg"
  fi
done
# uv is installed into a virtual environment when it is not on PATH.
if ! command -v uv >/dev/null 2>&1 && [ ! -x .tools/bin/uv ]; then
  if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing="$missing python3-venv"
  fi
fi

if [ -n "$missing" ]; then
  if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "fieldline: these Debian packages are missing:$missing" >&2
    echo "install them with: sudo apt-get install -y$missing" >&2
    exit 1
  fi
  echo "installing Debian packages:$missing"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Packages start their system services where systemd runs; Fieldline never uses
  # those (it starts its own on free ports), so they are stopped and disabled.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for unit in mosquitto influxdb victoria-metrics; do
      $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
  fi
  # cloud-init is here for its schema validator only: it must not configure this machine.
  case "$missing" in *cloud-init*) $SUDO mkdir -p /etc/cloud && $SUDO touch /etc/cloud/cloud-init.disabled ;; esac
fi

if ! command -v uv >/dev/null 2>&1 && [ ! -x .tools/bin/uv ]; then
  echo "installing uv into .tools/"
  python3 -m venv .tools
  .tools/bin/pip install --quiet uv
fi
