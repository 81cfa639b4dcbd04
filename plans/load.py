"""Plan files: TOML, YAML or JSON in, a validated ``Plan`` out.

Reading is defensive because a plan file is user input: the size is capped before anything
is decoded, the bytes must be UTF-8, syntax errors carry a line and column and show the
offending line, deep nesting is a syntax error rather than a crash, and YAML is read with the
safe loader (no Python tags). Then ``plans.validate`` reports every remaining problem at
once, each with the line of the file it is on (``plans.lines``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec
import yaml

from orchestrator.core.redaction import looks_secret

from .lines import excerpt, line_finder
from .validate import PlanIssue, PlanReport, check_plan

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from .model import Plan
    from .validate import ToolCheck

__all__ = ["MAX_PLAN_BYTES", "PLAN_SUFFIXES", "check_plan_file", "load_plan"]

MAX_PLAN_BYTES: Final = 1024 * 1024
PLAN_SUFFIXES: Final = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}

_BOM: Final = b"\xef\xbb\xbf"
_YAML_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_plan(
    path: str | os.PathLike[str],
    *,
    allowed_modules: Collection[str] | None = None,
    import_tools: bool = True,
    max_bytes: int = MAX_PLAN_BYTES,
    check_tool: ToolCheck | None = None,
) -> Plan:
    """Read, decode and validate a plan file. Warnings are logged (``plans`` logger).

    Args:
        path: a ``.toml``, ``.yaml``, ``.yml`` or ``.json`` file.
        allowed_modules: if given, tools may only come from these modules or their
            submodules; other tool modules are reported and never imported.
        import_tools: import tool modules to check their functions exist. Importing runs
            the modules' code: pass ``allowed_modules`` for plans you do not trust.
        max_bytes: the file size cap, checked before decoding.
        check_tool: also build every tool (see ``plans.check_plan``).

    Returns:
        The plan, free of errors.

    Raises:
        PlanError: the file cannot be read or the plan is invalid. ``issues`` holds every
            problem; ``str()`` is the ``error[CODE]: ...`` listing, one per line.
    """
    return check_plan_file(
        path,
        allowed_modules=allowed_modules,
        import_tools=import_tools,
        max_bytes=max_bytes,
        check_tool=check_tool,
    ).raise_for_errors()


def check_plan_file(
    path: str | os.PathLike[str],
    *,
    allowed_modules: Collection[str] | None = None,
    import_tools: bool = True,
    max_bytes: int = MAX_PLAN_BYTES,
    check_tool: ToolCheck | None = None,
) -> PlanReport:
    """Like ``load_plan``, but return every issue (warnings included) instead of raising.

    This is what ``orchestrator validate`` prints. It never raises for a bad file.
    """
    source = os.fspath(path)
    decoded = _read(Path(source), source, max_bytes)
    if isinstance(decoded, PlanIssue):
        return PlanReport(plan=None, issues=(decoded,))
    data, text, kind = decoded
    return check_plan(
        data,
        source=source,
        allowed_modules=allowed_modules,
        import_tools=import_tools,
        check_tool=check_tool,
        line_of=_lazy_lines(text, kind),
    )


def _lazy_lines(text: str, kind: str) -> Callable[[str], int | None]:
    """``plans.lines.line_finder``, built at the first issue (a clean plan never scans)."""
    finder: list[Callable[[str], int | None]] = []

    def line_of(location: str) -> int | None:
        if not finder:
            finder.append(line_finder(text, kind))
        return finder[0](location)

    return line_of


def _read(path: Path, source: str, max_bytes: int) -> tuple[Any, str, str] | PlanIssue:
    """The decoded content of ``path`` with its text and kind, or the one issue that stops
    reading it."""
    kind = PLAN_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        return _file_issue(
            "plan.format",
            source,
            f"{source!r} has an unknown extension",
            "use .toml, .yaml, .yml or .json",
        )
    try:
        with path.open("rb") as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_bytes:
                return _too_large(source, size, max_bytes)
            # A FIFO or a growing file can hold more than fstat said.
            data = file.read(max_bytes + 1)
    except FileNotFoundError:
        return _file_issue("plan.not_found", source, f"plan file {source!r} not found")
    except IsADirectoryError:
        return _file_issue(
            "plan.not_found", source, f"plan file {source!r} is a directory", "name a file"
        )
    except PermissionError:
        return _file_issue("plan.not_found", source, f"plan file {source!r}: permission denied")
    except OSError as exc:
        return _file_issue("plan.io", source, f"cannot read {source!r}: {exc.strerror or exc}")
    if len(data) > max_bytes:
        return _too_large(source, len(data), max_bytes)

    offset = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = data[offset:].decode("utf-8")
    except UnicodeDecodeError as exc:
        return _file_issue(
            "plan.encoding", source, f"{source!r} is not valid UTF-8 (byte {exc.start + offset})"
        )
    if not text.strip():
        return _file_issue("plan.empty", source, f"{source!r} is empty")
    try:
        if kind == "json":
            decoded = _decode_json(data[offset:], source, text)
        elif kind == "toml":
            decoded = _decode_toml(text, source)
        else:
            decoded = _decode_yaml(text, source)
    except RecursionError:
        return _file_issue("plan.syntax", source, f"{source!r} is malformed: nesting too deep")
    if isinstance(decoded, PlanIssue):
        return decoded
    return decoded, text, kind


def _decode_json(data: bytes, source: str, text: str) -> Any:
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        detail = str(exc).removeprefix("JSON is malformed: ")
        match = re.search(r" \(byte (\d+)\)$", detail)
        if match:
            offset = int(match.group(1))
            detail = detail[: match.start()]
        else:  # "Input data was truncated": the problem is at the end
            offset = len(data)
        line, column = _line_column(data, offset)
        detail = detail[:1].lower() + detail[1:]
        return _syntax_issue(
            source,
            f"{source!r} is malformed: {detail} (byte {offset}, line {line} col {column})",
            text,
            line,
            column,
        )


def _decode_toml(text: str, source: str) -> Any:
    try:
        return msgspec.toml.decode(text)
    except msgspec.DecodeError as exc:
        detail = str(exc)
        line = column = None
        match = re.search(r" \(at line (\d+), column (\d+)\)$", detail)
        if match:
            line, column = int(match.group(1)), int(match.group(2))
            detail = f"{detail[: match.start()]} (line {line} col {column})"
        elif " (at end of document)" in detail:
            detail = detail.replace(" (at end of document)", " (at the end)")
        detail = detail[:1].lower() + detail[1:]
        return _syntax_issue(source, f"{source!r} is malformed: {detail}", text, line, column)


def _decode_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_YAML_LOADER)  # a safe loader: no Python tags
    except yaml.MarkedYAMLError as exc:
        problem = exc.problem or exc.context or "invalid YAML"
        if "nesting depth" in problem:
            return _file_issue("plan.syntax", source, f"{source!r} is malformed: nesting too deep")
        mark = exc.problem_mark or exc.context_mark
        if mark is None:
            return _file_issue("plan.syntax", source, f"{source!r} is malformed: {problem}")
        line, column = mark.line + 1, mark.column + 1
        return _syntax_issue(
            source,
            f"{source!r} is malformed: {problem} (line {line} col {column})",
            text,
            line,
            column,
        )
    except yaml.YAMLError as exc:
        return _file_issue("plan.syntax", source, f"{source!r} is malformed: {exc}")


def _line_column(data: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of byte ``offset``."""
    offset = min(offset, len(data))
    line_start = data.rfind(b"\n", 0, offset) + 1
    column = len(data[line_start:offset].decode("utf-8", errors="replace")) + 1
    return data.count(b"\n", 0, offset) + 1, column


