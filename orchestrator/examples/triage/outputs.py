"""The typed outputs of the triage team: what each agent answers, as msgspec Structs.

The plan names them by import path
(``output_type = "orchestrator.examples.triage.outputs:Ticket"``).
Each agent is sent its type's JSON Schema as ``text.format`` (strict), and its final answer is
decoded into the type: a worker's answer reaches the planner as JSON, the planner's answer
reaches the caller as a :class:`TriageReport` (``RunResult.output``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

__all__ = ["AccountSummary", "Category", "Priority", "Ticket", "TriageReport"]

Category = Literal["billing", "technical", "account", "other"]
Priority = Literal["urgent", "high", "normal", "low"]


class Ticket(msgspec.Struct, frozen=True, kw_only=True):
    """A support ticket as the reader found it."""

    ticket_id: str
    account: str
    subject: str
    category: Category
    priority: Priority


class AccountSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What the account desk knows about a customer."""

    account: str
    plan: Literal["starter", "business", "enterprise"]
    sla_hours: Annotated[int, msgspec.Meta(ge=1, le=72)]
    open_incidents: Annotated[int, msgspec.Meta(ge=0)]
    owner: str


class TriageReport(msgspec.Struct, frozen=True, kw_only=True):
    """The lead's decision on one ticket."""

    ticket_id: str
    account: str
    category: Category
    priority: Priority
    sla_hours: int
    owner: str
    reply_draft: str
