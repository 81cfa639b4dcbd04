"""Tools of the triage team: a support inbox and an account desk, bundled in ``data/``.

Both tools take free text (a message, a ticket id, a customer name) and find what it refers
to, the way a help-desk search box does; both are read-only and return compact JSON-ready
dicts, with a ``note`` instead of an error when nothing matches.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Final

from actors.tools import tool

__all__ = ["account_status", "find_ticket"]

DATA: Final = Path(__file__).with_name("data")
_TICKET_ID: Final = re.compile(r"\bT-\d{4}\b", re.IGNORECASE)


@functools.cache
def _load(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads((DATA / name).read_text(encoding="utf-8")))


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@tool(side_effect="read_only")
def find_ticket(query: str) -> dict[str, Any]:
    """Find the support ticket a message refers to: by its id (T-1042), else by the words of
    its subject and account.

    Args:
        query: a ticket id, or words from the ticket's subject or customer.
    """
    tickets = _load("tickets.json")
    wanted = {match.upper() for match in _TICKET_ID.findall(query)}
    found = [t for t in tickets if t["ticket_id"] in wanted]
    if not found:
        words = _words(query)
        scored = [(len(words & _words(t["subject"] + " " + t["account"])), t) for t in tickets]
        best = max((score for score, _ in scored), default=0)
        found = [t for score, t in scored if best and score == best]
    if not found:
        return {"note": f"no ticket matches {query[:80]!r}; give its id, e.g. T-1042"}
    ticket = found[0]
    return {key: ticket[key] for key in ("ticket_id", "account", "subject", "category", "priority")}


@tool(side_effect="read_only")
def account_status(query: str) -> dict[str, Any]:
    """The account behind a message: its plan, support SLA, open incidents and owner. Finds
    the account by its id (acme-logistics), its name, or the id of one of its tickets.

    Args:
        query: an account id or name, or a ticket id.
    """
    accounts = _load("accounts.json")
    tickets = {t["ticket_id"]: t["account"] for t in _load("tickets.json")}
    lowered = query.lower()
    ids = [tickets[m.upper()] for m in _TICKET_ID.findall(query) if m.upper() in tickets]
    for account in accounts:
        if (
            account["account"] in ids
            or account["account"] in lowered
            or (account["name"].lower() in lowered)
        ):
            return {
                key: account[key]
                for key in ("account", "plan", "sla_hours", "open_incidents", "owner")
            }
    return {"note": f"no account matches {query[:80]!r}; give its id, name or a ticket id"}
