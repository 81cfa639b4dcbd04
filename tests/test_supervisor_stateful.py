"""docs/faults.md#supervision: a Hypothesis state machine checks the supervisor against a model of
OTP.

Each example builds a supervisor with a random strategy, intensity, period, backoff and
children (random restart types, with or without a stop request), then applies random
steps: crash a child, let one exit normally, make a child fail its next starts (a crash
loop on start), let virtual time pass. Every example ends with `stop()` or with cancelling
the scope around `run()` (drawn up front, done in teardown so that the steps before it
are many), and then more virtual time, in which nothing may start.

After every step the real supervisor, running on trio's MockClock, must agree with a
small synchronous model of OTP's rules on everything observable: the exact sequence of
starts, failed starts and stops (so start order, restart groups and reverse shutdown
order), the restart count, and whether and when it escalated. Invariants on top: restarts
within any window of `period` never exceed the intensity, and nothing starts after a
stop, a cancellation or an escalation.

Hypothesis rules are synchronous, so trio runs in a helper thread and each step is one
``trio.from_thread.run`` call. Virtual time only moves inside the `wait` step (autojump on
for its duration), so the model knows the exact time of everything.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, Any

import attrs
import trio
import trio.testing
from hypothesis import settings, strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from orchestrator.core.observe import ActorEscalated, ActorRestarted, EventBus, RuntimeEvent
from orchestrator.core.supervisor import Backoff, ChildSpec, RestartType, Strategy, Supervisor
from orchestrator.errors import RestartLimitReached

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


class Crash(Exception):
    pass


# -- driving trio from synchronous rules -----------------------------------------------------


class TrioThread:
    """A trio loop with a MockClock in a helper thread; call() runs an async step in it."""

    def __init__(self) -> None:
        self.clock = trio.testing.MockClock()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait()

    def _main(self) -> None:
        try:
            trio.run(self._serve, clock=self.clock)
        except BaseException as exc:  # reported by close(), in the test's thread
            self._error = exc

    async def _serve(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._closing = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self._ready.set()
            await self._closing.wait()
            nursery.cancel_scope.cancel()

    def call(self, step: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(step, *args, trio_token=self._token)

    async def settle(self) -> None:
        await trio.testing.wait_all_tasks_blocked()

    async def wait(self, seconds: float) -> None:
        """Let `seconds` of virtual time pass, jumping from deadline to deadline."""
        self.clock.autojump_threshold = 0
        try:
            await trio.sleep(seconds)
        finally:
            self.clock.autojump_threshold = math.inf
        await trio.testing.wait_all_tasks_blocked()

    def close(self) -> None:
        trio.from_thread.run_sync(self._closing.set, trio_token=self._token)
        self._thread.join(10)
        if self._error is not None:
            raise self._error


@attrs.define(eq=False)
class Probe:
    """A child the machine drives. Logs (what, name): start, start failed, and how an
    incarnation ended: crash, exit, stop (its stop request) or cancelled."""

    name: str
    log: list[tuple[str, str]]
    fail_starts: bool = False
    alive: bool = False
    _wake: trio.Event = attrs.field(factory=trio.Event)
    _action: str = ""

    async def start(self, *, task_status: trio.TaskStatus[None]) -> None:
        if self.fail_starts:
            self.log.append(("start failed", self.name))
            raise Crash(self.name)
        self._wake, self._action = trio.Event(), ""
        self.log.append(("start", self.name))
        self.alive = True
        task_status.started()
        how = "cancelled"
        try:
            await self._wake.wait()
            how = self._action
        finally:
            self.alive = False
            self.log.append((how, self.name))
        if how == "crash":
            raise Crash(self.name)

    def act(self, action: str) -> None:
        self._action = action
        self._wake.set()

    def stop(self) -> None:
        self.act("stop")


# -- the model -------------------------------------------------------------------------------


@attrs.define(eq=False)
class ModelChild:
    name: str
    order: int
    restart: RestartType
    graceful: bool
    alive: bool = False
    fail_starts: bool = False
    recent: list[float] = attrs.field(factory=list)


@attrs.define(eq=False)
class Model:
    """OTP's supervisor rules, written plainly; time is exact (multiples of 1/4 s)."""

    strategy: Strategy
    intensity: int
    period: float
    backoff: Backoff
    children: list[ModelChild]
    log: list[tuple[str, str]] = attrs.field(factory=list)
    now: float = 0.0
    restart_times: list[float] = attrs.field(factory=list)
    restarts: int = 0
    pending: set[ModelChild] = attrs.field(factory=set)
    due: float = -math.inf
    finished: bool = False
    escalation: tuple[str, bool, float] | None = None  # child, by a crash, when

    def start(self) -> None:
        self.pending = set(self.children)
        self.due = self.now
        self._start_due()

    def _start_due(self) -> None:
        while self.pending and self.due <= self.now and not self.finished:
            for child in sorted(self.pending, key=lambda c: c.order):
                self.pending.discard(child)
                if child.fail_starts:
                    self.log.append(("start failed", child.name))
                    self.exited(child, crashed=True)
                    break
                child.alive = True
                self.log.append(("start", child.name))

    def exited(self, child: ModelChild, *, crashed: bool) -> None:
        child.alive = False
        if child.restart == "temporary":
            self.children.remove(child)
            return
        if child.restart == "transient" and not crashed:
            return
        self.restart_times = [t for t in self.restart_times if t >= self.now - self.period]
        self.restart_times.append(self.now)
        if len(self.restart_times) > self.intensity:
            self.escalation = (child.name, crashed, self.now)
            self.shut_down()
            return
        if self.strategy == "one_for_one":
            group = [child]
        elif self.strategy == "one_for_all":
            group = list(self.children)
        else:
            group = [c for c in self.children if c.order >= child.order]
        for other in reversed(group):
            if other.alive:
                self._terminate(other)
                if other.restart == "temporary":
                    self.children.remove(other)
        child.recent = [t for t in child.recent if t >= self.now - self.period]
        child.recent.append(self.now)
        self.restarts += 1
        self.pending.update(c for c in group if c in self.children)
        self.due = max(self.due, self.now + self.backoff.delay(len(child.recent)))

    def _terminate(self, child: ModelChild) -> None:
        child.alive = False
        self.log.append(("stop" if child.graceful else "cancelled", child.name))

    def shut_down(self) -> None:
        self.pending.clear()
        for child in reversed(self.children):
            if child.alive:
                self._terminate(child)
        self.finished = True

    def wait(self, seconds: float) -> None:
        target = self.now + seconds
        while self.pending and not self.finished and self.due <= target:
            self.now = max(self.now, self.due)
            self._start_due()
        self.now = target


