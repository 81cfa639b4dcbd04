"""Regression tests for races and containment bugs in the actors and the supervisor."""

from __future__ import annotations

from typing import Any

import trio

from orchestrator.supervisor import Backoff, ChildSpec, Supervisor

NO_BACKOFF = Backoff(0)


class Crash(Exception):
    pass


# -- supervisor -----------------------------------------------------------------------------


def _child(name: str, history: list[tuple[str, str]], *, obey_stop: bool = True) -> Any:
    """A child that logs how each incarnation starts and ends; returns (start, crash, stop)."""
    wake: list[tuple[trio.Event, list[str]]] = []

    async def start(*, task_status: trio.TaskStatus[None]) -> None:
        event, action = trio.Event(), ["cancelled"]
        wake.append((event, action))
        history.append(("start", name))
        task_status.started()
        try:
            await event.wait()
        finally:
            history.append((action[0], name))
        if action[0] == "crash":
            raise Crash(name)

    def act(what: str) -> None:
        event, action = wake[-1]
        action[0] = what
        event.set()

    def stop() -> None:
        if obey_stop:
            act("stop")

    return start, lambda: act("crash"), stop


async def test_a_temporary_child_that_dies_during_a_group_restart_is_not_restarted(
    autojump_clock,
):
    """one_for_all: a temporary sibling that exits while the supervisor is still stopping
    the group (here: waiting out another sibling's grace) is forgotten, never restarted."""
    history: list[tuple[str, str]] = []
    a_start, a_crash, a_stop = _child("a", history)
    b_start, b_crash, b_stop = _child("b", history)
    c_start, _, c_stop = _child("c", history, obey_stop=False)
    sup = Supervisor(
        "sup",
        [
            ChildSpec("a", a_start, stop=a_stop),
            ChildSpec("b", b_start, restart="temporary", stop=b_stop),
            ChildSpec("c", c_start, shutdown_grace=2, stop=c_stop),
        ],
        strategy="one_for_all",
        backoff=NO_BACKOFF,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        a_crash()
        await trio.sleep(1)  # the supervisor is waiting for c to stop
        b_crash()
        await trio.sleep(10)
        assert ("a", "c") == tuple(child.name for child in sup.statistics().children)
        sup.stop()
    assert [
        ("crash", "a"),
        ("crash", "b"),
        ("cancelled", "c"),
        ("start", "a"),
        ("start", "c"),
        ("cancelled", "c"),
        ("stop", "a"),
    ] == history
