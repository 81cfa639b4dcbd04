"""Tools of the long-running stock audit: cheap look-ups over the data bundled in ``data/``.

The data describe 24 warehouses in four regions of France at the quarter-end count of
``AUDIT_DATE``: each site's book and counted stock of six items, its inbound shipments and
its storage capacity, plus the items' suppliers. ``generate.py`` produced them (and the
plan) from a fixed seed. Every tool is read-only, takes a site (or, for ``scorecard``, a
region or the whole network) by name in any case, and answers with a small JSON-ready dict;
an unknown name gets a ``note`` listing the valid ones instead of an error.
"""

from __future__ import annotations

import datetime
import functools
import math
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar

import msgspec

from actors.tools import tool

__all__ = [
    "AUDIT_DATE",
    "NETWORK",
    "discrepancies",
    "dock_capacity",
    "inbound_shipments",
    "reorder_needs",
    "scorecard",
    "stock_count",
    "supplier_terms",
]

AUDIT_DATE: Final = datetime.date(2026, 3, 31)
NETWORK: Final = "France"  # the scope name of the whole network in scorecard()
DATA: Final = Path(__file__).with_name("data")
# Scorecards judge the count at this tolerance and plan reorders over this horizon.
SCORECARD_TOLERANCE_PCT: Final = 2.0
SCORECARD_HORIZON_DAYS: Final = 30

TolerancePercent = Annotated[float, msgspec.Meta(ge=0, le=20)]
HorizonDays = Annotated[int, msgspec.Meta(ge=7, le=90)]

_T = TypeVar("_T")


# -- the data sets -----------------------------------------------------------------------------


class Site(msgspec.Struct, frozen=True, kw_only=True):
    site: str
    region: str
    capacity_pallets: int
    used_pallets: int
    docks: int


