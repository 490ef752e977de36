"""TOML for the agent's configuration file, on every Python the agent supports.

:func:`loads` uses :mod:`tomllib` (Python 3.11+), else ``tomli`` if it happens to
be installed, else the small parser here. That parser reads the part of TOML a
configuration file needs: tables, arrays of tables, dotted and quoted keys,
basic and literal strings (one line), integers (decimal, hex, octal, binary),
floats, booleans, arrays and inline tables. Anything else (dates, multi-line
strings) is refused with its line number, never misread.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional

_loads: Optional[Callable[[str], dict[str, Any]]]
try:  # pragma: no cover - which branch runs depends on the Python version
    import tomllib

    _loads = tomllib.loads
    TOMLError: tuple[type[Exception], ...] = (tomllib.TOMLDecodeError,)
except ImportError:  # pragma: no cover
    try:
        import tomli  # type: ignore[import-not-found,unused-ignore]

        _loads = tomli.loads
        TOMLError = (tomli.TOMLDecodeError,)
    except ImportError:
        _loads = None
        TOMLError = ()


class TOMLSubsetError(ValueError):
    """The text is not TOML this parser reads; the message names the line."""


def loads(text: str) -> dict[str, Any]:
    """Parse TOML text; raise ``ValueError`` (with the line) if it is not valid."""
    if _loads is not None:
        try:
            return _loads(text)
        except TOMLError as exc:
            raise ValueError(str(exc)) from None
    return parse_subset(text)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INT = re.compile(r"[+-]?(0|[1-9](_?[0-9])*)\Z")
_PREFIXED = {"0x": (16, "0-9a-fA-F"), "0o": (8, "0-7"), "0b": (2, "01")}
_FLOAT = re.compile(
    r"[+-]?(0|[1-9](_?[0-9])*)((\.[0-9](_?[0-9])*)([eE][+-]?[0-9](_?[0-9])*)?"
    r"|[eE][+-]?[0-9](_?[0-9])*)\Z"
)
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def parse_subset(text: str) -> dict[str, Any]:
    """The standard-library-only parser (see the module docstring)."""
    return _Parser(text).document()


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text.replace("\r\n", "\n")
        self.i = 0
        self.root: dict[str, Any] = {}
        self.defined: set[tuple[str, ...]] = set()

    # -- helpers
    def line(self) -> int:
        return self.s.count("\n", 0, self.i) + 1

    def fail(self, msg: str) -> TOMLSubsetError:
        return TOMLSubsetError(f"line {self.line()}: {msg}")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.i += 1

    def skip_comment(self) -> None:
        if self.peek() == "#":
            end = self.s.find("\n", self.i)
            self.i = len(self.s) if end < 0 else end

    def skip_blank(self) -> None:
        """Whitespace, newlines and comments (inside arrays)."""
        while True:
            self.skip_ws()
            self.skip_comment()
            if self.peek() == "\n":
                self.i += 1
            else:
                return

    def end_of_line(self) -> None:
        self.skip_ws()
        self.skip_comment()
        if self.peek() not in ("\n", ""):
            raise self.fail(f"unexpected {self.peek()!r} after the value")
        if self.peek() == "\n":
            self.i += 1

    # -- structure
    def document(self) -> dict[str, Any]:
        current = self.root
        while True:
            self.skip_blank()
            if not self.peek():
                return self.root
            if self.s.startswith("[[", self.i):
                self.i += 2
                path = self.key_path("]]")
                current = self.array_table(path)
            elif self.peek() == "[":
                self.i += 1
                path = self.key_path("]")
                current = self.table(path)
            else:
                path = self.key_path("=")
                value = self.value()
                self.assign(current, path, value)
            self.end_of_line()

    def key_path(self, terminator: str) -> tuple[str, ...]:
        parts = []
        while True:
            self.skip_ws()
            parts.append(self.key())
            self.skip_ws()
            if self.peek() == ".":
                self.i += 1
                continue
            if not self.s.startswith(terminator, self.i):
                raise self.fail(f"expected {terminator!r} after key {'.'.join(parts)!r}")
            self.i += len(terminator)
            self.skip_ws()
            return tuple(parts)

    def key(self) -> str:
        c = self.peek()
        if c == '"':
            return self.basic_string()
        if c == "'":
            return self.literal_string()
        m = _BARE_KEY.match(self.s, self.i)
        if m is None:
            raise self.fail("expected a key")
        self.i = m.end()
        return m.group(0)

    def descend(self, path: tuple[str, ...]) -> dict[str, Any]:
        node = self.root
        for k in path:
            child = node.setdefault(k, {})
            if isinstance(child, list):
                child = child[-1]
            if not isinstance(child, dict):
                raise self.fail(f"{'.'.join(path)}: {k!r} is already a value")
            node = child
        return node

    def table(self, path: tuple[str, ...]) -> dict[str, Any]:
        if path in self.defined:
            raise self.fail(f"table [{'.'.join(path)}] is defined twice")
        self.defined.add(path)
        return self.descend(path)

    def array_table(self, path: tuple[str, ...]) -> dict[str, Any]:
        parent = self.descend(path[:-1])
        arr = parent.setdefault(path[-1], [])
        if not isinstance(arr, list):
            raise self.fail(f"{'.'.join(path)} is not an array of tables")
        table: dict[str, Any] = {}
        arr.append(table)
        return table

    def assign(self, table: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
        for k in path[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise self.fail(f"{'.'.join(path)}: {k!r} is already a value")
        if path[-1] in table:
            raise self.fail(f"key {'.'.join(path)!r} is defined twice")
        table[path[-1]] = value

    # -- values
    def value(self) -> Any:
        self.skip_ws()
        c = self.peek()
        if self.s.startswith('"""', self.i) or self.s.startswith("'''", self.i):
            raise self.fail("multi-line strings are not supported here; use one line")
        if c == '"':
            return self.basic_string()
        if c == "'":
            return self.literal_string()
        if c == "[":
            return self.array()
        if c == "{":
            return self.inline_table()
        m = re.compile(r"[^\s,\]\}#]+").match(self.s, self.i)
        if m is None:
            raise self.fail("expected a value")
        self.i = m.end()
        return self.scalar(m.group(0))

    def scalar(self, tok: str) -> Any:
        if tok == "true":
            return True
        if tok == "false":
            return False
        if _INT.match(tok):
            return int(tok.replace("_", ""))
        base = _PREFIXED.get(tok[:2])
        if base is not None and re.fullmatch(rf"[{base[1]}](_?[{base[1]}])*", tok[2:]):
            return int(tok[2:].replace("_", ""), base[0])
        if _FLOAT.match(tok):
            return float(tok.replace("_", ""))
        if tok.lstrip("+-") in ("inf", "nan"):
            return float(tok)
        raise self.fail(f"{tok!r} is not a value this parser reads (dates are not supported)")

    def basic_string(self) -> str:
        self.i += 1
        out: list[str] = []
        while True:
            c = self.peek()
            if c in ("", "\n"):
                raise self.fail("unterminated string")
            self.i += 1
            if c == '"':
                return "".join(out)
            if c != "\\":
                out.append(c)
                continue
            e = self.peek()
            self.i += 1
            if e in _ESCAPES:
                out.append(_ESCAPES[e])
            elif e in ("u", "U"):
                n = 4 if e == "u" else 8
                digits = self.s[self.i : self.i + n]
                if not re.fullmatch(rf"[0-9a-fA-F]{{{n}}}", digits):
                    raise self.fail(f"bad \\{e} escape")
                out.append(chr(int(digits, 16)))
                self.i += n
            else:
                raise self.fail(f"unknown escape \\{e}")

    def literal_string(self) -> str:
        end = self.s.find("'", self.i + 1)
        nl = self.s.find("\n", self.i + 1)
        if end < 0 or (0 <= nl < end):
            raise self.fail("unterminated string")
        text = self.s[self.i + 1 : end]
        self.i = end + 1
        return text

    def array(self) -> list[Any]:
        self.i += 1
        items: list[Any] = []
        while True:
            self.skip_blank()
            if self.peek() == "]":
                self.i += 1
                return items
            items.append(self.value())
            self.skip_blank()
            if self.peek() == ",":
                self.i += 1
            elif self.peek() != "]":
                raise self.fail("expected ',' or ']' in an array")

    def inline_table(self) -> dict[str, Any]:
        self.i += 1
        table: dict[str, Any] = {}
        self.skip_ws()
        if self.peek() == "}":
            self.i += 1
            return table
        while True:
            path = self.key_path("=")
            self.assign(table, path, self.value())
            self.skip_ws()
            if self.peek() == "}":
                self.i += 1
                return table
            if self.peek() != ",":
                raise self.fail("expected ',' or '}' in an inline table")
            self.i += 1
            self.skip_ws()