# -- the machine -----------------------------------------------------------------------------

restart_types: st.SearchStrategy[RestartType] = st.sampled_from(
    ["permanent", "transient", "temporary"]
)
quarter_seconds = st.integers(1, 16).map(lambda n: n / 4)


@st.composite
def child_settings(draw: st.DrawFn) -> tuple[RestartType, bool, bool]:
    restart: RestartType = draw(restart_types)
    graceful = draw(st.booleans())
    fail_starts = draw(st.integers(0, 5)) == 0
    return restart, graceful, fail_starts


class SupervisorMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.trio = TrioThread()
        self.log: list[tuple[str, str]] = []
        self.events: list[RuntimeEvent] = []
        self.probes: dict[str, Probe] = {}
        self.outcome: object = None

    @initialize(
        strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
        # 0 escalates on the first restart: worth having, not in a third of the examples.
        intensity=st.sampled_from([0, 1, 1, 2, 2, 3, 4]),
        period=st.sampled_from([1.0, 2.0, 5.0]),
        backoff=st.builds(
            Backoff,
            initial=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
            factor=st.sampled_from([1.0, 2.0]),
            maximum=st.just(2.0),
        ),
        children=st.lists(child_settings(), min_size=1, max_size=5),
        ending=st.sampled_from(["stop", "cancel"]),
    )
    def launch(
        self,
        strategy: Strategy,
        intensity: int,
        period: float,
        backoff: Backoff,
        children: list[tuple[RestartType, bool, bool]],
        ending: str,
    ) -> None:
        self.ending = ending
        specs = []
        model_children = []
        for order, (restart, graceful, fail_starts) in enumerate(children):
            name = f"c{order}"
            probe = Probe(name, self.log, fail_starts=fail_starts)
            self.probes[name] = probe
            specs.append(
                ChildSpec(name, probe.start, restart=restart, stop=probe.stop if graceful else None)
            )
            model_children.append(
                ModelChild(name, order, restart, graceful, fail_starts=fail_starts)
            )
        bus = EventBus()
        bus.add_listener(self.events.append)
        self.supervisor = Supervisor(
            "sup",
            specs,
            strategy=strategy,
            intensity=intensity,
            period=period,
            backoff=backoff,
            events=bus,
        )
        self.model = Model(strategy, intensity, period, backoff, model_children)
        self.model.start()
        self.trio.call(self._launch)

    async def _launch(self) -> None:
        self.scope = trio.CancelScope()
        self.trio.nursery.start_soon(self._run_supervisor)
        await self.trio.settle()

    async def _run_supervisor(self) -> None:
        with self.scope:
            try:
                await self.supervisor.run()
                self.outcome = "stopped"
            except RestartLimitReached as exc:
                self.outcome = exc
        if self.scope.cancelled_caught:
            self.outcome = "cancelled"

    # -- steps --

    def _alive(self) -> list[str]:
        return [c.name for c in self.model.children if c.alive]

    @precondition(lambda self: self._alive())
    @rule(data=st.data(), crash=st.booleans())
    def child_exits(self, data: st.DataObject, crash: bool) -> None:
        name = data.draw(st.sampled_from(self._alive()), label="child")
        self.trio.call(self._act, name, "crash" if crash else "exit")
        child = next(c for c in self.model.children if c.name == name)
        self.model.log.append(("crash" if crash else "exit", name))
        self.model.exited(child, crashed=crash)
        self.model._start_due()

    async def _act(self, name: str, action: str) -> None:
        self.probes[name].act(action)
        await self.trio.settle()

    @precondition(lambda self: self.model.children)
    @rule(data=st.data())
    def toggle_failing_starts(self, data: st.DataObject) -> None:
        child = data.draw(st.sampled_from(self.model.children), label="child")
        child.fail_starts = not child.fail_starts
        self.probes[child.name].fail_starts = child.fail_starts

    @rule(data=st.data())
    def wait(self, data: st.DataObject) -> None:
        # The window's edges are where off-by-one bugs live: favour them.
        period = self.model.period
        edges = st.sampled_from([period, period - 0.25, period + 0.25])
        seconds = data.draw(edges | quarter_seconds, label="seconds")
        self.trio.call(self.trio.wait, seconds)
        self.model.wait(seconds)

    async def _stop(self) -> None:
        self.supervisor.stop()
        await self.trio.settle()

    async def _cancel(self) -> None:
        self.scope.cancel()
        await self.trio.settle()

    # -- what must hold after every step --

    @invariant()
    def agrees_with_the_model(self) -> None:
        assert self.model.log == self.log
        assert self._alive() == [name for name, probe in self.probes.items() if probe.alive]
        restarted = [e for e in self.events if isinstance(e, ActorRestarted)]
        assert self.model.restarts == len(restarted)

    @invariant()
    def escalates_exactly_when_the_intensity_is_exceeded(self) -> None:
        escalated = [e for e in self.events if isinstance(e, ActorEscalated)]
        if self.model.escalation is None:
            assert [] == escalated
            assert not isinstance(self.outcome, RestartLimitReached)
            return
        child, crashed, when = self.model.escalation
        assert [(child, when)] == [(e.child, e.time) for e in escalated]
        assert isinstance(self.outcome, RestartLimitReached)
        assert child == self.outcome.child
        assert crashed == isinstance(self.outcome.__cause__, Crash)

    @invariant()
    def restarts_within_any_period_never_exceed_the_intensity(self) -> None:
        times = [e.time for e in self.events if isinstance(e, ActorRestarted)]
        period, intensity = self.model.period, self.model.intensity
        for end in times:
            assert intensity >= sum(end - period <= t <= end for t in times)

    @invariant()
    def nothing_runs_once_finished(self) -> None:
        if self.model.finished:
            assert not any(probe.alive for probe in self.probes.values())

    def teardown(self) -> None:
        try:
            if hasattr(self, "model"):
                self._end()
        finally:
            self.trio.close()

    def _end(self) -> None:
        """Stop or cancel (shutdown order is checked against the model), then wait: nothing
        may start afterwards, not even a restart that was waiting for its backoff."""
        if not self.model.finished:
            if self.ending == "stop":
                self.trio.call(self._stop)
                assert "stopped" == self.outcome
            else:
                self.trio.call(self._cancel)
                assert "cancelled" == self.outcome
            self.model.shut_down()
        self.trio.call(self.trio.wait, 10)
        self.model.wait(10)
        self.agrees_with_the_model()
        self.nothing_runs_once_finished()


SupervisorMachine.TestCase.settings = settings(
    max_examples=500, stateful_step_count=40, deadline=None
)
TestSupervisorMachine = SupervisorMachine.TestCase
