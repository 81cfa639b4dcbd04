"""Approval of destructive and external tools (docs/faults.md#approvals).

A call of such a tool never runs on the model's word alone: the executor asks its approver,
a refusal (or no approver) is an ``approval_denied`` output, and every decision is an event.
"""

# docs/faults.md#test-hygiene: asserts read ``expected == actual``, so the expected constant comes
# first.

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import trio
from hypothesis import given, strategies as st

import actors.tools
import plans.model
from actors.approval import ApprovalDecision, ApprovalPolicy, ApprovalRequest, matches
from actors.tools import ToolRegistry, ToolRepairBudgetExceeded, ToolSpec, tool
from orchestrator.core.observe import EventBus, RuntimeEvent, ToolApproval, ToolFinished
from orchestrator.core.protocol.events import FunctionCallItem, FunctionCallOutputItem
from orchestrator.runner import EmbeddedServer, run
from plans import PlanBuilder, check_approval_patterns, check_plan

# What the tools below did, in order: a denied call must leave no trace here.
DONE: list[str] = []


@tool(side_effect="destructive")
async def delete_report(name: str) -> str:
    """Delete a report.

    Args:
        name: the report.
    """
    await trio.lowlevel.checkpoint()
    DONE.append(f"deleted {name}")
    return f"deleted {name}"


@tool(side_effect="external")
async def send_mail(to: str) -> str:
    """Send a mail.

    Args:
        to: the address.
    """
    await trio.lowlevel.checkpoint()
    DONE.append(f"mailed {to}")
    return f"mailed {to}"


@tool(side_effect="non_idempotent")
async def append_note(text: str) -> str:
    """Append a note.

    Args:
        text: the note.
    """
    await trio.lowlevel.checkpoint()
    DONE.append(f"noted {text}")
    return "noted"


@pytest.fixture(autouse=True)
def _clean() -> None:
    DONE.clear()


@pytest.fixture
def registry() -> ToolRegistry:
    registry = ToolRegistry()
    for function in (delete_report, send_mail, append_note):
        registry.add(function)
    return registry


def call(name: str, arguments: str, call_id: str = "call_1") -> FunctionCallItem:
    return FunctionCallItem(call_id=call_id, name=name, arguments=arguments)


def output_of(item: FunctionCallOutputItem) -> Any:
    assert isinstance(item.output, str)
    return msgspec.json.decode(item.output)


class Asked:
    """An approver that records what it was asked and answers from a list."""

    def __init__(self, *answers: bool | ApprovalDecision) -> None:
        self.answers = list(answers)
        self.requests: list[ApprovalRequest] = []

    async def __call__(self, request: ApprovalRequest) -> bool | ApprovalDecision:
        await trio.lowlevel.checkpoint()
        self.requests.append(request)
        return self.answers.pop(0)


# -- the executor ------------------------------------------------------------------------------


async def test_without_an_approver_a_destructive_call_is_denied_not_run(registry):
    """Without an approver a destructive call does not run: the model gets approval_denied
    saying the tool needs an approval, and the bus sees one refused ToolApproval (by default)
    and a failed ToolFinished."""
    bus = EventBus()
    seen: list[RuntimeEvent] = []
    bus.add_listener(seen.append)
    executor = registry.executor("janitor", bus=bus)

    item = await executor.execute(call("delete_report", '{"name": "weekly"}'))

    assert [] == DONE
    error = output_of(item)
    assert ("approval_denied", "delete_report") == (error["error"], error["tool"])
    assert "needs an approval" in error["message"]
    approvals = [e for e in seen if isinstance(e, ToolApproval)]
    assert [("janitor", "delete_report", "destructive", False, "default")] == [
        (e.agent, e.tool, e.side_effect, e.approved, e.by) for e in approvals
    ]
    finished = [e for e in seen if isinstance(e, ToolFinished)]
    assert [(False, "approval_denied")] == [(e.ok, e.error) for e in finished]


@pytest.mark.parametrize(
    ("name", "arguments", "done"),
    [
        ("delete_report", '{"name": "weekly"}', "deleted weekly"),
        ("send_mail", '{"to": "ops@example.com"}', "mailed ops@example.com"),
    ],
)
async def test_an_approved_call_runs_and_the_approver_sees_the_request(
    registry, name, arguments, done
):
    """A destructive or external call the approver allows runs and returns its output; the
    approver was asked once with the agent, tool, call id, side effect and arguments."""
    approver = Asked(True)
    executor = registry.executor("janitor", approver=approver)

    item = await executor.execute(call(name, arguments, "call_9"))

    assert [done] == DONE
    assert done == item.output
    side_effect = "destructive" if name == "delete_report" else "external"
    assert [ApprovalRequest("janitor", name, "call_9", side_effect, arguments)] == (
        approver.requests
    )


