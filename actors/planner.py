"""The planner role: an agent that delegates to workers and finishes with the answer.

The runtime gives the planner function tools it never has to define:

* ``delegate_to_<worker>(task)`` for each worker, described by the worker's description;
* ``finish(answer)`` to end the run with the answer (a plain text reply ends it too). With a
  declared output, ``answer`` takes the output's schema, and an answer not of it gets the
  validation error back as the call's output (one repair, as for a text answer).

Several delegations in one response run in parallel; each worker's reply comes back as the
``function_call_output`` of its call, so the planner can delegate again after seeing results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import attrs
import msgspec
import trio

from actors.agent import AgentActor, Assignment, AssignmentResult, CallOutcome
from actors.journal import RUNTIME_CALL, MessageEntry
from actors.tools import ToolRepairBudgetExceeded
from orchestrator.core.observe import DelegationFinished, DelegationStarted, capped
from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    Item,
    Tool,
)
from orchestrator.errors import ActorDead, DeliveryTimeout, OrchestratorError, UnknownRecipient

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "DELEGATE_PREFIX",
    "FINISH",
    "DelegationFailure",
    "PlannerActor",
    "WorkerInfo",
    "delegation_tools",
]

DELEGATE_PREFIX: Final = "delegate_to_"
# A delegation is asked at most this many times (a crashed worker gets one more chance).
DELEGATION_ATTEMPTS: Final = 2
RESTART_WAIT: Final = 60.0
FINISH: Final = "finish"
MAX_TOOL_NAME: Final = 64


@attrs.frozen
class WorkerInfo:
    """What the planner is told about a worker."""

    name: str
    description: str = ""
    output: str | None = None  # the name of the worker's declared output, if any

    @property
    def tool_name(self) -> str:
        return (DELEGATE_PREFIX + self.name)[:MAX_TOOL_NAME]


class _DelegateArguments(msgspec.Struct, forbid_unknown_fields=True):
    task: str


class _FinishArguments(msgspec.Struct, forbid_unknown_fields=True):
    answer: str


class _TypedFinishArguments(msgspec.Struct, forbid_unknown_fields=True):
    answer: msgspec.Raw  # checked against the declared output


_delegate_decoder: Final = msgspec.json.Decoder(_DelegateArguments)
_finish_decoder: Final = msgspec.json.Decoder(_FinishArguments)
_typed_finish_decoder: Final = msgspec.json.Decoder(_TypedFinishArguments)

_TASK_SCHEMA: Final = {
    "type": "object",
    "properties": {
        "task": {
            "type": "string",
            "description": "Everything the worker needs to know to do the task on its own.",
        }
    },
    "required": ["task"],
    "additionalProperties": False,
}
_ANSWER_SCHEMA: Final = {
    "type": "object",
    "properties": {"answer": {"type": "string", "description": "The final answer."}},
    "required": ["answer"],
    "additionalProperties": False,
}


def delegation_tools(
    workers: Sequence[WorkerInfo],
    *,
    answer_schema: Mapping[str, Any] | None = None,
    strict: bool = True,
) -> tuple[Tool, ...]:
    """The planner's runtime tools: one delegation tool per worker, then ``finish``.

    Args:
        answer_schema: the planner's declared output (its JSON Schema): ``finish`` then
            takes an ``answer`` of that schema instead of a text.
        strict: whether that schema can be strict.
    """
    tools = [
        FunctionTool(
            worker.tool_name,
            _TASK_SCHEMA,
            f"Delegate a task to the worker {worker.name!r}"
            + (f": {worker.description}" if worker.description else ".")
            + (f" It answers with JSON ({worker.output})." if worker.output else ""),
            strict=True,
        )
        for worker in workers
    ]
    parameters: Mapping[str, Any] = _ANSWER_SCHEMA
    if answer_schema is not None:
        # $defs move to the root, where the schema's "#/$defs/..." references point.
        answer = {k: v for k, v in answer_schema.items() if k != "$defs"}
        parameters = {
            "type": "object",
            "properties": {"answer": answer},
            "required": ["answer"],
            "additionalProperties": False,
        }
        if "$defs" in answer_schema:
            parameters = {**parameters, "$defs": answer_schema["$defs"]}
    tools.append(
        FunctionTool(
            FINISH,
            dict(parameters),
            "Finish the run with the final answer, once the workers' results are in.",
            strict=strict if answer_schema is not None else True,
        )
    )
    return tuple(tools)


def _error(code: str, message: str, **extra: object) -> str:
    return msgspec.json.encode({"error": code, "message": message, **extra}).decode()


@attrs.frozen
class DelegationFailure:
    """A delegation that failed for good: its worker never answered.

    Attributes:
        worker: the worker asked.
        message: the delegation's message id (``planner/turn/call_id``).
        task: the task, as the planner wrote it (cut to 200 characters).
        error: why, in words.
    """

    worker: str
    message: str
    task: str
    error: str


@attrs.define(eq=False)
class PlannerActor(AgentActor):
    """The planner: its delegation tools route tasks to workers, in parallel.

    A delegation whose worker crashes is sent again, under the same message id, once the
    supervisor has restarted the worker: the worker continues the task where it stopped (its
    memory keeps the tools that ran). A delegation that fails for good becomes a
    ``worker_failed`` output the model can read, and a :class:`DelegationFailure` in
    :attr:`failures`, so the run can say that its answer may be incomplete.

    Args:
        workers: the workers it may delegate to.
        delegation_timeout: how long one delegation may take before the planner is told it
            failed (``None``: no limit beyond the run's budgets).
        restart_wait: how long to wait for a crashed worker to be restarted.
    """

    workers: tuple[WorkerInfo, ...] = attrs.field(default=(), kw_only=True)
    delegation_timeout: float | None = attrs.field(default=None, kw_only=True)
    restart_wait: float = attrs.field(default=RESTART_WAIT, kw_only=True)
    delegations: int = attrs.field(default=0, init=False)
    failures: list[DelegationFailure] = attrs.field(factory=list, init=False)

    @property
    def _by_tool(self) -> dict[str, WorkerInfo]:
        return {worker.tool_name: worker for worker in self.workers}

    def side_effect_of(self, tool: str) -> str:
        if tool == FINISH or tool in self._by_tool:
            return RUNTIME_CALL
        return super().side_effect_of(tool)

    async def handle_calls(self, calls: Sequence[FunctionCallItem]) -> CallOutcome:
        by_tool = self._by_tool
        outputs = self._answered_before(calls)
        delegated = [c for c in calls if c.name in by_tool and c.call_id not in outputs]
        finishing = [call for call in calls if call.name == FINISH]
        own = [call for call in calls if call.name not in by_tool and call.name != FINISH]
        self.tool_calls += len(calls)
        await self._run_calls(delegated, own, outputs)
        answer = self._finish(finishing, outputs)
        ordered = tuple(outputs[call.call_id] for call in calls)
        return CallOutcome(ordered, answer)

    def _answered_before(self, calls: Sequence[FunctionCallItem]) -> dict[str, Item]:
        """The outputs of delegations answered before a crash or a restart: never
        delegated twice."""
        outputs: dict[str, Item] = {}
        for call in calls:
            entry = self.memory.call(call.call_id)
            if call.name in self._by_tool and entry is not None and entry.output is not None:
                outputs[call.call_id] = FunctionCallOutputItem(
                    call_id=call.call_id, output=entry.output
                )
        return outputs

    async def _run_calls(
        self,
        delegated: list[FunctionCallItem],
        own: list[FunctionCallItem],
        outputs: dict[str, Item],
    ) -> None:
        """The delegations, in parallel, beside the planner's own tools; their outputs into
        ``outputs``."""
        by_tool = self._by_tool
        pending = {call.call_id: by_tool[call.name].name for call in delegated}
        if pending:
            self._state("waiting", ", ".join(pending.values()))
        own_error: list[ToolRepairBudgetExceeded] = []

        async def delegate(call: FunctionCallItem) -> None:
            outputs[call.call_id] = await self._delegate(call, by_tool[call.name])
            del pending[call.call_id]
            if pending:
                self._state("waiting", ", ".join(pending.values()))

        async def run_own() -> None:
            try:
                items = await self.run_tools(own)
            except ToolRepairBudgetExceeded as exc:
                # Raised from the nursery it would arrive as an ExceptionGroup, which
                # handle() takes for a crash instead of the end of the run it is.
                own_error.append(exc)
                nursery.cancel_scope.cancel()
                return
            for item in items:
                outputs[item.call_id] = item

        async with trio.open_nursery() as nursery:
            for call in delegated:
                nursery.start_soon(delegate, call)
            if own:
                nursery.start_soon(run_own)
        if own_error:
            raise own_error[0]

    def _finish(self, finishing: list[FunctionCallItem], outputs: dict[str, Item]) -> str | None:
        """The answer of the ``finish`` calls (the last valid one), each call's output into
        ``outputs``: done, or the error the model repairs."""
        answer: str | None = None
        for call in finishing:
            try:
                text = self._finish_answer(call)
            except msgspec.MsgspecError as exc:
                outputs[call.call_id] = self._delegated(
                    call, _error("invalid_arguments", str(exc)), "invalid_arguments"
                )
            except ValueError as exc:  # not of the declared output: one repair
                message = self.repair(str(exc), call.arguments)
                outputs[call.call_id] = self._delegated(
                    call, _error("invalid_output", message), "invalid_output"
                )
            else:
                answer = text
                outputs[call.call_id] = self._delegated(call, "done", None)
        return answer

    def _finish_answer(self, call: FunctionCallItem) -> str:
        """The answer of a ``finish`` call: its text, or with a declared output its JSON.

        Raises:
            msgspec.MsgspecError: the arguments are malformed.
            ValueError: the answer is not of the declared output.
        """
        if self.output is None:
            return _finish_decoder.decode(call.arguments).answer
        raw = _typed_finish_decoder.decode(call.arguments).answer
        return self.output.check(bytes(raw).decode())[1]

    async def _delegate(self, call: FunctionCallItem, worker: WorkerInfo) -> Item:
        try:
            task = _delegate_decoder.decode(call.arguments).task
        except msgspec.MsgspecError as exc:
            return self._delegated(call, _error("invalid_arguments", str(exc)), "invalid")
        self.delegations += 1
        message = f"{self.name}/{self.memory.open_turn}/{call.call_id}"
        self.memory.message_sent(
            MessageEntry(id=message, sender=self.name, recipient=worker.name, text=task)
        )
        began = trio.current_time()
        self._emit_delegation(call, worker, began, task=task)
        error = ""
        for attempt in range(DELEGATION_ATTEMPTS):
            try:
                reply = await self.router.ask(
                    self.name,
                    worker.name,
                    Assignment(text=task, sender=self.name, id=message),
                    timeout=self.delegation_timeout,
                )
            except ActorDead as exc:
                # The worker crashed on it (or was down): once it is back, ask again under
                # the same id, and it continues where it stopped.
                error = str(exc)
                if attempt + 1 < DELEGATION_ATTEMPTS:
                    with trio.move_on_after(self.restart_wait):
                        await self.router.wait_running(worker.name)
                continue
            except (DeliveryTimeout, UnknownRecipient, trio.TooSlowError) as exc:
                error = str(exc) or f"no reply within {self.delegation_timeout:g} s"
                break
            except OrchestratorError as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            self._emit_delegation(call, worker, began)
            text = reply.text if isinstance(reply, AssignmentResult) else str(reply)
            return self._delegated(call, text, None)
        self._emit_delegation(call, worker, began, error=error)
        self.failures.append(DelegationFailure(worker.name, message, task[:200], error))
        self._log.warning("delegation to {} failed: {}", worker.name, error)
        output = _error("worker_failed", error, worker=worker.name)
        return self._delegated(call, output, "worker_failed")

    def _delegated(self, call: FunctionCallItem, output: str, error: str | None) -> Item:
        self.memory.finish_call(call.call_id, output, error=error)
        return FunctionCallOutputItem(call_id=call.call_id, output=output)

    def _emit_delegation(
        self,
        call: FunctionCallItem,
        worker: WorkerInfo,
        began: float,
        *,
        task: str | None = None,
        error: str | None = None,
    ) -> None:
        """``delegation.started`` when ``task`` is given, else ``delegation.finished``."""
        if self.events is None or not self.events.active:
            return
        now = trio.current_time()
        self.events.emit(
            DelegationStarted(
                time=now,
                agent=self.name,
                worker=worker.name,
                call_id=call.call_id,
                task=capped(task),
            )
            if task is not None
            else DelegationFinished(
                time=now,
                agent=self.name,
                worker=worker.name,
                call_id=call.call_id,
                ok=error is None,
                duration=now - began,
                error=error,
            )
        )
