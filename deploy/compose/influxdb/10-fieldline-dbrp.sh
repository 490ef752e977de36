#!/bin/bash
# Runs once, after the influxdb:2 image's initial setup (docker-entrypoint-initdb.d):
# maps the InfluxQL database "$DOCKER_INFLUXDB_INIT_BUCKET" / retention policy
# "autogen" to the bucket, so InfluxQL (Grafana's dashboards) can query it.
set -euo pipefail
bucket_id=$(influx bucket list --name "$DOCKER_INFLUXDB_INIT_BUCKET" --hide-headers | cut -f1)
influx v1 dbrp create --bucket-id "$bucket_id" --db "$DOCKER_INFLUXDB_INIT_BUCKET" --rp autogen --default
