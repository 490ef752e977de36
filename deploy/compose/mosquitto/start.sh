#!/bin/sh
# Mosquitto's entry point in deploy/compose.yaml. The secrets are mounted from
# the host (mode 0600, owned by the host user); Mosquitto 2 reads them after it
# has dropped to the mosquitto user, so they are copied to where that user can
# read them, and the services' plain-text password file is hashed there. The
# devices' file holds hashed lines already (fieldline edge's operator directory).
set -eu
dir=/mosquitto/data/secrets
install -d -o mosquitto -g mosquitto -m 700 "$dir"
for f in mosquitto.crt mosquitto.key ca.crt mosquitto.passwd devices.passwd; do
  install -o mosquitto -g mosquitto -m 600 "/run/fieldline/$f" "$dir/$f"
done
mosquitto_passwd -U "$dir/mosquitto.passwd"
exec /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
