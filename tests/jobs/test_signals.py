"""Ctrl-C and SIGTERM at seeded random moments (docs/faults.md#signals-and-processes).

Each run starts the signal plan (tests/jobs/crashplan/signals.toml) as ``orchestrator run``
in a process group of its own, like a shell job, and sends it SIGINT or SIGTERM at a moment
drawn from a seeded generator: once its trace holds a drawn number of events, or once a
tool's helper process runs (the ``probe`` tool starts one, from a worker thread), plus a
drawn delay of a few hundredths of a second. Then:

* the command exits within ``GRACE`` seconds of the signal: 130 for SIGINT, 130 or 143 for
  SIGTERM (143 is on its way on another branch);
* no process of its group is left, and none of the helper processes it started runs;
* the job is ``interrupted`` (``jobs show``) and its store passes ``PRAGMA integrity_check``;
* ``orchestrator jobs resume`` completes it with the answer of a run without signals, and
  no idempotency key of the side-effect ledger was applied twice.

Waits are on the trace's growth and on the process group, bounded by deadlines; the drawn
delay is the only sleep that stands for time itself.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Final

import attrs
import pytest
import trio

from orchestrator.jobs.api import open_jobs
from tests.jobs.crashplan.harness import (
    CLI,
    COMMAND_DEADLINE,
    HERE,
    ROOT,
    SEED,
    alive,
    applied_twice,
    command,
    environment,
    group_members,
    integrity,
    lines,
    read_journal,
    read_ledger,
)
from tests.jobs.crashplan.tools import HELPER_SECONDS_ENV

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/stat"), reason="needs /proc to find the process group"
)

PLAN: Final = HERE / "signals.toml"
JOB: Final = "signalplan"
GRACE: Final = 10.0  # seconds from the signal to the exit, at most
RUNS_PER_SIGNAL: Final = 10
MOMENTS_SEED: Final = 1109
PARALLEL: Final = 2
EXPECTED_EXIT: Final = {signal.SIGINT: {130}, signal.SIGTERM: {130, 143}}


@attrs.frozen
class Golden:
    answer: str
    last_probe: int  # the trace line where the run's last probe tool starts


@attrs.frozen
class Moment:
    """When to send the signal: after ``events`` trace lines, or once a helper runs."""

    events: int | None
    delay: float

    def describe(self) -> str:
        where = "a helper running" if self.events is None else f"{self.events} trace events"
        return f"{where} + {self.delay * 1000:.0f} ms"


@attrs.frozen
class Outcome:
    signal: str
    moment: str
    code: int
    seconds: float  # from the signal to the exit
    helper_running: bool  # a tool's helper process ran when the signal was sent


def run_args(store: Path, trace: Path) -> list[object]:
    return [
        "run", PLAN, "--store", store, "--local-seed", SEED, "--job-id", JOB, "--trace", trace,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def golden(tmp_path_factory) -> Golden:
    """One run of the signal plan without signals."""
    directory = tmp_path_factory.mktemp("signals-golden")
    trace = directory / "trace"
    done = trio.run(
        command,
        [*run_args(directory / "jobs.db", trace), "--json"],
        environment(directory / "ledger.db"),
    )
    assert 0 == done.code, done.describe()
    answer = done.result()["answer"]
    assert answer is not None
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    probes = [
        number
        for number, event in enumerate(events, 1)
        if event["type"] == "tool.started" and event["tool"] == "probe"
    ]
    assert 3 == len(probes)
    return Golden(answer, probes[-1])


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> Iterator[list[Outcome]]:
    """Every run's outcome; printed and written to signals.txt at the end."""
    collected: list[Outcome] = []
    yield collected
    if not collected:
        return
    rows = [f"{'signal':<8}{'moment':<34}{'exit':>5}{'seconds':>9}  helper running"]
    rows.extend(
        f"{o.signal:<8}{o.moment:<34}{o.code:>5}{o.seconds:>9.3f}  {o.helper_running}"
        for o in collected
    )
    rows.append(
        f"{len(collected)} runs, slowest exit {max(o.seconds for o in collected):.3f} s after "
        f"the signal, {sum(o.helper_running for o in collected)} with a helper running"
    )
    path = tmp_path_factory.getbasetemp() / "signals.txt"
    path.write_text("\n".join(rows) + "\n")
    print("\n" + "\n".join(rows) + f"\n(written to {path})")


