"""InfluxDB writers and the Bytewax sink that uses them.

Two write APIs, one contract (:class:`InfluxWriter`):

- :class:`V1Writer`: ``POST /write`` of InfluxDB 1.x (what Debian and Raspberry
  Pi OS install), through a keep-alive urllib3 pool.
- :class:`V2Writer`: ``POST /api/v2/write`` (InfluxDB 2.x, 3.x, 1.8+ and
  VictoriaMetrics), through influxdb-client.

``write(lines)`` is synchronous: when it returns, every line is durable on the
server or returned as refused. It writes chunks of ``batch_size_lines``.
Transient failures (no answer, HTTP 429 and 5xx) are retried with exponential
backoff and jitter, by default without limit, so an outage of the server stalls
the caller instead of losing lines; ``Retry-After`` wins when the server sends
it. Timestamps are always milliseconds (``precision=ms``).

Two kinds of permanent failure:

- *Refused points* (a "partial write": points beyond the retention policy, a
  tag or series cardinality limit, a field type conflict, an unparsable line).
  InfluxDB stores the rest of the request and says only how many it dropped,
  and for one reason only, so the writer singles the refused lines out by
  writing halves of the chunk again (a rewrite overwrites: a point's identity is
  measurement + tags + time), at most ``max_refusal_requests`` extra requests
  per chunk. ``write`` returns them as :class:`RefusedLines`, reason and
  InfluxDB's message included; what the bound left undivided is returned whole
  with ``exact=False`` (some of those lines were stored).
- Failures that concern every write (authentication, missing database or
  retention policy, any other 4xx): :class:`InfluxWriteError` at once.

Example::

    writer = make_writer(InfluxV1Config("http://127.0.0.1:8086", "fieldline"))
    try:
        writer.write(["reading_window,device=d1,sensor=t mean=21.5 1700000000000"])
    finally:
        writer.close()
"""

from __future__ import annotations

import email.utils
import gzip
import json
import logging
import random
import re
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from threading import Lock
from typing import Protocol, cast
from urllib.parse import urlencode, urlsplit

import urllib3
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from fieldline_edge.contract import DeadLetter, dead_letter_topic, encode_dead_letter
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from typing_extensions import override

from fieldline_pipeline.metrics import PipelineMetrics

__all__ = [
    "REASON_REFUSED",
    "REASON_SERIES_LIMIT",
    "REASON_TAG_LIMIT",
    "InfluxConfig",
    "InfluxSink",
    "InfluxV1Config",
    "InfluxV2Config",
    "InfluxWriteError",
    "InfluxWriter",
    "RefusedLines",
    "V1Writer",
    "V2Writer",
    "WriteOptions",
    "WriterStats",
    "dead_letter_origin",
    "make_writer",
]

logger = logging.getLogger(__name__)

BODY_EXCERPT_CHARS = 500
# Line protocol repeats itself a lot, so the fastest level already shrinks a
# body several times over; higher levels cost CPU in the hot path for little.
GZIP_LEVEL = 1

#: Dead-letter reasons of lines InfluxDB refused (``fieldline/deadletter/<reason>``):
#: a tag's value count reached ``max-values-per-tag``, the database's series
#: count reached ``max-series-per-database``, anything else (retention policy,
#: field type conflict, unparsable line).
REASON_TAG_LIMIT = "influx_tag_limit"
REASON_SERIES_LIMIT = "influx_series_limit"
REASON_REFUSED = "influx_refused"

# Indirections so tests can record retry delays instead of waiting them out,
# and run the retry clock with them.
_sleep = time.sleep
_monotonic = time.monotonic


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    # The url is shown in repr and logs, so it must never carry a secret.
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "InfluxDB url must not contain credentials: use the user/password or token settings"
        )
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"InfluxDB url must start with http:// or https://, got {url!r}")


@dataclass(frozen=True)
class InfluxV1Config:
    """Where and how to write with the InfluxDB 1.x ``/write`` API.

    >>> InfluxV1Config("http://127.0.0.1:8086", "fieldline", username="u", password="s")
    ... # doctest: +NORMALIZE_WHITESPACE
    InfluxV1Config(url='http://127.0.0.1:8086', database='fieldline',
                   retention_policy=None, username='u')
    """

    url: str
    database: str
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_url(self.url)
        if not self.database:
            raise ValueError("database must not be empty")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username")


