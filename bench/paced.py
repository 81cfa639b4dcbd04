"""Paced load (issue 6, figure 4): how many agents stream at a model-like pace on one core.

The server streams every agent's text deltas at ``--tokens-per-second`` (50: a model-like
pace), each turn 50 deltas (58 events, about one second). N workers run one-turn tasks
back to back (``bench.scale load`` against that server). The ideal is the p50 turn latency
of one agent; the figure is the largest N whose p50 stays within 5% of it.

    python -m bench.paced [--agents 1 250 500 1000 1500 2000] [--seconds 6]
"""

from __future__ import annotations

import argparse
from typing import Any

from bench._harness import Server, cores, raise_fd_limit, run_variant, scripted_server, text_script

PACE = 50.0  # events per second per agent
DELTAS = 50
TOLERANCE = 0.05


def paced_server(cpu: int | None) -> Any:
    return scripted_server(text_script(DELTAS), "--tokens-per-second", str(PACE), cpu=cpu)


def run_one(server: Server, agents: int, seconds: float, cpu: int | None) -> dict[str, Any]:
    return run_variant(
        "scale",
        [
            "load",
            "--agents",
            str(agents),
            "--url",
            server.url,
            "--token",
            server.token,
            "--server-pid",
            str(server.pid),
            "--seconds",
            str(seconds),
            "--warmup",
            "2.5",
            "--stagger",
            "1.0",
            "--connect-concurrency",
            str(max(1, min(agents, 1000))),
        ],
        cpu=cpu,
        timeout=900,
    )


def sweep(
    server: Server, counts: list[int], seconds: float, cpu: int | None
) -> tuple[float, list[dict[str, Any]], int]:
    """Run each N; return the ideal p50, the runs, and the largest N within tolerance."""
    runs: list[dict[str, Any]] = []
    ideal = float("nan")
    best = 0
    for agents in counts:
        result = run_one(server, agents, seconds if agents > 1 else max(seconds, 8.0), cpu)
        if agents == 1:
            ideal = result["p50"]
        result["over_ideal"] = result["p50"] / ideal - 1
        runs.append(result)
        if result["over_ideal"] <= TOLERANCE:
            best = max(best, agents)
    return ideal, runs, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 250, 500, 1000, 1500, 2000])
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    raise_fd_limit()
    server_cpu, client_cpu = cores()
    counts = sorted({1, *args.agents})
    with paced_server(server_cpu) as server:
        ideal, runs, best = sweep(server, counts, args.seconds, client_cpu)
    print(f"ideal p50 (1 agent): {ideal * 1000:.1f} ms")
    for run in runs:
        print(
            f"N={run['agents']:5d}  p50 {run['p50'] * 1000:7.1f} ms ({run['over_ideal']:+.1%})  "
            f"p99 {run['p99'] * 1000:7.1f} ms  client CPU {run['cpu_share']:.0%}  "
            f"server CPU {run['server_cpu_share']:.0%}"
        )
    print(f"largest N within {TOLERANCE:.0%} of ideal: {best}")


if __name__ == "__main__":
    main()
