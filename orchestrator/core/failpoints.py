"""Named crash points: kill this process at the n-th time it passes a point, for crash tests.

``ORCHESTRATOR_CRASH_AT=turn_journaled:3`` makes the process SIGKILL itself the third time it
passes :func:`crash_point` ``("turn_journaled")``; several points may be given, separated by
commas. Without the variable every call is one comparison against ``None``, so the points
stay in production code where the crash tests need them (FoundationDB's "buggify", the
failpoints of TiKV): a kill at a named moment is deterministic where a kill after a random
delay is not.

The points, in the order a turn passes them (see
``docs/architecture.md#how-a-durable-job-journals-a-turn``):

``job_accepted``       the job's first journal transaction committed
``request_sent``       a ``response.create`` left the socket
``mid_stream``         a server event of a turn arrived (counted per event)
``response_completed`` a turn's terminal event arrived, before it is journaled
``turn_journaled``     a turn's journal transaction committed (writer thread)
``before_tool``        a tool's "started" mark is durable, the tool is about to run
``during_tool``        inside a tool (test tools call it after their side effect)
``tool_done``          a tool returned, before its result is journaled
``result_journaled``   a tool result's journal transaction committed (writer thread)
``journal_write``      inside a journal transaction, before its commit (writer thread)
``rotation``           a standby socket is open during a planned rotation
``step_boundary``      a step finished and was journaled, the next ones not yet started
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Final

__all__ = ["CRASH_ENV", "POINTS", "crash_point"]

CRASH_ENV: Final = "ORCHESTRATOR_CRASH_AT"
POINTS: Final = frozenset(
    {
        "job_accepted",
        "request_sent",
        "mid_stream",
        "response_completed",
        "turn_journaled",
        "before_tool",
        "during_tool",
        "tool_done",
        "result_journaled",
        "journal_write",
        "rotation",
        "step_boundary",
    }
)


def _parse(spec: str | None) -> dict[str, int] | None:
    if not spec:
        return None
    targets: dict[str, int] = {}
    for part in spec.split(","):
        name, _, count = part.strip().partition(":")
        if name not in POINTS:
            raise ValueError(f"{CRASH_ENV}: unknown crash point {name!r}")
        targets[name] = int(count or "1")
    return targets


_targets: Final = _parse(os.environ.get(CRASH_ENV))
_passes: dict[str, int] = {}
_lock: Final = threading.Lock()  # the journal's writer thread passes points too


def crash_point(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and this is its n-th pass."""
    if _targets is None:
        return
    target = _targets.get(name)
    if target is None:
        return
    with _lock:
        count = _passes[name] = _passes.get(name, 0) + 1
    if count == target:
        os.kill(os.getpid(), signal.SIGKILL)
