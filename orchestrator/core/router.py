"""Names to bounded mailboxes: tell, ask and reply, message ids, dead letters.

The router maps actor names (each with an optional role) to :class:`Mailbox` objects. Every
message gets a message id (a monotonic int per router) and travels in an :class:`Envelope`;
an ask also carries a :class:`ReplyHandle` the recipient answers through.

Guarantees:

- **Bounded.** Mailboxes are bounded ``trio`` memory channels. A sender facing a full
  mailbox waits up to its deadline, then gets :class:`~orchestrator.errors.DeliveryTimeout`.
- **Order.** Messages from one sender task to one recipient are received in the order they
  were sent (trio channels queue blocked senders first in, first out), and their ids increase
  in that order.
- **Nothing hangs on a dead actor.** When a mailbox closes (its actor stopped, crashed or was
  cancelled) every queued ask fails with :class:`~orchestrator.errors.ActorDead`; sending to a
  closed mailbox raises ``ActorDead`` at once.
- **Dead letters.** A message that cannot be delivered (unknown recipient, closed mailbox,
  delivery timeout, dropped from a mailbox that closed) is recorded in a bounded log and
  emitted as a :class:`~orchestrator.core.observe.DeadLetter` event.

A closed mailbox stays registered under its name until the actor opens a new one (a restart)
or the name is unregistered, so senders can tell "not running right now" (``ActorDead``) from
"no such actor" (:class:`~orchestrator.errors.UnknownRecipient`).
"""

from __future__ import annotations

import itertools
import math
import reprlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Final

import attrs
import trio
from loguru import logger

from orchestrator.core.observe import DeadLetter, EventBus, MessageRouted
from orchestrator.errors import (
    ActorDead,
    ConfigurationError,
    DeliveryTimeout,
    LocalProtocolError,
    UnknownRecipient,
)

__all__ = [
    "DEFAULT_DEAD_LETTER_LIMIT",
    "DEFAULT_DELIVERY_TIMEOUT",
    "DEFAULT_MAILBOX_SIZE",
    "EXTERNAL_SENDER",
    "Envelope",
    "Mailbox",
    "MailboxStatistics",
    "ReplyHandle",
    "Router",
    "RouterStatistics",
]

DEFAULT_MAILBOX_SIZE: Final = 64
DEFAULT_DELIVERY_TIMEOUT: Final = 10.0
DEFAULT_DEAD_LETTER_LIMIT: Final = 1000
# The sender name used for messages that come from outside any actor (the caller of run()).
EXTERNAL_SENDER: Final = "<external>"

_summary = reprlib.Repr()
_summary.maxstring = 60
_summary.maxother = 60


