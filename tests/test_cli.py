"""``orchestrator run|validate|serve`` in subprocesses: output, exit codes and every bad input of
docs/faults.md#plan-files, docs/faults.md#tool-calls-from-the-model,
docs/faults.md#keys-and-endpoints, and Ctrl-C (docs/faults.md#signals-and-processes).

Every command runs as ``python -m orchestrator.cli`` without ``OPENAI_API_KEY`` (unless a test
sets one), so runs are offline on the embedded server. Waiting for a running command means
reading its trace or its stderr until a line appears, bounded by a deadline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[1]
CLI = (sys.executable, "-m", "orchestrator.cli")
EXAMPLES = ROOT / "orchestrator" / "examples"
TRIP = EXAMPLES / "trip" / "plan.toml"
BUGFIX = EXAMPLES / "bugfix" / "plan.yaml"
OFFLINE_NOTICE = "offline: no OPENAI_API_KEY, running on the embedded server"
HAS_PROC = Path("/proc/self/stat").exists()


def environment(**overrides: str) -> dict[str, str]:
    """The test's environment without any key or endpoint, our packages importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"  # the report's lines are not wrapped
    env.update(overrides)
    return env


def orchestrator(
    *args: object, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *map(str, args)],
        cwd=cwd,
        env=env if env is not None else environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def lines(text: str) -> list[str]:
    return text.splitlines()


JOB_LINE = re.compile(r"job [A-Za-z][A-Za-z0-9_-]*-\d{8}-\d{6}-[0-9a-f]{4}")


def run_lines(text: str) -> list[str]:
    """The stderr lines of ``orchestrator run``, less the one that names the job."""
    found = [line for line in text.splitlines() if JOB_LINE.fullmatch(line)]
    assert 1 == len(found), text
    return [line for line in text.splitlines() if line not in found]


# -- orchestrator run and validate -------------------------------------------------------------


def test_run_prints_the_offline_notice_and_the_report():
    """Without a key the run is offline: one notice line and the job's id on stderr, the
    report on stdout."""
    done = orchestrator("run", TRIP)

    assert 0 == done.returncode
    assert [OFFLINE_NOTICE] == run_lines(done.stderr)
    report = lines(done.stdout)
    assert re.fullmatch(
        r"completed  plan 'trip', delegate mode, embedded, (\d+ ms|\d\.\d\d s), 8 turns, "
        r"[\d,]+ tokens",
        report[0],
    )
    assert any("answer" in line for line in report)
    assert any("TO7602" in line for line in report)
    table = [line.split() for line in report if line.split()[:1] in (["planner"], ["flights"])]
    assert [["planner", "planner", "2", "4"], ["flights", "worker", "2", "1"]] == [
        row[:4] for row in table
    ]


def test_run_json_and_trace(tmp_path):
    """``--json`` prints exactly one JSON document; ``--trace`` writes one decodable event per
    line, routed messages and turns included, to a file only the user can read."""
    trace = tmp_path / "trace.jsonl"
    trace.write_text("old content\n")
    trace.chmod(0o644)  # an existing file must not keep a mode others can read
    done = orchestrator("run", TRIP, "--json", "--trace", trace)

    assert 0 == done.returncode
    assert [OFFLINE_NOTICE] == run_lines(done.stderr)
    assert done.stdout.endswith("}\n")
    assert 1 == done.stdout.count("\n")
    result = json.loads(done.stdout)
    assert ("completed", "trip", "delegate") == (result["status"], result["plan"], result["mode"])
    assert 8 == result["usage"]["turns"]
    assert 0o600 == trace.stat().st_mode & 0o777
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    kinds = [event["type"] for event in events]
    assert "old content" not in trace.read_text()
    assert 8 == kinds.count("turn.finished")
    routed = [(e["sender"], e["recipient"]) for e in events if e["type"] == "message.routed"]
    assert ("run", "planner") == routed[0]
    assert {("planner", "flights"), ("planner", "hotels"), ("planner", "activities")} == set(
        routed[1:]
    )
    assert {"actor.started", "agent.state", "tool.started", "tool.finished"} <= set(kinds)


def test_validate_accepts_the_examples():
    """``validate`` checks a plan without running it and summarises it."""
    trip = orchestrator("validate", TRIP)
    longrun = orchestrator("validate", EXAMPLES / "longrun" / "plan.json")

    assert (0, "", "ok: plan 'trip': 4 agents, 0 steps, 4 tools\n") == (
        trip.returncode,
        trip.stderr,
        trip.stdout,
    )
    assert (0, "ok: plan 'longrun': 5 agents, 125 steps, 7 tools\n") == (
        longrun.returncode,
        longrun.stdout,
    )


def test_python_dash_m_orchestrator_is_the_orchestrator_command():
    """``python -m orchestrator`` is the same command line as ``orchestrator``: same usage,
    same output, same exit codes."""
    module = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", TRIP],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    bare = subprocess.run(
        [sys.executable, "-m", "orchestrator"],
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (0, "ok: plan 'trip': 4 agents, 0 steps, 4 tools\n") == (
        module.returncode,
        module.stdout,
    )
    assert 2 == bare.returncode
    assert bare.stderr.startswith("usage: orchestrator ")
    assert "the following arguments are required: COMMAND" in bare.stderr


# -- docs/faults.md#plan-files -----------------------------------------------------------------

STEPS: dict[str, Any] = {
    "name": "demo",
    "settings": {"model": "gpt-5-mini"},
    "agents": [{"name": "planner", "role": "planner"}, {"name": "writer"}],
    "steps": [
        {"id": "fetch", "agent": "writer", "task": "Fetch the data."},
        {"id": "write", "agent": "writer", "task": "Write it up.", "depends_on": ["fetch"]},
    ],
}
TEAM: dict[str, Any] = {
    "name": "demo",
    "goal": "Look Lisbon up",
    "settings": {"model": "gpt-5-mini"},
    "agents": [
        {"name": "planner", "role": "planner"},
        {"name": "writer", "tools": ["tests.plans.fixture_tools:search"]},
    ],
}
SECRET = "sk-proj-abcdef1234567890XYZ"


def plan_json(base: dict[str, Any], edit: Callable[[dict[str, Any]], object]) -> bytes:
    data = json.loads(json.dumps(base))
    edit(data)
    return json.dumps(data, indent=2).encode()


def cycle(data: dict[str, Any]) -> None:
    data["steps"] = [
        {"id": "a", "agent": "writer", "task": "A", "depends_on": ["b"]},
        {"id": "b", "agent": "writer", "task": "B", "depends_on": ["c"]},
        {"id": "c", "agent": "writer", "task": "C", "depends_on": ["a"]},
    ]


