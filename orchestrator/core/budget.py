"""Budgets: turns, tokens and wall-clock, per agent and per run.

One :class:`BudgetTracker` per run. Agents ask it before each turn (:meth:`before_turn`) and
report usage after (:meth:`after_turn`). Reaching any budget records the reason and cancels
the run's scope, so every agent stops promptly and the run ends cleanly with its partial
results. Turn budgets are exact: with ``max_turns = N`` exactly N turns run. A token budget
stops the run after the turn that reached it (a turn cannot be cut half-way).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import attrs
import trio

from orchestrator.errors import BudgetExceeded

__all__ = ["BudgetLimits", "BudgetTracker", "Usage"]


@attrs.frozen
class BudgetLimits:
    """Limits at one level (run or agent); ``None`` means no limit."""

    max_turns: int | None = None
    max_tokens: int | None = None
    wall_clock: float | None = None

    @property
    def unlimited(self) -> bool:
        return self.max_turns is None and self.max_tokens is None and self.wall_clock is None


@attrs.define
class Usage:
    """What one agent (or the run) has used so far."""

    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@attrs.define(eq=False)
class BudgetTracker:
    """Counts usage and stops the run at the first budget reached.

    Args:
        run: the run-level limits.
        agents: per-agent limits, by agent name.
        scope: the run's cancel scope, cancelled when a budget is reached.
        guard: called before every turn; it raises to forbid the turn (a durable job's
            journal: this process may no longer own the job).
    """

    run: BudgetLimits = attrs.field(factory=BudgetLimits)
    agents: Mapping[str, BudgetLimits] = attrs.field(factory=dict)
    scope: trio.CancelScope | None = None
    total: Usage = attrs.field(factory=Usage)
    per_agent: dict[str, Usage] = attrs.field(factory=dict)
    exceeded: BudgetExceeded | None = None
    failure: Exception | None = None
    guard: Callable[[], object] | None = None
    _started: dict[str, float] = attrs.field(factory=dict)

    def usage(self, agent: str) -> Usage:
        usage = self.per_agent.get(agent)
        if usage is None:
            usage = self.per_agent[agent] = Usage()
        return usage

    def _stop(self, error: BudgetExceeded) -> BudgetExceeded:
        if self.exceeded is None and self.failure is None:
            self.exceeded = error
            if self.scope is not None:
                self.scope.cancel()
        return self.exceeded or error

    def fail(self, error: Exception) -> None:
        """Stop the run because of ``error`` (a budget, an auth failure, a runaway tool loop).

        The first reason wins; the run's scope is cancelled.
        """
        if isinstance(error, BudgetExceeded):
            self._stop(error)
            return
        if self.failure is None and self.exceeded is None:
            self.failure = error
            if self.scope is not None:
                self.scope.cancel()

    @property
    def stopped(self) -> bool:
        return self.exceeded is not None or self.failure is not None

    def check(self) -> None:
        """Raise at once if the run already stopped (on a budget or a failure)."""
        if self.exceeded is not None:
            raise self.exceeded
        if self.failure is not None:
            raise self.failure

    def preload(self, agent: str, turns: int, input_tokens: int, output_tokens: int) -> None:
        """Count what ``agent`` used in earlier runs of a resumed job (no budget check: the
        next turn's checks see it)."""
        usage = self.usage(agent)
        usage.turns += turns
        usage.input_tokens += input_tokens
        usage.output_tokens += output_tokens
        self.total.turns += turns
        self.total.input_tokens += input_tokens
        self.total.output_tokens += output_tokens

    def before_turn(self, agent: str) -> None:
        """Account for a turn about to start.

        Raises:
            BudgetExceeded: the turn would exceed a turn budget, or a budget was already
                reached (the run is stopping).
        """
        self.check()
        if self.guard is not None:
            self.guard()
        usage = self.usage(agent)
        limits = self.agents.get(agent)
        if limits is not None and limits.max_turns is not None and usage.turns >= limits.max_turns:
            raise self._stop(
                BudgetExceeded("max_turns", limits.max_turns, usage.turns, scope=f"agent {agent}")
            )
        if self.run.max_turns is not None and self.total.turns >= self.run.max_turns:
            raise self._stop(BudgetExceeded("max_turns", self.run.max_turns, self.total.turns))
        usage.turns += 1
        self.total.turns += 1

    def after_turn(self, agent: str, input_tokens: int, output_tokens: int) -> None:
        """Add a finished turn's tokens.

        Raises:
            BudgetExceeded: a token budget is now reached; the run stops after this turn.
        """
        usage = self.usage(agent)
        usage.input_tokens += input_tokens
        usage.output_tokens += output_tokens
        self.total.input_tokens += input_tokens
        self.total.output_tokens += output_tokens
        limits = self.agents.get(agent)
        if (
            limits is not None
            and limits.max_tokens is not None
            and usage.tokens >= limits.max_tokens
        ):
            raise self._stop(
                BudgetExceeded(
                    "max_tokens", limits.max_tokens, usage.tokens, scope=f"agent {agent}"
                )
            )
        if self.run.max_tokens is not None and self.total.tokens >= self.run.max_tokens:
            raise self._stop(BudgetExceeded("max_tokens", self.run.max_tokens, self.total.tokens))

    def cancel_turn(self, agent: str) -> None:
        """Give back a turn that never ran (it was cancelled before reaching the server)."""
        usage = self.usage(agent)
        usage.turns = max(0, usage.turns - 1)
        self.total.turns = max(0, self.total.turns - 1)

    def wall_clock_deadline(self, started: float) -> float:
        """The run's wall-clock deadline on trio's clock (``inf`` when unlimited)."""
        limit = self.run.wall_clock
        return math.inf if limit is None else started + limit

    def agent_deadline(self, agent: str) -> float:
        """When ``agent``'s own wall-clock budget ends, counted from its first turn."""
        limits = self.agents.get(agent)
        if limits is None or limits.wall_clock is None:
            return math.inf
        started = self._started.setdefault(agent, trio.current_time())
        return started + limits.wall_clock

    def wall_clock_reached(self, agent: str | None, limit: float, used: float) -> BudgetExceeded:
        scope = "run" if agent is None else f"agent {agent}"
        return self._stop(BudgetExceeded("wall_clock", limit, used, scope=scope))
