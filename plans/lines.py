"""Where things are in a plan file: line numbers for validation issues, excerpts for syntax
errors.

Validation works on decoded data and names places by location (``$.agents[2].tools[0]``);
this module maps a location back to the line of the file that wrote it. YAML keeps marks on
its nodes; JSON is scanned for the position of every key and value; TOML, which the decoder
gives no positions for, is scanned line by line for table headers and keys (a value inside
an inline table or a multi-line array maps to the line of its key). A location with no line
of its own gets the line of its closest ancestor that has one.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any, Final

import attrs
import yaml

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["excerpt", "line_finder", "location_parts"]

Part = int | str
Parts = tuple[Part, ...]

_LOCATION_PART: Final = re.compile(r"\[(\d+)\]|\[\"(.*?)\"\]|\.([^.\[]+)")
_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MAX_NODES: Final = 200_000  # YAML aliases can describe huge trees in a small file
_EXCERPT_WIDTH: Final = 100


def location_parts(location: str) -> Parts:
    """``$.agents[2]["a b"]`` as ``("agents", 2, "a b")``."""
    parts: list[Part] = []
    for index, quoted, name in _LOCATION_PART.findall(location.removeprefix("$")):
        parts.append(int(index) if index else quoted or name)
    return tuple(parts)


def line_finder(text: str, kind: str) -> Callable[[str], int | None]:
    """A function giving the 1-based line of a location in ``text`` (a ``toml``, ``yaml`` or
    ``json`` plan that decoded), or of its closest ancestor; ``None`` if nothing matches."""
    try:
        lines = {"yaml": _yaml_lines, "json": _json_lines}.get(kind, _toml_lines)(text)
    except (yaml.YAMLError, ValueError, RecursionError, IndexError):
        lines = {}

    def find(location: str) -> int | None:
        parts = location_parts(location)
        while parts:
            line = lines.get(parts)
            if line is not None:
                return line
            parts = parts[:-1]
        return None

    return find


def excerpt(text: str, line: int, column: int | None = None) -> str | None:
    """Line ``line`` of ``text`` with a caret under ``column`` (both 1-based), indented, as a
    compiler shows it; ``None`` if there is no such line."""
    rows = text.splitlines()
    if not 1 <= line <= len(rows):
        return None
    source = rows[line - 1].replace("\t", " ")
    start = 0
    if column is not None and column > _EXCERPT_WIDTH:
        start = column - _EXCERPT_WIDTH // 2
    shown = source[start : start + _EXCERPT_WIDTH]
    prefix = "…" if start else ""
    suffix = "…" if len(source) > start + _EXCERPT_WIDTH else ""
    number = f"{line:>5} | "
    result = f"{number}{prefix}{shown}{suffix}"
    if column is not None:
        caret = max(column - 1 - start, 0) + len(prefix)
        result += "\n" + " " * (len(number) - 2) + "| " + " " * caret + "^"
    return result


# -- YAML ----------------------------------------------------------------------------------------


def _yaml_lines(text: str) -> dict[Parts, int]:
    root = yaml.compose(text, Loader=_YAML_LOADER)
    lines: dict[Parts, int] = {}
    stack: list[tuple[Any, Parts]] = [(root, ())] if root is not None else []
    seen: set[int] = set()
    while stack and len(lines) < _MAX_NODES:
        node, parts = stack.pop()
        lines.setdefault(parts, node.start_mark.line + 1)
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    child = (*parts, key.value)
                    lines.setdefault(child, key.start_mark.line + 1)
                    stack.append((value, child))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append((item, (*parts, index)))
    return lines


# -- JSON ----------------------------------------------------------------------------------------

_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_SCALAR: Final = re.compile(r"[^\s,\]}]+")


def _json_lines(text: str) -> dict[Parts, int]:
    """Positions of every key and array item of a valid JSON document (iterative: no
    recursion limit)."""
    return _JsonScan(text).lines_of_parts()


@attrs.define
class _JsonScan:
    """One scan of a JSON document: where it is (position, line), the containers open (each
    frame: the parts of the container, is_object, next index for arrays), and the line of
    every key and item met so far."""

    text: str
    position: int = 0
    line: int = 1
    frames: list[list[Any]] = attrs.field(factory=list)
    lines: dict[Parts, int] = attrs.field(factory=dict)

    def lines_of_parts(self) -> dict[Parts, int]:
        expect_value_at: Parts | None = ()
        while True:
            self._skip_space()
            if self.position >= len(self.text):
                break
            if expect_value_at is not None:
                expect_value_at = self._value(expect_value_at)
            elif self.frames:
                expect_value_at = self._in_container(self.frames[-1])
            else:
                break
        return self.lines

    def _skip_space(self) -> None:
        text, length = self.text, len(self.text)
        while self.position < length and text[self.position] in " \t\r\n":
            if text[self.position] == "\n":
                self.line += 1
            self.position += 1

    def _value(self, parts: Parts) -> Parts | None:
        """Step over the value at ``parts`` (into it, for a container). Returns the parts
        of the value expected next: a non-empty array's first item."""
        self.lines.setdefault(parts, self.line)
        char = self.text[self.position]
        if char == "{":
            self.frames.append([parts, True, 0])
            self.position += 1
        elif char == "[":
            self.frames.append([parts, False, 0])
            self.position += 1
            self._skip_space()
            if self.position < len(self.text) and self.text[self.position] != "]":
                return (*parts, 0)
        elif char == '"':
            match = _JSON_STRING.match(self.text, self.position)
            if match is None:
                raise ValueError("unterminated string")
            self.line += match.group().count("\n")
            self.position = match.end()
        else:
            match = _JSON_SCALAR.match(self.text, self.position)
            if match is None:
                raise ValueError(f"unexpected {char!r}")
            self.position = match.end()
        return None

    def _in_container(self, frame: list[Any]) -> Parts | None:
        """Step over the next token inside the innermost container: its end, a comma, or
        an object's key. Returns the parts of the value expected next."""
        char = self.text[self.position]
        if char in "}]":
            self.frames.pop()
            self.position += 1
        elif char == ",":
            self.position += 1
            if not frame[1]:
                frame[2] += 1
                return (*frame[0], frame[2])
        elif char == '"' and frame[1]:
            match = _JSON_STRING.match(self.text, self.position)
            if match is None:
                raise ValueError("unterminated key")
            key = json.loads(match.group())
            key_line = self.line
            self.position = match.end()
            self._skip_space()
            if self.position >= len(self.text) or self.text[self.position] != ":":
                raise ValueError("expected ':'")
            self.position += 1
            child = (*frame[0], key)
            self.lines.setdefault(child, key_line)
            return child
        else:
            raise ValueError(f"unexpected {char!r}")
        return None


