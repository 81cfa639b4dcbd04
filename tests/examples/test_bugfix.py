"""The bug fixer example: reading, testing and patching the bundled package, never changing it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import TYPE_CHECKING

import pytest
import trio

from actors.tools import PathOutsideWorkspace, ToolSpec
from orchestrator.core.protocol.events import FunctionCallItem
from orchestrator.core.server.models import arguments_for
from orchestrator.examples.bugfix import tools
from plans import load_plan

from .offline import registry_for, run_planner
from .test_plans import PLANS

if TYPE_CHECKING:
    import subprocess

PLAN = load_plan(PLANS["bugfix"])
GOAL = PLAN.goal or ""
BUGGY = "(ordered[middle] + ordered[middle + 1]) / 2"
FIXED = "(ordered[middle - 1] + ordered[middle]) / 2"


def snapshot() -> dict[str, str]:
    """Every file under the bundled package (caches included) with its hash."""
    return {
        path.relative_to(tools.SAMPLE).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(tools.SAMPLE.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def untouched():
    """Fails the test if it changed anything in the bundled package."""
    before = snapshot()
    yield
    assert before == snapshot()


async def run_suite(root) -> subprocess.CompletedProcess[bytes]:
    """The bundled suite's own command, run on the copy at ``root``."""
    with trio.fail_after(60):
        return await trio.run_process(
            tools.TEST_COMMAND, cwd=root, capture_stdout=True, capture_stderr=True, check=False
        )


# -- reading -----------------------------------------------------------------------------------


def test_list_files_shows_the_package_without_caches():
    """Sources, tests and the README; no __pycache__ or dotfiles."""
    files = tools.list_files()["files"]
    assert {"README.md", "calc/__init__.py", "calc/stats.py", "calc/units.py"} <= set(files)
    assert {"calc/tests/test_stats.py", "calc/tests/test_units.py"} <= set(files)
    assert not [f for f in files if "__pycache__" in f or f.startswith(".")]


def test_read_file_by_path():
    """A relative path reads the file, whole."""
    result = tools.read_file("calc/stats.py")
    assert "calc/stats.py" == result["path"]
    assert (tools.SAMPLE / "calc" / "stats.py").read_text() == result["content"]
    assert BUGGY in result["content"]


def test_read_file_accepts_a_sentence_that_mentions_a_file():
    """Models (and the offline generic model) sometimes pass the task text as the path."""
    assert "calc/stats.py" == tools.read_file(GOAL)["path"]
    assert "calc/units.py" == tools.read_file("please show ./calc/units.py")["path"]


def test_read_file_not_found_lists_the_files():
    """A missing file is a result with the file list and the closest name, not an error."""
    result = tools.read_file("calc/stat.py")
    assert "not_found" == result["error"]
    assert "calc/stats.py" == result["did_you_mean"]
    assert "calc/stats.py" in result["files"]


@pytest.mark.parametrize(
    "path",
    [
        "../tools.py",
        "calc/../../plan.yaml",
        "/etc/passwd",
        str(tools.SAMPLE.parent / "tools.py"),
        "calc/../../../../../../etc/passwd",
        "bad\x00path",
    ],
)
def test_paths_outside_the_package_are_refused(path):
    """read_file and propose_patch refuse ../ and absolute paths that leave the package."""
    with pytest.raises(PathOutsideWorkspace):
        tools.read_file(path)


async def test_escapes_become_path_outside_workspace_for_the_model():
    """Through the executor, an escape is a path_outside_workspace output the model can read."""
    executor = registry_for(PLAN).executor("patcher")
    for name, arguments in [
        ("read_file", {"path": "../tools.py"}),
        ("propose_patch", {"path": "/etc/passwd", "old": "root", "new": "toor"}),
    ]:
        call = FunctionCallItem(call_id=f"call_{name}", name=name, arguments=json.dumps(arguments))
        outcome = await executor.run(call)
        assert "path_outside_workspace" == outcome.error
        assert "path_outside_workspace" == json.loads(str(outcome.item.output))["error"]


# -- testing -----------------------------------------------------------------------------------


async def test_run_tests_reports_the_failures_and_where(untouched):
    """Thirteen tests, one failure and one error, both traced to the buggy line."""
    report = await tools.run_tests()
    assert {"ok": False, "ran": 13, "passed": 11, "failed": 1, "errors": 1, "skipped": 0} == {
        key: report[key] for key in ("ok", "ran", "passed", "failed", "errors", "skipped")
    }
    failures = {f["test"].rpartition(".")[2]: f for f in report["failures"]}
    assert {"test_even_count", "test_two_values"} == set(failures)
    assert "AssertionError: 2.5 != 3.5" == failures["test_even_count"]["error"]
    assert "IndexError: list index out of range" == failures["test_two_values"]["error"]
    assert failures["test_two_values"]["where"].endswith(BUGGY)
    assert failures["test_two_values"]["where"].startswith("calc/stats.py:")