DIRECTORY = b"<a directory>"
MISSING = b"<no file>"

PLAN_ROWS = [
    pytest.param(
        "missing.toml",
        MISSING,
        ["error[plan.not_found]: plan file 'missing.toml' not found"],
        id="missing",
    ),
    pytest.param(
        "plan.toml",
        DIRECTORY,
        ["error[plan.not_found]: plan file 'plan.toml' is a directory; name a file"],
        id="directory",
    ),
    pytest.param(
        "big.toml",
        b"# " + b"#" * (5 * 1024 * 1024 + 200 * 1024),
        ["error[plan.too_large]: 'big.toml' is 5.2 MiB, limit 1 MiB"],
        id="too-large",
    ),
    pytest.param(
        "latin.toml",
        b'name = "caf\xe9"\n',
        ["error[plan.encoding]: 'latin.toml' is not valid UTF-8 (byte 11)"],
        id="not-utf8",
    ),
    pytest.param(
        "bad.json",
        b'{\n  "name": "x",\n  "agents": [1,],\n}\n',
        [
            "error[plan.syntax]: 'bad.json' is malformed: trailing comma in array "
            "(byte 32, line 3 col 16)",
            '    3 |   "agents": [1,],',
            "      |                ^",
        ],
        id="json-syntax",
    ),
    pytest.param(
        "bad.toml",
        b'name = "x"\nagents = [1,,]\n',
        [
            "error[plan.syntax]: 'bad.toml' is malformed: invalid value (line 2 col 13)",
            "    2 | agents = [1,,]",
            "      |             ^",
        ],
        id="toml-syntax",
    ),
    pytest.param(
        "bad.yaml",
        b"name: x\nagents: [a, b\n",
        [
            "error[plan.syntax]: 'bad.yaml' is malformed: did not find expected ',' or ']' "
            "(line 3 col 1)"
        ],
        id="yaml-syntax",
    ),
    pytest.param(
        "deep.json",
        b'{"name":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        ["error[plan.syntax]: 'deep.json' is malformed: nesting too deep"],
        id="json-deep",
    ),
    pytest.param(
        "deep.yaml",
        b"name: " + b"[" * 100_000 + b"]" * 100_000,
        ["error[plan.syntax]: 'deep.yaml' is malformed: nesting too deep"],
        id="yaml-deep",
    ),
    pytest.param(
        "unknown.json",
        plan_json(STEPS, lambda d: d["steps"][1].update(agnet=d["steps"][1].pop("agent"))),
        [
            "error[plan.schema]: unknown.json:27: $.steps[1]: unknown field 'agnet' "
            "(did you mean 'agent'?)",
            "error[plan.schema]: unknown.json:21: $.steps[1]: missing required field 'agent'",
        ],
        id="unknown-field",
    ),
    pytest.param(
        "type.json",
        plan_json(STEPS, lambda d: d["steps"][0].update(agent=7)),
        ["error[plan.schema]: type.json:18: $.steps[0].agent: expected str, got int"],
        id="wrong-type",
    ),
    pytest.param(
        "required.json",
        plan_json(STEPS, lambda d: d["steps"][0].pop("task")),
        ["error[plan.schema]: required.json:16: $.steps[0]: missing required field 'task'"],
        id="missing-field",
    ),
    pytest.param(
        "empty.toml",
        b"\n  \n",
        ["error[plan.empty]: 'empty.toml' is empty"],
        id="empty-file",
    ),
    pytest.param(
        "nothing.json",
        b'{"name": "demo"}',
        [
            "error[plan.empty]: nothing.json: $: plan defines no agents and no steps; "
            "add an [[agents]] entry"
        ],
        id="empty-plan",
    ),
    pytest.param(
        "steps.json",
        plan_json(
            STEPS, lambda d: d["steps"].append({"id": "fetch", "agent": "writer", "task": "Again."})
        ),
        [
            "error[plan.duplicate]: steps.json:29: $.steps[2]: step id 'fetch' defined twice "
            "($.steps[0], $.steps[2])"
        ],
        id="duplicate-step",
    ),
    pytest.param(
        "agents.json",
        plan_json(STEPS, lambda d: d["agents"].append({"name": "writer"})),
        [
            "error[plan.duplicate]: agents.json:14: $.agents[2]: agent name 'writer' defined twice "
            "($.agents[1], $.agents[2])"
        ],
        id="duplicate-agent",
    ),
    pytest.param(
        "cycle.json",
        plan_json(STEPS, cycle),
        [
            "error[plan.cycle]: cycle.json:21: $.steps[0].depends_on[0]: dependency cycle: "
            "a → b → c → a; remove one of these dependencies"
        ],
        id="cycle",
    ),
    pytest.param(
        "self.json",
        plan_json(STEPS, lambda d: d["steps"][0].update(depends_on=["fetch"])),
        [
            "error[plan.cycle]: self.json:21: $.steps[0].depends_on[0]: step 'fetch' depends "
            "on itself"
        ],
        id="self-dependency",
    ),
    pytest.param(
        "after.json",
        plan_json(STEPS, lambda d: d["steps"][1].update(depends_on=["fetch", "z"])),
        [
            "error[plan.unknown_step]: after.json:27: $.steps[1].depends_on[1]: step 'write' "
            "depends on unknown step 'z'"
        ],
        id="unknown-step",
    ),
    pytest.param(
        "agent.json",
        plan_json(STEPS, lambda d: d["steps"][1].update(agent="writer2")),
        [
            "error[plan.unknown_agent]: agent.json:23: $.steps[1].agent: step 'write' uses agent "
            "'writer2'; defined agents: planner, writer (did you mean 'writer'?)"
        ],
        id="unknown-agent",
    ),
    pytest.param(
        "shell.json",
        plan_json(TEAM, lambda d: d["agents"][1].update(tools=["shell"])),
        [
            "error[plan.tool]: shell.json:15: $.agents[1].tools[0]: agent 'writer' lists tool "
            "'shell' which is not registered; define it under [tools] or give its import path "
            "'module:function'"
        ],
        id="tool-not-registered",
    ),
    pytest.param(
        "serch.json",
        plan_json(TEAM, lambda d: d["agents"][1].update(tools=["tests.plans.fixture_tools:serch"])),
        [
            "error[plan.tool]: serch.json:15: $.agents[1].tools[0]: "
            "'tests.plans.fixture_tools:serch' not found "
            "(did you mean 'tests.plans.fixture_tools:search'?)"
        ],
        id="tool-bad-function",
    ),
    pytest.param(
        "module.json",
        plan_json(TEAM, lambda d: d["agents"][1].update(tools=["tests.plans.fixture_tool:search"])),
        [
            "error[plan.tool]: module.json:15: $.agents[1].tools[0]: "
            "'tests.plans.fixture_tool:search' not found: no module named "
            "'tests.plans.fixture_tool' (did you mean 'tests.plans.fixture_tools:search'?)"
        ],
        id="tool-bad-module",
    ),
    pytest.param(
        "range.json",
        plan_json(TEAM, lambda d: d.update(budgets={"max_turns": 0})),
        ["error[plan.value]: range.json:20: $.budgets.max_turns: must be in 1..100000, got 0"],
        id="out-of-range",
    ),
    pytest.param(
        "secret.json",
        plan_json(
            TEAM, lambda d: d["agents"][1].update(instructions=f"Log in with {SECRET} first.")
        ),
        [
            "error[plan.secret]: secret.json:17: $.agents[1].instructions: plan contains what "
            "looks like an API key or password; remove it and use OPENAI_API_KEY (or a key "
            "file); never put secrets in plans"
        ],
        id="secret",
    ),
    pytest.param(
        "several.json",
        plan_json(
            STEPS,
            lambda d: (
                d["steps"][1].update(agent="ghost"),
                d.update(budgets={"max_tokens": 0}),
                d["agents"][1].update(tools=["shell"]),
            ),
        ),
        [
            "error[plan.tool]: several.json:14: $.agents[1].tools[0]: agent 'writer' lists tool "
            "'shell' which is not registered; define it under [tools] or give its import path "
            "'module:function'",
            "error[plan.value]: several.json:34: $.budgets.max_tokens: must be in "
            "1..1000000000, got 0",
            "error[plan.unknown_agent]: several.json:26: $.steps[1].agent: step 'write' uses agent "
            "'ghost'; defined agents: planner, writer",
        ],
        id="all-errors-at-once-sorted",
    ),
]


