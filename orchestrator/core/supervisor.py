"""The supervisor: a nursery that starts children in order and restarts them as OTP does.

A child is a :class:`ChildSpec`: a name, an async ``start`` callable following trio's
``nursery.start`` protocol (it calls ``task_status.started()`` once it is up), a restart
type, a shutdown grace period and an optional graceful ``stop`` request. Anything with a
``child_spec()`` method (an :class:`~actors.base.Actor`, a nested :class:`Supervisor`) can be
given instead of a spec.

The meanings are OTP's (``supervisor(3)``):

- **Strategies.** ``one_for_one`` restarts the child that exited; ``one_for_all`` stops all the
  others in reverse start order and starts all again in order; ``rest_for_one`` does the same
  for the exited child and the children after it.
- **Restart types.** ``permanent`` children are always restarted, ``transient`` ones only after
  an abnormal exit (an exception), ``temporary`` ones never (they are forgotten when they
  exit, or when a sibling's restart stops them).
- **Intensity.** At most ``intensity`` restarts within any ``period`` seconds of trio's clock;
  the check happens when the supervisor handles the exit. One more and the supervisor stops
  its remaining children in reverse start order and raises
  :class:`~orchestrator.errors.RestartLimitReached` *from* the last failure. A parent treats
  that like any other failure of the child supervisor, so the cause chain grows one link
  per level.
- **Shutdown** (on :meth:`Supervisor.stop`, on escalation, or when the scope around
  :meth:`Supervisor.run` is cancelled): children are stopped one by one in reverse start
  order. Each gets its graceful ``stop`` request and ``shutdown_grace`` seconds, then its
  cancel scope is cancelled and it gets ``cancel_grace`` more; a child still running after
  that is reported (``shutdown_timeout``) and the shutdown moves on. A trio task cannot be
  killed, so the supervisor itself returns only once that child is gone.

Beyond OTP: restarts wait for a :class:`Backoff` delay (the children to restart are batched;
a later failure can postpone the batch, never advance it), and a child failing in its start
function is handled like any other failure (it counts towards the intensity) instead of
failing the supervisor's own start.

``trio.Cancelled``, ``KeyboardInterrupt`` and every other ``BaseException`` that is not an
``Exception`` never cause a restart: they propagate and tear the supervisor down.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, TypeAlias

import attrs
import trio
from loguru import logger

from orchestrator.core.observe import (
    ActorEscalated,
    ActorFailed,
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    EventBus,
    RuntimeEvent,
)
from orchestrator.errors import ConfigurationError, RestartLimitReached

if TYPE_CHECKING:
    # loguru's Logger type exists only in its stubs; attrs never evaluates annotations.
    from loguru import Logger  # noqa: TC004

__all__ = [
    "DEFAULT_CANCEL_GRACE",
    "DEFAULT_INTENSITY",
    "DEFAULT_PERIOD",
    "DEFAULT_SHUTDOWN_GRACE",
    "Backoff",
    "ChildSpec",
    "ChildStatistics",
    "RestartType",
    "StartFunction",
    "Strategy",
    "Supervisor",
    "SupervisorStatistics",
    "SupportsChildSpec",
]

RestartType: TypeAlias = Literal["permanent", "transient", "temporary"]
Strategy: TypeAlias = Literal["one_for_one", "one_for_all", "rest_for_one"]

DEFAULT_INTENSITY: Final = 3
DEFAULT_PERIOD: Final = 5.0
DEFAULT_SHUTDOWN_GRACE: Final = 5.0
DEFAULT_CANCEL_GRACE: Final = 5.0

_RESTART_TYPES: Final = ("permanent", "transient", "temporary")
_STRATEGIES: Final = ("one_for_one", "one_for_all", "rest_for_one")


class StartFunction(Protocol):
    """An async callable run as ``await start(task_status=...)`` (trio's ``nursery.start``).

    It calls ``task_status.started()`` once it is up and then runs until it is done. Returning
    is a normal exit, raising an ``Exception`` an abnormal one.
    """

    def __call__(self, *, task_status: trio.TaskStatus[Any]) -> Awaitable[object]: ...


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ConfigurationError(f"{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen
class ChildSpec:
    """How to run, restart and stop one child.

    Args:
        name: unique among the supervisor's children; used in events and logs.
        start: the child itself (see :class:`StartFunction`).
        restart: ``"permanent"``, ``"transient"`` or ``"temporary"``.
        shutdown_grace: seconds between the graceful ``stop`` request and cancellation.
            ``math.inf`` waits as long as it takes (OTP's ``infinity``, the default for
            nested supervisors).
        stop: a synchronous request to finish soon (close a mailbox, set an event); it must
            not block and may be called more than once. Without one, cancellation is the
            request: the child's ``finally`` blocks run and it gets ``shutdown_grace`` to end.
    """

    name: str
    start: StartFunction
    restart: RestartType = attrs.field(
        default="permanent", validator=attrs.validators.in_(_RESTART_TYPES)
    )
    shutdown_grace: float = attrs.field(default=DEFAULT_SHUTDOWN_GRACE, validator=_non_negative)
    stop: Callable[[], object] | None = None


class SupportsChildSpec(Protocol):
    """Anything that knows how to be supervised: actors, nested supervisors."""

    def child_spec(self) -> ChildSpec: ...


@attrs.frozen
class Backoff:
    """Exponential delay before a restart: ``initial * factor ** (n - 1)``, at most ``maximum``.

    ``n`` counts the restarts of the same child within the supervisor's ``period``, this one
    included, so the delay falls back to ``initial`` once earlier restarts leave the window.
    ``Backoff(0)`` restarts at once, as OTP does.
    """

    initial: float = attrs.field(default=0.1, validator=_non_negative)
    factor: float = attrs.field(default=2.0, validator=attrs.validators.ge(1.0))
    maximum: float = attrs.field(default=5.0, validator=_non_negative)

    def delay(self, attempt: int) -> float:
        """The delay before the ``attempt``-th restart in the period (``attempt >= 1``)."""
        if attempt < 1 or self.initial == 0:
            return 0.0
        try:
            return min(self.maximum, self.initial * self.factor ** (attempt - 1))
        except OverflowError:
            return self.maximum


def _as_specs(children: Iterable[ChildSpec | SupportsChildSpec]) -> tuple[ChildSpec, ...]:
    specs = tuple(c if isinstance(c, ChildSpec) else c.child_spec() for c in children)
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise ConfigurationError(f"two children are named {spec.name!r}; names must be unique")
        seen.add(spec.name)
    return specs


@attrs.frozen
class ChildStatistics:
    """A snapshot of one child: whether it runs or waits to be (re)started, and its restarts."""

    name: str
    running: bool
    pending: bool
    restarts: int


@attrs.frozen
class SupervisorStatistics:
    """A snapshot of a supervisor and its children, in start order."""

    name: str
    running: bool
    children: tuple[ChildStatistics, ...]
    restarts: int
    restarts_in_period: int


@attrs.define(eq=False)
class Supervisor:
    """Starts children in order, restarts them by strategy, stops them in reverse order.

    Args:
        name: the supervisor's name (in events, logs and errors; its child name when nested).
        children: child specs, or objects with a ``child_spec()`` method, in start order.
        strategy: ``"one_for_one"``, ``"one_for_all"`` or ``"rest_for_one"``.
        intensity: restarts allowed within ``period``; one more escalates.
        period: the sliding window, in seconds of trio's clock.
        backoff: the delay before each restart.
        cancel_grace: after cancelling a child that ignored its stop request, how long to
            wait before reporting ``shutdown_timeout`` and moving on.
        events: where lifecycle events (started, stopped, failed, restarted, escalated) go.

    Raises:
        ValueError: duplicate child names or an out-of-range setting.
    """

    name: str
    children: tuple[ChildSpec, ...] = attrs.field(converter=_as_specs)
    strategy: Strategy = attrs.field(
        default="one_for_one", kw_only=True, validator=attrs.validators.in_(_STRATEGIES)
    )
    intensity: int = attrs.field(
        default=DEFAULT_INTENSITY, kw_only=True, validator=attrs.validators.ge(0)
    )
    period: float = attrs.field(default=DEFAULT_PERIOD, kw_only=True, validator=_non_negative)
    backoff: Backoff = attrs.field(factory=Backoff, kw_only=True)
    cancel_grace: float = attrs.field(
        default=DEFAULT_CANCEL_GRACE, kw_only=True, validator=_non_negative
    )
    events: EventBus | None = attrs.field(default=None, kw_only=True)
    _run: _SupervisorRun | None = attrs.field(default=None, init=False, repr=False)
    _restarts: int = attrs.field(default=0, init=False, repr=False)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the children until :meth:`stop`, escalation or cancellation.

        Reports started (for ``nursery.start``) once every child has been started in order.
        Each run starts from the specs afresh, so a parent can restart a supervisor.

        Cancelling the scope around this call shuts the children down in order as
        :meth:`stop` does (bounded by their grace periods), then ``Cancelled`` propagates.

        Raises:
            RestartLimitReached: more than ``intensity`` restarts within ``period``; the
                children have been stopped and ``__cause__`` is the last failure (``None``
                when it was a normal exit of a permanent child).
            trio.BusyResourceError: this supervisor is already running.
        """
        if self._run is not None:
            raise trio.BusyResourceError(f"supervisor {self.name!r} is already running")
        state = _SupervisorRun(self)
        self._run = state
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(state.host, name=f"supervisor {self.name}")
                try:
                    await state.up.wait()
                    if state.escalation is None:
                        task_status.started()
                    await state.finished.wait()
                finally:
                    # Cancellation (or an error) reached us, not the shielded host: hand it
                    # over as an orderly shutdown. A no-op when the host already finished.
                    state.request_stop()
        finally:
            self._run = None
        if state.escalation is not None:
            child, cause = state.escalation
            raise RestartLimitReached(
                child, self.intensity, self.period, supervisor=self.name
            ) from cause

    def stop(self) -> None:
        """Ask the running supervisor to shut down; :meth:`run` then returns normally.

        Idempotent, never blocks, and does nothing when the supervisor is not running.
        """
        if self._run is not None:
            self._run.request_stop()

    def child_spec(
        self, *, restart: RestartType = "permanent", shutdown_grace: float = math.inf
    ) -> ChildSpec:
        """This supervisor as the child of another one."""
        return ChildSpec(
            self.name, self.run, restart=restart, shutdown_grace=shutdown_grace, stop=self.stop
        )

    def statistics(self) -> SupervisorStatistics:
        """A snapshot of the supervisor and its children."""
        state = self._run
        if state is None:
            children = tuple(ChildStatistics(s.name, False, False, 0) for s in self.children)
            return SupervisorStatistics(self.name, False, children, self._restarts, 0)
        return SupervisorStatistics(
            name=self.name,
            running=True,
            children=tuple(
                ChildStatistics(c.spec.name, c.alive, c in state.pending, c.restarts)
                for c in state.children
            ),
            restarts=self._restarts,
            restarts_in_period=state.restarts_since(trio.current_time() - self.period),
        )


# -- the engine ------------------------------------------------------------------------------


@attrs.define(eq=False)
class _Child:
    spec: ChildSpec
    order: int
    generation: int = 0
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    done: trio.Event | None = None
    # Set while the supervisor stops this incarnation on purpose: its exit is expected and
    # must not be taken for a failure.
    terminating: bool = False
    restarts: int = 0
    # This child's recent restart times, for its backoff.
    recent: deque[float] = attrs.field(factory=deque)

    @property
    def alive(self) -> bool:
        return self.done is not None and not self.done.is_set()


@attrs.frozen
class _Exit:
    child: _Child
    generation: int
    failure: Exception | None


class _StartStatus:
    """Forwards ``started()`` and remembers that it was called."""

    __slots__ = ("_status", "called")

    def __init__(self, status: trio.TaskStatus[_Exit | None]) -> None:
        self._status = status
        self.called = False

    def started(self, value: object = None) -> None:
        # The child's value is not used: a supervised child is only up or not.
        self.called = True
        self._status.started(None)


@attrs.define(eq=False)
class _SupervisorRun:
    """The state of one run of a supervisor. Only the host task mutates it."""

    sup: Supervisor
    children: list[_Child] = attrs.field(init=False)
    log: Logger = attrs.field(init=False)
    nursery: trio.Nursery | None = None
    # Exits not handled yet, oldest first; at most one per child (a newer generation's exit
    # replaces an older one, which would be ignored anyway).
    exits: dict[_Child, _Exit] = attrs.field(factory=dict)
    # Children waiting to be (re)started, in start order, at time `due`.
    pending: set[_Child] = attrs.field(factory=set)
    due: float = -math.inf
    restart_times: deque[float] = attrs.field(factory=deque)
    wakeup: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    stop_requested: bool = False
    start_scope: trio.CancelScope | None = None
    up: trio.Event = attrs.field(factory=trio.Event)
    finished: trio.Event = attrs.field(factory=trio.Event)
    escalation: tuple[str, Exception | None] | None = None

    def __attrs_post_init__(self) -> None:
        self.children = [_Child(spec, order) for order, spec in enumerate(self.sup.children)]
        self.log = logger.bind(supervisor=self.sup.name)

    def request_stop(self) -> None:
        if self.stop_requested or self.finished.is_set():
            return
        self.stop_requested = True
        if self.start_scope is not None:
            self.start_scope.cancel()
        self.wakeup.unpark_all()

    # The host runs shielded: an outer cancellation reaches run(), which turns it into
    # request_stop(), so the children still go down in reverse order with their grace
    # periods. Everything the supervisor starts lives in this nursery.
    async def host(self) -> None:
        try:
            with trio.CancelScope(shield=True):
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await self._supervise()
                    await self._shutdown()
        finally:
            self.up.set()
            self.finished.set()

    async def _supervise(self) -> None:
        self.pending.update(self.children)
        self.due = trio.current_time()
        while not self.stop_requested and self.escalation is None:
            if self.exits:
                child = next(iter(self.exits))
                await self._handle_exit(self.exits.pop(child))
            elif self.pending and trio.current_time() >= self.due:
                await self._start_pending()
            else:
                if not self.pending:
                    self.up.set()
                with trio.move_on_at(self.due if self.pending else math.inf):
                    await self.wakeup.park()

    async def _start_pending(self) -> None:
        """Start the pending children in order; stop at the first that exits while starting."""
        with trio.CancelScope() as self.start_scope:
            for child in sorted(self.pending, key=lambda c: c.order):
                self.pending.discard(child)
                exit_ = await self._start(child)
                if exit_ is not None:
                    # Handled by the main loop before anything else starts.
                    self.exits[child] = exit_
                    break
        self.start_scope = None

    async def _start(self, child: _Child) -> _Exit | None:
        assert self.nursery is not None
        child.generation += 1
        child.terminating = False
        child.scope = trio.CancelScope()
        child.done = trio.Event()
        exit_: _Exit | None = await self.nursery.start(
            self._child_task, child, child.generation, child.scope, child.done
        )
        if exit_ is None:
            self.log.bind(actor=child.spec.name).info("child {} started", child.spec.name)
            self._emit(
                ActorStarted(time=self._now(), actor=child.spec.name, supervisor=self.sup.name)
            )
        return exit_

    async def _child_task(
        self,
        child: _Child,
        generation: int,
        scope: trio.CancelScope,
        done: trio.Event,
        *,
        task_status: trio.TaskStatus[_Exit | None],
    ) -> None:
        status = _StartStatus(task_status)
        failure: Exception | None = None
        try:
            try:
                with scope:
                    await child.spec.start(task_status=status)
            finally:
                done.set()
        except Exception as exc:
            # Only Exceptions are failures: Cancelled, KeyboardInterrupt and other
            # BaseExceptions propagate into the nursery and are never restarted.
            failure = exc
        exit_ = _Exit(child, generation, failure)
        if not status.called:
            # Exited while starting: nursery.start() returns the exit to _start_pending.
            task_status.started(exit_)
        elif not child.terminating and generation == child.generation:
            self.exits.pop(child, None)
            self.exits[child] = exit_
            self.wakeup.unpark_all()

    async def _handle_exit(self, exit_: _Exit) -> None:
        child, failure = exit_.child, exit_.failure
        if exit_.generation != child.generation or child.terminating:
            return
        name = child.spec.name
        log = self.log.bind(actor=name)
        if failure is not None:
            log.opt(exception=failure).warning("child {} failed: {!r}", name, failure)
            self._emit(ActorFailed(time=self._now(), actor=name, error=repr(failure)))
        else:
            log.info("child {} exited", name)
            self._emit(ActorStopped(time=self._now(), actor=name, reason="normal"))

        restart = child.spec.restart
        if restart == "temporary" or (restart == "transient" and failure is None):
            if restart == "temporary":
                self.children.remove(child)
            return

        now = trio.current_time()
        if not self._add_restart(now):
            self._escalate(child, failure)
            return

        group = self._restart_group(child)
        for other in group:
            # An exit of a sibling that is restarted anyway is moot (OTP ignores the EXIT
            # of a pid it already replaced), as is any exit while we stop it.
            self.exits.pop(other, None)
            if other.alive:
                other.terminating = True
        for other in reversed(group):
            if other.alive:
                await self._terminate(other, "restarting")
            if other.spec.restart == "temporary" and other.done is not None:
                # Forgotten whether it was still running or had already exited (its exit
                # is moot, or came while we stopped a sibling): it has run, it never runs
                # again. One that never started yet (a batch cut short) still starts.
                self.children.remove(other)
        group = [other for other in group if other in self.children]

        child.restarts += 1
        self.sup._restarts += 1
        recent = child.recent
        while recent and recent[0] < now - self.sup.period:
            recent.popleft()
        recent.append(now)
        delay = self.sup.backoff.delay(len(recent))
        reason = "normal exit" if failure is None else repr(failure)
        log.info("restarting {} in {:g} s (restart {})", name, delay, child.restarts)
        self._emit(
            ActorRestarted(
                time=now, actor=name, restarts=child.restarts, delay=delay, reason=reason
            )
        )
        self.pending.update(group)
        self.due = max(self.due, now + delay)

    def _add_restart(self, now: float) -> bool:
        """Record a restart at ``now``; False if that exceeds the intensity."""
        # OTP keeps restarts with time >= now - period: the window is closed at both ends.
        times = self.restart_times
        while times and times[0] < now - self.sup.period:
            times.popleft()
        times.append(now)
        return len(times) <= self.sup.intensity

    def restarts_since(self, time: float) -> int:
        return sum(t >= time for t in self.restart_times)

    def _restart_group(self, child: _Child) -> list[_Child]:
        strategy = self.sup.strategy
        if strategy == "one_for_one":
            return [child]
        if strategy == "one_for_all":
            return list(self.children)
        return [other for other in self.children if other.order >= child.order]

    def _escalate(self, child: _Child, failure: Exception | None) -> None:
        sup = self.sup
        self.escalation = (child.spec.name, failure)
        reason = "normal exit" if failure is None else repr(failure)
        self.log.bind(actor=child.spec.name).error(
            "{} restarts in {:g} s exceeded by {}: shutting down and escalating",
            sup.intensity,
            sup.period,
            child.spec.name,
        )
        self._emit(
            ActorEscalated(
                time=self._now(),
                supervisor=sup.name,
                child=child.spec.name,
                restarts=sup.intensity,
                window=sup.period,
                reason=reason,
            )
        )

    async def _terminate(self, child: _Child, reason: str) -> None:
        """Stop one child: graceful request, grace period, cancellation, cancel grace."""
        done = child.done
        if done is None or done.is_set():
            return
        child.terminating = True
        name = child.spec.name
        log = self.log.bind(actor=name)
        stop = child.spec.stop
        if stop is not None:
            try:
                stop()
            except Exception as exc:
                log.opt(exception=exc).warning("stop request to {} failed: {!r}", name, exc)
            else:
                with trio.move_on_after(child.spec.shutdown_grace):
                    await done.wait()
        if not done.is_set():
            child.scope.cancel()
            with trio.move_on_after(self.sup.cancel_grace):
                await done.wait()
        if not done.is_set():
            log.warning("{} did not stop within its grace periods; moving on", name)
            self._emit(ActorStopped(time=self._now(), actor=name, reason="shutdown_timeout"))
            return
        log.info("child {} stopped ({})", name, reason)
        self._emit(ActorStopped(time=self._now(), actor=name, reason=reason))

    async def _shutdown(self) -> None:
        self.pending.clear()
        for child in reversed(self.children):
            if child.alive:
                await self._terminate(child, "shutdown")
        self.exits.clear()

    @staticmethod
    def _now() -> float:
        return trio.current_time()

    def _emit(self, event: RuntimeEvent) -> None:
        if self.sup.events is not None:
            self.sup.events.emit(event)