class Item(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    item: str
    unit_cost_eur: float
    supplier: str
    min_order: int


class Supplier(msgspec.Struct, frozen=True, kw_only=True):
    supplier: str
    lead_time_days: int
    on_time_pct: int


class StockLine(msgspec.Struct, frozen=True, kw_only=True):
    site: str
    sku: str
    book: int
    counted: int
    reorder_point: int
    daily_use: int


class Shipment(msgspec.Struct, frozen=True, kw_only=True):
    site: str
    sku: str
    quantity: int
    eta: datetime.date
    supplier: str
    status: str


def _load(name: str, kind: type[_T]) -> _T:
    return msgspec.json.decode((DATA / name).read_bytes(), type=kind)


@functools.cache
def sites() -> dict[str, Site]:
    """The warehouses by name, in file order."""
    return {s.site: s for s in _load("sites.json", tuple[Site, ...])}


@functools.cache
def items() -> dict[str, Item]:
    """The stocked items by SKU."""
    return {i.sku: i for i in _load("items.json", tuple[Item, ...])}


@functools.cache
def suppliers() -> dict[str, Supplier]:
    """The suppliers by name."""
    return {s.supplier: s for s in _load("suppliers.json", tuple[Supplier, ...])}


@functools.cache
def stock() -> tuple[StockLine, ...]:
    """Every site's stock lines at the count."""
    return _load("inventory.json", tuple[StockLine, ...])


@functools.cache
def shipments() -> tuple[Shipment, ...]:
    """Shipments on their way at the count."""
    return _load("shipments.json", tuple[Shipment, ...])


def regions() -> dict[str, list[Site]]:
    """The sites of each region, regions in order of first appearance."""
    grouped: dict[str, list[Site]] = {}
    for site in sites().values():
        grouped.setdefault(site.region, []).append(site)
    return grouped


def _site(name: str) -> Site | None:
    wanted = name.strip().casefold()
    return next((s for s in sites().values() if s.site.casefold() == wanted), None)


def _unknown_site(name: str) -> dict[str, Any]:
    return {"site": name[:60], "note": "unknown site; sites: " + ", ".join(sites())}


# -- computations shared by the tools ----------------------------------------------------------


def _lines(site: Site) -> list[StockLine]:
    return [line for line in stock() if line.site == site.site]


def _differences(site: Site, tolerance_pct: float) -> list[dict[str, Any]]:
    found = []
    for line in _lines(site):
        difference = line.counted - line.book
        if abs(difference) > line.book * tolerance_pct / 100:
            found.append(
                {
                    "sku": line.sku,
                    "book": line.book,
                    "counted": line.counted,
                    "difference": difference,
                    "value_eur": round(difference * items()[line.sku].unit_cost_eur, 2),
                }
            )
    return found


def _reorders(site: Site, horizon_days: int) -> list[dict[str, Any]]:
    """What to order so that each item stays above its reorder point through the horizon and
    the supplier's lead time, counting shipments due within the horizon."""
    until = AUDIT_DATE + datetime.timedelta(days=horizon_days)
    orders = []
    for line in _lines(site):
        item = items()[line.sku]
        lead_time = suppliers()[item.supplier].lead_time_days
        arriving = sum(
            s.quantity
            for s in shipments()
            if s.site == site.site and s.sku == line.sku and s.eta <= until
        )
        projected = line.counted + arriving - line.daily_use * horizon_days
        needed = line.reorder_point + line.daily_use * lead_time - projected
        if needed > 0:
            quantity = math.ceil(needed / item.min_order) * item.min_order
            orders.append(
                {
                    "sku": line.sku,
                    "quantity": quantity,
                    "supplier": item.supplier,
                    "cost_eur": round(quantity * item.unit_cost_eur, 2),
                }
            )
    return orders


def _card(site: Site) -> dict[str, Any]:
    lines = _lines(site)
    differences = _differences(site, SCORECARD_TOLERANCE_PCT)
    accuracy = round(100 * (len(lines) - len(differences)) / max(1, len(lines)), 1)
    shrinkage = round(sum(-d["value_eur"] for d in differences if d["value_eur"] < 0), 2)
    spend = round(sum(o["cost_eur"] for o in _reorders(site, SCORECARD_HORIZON_DAYS)), 2)
    utilisation = round(100 * site.used_pallets / site.capacity_pallets, 1)
    delayed = sum(1 for s in shipments() if s.site == site.site and s.status == "delayed")
    points = (
        (2 if accuracy < 70 else 1 if accuracy < 90 else 0)
        + (2 if shrinkage > 5000 else 1 if shrinkage > 1000 else 0)
        + (1 if utilisation > 90 else 0)
        + (1 if delayed else 0)
    )
    return {
        "site": site.site,
        "grade": "ABCD"[min(3, (points + 1) // 2)],
        "risk_points": points,
        "count_accuracy_pct": accuracy,
        "shrinkage_eur": shrinkage,
        "reorder_spend_eur": spend,
        "utilisation_pct": utilisation,
        "delayed_shipments": delayed,
    }


def _roll_up(cards: list[dict[str, Any]]) -> dict[str, Any]:
    grades = {grade: sum(1 for c in cards if c["grade"] == grade) for grade in "ABCD"}
    worst = sorted(cards, key=lambda c: (-c["risk_points"], -c["shrinkage_eur"]))[:3]
    return {
        "sites": len(cards),
        "grades": {grade: n for grade, n in grades.items() if n},
        "shrinkage_eur": round(sum(c["shrinkage_eur"] for c in cards), 2),
        "reorder_spend_eur": round(sum(c["reorder_spend_eur"] for c in cards), 2),
        "worst_sites": [f"{c['site']} ({c['grade']})" for c in worst if c["risk_points"]],
    }


# -- the tools ---------------------------------------------------------------------------------


@tool(side_effect="read_only", timeout=10)
def stock_count(site: str) -> dict[str, Any]:
    """The quarter-end stock count of a warehouse: book and counted quantity per item.

    Args:
        site: the warehouse, e.g. Lille.
    """
    found = _site(site)
    if found is None:
        return _unknown_site(site)
    lines = _lines(found)
    return {
        "site": found.site,
        "date": AUDIT_DATE.isoformat(),
        "lines": [{"sku": line.sku, "book": line.book, "counted": line.counted} for line in lines],
        "mismatches": sum(1 for line in lines if line.book != line.counted),
    }


@tool(side_effect="read_only", timeout=10)
def inbound_shipments(site: str) -> dict[str, Any]:
    """Shipments on their way to a warehouse, soonest first, with any delays.

    Args:
        site: the warehouse, e.g. Lille.
    """
    found = _site(site)
    if found is None:
        return _unknown_site(site)
    due = sorted((s for s in shipments() if s.site == found.site), key=lambda s: s.eta)
    return {
        "site": found.site,
        "shipments": [
            {"sku": s.sku, "quantity": s.quantity, "eta": s.eta.isoformat(), "status": s.status}
            for s in due
        ],
        "delayed": sum(1 for s in due if s.status == "delayed"),
    }


@tool(side_effect="read_only", timeout=10)
def dock_capacity(site: str) -> dict[str, Any]:
    """Storage capacity of a warehouse in pallets: used, free and utilisation.

    Args:
        site: the warehouse, e.g. Lille.
    """
    found = _site(site)
    if found is None:
        return _unknown_site(site)
    return {
        "site": found.site,
        "capacity_pallets": found.capacity_pallets,
        "free_pallets": found.capacity_pallets - found.used_pallets,
        "utilisation_pct": round(100 * found.used_pallets / found.capacity_pallets, 1),
        "docks": found.docks,
    }


@tool(side_effect="read_only", timeout=10)
def discrepancies(site: str, tolerance_pct: TolerancePercent) -> dict[str, Any]:
    """Items whose counted stock differs from the books by more than a tolerance, with the
    value of each difference (negative: stock missing).

    Args:
        site: the warehouse, e.g. Lille.
        tolerance_pct: differences up to this percentage of the book quantity are ignored.
    """
    found = _site(site)
    if found is None:
        return _unknown_site(site)
    differences = _differences(found, tolerance_pct)
    return {
        "site": found.site,
        "tolerance_pct": tolerance_pct,
        "items": differences,
        "net_value_eur": round(sum(d["value_eur"] for d in differences), 2),
    }


@tool(side_effect="read_only", timeout=10)
def reorder_needs(site: str, horizon_days: HorizonDays) -> dict[str, Any]:
    """What a warehouse must order to stay above its reorder points over a horizon, counting
    counted stock, expected use, shipments due and supplier lead times.

    Args:
        site: the warehouse, e.g. Lille.
        horizon_days: how many days ahead to plan.
    """
    found = _site(site)
    if found is None:
        return _unknown_site(site)
    orders = _reorders(found, horizon_days)
    return {
        "site": found.site,
        "horizon_days": horizon_days,
        "orders": orders,
        "total_eur": round(sum(o["cost_eur"] for o in orders), 2),
    }


@tool(side_effect="read_only", timeout=10)
def supplier_terms(site: str) -> dict[str, Any]:
    """The suppliers of a warehouse's items: lead time, on-time rate and minimum order.

    Args:
        site: the warehouse, e.g. Lille.
    """
    found = _site(site)
    if found is None:
        return _unknown_site(site)
    terms: dict[str, dict[str, Any]] = {}
    for line in _lines(found):
        item = items()[line.sku]
        supplier = suppliers()[item.supplier]
        entry = terms.setdefault(
            supplier.supplier,
            {
                "supplier": supplier.supplier,
                "lead_time_days": supplier.lead_time_days,
                "on_time_pct": supplier.on_time_pct,
                "skus": [],
            },
        )
        entry["skus"].append(f"{item.sku} (min {item.min_order})")
    return {"site": found.site, "suppliers": list(terms.values())}


@tool(side_effect="read_only", timeout=10)
def scorecard(scope: str) -> dict[str, Any]:
    """The audit scorecard of a warehouse, of a region (North, East, South, West) or of the
    whole network (France): grade A-D, count accuracy, shrinkage, reorder spend, capacity.

    Args:
        scope: a warehouse (e.g. Lille), a region (e.g. North) or France for the network.
    """
    wanted = scope.strip().casefold()
    if (site := _site(scope)) is not None:
        return _card(site)
    for region, members in regions().items():
        if region.casefold() == wanted:
            return {"region": region, **_roll_up([_card(s) for s in members])}
    if wanted in (NETWORK.casefold(), "network", "all"):
        result = _roll_up([_card(s) for s in sites().values()])
        result["regions"] = {
            region: _roll_up([_card(s) for s in members])["grades"]
            for region, members in regions().items()
        }
        return {"scope": NETWORK, **result}
    return {
        "scope": scope[:60],
        "note": f"unknown scope; use a site, a region ({', '.join(regions())}) or {NETWORK}",
    }