@pytest.mark.parametrize(("name", "content", "expected"), PLAN_ROWS)
def test_bad_plan_files_are_refused_before_anything_runs(tmp_path, name, content, expected):
    """Each bad plan of docs/faults.md#plan-files gets its ``error[plan.*]`` lines and exit code 2,
    and nothing starts: not even the offline notice is printed."""
    path = tmp_path / name
    if content is DIRECTORY:
        path.mkdir()
    elif content is not MISSING:
        path.write_bytes(content)
    done = orchestrator("run", name, cwd=tmp_path)

    assert 2 == done.returncode
    assert expected == lines(done.stderr)
    assert "" == done.stdout
    assert SECRET not in done.stderr


def test_validate_reports_the_same_errors_as_run(tmp_path):
    """``validate`` prints the same ``error[...]`` lines as ``run`` and exits 2."""
    (tmp_path / "cycle.json").write_bytes(plan_json(STEPS, cycle))
    done = orchestrator("validate", "cycle.json", cwd=tmp_path)

    assert 2 == done.returncode
    assert [
        "error[plan.cycle]: cycle.json:21: $.steps[0].depends_on[0]: dependency cycle: "
        "a → b → c → a; remove one of these dependencies"
    ] == lines(done.stderr)


def test_unreachable_steps_are_a_warning_and_are_not_run(tmp_path):
    """Steps ``final_step`` does not need are a warning (exit 0); the run skips them."""
    (tmp_path / "final.json").write_bytes(plan_json(STEPS, lambda d: d.update(final_step="fetch")))
    done = orchestrator("run", "final.json", "--json", cwd=tmp_path)

    assert 0 == done.returncode
    assert [
        "warning[plan.unreachable]: final.json:15: $.steps: step 'write' is never scheduled; "
        "final_step 'fetch' does not depend on them",
        OFFLINE_NOTICE,
    ] == run_lines(done.stderr)
    result = json.loads(done.stdout)
    assert [("fetch", "completed")] == [(s["id"], s["status"]) for s in result["steps"]]


# -- docs/faults.md#tool-calls-from-the-model, through the embedded server ---------------------

ROWS_PLAN = """\
name: rows
goal: Read calc/stats.py
settings:
  model: planner-model
tools:
  read_file: {path: "orchestrator.examples.bugfix.tools:read_file"}
  list_files: {path: "orchestrator.examples.bugfix.tools:list_files"}
agents:
  - name: planner
    role: planner
  - name: reader
    model: reader-model
    tools: [read_file]
  - name: lister
    model: lister-model
    tools: [list_files]
"""


def call(name: str, arguments: Any) -> dict[str, Any]:
    return {"function_calls": [{"name": name, "arguments": arguments}]}


PLANNER_TURNS = [
    call("delegate_to_reader", {"task": "Read calc/stats.py"}),
    call("finish", {"answer": "The reader is done."}),
]
# One bad call per turn; a good one between two of a kind, so the repair budget (2 invalid
# calls of one tool in a row) is never exceeded.
READER_TURNS = [
    call("shell", {"cmd": "ls"}),
    call("list_files", {}),
    call("read_file", '{"path": "calc/st'),
    call("read_file", {"path": 5}),
    call("read_file", {"path": "calc/stats.py"}),
    call("read_file", {"path": "x" * 70_000}),
    call("read_file", {"path": "../../etc/passwd"}),
    call("read_file", {"path": "calc/units.py"}),
    call("read_file", {"path": "/etc/passwd"}),
    call("read_file", {"path": "calc/stats.py", "mode": "rb"}),
    call("read_file", {"path": "calc/stats.py"}),
    call("read_file", {}),
    {"text": "Done reading."},
]


def scripted_run(tmp_path: Path, script: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "plan.yaml").write_text(ROWS_PLAN)
    (tmp_path / "script.json").write_text(json.dumps(script))
    return orchestrator(
        "run",
        "plan.yaml",
        "--json",
        "--local-model",
        "scripted",
        "--local-script",
        "script.json",
        cwd=tmp_path,
    )


def agent(result: dict[str, Any], name: str) -> dict[str, Any]:
    return next(a for a in result["agents"] if a["name"] == name)


def tool_outputs(report: dict[str, Any]) -> list[Any]:
    decoded = []
    for item in report["transcript"]:
        if item["type"] == "function_call_output":
            try:
                decoded.append(json.loads(item["output"]))
            except ValueError:
                decoded.append(item["output"])
    return decoded


def refused(code: str, message: str, *, tool: str = "read_file", **extra: Any) -> dict[str, Any]:
    """The output a refused call gets (docs/faults.md#tool-calls-from-the-model)."""
    return {"error": code, "tool": tool, "message": message, **extra}


