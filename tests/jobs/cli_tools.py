"""Tools of the plans the ``orchestrator jobs`` tests run in subprocesses.

``post`` is non-idempotent: every call appends a line ``key attempt`` to the file named by
``ORCHESTRATOR_TEST_LEDGER`` (the outside world), so the tests can count applications.
"""

from __future__ import annotations

import os

from actors.tools import ToolContext, tool
from orchestrator.core.failpoints import crash_point


def look(city: str) -> str:
    """Look a city up.

    Args:
        city: the city.
    """
    return f"{city}: sunny"


@tool(side_effect="non_idempotent")
def post(city: str, context: ToolContext) -> str:
    """Post a card from a city (every call posts one).

    Args:
        city: the city.
    """
    with open(os.environ["ORCHESTRATOR_TEST_LEDGER"], "a", encoding="utf-8") as ledger:
        ledger.write(f"{context.idempotency_key} {context.attempt}\n")
    crash_point("during_tool")
    return f"posted from {city}"
