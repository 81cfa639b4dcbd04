"""Machinery shared by the crash-point and signal tests: commands in child processes, and
what a job store, a side-effect ledger and a trace say afterwards.

Every command is a real process (``python -m orchestrator.cli ...``, or the ``rotating``
wrapper) started from the worktree's root without any key, so runs are offline on the
embedded server. The store and ledger are read with ``sqlite3`` once the process that wrote
them has exited; the trace is JSON lines, each written whole (the signal tests watch it
grow).
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import trio

from tests.jobs.crashplan.tools import HELPER_PIDS_ENV, LEDGER_ENV

if TYPE_CHECKING:
    from collections.abc import Sequence

ROOT: Final = Path(__file__).resolve().parents[3]
HERE: Final = Path(__file__).resolve().parent
PLAN: Final = HERE / "plan.toml"
CLI: Final = "orchestrator.cli"
ROTATING: Final = "tests.jobs.crashplan.rotating"
JOB: Final = "crashplan"
SEED: Final = "7"
COMMAND_DEADLINE: Final = 60.0  # seconds for any one command; a hang fails the test
NON_IDEMPOTENT: Final = frozenset({"non_idempotent", "destructive", "external"})


def environment(
    ledger: Path, *, crash: str | None = None, helper_pids: Path | None = None
) -> dict[str, str]:
    """The test's environment without keys or store default, our packages importable."""
    drop = ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ORCHESTRATOR_STORE", "ORCHESTRATOR_CRASH_AT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env[LEDGER_ENV] = str(ledger)
    if crash is not None:
        env["ORCHESTRATOR_CRASH_AT"] = crash
    if helper_pids is not None:
        env[HELPER_PIDS_ENV] = str(helper_pids)
    return env


@attrs.frozen
class Done:
    """A finished command: its exit code (``-9``: killed by SIGKILL) and output."""

    code: int
    stdout: str
    stderr: str

    def result(self) -> Any:
        """The ``--json`` result on stdout."""
        return json.loads(self.stdout)

    def describe(self) -> str:
        return f"exit {self.code}; stderr:\n{self.stderr[-3000:]}"


async def command(args: Sequence[object], env: dict[str, str], *, module: str = CLI) -> Done:
    """Run ``python -m MODULE ARGS`` to its end (at most ``COMMAND_DEADLINE`` seconds)."""
    with trio.fail_after(COMMAND_DEADLINE):
        done = await trio.run_process(
            [sys.executable, "-m", module, *map(str, args)],
            cwd=ROOT,
            env=env,
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Done(done.returncode, done.stdout.decode(), done.stderr.decode())


# -- the job store ------------------------------------------------------------------------------


@attrs.frozen
class Call:
    agent: str
    turn: int
    call_id: str
    name: str
    side_effect: str
    status: str
    attempt: int
    output: str | None

    @property
    def ref(self) -> str:
        """How ``jobs resolve`` names it."""
        return f"{self.agent}/{self.turn}/{self.call_id}"

    def key(self, job: str = JOB) -> str:
        """Its idempotency key (``actors.journal.idempotency_key``)."""
        return f"{job}/{self.agent}/{self.turn}/{self.call_id}"


@attrs.frozen
class Journal:
    """What a job's journal says, read straight from the store."""

    status: str
    answer: str | None
    turns: dict[str, int]  # agent -> journaled turns
    turns_by_message: dict[str | None, int]
    calls: tuple[Call, ...]
    steps: dict[str, tuple[str, str | None]]  # id -> (status, result)

    def in_doubt(self) -> list[Call]:
        """Calls of each agent's latest turn that started and have no result."""
        return [
            c for c in self.calls if c.status == "started" and c.turn == self.turns.get(c.agent)
        ]

    def in_doubt_parked(self) -> list[Call]:
        """In-doubt calls whose tools may not run twice: a resume must park exactly these."""
        return [c for c in self.in_doubt() if c.side_effect in NON_IDEMPOTENT]


def _read_only(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def read_journal(store: Path, job: str = JOB) -> Journal:
    with closing(_read_only(store)) as db:
        status, answer = db.execute(
            "SELECT status, answer FROM jobs WHERE id = ?", (job,)
        ).fetchone()
        turns = dict(
            db.execute("SELECT agent, COUNT(*) FROM turns WHERE job = ? GROUP BY agent", (job,))
        )
        by_message = collections.Counter(
            row[0] for row in db.execute("SELECT message FROM turns WHERE job = ?", (job,))
        )
        calls = tuple(
            Call(*row)
            for row in db.execute(
                "SELECT agent, turn, call_id, name, side_effect, status, attempt, output "
                "FROM calls WHERE job = ? ORDER BY agent, turn, call_id",
                (job,),
            )
        )
        steps = {
            row[0]: (row[1], row[2])
            for row in db.execute("SELECT id, status, result FROM steps WHERE job = ?", (job,))
        }
    return Journal(status, answer, turns, dict(by_message), calls, steps)


def journal_exists(store: Path, job: str = JOB) -> bool:
    if not store.exists():
        return False
    with closing(_read_only(store)) as db:
        return db.execute("SELECT 1 FROM jobs WHERE id = ?", (job,)).fetchone() is not None


def integrity(store: Path) -> str:
    """``PRAGMA integrity_check`` of the store (``ok`` when sound), read-only."""
    with closing(_read_only(store)) as db:
        return "; ".join(row[0] for row in db.execute("PRAGMA integrity_check"))


# -- the side-effect ledger ------------------------------------------------------------------------


@attrs.frozen
class Entry:
    key: str
    tool: str
    attempt: int
    pid: int
    kind: str
    output: str


def read_ledger(ledger: Path) -> list[Entry]:
    if not ledger.exists():
        return []
    # Read-write: a tool killed inside a ledger transaction leaves a hot journal, which the
    # next connection rolls back (as the next tool to write would).
    with closing(sqlite3.connect(ledger, timeout=30)) as db:
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ledger'").fetchone() is None:
            return []  # created by a tool killed before its first row
        return [
            Entry(*row)
            for row in db.execute(
                "SELECT key, tool, attempt, pid, kind, output FROM ledger ORDER BY seq"
            )
        ]


def applied(entries: Sequence[Entry]) -> collections.Counter[tuple[str, str]]:
    """The effects that happened, as (tool, output), with their multiplicity."""
    return collections.Counter((e.tool, e.output) for e in entries if e.kind == "applied")


def applied_twice(entries: Sequence[Entry]) -> list[str]:
    """Idempotency keys whose effect happened more than once."""
    counts = collections.Counter(e.key for e in entries if e.kind == "applied")
    return sorted(key for key, count in counts.items() if count > 1)


# -- the trace ------------------------------------------------------------------------------------


def turn_starts(trace: Path, offset: int = 0) -> list[tuple[str, int]]:
    """``(agent, turn)`` of every ``turn.started`` event written after byte ``offset``."""
    if not trace.exists():
        return []
    with trace.open("rb") as handle:
        handle.seek(offset)
        text = handle.read().decode()
    starts = []
    for line in text.splitlines():
        event = json.loads(line)
        if event.get("type") == "turn.started":
            starts.append((event["agent"], event["turn"]))
    return starts


def size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def lines(path: Path) -> int:
    """How many whole lines ``path`` holds (0 if it does not exist yet)."""
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


# -- processes ----------------------------------------------------------------------------------


def group_members(group: int) -> list[int]:
    """Live processes of process group ``group``, zombies excluded (from ``/proc``)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _parent, process_group = stat.rpartition(")")[2].split()[:3]
        if int(process_group) == group and state != "Z":
            members.append(int(entry))
    return members


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"