async def test_a_refusal_tells_the_model_why(registry):
    """A refusal with a reason does not run the tool; the model's approval_denied output
    carries the approver's reason."""
    approver = Asked(ApprovalDecision(False, "ops", "reports are kept for a year"))
    executor = registry.executor("janitor", approver=approver)

    item = await executor.execute(call("delete_report", '{"name": "weekly"}'))

    assert [] == DONE
    error = output_of(item)
    assert ("approval_denied", "reports are kept for a year") == (error["error"], error["message"])


async def test_tools_that_need_no_approval_never_reach_the_approver(registry):
    """A tool that is neither destructive nor external runs without the approver being
    asked."""
    approver = Asked()
    executor = registry.executor("janitor", approver=approver)

    item = await executor.execute(call("append_note", '{"text": "hi"}'))

    assert "noted" == item.output
    assert [] == approver.requests


async def test_invalid_arguments_are_refused_before_anyone_is_asked(registry):
    """Only a call that would run is put to a person: bad arguments are the model's to fix."""
    approver = Asked()
    executor = registry.executor("janitor", approver=approver)

    item = await executor.execute(call("delete_report", '{"name": 3}'))

    assert "invalid_arguments" == output_of(item)["error"]
    assert [] == approver.requests


async def test_a_failing_approver_denies_the_call(registry):
    """An approver that raises denies the call: the tool does not run and the output names the
    approver's failure by its type only."""

    def broken(request: ApprovalRequest) -> bool:
        raise RuntimeError("policy service down")

    executor = registry.executor("janitor", approver=broken)
    item = await executor.execute(call("delete_report", '{"name": "weekly"}'))

    assert [] == DONE
    error = output_of(item)
    assert ("approval_denied", "the approver failed (RuntimeError)") == (
        error["error"],
        error["message"],
    )


async def test_an_approver_answering_nonsense_denies_the_call(registry):
    """An approver answering something that is neither a bool nor an ApprovalDecision denies
    the call."""
    executor = registry.executor("janitor", approver=lambda request: "yes")  # type: ignore[arg-type,return-value]
    item = await executor.execute(call("delete_report", '{"name": "weekly"}'))

    assert [] == DONE
    assert "approval_denied" == output_of(item)["error"]


async def test_asking_again_after_refusals_is_bounded_by_the_repair_budget(registry):
    """A model that keeps calling a refused tool is bounded by the repair budget: the third
    refusal in a row raises ToolRepairBudgetExceeded with approval_denied, and the tool never
    ran."""
    executor = registry.executor("janitor", approver=Asked(False, False, False), repair_budget=2)
    for call_id in ("c1", "c2"):
        await executor.execute(call("delete_report", '{"name": "weekly"}', call_id))
    with pytest.raises(ToolRepairBudgetExceeded) as caught:
        await executor.execute(call("delete_report", '{"name": "weekly"}', "c3"))
    assert "approval_denied" == caught.value.error
    assert [] == DONE


async def test_parallel_calls_are_each_decided(registry):
    """Two calls in one response: each is asked about and each gets its own answer."""

    def approve_a(request: ApprovalRequest) -> bool:
        return msgspec.json.decode(request.arguments)["name"] == "a"

    executor = registry.executor("janitor", approver=approve_a)

    items = await executor.execute_all(
        [
            call("delete_report", '{"name": "a"}', "c1"),
            call("delete_report", '{"name": "b"}', "c2"),
        ]
    )

    assert ["deleted a"] == DONE
    assert ["c1", "c2"] == [i.call_id for i in items]
    assert "deleted a" == items[0].output
    assert "approval_denied" == output_of(items[1])["error"]


def test_options_cannot_lower_a_tool_out_of_approval():
    """A plan may raise a tool's class (read_only -> destructive), never lower one its code
    declares destructive or external."""
    lowered = ToolSpec.from_callable(delete_report, side_effect="read_only")
    moved = ToolSpec.from_callable(send_mail, side_effect="destructive")
    raised = ToolSpec.from_callable(append_note, side_effect="destructive")
    assert ("destructive", "destructive", "destructive") == (
        lowered.side_effect,
        moved.side_effect,
        raised.side_effect,
    )


# -- the policy --------------------------------------------------------------------------------


