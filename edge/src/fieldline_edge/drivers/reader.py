"""Sensors without code: a number taken from a file or from a command's output.

The text is turned into a value by, in this order of preference, a JSON pointer
(RFC 6901) into it, a regular expression (its first group, or the whole match),
or else the whole text; then ``value * scale + offset``.
"""

from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
from typing import Any, Optional, Sequence, Union

from fieldline_edge.drivers.base import DriverError, Sample, read_text

COMMAND_TIMEOUT_S = 5.0
#: Longest command output parsed.
MAX_OUTPUT_BYTES = 64 * 1024


class Extractor:
    """Text -> number, as configured; raises :class:`DriverError` saying what did not match."""

    def __init__(
        self,
        regex: Optional[str] = None,
        json_pointer: Optional[str] = None,
        scale: float = 1.0,
        offset: float = 0.0,
    ) -> None:
        if json_pointer is not None and json_pointer != "" and not json_pointer.startswith("/"):
            raise ValueError(f"a JSON pointer starts with '/', got {json_pointer!r}")
        self.regex = re.compile(regex) if regex is not None else None
        self.json_pointer = json_pointer
        self.scale = scale
        self.offset = offset

    def __call__(self, text: str, source: str) -> float:
        raw: Any
        if self.json_pointer is not None:
            try:
                doc = json.loads(text)
            except ValueError as exc:
                raise DriverError(f"{source}: not JSON ({exc})") from None
            raw = resolve_pointer(doc, self.json_pointer, source)
        elif self.regex is not None:
            m = self.regex.search(text)
            if m is None:
                raise DriverError(f"{source}: /{self.regex.pattern}/ does not match")
            raw = m.group(1) if self.regex.groups else m.group(0)
        else:
            raw = text.strip()
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise DriverError(f"{source}: {type(raw).__name__} is not a number")
        try:
            value = float(raw)
        except ValueError:
            raise DriverError(f"{source}: {str(raw)[:30]!r} is not a number") from None
        value = value * self.scale + self.offset
        if not math.isfinite(value):
            raise DriverError(f"{source}: non-finite value {value!r}")
        return value


def resolve_pointer(doc: Any, pointer: str, source: str = "document") -> Any:
    """The value at an RFC 6901 JSON pointer ("" is the whole document)."""
    node = doc
    if pointer == "":
        return node
    for token in pointer[1:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            raise DriverError(f"{source}: nothing at JSON pointer {pointer!r}")
    return node


class FileReader:
    """A number from a file (a sysfs attribute, a file another program writes)."""

    def __init__(self, name: str, path: str, extract: Extractor, unit: str = "") -> None:
        self.name = name
        self.path = path
        self.extract = extract
        self.unit = unit

    def read(self) -> list[Sample]:
        return [Sample(self.name, self.extract(read_text(self.path), self.path), self.unit)]


class CommandReader:
    """A number from a command's standard output; no shell, bounded in time.

    ``command`` is an argument list, or a string split like a shell would
    (``shlex``) but never run by one.
    """

    def __init__(
        self,
        name: str,
        command: Union[str, Sequence[str]],
        extract: Extractor,
        unit: str = "",
        timeout_s: float = COMMAND_TIMEOUT_S,
    ) -> None:
        self.name = name
        self.argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not self.argv:
            raise ValueError("the command is empty")
        self.extract = extract
        self.unit = unit
        self.timeout_s = timeout_s

    def read(self) -> list[Sample]:
        what = self.argv[0]
        try:
            proc = subprocess.run(
                self.argv,
                capture_output=True,
                timeout=self.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise DriverError(f"{what}: no result within {self.timeout_s:g} s") from None
        except OSError as exc:
            raise DriverError(f"cannot run {what}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            detail = f": {err[-1][:80]}" if err else ""
            raise DriverError(f"{what} exited with {proc.returncode}{detail}")
        text = proc.stdout[:MAX_OUTPUT_BYTES].decode("utf-8", "replace")
        return [Sample(self.name, self.extract(text, what), self.unit)]
