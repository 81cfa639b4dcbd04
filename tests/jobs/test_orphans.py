"""A stopped run leaves no tool process behind, even one a sync tool started
(docs/faults.md#signals-and-processes, docs/faults.md#tools-that-hang-or-fail): the tool's worker
thread is abandoned on cancellation, its child process is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import trio

from tests.jobs.crashplan.harness import (
    CLI,
    HERE,
    ROOT,
    alive,
    environment,
    group_members,
    lines,
)
from tests.jobs.crashplan.tools import HELPER_SECONDS_ENV


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="needs /proc")
async def test_ctrl_c_terminates_the_process_a_sync_tool_started(tmp_path):
    """SIGINT while a sync tool waits for its helper process (a minute long): the command
    stops the helper instead of waiting for it, exits 130, and leaves no process behind."""
    helpers = tmp_path / "helpers"
    env = environment(tmp_path / "ledger.db", helper_pids=helpers)
    env[HELPER_SECONDS_ENV] = "60"
    store, trace = tmp_path / "jobs.db", tmp_path / "trace"
    args = [HERE / "signals.toml", "--store", store, "--job-id", "orphans", "--trace", trace]
    with (tmp_path / "stderr").open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", CLI, "run", *map(str, args)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        with trio.fail_after(30):
            while not helpers.exists() or lines(helpers) < 1:
                assert process.returncode is None, (tmp_path / "stderr").read_text()
                await trio.sleep(0.005)
        process.send_signal(signal.SIGINT)
        # The helper sleeps 60 s: a command that waited for it would miss this deadline.
        with trio.fail_after(30):
            await process.wait()
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            with trio.CancelScope(shield=True):
                await process.wait()
    left = group_members(process.pid)
    for pid in left:  # don't leave it to the rest of the session
        os.kill(pid, signal.SIGKILL)

    assert 130 == process.returncode
    assert [] == left
    assert [] == [pid for pid in map(int, helpers.read_text().split()) if alive(pid)]
