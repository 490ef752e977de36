"""Connectors: MQTT in and out, InfluxDB out."""
