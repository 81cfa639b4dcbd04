"""The planner role: an agent that delegates to workers and finishes with the answer.

The runtime gives the planner function tools it never has to define:

* ``delegate_to_<worker>(task)`` for each worker, described by the worker's description;
* ``finish(answer)`` to end the run with the answer (a plain text reply ends it too).

Several delegations in one response run in parallel; each worker's reply comes back as the
``function_call_output`` of its call, so the planner can delegate again after seeing results.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import attrs
import msgspec
import trio

from actors.agent import AgentActor, CallOutcome, Task, TaskResult
from actors.tools import ToolRepairBudgetExceeded
from orchestrator.errors import ActorDead, DeliveryTimeout, OrchestratorError, UnknownRecipient
from orchestrator.observe import DelegationFinished, DelegationStarted, capped
from orchestrator.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    Item,
    Tool,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["DELEGATE_PREFIX", "FINISH", "PlannerActor", "WorkerInfo", "delegation_tools"]

DELEGATE_PREFIX: Final = "delegate_to_"
FINISH: Final = "finish"
MAX_TOOL_NAME: Final = 64


@attrs.frozen
class WorkerInfo:
    """What the planner is told about a worker."""

    name: str
    description: str = ""

    @property
    def tool_name(self) -> str:
        return (DELEGATE_PREFIX + self.name)[:MAX_TOOL_NAME]


class _DelegateArguments(msgspec.Struct, forbid_unknown_fields=True):
    task: str


class _FinishArguments(msgspec.Struct, forbid_unknown_fields=True):
    answer: str


_delegate_decoder: Final = msgspec.json.Decoder(_DelegateArguments)
_finish_decoder: Final = msgspec.json.Decoder(_FinishArguments)

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


def delegation_tools(workers: Sequence[WorkerInfo]) -> tuple[Tool, ...]:
    """The planner's runtime tools: one delegation tool per worker, then ``finish``."""
    tools = [
        FunctionTool(
            worker.tool_name,
            _TASK_SCHEMA,
            f"Delegate a task to the worker {worker.name!r}"
            + (f": {worker.description}" if worker.description else "."),
            strict=True,
        )
        for worker in workers
    ]
    tools.append(
        FunctionTool(
            FINISH,
            _ANSWER_SCHEMA,
            "Finish the run with the final answer, once the workers' results are in.",
            strict=True,
        )
    )
    return tuple(tools)


def _error(code: str, message: str, **extra: object) -> str:
    return msgspec.json.encode({"error": code, "message": message, **extra}).decode()


@attrs.define(eq=False)
class PlannerActor(AgentActor):
    """The planner: its delegation tools route tasks to workers, in parallel.

    Args:
        workers: the workers it may delegate to.
        delegation_timeout: how long one delegation may take before the planner is told it
            failed (``None``: no limit beyond the run's budgets).
    """

    workers: tuple[WorkerInfo, ...] = attrs.field(default=(), kw_only=True)
    delegation_timeout: float | None = attrs.field(default=None, kw_only=True)
    delegations: int = attrs.field(default=0, init=False)

    @property
    def _by_tool(self) -> dict[str, WorkerInfo]:
        return {worker.tool_name: worker for worker in self.workers}

    async def handle_calls(self, calls: Sequence[FunctionCallItem]) -> CallOutcome:
        by_tool = self._by_tool
        outputs: dict[str, Item] = {}
        delegated = [call for call in calls if call.name in by_tool]
        finishing = [call for call in calls if call.name == FINISH]
        own = [call for call in calls if call.name not in by_tool and call.name != FINISH]
        self.tool_calls += len(calls)
        if delegated:
            names = ", ".join(by_tool[call.name].name for call in delegated)
            self._state("waiting", names)

        own_error: list[ToolRepairBudgetExceeded] = []

        async def delegate(call: FunctionCallItem) -> None:
            outputs[call.call_id] = await self._delegate(call, by_tool[call.name])

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
        answer: str | None = None
        for call in finishing:
            try:
                answer = _finish_decoder.decode(call.arguments).answer
            except msgspec.MsgspecError as exc:
                outputs[call.call_id] = FunctionCallOutputItem(
                    call_id=call.call_id, output=_error("invalid_arguments", str(exc))
                )
            else:
                outputs[call.call_id] = FunctionCallOutputItem(call_id=call.call_id, output="done")
        ordered = tuple(outputs[call.call_id] for call in calls)
        return CallOutcome(ordered, answer)

    async def _delegate(self, call: FunctionCallItem, worker: WorkerInfo) -> Item:
        try:
            task = _delegate_decoder.decode(call.arguments).task
        except msgspec.MsgspecError as exc:
            return FunctionCallOutputItem(
                call_id=call.call_id, output=_error("invalid_arguments", str(exc))
            )
        self.delegations += 1
        began = trio.current_time()
        self._emit_delegation(call, worker, began, task=task)
        try:
            reply = await self.router.ask(
                self.name,
                worker.name,
                Task(text=task, sender=self.name),
                timeout=self.delegation_timeout,
            )
        except (ActorDead, DeliveryTimeout, UnknownRecipient, trio.TooSlowError) as exc:
            self._emit_delegation(call, worker, began, error=str(exc))
            return FunctionCallOutputItem(
                call_id=call.call_id,
                output=_error("worker_failed", str(exc), worker=worker.name),
            )
        except OrchestratorError as exc:
            self._emit_delegation(call, worker, began, error=f"{type(exc).__name__}: {exc}")
            return FunctionCallOutputItem(
                call_id=call.call_id,
                output=_error("worker_failed", f"{type(exc).__name__}: {exc}", worker=worker.name),
            )
        self._emit_delegation(call, worker, began)
        text = reply.text if isinstance(reply, TaskResult) else str(reply)
        return FunctionCallOutputItem(call_id=call.call_id, output=text)

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
