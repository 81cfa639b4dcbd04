"""A socket-free stand-in for an offline run of an example plan.

The embedded server's ``generic`` policy answers every turn and the real ``ToolExecutor``
runs the plan's tools, wired the way docs/architecture.md#delegation-and-steps describes: a worker
receives its task as the user message; the planner receives the goal and has one
``delegate_to_<worker>(task)`` tool per worker plus ``finish(answer)``; a step's task is rendered
with the results of the steps it depends on. It checks that the examples make sense offline before
the runtime (``orchestrator.run``) exists, and counts the model turns a run takes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

from actors.tools import ToolRegistry
from orchestrator.core.protocol.events import (
    FunctionCallItem,
    FunctionCallOutputItem,
    FunctionTool,
    Item,
    MessageItem,
)
from orchestrator.core.server.models import GenericPolicy, ModelRequest
from plans import Plan, render_task, scheduled_steps

if TYPE_CHECKING:
    from orchestrator.core.protocol.events import Tool

POLICY = GenericPolicy()
MAX_TURNS = 10  # per agent and task: the generic model needs two or three


@attrs.define
class AgentRun:
    """What one agent did with one task."""

    agent: str
    task: str
    result: str = ""
    turns: int = 0
    outputs: dict[str, Any] = attrs.field(factory=dict)  # tool name -> decoded output
    arguments: dict[str, Any] = attrs.field(factory=dict)  # tool name -> decoded arguments


@attrs.define
class PlannerRun:
    answer: str
    planner: AgentRun
    workers: dict[str, AgentRun]

    @property
    def turns(self) -> int:
        return self.planner.turns + sum(run.turns for run in self.workers.values())


def registry_for(plan: Plan) -> ToolRegistry:
    """Every tool the plan's agents list, with the plan's options, as the runtime would."""
    registry = ToolRegistry()
    for agent in plan.agents:
        for name, config in plan.tools_for(agent).items():
            if name not in registry:
                registry.add(
                    config.path,
                    name=name,
                    timeout=config.timeout,
                    max_output=config.max_output,
                    side_effect=config.side_effect,
                    description=config.description,
                )
    return registry


def delegate_tool(worker: str, description: str) -> Tool:
    return FunctionTool(
        f"delegate_to_{worker}",
        {
            "type": "object",
            "properties": {"task": {"type": "string", "description": "what the worker should do"}},
            "required": ["task"],
            "additionalProperties": False,
        },
        description or f"Delegate a task to {worker}.",
        strict=True,
    )


FINISH = FunctionTool(
    "finish",
    {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    },
    "Finish the run with the final answer.",
    strict=True,
)


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


async def run_worker(plan: Plan, registry: ToolRegistry, name: str, task: str) -> AgentRun:
    """One worker's turns on ``task`` until it answers with text."""
    agent = plan.agent(name)
    executor = registry.executor(name, allowed=plan.tools_for(agent))
    tools = tuple(executor.tools())
    context: list[Item] = [MessageItem.user(task)]
    run = AgentRun(agent=name, task=task)
    while run.turns < MAX_TURNS:
        run.turns += 1
        request = ModelRequest(
            model=plan.model_for(agent),
            instructions=agent.instructions,
            tools=tools,
            context=tuple(context),
        )
        reply = POLICY.respond(request)
        if not reply.calls:
            run.result = reply.text or ""
            return run
        calls = [
            FunctionCallItem(call_id=f"{name}_{run.turns}_{i}", name=c.name, arguments=c.arguments)
            for i, c in enumerate(reply.calls)
        ]
        outputs = await executor.execute_all(calls)
        context.extend(calls)
        context.extend(outputs)
        for call, output in zip(calls, outputs, strict=True):
            run.arguments[call.name] = json.loads(call.arguments)
            assert isinstance(output.output, str)
            run.outputs[call.name] = _decode(output.output)
    raise AssertionError(f"{name} did not answer within {MAX_TURNS} turns")


async def run_planner(plan: Plan, goal: str) -> PlannerRun:
    """A planner-mode run: the planner delegates, the workers answer, the planner finishes."""
    planner = plan.planner
    assert planner is not None
    registry = registry_for(plan)
    tools = (*(delegate_tool(w.name, w.description) for w in plan.workers), FINISH)
    context: list[Item] = [MessageItem.user(goal)]
    run = AgentRun(agent=planner.name, task=goal)
    workers: dict[str, AgentRun] = {}
    while run.turns < MAX_TURNS:
        run.turns += 1
        request = ModelRequest(
            model=plan.model_for(planner),
            instructions=planner.instructions,
            tools=tools,
            context=tuple(context),
        )
        reply = POLICY.respond(request)
        assert reply.calls, f"the planner answered without finishing: {reply.text!r}"
        calls: list[Item] = []
        outputs: list[Item] = []
        for index, call in enumerate(reply.calls):
            arguments = json.loads(call.arguments)
            run.arguments[call.name] = arguments
            if call.name == "finish":
                return PlannerRun(answer=arguments["answer"], planner=run, workers=workers)
            worker = call.name.removeprefix("delegate_to_")
            workers[worker] = await run_worker(plan, registry, worker, arguments["task"])
            call_id = f"planner_{run.turns}_{index}"
            calls.append(
                FunctionCallItem(call_id=call_id, name=call.name, arguments=call.arguments)
            )
            outputs.append(FunctionCallOutputItem(call_id=call_id, output=workers[worker].result))
        context.extend(calls)
        context.extend(outputs)
    raise AssertionError(f"the planner did not finish within {MAX_TURNS} turns")


async def run_steps(plan: Plan, goal: str | None = None) -> dict[str, AgentRun]:
    """A steps-mode run, one step at a time in schedule order (the order does not change
    the results: each step sees only the results it references)."""
    registry = registry_for(plan)
    runs: dict[str, AgentRun] = {}
    for step in scheduled_steps(plan):
        results = {step_id: run.result for step_id, run in runs.items()}
        task = render_task(step, results, goal=goal or plan.goal)
        runs[step.id] = await run_worker(plan, registry, step.agent, task)
    return runs
