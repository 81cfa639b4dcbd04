"""Resuming a job whose plan changed its model settings or an agent's output type: refused
when it changes what the model does, allowed for billing and bookkeeping
(docs/architecture.md#how-a-durable-job-journals-a-turn)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio

from orchestrator.core.observe import TurnFinished
from orchestrator.core.session import ModelSettings
from orchestrator.errors import PlanDiverged
from orchestrator.runner import EmbeddedServer, RunResult, RunSettings, run
from plans import Plan, PlanBuilder


class Report(msgspec.Struct, frozen=True):
    """A typed answer (named by import path in the plans below)."""

    city: str
    summary: str


class Brief(msgspec.Struct, frozen=True):
    city: str


async def lookup(city: str) -> str:
    """Look a city up.

    Args:
        city: the city.
    """
    await trio.lowlevel.checkpoint()
    return f"{city}: sunny"


def plan(settings: dict[str, Any] | None = None, output: Any = Report) -> Plan:
    """Two steps in a row for one worker; the run is stopped after its first turn."""
    return (
        PlanBuilder("resumable", goal="Lisbon", model="gpt-5-mini")
        .worker("w", tools=[lookup], settings=settings, output_type=output)
        .step("a", agent="w", task="Look up {{goal}}.")
        .step("b", agent="w", task="Look up Porto after {{steps.a.result}}", depends_on=["a"])
        .build()
    )


async def interrupted(store: Any, job: str, **options: Any) -> RunResult:
    stop = trio.Event()

    def after_first_turn(event: Any) -> None:
        if isinstance(event, TurnFinished):
            stop.set()

    with trio.fail_after(30):
        result = await run(
            plan(**options.pop("plan", {})),
            store=store,
            job_id=job,
            stop=stop,
            events=after_first_turn,
            embedded=EmbeddedServer(transport="memory"),
            **options,
        )
    assert "interrupted" == result.status
    return result


async def resume(store: Any, job: str, given: Plan | None, **options: Any) -> RunResult:
    with trio.fail_after(30):
        return await run(
            given, store=store, resume=job, embedded=EmbeddedServer(transport="memory"), **options
        )


async def test_changed_settings_or_output_refuse_the_resume(tmp_path):
    """temperature or the output type changed: refused, naming the agent and the change;
    the journaled plan resumes to the typed answer."""
    store = tmp_path / "jobs.db"
    await interrupted(store, "j", plan={"settings": {"temperature": 0.2}})
    with pytest.raises(PlanDiverged) as caught:
        await resume(store, "j", plan({"temperature": 0.7}))
    assert (
        'agent \'w\': model settings changed ({"temperature":0.2} -> {"temperature":0.7})'
        in str(caught.value)
    )
    with pytest.raises(PlanDiverged, match=r"agent 'w': output type changed \(Report -> Brief\)"):
        await resume(store, "j", plan({"temperature": 0.2}, output=Brief))
    result = await resume(store, "j", None)
    assert "completed" == result.status, result.reason
    assert isinstance(result.output, Report)


async def test_billing_settings_may_change_on_resume(tmp_path):
    """metadata, service_tier and prompt_cache_key do not change what the model does: a
    resume with other values goes on."""
    store = tmp_path / "jobs.db"
    await interrupted(store, "j", plan={"settings": {"service_tier": "flex"}})
    changed = plan({"service_tier": "priority", "metadata": {"a": "b"}, "prompt_cache_key": "k"})
    result = await resume(store, "j", changed)
    assert "completed" == result.status, result.reason


async def test_run_model_settings_are_kept_with_the_job(tmp_path):
    """run(model_settings=...) is journaled: a resume without them runs with the same ones;
    a resume with other ones is refused."""
    store = tmp_path / "jobs.db"
    settings = ModelSettings(temperature=0.3)
    await interrupted(store, "j", settings=RunSettings(model=settings))
    with pytest.raises(PlanDiverged, match="model settings changed"):
        await resume(store, "j", None, settings=RunSettings(model=ModelSettings(temperature=1.0)))
    result = await resume(store, "j", None)
    assert "completed" == result.status, result.reason
