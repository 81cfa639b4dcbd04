"""SIGKILL at every named crash point, then resume until done (docs/faults.md#crash-points).

Each scenario runs the crash plan (tests/jobs/crashplan/) in a child process with
``ORCHESTRATOR_CRASH_AT=POINT:N``, so the process kills itself the N-th time it passes the
point, then ``orchestrator jobs resume`` until the job ends, as an operator would: a job
that parks in-doubt non-idempotent calls (exit 7) gets each resolved from the side-effect
ledger (``--output`` with what the tool returned when the ledger shows it applied, else
``--rerun``). Every other scenario arms its first resume again (``POINT:1``), to crash
during recovery too. Only real kills (exit -9) are counted.

The checkers, against one fault-free (golden) run of the same plan:

* the answer and every step's result equal the golden ones, with the same journaled turns
  per agent and per task (0 lost steps, no step run twice);
* after each resume, every ``turn.started`` in the trace has a turn number above the turns
  journaled for that agent before the resume (0 turns re-sent after they were journaled);
* the ledger's effects equal the golden run's, each idempotency key applied at most once
  (duplicates of the idempotent tool are suppressed and counted);
* a resume parks exactly the in-doubt non-idempotent calls the journal holds (exit 7), and
  an in-doubt idempotent call is run again with a higher attempt number;
* ``PRAGMA integrity_check`` is ``ok`` after every kill.

The per-point figures (kills, resumes, parked calls resolved and how, in-doubt calls re-run,
duplicates suppressed, keys applied twice, seconds) are printed (``pytest -s``) and written
to ``crash-points.txt`` in pytest's base temporary directory when the module ends.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

import attrs
import pytest
import trio

from orchestrator.jobs.api import open_jobs
from tests.jobs.crashplan.harness import (
    CLI,
    JOB,
    NON_IDEMPOTENT,
    PLAN,
    ROTATING,
    SEED,
    Call,
    Journal,
    applied,
    applied_twice,
    command,
    environment,
    integrity,
    journal_exists,
    read_journal,
    read_ledger,
    size,
    turn_starts,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# The passes of each point to kill at, spread over a run of the crash plan. A run passes
# job_accepted once, step_boundary 7 times, each tool point 13 times, request_sent and
# response_completed 14 times, mid_stream ~260 times; the journal points depend on how
# writes are grouped into commits (turn_journaled 13-14, result_journaled up to 13,
# journal_write 30-45 on a quiet machine, fewer under load, when more writes share a
# commit: once seen below 24) and rotation on the machine's speed (40-65 with the rotating
# wrapper): their last occurrence leaves a margin (journal_write's stays under the ~14
# awaited turn writes, each flushed on its own).
OCCURRENCES: Final[dict[str, tuple[int, ...]]] = {
    "job_accepted": (1,),
    "request_sent": (1, 4, 7, 10, 13),
    "mid_stream": (1, 40, 100, 170, 250),
    "response_completed": (2, 5, 8, 11, 14),
    "turn_journaled": (1, 3, 6, 9, 11),
    "before_tool": (1, 4, 7, 10, 13),
    "during_tool": (2, 5, 8, 11, 13),
    "tool_done": (1, 3, 6, 9, 12),
    "result_journaled": (1, 3, 5, 7, 9),
    "journal_write": (1, 3, 6, 9, 12),
    "rotation": (1, 3, 6, 10, 15),
    "step_boundary": (1, 3, 5, 6, 7),
}
MAX_CYCLES: Final = 12  # resumes and resolutions
PARALLEL: Final = 2  # scenarios at a time (each its own store and ledger): one per core


@attrs.frozen
class Golden:
    answer: str
    steps: dict[str, tuple[str, str | None]]
    turns: dict[str, int]
    turns_by_message: dict[str | None, int]
    effects: Any


@attrs.define
class Figures:
    """What one scenario (or a whole point) did."""

    kills: int = 0
    resumes: int = 0
    parked: int = 0  # parked calls an operator resolved
    reruns: int = 0  # of which re-run (the ledger showed no effect)
    auto_reruns: int = 0  # in-doubt read-only / idempotent calls a resume ran again
    dup_suppressed: int = 0
    applied_twice: int = 0
    seconds: float = 0.0

    def add(self, other: Figures) -> None:
        for field in attrs.fields(Figures):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))


def run_args(store: Path, trace: Path) -> list[object]:
    return [
        "run", PLAN, "--store", store, "--local-seed", SEED, "--job-id", JOB,
        "--trace", trace, "--json",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Golden:
    """One fault-free run of the crash plan."""
    directory = tmp_path_factory.mktemp("golden")
    store, ledger, trace = directory / "jobs.db", directory / "ledger.db", directory / "trace"
    done = trio.run(command, run_args(store, trace), environment(ledger))
    assert 0 == done.code, done.describe()
    journal = read_journal(store)
    entries = read_ledger(ledger)
    assert "completed" == journal.status
    assert journal.answer is not None
    assert [] == applied_twice(entries)
    assert [] == [e for e in entries if e.kind == "dup_suppressed"]
    assert 7 == len(journal.steps)
    return Golden(
        journal.answer, journal.steps, journal.turns, journal.turns_by_message, applied(entries)
    )


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> Iterator[dict[str, Figures]]:
    """Figures per point; printed and written to crash-points.txt at the end."""
    rows: dict[str, Figures] = {}
    yield rows
    if not rows:
        return
    total = Figures()
    columns = [field.name for field in attrs.fields(Figures)]

    def line(name: str, row: Figures) -> str:
        cells = [
            f"{getattr(row, c):.1f}" if c == "seconds" else str(getattr(row, c)) for c in columns
        ]
        return f"{name:<20}" + "".join(
            f"{cell:>{len(c) + 2}}" for c, cell in zip(columns, cells, strict=True)
        )

    lines = [f"{'point':<20}" + "".join(f"{c:>{len(c) + 2}}" for c in columns)]
    for point, row in rows.items():
        total.add(row)
        lines.append(line(point, row))
    lines.append(line("total", total))
    path = tmp_path_factory.getbasetemp() / "crash-points.txt"
    path.write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\n(written to {path})")


async def parked_calls(store: Path) -> list[str]:
    """The calls ``jobs show`` lists as parked."""
    async with open_jobs(store) as jobs:
        view = await jobs.show(JOB)
    return sorted(f"{call.agent}/{call.turn}/{call.call_id}" for call in view.parked)


async def resolve(store: Path, ledger: Path, call: Call) -> bool:
    """Resolve a parked call as an operator would (``jobs resolve``), from what the ledger
    says: the output it returned if it ran, else run it again. Returns whether it re-runs."""
    effects = [e for e in read_ledger(ledger) if e.key == call.key() and e.kind == "applied"]
    async with open_jobs(store) as jobs:
        if effects:
            await jobs.resolve(JOB, call.ref, action="output", text=effects[0].output)
        else:
            await jobs.resolve(JOB, call.ref, action="rerun")
    return not effects


async def scenario(
    point: str, occurrence: int, strike_again: bool, directory: Path, golden: Golden
) -> Figures:
    """Kill a run at ``point:occurrence``, resume until done, check the outcome."""
    name = f"{point}:{occurrence}"
    store, ledger, trace = directory / "jobs.db", directory / "ledger.db", directory / "trace"
    module = ROTATING if point == "rotation" else CLI
    figures = Figures()

    first = await command(run_args(store, trace), environment(ledger, crash=name), module=module)
    assert -9 == first.code, f"{name}: not reached (fewer passes in this run?); {first.describe()}"
    figures.kills += 1
    assert journal_exists(store), f"{name}: killed before the job was journaled"
    assert "ok" == integrity(store), name

    rerun_expected: dict[str, int] = {}  # in-doubt calls that may run again -> their attempt
    arm = f"{point}:1" if strike_again else None
    for _ in range(MAX_CYCLES):
        before: Journal = read_journal(store)
        expected_parked = sorted(call.ref for call in before.in_doubt_parked())
        if before.status == "needs_attention":
            # The operator's turn: jobs show lists exactly the in-doubt non-idempotent calls.
            assert expected_parked == await parked_calls(store), name
            for call in before.in_doubt_parked():
                figures.parked += 1
                figures.reruns += await resolve(store, ledger, call)
            continue
        for call in before.in_doubt():
            if call.side_effect not in NON_IDEMPOTENT:
                rerun_expected[call.ref] = max(rerun_expected.get(call.ref, 0), call.attempt)
        offset = size(trace)
        done = await command(
            ["jobs", "resume", JOB, "--store", store, "--trace", trace, "--json"],
            environment(ledger, crash=arm),
            module=module,
        )
        arm = None
        figures.resumes += 1
        resent = [
            (agent, turn)
            for agent, turn in turn_starts(trace, offset)
            if turn <= before.turns.get(agent, 0)
        ]
        assert [] == resent, f"{name}: journaled turns sent again after a resume"
        if done.code == -9:
            figures.kills += 1
            assert "ok" == integrity(store), name
            continue
        if expected_parked or done.code == 7:
            assert 7 == done.code, f"{name}: {expected_parked} in doubt; {done.describe()}"
            parked = [f"{p['agent']}/{p['turn']}/{p['call_id']}" for p in done.result()["parked"]]
            assert expected_parked == sorted(parked), name
            continue
        assert 0 == done.code, f"{name}: {done.describe()}"
        break
    else:
        raise AssertionError(f"{name}: not done after {MAX_CYCLES} cycles")

    final = read_journal(store)
    assert "completed" == final.status, name
    assert golden.answer == final.answer, name
    assert golden.steps == final.steps, f"{name}: steps differ from the golden run's"
    assert golden.turns == final.turns, f"{name}: journaled turns per agent differ"
    assert golden.turns_by_message == final.turns_by_message, f"{name}: turns per task differ"
    calls = {call.ref: call for call in final.calls}
    for ref, attempt in rerun_expected.items():
        call = calls[ref]
        assert ("done", True) == (call.status, call.attempt > attempt), f"{name}: {ref} not re-run"
    entries = read_ledger(ledger)
    twice = applied_twice(entries)
    figures.applied_twice = len(twice)
    assert [] == twice, f"{name}: idempotency keys applied twice"
    assert golden.effects == applied(entries), f"{name}: the ledger's effects differ from golden"
    figures.dup_suppressed = sum(e.kind == "dup_suppressed" for e in entries)
    figures.auto_reruns = len(rerun_expected)
    return figures


def test_the_campaign_kills_at_least_ten_points_fifty_times():
    """The occurrences below add up to the floor of docs/faults.md#crash-points: >= 10 points, >= 50
    kills (each test of this module fails unless every listed occurrence really killed the
    process)."""
    assert 10 <= len(OCCURRENCES)
    assert 50 <= sum(len(occurrences) for occurrences in OCCURRENCES.values())


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("point", list(OCCURRENCES))
async def test_a_kill_at_a_crash_point_resumes_to_the_golden_answer(
    point, golden, summary, tmp_path
):
    """SIGKILL at the point's listed passes, resume until done: the golden answer and steps,
    no journaled turn re-sent, no effect applied twice, in-doubt non-idempotent calls parked,
    the store intact after every kill."""
    began = time.monotonic()
    row = summary.setdefault(point, Figures())
    limiter = trio.CapacityLimiter(PARALLEL)
    results: list[Figures] = []

    async def one(index: int, occurrence: int) -> None:
        async with limiter:
            directory = tmp_path / f"{point}-{occurrence}"
            directory.mkdir()
            results.append(await scenario(point, occurrence, index % 2 == 1, directory, golden))

    async with trio.open_nursery() as nursery:
        for index, occurrence in enumerate(OCCURRENCES[point]):
            nursery.start_soon(one, index, occurrence)
    for figures in results:
        row.add(figures)
    row.seconds = time.monotonic() - began
    assert len(OCCURRENCES[point]) <= row.kills
