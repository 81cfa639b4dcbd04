"""The support example's MCP server: a small shop's orders and return rules, over stdio.

Run by the plan (``[mcp_servers.shop]``); on its own, ``python -m
orchestrator.examples.support.server`` speaks MCP on stdin/stdout. Built on the official
SDK's ``MCPServer``; each tool says what it does to the world with MCP annotations, which the
orchestrator maps to its side-effect classes (``issue_refund`` has none, so it counts as
destructive and the plan does not offer it).
"""

from __future__ import annotations

import datetime
import re

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
server = MCPServer("shop", log_level="WARNING")

ORDERS = {
    "A-1042": {
        "customer_country": "PT",
        "status": "delivered",
        "delivered_on": "2026-05-02",
        "items": ["rain jacket", "travel adapter"],
        "total_eur": 134.9,
    },
    "A-1043": {
        "customer_country": "FR",
        "status": "in transit",
        "carrier": "CTT",
        "expected_on": "2026-05-20",
        "items": ["hiking boots"],
        "total_eur": 89.0,
    },
}
RETURN_DAYS = {"PT": 30, "FR": 30, "DE": 14}
_ORDER_ID = re.compile(r"\b[A-Z]-\d{4}\b")


def _find(order_id: str) -> tuple[str, dict[str, object] | None]:
    """The order an id names; an id inside a sentence is found too (``Where is A-1042?``)."""
    match = _ORDER_ID.search(order_id.upper())
    key = match.group(0) if match else order_id.strip().upper()
    return key, ORDERS.get(key)


@server.tool(annotations=READ_ONLY)
def order_status(order_id: str) -> dict[str, object]:
    """The status of an order: delivered or in transit, its items and total.

    Args:
        order_id: the order's id, like A-1042.
    """
    key, order = _find(order_id)
    if order is None:
        return {"order_id": key, "status": "unknown order", "known": sorted(ORDERS)}
    return {"order_id": key, **order}


@server.tool(annotations=READ_ONLY)
def return_window(order_id: str, today: str = "2026-05-14") -> dict[str, object]:
    """Whether a delivered order can still be returned, and until when.

    Args:
        order_id: the order's id.
        today: the date to check (YYYY-MM-DD).
    """
    key, order = _find(order_id)
    if order is None or "delivered_on" not in order:
        return {"order_id": key, "returnable": False, "why": "not delivered yet"}
    days = RETURN_DAYS.get(str(order["customer_country"]), 14)
    delivered = datetime.date.fromisoformat(str(order["delivered_on"]))
    last = delivered + datetime.timedelta(days=days)
    try:
        now = datetime.date.fromisoformat(today)
    except ValueError:
        now = datetime.date(2026, 5, 14)
    return {"order_id": key, "returnable": now <= last, "last_day": str(last)}


@server.tool()
def issue_refund(order_id: str, amount_eur: float) -> str:
    """Refund an order (moves money: the plan does not offer it)."""
    return f"refunded {amount_eur} EUR on {order_id}"


if __name__ == "__main__":
    server.run()