# -- TOML ----------------------------------------------------------------------------------------

_TOML_BARE_KEY: Final = r"[A-Za-z0-9_-]+"
_TOML_KEY: Final = rf"(?:{_TOML_BARE_KEY}|\"(?:[^\"\\]|\\.)*\"|'[^']*')"
_TOML_DOTTED: Final = rf"{_TOML_KEY}(?:\s*\.\s*{_TOML_KEY})*"
_TOML_TABLE: Final = re.compile(rf"^\s*\[\s*({_TOML_DOTTED})\s*\]\s*(?:#.*)?$")
_TOML_ARRAY_TABLE: Final = re.compile(rf"^\s*\[\[\s*({_TOML_DOTTED})\s*\]\]\s*(?:#.*)?$")
_TOML_ASSIGNMENT: Final = re.compile(rf"^\s*({_TOML_DOTTED})\s*=")
_TOML_KEY_PART: Final = re.compile(_TOML_KEY)


def _toml_keys(dotted: str) -> list[str]:
    keys = []
    for match in _TOML_KEY_PART.finditer(dotted):
        key = match.group()
        if key.startswith('"'):
            key = json.loads(key)
        elif key.startswith("'"):
            key = key[1:-1]
        keys.append(key)
    return keys


def _toml_lines(text: str) -> dict[Parts, int]:
    """The line of every table header and key of a TOML document that decoded, and of each
    item of an array written over several lines."""
    scan = _TomlScan()
    for number, raw in enumerate(text.splitlines(), start=1):
        scan.line(raw, number)
    return scan.lines