def test_bad_tool_calls_are_answered_not_executed(tmp_path):
    """Every bad call of docs/faults.md#tool-calls-from-the-model is refused with an output that
    says why, the model repairs its call, and the run completes; a refused tool is logged as a
    warning."""
    done = scripted_run(
        tmp_path, {"models": {"planner-model": PLANNER_TURNS, "reader-model": READER_TURNS}}
    )

    assert 0 == done.returncode, done.stderr
    result = json.loads(done.stdout)
    assert ("completed", "The reader is done.") == (result["status"], result["answer"])
    # A successful read is shown by the path it read, a refused call by its whole output.
    seen = [
        output if "error" in output else output["path"]
        for output in tool_outputs(agent(result, "reader"))
    ]
    assert [
        refused("unknown_tool", "no tool named 'shell'", tool="shell", allowed=["read_file"]),
        refused(
            "tool_not_permitted",
            "tool 'list_files' is not available to agent 'reader'",
            tool="list_files",
            allowed=["read_file"],
        ),
        refused("invalid_json", "Input data was truncated"),
        refused("invalid_arguments", "Expected str, got int - at $.path"),
        "calc/stats.py",
        refused("arguments_too_large", "arguments are 70011 bytes, limit 65536"),
        refused("path_outside_workspace", "path '../../etc/passwd' is outside the workspace"),
        "calc/units.py",
        refused("path_outside_workspace", "path '/etc/passwd' is outside the workspace"),
        refused("invalid_arguments", "Object contains unknown field mode"),
        "calc/stats.py",
        refused("invalid_arguments", "Object missing required field path"),
    ] == seen
    # Nothing of /etc/passwd reached the model, and the lister never ran.
    assert "root:" not in done.stdout
    assert 0 == agent(result, "lister")["turns"]
    assert "Done reading." == tool_outputs(agent(result, "planner"))[0]
    warnings = [line for line in lines(done.stderr) if "WARNING" in line]
    assert 1 == len(warnings)
    assert warnings[0].endswith("agent reader called tool list_files outside its allow-list")
    assert "'agent': 'reader'" in warnings[0]
    assert "'tool': 'list_files'" in warnings[0]


def test_a_call_repeated_past_the_repair_budget_fails_the_run(tmp_path):
    """The same invalid call three times in a row ends the run: ``tool.repair_budget``, exit 4,
    after the model was told twice what was wrong."""
    done = scripted_run(
        tmp_path,
        {
            "on_exhausted": "repeat_last",
            "models": {
                "planner-model": PLANNER_TURNS,
                "reader-model": [call("read_file", {"path": 5})],
            },
        },
    )

    assert 4 == done.returncode
    result = json.loads(done.stdout)
    assert ("failed", "tool.repair_budget") == (result["status"], result["code"])
    assert (
        "error[tool.repair_budget]: tool 'read_file' was called wrongly 3 times in a row "
        "(repair budget 2); last error: invalid_arguments"
    ) == result["reason"]
    reader = agent(result, "reader")
    assert 3 == reader["turns"]
    assert ["invalid_arguments"] * 2 == [output["error"] for output in tool_outputs(reader)]
    assert [OFFLINE_NOTICE] == run_lines(done.stderr)


# -- docs/faults.md#keys-and-endpoints ---------------------------------------------------------


@pytest.mark.parametrize("key", ["", "   ", "sk-abc\ndef"], ids=["empty", "blank", "newline"])
def test_a_malformed_key_is_refused_without_echoing_it(key):
    """An empty key, or one with whitespace, exits 3 with ``auth.malformed`` before anything
    connects, and the key is not repeated."""
    done = orchestrator("run", TRIP, env=environment(OPENAI_API_KEY=key))

    assert 3 == done.returncode
    assert ["error[auth.malformed]: OPENAI_API_KEY is empty or contains whitespace"] == lines(
        done.stderr
    )
    assert "" == done.stdout


def test_a_key_file_others_can_read_is_refused(tmp_path, canary_key):
    """``--api-key-file`` must be private to the user (0600): else exit 3, key not shown."""
    key_file = tmp_path / "key"
    key_file.write_text(canary_key + "\n")
    key_file.chmod(0o644)
    done = orchestrator("run", TRIP, "--api-key-file", key_file)

    assert 3 == done.returncode
    assert [
        f"error[auth.permissions]: {key_file} is readable by others (mode 644); chmod 600 it"
    ] == lines(done.stderr)
    assert canary_key not in done.stdout + done.stderr


def test_base_url_without_a_key_is_refused():
    """An endpoint without a key to present there exits 3 with ``auth.missing``."""
    done = orchestrator("run", TRIP, "--base-url", "wss://llm.example.com/v1")

    assert 3 == done.returncode
    assert [
        "error[auth.missing]: --base-url wss://llm.example.com/v1 needs a key: set "
        "OPENAI_API_KEY or pass --api-key-file"
    ] == lines(done.stderr)


def test_plain_ws_to_a_remote_host_is_refused(canary_key):
    """``ws://`` to a non-loopback host exits 2 with ``config.insecure`` unless allowed."""
    done = orchestrator(
        "run",
        TRIP,
        "--base-url",
        "ws://llm.example.com/v1/responses",
        env=environment(OPENAI_API_KEY=canary_key),
    )

    assert 2 == done.returncode
    assert [
        "error[config.insecure]: refusing ws:// to remote host llm.example.com; use wss:// or "
        "allow_insecure (--allow-insecure)"
    ] == lines(done.stderr)
    assert canary_key not in done.stderr


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        (
            "--local-ttft",
            "-1",
            "error[config.value]: latency model: time_to_first_token must be >= 0, got -1.0",
        ),
        ("--local-model", "scripted", "error[config.value]: model 'scripted' needs a script"),
    ],
    ids=["negative-latency", "script-missing"],
)
def test_bad_embedded_server_options_are_usage_errors(option, value, expected):
    """A bad ``--local-*`` option exits 2 with ``config.value``, not a traceback."""
    done = orchestrator("run", TRIP, option, value)

    assert 2 == done.returncode
    assert [expected] == lines(done.stderr)


@pytest.fixture
def served() -> Iterator[str]:
    """``orchestrator serve --port 0 --token ...`` in a subprocess; yields its URL."""
    server = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--token", "the-right-token"],
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        first = server.stdout.readline()  # ends when the server prints it, or exits
        assert first.startswith("serving ws://127.0.0.1:"), first
        yield first.split()[1]
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)


