"""Throughput and scale (issue 6, figures 3 and 4): N worker agents in one process.

``load`` mode: N workers (the runtime's ``WorkerActor``, each with its own connection and the
trivial tool, under one supervisor) run tasks back to back, each task a fresh conversation.
With the rollout script every task is 20 function-call turns and a text answer; with a text
script (``--script text``) every task is one text turn. After ``--warmup`` seconds the
window of ``--seconds`` is measured: model turns per second, the per-turn latency
distribution (``AgentActor.turn``, timed by a subclass), this process's CPU, the server's
CPU (from /proc/<pid>/stat), the cyclic GC's pauses, RSS per agent once every agent is
connected and idle, and open descriptors after shutdown against the baseline.

``idle`` mode: N workers each run one short task (so each holds one open socket), then sit
idle; RSS per agent is (RSS after - RSS before) / N.

    python -m bench.scale load --agents 100 --url ws://... --token T [--seconds 5]
    python -m bench.scale idle --agents 10000 --url ws://... --token T

``--gc-policy`` runs under ``orchestrator.core.tuning.gc_policy()`` (the runtime's GC policy for
many agents); ``--gc-policy none`` measures the interpreter's defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import random
import time
from typing import TYPE_CHECKING, Any

import trio

from bench._harness import (
    FdLimitError,
    build_team,
    check_fd_budget,
    cpu_seconds,
    emit,
    open_fds,
    percentile,
    rss_kib,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from orchestrator.core.protocol.events import Item
    from orchestrator.core.protocol.turn import Response
    from orchestrator.core.tuning import GcPolicy


class _Recorder:
    """Per-turn latencies and counts, only while ``recording``."""

    def __init__(self) -> None:
        self.recording = False
        self.turns = 0
        self.latencies: list[float] = []
        self.call_latencies: list[float] = []  # function-call turns only

    def record(self, seconds: float, *, calls: bool) -> None:
        if self.recording:
            self.turns += 1
            self.latencies.append(seconds)
            if calls:
                self.call_latencies.append(seconds)


RECORDER = _Recorder()


def _timed_worker_class() -> type[Any]:
    import attrs

    from actors.worker import WorkerActor

    @attrs.define(eq=False)
    class TimedWorker(WorkerActor):
        async def turn(self, items: Sequence[Item]) -> Response:
            started = time.perf_counter()
            response = await super().turn(items)
            RECORDER.record(time.perf_counter() - started, calls=bool(response.function_calls))
            return response

    return TimedWorker


class _GcWatch:
    """Cyclic GC pauses (gc.callbacks) while installed."""

    def __init__(self) -> None:
        self.pause = 0.0
        self.collections = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pause += time.perf_counter() - self._started
            self.collections[info["generation"]] += 1

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        gc.callbacks.append(self)
        try:
            yield
        finally:
            gc.callbacks.remove(self)


def _policy(args: argparse.Namespace) -> contextlib.AbstractContextManager[GcPolicy | None]:
    if args.gc_policy == "none":
        return contextlib.nullcontext()
    from orchestrator.core.tuning import DEFAULT_YOUNG_THRESHOLD, gc_policy

    return gc_policy(young_threshold=args.gc_threshold or DEFAULT_YOUNG_THRESHOLD)


def _summary(
    mode: str,
    args: argparse.Namespace,
    window: float,
    cpu: float,
    server_cpu: float,
    watch: _GcWatch,
    rss_grown: float,
    connected_in: float,
    fds_before: int,
) -> dict[str, Any]:
    latencies = RECORDER.latencies
    turns = RECORDER.turns
    return {
        "mode": mode,
        "agents": args.agents,
        "gc_policy": args.gc_policy if mode == "load" else "none",
        "window": window,
        "turns": turns,
        "turns_per_second": turns / window,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "call_p50": percentile(RECORDER.call_latencies, 0.5),
        "call_p99": percentile(RECORDER.call_latencies, 0.99),
        "cpu": cpu,
        "cpu_share": cpu / window,
        "cpu_per_turn": cpu / max(1, turns),
        "turns_per_cpu_second": turns / cpu if cpu else 0.0,
        "server_cpu_share": server_cpu / window,
        "gc_pause_share": watch.pause / window,
        "gc_collections": watch.collections,
        "rss_per_agent_kib": rss_grown / args.agents,
        "connected_in": connected_in,
        "fds_before": fds_before,
        "fds_after": open_fds(),
    }


async def load(args: argparse.Namespace) -> dict[str, Any]:
    from actors.agent import Assignment
    from orchestrator.core.router import EXTERNAL_SENDER

    agents: int = args.agents
    gc.collect()
    fds_before = open_fds()
    rss_before = rss_kib()
    team = build_team(args.url, args.token, agents, worker_class=_timed_worker_class())
    task = Assignment(text="go")
    stop = trio.Event()
    first_done = [0]
    all_connected = trio.Event()
    connect_limit = trio.Semaphore(args.connect_concurrency)
    errors: list[BaseException] = []

    async def drive(index: int) -> None:
        worker = team.workers[index]
        first = True
        while not stop.is_set():
            team.fresh_conversation(worker)
            try:
                if first:
                    # Connect with a generate:false warm-up: the socket opens and the
                    # server holds the chain, at the cost of one tiny exchange.
                    async with connect_limit:
                        connection = worker.connection
                        assert connection is not None
                        await connection.warm_up(worker.session)
                    first_done[0] += 1
                    if first_done[0] == agents:
                        all_connected.set()
                    await all_connected.wait()
                    await trio.sleep(random.uniform(0, args.stagger))
                    first = False
                else:
                    await team.router.ask(EXTERNAL_SENDER, worker.name, task)
            except Exception as exc:  # a failed task must not hide: report it
                errors.append(exc)
                stop.set()
                return

    watch = _GcWatch()
    with _policy(args) as policy:
        async with trio.open_nursery() as nursery:
            await nursery.start(team.supervisor.run)
            setup = time.perf_counter()
            async with trio.open_nursery() as drivers:
                for index in range(agents):
                    drivers.start_soon(drive, index)
                await all_connected.wait()
                connected_in = time.perf_counter() - setup
                rss_connected = rss_kib()
                if policy is not None and not args.no_freeze:
                    policy.freeze()
                await trio.sleep(args.warmup)
                server_cpu = cpu_seconds(args.server_pid) if args.server_pid else 0.0
                RECORDER.recording = True
                started = time.perf_counter()
                cpu = time.process_time()
                with watch.installed():
                    await trio.sleep(args.seconds)
                RECORDER.recording = False
                window = time.perf_counter() - started
                cpu = time.process_time() - cpu
                if args.server_pid:
                    server_cpu = cpu_seconds(args.server_pid) - server_cpu
                stop.set()
            team.supervisor.stop()
    gc.collect()
    await trio.sleep(0.2)  # let the kernel finish closing the sockets
    if errors:
        raise RuntimeError(f"{len(errors)} tasks failed, first: {errors[0]!r}")
    return _summary(
        "load",
        args,
        window,
        cpu,
        server_cpu,
        watch,
        rss_connected - rss_before,
        connected_in,
        fds_before,
    )


async def floor(args: argparse.Namespace) -> dict[str, Any]:
    """``load`` with bare trio-websocket clients (bench.overhead's floor) instead of workers."""
    import trio_websocket

    from bench.overhead import FloorCall, first_create, floor_turn, next_create

    agents: int = args.agents
    headers = [(b"authorization", f"Bearer {args.token}".encode())]
    stop = trio.Event()
    connected = [0]
    all_connected = trio.Event()
    limit = trio.Semaphore(args.connect_concurrency)

    async def client() -> None:
        async with limit:
            ws = await trio_websocket.connect_websocket_url(
                nursery, args.url, extra_headers=headers, max_message_size=64 * 2**20
            )
        connected[0] += 1
        if connected[0] == agents:
            all_connected.set()
        await all_connected.wait()
        await trio.sleep(random.uniform(0, args.stagger))
        message = first_create()
        try:
            while not stop.is_set():
                started = time.perf_counter()
                response = await floor_turn(ws, message)
                calls = [item for item in response.output if type(item) is FloorCall]
                RECORDER.record(time.perf_counter() - started, calls=bool(calls))
                message = next_create(response.id, calls[0].call_id) if calls else first_create()
        finally:
            with trio.CancelScope(shield=True):
                await ws.aclose()

    watch = _GcWatch()
    gc.collect()
    fds_before = open_fds()
    rss_before = rss_kib()
    async with trio.open_nursery() as nursery:
        async with trio.open_nursery() as clients:
            for _ in range(agents):
                clients.start_soon(client)
            await all_connected.wait()
            rss_connected = rss_kib()
            await trio.sleep(args.warmup)
            server_cpu = cpu_seconds(args.server_pid) if args.server_pid else 0.0
            RECORDER.recording = True
            started = time.perf_counter()
            cpu = time.process_time()
            with watch.installed():
                await trio.sleep(args.seconds)
            RECORDER.recording = False
            window = time.perf_counter() - started
            cpu = time.process_time() - cpu
            if args.server_pid:
                server_cpu = cpu_seconds(args.server_pid) - server_cpu
            stop.set()
        nursery.cancel_scope.cancel()
    return _summary(
        "floor",
        args,
        window,
        cpu,
        server_cpu,
        watch,
        rss_connected - rss_before,
        0.0,
        fds_before,
    )


def _memory_sites(before: Any, after: Any, agents: int, top: int = 15) -> list[str]:
    """Bytes per agent allocated between two tracemalloc snapshots.

    Listed twice: charged to the innermost frame of our code (orchestrator/, actors/) that
    led to each allocation, and by the line that made it.
    """
    ours: dict[str, int] = {}
    lines: dict[str, int] = {}
    for stat in after.compare_to(before, "traceback"):
        frames = list(stat.traceback)  # oldest first
        made = f"{_short(frames[-1].filename)}:{frames[-1].lineno}"
        owner = next(
            (
                f"{_short(f.filename)}:{f.lineno}"
                for f in reversed(frames)
                if "/orchestrator/" in f.filename or "/actors/" in f.filename
            ),
            "(no frame of ours)",
        )
        ours[owner] = ours.get(owner, 0) + stat.size_diff
        lines[made] = lines.get(made, 0) + stat.size_diff
    report = [f"{sum(ours.values()) / agents:.0f} bytes per agent traced", ""]
    report.append("by our innermost frame:")
    for where, size in sorted(ours.items(), key=lambda kv: -kv[1])[:top]:
        report.append(f"{size / agents:7.0f} B  {where}")
    report += ["", "by allocating line:"]
    for where, size in sorted(lines.items(), key=lambda kv: -kv[1])[:top]:
        report.append(f"{size / agents:7.0f} B  {where}")
    return report


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    import tracemalloc

    from actors.agent import Assignment
    from orchestrator.core.router import EXTERNAL_SENDER

    agents: int = args.agents
    gc.collect()
    if args.trace_memory:
        tracemalloc.start(30)
        traced_before = tracemalloc.take_snapshot()
    fds_before = open_fds()
    rss_before = rss_kib()
    with _policy(args) as policy:
        team = build_team(args.url, args.token, agents)
        task = Assignment(text="go")
        limit = trio.Semaphore(args.connect_concurrency)
        started = time.perf_counter()

        async def connect(index: int) -> None:
            async with limit:
                await team.router.ask(EXTERNAL_SENDER, team.workers[index].name, task)

        async with trio.open_nursery() as nursery:
            await nursery.start(team.supervisor.run)
            async with trio.open_nursery() as connecting:
                for index in range(agents):
                    connecting.start_soon(connect, index)
            connected_in = time.perf_counter() - started
            if policy is not None:
                policy.freeze()
            await trio.sleep(1.0)
            gc.collect()
            rss_idle = rss_kib()
            fds_idle = open_fds()
            memory_sites: list[str] = []
            if args.trace_memory:
                memory_sites = _memory_sites(traced_before, tracemalloc.take_snapshot(), agents)
                tracemalloc.stop()
            server_rss = rss_kib(args.server_pid) if args.server_pid else 0
            server_fds = len(os.listdir(f"/proc/{args.server_pid}/fd")) if args.server_pid else 0
            team.supervisor.stop()
        gc.collect()
    await trio.sleep(0.2)
    return {
        "mode": "idle",
        "agents": agents,
        "gc_policy": args.gc_policy,
        "rss_before_kib": rss_before,
        "rss_idle_kib": rss_idle,
        "rss_per_agent_kib": (rss_idle - rss_before) / agents,
        "fds_before": fds_before,
        "fds_idle": fds_idle,
        "fds_after": open_fds(),
        "server_rss_kib": server_rss,
        "server_fds": server_fds,
        "connected_in": connected_in,
        "memory_sites": memory_sites,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("load", "floor", "idle"))
    parser.add_argument("--agents", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connect-concurrency", type=int, default=200)
    parser.add_argument(
        "--stagger",
        type=float,
        default=0.0,
        help="start each agent's continuous turns at a random delay in [0, STAGGER] seconds",
    )
    parser.add_argument("--gc-policy", choices=("none", "runtime"), default="runtime")
    parser.add_argument("--gc-threshold", type=int, default=0, help="young threshold")
    parser.add_argument("--no-freeze", action="store_true", help="policy without freeze()")
    parser.add_argument(
        "--trace-memory", action="store_true", help="idle: allocation sites (RSS is then inflated)"
    )
    args = parser.parse_args()
    try:
        check_fd_budget(args.agents)
    except FdLimitError as exc:
        raise SystemExit(f"error: {exc}") from None
    handler = {"load": load, "floor": floor, "idle": idle}[args.mode]
    emit(trio.run(handler, args))
    os._exit(0)  # 10,000 sockets closed already; skip the interpreter's slow teardown


if __name__ == "__main__":
    main()
