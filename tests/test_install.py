"""The development install (``make``) imports our packages, not a folder of the same name in
the directory a program runs from (issue 10, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = """\
import orchestrator
import orchestrator.runner
import plans
from plans import Plan

print(plans.__file__)
"""


@pytest.mark.parametrize("how", ["script", "-c"])
def test_a_program_next_to_its_own_plans_folder_imports_ours(tmp_path, how):
    """A program run from a directory holding a ``plans/`` folder of plan files (a namespace
    package to Python) imports our ``plans``, as a script or with ``-c`` (sys.path[0] is the
    directory either way)."""
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "team.toml").write_text('name = "team"\n')
    (tmp_path / "main.py").write_text(PROGRAM)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the install, only
    command = ["main.py"] if how == "script" else ["-c", PROGRAM]

    done = subprocess.run(
        [sys.executable, *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert 0 == done.returncode, done.stderr
    imported = Path(done.stdout.strip())
    assert ("plans", "__init__.py") == imported.parts[-2:]
    assert not imported.is_relative_to(tmp_path)