def request(agent: str = "janitor", tool_name: str = "delete_report") -> ApprovalRequest:
    return ApprovalRequest(agent, tool_name, "call_1", "destructive", "{}")


@pytest.mark.parametrize(
    ("pattern", "agent", "tool_name", "expected"),
    [
        ("delete_report", "janitor", "delete_report", True),
        ("delete_report", "janitor", "delete_reports", False),
        ("janitor:delete_report", "janitor", "delete_report", True),
        ("janitor:delete_report", "other", "delete_report", False),
        ("*:delete_*", "anyone", "delete_everything", True),
        ("delete_?eport", "x", "delete_report", True),
        ("jan*:*", "janitor", "send_mail", True),
        ("*", "x", "y", True),
    ],
)
def test_patterns(pattern, agent, tool_name, expected):
    """An approval pattern is 'tool' or 'agent:tool', with '*' and '?' matching any text; a
    pattern matches a whole name, never a prefix of it."""
    assert expected == matches(pattern, agent, tool_name)


async def test_policy_deny_wins_then_allow_then_the_fallback():
    """A policy denies a call any deny pattern matches (naming the pattern), else allows one
    an allow pattern matches, else asks its fallback, which alone is put to the person."""
    asked = Asked(ApprovalDecision(True, "person", "fine"))
    policy = ApprovalPolicy(
        allow=("janitor:*",), deny=("*:delete_report",), otherwise="ask", ask=asked
    )

    denied = await policy(request("janitor", "delete_report"))
    allowed = await policy(request("janitor", "send_mail"))
    fallback = await policy(request("clerk", "send_mail"))

    assert (False, "policy") == (denied.approved, denied.by)
    assert "'*:delete_report'" in denied.reason
    assert (True, "policy") == (allowed.approved, allowed.by)
    assert ApprovalDecision(True, "person", "fine") == fallback
    assert [("clerk", "send_mail")] == [(r.agent, r.tool) for r in asked.requests]


@pytest.mark.parametrize(("otherwise", "ask"), [("deny", Asked(True)), ("ask", None)])
async def test_policy_without_anyone_to_ask_denies(otherwise, ask):
    """A policy whose fallback is deny, or asks with nobody to ask, denies the call without
    asking anyone."""
    decision = await ApprovalPolicy(otherwise=otherwise, ask=ask)(request())
    assert not decision.approved
    assert "was not approved" in decision.reason
    assert ask is None or [] == ask.requests


_NAMES = st.sampled_from(["janitor", "clerk", "delete_report", "send_mail", "x"])
_PATTERNS = st.one_of(
    _NAMES, st.builds(lambda a, t: f"{a}:{t}", _NAMES | st.just("*"), _NAMES | st.just("*"))
)


@given(
    allow=st.lists(_PATTERNS, max_size=3),
    deny=st.lists(_PATTERNS, max_size=3),
    agent=_NAMES,
    tool_name=_NAMES,
)
def test_policy_decisions_follow_the_rule(allow, deny, agent, tool_name):
    """For any lists: denied iff a deny pattern matches; else allowed iff an allow pattern
    matches; else the fallback decides (here: always no)."""
    policy = ApprovalPolicy(allow=tuple(allow), deny=tuple(deny), otherwise="deny")
    decision = trio.run(policy, request(agent, tool_name))
    expected = not any(matches(p, agent, tool_name) for p in deny) and any(
        matches(p, agent, tool_name) for p in allow
    )
    assert expected == decision.approved


# -- plans -------------------------------------------------------------------------------------


def test_plans_and_tools_share_one_definition_of_side_effects():
    """The side-effect classes are defined once (orchestrator.core.rules)."""
    assert plans.model.SideEffect is actors.tools.SideEffect


def janitor_plan(approvals: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": "cleanup",
        "settings": {"model": "gpt-5-mini"},
        "agents": [
            {"name": "boss", "role": "planner"},
            {"name": "janitor", "tools": ["tests.test_approval:delete_report"]},
        ],
        "approvals": approvals,
    }


