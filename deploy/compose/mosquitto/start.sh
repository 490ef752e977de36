#!/bin/sh
# Mosquitto's entry point in deploy/compose.yaml. The secrets are mounted from
# the host (mode 0600, owned by the host user); Mosquitto 2 reads them after it
# has dropped to the mosquitto user, so they are copied to where that user can
# read them, and the plain-text password file is hashed there.
set -eu
dir=/mosquitto/data/secrets
install -d -o mosquitto -g mosquitto -m 700 "$dir"
for f in mosquitto.crt mosquitto.key ca.crt mosquitto.passwd; do
  install -o mosquitto -g mosquitto -m 600 "/run/fieldline/$f" "$dir/$f"
done
mosquitto_passwd -U "$dir/mosquitto.passwd"
exec /usr/sbin/mosquitto -c /mosquitto/config/mosquitto.conf
