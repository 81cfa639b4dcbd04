"""The canary key never leaves the process (docs/faults.md#secrets, issue 10 item 1).

A live run uses the canary as its API key against ``orchestrator serve --token CANARY``
(so the key really is sent and accepted), whose scripted model then quotes the key back:
in an ``error`` event (the agent crashes, the step fails), in a ``response.failed``, and
through a tool that raises with the key in its message. The CLI runs through that with the
plain report, ``--json``, ``--trace``, ``-v`` and ``-vv``, through Ctrl-C and through an
internal error; the Python API runs it in-process with a log sink and an observer. Every
byte of stdout, stderr, traces and logs is searched for the key and for each 8-character
fragment of it: none may be found.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
import trio

import orchestrator
import orchestrator.lowlevel
from orchestrator.core.logging import PACKAGES
from orchestrator.errors import ConfigurationError
from orchestrator.runner import RunSettings, run
from tests.conftest import CANARY_KEY
from tests.test_cli import CLI, environment, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SCRIPT = {
    "on_exhausted": "repeat_last",
    "models": {
        # The server refuses the request, quoting the key it was sent.
        "crash": [
            {
                "error": {
                    "code": "invalid_request_error",
                    "status": 400,
                    "message": f"invalid key {CANARY_KEY}: check your key",
                }
            }
        ],
        "fail": [{"failed": {"code": "invalid_prompt", "message": f"key {CANARY_KEY} revoked"}}],
        # A tool that quotes the key, then an answer.
        "tooly": [{"function_calls": [{"name": "leak"}]}, {"text": "Done."}],
        # The same, then a tool that blocks until the run is interrupted.
        "slow": [{"function_calls": [{"name": "leak"}]}, {"function_calls": [{"name": "block"}]}],
    },
}

TOOLS = '''\
"""Tools that know the key (from the environment) and put it where they should not."""

import os
import time
from pathlib import Path


def leak() -> str:
    """Fails, quoting the key it found."""
    print("tool sees", os.environ["OPENAI_API_KEY"])  # to our stdout: redacted too
    raise RuntimeError("cannot use key " + os.environ["OPENAI_API_KEY"])


def block() -> str:
    """Blocks until the run is interrupted."""
    Path("blocking").write_text("yes")
    time.sleep(300)
    return "unblocked"
'''

PLAN = """\
name = "leaky"
[settings]
model = "crash"
[[agents]]
name = "crasher"
[[agents]]
name = "failer"
model = "fail"
[[agents]]
name = "tooler"
model = "tooly"
tools = ["canarytools:leak"]
[[steps]]
id = "s1"
agent = "crasher"
task = "Do it"
[[steps]]
id = "s2"
agent = "failer"
task = "Do it"
[[steps]]
id = "s3"
agent = "tooler"
task = "Do it"
"""

SLOW_PLAN = """\
name = "slow"
[settings]
model = "slow"
[[agents]]
name = "blocker"
tools = ["canarytools:leak", "canarytools:block"]
[[steps]]
id = "s1"
agent = "blocker"
task = "Do it"
"""

# A run of the CLI in which something inside the run raises an unexpected error (a bug)
# whose message holds the key: patched in, since no code path of ours does it on purpose.
INTERNAL_ERROR = """\
import os
import sys

import orchestrator.runner.job
from orchestrator import cli


def broken(*args, **kwargs):
    raise RuntimeError("bug while reporting, key " + os.environ["OPENAI_API_KEY"])


