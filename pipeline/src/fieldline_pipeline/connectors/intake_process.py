"""The MQTT intake in a process of its own.

Python runs one thread at a time per process. In one process, the intake (paho's
network thread, the group commit and the PUBACKs) and the dataflow take turns;
in two, each has a core. They share nothing but the ingest log file (SQLite in
WAL mode: one writer and readers in other processes at once), so the split
changes no guarantee: a message is still acknowledged only once it is on disk,
and the dataflow still reads the log by offset.

Life cycle: the pipeline starts the intake child, asks it to stop (it commits
and acknowledges what it received, then disconnects), and waits for it. The
child dies with the pipeline process (Linux ``PR_SET_PDEATHSIG``): a pipeline
killed with SIGKILL must not leave an intake behind, still holding the broker
session that the next start takes over. Should the intake child die on its own,
the pipeline stops with an error instead of running without input.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

from fieldline_pipeline.connectors.intake import MQTTIntake, watermark_topic
from fieldline_pipeline.connectors.mqtt import MQTTSettings
from fieldline_pipeline.gc_tuning import tune_gc
from fieldline_pipeline.ingest_log import IngestLog

log = logging.getLogger(__name__)

#: How often the child publishes its counters to the parent, seconds.
COUNTER_INTERVAL_S = 0.1
#: How long the child gets to commit, acknowledge and disconnect when stopping.
STOP_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _child(
    mqtt_fields: dict[str, Any],
    topic_filters: list[str],
    log_file: str,
    sync: str,
    client_id: str,
    shared: bool,
    parent_pid: int,
    log_level: int,
    log_format: str,
    messages: Synchronized[int],
    subscribed: Synchronized[int],
) -> None:
    _die_with_parent()
    # The parent coordinates every stop, with SIGTERM (a lock shared with the
    # parent could be left held by a process killed while holding it); a Ctrl-C
    # on the terminal reaches the whole process group, and must not tear the
    # intake down half-way.
    stop = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_a: stop.set())
    logging.basicConfig(level=log_level, format=log_format)
    if os.getppid() != parent_pid:  # the parent died before the prctl above
        return
    ingest_log = IngestLog(log_file, sync=sync)
    intake = MQTTIntake(MQTTSettings(**mqtt_fields), topic_filters, ingest_log, client_id, shared)
    tune_gc()
    intake.start()
    try:
        while not stop.wait(COUNTER_INTERVAL_S):
            messages.value = intake.messages
            subscribed.value = int(intake.subscribed.is_set())
    finally:
        intake.stop()
        messages.value = intake.messages
        subscribed.value = 0
        ingest_log.close()


class IntakeProcess:
    """:class:`MQTTIntake` run in a child process (see the module doc)."""

    def __init__(
        self,
        settings: MQTTSettings,
        topic_filters: str | Sequence[str],
        log_file: Path,
        sync: str,
        client_id: str,
        shared: bool,
    ) -> None:
        watermark_topic(client_id)  # refuse a client id that cannot name its topic, here
        ctx = mp.get_context("spawn")  # no fork of a process that runs threads
        self._messages: Synchronized[int] = ctx.Value("q", 0, lock=False)
        self._subscribed: Synchronized[int] = ctx.Value("b", 0, lock=False)
        fields = {
            "broker": settings.broker,
            "group": settings.group,
            "client_id_prefix": settings.client_id_prefix,
            "qos": settings.qos,
            "tls": settings.tls,
            "keepalive_s": settings.keepalive_s,
        }
        filters = [topic_filters] if isinstance(topic_filters, str) else list(topic_filters)
        root = logging.getLogger()
        fmt = (
            root.handlers[0].formatter._fmt
            if root.handlers and root.handlers[0].formatter
            else None
        )
        self._proc = ctx.Process(
            target=_child,
            args=(
                fields, filters, str(log_file), sync, client_id, shared, os.getpid(),
                root.level, fmt or logging.BASIC_FORMAT, self._messages, self._subscribed,
            ),
            name="fieldline-intake",
            daemon=True,
        )  # fmt: skip
        self.stopping = False

    def start(self) -> None:
        self._proc.start()

    @property
    def messages(self) -> int:
        """Messages committed to the log and acknowledged so far."""
        return int(self._messages.value)

    @property
    def subscribed(self) -> bool:
        return bool(self._subscribed.value)

    def alive(self) -> bool:
        return self._proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self._proc.exitcode

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Commit and acknowledge everything received, disconnect, and wait."""
        self.stopping = True
        if self._proc.pid is not None and self._proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            log.error("intake did not stop within %.0f s; killing it", timeout_s)
            self._proc.kill()
            self._proc.join(max(1.0, deadline - time.monotonic()))
