"""Real servers on loopback for development and tests (public API of this package).

Each service runs on 127.0.0.1 on a free port, keeps all its state in the
folder it is given, and is started/stopped by its Python object.
"""

from __future__ import annotations

from fieldline_localstack._process import Service, ServiceError, find_binary, free_port
from fieldline_localstack.influxdb import InfluxDB, InfluxQueryError
from fieldline_localstack.mosquitto import Mosquitto
from fieldline_localstack.stack import LocalStack
from fieldline_localstack.victoriametrics import VictoriaMetrics

__all__ = [
    "InfluxDB",
    "InfluxQueryError",
    "LocalStack",
    "Mosquitto",
    "Service",
    "ServiceError",
    "VictoriaMetrics",
    "find_binary",
    "free_port",
]
