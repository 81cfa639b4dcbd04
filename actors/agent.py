"""AgentActor: an actor that owns one connection and one session and runs tool loops.

Each incarnation opens its own connection (the first socket opens lazily, at the first turn)
and closes it when it ends; the session lives on the actor object, so a crash in the actor's
code restarts it with its conversation intact. Socket expiry and loss never reach the actor:
the connection rotates and recovers by itself, and only when it gives up (bounded attempts)
does the failure crash the incarnation for the supervisor to restart.

A message is an :class:`Assignment`; the reply is an :class:`AssignmentResult` with the agent's
final text.

An agent with a declared output (``output``) must answer JSON of that type: its final text is
decoded and validated; an answer that does not match gets one repair turn, a user message
carrying the validation error, and a second mismatch ends the run with
:class:`~orchestrator.errors.OutputInvalid`. The reply then carries the JSON text (what a
planner or a later step reads) and the decoded value (``AssignmentResult.output``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import msgspec
import trio

from actors.approval import ApprovalDecision, ApprovalRequest, Approver, decide
from actors.base import Actor
from actors.journal import AgentMemory, CallsParked, in_doubt_action
from actors.tools import ToolExecutor, ToolRepairBudgetExceeded
from orchestrator.core.budget import BudgetTracker
from orchestrator.core.connection import Connection
from orchestrator.core.failpoints import crash_point
from orchestrator.core.model_names import closest_model
from orchestrator.core.observe import AgentState, EventBus, TaskStarted, ToolApproval, capped
from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    Item,
    MessageItem,
    UnknownItem,
)
from orchestrator.core.redaction import redact
from orchestrator.core.session import Session
from orchestrator.errors import (
    ActorDead,
    AuthenticationError,
    BudgetExceeded,
    ConfigurationError,
    JournalError,
    OrchestratorError,
    OutputInvalid,
    ServerError,
)

if TYPE_CHECKING:
    from orchestrator.core.protocol.turn import Response

__all__ = [
    "OUTPUT_REPAIRS",
    "AgentActor",
    "Assignment",
    "AssignmentResult",
    "CallOutcome",
    "OutputCheck",
]

_NO_SCOPE: Final = contextlib.nullcontext()
ENDED_OUTPUT: Final = '{"status":"ended","note":"the previous task ended before this output"}'
# Answers that do not match the declared output get this many repair turns per task.
OUTPUT_REPAIRS: Final = 1


class OutputCheck(Protocol):
    """A declared output (``plans.OutputType`` is one): its name, and how to check a text."""

    @property
    def name(self) -> str: ...

    def check(self, text: str) -> tuple[Any, str]:
        """The value and the JSON text of an answer; raises ``ValueError`` (with where and
        why) when the answer is not of the output."""
        ...


def repair_message(output: str, error: str, *, cut: bool = False) -> str:
    """The user message of a repair turn: what was wrong, and what to send instead."""
    reason = " (it was cut off at max_output_tokens)" if cut else ""
    return (
        f"Your answer does not match the required output {output!r}{reason}: {error}. "
        "Answer again with only the corrected JSON, nothing else."
    )


class Assignment(msgspec.Struct, frozen=True, kw_only=True):
    """Work for an agent: the text becomes the next user message. (Not a "task": in trio a
    task is a running coroutine.)

    ``id`` names the task the same way in every process (``goal``, ``step:fetch``,
    ``planner/3/call_x``): a task delivered again under the same id is answered from the
    agent's memory when it was already answered, and otherwise continues where it stopped.
    Without an id every delivery is new work.
    """

    text: str
    sender: str = "run"
    step: str | None = None
    id: str | None = None


class AssignmentResult(msgspec.Struct, frozen=True, kw_only=True):
    """An agent's answer to an assignment. With a declared output, ``text`` is the answer's JSON and
    ``output`` the decoded value; otherwise ``output`` is None."""

    agent: str
    text: str
    turns: int
    step: str | None = None
    output: Any = None


@attrs.frozen
class CallOutcome:
    """What handling one response's function calls produced.

    ``answer`` is set when a call ended the task (the planner's ``finish``).
    """

    outputs: tuple[Item, ...]
    answer: str | None = None


ConnectionOpener = Callable[[str], AbstractAsyncContextManager["Connection"]]


def approval_requests(response: Response) -> list[UnknownItem]:
    """The ``mcp_approval_request`` items of a response (a remote MCP server's call
    waiting for our approval)."""
    return [
        item
        for item in response.output
        if isinstance(item, UnknownItem) and item.type == "mcp_approval_request"
    ]


def _cut_off(response: Response) -> bool:
    """Whether the response ended ``incomplete`` at ``max_output_tokens``."""
    details = response.incomplete_details
    return response.status == "incomplete" and (
        details is not None and details.reason == "max_output_tokens"
    )


def _model_not_found(agent: str, model: str) -> ConfigurationError:
    """The service's ``model_not_found`` as ``error[model.not_found]``, naming the agent."""
    close = closest_model(model)
    hint = f" (did you mean {close!r}?)" if close and close != model else ""
    return ConfigurationError(
        f"agent {agent!r} uses model {model!r}, which the service does not have or this key "
        f"may not use{hint}; change the agent's model (or settings.model) in the plan",
        code="model.not_found",
    )


@attrs.define(eq=False)
class AgentActor(Actor):
    """An agent: one connection, one session, its tools.

    Args:
        session: the conversation (model, instructions, tools, transcript).
        memory: its replies and open turn (see ``actors.journal``); a fresh one by default.
        fresh_context: start every new task as a new conversation (a plan's
            ``context = "step"``): the model sees the task alone, not the earlier ones.
        output: the agent's declared output (``plans.OutputType``), or None for text.
        open_connection: opens this agent's connection, given the agent's name.
        tools: the executor of this agent's tools (``None``: no tools).
        budget: the run's budget tracker, consulted before and after every turn.
        events: where agent states (thinking, calling a tool...) are reported.
    """

    session: Session = attrs.field(kw_only=True)
    open_connection: ConnectionOpener = attrs.field(kw_only=True, repr=False)
    tools: ToolExecutor | None = attrs.field(default=None, kw_only=True, repr=False)
    budget: BudgetTracker | None = attrs.field(default=None, kw_only=True, repr=False)
    events: EventBus | None = attrs.field(default=None, kw_only=True, repr=False)
    fresh_context: bool = attrs.field(default=False, kw_only=True)
    output: OutputCheck | None = attrs.field(default=None, kw_only=True, repr=False)
    # Decides a remote MCP server's approval requests (the plan's [approvals]).
    approver: Approver | None = attrs.field(default=None, kw_only=True, repr=False)
    memory: AgentMemory = attrs.field(
        kw_only=True,
        default=attrs.Factory(lambda self: AgentMemory(self.name), takes_self=True),
        repr=False,
    )
    model_turns: int = attrs.field(default=0, init=False)
    tool_calls: int = attrs.field(default=0, init=False)
    tasks_done: int = attrs.field(default=0, init=False)
    busy: float = attrs.field(default=0.0, init=False)  # seconds spent on tasks
    model_time: float = attrs.field(default=0.0, init=False)  # seconds of it in model turns
    _connection: Connection | None = attrs.field(default=None, init=False, repr=False)
    _last_connection: Connection | None = attrs.field(default=None, init=False, repr=False)
    _task_scope: trio.CancelScope | None = attrs.field(default=None, init=False, repr=False)
    # Repair turns spent on the task in hand (answers not of the declared output).
    _repairs: int = attrs.field(default=0, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.tools is not None:
            self.tools.memory = self.memory

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One incarnation: open the connection, serve the mailbox, close the connection."""
        if self._active:
            # Refused before opening a connection that would replace the running one's.
            raise trio.BusyResourceError(f"actor {self.name!r} is already running")
        async with self.open_connection(self.name) as connection:
            self._connection = connection
            self._last_connection = connection
            try:
                await super().run(task_status=task_status)
            finally:
                self._connection = None

    def stop(self) -> None:
        """Stop this incarnation: close the mailbox and cancel the task in hand, if any.

        Unlike the base actor, an agent does not finish its current task first. A run stops
        its agents once it has its answer (they are idle then), or on a budget, a failure or
        a stop request, and then in-flight turns and tools must end at once
        (docs/faults.md#signals-and-processes) rather than go on for a shutdown grace period. The
        asker of the cancelled task gets ``ActorDead``.
        """
        super().stop()
        scope = self._task_scope
        if scope is not None:
            envelope = self.current_envelope
            if envelope is not None and envelope.reply is not None and not envelope.reply.done:
                envelope.reply.fail(ActorDead(self.name, "stopped"))
            scope.cancel()

    @property
    def connection(self) -> Connection | None:
        """The current (or, between incarnations, the last) connection, for statistics."""
        return self._connection or self._last_connection

    # -- messages -----------------------------------------------------------------------------

    async def handle(self, message: Any) -> Any:
        if not isinstance(message, Assignment):
            raise TypeError(
                f"agent {self.name!r} expects an Assignment, got {type(message).__name__}"
            )
        began = trio.current_time()
        if self.events is not None and self.events.active:
            self.events.emit(
                TaskStarted(
                    time=began,
                    agent=self.name,
                    sender=message.sender,
                    step=message.step,
                    task=capped(message.text),
                )
            )
        with trio.CancelScope() as self._task_scope:
            try:
                return await self.perform(message)
            except (
                BudgetExceeded,
                ToolRepairBudgetExceeded,
                OutputInvalid,
                AuthenticationError,
                ConfigurationError,
                JournalError,
                CallsParked,
            ) as exc:
                # These end the whole run, not just this incarnation: record the reason and
                # unwind with the run's cancellation instead of crashing into a restart.
                if self.budget is not None:
                    self.budget.fail(exc)
                    if self.budget.scope is not None:
                        # The run's scope is cancelled now, and the run stops its agents:
                        # stop() cancels this wait. Raising instead would be a crash (logged
                        # with a traceback) racing the shutdown.
                        await trio.sleep_forever()
                    await trio.lowlevel.checkpoint()
                raise
            finally:
                self._task_scope = None
                self.busy += trio.current_time() - began
                self._state("idle")
        return None  # stop() cancelled the task and has answered its asker

    async def perform(self, task: Assignment) -> AssignmentResult:
        """Run the tool loop for ``task`` until the model answers without calling a tool.

        A task delivered again (same ``id``) is answered from memory when it was answered,
        and otherwise continues from its latest turn: the outputs of calls that completed
        are reused, never recomputed.
        """
        memory = self.memory
        turns = 0
        self._repairs = 0
        if task.id is not None and task.id in memory.replies:
            text = memory.replies[task.id]
            return AssignmentResult(
                agent=self.name, text=text, turns=0, step=task.step, output=self._value(text)
            )
        opening = await self._opening(task)
        if isinstance(opening, AssignmentResult):
            return opening
        items = opening
        while True:
            response = await self.turn(items, message=task.id)
            self.session.follow_up = True
            turns += 1
            calls = response.function_calls
            requests = approval_requests(response)
            if not calls and not requests:
                answered = self._answer_or_repair(task, response, turns)
                if isinstance(answered, AssignmentResult):
                    return answered
                items = answered
                continue
            items = []
            if calls:
                outcome = await self.handle_calls(calls)
                if outcome.answer is not None:
                    return self._answered(task, outcome.answer, turns)
                items.extend(outcome.outputs)
            items.extend(await self.answer_approvals(requests))

    async def _opening(self, task: Assignment) -> list[Item] | AssignmentResult:
        """The items of the task's first turn: for a task delivered again that stopped with
        calls open, their outputs (reused when they completed); else the task's text, after
        the outputs owed to calls an earlier task left open. An answer if a call gives it."""
        # A forcing tool_choice applies to the first turn of the task (Session.follow_up).
        self.session.follow_up = False
        if task.id is not None and self.memory.continues(task.id):
            self.session.follow_up = True
            outcome = await self.handle_calls(
                [
                    FunctionCallItem(call_id=c.call_id, name=c.name, arguments=c.arguments)
                    for c in self.memory.open_calls
                ]
            )
            if outcome.answer is not None:
                return self._answered(task, outcome.answer, 0)
            return list(outcome.outputs)
        if self.fresh_context:
            self.session.reset()
            return [MessageItem.user(task.text)]
        return [*self._close_pending_calls(), MessageItem.user(task.text)]

    def _answer_or_repair(
        self, task: Assignment, response: Response, turns: int
    ) -> AssignmentResult | list[Item]:
        """A response without calls: the task's answer, or (not of the declared output) the
        items of a repair turn."""
        text = response.text
        if self.output is None:
            self.tasks_done += 1
            return AssignmentResult(agent=self.name, text=text, turns=turns, step=task.step)
        try:
            value, text = self.output.check(text)
        except ValueError as exc:
            return [MessageItem.user(self.repair(str(exc), text, cut=_cut_off(response)))]
        self.tasks_done += 1
        return AssignmentResult(
            agent=self.name, text=text, turns=turns, step=task.step, output=value
        )

    async def answer_approvals(self, requests: Sequence[UnknownItem]) -> list[Item]:
        """``mcp_approval_response`` items for a remote MCP server's approval requests.

        The service asks before it calls a tool of a remote MCP server (the hosted ``mcp``
        tool's ``require_approval``). Each request is decided like a call of an
        ``external`` tool named ``LABEL.TOOL``: by the plan's ``[approvals]`` (patterns such
        as ``researcher:docs.search``), then the run's approver; with none, it is refused.
        """
        answers: list[Item] = []
        for request in requests:
            data = request.data
            tool = f"{data.get('server_label', '')}.{data.get('name', '')}"[:128]
            arguments = data.get("arguments")
            ask = ApprovalRequest(
                agent=self.name,
                tool=tool,
                call_id=str(data.get("id", "")),
                side_effect="external",
                arguments=arguments if isinstance(arguments, str) else "{}",
            )
            if self.approver is None:
                decision = ApprovalDecision(False, "default", "this agent has no approver")
            else:
                try:
                    decision = await decide(self.approver, ask)
                except Exception as exc:  # a bug in the approver must not approve
                    decision = ApprovalDecision(False, "error", type(exc).__name__)
            self._log.info(
                "remote MCP call {} {} by {}",
                tool,
                "approved" if decision.approved else "denied",
                decision.by,
            )
            if self.events is not None:
                self.events.emit(
                    ToolApproval(
                        time=trio.current_time(),
                        agent=self.name,
                        tool=tool,
                        call_id=ask.call_id,
                        side_effect="external",
                        approved=decision.approved,
                        by=decision.by,
                        reason=redact(decision.reason),
                    )
                )
            answer: dict[str, Any] = {
                "type": "mcp_approval_response",
                "approval_request_id": ask.call_id,
                "approve": decision.approved,
            }
            if not decision.approved and decision.reason:
                answer["reason"] = redact(decision.reason)[:500]
            answers.append(UnknownItem(answer))
        return answers

    def repair(self, error: str, text: str, *, cut: bool = False) -> str:
        """Count a repair turn for an answer that is not of the declared output, and return
        what to tell the model.

        Raises:
            OutputInvalid: the task's repair turns are spent.
        """
        assert self.output is not None
        if self._repairs >= OUTPUT_REPAIRS:
            raise OutputInvalid(self.name, self.output.name, error, text=text)
        self._repairs += 1
        self._log.info("{}: answer not of {}: {}; repair turn", self.name, self.output.name, error)
        return repair_message(self.output.name, error, cut=cut)

    def _value(self, text: str) -> Any:
        """The decoded value of an answer already checked (None without a declared output)."""
        if self.output is None:
            return None
        try:
            return self.output.check(text)[0]
        except ValueError:
            return None  # journaled under another output type: a resume refuses that

    def _answered(self, task: Assignment, answer: str, turns: int) -> AssignmentResult:
        self.tasks_done += 1
        if task.id is not None:
            self.memory.replied(task.id, answer)
        return AssignmentResult(
            agent=self.name, text=answer, turns=turns, step=task.step, output=self._value(answer)
        )

    async def turn(self, items: Sequence[Item], *, message: str | None = None) -> Response:
        """One model turn on this agent's connection, within the budgets.

        The completed turn is recorded in the agent's memory (and journal) before anything
        acts on it.
        """
        connection = self._connection
        if connection is None:
            raise OrchestratorError(f"agent {self.name!r} is not running")
        budget = self.budget
        deadline = math.inf
        if budget is not None:
            budget.before_turn(self.name)
            deadline = budget.agent_deadline(self.name)
        self._state("thinking")
        # No agent wall-clock budget, no cancel scope (1-1.5% of a turn's CPU at scale).
        scope = trio.CancelScope(deadline=deadline) if deadline != math.inf else None
        began = trio.current_time()
        with scope if scope is not None else _NO_SCOPE:
            try:
                response = await connection.run_turn(self.session, items)
            except BaseException as exc:
                # A turn that never completed (refused handshake, lost connection, the run
                # being cancelled) produced nothing: the usage counts finished turns only.
                if budget is not None:
                    budget.cancel_turn(self.name)
                translated = self._plan_error(exc)
                if translated is not None:
                    raise translated from exc
                raise
            finally:
                self.model_time += trio.current_time() - began
        if scope is not None and scope.cancelled_caught:
            assert budget is not None
            limits = budget.agents[self.name]
            assert limits.wall_clock is not None
            raise budget.wall_clock_reached(self.name, limits.wall_clock, limits.wall_clock)
        crash_point("response_completed")
        self.model_turns += 1
        self._record_turn(response, items, message)
        usage = response.usage
        if budget is not None and usage is not None:
            budget.after_turn(self.name, usage.input_tokens, usage.output_tokens)
        return response

    def _plan_error(self, exc: BaseException) -> OrchestratorError | None:
        """The plan's mistake a failed turn reveals, as the error that ends the run (not a
        crash to restart: see ``handle()``); None for anything else."""
        if isinstance(exc, ServerError) and exc.code == "model_not_found":
            return _model_not_found(self.name, self.session.model)
        if isinstance(exc, ServerError) and exc.code == "unsupported_tool":
            return ConfigurationError(f"agent {self.name!r}: {exc}", code="tool.unsupported")
        return None

    def _record_turn(self, response: Response, items: Sequence[Item], message: str | None) -> None:
        """The completed turn into memory (and the journal), with its reply when it is the
        agent's answer (of the declared output, if any)."""
        calls = response.function_calls
        usage = response.usage
        reply = None if calls or approval_requests(response) else response.text
        if reply is not None and self.output is not None:
            try:
                reply = self.output.check(reply)[1]
            except ValueError:
                reply = None  # not an answer: a repair turn follows
        if _cut_off(response):
            self._log.warning(
                "{}: response cut off at max_output_tokens ({} output tokens)",
                self.name,
                usage.output_tokens if usage is not None else "?",
            )
        self.memory.turn_completed(
            seq=self.session.turns,
            message=message,
            new_items=items,
            output=response.output,
            response_id=response.id,
            input_tokens=usage.input_tokens if usage is not None else 0,
            output_tokens=usage.output_tokens if usage is not None else 0,
            calls=calls,
            side_effects={call.name: self.side_effect_of(call.name) for call in calls},
            reply=reply,
        )

    def side_effect_of(self, tool: str) -> str:
        """The side-effect class of one of this agent's tools (``read_only`` if unknown)."""
        return self.tools.side_effect_of(tool) if self.tools is not None else "read_only"

    async def handle_calls(self, calls: Sequence[FunctionCallItem]) -> CallOutcome:
        """Run this agent's tools for the calls of one response (concurrently)."""
        self.tool_calls += len(calls)
        self._state("calling_tool", ", ".join(call.name for call in calls))
        return CallOutcome(tuple(await self.run_tools(calls)))

    async def run_tools(self, calls: Sequence[FunctionCallItem]) -> list[FunctionCallOutputItem]:
        """Outputs for ``calls``: recorded ones reused, the others run (concurrently).

        Raises:
            CallsParked: a call may or may not have run and its tool may not run twice.
            ToolRepairBudgetExceeded: the model keeps calling tools wrongly.
        """
        if not calls:
            return []
        memory = self.memory
        outputs: dict[str, FunctionCallOutputItem] = {}
        todo: list[FunctionCallItem] = []
        parked = []
        for call in calls:
            entry = memory.call(call.call_id)
            if entry is not None and entry.status == "done" and entry.output is not None:
                outputs[call.call_id] = FunctionCallOutputItem(
                    call_id=call.call_id, output=entry.output
                )
            elif (
                entry is not None
                and entry.status == "started"
                and in_doubt_action(entry.side_effect) == "park"
            ):
                parked.append(entry)
            else:
                todo.append(call)
        if parked:
            raise CallsParked(parked)
        if self.tools is None:
            for call in todo:
                output = msgspec.json.encode(
                    {"error": "unknown_tool", "tool": call.name[:64], "allowed": []}
                ).decode()
                memory.finish_call(call.call_id, output, error="unknown_tool")
                outputs[call.call_id] = FunctionCallOutputItem(call_id=call.call_id, output=output)
        elif todo:
            for item in await self.tools.execute_all(todo):
                outputs[item.call_id] = item
        return [outputs[call.call_id] for call in calls]

    def _close_pending_calls(self) -> list[Item]:
        """Outputs for calls a previous task left unanswered (a ``finish`` call, say):
        the recorded output when the call completed, else a note that the task ended."""
        closing: list[Item] = []
        for call in self.session.pending_calls():
            entry = self.memory.call(call.call_id)
            output = entry.output if entry is not None and entry.status == "done" else None
            closing.append(
                FunctionCallOutputItem(
                    call_id=call.call_id, output=output if output is not None else ENDED_OUTPUT
                )
            )
        return closing

    def _state(self, state: str, detail: str = "") -> None:
        if self.events is not None and self.events.active:
            self.events.emit(
                AgentState(
                    time=trio.current_time(),
                    agent=self.name,
                    role=self.role or "worker",
                    state=state,
                    detail=detail,
                )
            )
