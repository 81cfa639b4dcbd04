"""Rotation and recovery (issue 6, figure 5), one agent on our connection layer.

``rotation``: the server expires sockets after ``--max-age`` seconds; the connection's
``max_age``/``rotation_margin``/``warmup_lead`` match, so a warm standby is prepared in
the background and taken at a turn boundary. Every turn is timed; a turn whose socket
differs from the previous turn's is the first turn after a planned rotation. The two
samples are compared by their medians and a Mann-Whitney U test.

``recovery``: the server (``--faults``) aborts the TCP connection (the client sees 1006)
after 3 events of the 5th response on each connection. The turn that was cut is retried
on a new socket with a full replay; its time minus the median ordinary turn is the
recovery time. The first reconnect waits a random jitter in [0, backoff_initial].

    python -m bench.rotation rotation --url ws://... --token T --max-age 2 --turns 600
    python -m bench.rotation recovery --url ws://... --token T --cuts 15 --backoff 0.5
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import trio

from bench._harness import MODEL, emit, mann_whitney, median, percentile

TURN_GAP = 0.03  # seconds between turns: an agent that does a little work between calls


async def rotation(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.core.connection import ConnectionSettings, open_connection
    from orchestrator.core.protocol.events import MessageItem
    from orchestrator.core.session import Session

    settings = ConnectionSettings(
        max_age=args.max_age,
        rotation_margin=args.margin,
        warmup_lead=args.lead,
        ping_interval=None,
    )
    ordinary: list[float] = []
    after_rotation: list[float] = []
    session = Session(model=MODEL)
    async with open_connection(args.url, args.token, settings=settings, agent="rot") as conn:
        previous: int | None = None
        for index in range(args.turns):
            started = time.perf_counter()
            await conn.run_turn(session, [MessageItem.user("next")])
            elapsed = time.perf_counter() - started
            socket = conn.statistics().socket
            if index >= 3:  # the first turns open the first socket and warm caches
                (ordinary if socket == previous else after_rotation).append(elapsed)
            previous = socket
            await trio.sleep(TURN_GAP)
        stats = conn.statistics()
    return {
        "mode": "rotation",
        "turns": args.turns,
        "rotations": stats.rotations,
        "warmups": stats.warmups,
        "replays": stats.replays,
        "ordinary_n": len(ordinary),
        "after_n": len(after_rotation),
        "ordinary_p50": median(ordinary),
        "after_p50": median(after_rotation),
        "ordinary_p90": percentile(ordinary, 0.9),
        "after_p90": percentile(after_rotation, 0.9),
        "p_value": mann_whitney(ordinary, after_rotation),
        "after": after_rotation,
    }


async def recovery(args: argparse.Namespace) -> dict[str, Any]:
    from orchestrator.core.connection import ConnectionSettings, open_connection
    from orchestrator.core.protocol.events import MessageItem
    from orchestrator.core.session import Session

    settings = ConnectionSettings(
        backoff_initial=args.backoff, rotation_margin=None, ping_interval=None
    )
    ordinary: list[float] = []
    recovered: list[float] = []
    session = Session(model=MODEL)
    async with open_connection(args.url, args.token, settings=settings, agent="rec") as conn:
        reconnects = 0
        index = 0
        while len(recovered) < args.cuts:
            started = time.perf_counter()
            await conn.run_turn(session, [MessageItem.user("next")])
            elapsed = time.perf_counter() - started
            now = conn.statistics().reconnects
            if now > reconnects:
                recovered.append(elapsed)
            elif index >= 2:
                ordinary.append(elapsed)
            reconnects = now
            index += 1
            await trio.sleep(TURN_GAP)
    base = median(ordinary)
    extra = [value - base for value in recovered]
    return {
        "mode": "recovery",
        "backoff_initial": args.backoff,
        "cuts": len(recovered),
        "ordinary_p50": base,
        "recovery_p50": median(extra),
        "recovery_max": max(extra),
        "recovery_min": min(extra),
        "recovery": extra,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("rotation", "recovery"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--turns", type=int, default=600)
    parser.add_argument("--max-age", type=float, default=2.0)
    parser.add_argument("--margin", type=float, default=0.5)
    parser.add_argument("--lead", type=float, default=0.5)
    parser.add_argument("--cuts", type=int, default=15)
    parser.add_argument("--backoff", type=float, default=0.5)
    args = parser.parse_args()
    emit(trio.run(rotation if args.mode == "rotation" else recovery, args))


if __name__ == "__main__":
    main()
