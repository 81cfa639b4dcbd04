"""Child processes the runtime owns: finding them, and stopping them with a grace period.

Two owners use this module. A tool call owns the process groups its children lead
(``actors.tools.run_process`` and friends put each child in a group of its own): when the
call ends, :func:`stop_process_groups` sends the groups SIGTERM, then SIGKILL after a grace.
``orchestrator run`` owns its whole process: it becomes a *child subreaper*
(:func:`become_subreaper`, Linux), so that a descendant orphaned by its parent is
re-parented to it rather than to init, and at exit :func:`stop_descendants` stops every
descendant still alive, whichever way a tool started it.

Descendants are found in ``/proc`` (Linux). Elsewhere :func:`descendants` finds none and
group liveness falls back to ``killpg(pgid, 0)``. Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "POLL_INTERVAL",
    "become_subreaper",
    "descendants",
    "group_alive",
    "signal_groups",
    "stop_descendants",
    "stop_process_groups",
]

# How often a stop checks whether the processes it signalled are gone. There is no
# notification for a process that is not our child (or is another thread's to reap).
POLL_INTERVAL: Final = 0.02
# How long a forced stop waits for SIGKILL to take effect before it gives up.
KILL_WAIT: Final = 1.0
_PR_SET_CHILD_SUBREAPER: Final = 36
_PROC: Final = "/proc"


def _stat(pid: str | int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data.rpartition(b")")[2].split()
    if len(fields) < 3:  # pragma: no cover - the kernel always writes them
        return None
    return fields[0].decode(), int(fields[1]), int(fields[2])


def _table() -> dict[int, tuple[str, int, int]]:
    table = {}
    try:
        entries = os.listdir(_PROC)
    except OSError:
        return {}
    for entry in entries:
        if entry.isdigit():
            stat = _stat(entry)
            if stat is not None:
                table[int(entry)] = stat
    return table


def descendants(root: int | None = None) -> set[int]:
    """Live (not zombie) descendants of ``root`` (default: this process). Linux only."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    table = _table()
    for pid, (_state, parent, _group) in table.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return {pid for pid in found if table[pid][0] not in ("Z", "X")}


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` still has a member that is not a zombie."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - the pgid was reused by another user
        return False
    if not os.path.isdir(_PROC):  # pragma: no cover - not Linux
        return True
    return any(
        group == pgid and state not in ("Z", "X") for state, _parent, group in _table().values()
    )


def _send(pids: Iterable[int], signum: int, *, group: bool) -> None:
    send = os.killpg if group else os.kill
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signum)


def signal_groups(groups: Iterable[int], signum: int) -> None:
    """Send ``signum`` to every process group in ``groups``; gone groups are skipped."""
    _send(groups, signum, group=True)


def _terminate(targets: set[int], *, group: bool) -> None:
    _send(targets, signal.SIGTERM, group=group)
    # A stopped process acts on SIGTERM only once continued.
    _send(targets, signal.SIGCONT, group=group)


async def stop_process_groups(groups: Iterable[int], grace: float) -> None:
    """SIGTERM the groups, wait up to ``grace`` seconds for them to end, then SIGKILL.

    Returns at once when every group is already gone. Not shielded: the caller decides.
    """
    remaining = {pgid for pgid in groups if group_alive(pgid)}
    if not remaining:
        await trio.lowlevel.checkpoint()
        return
    _terminate(remaining, group=True)
    with trio.move_on_after(grace):
        while remaining:
            await trio.sleep(POLL_INTERVAL)
            remaining = {pgid for pgid in remaining if group_alive(pgid)}
    if remaining:
        signal_groups(remaining, signal.SIGKILL)


def stop_descendants(grace: float, *, spare: Iterable[int] = ()) -> set[int]:
    """Stop every live descendant of this process but ``spare``: SIGTERM, up to ``grace``
    seconds, then SIGKILL, and wait (at most a second) for them to be gone. Blocking: for
    the CLI on its way out. Linux only (elsewhere nothing is found).

    Returns:
        The pids that were signalled.
    """
    spared = set(spare)
    signalled: set[int] = set()
    deadline = time.monotonic() + grace
    while True:
        alive = descendants() - spared
        if not alive:
            return signalled
        if time.monotonic() >= deadline:
            break
        _terminate(alive - signalled, group=False)
        signalled |= alive
        time.sleep(POLL_INTERVAL)
    deadline = time.monotonic() + KILL_WAIT
    while alive and time.monotonic() < deadline:
        _send(alive, signal.SIGKILL, group=False)
        signalled |= alive
        time.sleep(POLL_INTERVAL)
        alive = descendants() - spared
    return signalled


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process instead of init (Linux).

    Call it only in a process the caller owns (the ``orchestrator`` command): it changes
    which process reaps orphans. Returns whether it took effect.
    """
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return False
