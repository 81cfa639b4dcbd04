"""Durable jobs on PostgreSQL (issue 12): claims per second, take-over time, journal cost.

Each figure runs against a throwaway PostgreSQL 15 started here (``tests/jobs/postgres.py``,
fsync and synchronous commits on, as in production) on this machine's loopback::

    python -m bench.jobs_postgres [--quick]

* ``claims``: N queued jobs, 4 claimer processes each looping on ``JobStore.claim_next`` (a
  worker's claim, ``FOR UPDATE SKIP LOCKED``, journaled ``claimed`` event) until the queue is
  empty. Claims per second from the first to the last claim (database clock), and the number
  of jobs claimed twice (must be 0).
* ``takeover``: two ``orchestrator worker`` processes with a lease of L seconds; one runs a
  job and is SIGKILLed mid-job; the time from the kill to the other's claim, and to the job
  running again there (its ``resumed`` event), on the database clock. Median of R kills.
* ``journal``: the same rollout (one agent, S steps of one ``idempotent_write`` tool call and
  an answer each: 2 turns per step) run by ``orchestrator.run`` in this process without a
  journal, with the SQLite journal (synchronous=NORMAL) and with the PostgreSQL one;
  interleaved, median of R. The journal's cost per turn is (with - without) / turns.

It prints one markdown table per figure and the machine line.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from bench._common import ROOT, machine

LEDGER = """
version = 1
name = "bench-ledger"

[settings]
model = "gpt-5-mini"

[tools.record]
path = "tests.jobs.worker_tools:record"
side_effect = "idempotent_write"
timeout = 10

[[agents]]
name = "clerk"
role = "worker"
tools = ["record"]
"""


def ledger_plan(directory: Path, steps: int) -> Path:
    text = LEDGER
    previous = None
    for n in range(steps):
        text += f'\n[[steps]]\nid = "s{n}"\nagent = "clerk"\ntask = "Record Entry{n}"\n'
        if previous is not None:
            text += f'depends_on = ["{previous}"]\n'
        previous = f"s{n}"
    path = directory / f"ledger-{steps}.toml"
    path.write_text(text)
    return path


def schema(server: Any, name: str, *, synchronous_commit: bool = True) -> str:
    """A new schema's URL; ``synchronous_commit=False`` adds ``-c synchronous_commit=off`` to
    its sessions' options (what a user may put in the store URL)."""
    from tests.jobs.postgres import create_schema

    url = create_schema(server, name)
    return url if synchronous_commit else url + "%20-csynchronous_commit%3Doff"


# -- claims per second ---------------------------------------------------------------------------


def _claimer(url: str, ready: Any, counts: Any, index: int) -> None:
    from orchestrator.jobs.model import Owner
    from orchestrator.jobs.store import open_store

    async def main() -> None:
        claimed = 0
        async with open_store(url) as store:
            owner = Owner.this_process()
            ready.wait()  # every claimer is connected: they start together
            while True:
                taken, _ = await store.claim_next(owner, queues=["default"], capacity=8)
                if taken is None:
                    break
                claimed += 1
        counts[index] = claimed

    trio.run(main)


async def _queue(url: str, jobs: int) -> None:
    from orchestrator.jobs.store import open_store
    from tests.jobs.conftest import new_job

    async with open_store(url) as store:
        for n in range(jobs):
            await store.create(new_job(f"job-{n:05d}", status="queued"), None)


async def _claim_stats(url: str) -> tuple[float, float, int, int]:
    from orchestrator.jobs.store import open_store

    async with open_store(url) as store:
        rows = await store.read(
            lambda c: c.execute(
                "SELECT MIN(time), MAX(time), COUNT(*), COUNT(DISTINCT job) FROM events "
                "WHERE kind = 'claimed'"
            ).fetchone()
        )
    return float(rows[0]), float(rows[1]), int(rows[2]), int(rows[3])


