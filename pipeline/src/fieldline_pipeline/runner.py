"""Run the pipeline as a service: intake, dataflow with recovery, metrics, shutdown.

Layout of ``state_dir``::

    ingest/ingest-<process>.sqlite   the ingest log (MQTTIntake writes, the dataflow reads)
    recovery/part-*.sqlite3          Bytewax recovery partitions (state and offsets)

Several processes (a Bytewax cluster, ``settings.addresses``): each has its own
MQTT intake in the one shared subscription and its own ingest log, read only by
its own workers; window state is keyed by device, so Bytewax routes each
device to one worker of the cluster. Process 0 creates the recovery partitions;
on one host the processes share the state dir (see :func:`supervise`, which
runs and watches them), across hosts the others start with an empty
``recovery/``: Bytewax uses the partitions wherever some process finds them.

SIGTERM or SIGINT: the intake stops taking messages and commits and acknowledges
what it has; the dataflow reads the log to its end and stops. Open windows are
kept in the recovery store for the next start, or closed and written first when
``flush_on_eof`` is set. A second SIGINT aborts at once. A crash (kill -9) loses
nothing: the next start resumes from the last snapshot.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from bytewax._bytewax import cli_main
from bytewax.recovery import RecoveryConfig, init_db_dir
from fieldline_edge.contract import STATUS_SUBSCRIPTION, TELEMETRY_SUBSCRIPTION
from fieldline_edge.mqtt import configure_client
from paho.mqtt.enums import CallbackAPIVersion

from fieldline_pipeline.clock import IngestClock
from fieldline_pipeline.connectors.influx import InfluxSink, InfluxWriteError, make_writer
from fieldline_pipeline.connectors.intake_process import IntakeProcess
from fieldline_pipeline.connectors.log_source import IngestLogSource, log_path, partition_name
from fieldline_pipeline.connectors.mqtt import MQTTSink
from fieldline_pipeline.dataflow import build_dataflow
from fieldline_pipeline.gc_tuning import tune_gc
from fieldline_pipeline.ingest_log import IngestLog
from fieldline_pipeline.metrics import METRICS, METRICS_TOPIC_PREFIX, MetricsReporter
from fieldline_pipeline.settings import PipelineSettings

#: Seconds between the metrics' InfluxDB writes, however often they are published.
METRICS_WRITE_S = 5.0

log = logging.getLogger(__name__)


def install_signal_handlers(stop: threading.Event) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.info("%s received: draining and stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


#: Bytewax recovery partitions (state is spread over them by key) of a single process.
RECOVERY_PARTITIONS = 1


def prepare_state_dir(
    state_dir: Path, partitions: int = RECOVERY_PARTITIONS, init_recovery: bool = True
) -> tuple[Path, Path]:
    """Create ``ingest/`` and ``recovery/``; with ``init_recovery``, create
    ``partitions`` recovery partitions if there are none yet (first use)."""
    ingest, recovery = state_dir / "ingest", state_dir / "recovery"
    ingest.mkdir(parents=True, exist_ok=True)
    recovery.mkdir(parents=True, exist_ok=True)
    if init_recovery and not any(recovery.glob("part-*")):
        init_db_dir(recovery, partitions)  # type: ignore[no-untyped-call]
    return ingest, recovery


def _metrics_publisher(
    settings: PipelineSettings,
    intake: IntakeProcess,
    ingest_log: IngestLog,
    clock: IngestClock,
    sink: InfluxSink,
) -> tuple[mqtt.Client, Any]:
    s = settings.mqtt
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"{s.client_id_prefix}-metrics-{settings.instance}",
        protocol=mqtt.MQTTv311,
    )
    configure_client(client, s.broker, s.tls)
    client.connect_async(s.broker.host, s.broker.port, keepalive=s.keepalive_s)
    client.loop_start()
    topic = f"{METRICS_TOPIC_PREFIX}/{settings.instance}"

    def publish(snap: dict[str, Any]) -> None:
        snap["subscribed_clients"] = int(intake.subscribed)
        snap["ingested"] = intake.messages
        # Progress through the ingest log; both survive restarts (offsets).
        snap["log_high"] = ingest_log.newest_offset()
        snap["log_next"] = clock.next_offsets().get(partition_name(settings.process_id), 0)
        # The newest broker round trip the dataflow has read (idle closing's "now").
        snap["watermark_ms"] = clock.watermark_ms()
        sink_stats = sink.stats()
        snap["sink_state"] = sink_stats.state
        snap["sink_retries"] = sink_stats.retries
        snap["sink_errors"] = sink_stats.errors
        snap["workers"] = settings.workers
        snap["process_id"] = settings.process_id
        snap["processes"] = max(1, len(settings.addresses))
        if not snap.get("done"):
            client.publish(topic, orjson.dumps(snap), qos=0)
            return
        # The final report goes with QoS 1 and is waited for: watchers rely on "done".
        info = client.publish(topic, orjson.dumps(snap), qos=1)
        try:
            info.wait_for_publish(timeout=5)
        except (ValueError, RuntimeError):
            log.warning("final metrics report not delivered: broker unreachable")

    return client, publish


def run_pipeline(settings: PipelineSettings) -> None:
    """Run until stopped (blocking)."""
    stop = settings.mqtt.stop
    install_signal_handlers(stop)
    log.info("starting pipeline: %r", settings)
    # In a cluster, process 0 creates the recovery partitions (see module doc).
    ingest_dir, recovery_dir = prepare_state_dir(
        settings.state_dir, init_recovery=settings.process_id == 0 or not settings.addresses
    )
    part = partition_name(settings.process_id)
    # Opened here first, so the schema exists before the intake child writes;
    # the parent only reads it (progress metrics).
    ingest_log = IngestLog(log_path(ingest_dir, part), sync=settings.ingest_sync)
    intake = IntakeProcess(
        settings.mqtt,
        [TELEMETRY_SUBSCRIPTION, STATUS_SUBSCRIPTION],
        log_path(ingest_dir, part),
        settings.ingest_sync,
        client_id=f"{settings.mqtt.client_id_prefix}-{settings.process_id}",
        shared=bool(settings.addresses),
    )
    clock = IngestClock()
    source_stop = threading.Event()
    # Points InfluxDB refuses (retention, cardinality limits) become dead letters
    # on MQTT, as malformed events do, and the pipeline goes on.
    sink = InfluxSink(
        settings.influx, settings.write, dead_letters=MQTTSink(settings.mqtt, "refused"),
        metrics=METRICS,
    )  # fmt: skip
    flow = build_dataflow(
        IngestLogSource(
            ingest_dir,
            settings.process_id,
            clock,
            source_stop,
            retention_s=settings.log_retention_s,
            sync=settings.ingest_sync,
        ),
        sink,
        MQTTSink(settings.mqtt, "out"),
        settings.windows,
        clock=clock,
        max_future_ms=settings.max_future_ms,
        detection=settings.detection,
    )
    # Metrics are best effort: a report that cannot be written is dropped (the
    # next one carries the same cumulative counters), so an outage never blocks it.
    metrics_writer = make_writer(
        settings.influx, dataclasses.replace(settings.write, max_retries=0), label="metrics"
    )
    client, publish = _metrics_publisher(settings, intake, ingest_log, clock, sink)
    reporter = MetricsReporter(
        METRICS, settings.instance, publish, metrics_writer.write, settings.metrics_interval_s,
        write_every=max(1, round(METRICS_WRITE_S / settings.metrics_interval_s)),
    )  # fmt: skip

    def stop_intake_then_source() -> None:
        stop.wait()
        intake.stop()  # everything received is now in the log and acknowledged
        source_stop.set()  # the dataflow reads the log to its end, then stops

    intake_failed = threading.Event()

    def watch_intake() -> None:
        while not stop.wait(0.5):
            if not intake.alive() and not intake.stopping:
                log.error("the MQTT intake exited (code %s): stopping", intake.exitcode)
                intake_failed.set()
                stop.set()

    intake.start()
    reporter.start()
    tune_gc()
    threading.Thread(target=stop_intake_then_source, name="stopper", daemon=True).start()
    threading.Thread(target=watch_intake, name="intake-watch", daemon=True).start()
    try:
        cli_main(  # type: ignore[no-untyped-call]
            flow,
            workers_per_process=settings.workers,
            process_id=settings.process_id if settings.addresses else None,
            addresses=list(settings.addresses) or None,
            epoch_interval=timedelta(seconds=settings.epoch_interval_s),
            recovery_config=RecoveryConfig(recovery_dir),  # type: ignore[no-untyped-call]
        )
    except Exception as exc:
        refused = _influx_error(exc)
        if refused is None:
            raise
        # A misconfiguration, not a bug: one line that names it, no traceback.
        log.error("stopping: InfluxDB refuses every write: %s", refused)
        raise SystemExit(1) from None
    finally:
        stop.set()
        reporter.stop()
        metrics_writer.close()
        ingest_log.close()
        client.disconnect()
        client.loop_stop()
        log.info("pipeline stopped: %s", METRICS.snapshot())
    if intake_failed.is_set():
        raise SystemExit(1)


def _influx_error(exc: BaseException) -> InfluxWriteError | None:
    """The :class:`InfluxWriteError` that Bytewax wrapped in ``exc``, if any."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, InfluxWriteError):
        seen = seen.__cause__ or seen.__context__
    return seen


