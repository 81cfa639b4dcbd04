"""Shared benchmark helpers: a server subprocess, CPU pinning, statistics, machine info."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent


def fc_script(deltas: int = 6, text_deltas: int = 50, calls: int = 20) -> dict[str, Any]:
    """A rollout: ``calls`` function-call turns (12 events each with 6 argument deltas),
    then a text answer of ``text_deltas`` deltas (58 events)."""
    call = {
        "function_calls": [
            {"name": "lookup", "arguments": {"city": "Lisbon", "day": 3}, "deltas": deltas}
        ]
    }
    text = {"deltas": [f"w{i} " for i in range(text_deltas)]}
    return {"turns": [call] * calls + [text], "on_exhausted": "cycle"}


def cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return list(range(os.cpu_count() or 1))


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


@contextlib.contextmanager
def server_process(
    *args: str, cpu: int | None = None, root: Path = ROOT
) -> Iterator[dict[str, str]]:
    """Run ``orchestrator serve --port 0 ...`` in its own process; yield its url/token.

    ``root`` is the source tree the server is imported from (``python -m`` puts the working
    directory first on the path): another checkout, e.g. ``git archive`` of an older commit,
    runs that version of the server for before/after comparisons.
    """
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", "0", *args]
    preexec = (lambda: pin(cpu)) if cpu is not None else None
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, preexec_fn=preexec, cwd=root
    )
    info: dict[str, str] = {}
    try:
        assert process.stdout is not None
        while len(info) < 3:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited with {process.wait()}")
            key, _, value = line.strip().partition(" ")
            info[key] = value
        yield {"url": info["serving"], "base_url": info["base_url"], "token": info["token"]}
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def script_file(data: dict[str, Any]) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(data, handle)
    return handle.name


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def machine() -> str:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"{len(cpus())} CPUs available ({model or platform.machine()})"
    )
