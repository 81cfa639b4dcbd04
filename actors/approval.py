"""Approval of tools that act on the world (docs/faults.md#approvals).

A tool declares what calling it does (``side_effect``). Calls of ``destructive`` and
``external`` tools never run on the model's say-so alone: the agent's ``ToolExecutor`` asks
its approver first, and a refusal (or no approver at all) becomes an ``approval_denied``
output the model can read. Every decision is published as a ``ToolApproval`` event, so a
trace file journals it.

An approver is any callable taking an :class:`ApprovalRequest` and returning ``bool`` or an
:class:`ApprovalDecision`, directly or from a coroutine. :class:`ApprovalPolicy` is the one
the runtime builds from a plan's ``[approvals]`` table: ``deny`` patterns win, then ``allow``
patterns, then ``otherwise`` (``ask`` the interactive approver, if there is one, or
``deny``). A pattern is ``tool`` or ``agent:tool``, with ``*`` and ``?`` wildcards.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Literal, TypeAlias

import attrs

from orchestrator.core import rules

__all__ = [
    "NEEDS_APPROVAL",
    "ApprovalDecision",
    "ApprovalPolicy",
    "ApprovalRequest",
    "Approver",
    "decide",
    "matches",
]

# Side-effect classes whose calls need an approval before they run.
NEEDS_APPROVAL: Final = rules.NEEDS_APPROVAL


@attrs.frozen
class ApprovalRequest:
    """One call waiting for approval. ``arguments`` is the model's JSON as sent, already
    validated against the tool's schema (path arguments checked against the workspace);
    it is still untrusted text."""

    agent: str
    tool: str
    call_id: str
    side_effect: str
    arguments: str


@attrs.frozen
class ApprovalDecision:
    """The answer to a request: ``by`` says who decided (``policy``, ``interactive``,
    ``approver``...), ``reason`` is shown to the model when the call is denied."""

    approved: bool
    by: str = "approver"
    reason: str = ""


Approver: TypeAlias = Callable[
    [ApprovalRequest], bool | ApprovalDecision | Awaitable[bool | ApprovalDecision]
]


async def decide(approver: Approver, request: ApprovalRequest) -> ApprovalDecision:
    """Ask ``approver`` about ``request``; a ``bool`` answer becomes a decision.

    Raises:
        TypeError: the approver answered something else (a bug in the approver).
    """
    answer = approver(request)
    if inspect.isawaitable(answer):
        answer = await answer
    if isinstance(answer, ApprovalDecision):
        return answer
    if isinstance(answer, bool):
        return ApprovalDecision(answer, reason="" if answer else "the approver said no")
    raise TypeError(
        f"an approver must return bool or ApprovalDecision, not {type(answer).__name__}"
    )


def matches(pattern: str, agent: str, tool: str) -> bool:
    """Whether ``pattern`` (``tool`` or ``agent:tool``, shell wildcards) names this call."""
    if ":" in pattern:
        return fnmatch.fnmatchcase(f"{agent}:{tool}", pattern)
    return fnmatch.fnmatchcase(tool, pattern)


@attrs.frozen
class ApprovalPolicy:
    """Allow and deny lists, then a fallback: ``ask`` (the ``ask`` approver, when given;
    without one the call is denied) or ``deny``."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    otherwise: Literal["ask", "deny"] = "ask"
    ask: Approver | None = attrs.field(default=None, repr=False)

    @classmethod
    def allow_all(cls) -> ApprovalPolicy:
        """Approve every call: for sandboxes and tests, never for real side effects."""
        return cls(allow=("*",))

    def with_allowed(self, patterns: Sequence[str]) -> ApprovalPolicy:
        return attrs.evolve(self, allow=(*self.allow, *patterns))

    async def __call__(self, request: ApprovalRequest) -> ApprovalDecision:
        agent, tool = request.agent, request.tool
        for pattern in self.deny:
            if matches(pattern, agent, tool):
                return ApprovalDecision(False, "policy", f"denied by the policy ({pattern!r})")
        for pattern in self.allow:
            if matches(pattern, agent, tool):
                return ApprovalDecision(True, "policy", f"allowed by the policy ({pattern!r})")
        if self.otherwise == "ask" and self.ask is not None:
            return await decide(self.ask, request)
        why = "the plan's approvals say otherwise = 'deny'"
        if self.otherwise == "ask":
            why = (
                "nobody can be asked (not an interactive run); allow it in the plan's "
                "[approvals], with --approve on the command line, or with approve= in Python"
            )
        return ApprovalDecision(
            False, "policy", f"{request.side_effect} tool {tool!r} was not approved: {why}"
        )