def _too_large(source: str, size: int, limit: int) -> PlanIssue:
    shown, cap = _size(size), _size(limit)
    if shown == cap:  # 1 MiB + 1 byte would read "1.0 MiB, limit 1.0 MiB"
        shown, cap = f"{size} bytes", f"{limit} bytes"
    return _file_issue("plan.too_large", source, f"{source!r} is {shown}, limit {cap}")


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f}".removesuffix(".0") + " MiB"
    if n >= 1024:
        return f"{n / 1024:.1f}".removesuffix(".0") + " KiB"
    return f"{n} bytes"


def _syntax_issue(
    source: str, message: str, text: str, line: int | None, column: int | None
) -> PlanIssue:
    """``plan.syntax`` with the offending line under it, unless that line looks like it holds
    a secret (a plan must never echo one)."""
    shown = None
    if line is not None:
        shown = excerpt(text, line, column)
        if shown is not None and looks_secret(shown):
            shown = f"{line:>5} | (not shown: the line looks like it holds a secret)"
    return PlanIssue(code="plan.syntax", message=message, path=source, line=line, excerpt=shown)


def _file_issue(code: str, source: str, message: str, suggestion: str | None = None) -> PlanIssue:
    return PlanIssue(code=code, message=message, path=source, suggestion=suggestion)