def test_approvals_are_validated_with_locations_and_suggestions():
    """The plan's approval patterns are validated: an unknown agent or a tool no agent lists
    is an error at its location with the closest name suggested, and a pattern that is not one
    is plan.value."""
    report = check_plan(
        janitor_plan(
            {
                "allow": ["janitr:delete_report", "delete_reprt", "janitor:*", "x y"],
                "deny": ["*:drop_*"],
            }
        ),
        source="plan.toml",
    )
    assert [
        "error[plan.unknown_agent]: plan.toml: $.approvals.allow[0]: 'janitr:delete_report' "
        "names unknown agent 'janitr'; defined agents: boss, janitor (did you mean 'janitor'?)",
        "error[plan.tool]: plan.toml: $.approvals.allow[1]: 'delete_reprt' names tool "
        "'delete_reprt', which no agent lists (did you mean 'delete_report'?)",
        "error[plan.value]: plan.toml: $.approvals.allow[3]: 'x y' is not a tool pattern; "
        "write 'tool' or 'agent:tool' ('*' and '?' match any text)",
    ] == [str(issue) for issue in report.issues]


def test_approvals_fields_are_checked_like_any_table():
    """The [approvals] table refuses unknown fields (with a suggestion) and an otherwise that
    is neither ask nor deny, like any table of a plan."""
    report = check_plan(janitor_plan({"allow": [], "otherwise": "maybe", "alow": []}))
    assert [
        "error[plan.schema]: $.approvals: unknown field 'alow' (did you mean 'allow'?)",
        "error[plan.schema]: $.approvals.otherwise: expected one of 'ask', 'deny', got 'maybe'",
    ] == [str(issue) for issue in report.issues]


def test_command_line_patterns_are_checked_against_the_plan():
    """--approve patterns are checked against the plan like its own: one naming a tool no
    agent lists is an error naming the option, with a suggestion."""
    plan = check_plan(janitor_plan({})).raise_for_errors()
    issues = check_approval_patterns(
        plan, ["janitor:delete_report", "delte_report"], source="--approve"
    )
    assert [
        "error[plan.tool]: --approve 'delte_report' names tool 'delte_report', which no agent "
        "lists (did you mean 'delete_report'?)"
    ] == [str(issue) for issue in issues]


# -- whole runs --------------------------------------------------------------------------------


def cleanup(**approvals: Any) -> Any:
    builder = (
        PlanBuilder("cleanup", goal="Delete the weekly report", model="gpt-5-mini")
        .planner("boss")
        .worker("janitor", description="Deletes reports.", tools=[delete_report])
    )
    if approvals:
        builder.approvals(**approvals)
    return builder.build()


async def approvals_of(plan: Any, **options: Any) -> tuple[str, list[ToolApproval]]:
    seen: list[RuntimeEvent] = []
    with trio.fail_after(60):
        # No journal: its writer thread and the autojump clock do not mix (tests/jobs).
        result = await run(
            plan,
            events=seen.append,
            embedded=EmbeddedServer(transport="memory"),
            store=None,
            **options,
        )
    assert "completed" == result.status
    return result.answer or "", [e for e in seen if isinstance(e, ToolApproval)]


async def test_a_run_without_an_approver_denies_and_the_planner_hears_why(autojump_clock):
    """A whole run with nobody to approve: the destructive tool never runs, the policy refused
    it, and the planner's answer reports approval_denied."""
    answer, approvals = await approvals_of(cleanup())

    assert [] == DONE
    assert [(False, "policy")] == [(a.approved, a.by) for a in approvals]
    assert "approval_denied" in answer


async def test_a_run_asks_the_callback_when_the_plan_does_not_decide(autojump_clock):
    """A run whose plan neither allows nor denies the tool asks the approve callback once; the
    approved call runs and its result reaches the answer."""
    asked = Asked(True)
    answer, approvals = await approvals_of(cleanup(), approve=asked)

    assert 1 == len(DONE)
    assert DONE[0].startswith("deleted ")
    assert [("janitor", "delete_report")] == [(r.agent, r.tool) for r in asked.requests]
    assert [(True, "approver")] == [(a.approved, a.by) for a in approvals]
    assert DONE[0] in answer


async def test_the_plan_deny_list_wins_over_the_callback(autojump_clock):
    """A call the plan denies is refused by the policy without asking the callback, even one
    that would approve it."""
    asked = Asked(True)
    _, approvals = await approvals_of(cleanup(deny=["janitor:delete_*"]), approve=asked)

    assert [] == DONE
    assert [] == asked.requests
    assert [(False, "policy")] == [(a.approved, a.by) for a in approvals]


async def test_the_plan_allow_list_runs_unasked(autojump_clock):
    """A call the plan allows runs without asking the callback; the approval is recorded as
    the policy's."""
    asked = Asked()
    _, approvals = await approvals_of(cleanup(allow=["delete_report"]), approve=asked)

    assert 1 == len(DONE)
    assert [] == asked.requests
    assert [(True, "policy")] == [(a.approved, a.by) for a in approvals]