def test_a_rejected_key_exits_3_and_shows_only_its_fingerprint(served, tmp_path, canary_key):
    """The server refuses the key at the handshake (HTTP 401): exit 3 with ``auth.rejected``,
    the key shown by fingerprint only; a key file (0600) is accepted as the key's source, and
    a key that does not look like one is only a warning."""
    done = orchestrator(
        "run", TRIP, "--base-url", served, "--json", env=environment(OPENAI_API_KEY=canary_key)
    )

    assert 3 == done.returncode, done.stderr
    result = json.loads(done.stdout)
    assert ("failed", "auth.rejected", served) == (
        result["status"],
        result["code"],
        result["endpoint"],
    )
    assert (
        f"server rejected the API key (HTTP 401) for {served}; key fingerprint "
        f"sk-…{canary_key[-4:]}"
    ) == result["reason"]
    assert [] == run_lines(done.stderr)
    assert canary_key not in done.stdout
    assert canary_key[3:] not in done.stdout

    key_file = tmp_path / "key"
    key_file.write_text("not-a-key-0123456789\n")
    key_file.chmod(0o600)
    done = orchestrator("run", TRIP, "--base-url", served, "--api-key-file", key_file)

    assert 3 == done.returncode
    assert ["warning[auth.format]: key does not start with 'sk-'"] == run_lines(done.stderr)
    assert "error[auth.rejected]: server rejected the API key (HTTP 401)" in done.stdout
    assert "not-a-key-0123456789" not in done.stdout


def test_serve_refuses_an_open_bind_and_a_port_in_use(served):
    """``serve`` on a non-loopback address needs a token; a port in use is ``server.port``."""
    open_bind = orchestrator("serve", "--host", "0.0.0.0")
    port = served.rsplit(":", 1)[1].split("/")[0]
    in_use = orchestrator("serve", "--port", port, "--token", "t")

    assert 2 == open_bind.returncode
    assert [
        "error[server.auth]: binding 0.0.0.0 requires a token (--token): the server would "
        "accept anyone on the network"
    ] == lines(open_bind.stderr)
    assert 2 == in_use.returncode
    assert [f"error[server.port]: 127.0.0.1:{port} already in use"] == lines(in_use.stderr)


# -- Ctrl-C (docs/faults.md#signals-and-processes) ---------------------------------------------

SLOW_TOOLS = '''\
"""Tools that take long: one in a helper process, one that ignores cancellation."""

import sys

import trio


async def crunch(rounds: int) -> str:
    """Crunch numbers in a helper process (it takes minutes)."""
    await trio.run_process([sys.executable, "-c", "import time; time.sleep(300)"])
    return f"crunched {rounds} rounds"


async def stubborn(rounds: int) -> str:
    """Work that ignores cancellation for minutes."""
    with trio.CancelScope(shield=True):
        await trio.sleep(300)
    return f"did {rounds} rounds"
'''
# The slow tools above hold on for 300 s; a command is given this long to exit after a
# signal. A command that waited for its tool (instead of stopping it, or instead of obeying
# the second Ctrl-C) therefore misses the deadline, however loaded the machine is.
EXIT_DEADLINE = 30

SLOW_PLAN = """\
name = "slow"
goal = "Do 3 rounds"
[settings]
model = "gpt-5-mini"
[[agents]]
name = "planner"
role = "planner"
[[agents]]
name = "cruncher"
tools = ["slowtools:{tool}"]
"""


def group_members(group: int) -> list[int]:
    """Live processes in process group ``group`` (from ``/proc``)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        state, _parent, process_group = stat.rpartition(")")[2].split()[:3]
        if int(process_group) == group and state != "Z":
            members.append(int(entry))
    return members


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    """Poll ``condition`` (reading a file the command writes) for up to 30 s."""
    deadline = time.monotonic() + 30
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def trace_has(trace: Path, kind: str, text: str) -> Callable[[], bool]:
    def check() -> bool:
        if not trace.exists():
            return False
        return any(kind in line and text in line for line in trace.read_text().splitlines())

    return check


def start(tmp_path: Path, *args: object, **env: str) -> subprocess.Popen[str]:
    """A command in its own process group (like a shell job); output goes to files."""
    with (tmp_path / "stdout").open("w") as stdout, (tmp_path / "stderr").open("w") as stderr:
        return subprocess.Popen(
            [*CLI, *map(str, args)],
            cwd=tmp_path,
            env=environment(**env),
            stdout=stdout,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )


def slow_plan(tmp_path: Path, tool: str) -> Path:
    (tmp_path / "slowtools.py").write_text(SLOW_TOOLS)
    plan = tmp_path / "slow.toml"
    plan.write_text(SLOW_PLAN.replace("{tool}", tool))
    return plan


@pytest.fixture
def reaped() -> Iterator[list[subprocess.Popen[str]]]:
    """Commands a test starts; any still running at the end is killed with its group."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to find the process group")
def test_ctrl_c_stops_the_run_kills_tool_processes_and_prints_the_partial_result(tmp_path, reaped):
    """SIGINT while a tool's helper process runs: the run stops at once, the helper is
    terminated (no orphan), and the partial result says ``interrupted``; exit 130."""
    plan = slow_plan(tmp_path, "crunch")
    trace = tmp_path / "trace.jsonl"
    process = start(tmp_path, "run", plan, "--json", "--trace", trace)
    reaped.append(process)
    wait_until(trace_has(trace, "tool.started", "crunch"), "the tool call", process)
    wait_until(lambda: len(group_members(process.pid)) > 1, "the helper process", process)

    process.send_signal(signal.SIGINT)
    assert 130 == process.wait(timeout=EXIT_DEADLINE)

    assert [] == group_members(process.pid)
    stderr = (tmp_path / "stderr").read_text()
    assert "interrupted: stopping cleanly (Ctrl-C again to force)" in lines(stderr)
    result = json.loads((tmp_path / "stdout").read_text())
    assert ("interrupted", "run.interrupted") == (result["status"], result["code"])
    cruncher = agent(result, "cruncher")
    # The call was cut, not waited for: it has no output and the trace no end for it.
    assert [("function_call", "crunch")] == [
        (item["type"], item.get("name")) for item in cruncher["transcript"][1:]
    ]
    assert not trace_has(trace, "tool.finished", "crunch")()
    assert trace_has(trace, "run.finished", '"status":"interrupted"')()
    assert "Traceback" not in stderr


