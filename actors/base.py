"""Actor: a bounded mailbox, a receive loop and lifecycle hooks.

Subclass :class:`Actor` and implement :meth:`Actor.handle`; what ``handle`` returns is the
reply to an ask. Run an actor with ``await nursery.start(actor.run)`` or, usually, give it
to a :class:`~orchestrator.core.supervisor.Supervisor` as a child::

    @attrs.define(eq=False)
    class Counter(Actor):
        total: int = 0

        async def handle(self, message: Any) -> Any:
            self.total += message
            return self.total

    router = Router()
    counter = Counter("counter", router=router)
    supervisor = Supervisor("root", [counter])

Incarnations. Each call of :meth:`Actor.run` is one incarnation; a supervisor restarts an
actor by calling ``run`` again on the same object. So:

- **State lives on the object** and survives restarts (an agent keeps its session).
  Reset what must not survive in :meth:`Actor.on_start`.
- **Each incarnation gets a fresh mailbox**, registered with the router under the actor's
  name. When an incarnation ends (stop, crash or cancellation) its mailbox closes: the ask
  being handled and every queued ask fail with :class:`~orchestrator.errors.ActorDead`
  (``__cause__`` is the crash, if any), queued tells become dead letters, and sending to the
  actor raises ``ActorDead`` until the next incarnation is up. Messages are never replayed
  into the next incarnation: a message that crashed the actor would crash it again, and an
  asker who got ``ActorDead`` may already have retried. Failing fast is the safe default;
  retrying is the sender's decision.

Hooks, per incarnation: :meth:`on_start` before the actor reports started (raising there is
a failure to start); :meth:`handle` per message, where an exception is a crash (the
supervisor restarts the actor, "let it crash"); :meth:`on_failure` once after a crash, for
bookkeeping; :meth:`on_stop` after every incarnation whose ``on_start`` succeeded, shielded
from cancellation for up to ``stop_grace`` seconds, to release what ``on_start`` acquired.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio
from loguru import logger

from orchestrator.core.router import (
    DEFAULT_MAILBOX_SIZE,
    EXTERNAL_SENDER,
    Envelope,
    Mailbox,
    Router,
)
from orchestrator.core.supervisor import DEFAULT_SHUTDOWN_GRACE, ChildSpec, RestartType
from orchestrator.errors import ActorDead

if TYPE_CHECKING:
    # loguru's Logger type exists only in its stubs; attrs never evaluates annotations.
    from loguru import Logger  # noqa: TC004

__all__ = ["DEFAULT_STOP_GRACE", "Actor", "ActorStatistics"]

DEFAULT_STOP_GRACE: Final = 5.0


@attrs.frozen
class ActorStatistics:
    """A snapshot of one actor.

    Attributes:
        running: whether an incarnation is up and accepting messages.
        mailbox_depth: messages queued in the current mailbox.
        processed: messages handled to completion, over all incarnations.
        failures: incarnations that ended with an exception.
        restarts: incarnations after the first.
    """

    name: str
    running: bool
    mailbox_depth: int
    mailbox_capacity: int
    processed: int
    failures: int
    restarts: int


def _bind_log(actor: Actor) -> Logger:
    return logger.bind(actor=actor.name, role=actor.role)


@attrs.define(eq=False)
class Actor(abc.ABC):
    """Base class of every actor. Fields after ``name`` are keyword-only.

    Args:
        name: unique on its router; the mailbox is registered under it.
        role: an optional role for lookups (``router.names(role="worker")``).
        router: where the mailbox is registered and through which messages travel; each
            actor gets a private one by default, a team shares one.
        mailbox_size: how many messages may queue before senders wait.
        stop_grace: how long :meth:`on_stop` may run, shielded, after cancellation.
    """

    name: str
    role: str | None = attrs.field(default=None, kw_only=True)
    router: Router = attrs.field(factory=Router, kw_only=True, repr=False)
    mailbox_size: int = attrs.field(default=DEFAULT_MAILBOX_SIZE, kw_only=True)
    stop_grace: float = attrs.field(default=DEFAULT_STOP_GRACE, kw_only=True)
    _mailbox: Mailbox | None = attrs.field(default=None, init=False, repr=False)
    _current: Envelope | None = attrs.field(default=None, init=False, repr=False)
    _starts: int = attrs.field(default=0, init=False, repr=False)
    # True from the start of run() to the end of its cleanup, including after stop() closed
    # the mailbox while the last message is still being handled.
    _active: bool = attrs.field(default=False, init=False, repr=False)
    _processed: int = attrs.field(default=0, init=False, repr=False)
    _failures: int = attrs.field(default=0, init=False, repr=False)
    _log: Logger = attrs.field(
        default=attrs.Factory(_bind_log, takes_self=True), init=False, repr=False
    )

    # -- hooks -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def handle(self, message: Any) -> Any:
        """Handle one message; the return value is the reply when the message was an ask.

        Raising crashes this incarnation: the pending ask fails with ``ActorDead`` and the
        supervisor decides about a restart. To answer an asker with an error instead, catch
        it and return a value that says so.
        """

    async def on_start(self) -> None:  # noqa: B027 (optional hook)
        """Called at the start of every incarnation, before the actor reports started.

        The mailbox is already open, so messages sent meanwhile queue up. Raising here is a
        failure to start.
        """

    async def on_failure(self, error: Exception) -> None:  # noqa: B027 (optional hook)
        """Called once when an incarnation fails, after its pending asks were failed.

        For bookkeeping (e.g. marking an unfinished turn); it cannot prevent the crash.
        """

    async def on_stop(self) -> None:  # noqa: B027 (optional hook)
        """Called when an incarnation whose :meth:`on_start` succeeded ends, for any reason.

        Runs shielded from cancellation for at most ``stop_grace`` seconds.
        """

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run one incarnation: open a mailbox, ``on_start``, then handle messages until stopped.

        Returns when :meth:`stop` was called (a normal exit).

        Raises:
            trio.BusyResourceError: this actor is already running.
            ValueError: another running actor has this name on the router.
            Exception: whatever ``on_start`` or ``handle`` raised (a crash).
        """
        if self._active:
            raise trio.BusyResourceError(f"actor {self.name!r} is already running")
        mailbox = self.router.open_mailbox(self.name, role=self.role, capacity=self.mailbox_size)
        self._active = True
        self._mailbox = mailbox
        self._starts += 1
        log = self._log
        started = False
        reason = "cancelled"
        try:
            await self.on_start()
            started = True
            log.info("{} started (incarnation {})", self.name, self._starts)
            task_status.started()
            await self._serve(mailbox)
            reason = "stopped"
        except Exception as exc:
            self._failures += 1
            reason = f"crashed: {exc!r}"
            self._end(mailbox, reason, exc)
            log.opt(exception=exc).warning("{} crashed: {!r}", self.name, exc)
            await self.on_failure(exc)
            raise
        finally:
            self._end(mailbox, reason, None)
            try:
                if started:
                    with trio.move_on_after(self.stop_grace, shield=True):
                        await self.on_stop()
                    log.info("{} stopped ({})", self.name, reason)
            finally:
                self._active = False

    async def _serve(self, mailbox: Mailbox) -> None:
        handle = self.handle
        while True:
            try:
                envelope = await mailbox.receive()
            except trio.EndOfChannel:
                return
            self._current = envelope
            result = await handle(envelope.message)
            self._current = None
            reply = envelope.reply
            if reply is not None and not reply.done:
                reply.send(result)
            self._processed += 1

    def _end(self, mailbox: Mailbox, reason: str, cause: Exception | None) -> None:
        """Fail the ask in flight and close the mailbox; idempotent."""
        current, self._current = self._current, None
        if current is not None and current.reply is not None and not current.reply.done:
            # Not a dead letter: it was delivered, the actor died handling it.
            error = ActorDead(self.name, reason, cause=cause)
            current.reply.fail(error)
        mailbox.close(reason, cause)

    def stop(self) -> None:
        """Ask the running incarnation to finish: the message being handled completes, queued
        ones are dropped (asks fail with ``ActorDead``), and :meth:`run` returns.

        Idempotent and non-blocking; does nothing when the actor is not running. Under a
        supervisor a permanent actor that stops itself is restarted; use ``transient``.
        """
        if self._mailbox is not None:
            self._mailbox.close("stopped")

    def child_spec(
        self, *, restart: RestartType = "permanent", shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    ) -> ChildSpec:
        """This actor as a supervisor child: ``run`` to start it, ``stop`` to stop it."""
        return ChildSpec(
            self.name, self.run, restart=restart, shutdown_grace=shutdown_grace, stop=self.stop
        )

    # -- messaging -------------------------------------------------------------------------

    async def tell(
        self,
        message: Any,
        *,
        sender: str = EXTERNAL_SENDER,
        timeout: float | None = None,  # noqa: ASYNC109 (see Router.tell)
    ) -> int:
        """Send ``message`` to this actor through its router; see :meth:`Router.tell`.

        Returns:
            The message id.

        Raises:
            UnknownRecipient: the actor has never run on its router.
            ActorDead: the actor is not running.
            DeliveryTimeout: its mailbox stayed full for ``timeout`` seconds.
        """
        return await self.router.tell(sender, self.name, message, timeout=timeout)

    async def ask(
        self,
        message: Any,
        *,
        sender: str = EXTERNAL_SENDER,
        timeout: float | None = None,  # noqa: ASYNC109 (see Router.tell)
    ) -> Any:
        """Send ``message`` to this actor and return its reply; see :meth:`Router.ask`.

        Raises:
            UnknownRecipient: the actor has never run on its router.
            ActorDead: the actor is not running, or stopped or crashed before replying.
            DeliveryTimeout: its mailbox stayed full until the deadline.
            trio.TooSlowError: no reply by the deadline.
        """
        return await self.router.ask(sender, self.name, message, timeout=timeout)

    # -- inspection ------------------------------------------------------------------------

    @property
    def current_envelope(self) -> Envelope | None:
        """The envelope being handled (sender, message id, reply handle), inside ``handle``."""
        return self._current

    @property
    def running(self) -> bool:
        """Whether an incarnation is up and accepting messages."""
        return self._mailbox is not None and not self._mailbox.closed

    def statistics(self) -> ActorStatistics:
        """A snapshot: mailbox depth, processed messages, failures, restarts."""
        mailbox = self._mailbox
        depth = 0 if mailbox is None else mailbox.statistics().depth
        return ActorStatistics(
            name=self.name,
            running=self.running,
            mailbox_depth=depth,
            mailbox_capacity=self.mailbox_size,
            processed=self._processed,
            failures=self._failures,
            restarts=max(0, self._starts - 1),
        )