#: How long stopping children get after the first of them failed, before SIGKILL.
CHILD_STOP_TIMEOUT_S = 60.0
#: How often the supervisor looks at its children.
SUPERVISE_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def _exit_code(returncode: int) -> int:
    """A child's exit status as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel send SIGTERM to the child when the
    supervisor dies (Linux), so a killed supervisor leaves no orphans behind."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


def supervise(commands: Sequence[Sequence[str]], env: Mapping[str, str]) -> int:
    """Run one pipeline process per command and wait for all; return the worst exit code.

    SIGTERM and SIGINT are forwarded to every child (each drains and stops as a
    single pipeline does; a second SIGINT aborts them). The children run in
    their own session, so a Ctrl-C on the terminal reaches them only once,
    through here. A Bytewax cluster cannot go on without one of its processes:
    when a child fails, the others are asked to stop (SIGTERM), and killed if
    they have not stopped after :data:`CHILD_STOP_TIMEOUT_S`.
    """
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: forwarding to %d processes", signal.Signals(signum).name, len(procs))
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        preexec = _die_with_parent()
        for cmd in commands:
            procs.append(
                subprocess.Popen(
                    list(cmd), env=dict(env), start_new_session=True, preexec_fn=preexec
                )
            )
        log.info("started %d pipeline processes: pids %s", len(procs), [p.pid for p in procs])
        kill_at: float | None = None
        while any(p.poll() is None for p in procs):
            failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if failed and kill_at is None:
                log.error(
                    "pipeline process %d exited with %d: stopping the others",
                    failed[0],
                    _exit_code(procs[failed[0]].returncode),
                )
                kill_at = time.monotonic() + CHILD_STOP_TIMEOUT_S
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            elif kill_at is not None and time.monotonic() > kill_at:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(SUPERVISE_POLL_S)
    finally:
        for p in procs:
            if p.poll() is None:  # only after an exception here: never leave orphans
                p.kill()
                p.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [_exit_code(p.returncode) for p in procs]
    log.info("pipeline processes exited with %s", codes)
    return max(codes, default=0)
