"""Shared pieces of the issue-6 benchmarks (bench/README.md): the workload, the runtime's
worker built from its public pieces, process-level measurements and statistics.

Measurements are made inside one client process pinned to one core, while the embedded
server runs in its own process pinned to the other (``bench._common.server_process``).
``run_variant`` starts one measurement as a fresh ``python -m bench.<module>`` process and
reads the JSON line it prints last, so every variant pays its imports and warm-up outside
the measured window and no variant's garbage or caches leak into another's.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs

from bench._common import (
    ROOT,
    cpus,
    fc_script,
    median,
    percentile,
    pin,
    script_file,
    server_process,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from actors.worker import WorkerActor
    from orchestrator.core.connection import Connection, ConnectionSettings
    from orchestrator.core.router import Router
    from orchestrator.core.session import Session
    from orchestrator.core.supervisor import Supervisor

MODEL: Final = "local-scripted"
CALLS: Final = 20  # function-call turns per rollout, then one text turn
TURNS_PER_ROLLOUT: Final = CALLS + 1
TOOL_OUTPUT: Final = "sunny, 24 C"
# The trivial tool's wire definition, identical for every variant.
TOOL_PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "day": {"type": "integer"}},
    "required": ["city", "day"],
    "additionalProperties": False,
}
TOOL_DESCRIPTION: Final = "Look up the weather of a city on a day."
TOOL_WIRE: Final[dict[str, Any]] = {
    "type": "function",
    "name": "lookup",
    "description": TOOL_DESCRIPTION,
    "parameters": TOOL_PARAMETERS,
    "strict": True,
}


async def lookup(city: str, day: int) -> str:
    """Look up the weather of a city on a day.

    Args:
        city: the city.
        day: the day of the trip.
    """
    return TOOL_OUTPUT


def rollout_script() -> dict[str, Any]:
    """The issue's rollout: 20 function-call turns (12 events), then 50 deltas (58 events)."""
    return fc_script(deltas=6, text_deltas=50, calls=CALLS)


def text_script(deltas: int = 50) -> dict[str, Any]:
    """One text turn of ``deltas`` deltas, again and again."""
    return {"turns": [{"deltas": [f"w{i} " for i in range(deltas)]}], "on_exhausted": "cycle"}


# -- processes, cores, descriptors, memory ---------------------------------------------------


def cores() -> tuple[int | None, int | None]:
    """(server core, client core) when two cores are available, else (None, None)."""
    available = cpus()
    if len(available) > 1:
        return available[0], available[1]
    return None, None


def raise_fd_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return int(soft)


class FdLimitError(RuntimeError):
    """The process cannot open one socket per agent."""


def check_fd_budget(agents: int, *, per_agent: int = 1, reserve: int = 100) -> None:
    """Fail clearly, before opening anything, when ``agents`` sockets cannot fit.

    Raises:
        FdLimitError: the soft limit (already raised to the hard one) is too small.
    """
    soft = raise_fd_limit()
    needed = agents * per_agent + reserve + open_fds()
    if needed > soft:
        raise FdLimitError(
            f"{agents} agents need about {needed} file descriptors but RLIMIT_NOFILE allows "
            f"{soft} (hard limit); raise it (ulimit -Hn) or run fewer agents"
        )


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