def test_test_process_gets_no_secrets(monkeypatch):
    """The test subprocess's environment is an allow-list: the API key never reaches it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key-0000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    environment = tools._test_environment()
    assert "OPENAI_API_KEY" not in environment
    assert "AWS_SECRET_ACCESS_KEY" not in environment
    assert "1" == environment["PYTHONDONTWRITEBYTECODE"]


async def test_run_tests_stops_at_its_deadline(monkeypatch):
    """A suite that hangs is stopped; the report says it timed out."""
    monkeypatch.setattr(tools, "TEST_DEADLINE", 0.3)
    monkeypatch.setattr(
        tools, "TEST_COMMAND", (sys.executable, "-c", "import time; time.sleep(30)")
    )
    report = await tools.run_tests()
    assert report["timed_out"]
    assert not report["ok"]


def test_a_runner_that_breaks_reports_its_output(tmp_path):
    """When unittest cannot even start, the report carries the tail of its output."""
    output = "Traceback (most recent call last):\nImportError: cannot import name 'median'\n"
    report = tools.parse_unittest_output(output, tmp_path)
    assert not report["ok"]
    assert 0 == report["ran"]
    assert "ImportError" in report["output"]


# -- patching ----------------------------------------------------------------------------------


async def test_the_fix_is_a_diff_that_makes_the_suite_pass(tmp_path, untouched):
    """The suite fails before the patch and passes once propose_patch's diff is applied to a
    copy, with git apply; propose_patch saw the same and wrote nothing to the package."""
    proposal = await tools.propose_patch("calc/stats.py", BUGGY, FIXED)
    assert proposal["ok"]
    assert proposal["fixed"]
    assert 13 == proposal["tests"]["passed"]
    diff = proposal["diff"]
    assert diff.startswith("--- a/calc/stats.py\n+++ b/calc/stats.py\n")
    assert f"-    return {BUGGY}\n+    return {FIXED}\n" in diff

    copy = tmp_path / "calc-sample"
    shutil.copytree(tools.SAMPLE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert 1 == (await run_suite(copy)).returncode
    (tmp_path / "fix.diff").write_text(diff)
    await trio.run_process(
        ["git", "apply", "--verbose", str(tmp_path / "fix.diff")],
        cwd=copy,
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path)},
    )
    after = await run_suite(copy)
    assert 0 == after.returncode, after.stderr
    assert b"Ran 13 tests" in after.stderr


@pytest.mark.parametrize(
    ("path", "old", "new", "error"),
    [
        ("calc/stats.py", "ordered[middle]", "x", "old_not_unique"),
        ("calc/stats.py", "return (ordered[middle] + ordered[middle+1]) / 2", "x", "old_not_found"),
        ("calc/stats.py", "return ordered[middle]\n", "return ordered[middle\n", "syntax_error"),
        ("calc/stats.py", BUGGY, BUGGY, "no_change"),
        ("calc/stats.py", "", "x", "empty_old"),
        ("calc/nothing.py", BUGGY, FIXED, "not_found"),
    ],
)
async def test_bad_proposals_are_refused_with_a_reason(path, old, new, error, untouched):
    """Each refusal names its reason; no tests run and nothing is written."""
    proposal = await tools.propose_patch(path, old, new)
    assert not proposal["ok"]
    assert error == proposal["error"]


async def test_a_near_miss_gets_the_closest_line():
    """When old is not found, the closest line of the file helps the model copy it exactly."""
    proposal = await tools.propose_patch(
        "calc/stats.py", "return (ordered[middle] + ordered[middle+1]) / 2", ""
    )
    assert f"    return {BUGGY}" == proposal["closest_line"]


async def test_a_wrong_fix_reports_the_tests_that_still_fail(untouched):
    """A patch that parses but is wrong comes back with fixed=False and the failures."""
    proposal = await tools.propose_patch("calc/stats.py", BUGGY, "ordered[middle] / 2")
    assert proposal["ok"]
    assert not proposal["fixed"]
    assert 0 < proposal["tests"]["failed"] + proposal["tests"]["errors"]


# -- offline -----------------------------------------------------------------------------------


def test_generic_model_arguments_from_the_goal():
    """Offline, run_tests gets no arguments and read_file the goal, which names calc/stats.py."""
    registry = registry_for(PLAN)
    run_tests = registry.get("run_tests")
    read_file = registry.get("read_file")
    assert isinstance(run_tests, ToolSpec)
    assert isinstance(read_file, ToolSpec)
    assert {} == json.loads(arguments_for(run_tests.to_wire(), GOAL))
    assert {"path": GOAL} == json.loads(arguments_for(read_file.to_wire(), GOAL))


async def test_offline_run_reads_tests_and_refuses_the_guess(untouched):
    """The reader shows stats.py, the tester the failures; the generic model's patch (the
    goal text as the snippet) is refused with a hint, and the planner finishes."""
    run = await run_planner(PLAN, GOAL)
    assert {"reader", "tester", "patcher"} == set(run.workers)
    assert "calc/stats.py" == run.workers["reader"].outputs["read_file"]["path"]
    assert 1 == run.workers["tester"].outputs["run_tests"]["failed"]
    refused = run.workers["patcher"].outputs["propose_patch"]
    assert {"ok": False, "error": "old_not_found"} == {k: refused[k] for k in ("ok", "error")}
    assert "\ntester:" in run.answer
