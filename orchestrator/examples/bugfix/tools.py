"""Tools of the bug fixer: read, test and patch the small package bundled in ``sample/``.

Nothing here writes to the bundled package. Paths are confined to it with
``actors.tools.confine`` (``../`` and absolute paths outside it raise
``PathOutsideWorkspace``, which the tool executor reports to the model as
``path_outside_workspace``). The tests run in a subprocess started with
``actors.tools.run_process`` (in a process group the runtime stops when the call ends, so
Ctrl-C or a deadline leaves no test process behind), on a scratch copy of the package, with
a deadline and an environment that holds no credentials; ``propose_patch`` applies its edit
to another scratch copy and runs the tests there, so the model learns whether its fix works
while the package stays as shipped.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import trio

from actors.tools import confine, run_process, tool

__all__ = [
    "SAMPLE",
    "TEST_COMMAND",
    "TEST_DEADLINE",
    "list_files",
    "propose_patch",
    "read_file",
    "run_tests",
]

SAMPLE: Final = Path(__file__).resolve().with_name("sample")
# The standard library's runner: the sample needs nothing installed. -B: no bytecode files;
# -s: no user site-packages. The tests live in calc/tests and import calc relatively.
TEST_COMMAND: Final = (
    *(sys.executable, "-B", "-s", "-m", "unittest"),
    *("discover", "--start-directory", "calc", "--top-level-directory", "."),
)
TEST_DEADLINE: Final = 60.0
MAX_FILE_BYTES: Final = 64 * 1024
MAX_FAILURES: Final = 10

_SKIP: Final = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")
# What a file name looks like when a model passes a sentence instead of a path.
_MENTIONED_PATH: Final = re.compile(r"[\w./-]+\.(?:py|md|toml|cfg|txt)\b")
_RAN: Final = re.compile(r"^Ran (\d+) tests? in ([\d.]+)s$", re.MULTILINE)
_VERDICT: Final = re.compile(r"^(OK|FAILED)(?: \((.*)\))?$", re.MULTILINE)
_HEADER: Final = re.compile(r"^(FAIL|ERROR): (\w+) \(([\w.]+)\)", re.MULTILINE)
_FRAME: Final = re.compile(
    r'^[ \t]*File "(.+?)", line (\d+), in (\S+)(?:\n[ \t]+(.*))?$', re.MULTILINE
)
_SEPARATOR: Final = re.compile(r"^(?:=+|-+)$", re.MULTILINE)


# -- reading -----------------------------------------------------------------------------------


def _files() -> list[str]:
    """The package's files, relative POSIX paths, sorted; caches and dotfiles left out."""
    found = []
    for path in SAMPLE.rglob("*"):
        relative = path.relative_to(SAMPLE)
        if path.is_file() and not any(
            part.startswith(".") or part == "__pycache__" for part in relative.parts
        ):
            found.append(relative.as_posix())
    return sorted(found)


def _resolve(path: str) -> Path | None:
    """The package file ``path`` names, or that a longer text mentions; None if neither.

    Raises:
        PathOutsideWorkspace: ``path`` escapes the package.
    """
    known = set(_files())
    target = confine(path, SAMPLE)
    if _relative_path(target) in known:
        return target
    for mentioned in _MENTIONED_PATH.findall(path):
        candidate = mentioned.removeprefix("./")
        if candidate in known:
            return confine(candidate, SAMPLE)
    return None


def _relative_path(target: Path) -> str:
    """``target`` (resolved, inside the package) relative to the package root."""
    return target.relative_to(SAMPLE).as_posix()


def _not_found(path: str) -> dict[str, Any]:
    files = _files()
    close = difflib.get_close_matches(path.strip(), files, n=1, cutoff=0.5)
    result: dict[str, Any] = {"error": "not_found", "path": path[:200], "files": files}
    if close:
        result["did_you_mean"] = close[0]
    return result


def _read_text(target: Path) -> str | dict[str, Any]:
    relative = _relative_path(target)
    data = target.read_bytes()
    if len(data) > MAX_FILE_BYTES:
        return {"error": "too_large", "path": relative, "bytes": len(data)}
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return {"error": "not_text", "path": relative}


@tool(side_effect="read_only", timeout=10)
def list_files() -> dict[str, Any]:
    """List the files of the package under repair, as paths relative to its root."""
    return {"package": "calc", "files": _files()}