_TICKS: Final = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children() -> list[int]:
    """Pids of this process's direct children."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == me:
                found.append(int(entry))
    return found


@attrs.frozen
class Server:
    url: str
    base_url: str
    token: str
    pid: int

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


@contextlib.contextmanager
def _server_from(root: str, *args: str, cpu: int | None) -> Iterator[dict[str, str]]:
    """``server_process`` running the server of another source tree (``BENCH_SERVER_ROOT``)."""
    command = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", "0", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        preexec_fn=(lambda: pin(cpu)) if cpu is not None else None,
    )
    info: dict[str, str] = {}
    try:
        assert process.stdout is not None
        while len(info) < 3:
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited with {process.wait()}")
            key, _, value = line.strip().partition(" ")
            info[key] = value
        yield {"url": info["serving"], "base_url": info["base_url"], "token": info["token"]}
    finally:
        process.send_signal(2)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def server(*args: str, cpu: int | None = None) -> Iterator[Server]:
    """``bench._common.server_process`` plus the server's pid (for its CPU share).

    ``BENCH_SERVER_ROOT=DIR`` runs the server of the source tree in DIR instead (e.g. an
    exported commit, while the working tree's server is being changed).
    """
    before = set(children())
    root = os.environ.get("BENCH_SERVER_ROOT")
    launch = server_process(*args, cpu=cpu) if not root else _server_from(root, *args, cpu=cpu)
    with launch as info:
        spawned = [pid for pid in children() if pid not in before]
        if len(spawned) != 1:
            raise RuntimeError(f"cannot tell the server process among {spawned}")
        yield Server(info["url"], info["base_url"], info["token"], spawned[0])


@contextlib.contextmanager
def scripted_server(
    script: dict[str, Any], *extra: str, cpu: int | None = None
) -> Iterator[Server]:
    path = script_file(script)
    try:
        with server("--model", "scripted", "--script", path, *extra, cpu=cpu) as running:
            yield running
    finally:
        os.unlink(path)


def run_variant(
    module: str, args: list[str], *, cpu: int | None, timeout: float = 600.0
) -> dict[str, Any]:
    """Run ``python -m bench.<module> ARGS`` pinned to ``cpu``; return its last JSON line."""
    command = [sys.executable, "-m", f"bench.{module}", *args]
    process = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        preexec_fn=(lambda: pin(cpu)) if cpu is not None else None,
        check=False,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(
            f"{' '.join(command[2:])} exited {process.returncode}:\n{process.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def rollout_result(
    variant: str,
    rollouts: int,
    wall: float,
    cpu: float,
    fc_walls: list[float] | None = None,
    text_walls: list[float] | None = None,
) -> dict[str, Any]:
    """The JSON a per-turn measurement prints: totals, per-turn means, per-kind medians."""
    turns = rollouts * TURNS_PER_ROLLOUT
    return {
        "variant": variant,
        "turns": turns,
        "wall": wall,
        "cpu": cpu,
        "wall_per_turn": wall / turns,
        "cpu_per_turn": cpu / turns,
        "fc_turn_wall": median(fc_walls) if fc_walls else None,
        "text_turn_wall": median(text_walls) if text_walls else None,
    }


def emit(result: dict[str, Any]) -> None:
    """Print a measurement for ``run_variant``."""
    print(json.dumps(result), flush=True)


# -- the runtime's worker, from its public pieces ----------------------------------------------


def connection_opener(
    url: str, token: str, settings: ConnectionSettings | None = None
) -> Callable[[str], AbstractAsyncContextManager[Connection]]:
    from orchestrator.core.connection import open_connection

    def opener(name: str) -> AbstractAsyncContextManager[Connection]:
        return open_connection(url, token, agent=name, settings=settings)

    return opener


def new_session(tools: tuple[Any, ...]) -> Session:
    from orchestrator.core.session import Session

    return Session(model=MODEL, tools=tools)


class Team:
    """Workers under one supervisor on one router, each with the trivial tool."""

    def __init__(
        self,
        router: Router,
        supervisor: Supervisor,
        workers: list[WorkerActor],
        tools: tuple[Any, ...],
    ) -> None:
        self.router = router
        self.supervisor = supervisor
        self.workers = workers
        self.tools = tools

    def fresh_conversation(self, worker: WorkerActor) -> None:
        """Start the worker's next task as a new conversation, as a new Runner.run does."""
        worker.session = new_session(self.tools)


def build_team(
    url: str,
    token: str,
    count: int,
    *,
    settings: ConnectionSettings | None = None,
    worker_class: type[WorkerActor] | None = None,
    mailbox_size: int = 4,
) -> Team:
    from actors.tools import ToolRegistry
    from actors.worker import WorkerActor
    from orchestrator.core.router import Router
    from orchestrator.core.supervisor import Supervisor

    cls = worker_class or WorkerActor
    registry = ToolRegistry()
    registry.add(lookup, description=TOOL_DESCRIPTION)
    router = Router()
    opener = connection_opener(url, token, settings)
    tools = tuple(registry.wire_tools())
    workers = [
        cls(
            f"worker-{index}",
            role="worker",
            router=router,
            session=new_session(tools),
            open_connection=opener,
            tools=registry.executor(f"worker-{index}"),
            mailbox_size=mailbox_size,
        )
        for index in range(count)
    ]
    supervisor = Supervisor("bench", [worker.child_spec() for worker in workers])
    return Team(router, supervisor, workers, tools)


# -- statistics ----------------------------------------------------------------------------------


def mann_whitney(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation, tie-corrected)."""
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return float("nan")
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        rank = (i + j) / 2 + 1
        for k in range(i, j + 1):
            ranks[k] = rank
        size = j - i + 1
        ties += size**3 - size
        i = j + 1
    r1 = sum(rank for rank, (_, group) in zip(ranks, pooled, strict=True) if group == 0)
    u = r1 - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0:
        return 1.0
    z = (u - n1 * n2 / 2) / math.sqrt(variance)
    return math.erfc(abs(z) / math.sqrt(2))


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def spread(values: list[float]) -> str:
    """min..max of a list, for the repeated runs behind a median."""
    return f"{min(values):.3g}..{max(values):.3g}" if values else "-"


class _WindowProfile:
    """cProfile of the measured window only, when a path is set (``--profile``)."""

    def __init__(self) -> None:
        self.path: str | None = None
        self._profile: Any = None

    def start(self) -> None:
        if self.path:
            import cProfile

            self._profile = cProfile.Profile()
            self._profile.enable()

    def stop(self) -> None:
        if self._profile is not None:
            self._profile.disable()
            self._profile.dump_stats(self.path)
            self._profile = None


PROFILE = _WindowProfile()


def summarize_pstats(path: str | Path, top: int = 25, calls_per: int = 0) -> str:
    """The top entries of a cProfile dump by own time, with calls per turn if given."""
    import pstats

    stats: Any = pstats.Stats(str(path))
    total = stats.total_tt
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    lines = [f"{total:.3f} s profiled", "", "own %   own us/turn  calls/turn  function"]
    for (filename, line, name), (_cc, calls, own, _cumulative, _callers) in rows:
        short = _frame_name(f"{name} ({filename}:{line})")
        per_turn = 1e6 * own / calls_per if calls_per else 0.0
        count = calls / calls_per if calls_per else calls
        lines.append(f"{100 * own / total:5.1f}   {per_turn:9.1f}   {count:9.1f}   {short}")
    return "\n".join(lines)


class Clock:
    """Wall and process CPU time of the measured window."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


async def time_rollouts(
    rollout: Callable[[bool], Awaitable[object]],
    *,
    warmup: int,
    rollouts: int,
    profile: bool = True,
) -> tuple[float, float]:
    """Wall and CPU seconds of ``rollouts`` rollouts after ``warmup`` unmeasured ones (each
    told whether it is measured), with a collection first; ``profile``: inside the
    ``--profile`` window (the peers are measured, never profiled)."""
    for _ in range(warmup):
        await rollout(False)
    gc.collect()
    clock = Clock()
    if profile:
        PROFILE.start()
    for _ in range(rollouts):
        await rollout(True)
    wall, cpu = clock.stop()
    if profile:
        PROFILE.stop()
    return wall, cpu


__all__ = [
    "CALLS",
    "MODEL",
    "PROFILE",
    "TOOL_DESCRIPTION",
    "TOOL_OUTPUT",
    "TOOL_WIRE",
    "TURNS_PER_ROLLOUT",
    "Clock",
    "FdLimitError",
    "Server",
    "Team",
    "build_team",
    "check_fd_budget",
    "children",
    "connection_opener",
    "cores",
    "cpu_seconds",
    "emit",
    "lookup",
    "mann_whitney",
    "median",
    "new_session",
    "open_fds",
    "percentile",
    "raise_fd_limit",
    "ratio",
    "rollout_result",
    "rollout_script",
    "rss_kib",
    "run_variant",
    "scripted_server",
    "server",
    "spread",
    "summarize_folded",
    "summarize_pstats",
    "text_script",
    "time_rollouts",
]


# -- profiles ------------------------------------------------------------------------------------


def summarize_folded(path: str | Path, top: int = 15, *, skip_imports: bool = False) -> str:
    """Top self and inclusive entries of a py-spy ``--format raw`` (folded stacks) profile.

    With ``skip_imports``, samples taken while importing and while waiting in epoll are
    left out, so the percentages are of the steady state's work.
    """
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    ours: dict[str, int] = {}
    calls: dict[str, int] = {}
    total = 0
    skipped = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        if skip_imports and (
            "_find_and_load" in stack or stack.rsplit(";", 1)[-1].startswith("get_events ")
        ):
            skipped += count
            continue
        total += count
        raw = stack.split(";")
        frames = [_frame_name(frame) for frame in raw]
        owner = next(
            (
                frames[i]
                for i in range(len(raw) - 1, -1, -1)
                if "(orchestrator/" in raw[i] or "(actors/" in raw[i]
            ),
            "(library only: "
            + (
                "trio-websocket's reader task)"
                if "_reader_task" in stack
                else "trio's scheduler and other tasks)"
            ),
        )
        ours[owner] = ours.get(owner, 0) + count
        position = frames.index(owner) if owner in frames else -1
        if 0 <= position < len(frames) - 1:
            pair = f"{owner.split(' (')[0]} -> {frames[position + 1]}"
            calls[pair] = calls.get(pair, 0) + count
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "(no samples)"
    lines = [f"{total} samples ({skipped} importing or waiting left out)", ""]
    lines.append("self %   function (file)")
    for name, count in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:5.1f}   {name}")
    lines += ["", "total %  function (file)"]
    for name, count in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:5.1f}   {name}")
    lines += ["", "each sample charged to the innermost function of ours on its stack", ""]
    lines.append("   %     function (file), with the library calls it made")
    for name, count in sorted(ours.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:5.1f}   {name}")
    lines += ["", "   %     our function -> the library call it was in"]
    for name, count in sorted(calls.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{100 * count / total:5.1f}   {name}")
    return "\n".join(lines)


def _frame_name(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)"; keep the function and the
    # path from the package down, without the line (several lines of one function merge).
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name
