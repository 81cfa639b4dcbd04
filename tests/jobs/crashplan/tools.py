"""Tools of the crash plan: each records what it does in a side-effect ledger.

The ledger is a SQLite file outside the job store (its path in ``$CRASHPLAN_LEDGER``), one row
per thing a tool did: ``(key, tool, attempt, pid, kind, output)`` where ``kind`` is

* ``read`` for ``lookup`` (read_only: no effect, may run any number of times);
* ``applied`` for an effect that happened; ``stash`` (idempotent_write) applies once per
  idempotency key and records ``dup_suppressed`` for every later attempt with the same key;
  ``post`` (non_idempotent) applies every time it runs, as a real non-idempotent service would;
* ``spawned`` for ``probe``, which runs a helper process for ``$CRASHPLAN_HELPER_SECONDS``
  (default 0.2) and appends its pid to the file ``$CRASHPLAN_HELPER_PIDS`` names, if any
  (for the signal tests).

``output`` is what the tool returned, so that an operator resolving a parked call can give
the model exactly that (``orchestrator jobs resolve JOB CALL --output TEXT``).

Every tool calls ``crash_point("during_tool")`` right after its ledger row is committed: with
``ORCHESTRATOR_CRASH_AT=during_tool:n`` the process dies with the effect done and its result
not yet journaled. Outputs depend on the arguments only, so a resumed job reaches the same
answer as a run without faults.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from typing import Final

from actors.tools import ToolContext, tool
from orchestrator.core.failpoints import crash_point

LEDGER_ENV: Final = "CRASHPLAN_LEDGER"
HELPER_PIDS_ENV: Final = "CRASHPLAN_HELPER_PIDS"
HELPER_SECONDS_ENV: Final = "CRASHPLAN_HELPER_SECONDS"
SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS ledger (seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL,"
    " tool TEXT NOT NULL, attempt INTEGER NOT NULL, pid INTEGER NOT NULL, kind TEXT NOT NULL,"
    " output TEXT NOT NULL)"
)


def _ledger() -> sqlite3.Connection:
    path = os.environ.get(LEDGER_ENV)
    if not path:
        raise RuntimeError(f"set {LEDGER_ENV} to the side-effect ledger's path")
    # Autocommit mode: each statement, or each explicit BEGIN ... COMMIT, is durable at once.
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    connection.execute(SCHEMA)
    return connection


def _record(context: ToolContext, kind: str, output: str) -> None:
    with closing(_ledger()) as ledger:
        ledger.execute(
            "INSERT INTO ledger (key, tool, attempt, pid, kind, output) VALUES (?, ?, ?, ?, ?, ?)",
            (context.idempotency_key, context.tool, context.attempt, os.getpid(), kind, output),
        )


@tool(side_effect="read_only")
def lookup(place: str, context: ToolContext) -> str:
    """Look a place up in the harbour's records.

    Args:
        place: where to look.
    """
    output = f"records on {place}: 3 entries"
    _record(context, "read", output)
    crash_point("during_tool")
    return output


@tool(side_effect="idempotent_write")
def stash(note: str, context: ToolContext) -> str:
    """File a note in the harbour's register (once per idempotency key).

    Args:
        note: the note to file.
    """
    output = f"filed: {note}"
    with closing(_ledger()) as ledger:
        ledger.execute("BEGIN IMMEDIATE")
        seen = ledger.execute(
            "SELECT 1 FROM ledger WHERE key = ? AND kind = 'applied'", (context.idempotency_key,)
        ).fetchone()
        ledger.execute(
            "INSERT INTO ledger (key, tool, attempt, pid, kind, output) VALUES (?, ?, ?, ?, ?, ?)",
            (
                context.idempotency_key,
                context.tool,
                context.attempt,
                os.getpid(),
                "dup_suppressed" if seen else "applied",
                output,
            ),
        )
        ledger.execute("COMMIT")
    crash_point("during_tool")
    return output


@tool(side_effect="non_idempotent")
def post(notice: str, context: ToolContext) -> str:
    """Post a notice on the harbour's board (every call posts again).

    Args:
        notice: what to post.
    """
    output = f"posted: {notice}"
    _record(context, "applied", output)
    crash_point("during_tool")
    return output


@tool(side_effect="read_only")
def probe(place: str, context: ToolContext) -> str:
    """Measure the tide at a place with a helper process.

    Args:
        place: where to measure.
    """
    seconds = float(os.environ.get(HELPER_SECONDS_ENV) or "0.2")
    helper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", f"import time; time.sleep({seconds})"],
        stdin=subprocess.DEVNULL,
    )
    pids = os.environ.get(HELPER_PIDS_ENV)
    if pids:
        with open(pids, "a", encoding="utf-8") as handle:
            handle.write(f"{helper.pid}\n")
    output = f"tide at {place}: 7 units"
    _record(context, "spawned", output)
    helper.wait()
    return output
