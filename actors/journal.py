"""What an agent remembers of its work, and what it tells a job's journal.

An agent's conversation lives in its :class:`~orchestrator.core.session.Session`; what the session
cannot say lives here, in :class:`AgentMemory`, on the actor object (so it survives a
restart by the supervisor) and, when the run is a durable job, in the journal too (so it
survives the process):

* the **replies** it gave, by message id: a message delivered again (an asker retrying after
  a crash, a resumed job re-sending what had no answer) is answered from here, not redone;
* the **open turn**: the function calls of its latest turn and, for each, whether it is
  pending, started (a side effect may have happened) or done (with the output the model
  will get). A task delivered again continues from here: a tool that completed is never run
  again because a later turn failed.

Every change is also written to a :class:`JournalSink` when there is one. The order of
writes is the order of events, and one rule makes side effects safe: **a tool that is not
``read_only`` runs only after its "started" mark is durable** (:meth:`JournalSink.call_started`
is awaited; everything else is written behind, in order).

What to do with a call found started but not done (in doubt) is a pure decision,
:func:`in_doubt_action`: read-only and idempotent tools run again with the same idempotency
key and the next attempt number; any other is *parked* for a person to resolve.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal, Protocol

import attrs
import msgspec

from orchestrator.core import rules
from orchestrator.core.protocol.events import Item
from orchestrator.errors import CallsParked

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from orchestrator.core.protocol.events import FunctionCallItem

__all__ = [
    "RERUNNABLE",
    "RUNTIME_CALL",
    "AgentMemory",
    "CallEntry",
    "CallStatus",
    "CallsParked",
    "InDoubtAction",
    "JournalSink",
    "MessageEntry",
    "TurnEntry",
    "idempotency_key",
    "in_doubt_action",
]

CallStatus = Literal["pending", "started", "done"]
InDoubtAction = Literal["rerun", "park"]

# Side-effect classes whose in-doubt calls may simply run again (with the same key).
RERUNNABLE: Final = rules.RERUNNABLE
# The side effect recorded for the runtime's own calls (delegations, finish): they are
# idempotent by construction (a delegation is a message with a stable id).
RUNTIME_CALL: Final = "runtime"


class CallEntry(msgspec.Struct, kw_only=True):
    """One function call of one turn, and what became of it.

    ``attempt`` counts the times the tool was started (0: never); ``output`` is what the
    model gets (also for errors, as the executor's JSON).
    """

    agent: str
    turn: int
    call_id: str
    name: str
    arguments: str
    side_effect: str = "read_only"
    status: CallStatus = "pending"
    attempt: int = 0
    output: str | None = None
    error: str | None = None
    truncated: bool = False
    timed_out: bool = False


@attrs.frozen(kw_only=True)
class TurnEntry:
    """One completed model turn of one agent: what was sent, what came back.

    ``seq`` counts the agent's turns from 1 (warm-ups excluded); ``message`` is the id of the
    task the turn served; ``reply`` is the task's answer when this turn ended it.
    """

    agent: str
    seq: int
    message: str | None
    new_items: tuple[Item, ...]
    output: tuple[Item, ...]
    response_id: str
    input_tokens: int = 0
    output_tokens: int = 0
    calls: tuple[CallEntry, ...] = ()
    reply: str | None = None


class MessageEntry(msgspec.Struct, frozen=True, kw_only=True):
    """A task routed to an agent, under an id that is the same in every process."""

    id: str
    sender: str
    recipient: str
    text: str
    step: str | None = None


class JournalSink(Protocol):
    """Where an agent's memory is written when the run is a durable job."""

    def turn(self, entry: TurnEntry) -> None:
        """Record a completed turn (with its calls, pending); written behind."""

    async def call_started(self, entry: CallEntry) -> None:
        """Record that a tool is about to run; returns once the record is durable.

        Raises:
            OrchestratorError: the record could not be written; the tool must not run.
        """

    def call_finished(self, entry: CallEntry) -> None:
        """Record a call's output; written behind."""

    def replied(self, agent: str, message: str, text: str) -> None:
        """Record an answer given otherwise than by a turn (the planner's ``finish``)."""

    def message_sent(self, message: MessageEntry) -> None:
        """Record a routed task (insert if absent: a message re-sent keeps its record)."""


def in_doubt_action(side_effect: str) -> InDoubtAction:
    """What to do with a call that started and has no recorded result.

    >>> in_doubt_action("read_only"), in_doubt_action("non_idempotent")
    ('rerun', 'park')
    """
    return "rerun" if side_effect in RERUNNABLE or side_effect == RUNTIME_CALL else "park"


def idempotency_key(job: str, agent: str, turn: int, call_id: str) -> str:
    """The key a tool should use to make its effect happen once.

    Stable across attempts and processes, and unique in the store: a model's ``call_id``
    alone is not (a seeded server mints the same ids again on a new connection).
    """
    return f"{job}/{agent}/{turn}/{call_id}"


@attrs.define(eq=False)
class AgentMemory:
    """One agent's replies and open turn; see the module docstring.

    Args:
        agent: the agent's name.
        job: the job (or run) id, part of every idempotency key.
        sink: the journal, for durable jobs; ``None`` keeps everything in memory.
    """

    agent: str
    job: str = "run"
    sink: JournalSink | None = attrs.field(default=None, repr=False)
    replies: dict[str, str] = attrs.field(factory=dict)
    open_turn: int | None = None
    open_message: str | None = None
    _calls: dict[str, CallEntry] = attrs.field(factory=dict, alias="calls")

    # -- reading ------------------------------------------------------------------------------

    @property
    def open_calls(self) -> tuple[CallEntry, ...]:
        """The calls of the latest turn, in call order, whatever their status."""
        return tuple(self._calls.values())

    def call(self, call_id: str) -> CallEntry | None:
        return self._calls.get(call_id)

    def continues(self, message: str) -> bool:
        """Whether a delivery of ``message`` resumes a task whose latest turn made calls."""
        return self.open_message == message and bool(self._calls)

    def in_doubt(self) -> list[CallEntry]:
        """Open calls that started and have no result."""
        return [entry for entry in self._calls.values() if entry.status == "started"]

    def parked(self) -> list[CallEntry]:
        """In-doubt calls whose tools may not run again."""
        return [e for e in self.in_doubt() if in_doubt_action(e.side_effect) == "park"]

    def key(self, entry: CallEntry) -> str:
        return idempotency_key(self.job, self.agent, entry.turn, entry.call_id)

    # -- recording ----------------------------------------------------------------------------

    def turn_completed(
        self,
        *,
        seq: int,
        message: str | None,
        new_items: Sequence[Item],
        output: Sequence[Item],
        response_id: str,
        input_tokens: int,
        output_tokens: int,
        calls: Sequence[FunctionCallItem],
        side_effects: dict[str, str],
        reply: str | None,
    ) -> None:
        """A turn committed to the session: its calls become the open ones."""
        entries = [
            CallEntry(
                agent=self.agent,
                turn=seq,
                call_id=call.call_id,
                name=call.name,
                arguments=call.arguments,
                side_effect=side_effects.get(call.name, "read_only"),
            )
            for call in calls
        ]
        self._calls = {entry.call_id: entry for entry in entries}
        self.open_turn = seq if entries else None
        self.open_message = message if entries else None
        if reply is not None and message is not None:
            self.replies[message] = reply
        if self.sink is not None:
            self.sink.turn(
                TurnEntry(
                    agent=self.agent,
                    seq=seq,
                    message=message,
                    new_items=tuple(new_items),
                    output=tuple(output),
                    response_id=response_id,
                    input_tokens=input_tokens,
                    output_tokens=output_tokens,
                    calls=tuple(msgspec.structs.replace(e) for e in entries),
                    reply=reply,
                )
            )

    async def start_call(self, call_id: str, side_effect: str) -> tuple[str, int]:
        """Mark an open call started; durable first unless its tool is ``read_only``.

        Returns:
            The call's idempotency key and attempt number (1 for the first run).

        Raises:
            OrchestratorError: the mark could not be journaled (the tool must not run).
        """
        entry = self._calls[call_id]
        entry.side_effect = side_effect
        entry.attempt += 1
        entry.status = "started"
        if self.sink is not None and side_effect != "read_only":
            await self.sink.call_started(msgspec.structs.replace(entry))
        return self.key(entry), entry.attempt

    def finish_call(
        self,
        call_id: str,
        output: str,
        *,
        error: str | None = None,
        truncated: bool = False,
        timed_out: bool = False,
    ) -> None:
        """Record an open call's output."""
        entry = self._calls.get(call_id)
        if entry is None:  # not a call of the open turn (a caller outside the agent loop)
            return
        entry.status = "done"
        entry.output = output
        entry.error = error
        entry.truncated = truncated
        entry.timed_out = timed_out
        if self.sink is not None:
            self.sink.call_finished(msgspec.structs.replace(entry))

    def replied(self, message: str, text: str) -> None:
        """An answer given by a call (``finish``), not by a turn of its own."""
        self.replies[message] = text
        if self.sink is not None:
            self.sink.replied(self.agent, message, text)

    def message_sent(self, message: MessageEntry) -> None:
        if self.sink is not None:
            self.sink.message_sent(message)

    # -- rebuilding ---------------------------------------------------------------------------

    @classmethod
    def from_journal(
        cls,
        agent: str,
        job: str,
        turns: Iterable[TurnEntry],
        calls: Iterable[CallEntry],
        replies: dict[str, str],
        sink: JournalSink | None = None,
    ) -> AgentMemory:
        """The memory a journal describes: replies, and the latest turn's calls.

        Args:
            turns: the agent's journaled turns, in order.
            calls: the latest state of the calls of its latest turn.
            replies: answers recorded outside turns (``finish``).
        """
        memory = cls(agent, job, sink)
        last: TurnEntry | None = None
        for turn in turns:
            if turn.reply is not None and turn.message is not None:
                memory.replies[turn.message] = turn.reply
            last = turn
        memory.replies.update(replies)
        if last is not None and last.calls:
            latest = {c.call_id: c for c in calls if c.turn == last.seq}
            memory._calls = {c.call_id: latest.get(c.call_id, c) for c in last.calls}
            memory.open_turn = last.seq
            memory.open_message = last.message
        return memory