def moments(signum: signal.Signals, golden: Golden) -> list[Moment]:
    """The seeded moments: every other one while a helper runs, the others after a number of
    trace events drawn before the last probe starts (so the run has that tool to go)."""
    rng = random.Random(MOMENTS_SEED + signum)
    drawn = []
    for index in range(RUNS_PER_SIGNAL):
        events = None if index % 2 else rng.randrange(2, golden.last_probe)
        drawn.append(Moment(events, rng.uniform(0.0, 0.05)))
    return drawn


async def wait_for(condition, what: str, process: trio.Process) -> None:
    """Poll ``condition`` (the trace, the process group) until it holds; fail if the
    command exits first. Bounded by the caller's deadline."""
    while not condition():
        if process.returncode is not None:
            raise AssertionError(f"exited with {process.returncode} before {what}")
        await trio.sleep(0.005)


async def interrupt(
    signum: signal.Signals, moment: Moment, directory: Path, golden: Golden
) -> Outcome:
    store, ledger, trace = directory / "jobs.db", directory / "ledger.db", directory / "trace"
    helpers = directory / "helpers"
    env = environment(ledger, helper_pids=helpers)
    interrupted_env = dict(env)
    if moment.events is None:
        # A helper that would outlive the command by far unless the command stops it.
        interrupted_env[HELPER_SECONDS_ENV] = "2"
    with (directory / "stdout").open("wb") as stdout, (directory / "stderr").open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", CLI, *map(str, run_args(store, trace))],
            cwd=ROOT,
            env=interrupted_env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        with trio.fail_after(COMMAND_DEADLINE):
            if moment.events is None:
                await wait_for(lambda: lines(helpers) >= 1, "a helper process", process)
            else:
                events = moment.events
                await wait_for(lambda: lines(trace) >= events, f"{events} events", process)
        await trio.sleep(moment.delay)
        helper_running = len(group_members(process.pid)) > 1
        signalled = time.monotonic()
        process.send_signal(signum)
        with trio.move_on_after(GRACE):
            await process.wait()
        seconds = time.monotonic() - signalled
        stderr_text = (directory / "stderr").read_text()
        assert process.returncode is not None, f"still running {GRACE} s after {signum.name}"
        assert process.returncode in EXPECTED_EXIT[signum], stderr_text
        left = group_members(process.pid)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()
    assert [] == left, f"processes left after {signum.name}: {left}"
    started = [int(pid) for pid in helpers.read_text().split()] if helpers.exists() else []
    assert [] == [pid for pid in started if alive(pid)], "a tool's helper outlived the command"
    assert "ok" == integrity(store)
    async with open_jobs(store) as jobs:
        view = await jobs.show(JOB)
    assert "interrupted" == view.to_builtins()["status"], stderr_text

    resumed = await command(["jobs", "resume", JOB, "--store", store, "--json"], env)

    assert 0 == resumed.code, resumed.describe()
    assert golden.answer == resumed.result()["answer"]
    assert "completed" == read_journal(store, JOB).status
    assert [] == applied_twice(read_ledger(ledger))
    return Outcome(signum.name, moment.describe(), process.returncode, seconds, helper_running)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_a_signal_at_a_random_moment_stops_the_job_cleanly_and_it_resumes(
    signum, golden, outcomes, tmp_path
):
    """SIGINT or SIGTERM at ten seeded moments each: the command exits within the grace with
    the expected code, leaves no process behind, the job is interrupted, and a resume
    reaches the answer of a run without signals."""
    limiter = trio.CapacityLimiter(PARALLEL)
    results: list[Outcome] = []

    async def one(index: int, moment: Moment) -> None:
        async with limiter:
            directory = tmp_path / f"run-{index}"
            directory.mkdir()
            results.append(await interrupt(signum, moment, directory, golden))

    async with trio.open_nursery() as nursery:
        for index, moment in enumerate(moments(signum, golden)):
            nursery.start_soon(one, index, moment)
    outcomes.extend(results)
    assert RUNS_PER_SIGNAL == len(results)