@attrs.define
class _TomlScan:
    """One scan of a TOML document, line by line: the line of every key met so far, the
    table that keys go in, the last index of each array of tables, and what is being skipped
    (a multi-line string, by its delimiter) or read (a multi-line array or inline table)."""

    lines: dict[Parts, int] = attrs.field(factory=dict)
    arrays: dict[Parts, int] = attrs.field(factory=dict)
    table: Parts = ()
    open_string: str | None = None
    value: _TomlValue | None = None

    def line(self, raw: str, number: int) -> None:
        if self.open_string is not None:
            if self.open_string in raw:
                self.open_string = None
        elif self.value is not None:
            self._read(self.value, raw, number)
        elif array := _TOML_ARRAY_TABLE.match(raw):
            self._array_table(_toml_keys(array.group(1)), number)
        elif header := _TOML_TABLE.match(raw):
            self.table = self._resolve(_toml_keys(header.group(1)))
            self.lines.setdefault(self.table, number)
        elif assignment := _TOML_ASSIGNMENT.match(raw):
            self._assignment(assignment, raw, number)

    def _array_table(self, keys: list[str], number: int) -> None:
        """``[[a.b]]``: a new entry of the array of tables ``a.b``."""
        path = (*self._resolve(keys[:-1]), keys[-1])
        self.arrays[path] = self.arrays.get(path, -1) + 1
        self.table = (*path, self.arrays[path])
        self.lines.setdefault(path, number)
        self.lines.setdefault(self.table, number)

    def _assignment(self, assignment: re.Match[str], raw: str, number: int) -> None:
        """``key = value``: the key's line, then its value read (or a string skipped) on."""
        path = (*self.table, *_toml_keys(assignment.group(1)))
        self.lines.setdefault(path, number)
        rest = raw[assignment.end() :]
        for delimiter in ('"""', "'''"):
            if rest.count(delimiter) == 1:
                self.open_string = delimiter
                return
        self._read(_TomlValue(path, self.lines), rest, number)

    def _read(self, value: _TomlValue, text: str, number: int) -> None:
        value.feed(text, number)
        self.value = None if value.done else value

    def _resolve(self, keys: list[str]) -> Parts:
        """A header's keys, each array of tables on the way replaced by its last entry."""
        parts: list[Part] = []
        for key in keys:
            parts.append(key)
            index = self.arrays.get(tuple(parts))
            if index is not None:
                parts.append(index)
        return tuple(parts)


class _TomlValue:
    """Reads one value (possibly over several lines), recording the line of each item of an
    array: ``tools = [`` then one entry per line gives each entry its own line."""

    def __init__(self, path: Parts, lines: dict[Parts, int]) -> None:
        self.path = path
        self.lines = lines
        self.depth = 0
        self.index = 0
        self.array = False
        self.item_started = False
        self.started = False
        self.done = False

    def feed(self, text: str, line: int) -> None:
        quote: str | None = None
        position = 0
        while position < len(text) and not self.done:
            char = text[position]
            position += 1
            if quote is not None:
                if char == "\\" and quote == '"':
                    position += 1
                elif char == quote:
                    quote = None
                continue
            if char.isspace():
                continue
            if char == "#":
                break
            if self.depth == 1 and self.array and char not in ",]}" and not self.item_started:
                self.lines.setdefault((*self.path, self.index), line)
                self.item_started = True
            if char in "[{":
                if self.depth == 0:
                    self.array = char == "["
                self.depth += 1
                self.started = True
            elif char in "]}":
                self.depth -= 1
                self.done = self.depth <= 0
            elif char == "," and self.depth == 1:
                self.index += 1
                self.item_started = False
            elif char in "\"'":
                quote = char
            if not self.started:
                self.done = True  # a scalar: one line
