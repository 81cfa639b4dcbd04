"""No process outlives its owner (docs/faults.md#tools-that-hang-or-fail,
docs/faults.md#signals-and-processes): a tool call owns the children it starts with
``actors.tools.run_process`` / ``run_subprocess`` / ``start_subprocess``, and ``orchestrator run``
owns every process it started, grandchildren and orphans included, whether it ends by itself, by
Ctrl-C, by SIGTERM or by a forced second Ctrl-C.

Processes are real; a process counts as gone once it no longer exists or is a zombie."""

from __future__ import annotations

import contextvars
import json
import os
import signal
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest
import trio

from actors.tools import (
    ToolCallEnded,
    ToolRegistry,
    run_process,
    run_subprocess,
    start_subprocess,
)
from orchestrator.core.protocol.events import FunctionCallItem
from tests.test_cli import CLI, HAS_PROC, environment, lines, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.skipif(not HAS_PROC, reason="needs /proc to see processes")

# A child that starts a grandchild (in the same process group), prints both pids, and sleeps.
FAMILY = (
    "import subprocess, sys, time\n"
    "grandchild = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
    "print(__import__('os').getpid(), grandchild.pid, flush=True)\n"
    "time.sleep(300)\n"
)


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (no such process, or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("Z", "X")


def call(name: str) -> FunctionCallItem:
    return FunctionCallItem(call_id=f"call-{name}", name=name, arguments="{}")


# -- a tool call owns its children ---------------------------------------------------------------


async def test_cancelling_a_sync_tool_stops_its_children_and_grandchildren():
    """Ctrl-C (cancellation) during a sync tool waiting on ``start_subprocess``: the call's
    process group gets SIGTERM and is gone, grandchild included, when the call returns; the
    tool's thread is released rather than left waiting."""
    started = trio.Event()
    pids: list[int] = []
    released = trio.Event()

    def family() -> str:
        """Starts a child with a grandchild and waits for it."""
        process = start_subprocess([sys.executable, "-c", FAMILY], stdout=subprocess.PIPE)
        assert process.stdout is not None
        found = [int(pid) for pid in process.stdout.readline().split()]
        trio.from_thread.run_sync(lambda: (pids.extend(found), started.set()))
        process.wait()
        process.stdout.close()
        trio.from_thread.run_sync(released.set)
        return "done"

    registry = ToolRegistry()
    registry.add(family, timeout=60)
    executor = registry.executor("w")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, call("family"))
            await started.wait()
            nursery.cancel_scope.cancel()
        assert 2 == len(pids)
        assert [True, True] == [gone(pid) for pid in pids]
        await released.wait()


async def test_cancelling_an_async_tool_stops_its_process_group():
    """An async tool's ``run_process`` cancelled (the call's deadline, Ctrl-C): SIGTERM to the
    whole group, so the grandchild goes too (``trio.run_process`` alone stops the child)."""
    started = trio.Event()
    pids: list[int] = []

    async def family() -> str:
        """Runs a child with a grandchild."""
        read, write = os.pipe()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(run_process, [sys.executable, "-c", FAMILY], stdout=write))
            async with trio.lowlevel.FdStream(read) as stream:
                line = b""
                while not line.endswith(b"\n"):
                    chunk = await stream.receive_some()
                    if not chunk:
                        break  # the child died first: the assertion below says so
                    line += chunk
            pids.extend(int(pid) for pid in line.split())
            os.close(write)
            started.set()
        return "done"

    registry = ToolRegistry()
    registry.add(family, timeout=60)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.executor("w").run, call("family"))
            await started.wait()
            nursery.cancel_scope.cancel()
    assert 2 == len(pids)
    assert [True, True] == [gone(pid) for pid in pids]


