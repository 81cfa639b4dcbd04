"""Observable runtime events and the bus that carries them.

Every layer reports what it does (a socket opened, a rotation, an actor restart, a routed
message, a turn) as a small frozen msgspec Struct tagged by ``type``. The CLI's live view,
the JSONL trace writer and user code consume the same stream.

Emitting never blocks and never fails the emitter: listeners are called synchronously and a
listener that raises is removed (and counted); subscribers get bounded channels and a slow
subscriber loses events (counted in ``EventBus.dropped``) rather than stalling the runtime.

Texts that come from models and tools (a turn's output, a tool's arguments and output, a
delegated task) are carried cut to ``TEXT_LIMIT`` characters (see :func:`capped`), so one
event stays small whatever a model writes. ``docs/trace.md`` describes every event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import attrs
import msgspec
import trio

from orchestrator.core.redaction import redact

__all__ = [
    "TEXT_LIMIT",
    "ActorEscalated",
    "ActorFailed",
    "ActorRestarted",
    "ActorStarted",
    "ActorStopped",
    "AgentState",
    "ConnectionClosed",
    "ConnectionFailed",
    "ConnectionOpened",
    "ConnectionReconnecting",
    "ConnectionRotated",
    "DeadLetter",
    "DelegationFinished",
    "DelegationStarted",
    "EventBus",
    "MessageRouted",
    "RunAgent",
    "RunFinished",
    "RunStarted",
    "RuntimeEvent",
    "StepFinished",
    "StepStarted",
    "TaskStarted",
    "ToolApproval",
    "ToolFinished",
    "ToolStarted",
    "TranscriptReplayed",
    "TransportFellBack",
    "TurnFinished",
    "TurnRetried",
    "TurnStarted",
    "WarmupFinished",
    "capped",
    "event_encoder",
]

# Longer model or tool texts are cut, with a marker saying how long they were. The default
# tool output cap (16 KiB) fits whole.
TEXT_LIMIT: Final = 16 * 1024


def capped(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` if it has at most ``limit`` characters, else its start and a marker
    ``…[cut: N characters]`` (the result never exceeds ``limit`` by more than the marker)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[cut: {len(text):,} characters]"


class RuntimeEvent(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    """Base of every observable event. ``time`` is trio's clock, in seconds."""

    time: float


# -- runs and steps ----------------------------------------------------------------------------


class RunAgent(msgspec.Struct, frozen=True, kw_only=True):
    """An agent of a run, with its own limits (``None``: only the run's)."""

    name: str
    role: str
    model: str
    max_turns: int | None = None
    max_tokens: int | None = None


class RunStarted(RuntimeEvent, tag="run.started", frozen=True, kw_only=True):
    """A run is about to start its agents: what it will do and within which budgets.

    ``steps`` is the number of steps that will be scheduled (0 in delegate mode).
    """

    plan: str
    mode: str
    endpoint: str
    goal: str | None = None
    agents: tuple[RunAgent, ...] = ()
    steps: int = 0
    max_turns: int | None = None
    max_tokens: int | None = None
    wall_clock: float | None = None


class RunFinished(RuntimeEvent, tag="run.finished", frozen=True, kw_only=True):
    """A run ended, whatever way: the ``status``, ``code``, ``reason`` and ``answer``
    (capped) of its ``RunResult``."""

    plan: str
    status: str
    duration: float
    turns: int
    input_tokens: int
    output_tokens: int
    code: str | None = None
    reason: str | None = None
    answer: str | None = None


class StepStarted(RuntimeEvent, tag="step.started", frozen=True, kw_only=True):
    """A step's task was sent to its agent's mailbox (``attempt`` 2 after the agent crashed
    on it); ``task.started`` says when the agent takes it up."""

    step: str
    agent: str
    attempt: int = 1


class StepFinished(RuntimeEvent, tag="step.finished", frozen=True, kw_only=True):
    """A step ended: ``completed``, ``failed``, ``skipped`` (a dependency failed), ``cut``
    or ``not_started`` (the run ended while it ran, or before its agent took it up).
    ``duration`` counts from when its agent took it up, ``waited`` is the time before."""

    step: str
    agent: str
    status: str
    duration: float
    waited: float = 0.0
    error: str | None = None