@dataclass(frozen=True)
class InfluxV2Config:
    """Where and how to write with the ``/api/v2/write`` API (influxdb-client).

    >>> InfluxV2Config("http://127.0.0.1:8086", org="fieldline", bucket="telemetry", token="t")
    InfluxV2Config(url='http://127.0.0.1:8086', org='fieldline', bucket='telemetry')
    """

    url: str
    org: str
    bucket: str
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check_url(self.url)
        if not self.bucket:
            raise ValueError("bucket must not be empty")


InfluxConfig = InfluxV1Config | InfluxV2Config


@dataclass(frozen=True)
class WriteOptions:
    """Chunking, compression, retries and timeouts of a writer.

    Retries of transient failures go on until ``max_retries`` retries of one
    chunk or ``max_retry_time_s`` seconds since its first failure, whichever
    comes first; ``None`` means no limit, and both default to ``None``: the
    pipeline's sink never gives up while the server is away, it waits (and
    the dataflow with it). Tools that prefer to fail, such as a metrics
    reporter, set a bound.

    ``max_refusal_requests`` bounds the extra requests that single out the lines
    of one chunk that the server refused (see the module doc); 0 dead-letters a
    partly refused chunk whole.

    Delay before retry *n* (from 0): ``retry_initial_delay_s * 2**n`` plus up to
    ``retry_jitter_s`` of random jitter, never more than ``retry_max_delay_s``
    in all; a ``Retry-After`` header (429, 503) replaces it, capped the same way.

    >>> WriteOptions(max_retries=3, max_retry_time_s=60)  # doctest: +ELLIPSIS
    WriteOptions(batch_size_lines=5000, gzip=True, max_retries=3, max_retry_time_s=60, ...)
    """

    batch_size_lines: int = 5000
    gzip: bool = True
    max_retries: int | None = None
    max_retry_time_s: float | None = None
    retry_initial_delay_s: float = 0.5
    retry_max_delay_s: float = 10.0
    retry_jitter_s: float = 0.25
    timeout_s: float = 10.0
    max_refusal_requests: int = 100

    def __post_init__(self) -> None:
        if self.batch_size_lines < 1:
            raise ValueError("batch_size_lines must be at least 1")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError("max_retries must not be negative")
        if self.max_retry_time_s is not None and self.max_retry_time_s < 0:
            raise ValueError("max_retry_time_s must not be negative")
        if min(self.retry_initial_delay_s, self.retry_max_delay_s, self.retry_jitter_s) < 0:
            raise ValueError("retry delays must not be negative")
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if self.max_refusal_requests < 0:
            raise ValueError("max_refusal_requests must not be negative")


@dataclass
class WriterStats:
    """Counters and state of one writer (or the sum over several).

    ``writes`` successful requests, ``lines`` lines written, ``retries`` retried
    attempts, ``errors`` chunks given up on, ``refused`` lines the server refused
    (returned by ``write``; counted whole where the search bound was reached).
    ``retrying_since`` is the Unix time (s) of the first failed attempt of the
    outage in progress, ``None`` while writes go through; ``last_error`` says
    what the last failed attempt got.
    """

    writes: int = 0
    lines: int = 0
    retries: int = 0
    errors: int = 0
    refused: int = 0
    retrying_since: float | None = None
    last_error: str = ""

    @property
    def state(self) -> str:
        """``"ok"`` or ``"retrying"``."""
        return "ok" if self.retrying_since is None else "retrying"

    def describe(self, now_s: float | None = None) -> str:
        """``ok`` or ``retrying for 12.3 s (HTTP 503: ...)``, for logs and reports."""
        if self.retrying_since is None:
            return "ok"
        now_s = time.time() if now_s is None else now_s
        return f"retrying for {now_s - self.retrying_since:.1f} s ({self.last_error})"

    def __iadd__(self, other: WriterStats) -> WriterStats:
        self.writes += other.writes
        self.lines += other.lines
        self.retries += other.retries
        self.errors += other.errors
        self.refused += other.refused
        if other.retrying_since is not None and (
            self.retrying_since is None or other.retrying_since < self.retrying_since
        ):
            # The sum is retrying while any writer is, since the earliest of them.
            self.retrying_since = other.retrying_since
            self.last_error = other.last_error
        return self