orchestrator.runner.job.build_result = broken
sys.exit(cli.main(sys.argv[1:]))
"""


def fragments(text: str) -> list[str]:
    """The canary and every 8-character fragment of it found in ``text``."""
    found = [CANARY_KEY] if CANARY_KEY in text else []
    found += sorted({CANARY_KEY[i : i + 8] for i in range(len(CANARY_KEY) - 7)} & _windows(text))
    return found


def _windows(text: str) -> set[str]:
    return {text[i : i + 8] for i in range(len(text) - 7)}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("leaky")
    (directory / "script.json").write_text(json.dumps(SCRIPT))
    (directory / "canarytools.py").write_text(TOOLS)
    (directory / "leaky.toml").write_text(PLAN)
    (directory / "slow.toml").write_text(SLOW_PLAN)
    return directory


@pytest.fixture(scope="module")
def served(workdir: Path) -> Iterator[tuple[str, list[Path]]]:
    """``orchestrator serve`` holding the canary as its token; yields its URL and the files
    its own output goes to (searched too: the server never prints the token it was given)."""
    outputs = [workdir / "serve.stdout", workdir / "serve.stderr"]
    with outputs[0].open("w") as stdout, outputs[1].open("w") as stderr:
        options = ["--port", "0", "--token", CANARY_KEY, "--model", "scripted"]
        server = subprocess.Popen(
            [*CLI, "serve", *options, "--script", str(workdir / "script.json")],
            cwd=workdir,
            env=environment(),
            stdout=stdout,
            stderr=stderr,
            text=True,
        )
    try:
        wait_until(lambda: "\n" in outputs[0].read_text(), "the server", server)
        first = outputs[0].read_text().splitlines()[0]
        assert first.startswith("serving ws://127.0.0.1:"), first
        yield first.split()[1], outputs
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=10)


def live(*args: object, workdir: Path, url: str, driver: str | None = None) -> list[Any]:
    """The argv and environment of a live ``orchestrator run`` (or of ``driver``) with the
    canary as its key."""
    program = [sys.executable, "-c", driver] if driver else list(CLI)
    argv = [*program, "run", *map(str, args), "--base-url", url]
    return [argv, environment(OPENAI_API_KEY=CANARY_KEY, COLUMNS="120")]


def test_the_cli_never_shows_the_key(workdir, served):
    """Crashes on a server error that quotes the key, a failed response quoting it, a tool
    raising with it (and printing it), an internal error carrying it: in the plain report,
    ``--json``, ``--trace``, ``-v`` and ``-vv`` tracebacks, no byte of the key appears."""
    url, server_outputs = served
    runs = {
        "plain": live("leaky.toml", workdir=workdir, url=url),
        "json": live("leaky.toml", "--json", "--trace", "t-json", workdir=workdir, url=url),
        "v": live("leaky.toml", "-v", workdir=workdir, url=url),
        "vv": live("leaky.toml", "-vv", "--json", "--trace", "t-vv", workdir=workdir, url=url),
        "internal": live(
            "leaky.toml", "-v", "--trace", "t-internal", workdir=workdir, url=url,
            driver=INTERNAL_ERROR,
        ),
    }  # fmt: skip
    started = {
        name: subprocess.Popen(
            argv, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, (argv, env) in runs.items()
    }
    outputs = {name: process.communicate(timeout=120) for name, process in started.items()}
    codes = {name: process.returncode for name, process in started.items()}

    assert {"plain": 4, "json": 4, "v": 4, "vv": 4, "internal": 4} == codes, outputs
    texts = {f"{name} {stream}": data.decode("utf-8", "replace") for name, pair in outputs.items()
             for stream, data in zip(("stdout", "stderr"), pair, strict=True)}  # fmt: skip
    for name in ("t-json", "t-vv", "t-internal"):
        texts[name] = (workdir / name).read_text()
    for path in server_outputs:
        texts[path.name] = path.read_text()
    # The paths the key took were really taken, and shown redacted.
    assert "invalid key [REDACTED]: check your key" in texts["plain stdout"]
    result = json.loads(texts["json stdout"].splitlines()[-1])  # after the tool's print
    errors = " ".join(step["error"] or "" for step in result["steps"])
    assert "invalid key [REDACTED]" in errors
    assert "key [REDACTED] revoked" in errors
    assert "tool sees [REDACTED]" in texts["json stdout"]
    assert "cannot use key [REDACTED]" in json.dumps(result)
    assert "Traceback" in texts["v stderr"]
    assert "DEBUG" in texts["vv stderr"]
    assert (
        "error[internal]: RuntimeError: bug while reporting, key [REDACTED]"
        in (texts["internal stderr"])
    )
    assert "Traceback" in texts["internal stderr"]

    assert {} == {name: found for name, text in texts.items() if (found := fragments(text))}


def test_ctrl_c_never_shows_the_key(workdir, served):
    """Ctrl-C while a tool blocks, after another quoted the key: the partial result, the
    ``-vv`` log and the trace hold no byte of it."""
    url, _outputs = served
    (workdir / "blocking").unlink(missing_ok=True)
    argv, env = live("slow.toml", "-vv", "--json", "--trace", "t-slow", workdir=workdir, url=url)
    with (workdir / "slow.out").open("w") as stdout, (workdir / "slow.err").open("w") as stderr:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=stdout, stderr=stderr)
    try:
        wait_until((workdir / "blocking").exists, "the blocking tool", process)
        process.send_signal(signal.SIGINT)
        assert 130 == process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    texts = {name: (workdir / name).read_text() for name in ("slow.out", "slow.err", "t-slow")}
    result = json.loads(texts["slow.out"].splitlines()[-1])
    assert "interrupted" == result["status"]
    assert "cannot use key [REDACTED]" in json.dumps(result["agents"][0]["transcript"])
    assert "tool leak raised RuntimeError" in texts["slow.err"]
    assert {} == {name: found for name, text in texts.items() if (found := fragments(text))}


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Our packages' logs, DEBUG and up, through the public ``configure_logging``."""
    from loguru import logger

    lines: list[str] = []
    handler = orchestrator.configure_logging("DEBUG", sink=lines.append)
    yield lines
    logger.remove(handler)
    logger.configure(patcher=None)
    for package in PACKAGES:
        logger.disable(package)