async def test_a_child_left_running_when_the_call_returns_is_stopped():
    """A tool that returns while its child still runs does not leak it: the call ends, so
    does the child; a thread of the call that starts another one later gets it killed and
    ``ToolCallEnded``."""
    children: list[subprocess.Popen[bytes]] = []
    late: list[BaseException] = []
    go = threading.Event()
    threads: list[threading.Thread] = []

    def background() -> str:
        """Starts a child and returns at once."""
        children.append(start_subprocess([sys.executable, "-c", "import time; time.sleep(300)"]))
        return "started"

    def lingering() -> str:
        """Returns, leaving a thread that starts a child once the call is over."""

        def later() -> None:
            go.wait()
            try:
                start_subprocess([sys.executable, "-c", "import time; time.sleep(300)"])
            except ToolCallEnded as exc:
                late.append(exc)

        # Like a thread the tool's own code starts: it runs in the call's context.
        thread = threading.Thread(target=contextvars.copy_context().run, args=(later,))
        thread.start()
        threads.append(thread)
        return "returned"

    registry = ToolRegistry()
    registry.add(background)
    registry.add(lingering)
    executor = registry.executor("w")
    with trio.fail_after(30):
        assert (await executor.run(call("background"))).ok
        assert gone(children[0].pid)
        assert (await executor.run(call("lingering"))).ok
        go.set()
        await trio.to_thread.run_sync(threads[0].join)
    assert -signal.SIGTERM == children[0].wait()
    assert 1 == len(late)
    assert "started a process after its call ended; it was killed" in str(late[0])


def test_run_subprocess_is_subprocess_run():
    """Outside a call too, ``run_subprocess`` behaves as ``subprocess.run``: output,
    ``check``, ``input``, and its own ``timeout`` (which kills the whole group)."""
    done = run_subprocess(
        [sys.executable, "-c", "import sys; print(sys.stdin.read().upper())"],
        input="hi",
        capture_output=True,
        text=True,
    )
    assert (0, "HI\n", "") == (done.returncode, done.stdout, done.stderr)
    with pytest.raises(subprocess.CalledProcessError) as failed:
        run_subprocess([sys.executable, "-c", "raise SystemExit(3)"], check=True)
    assert 3 == failed.value.returncode
    with pytest.raises(subprocess.TimeoutExpired):
        run_subprocess([sys.executable, "-c", "import time; time.sleep(300)"], timeout=0.2)
    with pytest.raises(TypeError, match="process group of their own"):
        start_subprocess(["true"], process_group=0)


async def test_run_process_raises_as_trio_does():
    """``run_process`` raises what ``trio.run_process`` raises, not an exception group."""
    done = await run_process([sys.executable, "-c", "print('ok')"], capture_stdout=True)
    assert b"ok\n" == done.stdout
    with pytest.raises(FileNotFoundError):
        await run_process(["/nonexistent/program"])
    with pytest.raises(subprocess.CalledProcessError):
        await run_process([sys.executable, "-c", "raise SystemExit(2)"])


# -- orchestrator run owns its processes ---------------------------------------------------------

# Plain subprocess, as a tool author who never read the docs writes it: an orphan (its
# parent exits at once, so only a subreaper can find it) and a child the tool waits for.
PLAIN_TOOLS = '''\
"""Tools whose children the runtime was not told about."""

import os
import subprocess
import sys
from pathlib import Path

import trio

SLEEP = [sys.executable, "-c", "import time; time.sleep(300)"]
ORPHAN = (
    "import subprocess, sys; "
    "p = subprocess.Popen({sleep!r}, start_new_session=True, stdout=subprocess.DEVNULL, "
    "stderr=subprocess.DEVNULL); "
    "print(p.pid, flush=True)"
).format(sleep=SLEEP)


def family() -> list[int]:
    orphan = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True)
    child = subprocess.Popen(SLEEP)
    pids = [int(orphan.stdout), child.pid]
    # Written whole, then renamed: the test reads it as soon as the name exists.
    Path("pids.json.tmp").write_text(str(pids))
    os.replace("pids.json.tmp", "pids.json")
    return pids


def crunch(rounds: int) -> str:
    """Crunch numbers in helper processes (it takes minutes)."""
    family()
    subprocess.Popen(SLEEP).wait()
    return f"crunched {rounds} rounds"


async def stubborn(rounds: int) -> str:
    """Start helpers, then ignore cancellation for minutes."""
    family()
    with trio.CancelScope(shield=True):
        await trio.sleep(300)
    return f"did {rounds} rounds"
'''

