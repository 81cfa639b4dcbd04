"""Generate the long-running example's data sets and its plan file (``plan.json``).

Run ``python -m orchestrator.examples.longrun.generate`` after changing this script, and commit
what it writes. The output depends on nothing but this file (the data come from a seeded
generator), and a test checks that the committed files are what it writes.

The plan is a quarter-end stock audit of 24 warehouses in four regions, run as a DAG of
steps by five workers. Per warehouse: ``count`` and ``inbound`` (independent: all 48 are
ready at once), ``audit`` after the count, ``reorder`` after the audit and the
inbound shipments, and ``report`` after both; then one summary per region after its six
reports, and the network report after the four regions: 125 steps. With the offline
generic model every step takes two model turns (the tool calls, then a summary), 250 in all.
"""

from __future__ import annotations

import datetime
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from plans.builder import PlanBuilder

from . import tools

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["REGIONS", "build_data", "build_plan", "main", "step_key"]

HERE: Final = Path(__file__).parent
SEED: Final = 2026

REGIONS: Final = {
    "North": ("Lille", "Reims", "Rouen", "Amiens", "Caen", "Calais"),
    "East": ("Strasbourg", "Metz", "Nancy", "Dijon", "Mulhouse", "Colmar"),
    "South": ("Marseille", "Nice", "Toulouse", "Montpellier", "Avignon", "Perpignan"),
    "West": ("Nantes", "Rennes", "Bordeaux", "Brest", "Angers", "Tours"),
}
ITEMS: Final = (
    # sku, item, unit cost, supplier, minimum order, typical daily use
    ("PW-100", "Pallet wrap, 500 m roll", 18.5, "Emballages Durand", 24, 12),
    ("CB-220", "Shipping carton, large", 1.2, "Cartonnerie du Nord", 500, 160),
    ("LB-310", "Thermal labels, pack of 1000", 9.8, "EtiqPro", 20, 6),
    ("GL-405", "Work gloves, pair", 3.4, "Protec Securite", 100, 9),
    ("SC-520", "Handheld scanner", 420.0, "Logitek", 2, 0),
    ("BT-640", "Forklift battery", 2900.0, "Logitek", 1, 0),
)
SUPPLIERS: Final = (
    ("Emballages Durand", 5, 96),
    ("Cartonnerie du Nord", 3, 91),
    ("EtiqPro", 7, 88),
    ("Protec Securite", 10, 94),
    ("Logitek", 21, 79),
)

# name: (description for planners and readers, instructions, tools)
AGENTS: Final[dict[str, tuple[str, str, tuple[Callable[..., Any], ...]]]] = {
    "counter": (
        "Counts stock at a warehouse.",
        "You report stock counts. Look up the count of the warehouse in the task and list "
        "the items whose counted quantity differs from the books.",
        (tools.stock_count,),
    ),
    "logistics": (
        "Tracks inbound shipments and storage capacity.",
        "You track logistics. Report the shipments due at the warehouse in the task, which "
        "are delayed, and how much storage space is free.",
        (tools.inbound_shipments, tools.dock_capacity),
    ),
    "auditor": (
        "Values count discrepancies.",
        "You audit stock. Using the tolerance in the task, list the discrepancies of the "
        "warehouse with their value, and say whether they look like shrinkage or miscounts.",
        (tools.discrepancies,),
    ),
    "buyer": (
        "Plans purchase orders.",
        "You plan purchases. For the warehouse and horizon in the task, list the orders to "
        "place with their cost, and flag suppliers whose lead time or reliability is a risk.",
        (tools.reorder_needs, tools.supplier_terms),
    ),
    "analyst": (
        "Writes scorecards and summaries.",
        "You write audit reports. Use the scorecard of the site, region or network named in "
        "the task together with the results you are given; be brief and lead with the risks.",
        (tools.scorecard,),
    ),
}


def step_key(site: str) -> str:
    """The part of step ids that names a site: ``count-lille``."""
    return site.lower()


def build_data() -> dict[str, list[dict[str, Any]]]:
    """The bundled data sets, by file name; deterministic."""
    rng = random.Random(SEED)
    sites, inventory, shipments = [], [], []
    for region, names in REGIONS.items():
        for name in names:
            sites.append(_site(rng, region, name))
            for item in ITEMS:
                line, shipment = _stock_line(rng, name, item)
                inventory.append(line)
                if shipment is not None:
                    shipments.append(shipment)
    items = [
        {"sku": sku, "item": item, "unit_cost_eur": cost, "supplier": supplier, "min_order": m}
        for sku, item, cost, supplier, m, _ in ITEMS
    ]
    suppliers = [
        {"supplier": name, "lead_time_days": lead, "on_time_pct": on_time}
        for name, lead, on_time in SUPPLIERS
    ]
    return {
        "sites.json": sites,
        "items.json": items,
        "suppliers.json": suppliers,
        "inventory.json": inventory,
        "shipments.json": shipments,
    }


def _site(rng: random.Random, region: str, name: str) -> dict[str, Any]:
    capacity = rng.choice((800, 1000, 1200, 1500, 2000))
    return {
        "site": name,
        "region": region,
        "capacity_pallets": capacity,
        "used_pallets": round(capacity * rng.uniform(0.55, 0.97)),
        "docks": rng.randint(4, 12),
    }


