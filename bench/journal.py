"""What the durable-jobs journal costs per turn: the per-turn rollout with and without it.

The rollout of ``bench.overhead`` (20 function-call turns, then a text turn) run by a full
worker, as ``bench.overhead --variant runtime`` does, in two variants:

* ``off``: no journal (``run(store=None)``);
* ``on``: every turn, tool result and reply journaled in a job store (one job per rollout,
  created inside the measured window, as ``orchestrator run`` creates one), the default
  SQLite file in a temporary directory or ``--store URL`` (e.g. ``postgresql://...``).

Measure both in one command, interleaved, with the server in its own process::

    python -m bench.journal [--rounds 7] [--rollouts 20] [--store URL]

or one variant in one process (what the command runs)::

    python -m bench.journal --variant on --url ws://... --token T

It prints the medians of the per-round ratios (on ÷ off) of wall and CPU per turn.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from typing import Any

import trio

from bench._harness import (
    TURNS_PER_ROLLOUT,
    build_team,
    cores,
    emit,
    rollout_result,
    rollout_script,
    run_variant,
    scripted_server,
    time_rollouts,
)


async def measure(
    variant: str, url: str, token: str, rollouts: int, warmup: int, store_spec: str | None
) -> dict[str, Any]:
    from actors.agent import Assignment, AssignmentResult
    from actors.journal import AgentMemory
    from orchestrator.core.router import EXTERNAL_SENDER
    from orchestrator.jobs.journal import Journal
    from orchestrator.jobs.model import AgentPrint, NewJob, Owner
    from orchestrator.jobs.store import open_store

    team = build_team(url, token, 1)
    worker = team.workers[0]
    task = Assignment(text="go", id="goal")
    owner = Owner.this_process()
    with tempfile.TemporaryDirectory() as folder:
        async with (
            open_store(store_spec or f"{folder}/jobs.db") as store,
            trio.open_nursery() as nursery,
        ):
            await nursery.start(team.supervisor.run)
            count = 0

            async def rollout() -> None:
                nonlocal count
                count += 1
                team.fresh_conversation(worker)
                if variant == "on":
                    claim = await store.create(
                        NewJob(
                            id=f"bench-{count}",
                            name="bench",
                            goal="go",
                            mode="delegate",
                            plan="{}",
                            plan_hash="",
                            plan_dir=None,
                            agents={
                                worker.name: AgentPrint(
                                    role="worker", model="m", instructions="", store=False
                                )
                            },
                        ),
                        owner,
                    )
                    assert claim is not None
                    worker.memory = AgentMemory(worker.name, claim.job, Journal(store, claim))
                else:
                    worker.memory = AgentMemory(worker.name, "bench")
                assert worker.tools is not None
                worker.tools.memory = worker.memory
                result = await team.router.ask(EXTERNAL_SENDER, worker.name, task)
                assert isinstance(result, AssignmentResult), result
                assert result.turns == TURNS_PER_ROLLOUT, result

            wall, cpu = await time_rollouts(
                lambda _measured: rollout(), warmup=warmup, rollouts=rollouts
            )
            team.supervisor.stop()
            if variant == "on":
                # Everything written behind must have reached the store.
                await store.flush()
                journaled = await store.get(f"bench-{count}")
                assert journaled.turns == TURNS_PER_ROLLOUT, journaled
    return rollout_result(variant, rollouts, wall, cpu, [], [])


def compare(rounds: int, rollouts: int, warmup: int, store_spec: str | None) -> dict[str, Any]:
    server_cpu, client_cpu = cores()
    per_round: list[dict[str, dict[str, Any]]] = []
    with scripted_server(rollout_script(), cpu=server_cpu) as server:
        for index in range(rounds):
            order = ("off", "on") if index % 2 == 0 else ("on", "off")
            this_round: dict[str, dict[str, Any]] = {}
            for variant in order:
                args = ["--variant", variant, "--url", server.url, "--token", server.token]
                args += ["--rollouts", str(rollouts), "--warmup", str(warmup)]
                if store_spec:
                    args += ["--store", store_spec]
                this_round[variant] = run_variant("journal", args, cpu=client_cpu)
            per_round.append(this_round)

    def median_of(key: str, variant: str) -> float:
        return statistics.median(r[variant][key] for r in per_round)

    def ratio(key: str) -> float:
        return statistics.median(r["on"][key] / r["off"][key] for r in per_round)

    return {
        "store": store_spec or "sqlite (temporary file)",
        "rounds": rounds,
        "turns_per_variant_per_round": rollouts * TURNS_PER_ROLLOUT,
        "wall_per_turn_off_us": 1e6 * median_of("wall_per_turn", "off"),
        "wall_per_turn_on_us": 1e6 * median_of("wall_per_turn", "on"),
        "cpu_per_turn_off_us": 1e6 * median_of("cpu_per_turn", "off"),
        "cpu_per_turn_on_us": 1e6 * median_of("cpu_per_turn", "on"),
        "wall_ratio": ratio("wall_per_turn"),
        "cpu_ratio": ratio("cpu_per_turn"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variant", choices=("off", "on"))
    parser.add_argument("--url")
    parser.add_argument("--token")
    parser.add_argument("--store", help="a job store URL (default: a temporary SQLite file)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--rollouts", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    if args.variant is None:
        emit(compare(args.rounds, args.rollouts, args.warmup, args.store))
        return
    emit(
        trio.run(
            measure, args.variant, args.url, args.token, args.rollouts, args.warmup, args.store
        )
    )


if __name__ == "__main__":
    main()