def working_in(directory: Path) -> list[int]:
    """Live processes whose working directory is under ``directory``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            state = Path("/proc", entry, "stat").read_text().rpartition(")")[2].split()[0]
            cwd = Path("/proc", entry, "cwd").resolve()
        except OSError:
            continue  # gone meanwhile
        if state != "Z" and cwd.is_relative_to(directory):
            found.append(int(entry))
    return found


@pytest.mark.skipif(not HAS_PROC, reason="needs /proc to see the test processes")
def test_ctrl_c_during_the_bugfix_tests_leaves_no_process_behind(tmp_path, reaped):
    """Ctrl-C as the bug fixer's tester starts the sample's test suite: exit 130 with the
    report, and no test process (they run in scratch directories under TMPDIR, in process
    groups of their own) outlives the command."""
    trace = tmp_path / "trace.jsonl"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    process = start(
        tmp_path, "run", BUGFIX, "--local-ttft", "0.2", "--trace", trace, TMPDIR=str(scratch)
    )
    reaped.append(process)
    wait_until(trace_has(trace, "tool.started", "run_tests"), "run_tests", process)

    process.send_signal(signal.SIGINT)
    assert 130 == process.wait(timeout=EXIT_DEADLINE)

    assert [] == group_members(process.pid)
    assert [] == working_in(scratch.resolve())
    report = (tmp_path / "stdout").read_text()
    assert report.startswith("interrupted  plan 'bugfix', delegate mode, embedded, ")
    assert "reason: stopped on request" in report


def test_a_second_ctrl_c_forces_the_exit(tmp_path, reaped):
    """When the clean stop cannot finish (a tool ignores cancellation), a second SIGINT exits
    at once with 130 and no report."""
    plan = slow_plan(tmp_path, "stubborn")
    trace = tmp_path / "trace.jsonl"
    stderr = tmp_path / "stderr"
    process = start(tmp_path, "run", plan, "--trace", trace)
    reaped.append(process)
    wait_until(trace_has(trace, "tool.started", "stubborn"), "the tool call", process)
    process.send_signal(signal.SIGINT)
    wait_until(lambda: "stopping cleanly" in stderr.read_text(), "the first stop", process)

    process.send_signal(signal.SIGINT)
    assert 130 == process.wait(timeout=EXIT_DEADLINE)

    assert "forced stop" in lines(stderr.read_text())
    assert "" == (tmp_path / "stdout").read_text()
    # Forced: the run never got to finish (a clean stop ends the trace with run.finished).
    assert not trace_has(trace, "run.finished", "")()


def test_an_internal_error_is_one_line_not_a_traceback(monkeypatch, capsys):
    """A bug surfaces as one redacted error[internal] line and exit 4 (docs/faults.md#bad-input)."""
    from orchestrator import cli

    def broken(args):
        raise ExceptionGroup("nursery", [ValueError("sk-secretsecretsecret1234 went wrong")])

    # build_parser() runs inside main(), so the patched handler is the one registered.
    monkeypatch.setattr(cli, "_validate_command", broken)
    assert cli.EXIT_FAILED == cli.main(["validate", "plan.toml"])
    err = capsys.readouterr().err
    assert err.startswith("error[internal]: ValueError: [REDACTED] went wrong")
    assert "Traceback" not in err
    assert "sk-secret" not in err


# -- approval of destructive tools (docs/faults.md#approvals) ----------------------------------

SHRED_TOOLS = '''\
from pathlib import Path

from actors.tools import tool


@tool(side_effect="destructive")
def shred(name: str) -> str:
    """Shred a document for good.

    Args:
        name: the document.
    """
    with Path("shredded.log").open("a") as log:
        log.write(name + "\\n")
    return f"shredded {name}"
'''

SHRED_PLAN = """\
name = "shred"
goal = "Shred the old contract"
[settings]
model = "gpt-5-mini"
[[agents]]
name = "boss"
role = "planner"
[[agents]]
name = "clerk"
description = "Shreds documents."
tools = ["shredtools:shred"]
"""


def shred_plan(tmp_path: Path) -> Path:
    (tmp_path / "shredtools.py").write_text(SHRED_TOOLS)
    plan = tmp_path / "shred.toml"
    plan.write_text(SHRED_PLAN)
    return plan


def shredded(tmp_path: Path) -> list[str]:
    log = tmp_path / "shredded.log"
    return log.read_text().splitlines() if log.exists() else []


def approvals_in(trace: Path) -> list[tuple[str, bool, str]]:
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    return [(e["tool"], e["approved"], e["by"]) for e in events if e["type"] == "tool.approval"]


def test_without_a_terminal_a_destructive_call_is_denied_and_journaled(tmp_path):
    """With nobody at a terminal to ask, a destructive call is denied by the policy: nothing
    is shredded, the trace records the refusal, and the model's output says how to allow it
    (--approve)."""
    plan, trace = shred_plan(tmp_path), tmp_path / "trace.jsonl"
    done = orchestrator("run", plan, "--json", "--trace", trace, cwd=tmp_path)

    assert 0 == done.returncode
    assert [] == shredded(tmp_path)
    assert [("shred", False, "policy")] == approvals_in(trace)
    result = json.loads(done.stdout)
    denial = tool_outputs(agent(result, "clerk"))[0]
    assert "approval_denied" == denial["error"]
    assert "--approve" in denial["message"]


def test_approve_lets_the_call_run(tmp_path):
    """--approve agent:tool lets the matching destructive call run once without asking, and
    the trace records it as approved by the policy."""
    plan, trace = shred_plan(tmp_path), tmp_path / "trace.jsonl"
    done = orchestrator("run", plan, "--approve", "clerk:shred", "--trace", trace, cwd=tmp_path)

    assert 0 == done.returncode
    assert 1 == len(shredded(tmp_path))
    assert [("shred", True, "policy")] == approvals_in(trace)


def test_bad_approve_patterns_are_usage_errors(tmp_path):
    """--approve patterns naming an unknown agent or tool, or that are not patterns at all,
    exit 2 with one error line each (and a suggestion) before anything runs."""
    plan = shred_plan(tmp_path)
    done = orchestrator(
        "run", plan, "--approve", "clark:shred", "--approve", "shread", "--approve", "a b",
        cwd=tmp_path,
    )  # fmt: skip

    assert 2 == done.returncode
    assert [
        "error[plan.unknown_agent]: --approve 'clark:shred' names unknown agent 'clark'; "
        "defined agents: boss, clerk (did you mean 'clerk'?)",
        "error[plan.tool]: --approve 'shread' names tool 'shread', which no agent lists "
        "(did you mean 'shred'?)",
        "error[plan.value]: --approve 'a b' is not a tool pattern; write 'tool' or "
        "'agent:tool' ('*' and '?' match any text)",
    ] == lines(done.stderr)
    assert [] == shredded(tmp_path)


def on_a_terminal(tmp_path: Path, plan: Path, answer: bytes | None) -> tuple[int, str]:
    """Run ``plan`` with a pseudo-terminal as stdin, stdout and stderr; answer the first
    approval question with ``answer`` (None: Ctrl-C instead). Returns the exit status and
    everything shown."""
    import pty
    import select

    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        # On a terminal an offline run is paced like a hosted model; these tests need no pace.
        [*CLI, "run", str(plan), "--pace", "instant"],
        cwd=tmp_path,
        env=environment(),
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        start_new_session=True,
    )
    os.close(secondary)
    shown, asked = b"", False
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: every writer has closed the terminal
                    break
                shown += chunk
                if not asked and b"allow?" in shown:
                    if answer is None:
                        process.send_signal(signal.SIGINT)
                    else:
                        os.write(primary, answer)
                    asked = True
            elif process.poll() is not None:
                break
        status = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]", "", shown.decode(errors="replace"))
    assert asked, text[-2000:]
    return status, text