def bench_claims(
    server: Any, jobs: int, *, claimers: int = 4, synchronous_commit: bool = True
) -> dict[str, Any]:
    url = schema(server, f"claims_{int(synchronous_commit)}", synchronous_commit=synchronous_commit)
    trio.run(_queue, url, jobs)
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(claimers)
    counts = context.Array("i", claimers)
    processes = [
        context.Process(target=_claimer, args=(url, ready, counts, n)) for n in range(claimers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    first, last, claims, distinct = trio.run(_claim_stats, url)
    return {
        "synchronous_commit": "on" if synchronous_commit else "off",
        "jobs": jobs,
        "claimers": claimers,
        "claims": claims,
        "claimed twice": claims - distinct,
        "per claimer": list(counts),
        "claims/s": claims / (last - first),
    }


# -- take-over after SIGKILL --------------------------------------------------------------------


def _worker(url: str, lease: float, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "orchestrator.cli", "worker", "--store", url]
    command += ["--slots", "4", "--lease", str(lease), "--poll", "5", "--offline"]
    command += ["--local-ttft", "0.5"]
    environment = {**os.environ, "ORCHESTRATOR_TEST_EFFECTS": os.devnull, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, env=environment
        )


async def _one_takeover(url: str, plan: Path, lease: float, directory: Path, n: int) -> Any:
    from orchestrator.jobs import sql
    from orchestrator.jobs.store import open_store
    from orchestrator.runner import submit

    async with open_store(url) as store:
        first = _worker(url, lease, directory / "takeover.log")
        job = await submit(plan, None, store=store, job_id=f"takeover-{lease:g}-{n}")
        with trio.fail_after(60):
            while True:
                record = await store.get(job)
                if record.owner is not None and record.turns >= 2:
                    break
                await trio.sleep(0.02)
        log = directory / f"second-{lease:g}-{n}.log"
        second = _worker(url, lease, log)
        with trio.fail_after(60):  # up and idle: its start is not part of the figure
            while b"polling every" not in (log.read_bytes() if log.exists() else b""):  # noqa: ASYNC110 (another process)
                await trio.sleep(0.02)
        killed_at = await store.read(lambda cursor: sql.now(cursor, store.dialect))
        first.send_signal(signal.SIGKILL)
        first.wait()
        with trio.fail_after(lease + 60):
            while True:
                events = (await store.load(job)).events
                claims = [e for e in events if e.kind == "claimed"]
                resumed = [e for e in events if e.kind == "resumed"]
                if len(claims) >= 2 and resumed:
                    break
                await trio.sleep(0.02)
        second.send_signal(signal.SIGTERM)
        second.wait(30)
        return claims[1].time - float(killed_at), resumed[0].time - float(killed_at)


def bench_takeover(server: Any, directory: Path, leases: list[float], repeat: int) -> list[Any]:
    url = schema(server, "takeover")
    plan = ledger_plan(directory, 30)
    out = []
    for lease in leases:
        claims, resumes = [], []
        for n in range(repeat):
            claim, resume = trio.run(_one_takeover, url, plan, lease, directory, n)
            claims.append(claim)
            resumes.append(resume)
        out.append(
            {
                "lease": lease,
                "kill -> claimed (median, min-max)": (
                    statistics.median(claims),
                    min(claims),
                    max(claims),
                ),
                "kill -> running again (median)": statistics.median(resumes),
            }
        )
    return out


# -- cancel latency -----------------------------------------------------------------------------


async def _cancels(url: str, plan: Path, directory: Path, repeat: int) -> list[float]:
    from orchestrator.jobs.api import Jobs
    from orchestrator.jobs.store import open_store
    from orchestrator.runner import submit
    from tests.jobs.conftest import wait_until

    latencies = []
    async with open_store(url) as store:
        worker = _worker(url, 30.0, directory / "cancel.log")
        try:
            for n in range(repeat):
                job = await submit(plan, None, store=store, job_id=f"cancel-{n}")

                async def running(job: str = job) -> bool:
                    return (await store.get(job)).turns >= 2

                async def cancelled(job: str = job) -> bool:
                    return (await store.get(job)).status == "cancelled"

                await wait_until(running, seconds=60)
                await Jobs(store).cancel(job)
                await wait_until(cancelled, seconds=60)
                events = {e.kind: e.time for e in (await store.load(job)).events}
                latencies.append(events["cancelled"] - events["cancel_requested"])
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
    return latencies


def bench_cancel(server: Any, directory: Path, repeat: int) -> dict[str, Any]:
    url = schema(server, "cancel")
    latencies = trio.run(_cancels, url, ledger_plan(directory, 30), directory, repeat)
    return {
        "cancels": repeat,
        "requested -> cancelled, median (s)": round(statistics.median(latencies), 4),
        "max (s)": round(max(latencies), 4),
    }


# -- journal cost per turn ------------------------------------------------------------------------


async def _rollout(plan: Path, store: Any) -> tuple[float, int]:
    from orchestrator.runner import RunSettings, run

    began = time.perf_counter()
    result = await run(plan, None, store=store, settings=RunSettings(offline=True))
    assert result.status == "completed", result.reason
    return time.perf_counter() - began, result.usage.turns


async def _journal_runs(
    plan: Path, specs: dict[str, Any], repeat: int
) -> tuple[dict[str, list[float]], int]:
    """Each store opened once (its opening is not part of a turn's cost), then the rollout
    run ``repeat`` times per store, interleaved."""
    from contextlib import AsyncExitStack

    from orchestrator.jobs.store import open_store

    times: dict[str, list[float]] = {name: [] for name in specs}
    turns = 0
    async with AsyncExitStack() as stack:
        stores = {
            name: None if spec is None else await stack.enter_async_context(open_store(spec))
            for name, spec in specs.items()
        }
        for store in stores.values():
            await _rollout(plan, store)  # warm-up: imports, first connections, statements
        for _ in range(repeat):
            for name, store in stores.items():
                seconds, turns = await _rollout(plan, store)
                times[name].append(seconds)
    return times, turns


def bench_journal(server: Any, directory: Path, steps: int, repeat: int) -> dict[str, Any]:
    os.environ["ORCHESTRATOR_TEST_EFFECTS"] = os.devnull
    sys.path.insert(0, str(ROOT))
    plan = ledger_plan(directory, steps)
    specs: dict[str, Any] = {
        "none": None,
        "sqlite (synchronous=NORMAL)": str(directory / "normal.db"),
        "sqlite (synchronous=FULL)": f"sqlite://{directory / 'full.db'}?synchronous=full",
        "postgresql (synchronous_commit=on)": schema(server, "journal_on"),
        "postgresql (synchronous_commit=off)": schema(
            server, "journal_off", synchronous_commit=False
        ),
    }
    times, turns = trio.run(_journal_runs, plan, specs, repeat)
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "turns per run": turns,
        "median run (s)": {name: round(value, 4) for name, value in medians.items()},
        "journal ms/turn": {
            name: round(1000 * (medians[name] - medians["none"]) / turns, 3)
            for name in specs
            if name != "none"
        },
    }


def _show(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller figures, about a minute")
    parser.add_argument(
        "--only",
        default="claims,journal,cancel,takeover",
        help="comma-separated figures to run (default: claims,journal,cancel,takeover)",
    )
    args = parser.parse_args()
    from tests.jobs.postgres import start_server

    server = start_server(durable=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-jobs-") as name:
            directory = Path(name)
            figures = set(args.only.split(","))
            if "claims" in figures:
                print("## claims per second, 4 claimer processes\n")
                for synchronous_commit in (True, False):
                    claims = bench_claims(
                        server, 400 if args.quick else 4000, synchronous_commit=synchronous_commit
                    )
                    print(", ".join(f"{key}: {_show(value)}" for key, value in claims.items()))
            if "journal" in figures:
                journal = bench_journal(
                    server, directory, 10 if args.quick else 25, 3 if args.quick else 7
                )
                print("\n## journal cost per turn (same rollout, in process)\n")
                for key, value in journal.items():
                    print(f"- {key}: {value}")
            if "cancel" in figures:
                cancel = bench_cancel(server, directory, 3 if args.quick else 10)
                print("\n## jobs cancel -> the job ended by its worker (NOTIFY)\n")
                print(", ".join(f"{key}: {value}" for key, value in cancel.items()))
            if "takeover" in figures:
                takeover = bench_takeover(
                    server, directory, [3.0] if args.quick else [3.0, 10.0], 2 if args.quick else 5
                )
                print("\n## SIGKILL -> job resumed elsewhere\n")
                for row in takeover:
                    print(f"- {row}")
    finally:
        server.stop()
    print(f"\n{machine()}")


if __name__ == "__main__":
    main()