@tool(side_effect="read_only", timeout=10)
def read_file(path: str) -> dict[str, Any]:
    """Read one text file of the package under repair.

    Args:
        path: the file, relative to the package root as list_files shows it, e.g.
            calc/stats.py. A longer text that mentions such a file is accepted too.
    """
    target = _resolve(path)
    if target is None:
        return _not_found(path)
    text = _read_text(target)
    if isinstance(text, dict):
        return text
    relative = _relative_path(target)
    return {"path": relative, "lines": len(text.splitlines()), "content": text}


# -- testing -----------------------------------------------------------------------------------


def _copy_sample(scratch: str) -> Path:
    """A copy of the package in the directory ``scratch``; returns its root, resolved."""
    root = Path(scratch).resolve() / "calc-sample"
    shutil.copytree(SAMPLE, root, ignore=_SKIP)
    return root


def _test_environment() -> dict[str, str]:
    """A minimal environment for the test process: an allow-list, so no API key leaks in."""
    env = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONIOENCODING": "utf-8", "PYTHONHASHSEED": "0"}
    for name in ("PATH", "SYSTEMROOT", "TMPDIR", "TEMP", "TMP"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


async def _run_suite(root: Path) -> dict[str, Any]:
    """Run the tests of the package copy at ``root``; a report, never an exception."""
    started = time.monotonic()
    with trio.move_on_after(TEST_DEADLINE) as scope:
        completed = await run_process(
            TEST_COMMAND,
            cwd=root,
            env=_test_environment(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    if scope.cancelled_caught:
        return {"ok": False, "timed_out": True, "note": f"no result within {TEST_DEADLINE:g} s"}
    output = (completed.stderr + completed.stdout).decode("utf-8", errors="replace")
    report = parse_unittest_output(output, root)
    report["exit_code"] = completed.returncode
    report["duration_s"] = round(time.monotonic() - started, 2)
    return report


def parse_unittest_output(output: str, root: Path) -> dict[str, Any]:
    """Counts and failures from the text ``python -m unittest`` prints.

    File names under ``root`` are shown relative to it; each failure keeps the test id, the
    kind (FAIL or ERROR), the exception's last line and the deepest frame in the package.
    """
    ran = _RAN.search(output)
    verdict = _VERDICT.search(output)
    counts = dict.fromkeys(("failures", "errors", "skipped", "expected failures"), 0)
    if verdict and verdict.group(2):
        for part in verdict.group(2).split(", "):
            key, _, value = part.partition("=")
            if key in counts and value.isdigit():
                counts[key] = int(value)
    total = int(ran.group(1)) if ran else 0
    failed, errors, skipped = counts["failures"], counts["errors"], counts["skipped"]
    report: dict[str, Any] = {
        "ok": bool(verdict and verdict.group(1) == "OK" and total > 0),
        "ran": total,
        "passed": max(0, total - failed - errors - skipped),
        "failed": failed,
        "errors": errors,
        "skipped": skipped,
        "failures": _failures(output, root),
    }
    if not ran:  # the runner itself broke (an import error before any test, a crash)
        report["output"] = _relative(output, root)[-1500:]
    return report


def _failures(output: str, root: Path) -> list[dict[str, str]]:
    failures = []
    headers = list(_HEADER.finditer(output))
    for index, header in enumerate(headers[:MAX_FAILURES]):
        end = headers[index + 1].start() if index + 1 < len(headers) else len(output)
        # header, [docstring], ------, traceback, then ====== (or ------ before "Ran").
        parts = _SEPARATOR.split(output[header.end() : end])
        block = parts[1] if len(parts) > 1 else parts[0]
        failure = {"test": header.group(3), "kind": header.group(1)}
        if error := _exception(block):
            failure["error"] = error
        where = _deepest_frame(block, root)
        if where is not None:
            failure["where"] = where
        failures.append(failure)
    return failures


def _exception(traceback: str) -> str:
    """The exception a traceback ends with: its first unindented line and what follows."""
    lines = traceback.strip().splitlines()
    for index, line in enumerate(lines):
        if line and not line[0].isspace() and not line.startswith("Traceback"):
            return " ".join(part.strip() for part in lines[index:] if part.strip())[:300]
    return ""


def _deepest_frame(block: str, root: Path) -> str | None:
    """``file:line: code`` of the deepest frame in the package's code, else in its tests."""
    frames = []
    for frame in _FRAME.finditer(block):
        file = Path(frame.group(1))
        if file.is_relative_to(root):
            relative = file.relative_to(root).as_posix()
            frames.append((relative, frame.group(2), (frame.group(4) or "").strip()))
    if not frames:
        return None
    in_code = [frame for frame in frames if "tests" not in Path(frame[0]).parts]
    name, line, code = (in_code or frames)[-1]
    return f"{name}:{line}: {code}" if code else f"{name}:{line}"


def _relative(text: str, root: Path) -> str:
    return text.replace(str(root) + os.sep, "").replace(str(root), ".")


@tool(side_effect="read_only", timeout=TEST_DEADLINE + 15)
async def run_tests() -> dict[str, Any]:
    """Run the package's test suite and report pass/fail counts and a summary of each failure.

    The tests run on a scratch copy of the package in a separate process.
    """
    with tempfile.TemporaryDirectory(prefix="bugfix-tests-") as scratch:
        root = await trio.to_thread.run_sync(_copy_sample, scratch)
        return await _run_suite(root)


# -- patching ----------------------------------------------------------------------------------


def unified_diff(before: str, after: str, path: str) -> str:
    """The unified diff from ``before`` to ``after`` for ``path`` (``a/`` and ``b/`` prefixes,
    as ``git apply`` and ``patch -p1`` expect)."""
    lines = difflib.unified_diff(
        before.splitlines(keepends=True),
        after.splitlines(keepends=True),
        fromfile=f"a/{path}",
        tofile=f"b/{path}",
    )
    out = []
    for line in lines:
        out.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(out)


def _edit(path: str, old: str, new: str) -> tuple[str, str, str] | dict[str, Any]:
    """(relative path, text before, text after) of the edit, or why it cannot be made."""
    target = _resolve(path)
    if target is None:
        return _not_found(path)
    relative = _relative_path(target)
    before = _read_text(target)
    if isinstance(before, dict):
        return before
    if not old:
        return {"error": "empty_old", "path": relative, "message": "old must not be empty"}
    count = before.count(old)
    if count != 1:
        result: dict[str, Any] = {"error": "old_not_unique" if count else "old_not_found"}
        result["path"] = relative
        if count:
            result["message"] = f"old occurs {count} times; include more lines around it"
        else:
            result["message"] = "old does not occur in the file; copy it exactly from read_file"
            first = next((line for line in old.splitlines() if line.strip()), "")
            close = difflib.get_close_matches(first, before.splitlines(), n=1, cutoff=0.6)
            if close:
                result["closest_line"] = close[0]
        return result
    after = before.replace(old, new)
    if after == before:
        return {"error": "no_change", "path": relative, "message": "old and new are the same"}
    if relative.endswith(".py"):
        try:
            compile(after, relative, "exec")
        except SyntaxError as exc:
            return {
                "error": "syntax_error",
                "path": relative,
                "message": f"the patched file does not parse: {exc.msg} (line {exc.lineno})",
            }
    return relative, before, after


def _write_patched(scratch: str, relative: str, after: str) -> Path:
    root = _copy_sample(scratch)
    (root / relative).write_text(after, encoding="utf-8")
    return root


@tool(side_effect="read_only", timeout=TEST_DEADLINE + 15)
async def propose_patch(path: str, old: str, new: str) -> dict[str, Any]:
    """Propose a fix: replace one exact snippet of a file. Returns the unified diff and the
    test results with the fix applied to a scratch copy; the package itself is not changed.

    Args:
        path: the file to change, relative to the package root, e.g. calc/stats.py.
        old: the exact text to replace, copied from read_file; it must occur exactly once.
        new: the text to put in its place.
    """
    edit = await trio.to_thread.run_sync(_edit, path, old, new)
    if isinstance(edit, dict):
        return {"ok": False, **edit}
    relative, before, after = edit
    with tempfile.TemporaryDirectory(prefix="bugfix-patch-") as scratch:
        root = await trio.to_thread.run_sync(_write_patched, scratch, relative, after)
        tests = await _run_suite(root)
    return {
        "ok": True,
        "path": relative,
        "diff": unified_diff(before, after, relative),
        "fixed": tests["ok"],
        "tests": tests,
    }