@pytest.mark.parametrize(
    ("answer", "ran", "output"),
    [(b"y\n", 1, "shredded"), (b"\n", 0, "denied by the operator"), (b"no\n", 0, "denied")],
)
def test_on_a_terminal_the_operator_is_asked(tmp_path, answer, ran, output):
    """On a terminal the operator is asked, with the agent, the tool, its class and the
    arguments: y runs the call, an empty answer or no denies it, and the run completes either
    way."""
    status, shown = on_a_terminal(tmp_path, shred_plan(tmp_path), answer)

    assert 0 == status
    assert "agent clerk wants to call shred (destructive) with" in shown
    assert ran == len(shredded(tmp_path))
    assert output in shown


def test_ctrl_c_while_the_operator_is_asked_stops_the_run(tmp_path):
    """The question does not hold the run: Ctrl-C ends it at once, nothing is shredded."""
    status, shown = on_a_terminal(tmp_path, shred_plan(tmp_path), None)

    assert 130 == status
    assert "interrupted  plan 'shred'" in shown
    assert [] == shredded(tmp_path)


# -- the first hour: what a new user sees, reads and runs (issue 13) ---------------------------

UNTYPED_TOOLS = '''\
def lookup(city):
    """Look a city up."""
    return city


def boom(city: str) -> str:
    """Look a city up, and fail."""
    raise ValueError(f"no data for {city}")
'''

UNTYPED_PLAN = """\
name = "untyped"
goal = "Look Lisbon up"

[settings]
model = "gpt-5-mini"

[[agents]]
name = "planner"
role = "planner"

[[agents]]
name = "writer"
tools = ["citytools:{tool}"]
"""


def city_plan(tmp_path: Path, tool: str, model: str = "gpt-5-mini") -> Path:
    (tmp_path / "citytools.py").write_text(UNTYPED_TOOLS)
    plan = tmp_path / "city.toml"
    plan.write_text(UNTYPED_PLAN.replace("{tool}", tool).replace("gpt-5-mini", model))
    return plan


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_tool_without_type_hints_is_a_plan_error_naming_file_line_tool_and_parameter(
    tmp_path, command
):
    """``validate`` builds every tool's schema: a parameter without a type hint is
    ``error[plan.tool]`` with the file and line, the tool, the parameter and what to write
    instead; exit 2, and ``run`` refuses it the same way before anything starts."""
    city_plan(tmp_path, "lookup")
    done = orchestrator(command, "city.toml", cwd=tmp_path)

    assert 2 == done.returncode
    assert [
        "error[plan.tool]: city.toml:13: $.agents[1].tools[0]: 'citytools:lookup': tool "
        "'lookup': parameter 'city' has no type hint; annotate it, e.g. `city: str`; use a "
        "type msgspec describes: str, int, float, bool, list[...], dict[str, ...], "
        "Literal[...], an Enum, a msgspec.Struct or dataclass, datetime.date or pathlib.Path"
    ] == lines(done.stderr)
    assert "" == done.stdout


def test_a_tool_that_raises_shows_its_traceback_with_v(tmp_path):
    """A tool's exception is one warning line by default; with ``-v`` its traceback too."""
    city_plan(tmp_path, "boom")
    quiet = orchestrator("run", "city.toml", "--json", cwd=tmp_path)
    verbose = orchestrator("run", "city.toml", "--json", "-v", cwd=tmp_path)

    assert (0, 0) == (quiet.returncode, verbose.returncode)
    assert "tool boom raised ValueError (-v shows the traceback)" in quiet.stderr
    assert "Traceback" not in quiet.stderr
    assert "traceback of tool boom:" in verbose.stderr
    assert "Traceback (most recent call last):" in verbose.stderr
    assert 'raise ValueError(f"no data for {city}")' in verbose.stderr
    assert "ValueError: no data for Lisbon" in verbose.stderr


def test_an_unknown_model_is_a_warning_offline(tmp_path):
    """Offline the embedded server answers whatever the model is called, so a model name the
    service does not offer is a warning (with the likely meant one), and the run goes on."""
    city_plan(tmp_path, "boom", model="gpt-5-mimi")
    done = orchestrator("run", "city.toml", "--json", cwd=tmp_path)

    assert 0 == done.returncode
    assert [
        OFFLINE_NOTICE,
        "warning[model.unknown]: model 'gpt-5-mimi' (agents 'planner', 'writer') is not a model "
        "orchestrator knows (did you mean 'gpt-5-mini'?); offline the embedded server's "
        "generic model answers anyway; a live run would stop with error[model.not_found] if "
        "the service has no such model",
    ] == lines(done.stderr)[:2]


MODEL_NOT_FOUND_SCRIPT = """\
on_exhausted: repeat_last
turns:
  - error: {code: model_not_found, status: 404, message: "The model does not exist."}
"""


def test_an_unknown_model_live_is_error_model_not_found_exit_3(tmp_path, canary_key):
    """Live, the service's ``model_not_found`` (here: the embedded server serving as the live
    endpoint, answering with that error) ends the run at its first turn: exit 3, one
    ``error[model.not_found]`` line naming the agent and the model, no traceback, nothing
    restarted."""
    (tmp_path / "script.yaml").write_text(MODEL_NOT_FOUND_SCRIPT)
    server = subprocess.Popen(
        [*CLI, "serve", "--port", "0", "--token", canary_key, "--model", "scripted",
         "--script", "script.yaml"],
        cwd=tmp_path, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        url = server.stdout.readline().split()[1]
        plan = city_plan(tmp_path, "boom", model="gpt-5-mimi")
        env = environment(OPENAI_API_KEY=canary_key)
        wide = {**env, "COLUMNS": "400"}  # the error line is not wrapped
        done = orchestrator("run", plan, "--base-url", url, cwd=tmp_path, env=wide)
        as_json = orchestrator("run", plan, "--base-url", url, "--json", cwd=tmp_path, env=env)
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=10)

    assert 3 == done.returncode
    report = lines(done.stdout)
    assert report[0].startswith("failed  plan 'untyped', delegate mode, ws://127.0.0.1:")
    assert (
        "error[model.not_found]: agent 'planner' uses model 'gpt-5-mimi', which the service "
        "does not have or this key may not use (did you mean 'gpt-5-mini'?); change the "
        "agent's model (or settings.model) in the plan"
    ) == report[1]
    assert "Traceback" not in done.stderr
    assert "crashed" not in done.stderr
    result = json.loads(as_json.stdout)
    assert (3, "failed", "model.not_found") == (
        as_json.returncode,
        result["status"],
        result["code"],
    )
    assert [0, 0] == [a["restarts"] for a in result["agents"][:2]]
    assert canary_key not in done.stdout + done.stderr + as_json.stdout