class InfluxWriteError(Exception):
    """A chunk of lines could not be written.

    ``status`` is the HTTP status of the last attempt (``None`` when the server
    could not be reached); ``body`` is an excerpt of its answer; ``retries`` how
    many times the chunk was retried before giving up (0 for a permanent error).
    """

    def __init__(
        self, message: str, *, status: int | None = None, body: str = "", retries: int = 0
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        self.retries = retries


@dataclass(frozen=True)
class RefusedLines:
    """Lines the server refused, for one reason, while it stored the others.

    ``detail`` is the server's message (without its count). ``exact`` is False when the search bound
    stopped before these lines were singled out: some of them were stored.
    """

    reason: str
    detail: str
    lines: tuple[str, ...]
    exact: bool = True


class InfluxWriter(Protocol):
    """Writes line protocol synchronously; see the module docstring."""

    @property
    def stats(self) -> WriterStats: ...

    def write(self, lines: Sequence[str]) -> list[RefusedLines]: ...

    def ping(self) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Attempt:
    """Outcome of one request; ``status is None`` means no answer at all."""

    status: int | None
    body: str = ""
    retry_after_s: float | None = None
    retryable: bool | None = None  # None: decide by status

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def refused_points(self) -> bool:
        """The server refused some points of the request, not the request itself."""
        return self.status in (400, 422) and any(m in self.body for m in _POINT_REFUSALS)


#: How InfluxDB (1.x, 2.x, 3.x) words a refusal of points rather than of the
#: request: 1.x answers 400 "partial write: ... dropped=N" (parse errors
#: included) or 400 "unable to parse ..." when no line parsed; 2.x answers 422
#: "... partial write ..." or 400 "unable to parse ...".
_POINT_REFUSALS = ("partial write", "unable to parse")


def _reason(detail: str) -> str:
    """The dead-letter reason for a refusal message."""
    if "max-values-per-tag" in detail:
        return REASON_TAG_LIMIT
    if "max-series-per-database" in detail:
        return REASON_SERIES_LIMIT
    return REASON_REFUSED


def _without_count(detail: str) -> str:
    """The message without its ``dropped=N``, which counted one request, not these lines."""
    return _DROPPED.sub("", detail)


_DROPPED = re.compile(r"\s*dropped=\d+\s*$")


def _dropped(detail: str) -> int | None:
    """InfluxDB's ``dropped=N``: a lower bound (it reports one reason of several)."""
    _, sep, tail = detail.rpartition("dropped=")
    if not sep:
        return None
    digits = tail.strip().split()[0] if tail.strip() else ""
    return int(digits) if digits.isdigit() else None


def _excerpt(body: bytes | str | None) -> str:
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        # Both APIs answer errors as JSON; the message is what a reader needs.
        doc = json.loads(text)
        if isinstance(doc, dict):
            text = str(doc.get("error") or doc.get("message") or text)
    except ValueError:
        pass
    return text[:BODY_EXCERPT_CHARS]


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


#: Backoff exponent cap: retrying forever must not overflow 2.0**n.
_MAX_BACKOFF_EXPONENT = 60


def _permanent_hint(status: int | None) -> str:
    """What a reader should check for a status that retrying cannot fix."""
    if status == 400:
        return "the server rejected the line protocol"
    if status in (401, 403):
        return "authentication failed: check the InfluxDB user and password (or token)"
    if status == 404:
        return "the database (bucket) or retention policy does not exist"
    if status == 413:
        return "the request is too large: lower batch_size_lines"
    return "the server refused it"


class _RetryingWriter:
    """Chunking, retries, logging and stats; subclasses send one chunk."""

    def __init__(self, options: WriteOptions, label: str = "") -> None:
        self._options = options
        self._stats = WriterStats()
        self._random = random.Random()
        self._prefix = f"{label}: " if label else ""
        self._outage_retries = 0

    @property
    def stats(self) -> WriterStats:
        return self._stats

    def _send(self, chunk: Sequence[str]) -> _Attempt:
        raise NotImplementedError

    def write(self, lines: Sequence[str]) -> list[RefusedLines]:
        size = self._options.batch_size_lines
        refused: list[RefusedLines] = []
        for start in range(0, len(lines), size):
            refused += self._write_chunk(lines[start : start + size])
        return refused

    def _write_chunk(self, chunk: Sequence[str]) -> list[RefusedLines]:
        attempt = self._send_until_answered(chunk)
        if attempt.ok:
            self._stats.lines += len(chunk)
            return []
        return self._single_out(chunk, attempt)

    def _single_out(self, chunk: Sequence[str], first: _Attempt) -> list[RefusedLines]:
        """The refused lines of ``chunk``, found by writing halves of it again.

        Each group in ``pending`` is known to hold a refused line. A group of
        one line, or one that the server says it dropped whole, is refused;
        others are halved and each half written: a half that goes through is
        stored, one refused again goes back to ``pending``. Breadth first, so
        that the bound leaves groups of even size.
        """
        budget = self._options.max_refusal_requests
        pending: deque[tuple[Sequence[str], str]] = deque([(chunk, first.body)])
        # Grouped by what the server said of them, so that each line keeps the
        # message of the request that singled it out.
        found: dict[tuple[str, str, bool], list[str]] = {}
        requests = 0

        def refuse(group: Sequence[str], detail: str, exact: bool) -> None:
            message = _without_count(detail)
            found.setdefault((_reason(message), message, exact), []).extend(group)

        while pending:
            group, detail = pending.popleft()
            if len(group) == 1 or _dropped(detail) == len(group):
                refuse(group, detail, exact=True)
                continue
            if requests + 2 > budget:
                refuse(group, detail, exact=False)
                continue
            mid = len(group) // 2
            for half in (group[:mid], group[mid:]):
                requests += 1
                attempt = self._send_until_answered(half)
                if not attempt.ok:
                    pending.append((half, attempt.body))
        result = [
            RefusedLines(reason, message, tuple(lines), exact)
            for (reason, message, exact), lines in found.items()
        ]
        refused = sum(len(r.lines) for r in result)
        self._stats.lines += len(chunk) - refused
        self._stats.refused += refused
        self._log_refusal(result, len(chunk), budget)
        return result

    def _log_refusal(self, result: list[RefusedLines], chunk_size: int, budget: int) -> None:
        """One log line per reason: how many, why; the lines go to the caller.

        Messages that name a value or a line differ from line to line (a tag
        limit names the new value): the first one stands for the others.
        """
        by_reason: dict[str, list[RefusedLines]] = {}
        for r in result:
            by_reason.setdefault(r.reason, []).append(r)
        for reason, groups in by_reason.items():
            count = sum(len(g.lines) for g in groups)
            messages = len({g.detail for g in groups})
            logger.warning(
                "%sInfluxDB refused %d of %d lines (%s)%s: %s%s",
                self._prefix, count, chunk_size, reason,
                "" if all(g.exact for g in groups)
                else f", some not singled out within {budget} requests (those may be stored)",
                groups[0].detail,
                f" (and {messages - 1} other messages)" if messages > 1 else "",
            )  # fmt: skip

    def _send_until_answered(self, chunk: Sequence[str]) -> _Attempt:
        """Send ``chunk`` until the server takes it or refuses some of its points.

        Retries transient failures (see :class:`WriteOptions`); raises
        :class:`InfluxWriteError` for a failure that concerns the request itself.
        """
        opts = self._options
        stats = self._stats
        retry = 0
        first_failure = 0.0
        while True:
            started = time.monotonic()
            attempt = self._send(chunk)
            status = attempt.status
            if attempt.ok or attempt.refused_points:
                stats.writes += 1
                logger.debug("wrote %d lines in %.3f s", len(chunk), time.monotonic() - started)
                if stats.retrying_since is not None:
                    # Without retries (a writer that gives up at once) there was no
                    # retry warning to close: its caller says when writes failed.
                    if self._outage_retries:
                        logger.info(
                            "%sInfluxDB writes resumed after %.1f s (%d retries; last error: %s)",
                            self._prefix, time.time() - stats.retrying_since,
                            self._outage_retries, stats.last_error,
                        )  # fmt: skip
                    stats.retrying_since = None
                    self._outage_retries = 0
                return attempt
            what = f"HTTP {status}" if status is not None else "no answer"
            stats.last_error = f"{what}: {attempt.body}"[:BODY_EXCERPT_CHARS]
            retryable = attempt.retryable
            if retryable is None:
                retryable = status is None or status == 429 or status >= 500
            if not retryable:
                stats.errors += 1
                raise InfluxWriteError(
                    f"writing {len(chunk)} lines failed, {_permanent_hint(status)}: "
                    f"{what}: {attempt.body}",
                    status=status,
                    body=attempt.body,
                    retries=retry,
                )
            now = _monotonic()
            if retry == 0:
                first_failure = now
            if stats.retrying_since is None:
                stats.retrying_since = time.time()
            delay, from_header = self._delay(retry, attempt)
            elapsed = now - first_failure
            out_of_tries = opts.max_retries is not None and retry >= opts.max_retries
            out_of_time = opts.max_retry_time_s is not None and elapsed >= opts.max_retry_time_s
            if out_of_tries or out_of_time:
                stats.errors += 1
                raise InfluxWriteError(
                    f"writing {len(chunk)} lines failed after {retry} retries in "
                    f"{elapsed:.1f} s: {what}: {attempt.body}",
                    status=status,
                    body=attempt.body,
                    retries=retry,
                )
            if opts.max_retry_time_s is not None:
                # The last try comes at the deadline, not after it.
                delay = min(delay, opts.max_retry_time_s - elapsed)
            retry += 1
            stats.retries += 1
            self._outage_retries += 1
            of = f"/{opts.max_retries}" if opts.max_retries is not None else ""
            logger.warning(
                "%swriting %d lines failed (%s: %s); retry %d%s in %.2f s%s; failing for %.1f s",
                self._prefix, len(chunk), what, attempt.body, retry, of, delay,
                " (Retry-After)" if from_header else "", time.time() - stats.retrying_since,
            )  # fmt: skip
            _sleep(delay)

    def _delay(self, retry: int, attempt: _Attempt) -> tuple[float, bool]:
        """Seconds to wait before the next attempt, and whether Retry-After set it."""
        opts = self._options
        if attempt.retry_after_s is not None and attempt.status in (429, 503):
            return min(attempt.retry_after_s, opts.retry_max_delay_s), True
        # Jitter keeps workers that failed together from retrying together; it
        # stays inside the cap so that workers at the cap still spread out.
        jitter = min(opts.retry_jitter_s, opts.retry_max_delay_s)
        exponent = min(retry, _MAX_BACKOFF_EXPONENT)
        backoff = min(opts.retry_initial_delay_s * 2.0**exponent, opts.retry_max_delay_s - jitter)
        return backoff + self._random.uniform(0.0, jitter), False


class V1Writer(_RetryingWriter):
    """Writes to InfluxDB 1.x ``/write`` (query params db, rp, precision=ms)."""

    def __init__(
        self, config: InfluxV1Config, options: WriteOptions | None = None, *, label: str = ""
    ) -> None:
        super().__init__(options or WriteOptions(), label)
        self._config = config
        base = config.url.rstrip("/")
        params = {"db": config.database, "precision": "ms"}
        if config.retention_policy:
            params["rp"] = config.retention_policy
        self._write_url = f"{base}/write?{urlencode(params)}"
        self._ping_url = f"{base}/ping"
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.username is not None:
            auth = f"{config.username}:{config.password or ''}"
            headers.update(urllib3.util.make_headers(basic_auth=auth))
        self._headers = headers
        # retries=False: our loop owns retries; urllib3 would hide them from stats.
        self._http = urllib3.PoolManager(
            num_pools=1,
            maxsize=1,
            retries=False,
            timeout=urllib3.Timeout(total=self._options.timeout_s),
        )

    @override
    def _send(self, chunk: Sequence[str]) -> _Attempt:
        body = "\n".join(chunk).encode("utf-8")
        headers = self._headers
        if self._options.gzip:
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            headers = {**headers, "Content-Encoding": "gzip"}
        try:
            resp = self._http.request("POST", self._write_url, body=body, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            return _Attempt(status=None, body=str(exc)[:BODY_EXCERPT_CHARS])
        text = _excerpt(resp.data)
        # InfluxDB 1.x answers 500 for a missing retention policy: not transient.
        retryable = False if "retention policy not found" in text else None
        return _Attempt(
            status=resp.status,
            body=text,
            retry_after_s=_parse_retry_after(resp.headers.get("Retry-After")),
            retryable=retryable,
        )

    def ping(self) -> bool:
        """Whether the server answers ``GET /ping`` with 204."""
        try:
            resp = self._http.request("GET", self._ping_url, headers=self._headers)
        except urllib3.exceptions.HTTPError:
            return False
        return resp.status == 204

    def close(self) -> None:
        self._http.clear()


class V2Writer(_RetryingWriter):
    """Writes to ``/api/v2/write`` through influxdb-client (synchronous API)."""

    def __init__(
        self, config: InfluxV2Config, options: WriteOptions | None = None, *, label: str = ""
    ) -> None:
        super().__init__(options or WriteOptions(), label)
        self._config = config
        # influxdb-client's own retries stay off (its default): ours count and log.
        self._client = InfluxDBClient(
            url=config.url,
            token=config.token or "",  # empty: no Authorization header
            org=config.org,
            enable_gzip=self._options.gzip,
            timeout=int(self._options.timeout_s * 1000),
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    @override
    def _send(self, chunk: Sequence[str]) -> _Attempt:
        try:
            self._write_api.write(
                self._config.bucket,
                self._config.org,
                record=list(chunk),
                # The library annotates the class, but its members are plain strings.
                write_precision=cast(WritePrecision, WritePrecision.MS),
            )
        except ApiException as exc:
            headers: Mapping[str, str] = exc.headers or {}
            return _Attempt(
                status=exc.status,
                body=_excerpt(exc.body),
                retry_after_s=_parse_retry_after(headers.get("Retry-After")),
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return _Attempt(status=None, body=str(exc)[:BODY_EXCERPT_CHARS])
        return _Attempt(status=204)

    def ping(self) -> bool:
        """Whether the server answers influxdb-client's ping."""
        return bool(self._client.ping())

    def close(self) -> None:
        # influxdb-client is untyped here.
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def make_writer(
    config: InfluxConfig, options: WriteOptions | None = None, *, label: str = ""
) -> InfluxWriter:
    """Build the writer for ``config``'s API; ``label`` prefixes its log messages."""
    if isinstance(config, InfluxV1Config):
        return V1Writer(config, options, label=label)
    return V2Writer(config, options, label=label)


#: How many refused lines a log record shows when there is no dead-letter sink.
_LOGGED_LINES = 20


class _InfluxSinkPartition(StatelessSinkPartition[str]):
    def __init__(
        self,
        writer: InfluxWriter,
        target: str,
        dead_letters: StatelessSinkPartition[tuple[str, bytes]] | None,
        metrics: PipelineMetrics | None,
    ) -> None:
        self.writer = writer
        self._target = target
        self._dead_letters = dead_letters
        self._metrics = metrics

    @override
    def write_batch(self, items: list[str]) -> None:
        # Synchronous on purpose: the batch is durable before the dataflow moves
        # on, and while the server is away this blocks the worker, which then
        # stops pulling from its source (backpressure).
        refused = self.writer.write(items)
        if not refused:
            return
        if self._metrics is not None:
            for r in refused:
                self._metrics.on_refused_points(r.reason, len(r.lines))
        if self._dead_letters is not None:
            self._dead_letter(self._dead_letters, refused)
            return
        lines = [line for r in refused for line in r.lines]
        shown = lines[:_LOGGED_LINES]
        more = len(lines) - len(shown)
        logger.warning(
            "no dead-letter sink: %d refused lines are only logged:\n%s%s",
            len(lines), "\n".join(shown), f"\n... and {more} more" if more else "",
        )  # fmt: skip

    def _dead_letter(
        self, sink: StatelessSinkPartition[tuple[str, bytes]], refused: list[RefusedLines]
    ) -> None:
        """Hand each refused line on as a dead letter, in one batch; never raises.

        A failure here must not stop the pipeline: a restart would replay the
        same input, be refused the same lines and fail the same way.
        """
        now_ms = int(time.time() * 1000)
        letters: list[tuple[str, bytes]] = []
        for r in refused:
            detail = r.detail
            if not r.exact:
                detail = (
                    f"{detail} (refused among {len(r.lines)} lines that were not singled "
                    "out: this one may have been stored)"
                )
            topic = dead_letter_topic(r.reason)
            letters += [
                (topic, encode_dead_letter(
                    DeadLetter(r.reason, detail, self._target, line.encode("utf-8"), now_ms)
                ))
                for line in r.lines
            ]  # fmt: skip
        try:
            sink.write_batch(letters)
        except Exception:
            reasons = ", ".join(sorted({r.reason for r in refused}))
            logger.exception("publishing %d dead letters (%s) failed", len(letters), reasons)

    @override
    def close(self) -> None:
        try:
            self.writer.close()
        finally:
            if self._dead_letters is not None:
                self._dead_letters.close()


def dead_letter_origin(config: InfluxConfig) -> str:
    """The ``topic`` of a refused line's dead letter: where it was to be written."""
    if isinstance(config, InfluxV1Config):
        return f"influxdb:{config.database}"
    return f"influxdb:{config.bucket}"


class InfluxSink(DynamicSink[str]):
    """Write line-protocol lines (one item = one line) to InfluxDB.

    Unit of parallelism: one writer (one HTTP connection) per worker; each
    worker writes the lines that reach it.

    Delivery guarantee: at-least-once. Each batch is written synchronously, so
    it is durable before the dataflow goes on. With the default
    :class:`WriteOptions`, transient failures (server down, 5xx, 429) are
    retried until the server takes the batch: meanwhile the worker is blocked
    and takes nothing more from its source, so what arrives waits upstream (in
    the ingest log on disk, or the broker), not in memory (backpressure).

    Lines the server refuses while it takes the rest (see the module doc) do
    not stop the dataflow: each becomes a dead letter on
    ``fieldline/deadletter/<reason>`` through a partition of ``dead_letters``
    (built per worker; its ``write_batch`` must wait for delivery as
    :class:`~fieldline_pipeline.connectors.mqtt.MQTTSink` does), counted in
    ``metrics`` by reason; the batch counts as written once they are handed
    on. A dead letter that cannot be published is logged, never raised.
    Without ``dead_letters``, refused lines are only logged.

    A failure that concerns every write (authentication, missing database, a
    retry bound when set) raises :class:`InfluxWriteError` and stops the
    dataflow rather than dropping lines, and a resume replays from the last
    snapshot. Replays are harmless: a point's identity is measurement + tags +
    time, so a rewrite overwrites it.

    ``stats()`` sums the counters and state of the writers built in this
    process: ``stats().state`` is ``"retrying"`` while any worker waits for the
    server, and ``stats().describe()`` says since when and why.
    """

    def __init__(
        self,
        config: InfluxConfig,
        options: WriteOptions | None = None,
        *,
        dead_letters: DynamicSink[tuple[str, bytes]] | None = None,
        metrics: PipelineMetrics | None = None,
    ) -> None:
        self.config = config
        self.options = options or WriteOptions()
        self._dead_letters = dead_letters
        self._metrics = metrics
        self._writers: list[InfluxWriter] = []
        self._lock = Lock()

    @override
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _InfluxSinkPartition:
        writer = make_writer(self.config, self.options, label=f"{step_id} worker {worker_index}")
        with self._lock:
            self._writers.append(writer)
        dead = None
        if self._dead_letters is not None:
            dead = self._dead_letters.build(step_id, worker_index, worker_count)
        return _InfluxSinkPartition(writer, dead_letter_origin(self.config), dead, self._metrics)

    def stats(self) -> WriterStats:
        total = WriterStats()
        with self._lock:
            for writer in self._writers:
                total += writer.stats
        return total
