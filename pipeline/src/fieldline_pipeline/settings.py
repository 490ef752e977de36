"""Everything ``fieldline pipeline run`` is configured with, in one typed object.

Only the entry points build settings (from flags and ``FIELDLINE_*`` variables);
connectors take plain typed arguments. Secrets never appear in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fieldline_pipeline.connectors.influx import InfluxV1Config, InfluxV2Config, WriteOptions
from fieldline_pipeline.connectors.mqtt import MQTTSettings
from fieldline_pipeline.detection import DetectionConfig
from fieldline_pipeline.windows import WindowConfig


@dataclass(frozen=True)
class PipelineSettings:
    mqtt: MQTTSettings
    influx: InfluxV1Config | InfluxV2Config
    write: WriteOptions = field(default_factory=WriteOptions)
    windows: WindowConfig = field(default_factory=WindowConfig)
    #: Anomaly detection; None turns it off.
    detection: DetectionConfig | None = field(default_factory=DetectionConfig)
    workers: int = 1
    instance: str = "pipeline-0"
    metrics_interval_s: float = 1.0
    #: Bytewax epoch length: how often state and log offsets are snapshotted.
    epoch_interval_s: float = 1.0
    #: Ingest log and Bytewax recovery store; keep it across restarts.
    state_dir: Path = Path(".fieldline-state")
    #: This process's index among ``processes`` (names its ingest log).
    process_id: int = 0
    #: ``host:port`` of every process of a Bytewax cluster, this one included, in
    #: process-id order; empty for a single process.
    addresses: tuple[str, ...] = ()
    #: Readings stamped further ahead of the receive time are dead-lettered.
    max_future_ms: int = 5 * 60 * 1000
    #: "full": fsync every ingest commit (survives power loss); "normal": crash-safe only.
    ingest_sync: str = "full"
    #: How long processed messages stay in the ingest log (for replay).
    log_retention_s: float = 3600.0
