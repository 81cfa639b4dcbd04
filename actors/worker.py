"""The worker role: an agent that runs its own tool loop and replies with its final text."""

from __future__ import annotations

import attrs

from actors.agent import AgentActor

__all__ = ["WorkerActor"]


@attrs.define(eq=False)
class WorkerActor(AgentActor):
    """A worker: every task runs the agent loop with the worker's tools.

    Workers never see each other; they answer whoever asked (the planner, or the run's step
    scheduler).
    """