# -- connection layer ------------------------------------------------------------------------


class ConnectionOpened(RuntimeEvent, tag="connection.opened", frozen=True, kw_only=True):
    agent: str
    connection: int
    url: str
    reason: str
    duration: float


class ConnectionClosed(RuntimeEvent, tag="connection.closed", frozen=True, kw_only=True):
    agent: str
    connection: int
    reason: str
    age: float


class ConnectionRotated(RuntimeEvent, tag="connection.rotated", frozen=True, kw_only=True):
    """A planned make-before-break rotation finished: ``new`` is warm and in use."""

    agent: str
    old: int
    new: int
    age: float
    duration: float


class WarmupFinished(RuntimeEvent, tag="connection.warmed_up", frozen=True, kw_only=True):
    agent: str
    connection: int
    response_id: str
    items: int
    duration: float


class ConnectionReconnecting(
    RuntimeEvent, tag="connection.reconnecting", frozen=True, kw_only=True
):
    agent: str
    attempt: int
    delay: float
    reason: str
    code: int | None = None


class ConnectionFailed(RuntimeEvent, tag="connection.failed", frozen=True, kw_only=True):
    agent: str
    reason: str
    attempts: int


class TranscriptReplayed(RuntimeEvent, tag="connection.replayed", frozen=True, kw_only=True):
    """The conversation was re-sent in full because the server lost it."""

    agent: str
    reason: str
    items: int


class TransportFellBack(RuntimeEvent, tag="connection.fell_back", frozen=True, kw_only=True):
    """The endpoint has no WebSocket mode: the agent's turns now go over HTTP."""

    agent: str
    url: str
    reason: str


# -- turns -------------------------------------------------------------------------------------


class TurnStarted(RuntimeEvent, tag="turn.started", frozen=True, kw_only=True):
    agent: str
    turn: int
    connection: int
    new_items: int


class TurnRetried(RuntimeEvent, tag="turn.retried", frozen=True, kw_only=True):
    agent: str
    turn: int
    attempt: int
    reason: str


class TurnFinished(RuntimeEvent, tag="turn.finished", frozen=True, kw_only=True):
    """A turn's response completed. ``text`` is its output text (capped)."""

    agent: str
    turn: int
    status: str
    response_id: str | None
    duration: float
    input_tokens: int = 0
    output_tokens: int = 0
    function_calls: int = 0
    text: str = ""


class TaskStarted(RuntimeEvent, tag="task.started", frozen=True, kw_only=True):
    """An agent took a task from its mailbox (a delegation or a step) and starts on it; the
    ``agent.state`` ``idle`` that follows ends it. ``task`` is its text (capped)."""

    agent: str
    sender: str
    step: str | None = None
    task: str = ""


class AgentState(RuntimeEvent, tag="agent.state", frozen=True, kw_only=True):
    """What an agent is doing: ``thinking`` (a turn in flight), ``calling_tool``,
    ``waiting`` (for delegated work), ``idle``."""

    agent: str
    role: str
    state: str
    detail: str = ""


# -- actors and routing ------------------------------------------------------------------------


class ActorStarted(RuntimeEvent, tag="actor.started", frozen=True, kw_only=True):
    actor: str
    supervisor: str | None = None


class ActorStopped(RuntimeEvent, tag="actor.stopped", frozen=True, kw_only=True):
    actor: str
    reason: str


class ActorFailed(RuntimeEvent, tag="actor.failed", frozen=True, kw_only=True):
    actor: str
    error: str


class ActorRestarted(RuntimeEvent, tag="actor.restarted", frozen=True, kw_only=True):
    actor: str
    restarts: int
    delay: float
    reason: str


class ActorEscalated(RuntimeEvent, tag="actor.escalated", frozen=True, kw_only=True):
    """A supervisor exceeded its restart intensity and gave up."""

    supervisor: str
    child: str
    restarts: int
    window: float
    reason: str


