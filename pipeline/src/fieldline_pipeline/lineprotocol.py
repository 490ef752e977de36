"""InfluxDB line protocol: escaping and formatting (pure, no I/O).

One line is ``measurement[,tag=value...] field=value[,field=value...] [timestamp]``.
The timestamp's unit is not part of the line: the writer states it with its
``precision`` (Fieldline writes milliseconds everywhere, ``precision=ms``).

Rules follow the InfluxDB 1.x parser, the strictest reader we write to:

- Measurements escape comma and space; tag keys, tag values and field keys
  also escape the equals sign.
- The 1.x parser never unescapes a backslash in names, so a backslash passes
  through as it is. A name that ends in a backslash, or has a backslash right
  before a character that must be escaped, cannot be written unambiguously and
  is rejected, as are line breaks (a line break ends the line).
- String field values are double-quoted; ``"`` and ``\\`` are escaped.
- Integers carry an ``i`` suffix and must fit in a signed 64-bit integer.
- ``time`` cannot be a tag or field key (InfluxDB 1.x drops such points).
- Floats are written with ``repr``, the shortest text that reads back as the
  very same float; NaN and infinities have no line protocol form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "FieldValue",
    "escape_field_key",
    "escape_field_string",
    "escape_measurement",
    "escape_tag",
    "format_line",
    "format_value",
]

FieldValue = float | int | bool | str

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_MEASUREMENT_TABLE = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_TABLE = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_TABLE = str.maketrans({'"': '\\"', "\\": "\\\\"})


def _check_name(s: str, what: str, specials: str) -> None:
    if not s:
        raise ValueError(f"{what} must not be empty")
    if "\n" in s or "\r" in s:
        raise ValueError(f"{what} {s!r} contains a line break, which line protocol cannot carry")
    # The parser reads "\x" as an escape only for the special characters and
    # never unescapes "\\", so these backslashes would change the name.
    if "\\" in s and (s.endswith("\\") or any(f"\\{c}" in s for c in specials)):
        raise ValueError(
            f"{what} {s!r} has a backslash at its end or before one of {specials!r}, "
            "which line protocol cannot represent"
        )


def escape_measurement(s: str) -> str:
    """Escape a measurement name (comma and space)."""
    _check_name(s, "measurement", ",= ")  # the parser unescapes "\\=" here too
    if s.startswith("#"):
        # A line that starts with "#" is a comment to InfluxDB.
        raise ValueError(f"measurement {s!r} must not start with '#'")
    return s.translate(_MEASUREMENT_TABLE)


def escape_tag(s: str) -> str:
    """Escape a tag key or tag value (comma, equals sign, space)."""
    _check_name(s, "tag key or value", ",= ")
    return s.translate(_KEY_TABLE)


def escape_field_key(s: str) -> str:
    """Escape a field key (same rules as tag keys)."""
    _check_name(s, "field key", ",= ")
    return s.translate(_KEY_TABLE)


def escape_field_string(s: str) -> str:
    """Quote a string field value, escaping ``"`` and ``\\``."""
    return '"' + s.translate(_STRING_TABLE) + '"'


def format_value(v: FieldValue) -> str:
    """Format a field value: ``true``/``false``, ``<n>i``, a float, or a quoted string."""
    # bool before int: bool is a subclass of int.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        if not _INT64_MIN <= v <= _INT64_MAX:
            raise ValueError(f"integer {v} does not fit in a signed 64-bit field")
        return f"{int(v)}i"
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} has no line protocol form")
        # float.__repr__, not repr(): subclasses such as numpy.float64 print
        # themselves as "np.float64(...)".
        return float.__repr__(v)
    if isinstance(v, str):
        return escape_field_string(v)
    raise TypeError(f"unsupported field value type {type(v).__name__}")


def format_line(
    measurement: str,
    tags: Mapping[str, str],
    fields: Mapping[str, FieldValue],
    ts: int | None,
) -> str:
    """Format one point as a line (without the trailing newline).

    Tags are sorted by key, as InfluxDB recommends for write performance; tags
    with an empty value are left out (InfluxDB has no empty tag values). ``ts``
    is in the writer's precision (milliseconds in Fieldline), or ``None`` to let
    the server stamp the point.
    """
    if not fields:
        raise ValueError(f"a point needs at least one field (measurement {measurement!r})")
    if "time" in tags or "time" in fields:
        # InfluxDB 1.x drops such points: "time" is the timestamp column.
        raise ValueError(
            f"'time' is not allowed as a tag or field key (measurement {measurement!r})"
        )
    parts = [escape_measurement(measurement)]
    for key in sorted(tags):
        value = tags[key]
        if value:
            parts.append(f",{escape_tag(key)}={escape_tag(value)}")
    parts.append(" ")
    parts.append(",".join(f"{escape_field_key(k)}={format_value(v)}" for k, v in fields.items()))
    if ts is not None:
        if isinstance(ts, bool) or not isinstance(ts, int):
            raise TypeError(f"timestamp must be an int, not {type(ts).__name__}")
        parts.append(f" {ts}")
    return "".join(parts)