async def test_the_python_api_never_shows_the_key(workdir, log_lines, monkeypatch):
    """``run()`` in-process, live with the canary against the embedded server:
    log lines (tracebacks included), events, the result and its JSON, and the errors it
    raises hold no byte of the key."""
    monkeypatch.syspath_prepend(str(workdir))
    events: list[Any] = []
    with trio.fail_after(60):
        async with orchestrator.lowlevel.open_local_server(
            token=CANARY_KEY, model="scripted", script=workdir / "script.json"
        ) as server:
            result = await run(
                workdir / "leaky.toml",
                events=events.append,
                settings=RunSettings(api_key=CANARY_KEY, base_url=server.url),
            )
            with pytest.raises(ConfigurationError) as refused:
                await run(
                    workdir / "leaky.toml",
                    settings=RunSettings(
                        api_key=CANARY_KEY, base_url=f"{server.url}?api_key={CANARY_KEY}"
                    ),
                )

    assert ("failed", server.url) == (result.status, result.endpoint)
    texts = {
        "logs": "\n".join(log_lines),
        "events": "\n".join(msgspec.json.encode(event).decode() for event in events),
        "event reprs": "\n".join(map(repr, events)),
        "result json": result.to_json().decode(),
        "result repr": repr(result),
        "refusal": f"{refused.value} {refused.value!r}",
    }
    assert "Traceback" in texts["logs"]
    assert "invalid key [REDACTED]" in texts["logs"]
    assert {} == {name: found for name, text in texts.items() if (found := fragments(text))}


def test_fragments_finds_what_it_should():
    """The search itself: the key, and a piece of it cut anywhere, are found."""
    assert [CANARY_KEY] == fragments(f"x{CANARY_KEY}y")[:1]
    assert fragments(f"...{CANARY_KEY[5:13]}...")
    assert [] == fragments(CANARY_KEY[:7] + " " + CANARY_KEY[-7:])