class MessageRouted(RuntimeEvent, tag="message.routed", frozen=True, kw_only=True):
    message_id: int
    sender: str
    recipient: str
    kind: str
    summary: str = ""


class DeadLetter(RuntimeEvent, tag="message.dead_letter", frozen=True, kw_only=True):
    message_id: int
    sender: str
    recipient: str
    reason: str


# -- tools -------------------------------------------------------------------------------------


class ToolStarted(RuntimeEvent, tag="tool.started", frozen=True, kw_only=True):
    """The model called a tool. ``arguments`` is the JSON it sent (capped)."""

    agent: str
    tool: str
    call_id: str
    arguments: str = ""


class ToolFinished(RuntimeEvent, tag="tool.finished", frozen=True, kw_only=True):
    """A call ended. ``output`` is what the model gets back (capped): the tool's result,
    or the error JSON when ``ok`` is false (``error`` is its code)."""

    agent: str
    tool: str
    call_id: str
    ok: bool
    duration: float
    error: str | None = None
    output: str = ""


class DelegationStarted(RuntimeEvent, tag="delegation.started", frozen=True, kw_only=True):
    """A planner handed ``task`` (capped) to ``worker``, for its call ``call_id``."""

    agent: str
    worker: str
    call_id: str
    task: str = ""


class DelegationFinished(RuntimeEvent, tag="delegation.finished", frozen=True, kw_only=True):
    """A delegated task came back (``ok``) or failed (``error`` says why)."""

    agent: str
    worker: str
    call_id: str
    ok: bool
    duration: float
    error: str | None = None


class ToolApproval(RuntimeEvent, tag="tool.approval", frozen=True, kw_only=True):
    """The decision on a call of a ``destructive`` or ``external`` tool, before it runs."""

    agent: str
    tool: str
    call_id: str
    side_effect: str
    approved: bool
    by: str
    reason: str = ""


# -- the bus -----------------------------------------------------------------------------------

# The fields that carry free text (error messages, reprs); the others are names and numbers.
_TEXT_FIELDS: Final = ("reason", "error", "summary")


def _redacted(event: RuntimeEvent) -> RuntimeEvent:
    changes = {}
    for name in _TEXT_FIELDS:
        text = getattr(event, name, None)
        if text and isinstance(text, str):
            cleaned = redact(text)
            if cleaned != text:
                changes[name] = cleaned
    return msgspec.structs.replace(event, **changes) if changes else event


Listener = Callable[[RuntimeEvent], Any]

event_encoder: Final = msgspec.json.Encoder()


@attrs.define(eq=False)
class EventBus:
    """Fan-out of runtime events to synchronous listeners and bounded async subscribers."""

    _listeners: list[Listener] = attrs.field(factory=list)
    _channels: list[trio.MemorySendChannel[RuntimeEvent]] = attrs.field(factory=list)
    dropped: int = 0
    listener_errors: int = 0

    @property
    def active(self) -> bool:
        """Whether anybody listens; emitters may skip building events when not."""
        return bool(self._listeners or self._channels)

    def emit(self, event: RuntimeEvent) -> None:
        """Deliver ``event`` to every listener and subscriber without blocking.

        Its free texts (``reason``, ``error``, ``summary``: a crash's repr, a server's
        message) are redacted first.
        """
        event = _redacted(event)
        for listener in tuple(self._listeners):
            try:
                listener(event)
            except Exception:
                # A broken observer must never break the runtime it observes.
                self.listener_errors += 1
                self.remove_listener(listener)
        for channel in tuple(self._channels):
            try:
                channel.send_nowait(event)
            except trio.WouldBlock:
                self.dropped += 1
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._channels.remove(channel)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @asynccontextmanager
    async def subscribe(
        self, max_buffer: int = 1024
    ) -> AsyncIterator[trio.MemoryReceiveChannel[RuntimeEvent]]:
        """Receive events on a bounded channel for the duration of the ``async with``."""
        send, receive = trio.open_memory_channel[RuntimeEvent](max_buffer)
        self._channels.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._channels:
                self._channels.remove(send)
            send.close()