def _stock_line(
    rng: random.Random, site: str, item: tuple[Any, ...]
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One item's stock line at a site, and the shipment of it under way, if any."""
    sku, _, _, supplier, minimum, use = item
    daily_use = max(0, round(use * rng.uniform(0.6, 1.4)))
    book = max(2, round((daily_use or 1) * rng.uniform(8, 40)))
    # Most lines match; some drift a little, a few lose a lot (shrinkage).
    roll = rng.random()
    if roll < 0.55:
        counted = book
    elif roll < 0.85:
        counted = book + round(book * rng.uniform(-0.04, 0.03))
    else:
        counted = book - round(book * rng.uniform(0.08, 0.3))
    line = {
        "site": site,
        "sku": sku,
        "book": book,
        "counted": counted,
        "reorder_point": max(1, round((daily_use or 0.2) * rng.uniform(5, 12))),
        "daily_use": daily_use,
    }
    if rng.random() >= 0.3:
        return line, None
    delayed = rng.random() < 0.25
    eta = tools.AUDIT_DATE + datetime.timedelta(days=rng.randint(2, 20) + (25 if delayed else 0))
    shipment = {
        "site": site,
        "sku": sku,
        "quantity": minimum * rng.randint(1, 6),
        "eta": eta.isoformat(),
        "supplier": supplier,
        "status": "delayed" if delayed else "in transit",
    }
    return line, shipment


def build_plan() -> dict[str, Any]:
    """The plan as plain data (validated by the builder, tools imported)."""
    builder = PlanBuilder(
        "longrun",
        goal="Run the quarter-end stock audit of the 24 warehouses and report shrinkage, "
        "reorders and risks by region.",
        model="gpt-5-mini",
    ).budgets(max_turns=600, max_tokens=2_000_000, wall_clock=3600)
    for _, _, functions in AGENTS.values():
        for function in functions:
            builder.tool(function, timeout=10, side_effect="read_only")
    for name, (description, instructions, functions) in AGENTS.items():
        builder.worker(
            name,
            description=description,
            instructions=instructions,
            tools=functions,
        )
    for region, names in REGIONS.items():
        for site in names:
            _add_site_steps(builder, region, site)
    _add_summary_steps(builder)
    builder.final_step("network-report")
    builder.build()  # validates; raises PlanError on a mistake in this script
    return builder.to_dict()


def _add_site_steps(builder: PlanBuilder, region: str, site: str) -> None:
    """One warehouse's chain: count and inbound, then audit, reorder and its scorecard."""
    key = step_key(site)
    builder.step(
        f"count-{key}",
        agent="counter",
        task=f"Count the stock at {site} ({region} region) and list every item whose "
        "counted quantity differs from the books.",
    )
    builder.step(
        f"inbound-{key}",
        agent="logistics",
        task=f"List the shipments due at {site} and the free storage space there.",
    )
    builder.step(
        f"audit-{key}",
        agent="auditor",
        task=f"Audit {site} with a tolerance of 2 percent. The count: "
        f"{{{{steps.count-{key}.result}}}}",
        depends_on=[f"count-{key}"],
    )
    builder.step(
        f"reorder-{key}",
        agent="buyer",
        task=f"Plan the reorders of {site} for the next 30 days. The audit: "
        f"{{{{steps.audit-{key}.result}}}} The shipments due: "
        f"{{{{steps.inbound-{key}.result}}}}",
        depends_on=[f"audit-{key}", f"inbound-{key}"],
    )
    builder.step(
        f"report-{key}",
        agent="analyst",
        task=f"Write the scorecard of {site}. The audit: {{{{steps.audit-{key}.result}}}} "
        f"The reorders: {{{{steps.reorder-{key}.result}}}}",
        depends_on=[f"audit-{key}", f"reorder-{key}"],
    )


def _add_summary_steps(builder: PlanBuilder) -> None:
    """A summary per region from its scorecards, then the network report from those."""
    for region, names in REGIONS.items():
        reports = " ".join(
            f"{site}: {{{{steps.report-{step_key(site)}.result}}}}" for site in names
        )
        builder.step(
            f"region-{region.lower()}",
            agent="analyst",
            task=f"Summarise the {region} region from its site scorecards. {reports}",
            depends_on=[f"report-{step_key(site)}" for site in names],
        )
    summaries = " ".join(
        f"{region}: {{{{steps.region-{region.lower()}.result}}}}" for region in REGIONS
    )
    builder.step(
        "network-report",
        agent="analyst",
        task=f"Write the network report for {tools.NETWORK} from the regional summaries. "
        f"{summaries}",
        depends_on=[f"region-{region.lower()}" for region in REGIONS],
    )


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _rows(rows: list[dict[str, Any]]) -> str:
    """A JSON array with one record per line: small diffs when the data change."""
    lines = ",\n".join("  " + json.dumps(row, ensure_ascii=False) for row in rows)
    return f"[\n{lines}\n]\n"


def rendered_files() -> dict[Path, str]:
    """Every file this script writes, with its content."""
    files = {HERE / "data" / name: _rows(rows) for name, rows in build_data().items()}
    files[HERE / "plan.json"] = _json(build_plan())
    return files


def main() -> None:
    """Write the data sets and the plan next to this module."""
    for path, text in rendered_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(HERE)}")


if __name__ == "__main__":
    main()
