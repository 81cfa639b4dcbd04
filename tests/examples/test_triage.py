"""The triage example: typed outputs end to end, offline, and its tools on the bundled data."""

from __future__ import annotations

import msgspec
import trio

from orchestrator.core.protocol.events import FunctionCallOutputItem
from orchestrator.examples.triage import tools
from orchestrator.examples.triage.outputs import AccountSummary, Ticket, TriageReport
from orchestrator.runner import EmbeddedServer, run
from plans import load_plan

from .test_plans import PLANS

PLAN = load_plan(PLANS["triage"])


def test_find_ticket_by_id_or_by_words():
    """An id wins; otherwise the ticket whose subject and account share most words."""
    assert "T-1043" == tools.find_ticket("what about t-1043?")["ticket_id"]
    assert "T-1045" == tools.find_ticket("the CSV export VAT column")["ticket_id"]
    assert "note" in tools.find_ticket("zzz")


def test_account_status_by_id_name_or_ticket():
    """The account by its id, its name, or one of its tickets' ids."""
    assert "enterprise" == tools.account_status("acme-logistics")["plan"]
    assert "northwind" == tools.account_status("Northwind Traders, please")["account"]
    assert "Lee Park" == tools.account_status("ticket T-1044")["owner"]
    assert "note" in tools.account_status("Umbrella")


def test_the_tools_answer_what_the_workers_types_hold():
    """Each worker's tool returns the fields of the worker's output type (so an offline run,
    which fills fields from the tools' results, answers real data)."""
    msgspec.convert(tools.find_ticket("T-1042"), Ticket)
    msgspec.convert(tools.account_status("T-1042"), AccountSummary)


async def test_the_team_answers_a_typed_report_offline():
    """Offline, the lead's answer is a TriageReport built from the workers' typed answers,
    which reached it as JSON. (Real clock: the tools are sync, run in worker threads.)"""
    with trio.fail_after(60):
        result = await run(PLAN, store=None, embedded=EmbeddedServer(transport="memory"))
    assert "completed" == result.status, result.reason
    report = result.output
    assert isinstance(report, TriageReport)
    assert ("T-1042", "acme-logistics", "billing", "high", 4, "Dana Ito") == (
        report.ticket_id,
        report.account,
        report.category,
        report.priority,
        report.sla_hours,
        report.owner,
    )
    assert report.reply_draft
    delegated = [
        item.output
        for item in result.agent("lead").transcript
        if isinstance(item, FunctionCallOutputItem)
    ]
    assert Ticket(
        ticket_id="T-1042",
        account="acme-logistics",
        subject="Invoice charged twice in May",
        category="billing",
        priority="high",
    ) == msgspec.json.decode(delegated[0], type=Ticket)
    assert "Dana Ito" == msgspec.json.decode(delegated[1], type=AccountSummary).owner
