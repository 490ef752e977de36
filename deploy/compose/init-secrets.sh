#!/bin/sh
# Secrets for deploy/compose.yaml, generated on this machine, never committed:
#   .env                      settings and random passwords/tokens (from compose/.env.example)
#   compose/secrets/          a CA, Mosquitto's TLS certificate and key, the broker users
#                             (services in mosquitto.passwd; devices.passwd is made empty
#                             once and then left alone: it holds the devices' users)
# Every file is readable by its owner only. An existing .env is kept unless --force.
#
# Usage: compose/init-secrets.sh [--force] [--hostname NAME]...
#   --hostname  extra names for the broker certificate (how devices reach it);
#               it always covers mosquitto, localhost and 127.0.0.1.
set -eu

deploy_dir=${FIELDLINE_DEPLOY_DIR:-$(cd "$(dirname "$0")/.." && pwd)}
secrets_dir="$deploy_dir/compose/secrets"
env_file="$deploy_dir/.env"
force=0
san="DNS:mosquitto,DNS:localhost,IP:127.0.0.1"

while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --hostname)
      [ $# -ge 2 ] || { echo "init-secrets.sh: --hostname needs a name" >&2; exit 2; }
      case "$2" in
        *[!A-Za-z0-9.-]*|"") echo "init-secrets.sh: bad hostname '$2'" >&2; exit 2 ;;
      esac
      san="$san,DNS:$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "init-secrets.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

command -v openssl >/dev/null 2>&1 || { echo "init-secrets.sh: openssl is needed" >&2; exit 1; }
if [ -e "$env_file" ] && [ "$force" -ne 1 ]; then
  echo "init-secrets.sh: $env_file exists; keep it, or run with --force to replace every secret" >&2
  exit 1
fi

umask 077
mkdir -p "$secrets_dir"
# Hex: safe in URLs (mqtts://user:password@host) and in every config format.
secret() { openssl rand -hex 24; }

admin_token=$(secret)
pipeline_mqtt=$(secret)
sim_mqtt=$(secret)
tmp_env=$(mktemp "$deploy_dir/.env.XXXXXX")
while IFS= read -r line; do
  case "$line" in
    INFLUXDB_ADMIN_TOKEN=*|PIPELINE_INFLUX_TOKEN=*|GRAFANA_INFLUX_TOKEN=*)
      echo "${line%%=*}=$admin_token" ;;
    PIPELINE_MQTT_PASSWORD=*) echo "PIPELINE_MQTT_PASSWORD=$pipeline_mqtt" ;;
    SIM_MQTT_PASSWORD=*) echo "SIM_MQTT_PASSWORD=$sim_mqtt" ;;
    *=CHANGE-ME) echo "${line%%=*}=$(secret)" ;;
    *) printf '%s\n' "$line" ;;
  esac
done < "$deploy_dir/compose/.env.example" > "$tmp_env"
mv "$tmp_env" "$env_file"

# Broker users, in plain text: the broker hashes them at start (start.sh).
printf 'fieldline-pipeline:%s\nfieldline-sim:%s\n' "$pipeline_mqtt" "$sim_mqtt" \
  > "$secrets_dir/mosquitto.passwd"
# The devices' users (hashed lines, from fieldline edge's operator directory);
# never overwritten, not even by --force: the devices keep their passwords.
[ -e "$secrets_dir/devices.passwd" ] || : > "$secrets_dir/devices.passwd"

# A CA, and the broker's certificate signed by it (EC keys, 825 days).
openssl ecparam -name prime256v1 -genkey -noout -out "$secrets_dir/ca.key"
openssl req -x509 -new -key "$secrets_dir/ca.key" -sha256 -days 825 \
  -subj "/CN=Fieldline compose CA" -out "$secrets_dir/ca.crt" 2>/dev/null
openssl ecparam -name prime256v1 -genkey -noout -out "$secrets_dir/mosquitto.key"
openssl req -new -key "$secrets_dir/mosquitto.key" -subj "/CN=mosquitto" \
  -out "$secrets_dir/mosquitto.csr" 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$san" > "$secrets_dir/mosquitto.ext"
openssl x509 -req -in "$secrets_dir/mosquitto.csr" -CA "$secrets_dir/ca.crt" \
  -CAkey "$secrets_dir/ca.key" -CAcreateserial -days 825 -sha256 \
  -extfile "$secrets_dir/mosquitto.ext" -out "$secrets_dir/mosquitto.crt" 2>/dev/null
rm -f "$secrets_dir/mosquitto.csr" "$secrets_dir/mosquitto.ext" "$secrets_dir/ca.srl"
# The CA certificate is public: devices and services need it to trust the broker.
chmod 644 "$secrets_dir/ca.crt"

echo "wrote $env_file and $secrets_dir/ (CA: $secrets_dir/ca.crt)"
echo "next: docker compose up -d --build   (in $deploy_dir)"