PLAN = """\
name = "family"
goal = "Do 3 rounds"
[settings]
model = "gpt-5-mini"
[[agents]]
name = "planner"
role = "planner"
[[agents]]
name = "cruncher"
tools = ["plaintools:{tool}"]
"""


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[subprocess.Popen[str]]]:
    """Commands a test starts; any still running at the end is killed with its group, and
    so are the tool's processes if the test failed to see them stopped."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    pids = tmp_path / "pids.json"
    for pid in json.loads(pids.read_text()) if pids.exists() else ():
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)


def start_run(tmp_path: Path, tool: str, started: list[subprocess.Popen[str]]) -> Path:
    (tmp_path / "plaintools.py").write_text(PLAIN_TOOLS)
    (tmp_path / "plan.toml").write_text(PLAN.replace("{tool}", tool))
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        process = subprocess.Popen(
            [*CLI, "run", "plan.toml", "--json"],
            cwd=tmp_path,
            env=environment(),
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
    started.append(process)
    pids = tmp_path / "pids.json"
    wait_until(pids.exists, "the tool's processes", process)
    return pids


def in_directory(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory``: all the run's descendants
    inherit it, wherever they were re-parented."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and not gone(int(entry)):
            try:
                if Path(f"/proc/{entry}/cwd").resolve() == directory:
                    found.append(int(entry))
            except OSError:
                continue  # gone meanwhile, or not ours to look at
    return found


@pytest.mark.parametrize(
    ("signum", "status", "said"),
    [
        (signal.SIGINT, 130, "interrupted: stopping cleanly (Ctrl-C again to force)"),
        (signal.SIGTERM, 143, "terminated (SIGTERM): stopping cleanly (send it again to force)"),
        (signal.SIGHUP, 129, "hung up (SIGHUP): stopping cleanly"),
    ],
    ids=["ctrl-c", "sigterm", "sighup"],
)
def test_a_stopped_run_leaves_no_process_behind(tmp_path, started, signum, status, said):
    """SIGINT, SIGTERM or SIGHUP while a sync tool waits on a plain ``subprocess`` child,
    after an orphaned grandchild was started: the run stops cleanly with the partial result,
    exits 128 + the signal (130, 143, 129; only Ctrl-C's message mentions Ctrl-C), and no
    process it started is alive once it has exited."""
    pids_file = start_run(tmp_path, "crunch", started)
    process = started[0]
    pids = json.loads(pids_file.read_text())
    assert not any(gone(pid) for pid in pids)

    process.send_signal(signum)
    assert status == process.wait(timeout=30)

    assert [True, True] == [gone(pid) for pid in pids]
    assert [] == in_directory(tmp_path.resolve())
    stderr = (tmp_path / "stderr").read_text()
    assert said in lines(stderr)
    if signum != signal.SIGINT:
        assert "Ctrl-C" not in stderr
    result = msgspec.json.decode((tmp_path / "stdout").read_text())
    assert ("interrupted", "run.interrupted") == (result["status"], result["code"])


def test_a_forced_stop_kills_every_descendant(tmp_path, started):
    """A second Ctrl-C while the clean stop waits on a tool that ignores cancellation exits
    at once with 130, and SIGKILLs every descendant first: grandchildren and orphans too,
    not only direct children."""
    pids_file = start_run(tmp_path, "stubborn", started)
    process = started[0]
    pids = json.loads(pids_file.read_text())
    stderr = tmp_path / "stderr"

    process.send_signal(signal.SIGINT)
    wait_until(lambda: "stopping cleanly" in stderr.read_text(), "the first stop", process)
    process.send_signal(signal.SIGINT)
    assert 130 == process.wait(timeout=30)

    assert "forced stop" in lines(stderr.read_text())
    assert [True, True] == [gone(pid) for pid in pids]
    assert [] == in_directory(tmp_path.resolve())


def test_serve_still_exits_0_on_sigterm(tmp_path):
    """``orchestrator serve`` is a service: SIGTERM (a service manager's stop) closes its
    connections and exits 0, unlike ``run``'s 143."""
    with (tmp_path / "stdout").open("w") as stdout:
        server = subprocess.Popen(
            [*CLI, "serve", "--port", "0"],
            env=environment(),
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        wait_until(lambda: "serving" in (tmp_path / "stdout").read_text(), "the server", server)
        server.send_signal(signal.SIGTERM)
        assert 0 == server.wait(timeout=20)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert server.stderr is not None
    assert ["stopping"] == lines(server.stderr.read())
    server.stderr.close()
