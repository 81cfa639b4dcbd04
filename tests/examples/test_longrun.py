"""The long-running example: the generated plan and data, its tools, and a full offline run."""

from __future__ import annotations

import collections

import pytest

from orchestrator.examples.longrun import generate, tools
from plans import load_plan, result_steps, scheduled_steps

from .offline import run_steps
from .test_plans import PLANS

PLAN = load_plan(PLANS["longrun"])


def levels(plan) -> dict[str, int]:
    """Each step's depth in the DAG: 0 for steps without dependencies."""
    depth: dict[str, int] = {}
    for step in scheduled_steps(plan):
        depth[step.id] = 1 + max((depth[d] for d in step.depends_on), default=-1)
    return depth


def test_committed_files_are_what_generate_writes():
    """plan.json and data/*.json are the script's output: edit the script, not the JSON."""
    for path, text in generate.rendered_files().items():
        assert text == path.read_text(encoding="utf-8"), f"{path.name}: run generate.py"


def test_plan_is_a_wide_deep_graph_over_five_workers():
    """125 scheduled steps on five workers, 48 ready at once, five levels deep."""
    steps = scheduled_steps(PLAN)
    assert 125 == len(steps) == len(PLAN.steps)
    assert PLAN.planner is None
    per_agent = collections.Counter(step.agent for step in steps)
    assert {"counter": 24, "logistics": 24, "auditor": 24, "buyer": 24, "analyst": 29} == per_agent
    width = collections.Counter(levels(PLAN).values())
    assert {0: 48, 1: 24, 2: 24, 3: 24, 4: 4, 5: 1} == dict(width)
    assert ("network-report",) == tuple(step.id for step in result_steps(PLAN))


def test_later_steps_quote_earlier_results():
    """Tasks reference what they depend on, and only that (the validator checks the rest)."""
    reorder = PLAN.step("reorder-lille")
    assert ("audit-lille", "inbound-lille") == reorder.depends_on
    assert "{{steps.audit-lille.result}}" in reorder.task
    assert "{{steps.inbound-lille.result}}" in reorder.task
    region = PLAN.step("region-north")
    assert 6 == len(region.depends_on)
    assert region.task.count("{{steps.report-") == 6


# -- the tools ---------------------------------------------------------------------------------


def test_data_sets():
    """24 sites in four regions, six items each, a few dozen shipments."""
    assert 24 == len(tools.sites())
    assert ["North", "East", "South", "West"] == list(tools.regions())
    assert 24 * 6 == len(tools.stock())
    assert 20 <= len(tools.shipments()) <= 80
    assert {i.supplier for i in tools.items().values()} == set(tools.suppliers())


def test_stock_count_and_discrepancies_agree():
    """Discrepancies at 0 % list exactly the count's mismatches; a wider tolerance fewer."""
    count = tools.stock_count("Lille")
    assert 6 == len(count["lines"])
    exact = tools.discrepancies("lille", 0)
    assert count["mismatches"] == len(exact["items"])
    assert len(tools.discrepancies("Lille", 20)["items"]) <= len(exact["items"])
    for item in exact["items"]:
        assert item["difference"] == item["counted"] - item["book"]
    assert exact["net_value_eur"] == round(sum(i["value_eur"] for i in exact["items"]), 2)


def test_reorders_grow_with_the_horizon():
    """Planning further ahead never orders less."""
    for site in tools.sites():
        short = tools.reorder_needs(site, 7)["total_eur"]
        long = tools.reorder_needs(site, 90)["total_eur"]
        assert short <= long, site


def test_logistics_and_suppliers():
    """Shipments soonest first; capacity adds up; each supplier lists its items."""
    due = tools.inbound_shipments("Bordeaux")
    etas = [s["eta"] for s in due["shipments"]]
    assert sorted(etas) == etas
    assert 3 == due["delayed"]
    dock = tools.dock_capacity("Bordeaux")
    assert 0 <= dock["free_pallets"] <= dock["capacity_pallets"]
    terms = tools.supplier_terms("Bordeaux")["suppliers"]
    assert 6 == sum(len(s["skus"]) for s in terms)


def test_scorecards_roll_up_from_sites_to_regions_to_the_network():
    """Region totals are the sum of their sites; the network's of its regions."""
    network = tools.scorecard("France")
    regions = [tools.scorecard(region) for region in tools.regions()]
    assert 24 == network["sites"] == sum(r["sites"] for r in regions)
    assert network["shrinkage_eur"] == pytest.approx(sum(r["shrinkage_eur"] for r in regions))
    north = tools.scorecard("north")
    sites = [tools.scorecard(site) for site in generate.REGIONS["North"]]
    assert north["shrinkage_eur"] == pytest.approx(sum(s["shrinkage_eur"] for s in sites))
    assert {s["grade"] for s in sites} <= set("ABCD")


@pytest.mark.parametrize(
    "call",
    [
        lambda: tools.stock_count("Atlantis"),
        lambda: tools.inbound_shipments("Atlantis"),
        lambda: tools.dock_capacity("Atlantis"),
        lambda: tools.discrepancies("Atlantis", 2),
        lambda: tools.reorder_needs("Atlantis", 30),
        lambda: tools.supplier_terms("Atlantis"),
        lambda: tools.scorecard("Atlantis"),
    ],
)
def test_unknown_names_get_a_note(call):
    """An unknown site or scope is a note listing the valid names, not an error."""
    result = call()
    assert "unknown" in result["note"]


# -- offline -----------------------------------------------------------------------------------


async def test_full_offline_run_takes_hundreds_of_turns_and_hits_data():
    """Every step's generic arguments name its own site (or region, or the network) and
    find data; two turns per step, 250 in all."""
    runs = await run_steps(PLAN)
    assert 250 == sum(run.turns for run in runs.values())
    for step_id, run in runs.items():
        assert 2 == run.turns, step_id
        for tool_name, output in run.outputs.items():
            assert "note" not in output, (step_id, tool_name, output)
            assert "error" not in output, (step_id, tool_name, output)
        kind, _, key = step_id.partition("-")
        if kind in ("count", "inbound", "audit", "reorder", "report"):
            assert {key} == {
                arguments.get("site", arguments.get("scope", "")).lower()
                for arguments in run.arguments.values()
            }
    assert {"tolerance_pct": 2.0, "site": "Lille"} == runs["audit-lille"].arguments["discrepancies"]
    assert 30 == runs["reorder-lille"].arguments["reorder_needs"]["horizon_days"]
    assert {"scope": "North"} == runs["region-north"].arguments["scorecard"]
    assert {"scope": "France"} == runs["network-report"].arguments["scorecard"]
    assert "\nWorst sites: " in runs["network-report"].result
