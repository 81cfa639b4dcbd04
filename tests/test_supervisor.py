"""Supervisor semantics, case by case (docs/faults.md#supervision; cases after OTP's
supervisor_SUITE)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import pytest
import trio
import trio.testing
from loguru import logger

from actors.base import Actor
from orchestrator.core.observe import (
    ActorEscalated,
    ActorFailed,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    EventBus,
    RuntimeEvent,
)
from orchestrator.core.router import Router
from orchestrator.core.supervisor import (
    Backoff,
    ChildSpec,
    ChildStatistics,
    RestartType,
    Supervisor,
    SupervisorStatistics,
)
from orchestrator.errors import RestartLimitReached

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

NO_BACKOFF = Backoff(0)


class Crash(Exception):
    pass


@attrs.define(eq=False)
class Child:
    """A child the test drives: crash(), exit(), failing starts; logs to a shared history.

    History entries are (what, name, time): "start", "start failed", and how an
    incarnation ended: "crash", "exit", "stop" (obeyed the stop request) or "cancelled".
    """

    name: str
    history: list[tuple[str, str, float]]
    fail_starts: float = 0
    obey_stop: bool = True
    starts: int = 0
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _action: str = ""
    _started: trio.Event = attrs.field(factory=trio.Event)

    async def start(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if self.fail_starts > 0:
            self.fail_starts -= 1
            self._log("start failed")
            raise Crash(f"{self.name} failed to start")
        self._wake, self._action = trio.Event(), ""
        self._log("start")
        task_status.started()
        self.starts += 1
        self._started.set()
        self._started = trio.Event()
        how = "cancelled"
        try:
            await self._wake.wait()
            how = self._action
        finally:
            self._log(how)
        if how == "crash":
            raise Crash(self.name)

    def _log(self, what: str) -> None:
        self.history.append((what, self.name, trio.current_time()))

    def _act(self, action: str) -> None:
        self._action = action
        self._wake.set()

    async def wait_started(self, count: int) -> None:
        """Wait until this child has started ``count`` times in all (restarts included),
        however long the supervisor's backoff makes that take."""
        with trio.fail_after(60):  # virtual seconds: a restart that never comes fails at once
            while self.starts < count:
                await self._started.wait()

    def crash(self) -> None:
        self._act("crash")

    def exit(self) -> None:
        self._act("exit")

    def stop(self) -> None:
        if self.obey_stop:
            self._act("stop")

    def spec(self, restart: RestartType = "permanent", grace: float = 5.0) -> ChildSpec:
        return ChildSpec(
            self.name, self.start, restart=restart, shutdown_grace=grace, stop=self.stop
        )


def make_children(*names: str) -> tuple[list[tuple[str, str, float]], list[Child]]:
    history: list[tuple[str, str, float]] = []
    return history, [Child(name, history) for name in names]


def steps(history: list[tuple[str, str, float]]) -> list[tuple[str, str]]:
    """The history without times."""
    return [(what, name) for what, name, _ in history]


def recording_bus() -> tuple[EventBus, list[RuntimeEvent]]:
    bus = EventBus()
    events: list[RuntimeEvent] = []
    bus.add_listener(events.append)
    return bus, events


T = TypeVar("T")


