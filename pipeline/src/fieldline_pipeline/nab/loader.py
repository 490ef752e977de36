"""The Numenta Anomaly Benchmark's files: data, anomaly windows and cost profiles.

Layout of a NAB directory (``third_party/nab`` in this repository, or a checkout of numenta/NAB)::

    data/<category>/<name>.csv           timestamp,value (timestamps "YYYY-MM-DD HH:MM:SS")
    labels/combined_windows.json         "<category>/<name>.csv" -> [[start, end], ...]
    config/profiles.json                 profile -> {"CostMatrix": {tpWeight, fnWeight, fpWeight}}
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path


class NABError(ValueError):
    """A NAB directory that is missing a file or holds one that cannot be read."""


@dataclass(frozen=True)
class Profile:
    """One cost profile: the weight of a true positive, a false negative, a false positive."""

    name: str
    tp: float
    fn: float
    fp: float


@dataclass(frozen=True)
class DataFile:
    """One NAB series with its anomaly windows as inclusive row-index ranges."""

    key: str  # "<category>/<name>.csv", as in the label files
    timestamps: list[str]
    ts_ms: list[int]
    values: list[float]
    windows: list[tuple[int, int]]

    @property
    def category(self) -> str:
        return self.key.split("/", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split("/", 1)[1]


#: The order the published results list the profiles in.
PROFILE_NAMES = ("standard", "reward_low_FP_rate", "reward_low_FN_rate")


def to_ms(timestamp: str) -> int:
    """A NAB timestamp (UTC, no zone) as Unix milliseconds."""
    dt = datetime.fromisoformat(timestamp).replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def load_profiles(nab_dir: Path) -> list[Profile]:
    path = nab_dir / "config" / "profiles.json"
    try:
        raw = json.loads(path.read_text())
        return [
            Profile(
                name,
                float(raw[name]["CostMatrix"]["tpWeight"]),
                float(raw[name]["CostMatrix"]["fnWeight"]),
                float(raw[name]["CostMatrix"]["fpWeight"]),
            )
            for name in PROFILE_NAMES
        ]
    except OSError as exc:
        raise NABError(f"{path}: {exc.strerror}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise NABError(f"{path}: not a NAB profiles file ({exc!r})") from None


def load_windows(nab_dir: Path) -> dict[str, list[tuple[str, str]]]:
    path = nab_dir / "labels" / "combined_windows.json"
    try:
        raw = json.loads(path.read_text())
        return {k: [(str(s), str(e)) for s, e in v] for k, v in raw.items()}
    except OSError as exc:
        raise NABError(f"{path}: {exc.strerror}") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise NABError(f"{path}: not a NAB windows file ({exc!r})") from None


def read_series(path: Path) -> tuple[list[str], list[float]]:
    """``timestamp,value`` rows of one CSV file."""
    timestamps: list[str] = []
    values: list[float] = []
    try:
        with path.open(newline="") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None or [h.strip() for h in header[:2]] != ["timestamp", "value"]:
                raise NABError(f"{path}: the header must be timestamp,value")
            for n, row in enumerate(rows, start=2):
                if not row:
                    continue
                try:
                    values.append(float(row[1]))
                except (IndexError, ValueError):
                    raise NABError(f"{path}:{n}: no number in the value column") from None
                timestamps.append(row[0])
    except OSError as exc:
        raise NABError(f"{path}: {exc.strerror}") from None
    return timestamps, values


def load_file(nab_dir: Path, key: str, windows: list[tuple[str, str]]) -> DataFile:
    path = nab_dir / "data" / key
    timestamps, values = read_series(path)
    try:
        ts_ms = [to_ms(t) for t in timestamps]
    except ValueError as exc:
        raise NABError(f"{path}: bad timestamp ({exc})") from None
    index = {t: i for i, t in enumerate(timestamps)}
    limits: list[tuple[int, int]] = []
    for start, end in windows:
        # Window limits carry ".000000"; the data rows do not.
        try:
            left, right = index[start.split(".")[0]], index[end.split(".")[0]]
        except KeyError as exc:
            raise NABError(f"{key}: window limit {exc.args[0]} is not a row's timestamp") from None
        limits.append((left, right))
    return DataFile(key, timestamps, ts_ms, values, sorted(limits))


def corpus_keys(nab_dir: Path) -> list[str]:
    """Every labelled data file, in a stable order."""
    return sorted(load_windows(nab_dir))


def load_corpus(nab_dir: Path) -> list[DataFile]:
    windows = load_windows(nab_dir)
    return [load_file(nab_dir, key, windows[key]) for key in sorted(windows)]
