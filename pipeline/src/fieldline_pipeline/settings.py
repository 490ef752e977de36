"""Everything ``fieldline pipeline run`` is configured with, in one typed object.

Only the entry points build settings (from flags and ``FIELDLINE_*`` variables);
connectors take plain typed arguments. Secrets never appear in ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fieldline_pipeline.connectors.influx import InfluxV1Config, InfluxV2Config, WriteOptions
from fieldline_pipeline.connectors.mqtt import MQTTSettings
from fieldline_pipeline.windows import WindowConfig


@dataclass(frozen=True)
class PipelineSettings:
    mqtt: MQTTSettings
    influx: InfluxV1Config | InfluxV2Config
    write: WriteOptions = field(default_factory=WriteOptions)
    windows: WindowConfig = field(default_factory=WindowConfig)
    workers: int = 1
    instance: str = "pipeline-0"
    metrics_interval_s: float = 1.0
    #: Bytewax epoch length: how often sinks and state checkpoints align.
    epoch_interval_s: float = 1.0