def of_type(events: list[RuntimeEvent], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


async def escalation_of(
    supervisor: Supervisor, driver: Callable[[], Awaitable[None]] | None = None
) -> RestartLimitReached:
    """Run ``supervisor`` (while ``driver`` runs beside it) and return its escalation."""
    async with trio.open_nursery() as nursery:
        if driver is not None:
            nursery.start_soon(driver)
        with pytest.raises(RestartLimitReached) as caught:
            await supervisor.run()
        nursery.cancel_scope.cancel()
    return caught.value


def after_startup(action: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    async def driver() -> None:
        await trio.testing.wait_all_tasks_blocked()
        action()

    return driver


# -- starting -------------------------------------------------------------------------------


async def test_children_start_strictly_in_order(autojump_clock):
    """Child N+1 starts only after child N called task_status.started(); run() reports
    started once all are up."""
    log: list[tuple[str, str, float]] = []

    def slow_child(name: str, delay: float) -> ChildSpec:
        async def start(*, task_status: trio.TaskStatus[None]) -> None:
            log.append(("starting", name, trio.current_time()))
            await trio.sleep(delay)
            log.append(("up", name, trio.current_time()))
            task_status.started()
            await trio.sleep_forever()

        return ChildSpec(name, start)

    sup = Supervisor("sup", [slow_child("a", 2), slow_child("b", 1), slow_child("c", 3)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert 6 == trio.current_time()
        sup.stop()
    assert [
        ("starting", "a", 0),
        ("up", "a", 2),
        ("starting", "b", 2),
        ("up", "b", 3),
        ("starting", "c", 3),
        ("up", "c", 6),
    ] == log


async def test_actors_and_supervisors_are_children_as_they_are(autojump_clock):
    """An Actor and a nested Supervisor can be given directly; their child_spec() is used."""

    @attrs.define(eq=False)
    class Echo(Actor):
        async def handle(self, message: Any) -> Any:
            return message

    router = Router()
    echo, inner_echo = Echo("echo", router=router), Echo("inner-echo", router=router)
    inner = Supervisor("inner", [inner_echo])
    sup = Supervisor("root", [echo, inner])
    assert ("echo", "inner") == tuple(spec.name for spec in sup.children)
    assert math.inf == sup.children[1].shutdown_grace
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert ("echo", "inner-echo") == router.names()
        assert "hi" == await inner_echo.ask("hi")
        sup.stop()
    assert not echo.running
    assert not inner_echo.running


async def test_a_child_that_returns_while_starting_is_a_normal_exit(autojump_clock):
    """Returning before started() is a normal exit: a transient child is not restarted and
    the next child still starts."""
    history, (b,) = make_children("b")

    async def once(*, task_status: trio.TaskStatus[None]) -> None:
        history.append(("ran", "a", trio.current_time()))

    bus, events = recording_bus()
    sup = Supervisor("sup", [ChildSpec("a", once, restart="transient"), b.spec()], events=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.stop()
    assert [("ran", "a"), ("start", "b"), ("stop", "b")] == steps(history)
    assert [] == of_type(events, ActorRestarted)
    assert [("a", "normal"), ("b", "shutdown")] == [
        (e.actor, e.reason) for e in of_type(events, ActorStopped)
    ]


async def test_a_permanent_child_that_keeps_exiting_normally_escalates_without_a_cause():
    """Normal exits of a permanent child count as restarts; the escalation has no cause."""

    async def once(*, task_status: trio.TaskStatus[None]) -> None:
        await trio.lowlevel.checkpoint()

    sup = Supervisor("sup", [ChildSpec("a", once)], intensity=2, backoff=NO_BACKOFF)
    error = await escalation_of(sup)
    assert ("a", 2, None) == (error.child, error.restarts, error.__cause__)


# -- docs/faults.md#supervision: restart intensity ------------------------------------------


async def test_a_crash_loop_on_start_restarts_exactly_intensity_times_then_escalates(
    autojump_clock,
):
    """docs/faults.md#supervision: a child that crashes and then fails every start is restarted
    exactly 3 times (intensity 3 in 30 s); the 4th failure stops the others in reverse order and
    raises RestartLimitReached from the last failure."""
    history, (a, b, c) = make_children("a", "b", "c")
    bus, events = recording_bus()
    sup = Supervisor("sup", [a.spec(), b.spec(), c.spec()], intensity=3, period=30, events=bus)

    def crash_loop() -> None:
        b.fail_starts = math.inf
        b.crash()

    error = await escalation_of(sup, after_startup(crash_loop))
    assert ("b", 3, 30, "sup") == (error.child, error.restarts, error.window, error.supervisor)
    assert isinstance(error.__cause__, Crash)
    assert "b failed to start" == str(error.__cause__)
    assert [1, 2, 3] == [e.restarts for e in of_type(events, ActorRestarted)]
    assert [("sup", "b", 3, 30.0)] == [
        (e.supervisor, e.child, e.restarts, e.window) for e in of_type(events, ActorEscalated)
    ]
    assert [
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
        ("crash", "b"),
        ("start failed", "b"),
        ("start failed", "b"),
        ("start failed", "b"),
        ("stop", "c"),
        ("stop", "a"),
    ] == steps(history)


async def test_a_child_failing_its_very_first_start_is_restarted_like_any_failure(
    autojump_clock,
):
    """A failure in the initial start counts towards the intensity instead of failing the
    supervisor's own start at once; later children wait for it."""
    history, (a, b) = make_children("a", "b")
    a.fail_starts = 2
    sup = Supervisor("sup", [a.spec(), b.spec()], intensity=2, backoff=Backoff(1, 1))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        assert 2 == trio.current_time()
        sup.stop()
    assert [
        ("start failed", "a"),
        ("start failed", "a"),
        ("start", "a"),
        ("start", "b"),
        ("stop", "b"),
        ("stop", "a"),
    ] == steps(history)


async def test_a_child_crashing_every_period_plus_a_little_survives_forever(autojump_clock):
    """OTP multiple_restarts: with intensity 1 in 1 s, a crash every 1.1 s never escalates."""
    history, (a,) = make_children("a")
    sup = Supervisor("sup", [a.spec()], intensity=1, period=1, backoff=NO_BACKOFF)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(100):
            a.crash()
            await trio.sleep(1.1)
        assert 101 == steps(history).count(("start", "a"))
        sup.stop()


async def test_the_intensity_window_includes_its_start(autojump_clock):
    """As in OTP, a restart exactly `period` seconds after the previous one is still inside
    the window: intensity 1 in 1 s escalates on a crash at t=0 and another at t=1."""
    _, (a,) = make_children("a")
    sup = Supervisor("sup", [a.spec()], intensity=1, period=1, backoff=NO_BACKOFF)

    async def crash_twice() -> None:
        await trio.testing.wait_all_tasks_blocked()
        a.crash()
        await trio.sleep(1)
        a.crash()

    error = await escalation_of(sup, crash_twice)
    assert 1 == trio.current_time()
    assert isinstance(error.__cause__, Crash)


async def test_escalation_goes_through_two_levels_with_the_cause_chain(autojump_clock):
    """A crash loop in an inner supervisor escalates to the outer one, which restarts the
    inner supervisor, then escalates itself: outer <- inner <- the child's error."""
    history, (other, leaf) = make_children("other", "leaf")
    bus, events = recording_bus()
    inner = Supervisor(
        "inner", [leaf.spec()], intensity=1, period=10, backoff=NO_BACKOFF, events=bus
    )
    outer = Supervisor(
        "outer", [other.spec(), inner], intensity=1, period=10, backoff=NO_BACKOFF, events=bus
    )

    def crash_loop() -> None:
        leaf.fail_starts = math.inf
        leaf.crash()

    error = await escalation_of(outer, after_startup(crash_loop))
    assert ("outer", "inner") == (error.supervisor, error.child)
    inner_error = error.__cause__
    assert isinstance(inner_error, RestartLimitReached)
    assert ("inner", "leaf") == (inner_error.supervisor, inner_error.child)
    assert isinstance(inner_error.__cause__, Crash)
    # inner#1 restarts leaf once; outer restarts inner once; inner#2 restarts leaf once.
    assert ["leaf", "inner", "leaf"] == [e.actor for e in of_type(events, ActorRestarted)]
    assert [("inner", "leaf"), ("inner", "leaf"), ("outer", "inner")] == [
        (e.supervisor, e.child) for e in of_type(events, ActorEscalated)
    ]
    assert ("stop", "other") == steps(history)[-1]


# -- restart types --------------------------------------------------------------------------


async def test_a_transient_child_is_restarted_after_a_crash_but_not_a_normal_exit(
    autojump_clock,
):
    """OTP transient_normal / transient_abnormal."""
    history, (a,) = make_children("a")
    sup = Supervisor("sup", [a.spec("transient")], backoff=NO_BACKOFF)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        a.crash()
        await trio.testing.wait_all_tasks_blocked()
        a.exit()
        await trio.testing.wait_all_tasks_blocked()
        assert (ChildStatistics("a", running=False, pending=False, restarts=1),) == (
            sup.statistics().children
        )
        sup.stop()
    assert [("start", "a"), ("crash", "a"), ("start", "a"), ("exit", "a")] == steps(history)


async def test_a_temporary_child_is_never_restarted_and_is_forgotten(autojump_clock):
    """OTP temporary_abnormal: a temporary child that crashes is gone for good."""
    history, (a, b) = make_children("a", "b")
    sup = Supervisor("sup", [a.spec("temporary"), b.spec()], strategy="one_for_all")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        a.crash()
        await trio.testing.wait_all_tasks_blocked()
        assert ("b",) == tuple(c.name for c in sup.statistics().children)
        b.crash()
        await b.wait_started(2)
        sup.stop()
    assert [
        ("start", "a"),
        ("start", "b"),
        ("crash", "a"),
        ("crash", "b"),
        ("start", "b"),
        ("stop", "b"),
    ] == steps(history)


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_a_temporary_bystander_stopped_by_a_restart_is_not_restarted(
    autojump_clock, strategy
):
    """OTP temporary_bystander: a temporary child stopped as part of a one_for_all or
    rest_for_one restart is not restarted, and the supervisor does not hit its limit."""
    history, (a, b) = make_children("a", "b")
    sup = Supervisor("sup", [a.spec(), b.spec("temporary")], strategy=strategy, intensity=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        a.exit()
        await trio.sleep(350)
        assert (
            SupervisorStatistics("sup", True, (ChildStatistics("a", True, False, 1),), 1, 0)
            == sup.statistics()
        )
        sup.stop()
    assert [
        ("start", "a"),
        ("start", "b"),
        ("exit", "a"),
        ("stop", "b"),
        ("start", "a"),
        ("stop", "a"),
    ] == steps(history)


# -- strategies -----------------------------------------------------------------------------


async def test_one_for_one_restarts_only_the_failed_child(autojump_clock):
    """OTP one_for_one: siblings keep running."""
    history, (a, b, c) = make_children("a", "b", "c")
    sup = Supervisor("sup", [a.spec(), b.spec(), c.spec()], backoff=NO_BACKOFF)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        b.crash()
        await trio.testing.wait_all_tasks_blocked()
        sup.stop()
    assert [
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
        ("crash", "b"),
        ("start", "b"),
        ("stop", "c"),
        ("stop", "b"),
        ("stop", "a"),
    ] == steps(history)


async def test_one_for_all_stops_the_others_in_reverse_order_and_starts_all_in_order(
    autojump_clock,
):
    """OTP one_for_all: every sibling is stopped (reverse order) and all start again."""
    history, (a, b, c) = make_children("a", "b", "c")
    sup = Supervisor("sup", [a.spec(), b.spec(), c.spec()], strategy="one_for_all")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        b.crash()
        await c.wait_started(2)  # the last of the group to start again
        sup.stop()
    assert [
        ("crash", "b"),
        ("stop", "c"),
        ("stop", "a"),
        ("start", "a"),
        ("start", "b"),
        ("start", "c"),
        ("stop", "c"),
        ("stop", "b"),
        ("stop", "a"),
    ] == steps(history)


async def test_rest_for_one_restarts_the_failed_child_and_those_after_it(autojump_clock):
    """OTP rest_for_one: children before the failed one are untouched."""
    history, (a, b, c, d) = make_children("a", "b", "c", "d")
    sup = Supervisor("sup", [x.spec() for x in (a, b, c, d)], strategy="rest_for_one")
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        b.crash()
        await d.wait_started(2)  # the last of the rest to start again
        sup.stop()
    assert [
        ("crash", "b"),
        ("stop", "d"),
        ("stop", "c"),
        ("start", "b"),
        ("start", "c"),
        ("start", "d"),
        ("stop", "d"),
        ("stop", "c"),
        ("stop", "b"),
        ("stop", "a"),
    ] == steps(history)


async def test_one_for_all_retries_when_another_child_fails_to_restart(autojump_clock):
    """OTP one_for_all_other_child_fails_restart: a sibling failing while the group
    restarts stops the already restarted children and restarts the group again."""
    history, (a, b) = make_children("a", "b")
    sup = Supervisor("sup", [a.spec(), b.spec()], strategy="one_for_all", intensity=3)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        b.fail_starts = 1
        a.crash()
        await b.wait_started(2)  # its first start in the group restart failed
        assert 2 == sup.statistics().restarts
        sup.stop()
    assert [
        ("crash", "a"),
        ("stop", "b"),
        ("start", "a"),
        ("start failed", "b"),
        ("stop", "a"),
        ("start", "a"),
        ("start", "b"),
        ("stop", "b"),
        ("stop", "a"),
    ] == steps(history)


async def test_an_exception_group_from_a_child_is_a_failure(autojump_clock):
    """A child whose own nursery fails raises an ExceptionGroup: an ordinary failure."""
    starts = 0
    restarted = trio.Event()

    async def grouped(*, task_status: trio.TaskStatus[None]) -> None:
        nonlocal starts
        starts += 1
        task_status.started()
        if starts == 1:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_raise, Crash("inside"))
        restarted.set()
        await trio.sleep_forever()

    bus, events = recording_bus()
    sup = Supervisor("sup", [ChildSpec("g", grouped)], events=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        with trio.fail_after(60):
            await restarted.wait()
        sup.stop()
    assert 2 == starts
    assert ["ExceptionGroup"] == [e.error.split("(")[0] for e in of_type(events, ActorFailed)]


async def _raise(error: Exception) -> None:
    await trio.lowlevel.checkpoint()
    raise error


# -- backoff --------------------------------------------------------------------------------


async def test_backoff_grows_exponentially_up_to_its_cap(autojump_clock):
    """Delays 1, 2, 3 (capped), 3 before successive restarts within the period."""
    history, (a,) = make_children("a")
    sup = Supervisor("sup", [a.spec()], intensity=10, period=100, backoff=Backoff(1, 2, 3))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        for _ in range(4):
            a.crash()
            await trio.sleep(4)
        sup.stop()
    starts = [t for what, _, t in history if what == "start"]
    crashes = [t for what, _, t in history if what == "crash"]
    assert [1, 2, 3, 3] == [s - c for c, s in zip(crashes, starts[1:], strict=True)]


async def test_backoff_falls_back_once_earlier_restarts_leave_the_period(autojump_clock):
    """The attempt count is this child's restarts within the period, so it resets."""
    history, (a,) = make_children("a")
    sup = Supervisor("sup", [a.spec()], intensity=10, period=10, backoff=Backoff(1, 2, 30))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        a.crash()  # t=0, delay 1
        await trio.sleep(2)
        a.crash()  # t=2, delay 2
        await trio.sleep(18)
        a.crash()  # t=20: the window [10, 20] holds no earlier restart, delay 1
        await trio.sleep(2)
        sup.stop()
    assert [0, 1, 4, 21] == [t for what, _, t in history if what == "start"]


async def test_a_later_failure_postpones_a_pending_restart_batch(autojump_clock):
    """Restarts waiting for their backoff are started together, in order, at the latest
    due time."""
    history, (a, b) = make_children("a", "b")
    sup = Supervisor("sup", [a.spec(), b.spec()], intensity=5, backoff=Backoff(2, 1))
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        b.crash()
        await trio.sleep(1)
        a.crash()
        await trio.sleep(5)
        sup.stop()
    assert [("crash", "b", 0), ("crash", "a", 1), ("start", "a", 3), ("start", "b", 3)] == (
        history[:4]
    )


# -- docs/faults.md#supervision: shutdown and cancellation ----------------------------------


async def test_shutdown_is_in_reverse_start_order_with_grace_then_cancellation(autojump_clock):
    """Each child gets its stop request and grace period in turn; one ignoring the request
    is cancelled when its grace runs out, then the next child is stopped."""
    history, (a, b, c) = make_children("a", "b", "c")
    b.obey_stop = False
    sup = Supervisor("sup", [a.spec(), b.spec(grace=2), c.spec()])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        sup.stop()
    assert [("stop", "c", 0), ("cancelled", "b", 2), ("stop", "a", 2)] == history
    assert 2 == trio.current_time()


async def test_a_child_without_a_stop_request_is_cancelled_at_once():
    """Without a stop callable, cancellation is the stop request."""
    stopped: list[str] = []

    async def plain(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            stopped.append("plain")

    sup = Supervisor("sup", [ChildSpec("plain", plain)])
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        sup.stop()
    assert ["plain"] == stopped


async def test_a_child_ignoring_cancellation_is_reported_and_shutdown_moves_on(autojump_clock):
    """docs/faults.md#supervision: after grace and cancel grace the child is reported as
    shutdown_timeout and the next child is stopped; run() returns once the stubborn child finally
    ends."""
    history, (a, c) = make_children("a", "c")

    async def stubborn(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(100)
            history.append(("gone", "b", trio.current_time()))

    bus, events = recording_bus()
    sup = Supervisor(
        "sup",
        [a.spec(), ChildSpec("b", stubborn, shutdown_grace=1, stop=lambda: None), c.spec()],
        cancel_grace=2,
        events=bus,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        history.clear()
        sup.stop()
    assert [("stop", "c", 0), ("stop", "a", 3), ("gone", "b", 101)] == history
    assert [("c", "shutdown", 0), ("b", "shutdown_timeout", 3), ("a", "shutdown", 3)] == [
        (e.actor, e.reason, e.time) for e in of_type(events, ActorStopped)
    ]


async def test_cancelling_run_mid_backoff_stops_in_order_and_never_restarts(autojump_clock):
    """docs/faults.md#supervision: cancelling the scope around run() while a restart waits for its
    backoff stops the running children in reverse order, starts nothing, and Cancelled
    propagates."""
    history, (a, b, c) = make_children("a", "b", "c")
    bus, events = recording_bus()
    sup = Supervisor("sup", [a.spec(), b.spec(), c.spec()], backoff=Backoff(5), events=bus)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            b.crash()
            await trio.sleep(1)
            history.clear()
            scope.cancel()
    assert scope.cancelled_caught
    await trio.sleep(10)
    assert [("stop", "c", 1), ("stop", "a", 1)] == history
    assert 3 == len(of_type(events, ActorStarted))
    assert not sup.statistics().running


async def test_keyboard_interrupt_in_a_child_propagates_and_is_never_restarted(autojump_clock):
    """docs/faults.md#supervision: KeyboardInterrupt (any BaseException that is not an Exception) is
    not a failure; it tears the supervisor down and propagates."""

    async def interrupted(*, task_status: trio.TaskStatus[None]) -> None:
        task_status.started()
        await trio.sleep(1)
        raise KeyboardInterrupt

    history, (a,) = make_children("a")
    bus, events = recording_bus()
    sup = Supervisor("sup", [a.spec(), ChildSpec("ki", interrupted)], events=bus)
    with pytest.raises(BaseExceptionGroup) as caught:
        await sup.run()
    assert caught.group_contains(KeyboardInterrupt, depth=None)
    assert [] == of_type(events, ActorRestarted)
    assert [("start", "a"), ("cancelled", "a")] == steps(history)


async def test_stop_during_startup_cancels_the_child_being_started(autojump_clock):
    """stop() before all children are up cancels the start in progress and stops the rest."""
    history, (a,) = make_children("a")

    async def slow(*, task_status: trio.TaskStatus[None]) -> None:
        await trio.sleep(10)
        history.append(("start", "slow", trio.current_time()))
        task_status.started()

    sup = Supervisor("sup", [a.spec(), ChildSpec("slow", slow)])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sup.run)
        await trio.sleep(1)
        sup.stop()
    assert [("start", "a", 0), ("stop", "a", 1)] == history


# -- observability and API ------------------------------------------------------------------


async def test_lifecycle_events_tell_the_story_of_a_restart(autojump_clock):
    """started, failed, restarted (with delay and reason), started, stopped."""
    _, (a,) = make_children("a")
    bus, events = recording_bus()
    sup = Supervisor("sup", [a.spec()], backoff=Backoff(0.5), events=bus)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        a.crash()
        await trio.sleep(1)
        sup.stop()
    assert [
        ActorStarted(time=0, actor="a", supervisor="sup"),
        ActorFailed(time=0, actor="a", error="Crash('a')"),
        ActorRestarted(time=0, actor="a", restarts=1, delay=0.5, reason="Crash('a')"),
        ActorStarted(time=0.5, actor="a", supervisor="sup"),
        ActorStopped(time=1, actor="a", reason="shutdown"),
    ] == events


@pytest.fixture
def log_messages() -> Iterator[list[Any]]:
    messages: list[Any] = []
    logger.enable("orchestrator")
    handler = logger.add(messages.append, level="DEBUG", format="{message}")
    yield messages
    logger.remove(handler)
    logger.disable("orchestrator")


async def test_log_records_are_bound_to_the_supervisor_and_the_child(log_messages):
    """Supervisor records carry supervisor=name, and actor=child for child events."""
    _, (a,) = make_children("a")
    sup = Supervisor("sup", [a.spec()], backoff=NO_BACKOFF)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        a.crash()
        await trio.testing.wait_all_tasks_blocked()
        sup.stop()
    extras = [m.record["extra"] for m in log_messages]
    assert extras
    assert all({"supervisor": "sup", "actor": "a"} == extra for extra in extras)
    assert any("restarting a" in str(m) for m in log_messages)


async def test_a_supervisor_runs_again_after_stopping_but_not_twice_at_once():
    """Each run starts from the specs afresh; a second concurrent run is refused."""
    history, (a,) = make_children("a")
    sup = Supervisor("sup", [a.spec("temporary")])
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            with pytest.raises(trio.BusyResourceError):
                await sup.run()
            sup.stop()
    assert [("start", "a"), ("stop", "a")] * 2 == steps(history)
    sup.stop()  # not running: nothing to do


def test_settings_are_validated():
    """Duplicate names and out-of-range settings are refused at construction."""
    _, (a,) = make_children("a")
    with pytest.raises(ValueError, match="two children are named 'a'"):
        Supervisor("sup", [a.spec(), a.spec()])
    with pytest.raises(ValueError, match="intensity"):
        Supervisor("sup", [], intensity=-1)
    with pytest.raises(ValueError, match="strategy"):
        Supervisor("sup", [], strategy="all_for_one")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="restart"):
        ChildSpec("a", a.start, restart="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shutdown_grace"):
        ChildSpec("a", a.start, shutdown_grace=-1)


def test_backoff_delays():
    """initial * factor ** (n - 1), capped; zero initial means no delay; no overflow."""
    assert [0.5, 1.0, 2.0, 3.0] == [Backoff(0.5, 2, 3).delay(n) for n in (1, 2, 3, 4)]
    assert 0.0 == Backoff(0).delay(5)
    assert 7.0 == Backoff(1, 10, 7).delay(10_000)