def test_the_trace_can_rebuild_a_run(tmp_path):
    """The trace starts with ``run.started`` and ends with ``run.finished``; every line has
    wall-clock time in ISO 8601 beside trio's; tool calls carry their arguments and outputs,
    turns their text, delegations their task (docs/trace.md)."""
    trace = tmp_path / "trace.jsonl"
    done = orchestrator("run", TRIP, "--json", "--trace", trace)

    assert 0 == done.returncode
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert ("run.started", "run.finished") == (events[0]["type"], events[-1]["type"])
    assert ("trip", "delegate", 4, 40) == (
        events[0]["plan"],
        events[0]["mode"],
        len(events[0]["agents"]),
        events[0]["max_turns"],
    )
    assert ("completed", 8) == (events[-1]["status"], events[-1]["turns"])
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["at"]) for e in events)
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    started = {e["call_id"]: e for e in events if e["type"] == "tool.started"}
    finished = {e["call_id"]: e for e in events if e["type"] == "tool.finished"}
    flights = next(e for e in started.values() if e["tool"] == "search_flights")
    assert "Lisbon" in json.loads(flights["arguments"]).values()
    assert "TO7602" in finished[flights["call_id"]]["output"]
    texts = {e["agent"]: e["text"] for e in events if e["type"] == "turn.finished" and e["text"]}
    assert {"flights", "hotels", "activities"} == set(texts)  # each worker's answer
    delegations = [e for e in events if e["type"] == "delegation.started"]
    assert {"flights", "hotels", "activities"} == {e["worker"] for e in delegations}
    assert all("Lisbon" in e["task"] for e in delegations)
    result = json.loads(done.stdout)
    assert result["answer"] == events[-1]["answer"]  # the planner's finish(answer)


def test_the_pace_is_realistic_when_watching_and_instant_otherwise():
    """Offline runs shown on a terminal go at a hosted model's pace unless ``--pace instant``;
    with ``--json`` or no terminal they are instant; ``--local-*`` values win."""
    from orchestrator import cli

    def latency(*argv: str, watching: bool) -> tuple[float, float | None]:
        args = cli.build_parser().parse_args(["run", "plan.toml", *argv])
        pace = args.pace or ("realistic" if watching else "instant")
        model = cli._server_options(args, pace)["latency"]
        return model.time_to_first_token, model.tokens_per_second

    assert (0.5, 100.0) == latency(watching=True)
    assert (0.0, None) == latency(watching=False)
    assert (0.0, None) == latency("--pace", "instant", watching=True)
    assert (0.5, 100.0) == latency("--pace", "realistic", watching=False)
    assert (2.0, 100.0) == latency("--local-ttft", "2", watching=True)


TWO_AGENTS = """\
name = "pair"
goal = "Look Lisbon up"
[settings]
model = "gpt-5-mini"
[[agents]]
name = "boss"
role = "planner"
[[agents]]
name = "scout"
description = "Looks cities up."
tools = ["tests.plans.fixture_tools:search"]
"""


def test_on_a_terminal_the_live_view_runs_at_a_realistic_pace_and_one_report_remains(tmp_path):
    """What a person sees: on a terminal an offline run says it goes at a realistic pace,
    shows the live view (elapsed time, delegations, agents with what they wait for), and
    ends with one report: the live table leaves the screen, so one agents' table remains."""
    import pty
    import select

    plan = tmp_path / "pair.toml"
    plan.write_text(TWO_AGENTS)
    primary, secondary = pty.openpty()
    os.set_blocking(primary, False)
    process = subprocess.Popen(
        [*CLI, "run", str(plan)], cwd=ROOT, env=environment(COLUMNS="120", LINES="40"),
        stdin=secondary, stdout=secondary, stderr=secondary, start_new_session=True,
    )  # fmt: skip
    os.close(secondary)
    shown = b""
    try:
        while True:
            ready, _, _ = select.select([primary], [], [], 0.1)
            if ready:
                try:
                    shown += os.read(primary, 65536)
                except OSError:  # EIO: the command exited and closed the terminal
                    break
            elif process.poll() is not None:
                break
        assert 0 == process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\r", "", shown.decode(errors="replace"))

    assert "running on the embedded server, realistic pace (or --pace instant)" in text
    assert "pair · delegate mode · embedded server, realistic pace · elapsed" in text
    assert "waiting on 1 of 1: scout" in text
    assert 1 == text.count("completed  plan 'pair', delegate mode, embedded,")
    assert 1 == len(re.findall(r"^agent +role +turns +tools", text, re.MULTILINE))


def test_a_run_without_a_goal_is_the_users_mistake_not_a_bug(tmp_path):
    """A plan without steps needs a goal: without one in the plan or ``--goal`` the run is
    refused with ``error[plan.goal]`` and exit 2, before anything starts."""
    plan = tmp_path / "pair.toml"
    plan.write_text(TWO_AGENTS.replace('goal = "Look Lisbon up"\n', ""))
    done = orchestrator("run", plan)

    assert 2 == done.returncode
    assert [
        "error[plan.goal]: plan 'pair' has no goal: pass one with --goal or set 'goal' in the plan"
    ] == lines(done.stderr)


def test_run_with_transport_http_posts_every_turn():
    """``--transport http`` runs the plan over HTTP: every agent's report says so, with one
    request per turn and no socket (the printed report too); a bad value is refused by the
    parser."""
    done = orchestrator("run", TRIP, "--json", "--no-journal", "--transport", "http")
    assert 0 == done.returncode, done.stderr
    result = json.loads(done.stdout)
    assert "completed" == result["status"]
    connections = [agent["connection"] for agent in result["agents"]]
    assert {"http"} == {c["transport"] for c in connections}
    assert {0} == {c["sockets_opened"] for c in connections}
    assert result["usage"]["turns"] == sum(c["http_requests"] for c in connections)
    report = orchestrator("run", TRIP, "--no-journal", "--transport", "http")
    assert 0 == report.returncode, report.stderr
    assert "http, 2 requests" in report.stdout
    refused = orchestrator("run", TRIP, "--transport", "smoke-signals")
    assert 2 == refused.returncode
    assert "--transport" in refused.stderr