@attrs.define(eq=False)
class ReplyHandle:
    """The one-shot channel an ask is answered through; carried in the :class:`Envelope`.

    The recipient calls :meth:`send` or :meth:`fail` exactly once; the asker awaits
    :meth:`wait`. A handle nobody answers is failed with ``ActorDead`` by the actor runtime
    when the recipient's incarnation ends, so an asker never waits on a dead actor.
    """

    _event: trio.Event = attrs.field(factory=trio.Event, init=False)
    _value: Any = attrs.field(default=None, init=False)
    _error: Exception | None = attrs.field(default=None, init=False)

    @property
    def done(self) -> bool:
        """Whether a reply (a value or an error) has been given."""
        return self._event.is_set()

    def send(self, value: Any) -> None:
        """Answer the ask with ``value``.

        Raises:
            RuntimeError: the ask was already answered (a bug in the recipient).
        """
        if self._event.is_set():
            raise LocalProtocolError("this ask was already answered")
        self._value = value
        self._event.set()

    def fail(self, error: Exception) -> None:
        """Answer the ask with an error, raised in the asker by :meth:`wait`.

        Raises:
            RuntimeError: the ask was already answered (a bug in the recipient).
        """
        if self._event.is_set():
            raise LocalProtocolError("this ask was already answered")
        self._error = error
        self._event.set()

    async def wait(self) -> Any:
        """Wait for the answer and return it, or raise the error it was failed with."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


@attrs.frozen
class Envelope:
    """A message in flight: who sent it to whom, its id, and for an ask the reply handle."""

    message_id: int
    sender: str
    recipient: str
    message: Any
    reply: ReplyHandle | None = None


@attrs.frozen
class MailboxStatistics:
    """A snapshot of one mailbox."""

    name: str
    depth: int
    capacity: int
    senders_waiting: int
    closed: bool


@attrs.define(eq=False)
class Mailbox:
    """The bounded inbox of one actor incarnation. Open one with :meth:`Router.open_mailbox`.

    The owning actor receives from it; senders reach it through the :class:`Router`. Closing
    it (the incarnation ends) drops what is queued: queued asks fail with ``ActorDead`` and
    every dropped message becomes a dead letter.
    """

    name: str
    capacity: int
    _send: trio.MemorySendChannel[Envelope] = attrs.field(repr=False)
    _receive: trio.MemoryReceiveChannel[Envelope] = attrs.field(repr=False)
    _on_dead_letter: Callable[[Envelope, str], None] = attrs.field(repr=False)
    _closed_reason: str | None = attrs.field(default=None, init=False)
    _closed_cause: BaseException | None = attrs.field(default=None, init=False, repr=False)

    @classmethod
    def open(
        cls, name: str, capacity: int, on_dead_letter: Callable[[Envelope, str], None]
    ) -> Mailbox:
        """Create an open mailbox holding at most ``capacity`` messages.

        Raises:
            ValueError: ``capacity`` is not a positive integer (an unbounded mailbox is a bug).
        """
        if capacity < 1 or math.isinf(capacity):
            raise ConfigurationError(
                f"mailbox capacity must be a positive integer, got {capacity!r}"
            )
        send, receive = trio.open_memory_channel[Envelope](capacity)
        return cls(name, capacity, send, receive, on_dead_letter)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    @property
    def closed_reason(self) -> str | None:
        """Why the mailbox closed (``"stopped"``, ``"crashed: ..."``), or ``None`` if open."""
        return self._closed_reason

    async def receive(self) -> Envelope:
        """Take the next envelope, waiting for one if the mailbox is empty.

        Raises:
            trio.EndOfChannel: the mailbox was closed; the owner should stop.
        """
        try:
            envelope = await self._receive.receive()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None
        if self._closed_reason is not None:
            # Closed while trio was handing this envelope over (receive() yields after
            # taking it): nobody handles it yet, so it is dropped like the queued ones.
            self._drop(envelope, self._closed_reason, self._closed_cause)
            raise trio.EndOfChannel
        return envelope

    def receive_nowait(self) -> Envelope:
        """Take the next envelope without blocking.

        Raises:
            trio.WouldBlock: the mailbox is empty.
            trio.EndOfChannel: the mailbox was closed.
        """
        try:
            return self._receive.receive_nowait()
        except trio.ClosedResourceError:
            raise trio.EndOfChannel from None

    def close(self, reason: str, cause: BaseException | None = None) -> int:
        """Close the mailbox for good; idempotent.

        Queued envelopes are dropped as dead letters and their asks fail with ``ActorDead``
        (whose ``__cause__`` is ``cause``). Senders blocked on a full mailbox are taken in
        and dropped the same way. A receiver blocked in :meth:`receive` gets
        ``trio.EndOfChannel``.

        Returns:
            How many messages were dropped (0 if the mailbox was already closed).
        """
        if self._closed_reason is not None:
            return 0
        self._closed_reason = reason
        self._closed_cause = cause
        dropped = 0
        while True:
            # receive_nowait also takes values from blocked senders, so this empties both
            # the buffer and the queue of waiting senders.
            try:
                envelope = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            dropped += 1
            self._drop(envelope, reason, cause)
        self._receive.close()
        self._send.close()
        return dropped

    def _drop(self, envelope: Envelope, reason: str, cause: BaseException | None) -> None:
        self._on_dead_letter(envelope, reason)
        if envelope.reply is not None and not envelope.reply.done:
            envelope.reply.fail(ActorDead(self.name, reason, cause=cause))

    def statistics(self) -> MailboxStatistics:
        """A snapshot: queued messages, capacity, blocked senders, closed or not."""
        stats = self._send.statistics()
        return MailboxStatistics(
            name=self.name,
            depth=stats.current_buffer_used,
            capacity=self.capacity,
            senders_waiting=stats.tasks_waiting_send,
            closed=self.closed,
        )


@attrs.frozen
class RouterStatistics:
    """A snapshot of a router: names known, mailboxes open, messages routed and lost."""

    registered: int
    running: int
    routed: int
    dead_letters: int


@attrs.define(eq=False)
class Router:
    """Routes messages by actor name to bounded mailboxes.

    Args:
        events: where :class:`MessageRouted` and :class:`DeadLetter` events go.
        delivery_timeout: how long a sender waits on a full mailbox when it gives no
            ``timeout`` of its own.
        dead_letter_limit: how many dead letters the log keeps (the oldest are forgotten;
            :attr:`RouterStatistics.dead_letters` counts them all).
    """

    events: EventBus | None = attrs.field(default=None, kw_only=True)
    delivery_timeout: float = attrs.field(default=DEFAULT_DELIVERY_TIMEOUT, kw_only=True)
    dead_letter_limit: int = attrs.field(default=DEFAULT_DEAD_LETTER_LIMIT, kw_only=True)
    _mailboxes: dict[str, Mailbox] = attrs.field(factory=dict, init=False, repr=False)
    _roles: dict[str, str | None] = attrs.field(factory=dict, init=False, repr=False)
    _ids: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False, repr=False)
    _dead_letters: deque[DeadLetter] = attrs.field(init=False, repr=False)
    _dead_letter_count: int = attrs.field(default=0, init=False, repr=False)
    _routed: int = attrs.field(default=0, init=False, repr=False)
    _opened: dict[str, trio.Event] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.delivery_timeout < 0:
            raise ConfigurationError(f"delivery_timeout must be >= 0, got {self.delivery_timeout}")
        if self.dead_letter_limit < 0:
            raise ConfigurationError(
                f"dead_letter_limit must be >= 0, got {self.dead_letter_limit}"
            )
        self._dead_letters = deque(maxlen=self.dead_letter_limit)

    # -- registration ----------------------------------------------------------------------

    def open_mailbox(
        self, name: str, *, role: str | None = None, capacity: int = DEFAULT_MAILBOX_SIZE
    ) -> Mailbox:
        """Open a fresh mailbox and register it under ``name`` (and ``role``).

        A restarted actor calls this again: the new mailbox replaces the closed one.

        Raises:
            ValueError: ``name`` is registered to a mailbox that is still open (two running
                actors with one name: a bug), or ``capacity`` is not positive.
        """
        current = self._mailboxes.get(name)
        if current is not None and not current.closed:
            raise ConfigurationError(f"an actor named {name!r} is already running on this router")
        mailbox = Mailbox.open(name, capacity, self._record_dead_letter)
        self._mailboxes[name] = mailbox
        self._roles[name] = role
        waiting = self._opened.pop(name, None)
        if waiting is not None:
            waiting.set()
        return mailbox

    def unregister(self, name: str) -> None:
        """Forget ``name``; later messages to it raise ``UnknownRecipient``.

        An actor still running under that name keeps its mailbox but can no longer be
        reached through this router. Unknown names are ignored.
        """
        self._mailboxes.pop(name, None)
        self._roles.pop(name, None)

    def names(self, role: str | None = None) -> tuple[str, ...]:
        """The registered names in registration order, only those with ``role`` if given."""
        if role is None:
            return tuple(self._mailboxes)
        return tuple(name for name, r in self._roles.items() if r == role)

    def role_of(self, name: str) -> str | None:
        """The role ``name`` was registered with.

        Raises:
            UnknownRecipient: ``name`` is not registered.
        """
        if name not in self._roles:
            raise UnknownRecipient(name, self.names())
        return self._roles[name]

    def is_running(self, name: str) -> bool:
        """Whether ``name`` is registered and its mailbox is open."""
        mailbox = self._mailboxes.get(name)
        return mailbox is not None and not mailbox.closed

    async def wait_running(self, name: str) -> None:
        """Wait until ``name`` has an open mailbox (at once if it has one): an actor being
        restarted is reachable again."""
        if self.is_running(name):
            await trio.lowlevel.checkpoint()
            return
        waiting = self._opened.get(name)
        if waiting is None:
            waiting = self._opened[name] = trio.Event()
        await waiting.wait()

    def mailbox(self, name: str) -> Mailbox:
        """The mailbox currently registered under ``name`` (maybe closed).

        Raises:
            UnknownRecipient: ``name`` is not registered.
        """
        mailbox = self._mailboxes.get(name)
        if mailbox is None:
            raise UnknownRecipient(name, self.names())
        return mailbox

    # -- sending ---------------------------------------------------------------------------

    async def tell(
        self,
        sender: str,
        recipient: str,
        message: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (see below)
    ) -> int:
        """Put ``message`` in ``recipient``'s mailbox without waiting for it to be handled.

        ``timeout`` is the sender's deadline, in seconds, for a full mailbox (default:
        :attr:`delivery_timeout`). It is a parameter rather than a cancel scope at the call
        site because running out of it is a typed, per-recipient outcome
        (``DeliveryTimeout``), not a cancellation.

        Returns:
            The message id.

        Raises:
            UnknownRecipient: no actor is registered under ``recipient``.
            ActorDead: the recipient is not running (stopped, crashed, restarting).
            DeliveryTimeout: the mailbox stayed full until the deadline.
        """
        limit = self.delivery_timeout if timeout is None else timeout
        envelope = await self._route(sender, recipient, message, None, limit, None)
        return envelope.message_id

    async def ask(
        self,
        sender: str,
        recipient: str,
        message: Any,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (see tell)
    ) -> Any:
        """Send ``message`` to ``recipient`` and wait for its reply.

        With a ``timeout``, delivery and reply share one deadline that many seconds away.
        Without one, delivery waits up to :attr:`delivery_timeout` and the reply as long as
        the recipient runs (wrap the call in ``trio.fail_after`` to bound it).

        Returns:
            Whatever the recipient replied.

        Raises:
            UnknownRecipient: no actor is registered under ``recipient``.
            ActorDead: the recipient is not running, or its incarnation ended (crash, stop,
                cancellation) before it replied; ``__cause__`` holds the crash, if any.
            DeliveryTimeout: the mailbox stayed full until the deadline.
            trio.TooSlowError: the message was delivered but no reply came by the deadline.
            Exception: any error the recipient chose to answer with.
        """
        reply = ReplyHandle()
        if timeout is None:
            await self._route(sender, recipient, message, reply, self.delivery_timeout, None)
            return await reply.wait()
        deadline = trio.current_time() + timeout
        await self._route(sender, recipient, message, reply, timeout, deadline)
        with trio.move_on_at(deadline):
            return await reply.wait()
        raise trio.TooSlowError(f"no reply from {recipient!r} within {timeout:g} s")

    async def _route(
        self,
        sender: str,
        recipient: str,
        message: Any,
        reply: ReplyHandle | None,
        limit: float,
        deadline: float | None,
    ) -> Envelope:
        # `limit` is the sender's timeout (for the error message); `deadline` the same point in
        # time on trio's clock when the caller already fixed it, else it is `limit` from now.
        # The same checkpoint discipline as trio's MemorySendChannel.send: give cancellation a
        # chance first, and once the envelope is in the mailbox only yield, never raise.
        await trio.lowlevel.checkpoint_if_cancelled()
        envelope = Envelope(next(self._ids), sender, recipient, message, reply)
        mailbox = self._mailboxes.get(recipient)
        if mailbox is None:
            self._record_dead_letter(envelope, "unknown recipient")
            raise UnknownRecipient(recipient, self.names())
        try:
            mailbox._send.send_nowait(envelope)
        except trio.WouldBlock:
            if deadline is None:
                deadline = trio.current_time() + limit
            await self._deliver_blocking(mailbox, envelope, limit, deadline)
            return envelope
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise self._refuse(mailbox, envelope) from None
        self._delivered(envelope)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return envelope

    async def _deliver_blocking(
        self, mailbox: Mailbox, envelope: Envelope, limit: float, deadline: float
    ) -> None:
        with trio.move_on_at(deadline):
            try:
                await mailbox._send.send(envelope)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise self._refuse(mailbox, envelope) from None
            self._delivered(envelope)
            return
        self._record_dead_letter(envelope, "delivery timeout")
        raise DeliveryTimeout(envelope.recipient, limit)

    def _refuse(self, mailbox: Mailbox, envelope: Envelope) -> ActorDead:
        reason = mailbox.closed_reason or "closed"
        self._record_dead_letter(envelope, reason)
        return ActorDead(envelope.recipient, reason)

    def _delivered(self, envelope: Envelope) -> None:
        self._routed += 1
        events = self.events
        if events is not None and events.active:
            events.emit(
                MessageRouted(
                    time=trio.current_time(),
                    message_id=envelope.message_id,
                    sender=envelope.sender,
                    recipient=envelope.recipient,
                    kind="tell" if envelope.reply is None else "ask",
                    summary=_summary.repr(envelope.message),
                )
            )

    def _record_dead_letter(self, envelope: Envelope, reason: str) -> None:
        letter = DeadLetter(
            time=trio.current_time(),
            message_id=envelope.message_id,
            sender=envelope.sender,
            recipient=envelope.recipient,
            reason=reason,
        )
        self._dead_letter_count += 1
        self._dead_letters.append(letter)
        logger.debug(
            "dead letter {} from {} to {}: {}",
            envelope.message_id,
            envelope.sender,
            envelope.recipient,
            reason,
        )
        if self.events is not None:
            self.events.emit(letter)

    # -- inspection ------------------------------------------------------------------------

    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The most recent dead letters, oldest first (at most ``dead_letter_limit``)."""
        return tuple(self._dead_letters)

    def statistics(self) -> RouterStatistics:
        """A snapshot of the router's counters."""
        return RouterStatistics(
            registered=len(self._mailboxes),
            running=sum(not mailbox.closed for mailbox in self._mailboxes.values()),
            routed=self._routed,
            dead_letters=self._dead_letter_count,
        )
