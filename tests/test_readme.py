"""Every code block of the documentation runs, so none can rot (issue 13, item 7).

Each fenced block of README.md, orchestrator/examples/README.md and docs/*.md is one test, found by
reading the files (a block someone adds is a new test):

* ``python``: run as a script in a fresh interpreter, offline (no key: the embedded server);
* ``sh``: each ``orchestrator ...`` line runs as ``python -m orchestrator ...``, offline; any
  other command fails the test unless the block is marked;
* ``toml``, ``yaml``, ``json``: a plan, loaded and validated with every tool built; a block
  marked ``<!-- snippet: script -->`` is a scripted-model script, ``<!-- snippet: faults -->``
  a fault list, and each is loaded as the embedded server would;
* anything else (output, text) must be marked.

A block that cannot run is marked on the line before it with ``<!-- no-run: reason -->``.
Blocks run in a scratch directory that sees the repository's ``orchestrator/examples/`` (the
paths the docs use), so what they write stays there.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", ROOT / "orchestrator" / "examples" / "README.md"]
DOCUMENTS += sorted((ROOT / "docs").glob("*.md"))
TIMEOUT = 60

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[\w+-]*)")
_MARK = re.compile(r"<!--\s*(?P<kind>no-run|snippet):\s*(?P<value>.*?)\s*-->")


@attrs.frozen
class Block:
    document: Path
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    mark: tuple[str, str] | None  # ("no-run", reason) or ("snippet", kind)

    @property
    def name(self) -> str:
        return f"{self.document.relative_to(ROOT)}:{self.line}"


def blocks_of(document: Path) -> list[Block]:
    """The fenced code blocks of ``document``, dedented by their fence's indentation."""
    lines = document.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body: list[str] = []
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        previous = next((line for line in reversed(lines[:index]) if line.strip()), "")
        mark = _MARK.search(previous)
        found.append(
            Block(
                document=document,
                line=index + 1,
                language=opening["info"].lower(),
                text="\n".join(body) + "\n",
                mark=(mark["kind"], mark["value"]) if mark else None,
            )
        )
        index = end + 1
    return found


BLOCKS = [block for document in DOCUMENTS for block in blocks_of(document)]


def environment(cwd: Path) -> dict[str, str]:
    """Offline (no key), our packages importable, wide output, a job store of the block's
    own (a snippet that resumes jobs sees only its own)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "200"
    env["ORCHESTRATOR_STORE"] = str(cwd / "jobs.db")
    return env


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A working directory in which the docs' relative paths (``orchestrator/examples/...``)
    resolve."""
    (tmp_path / "orchestrator").mkdir()
    (tmp_path / "orchestrator" / "examples").symlink_to(
        ROOT / "orchestrator" / "examples", target_is_directory=True
    )
    return tmp_path


def run_python(block: Block, cwd: Path) -> None:
    script = cwd / "snippet.py"
    script.write_text(block.text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=cwd,
        env=environment(cwd),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert 0 == done.returncode, f"{block.name}: exit {done.returncode}\n{done.stderr[-3000:]}"


def run_shell(block: Block, cwd: Path) -> None:
    commands = [shlex.split(line, comments=True) for line in block.text.splitlines()]
    commands = [words for words in commands if words]
    assert commands, f"{block.name}: an empty shell block"
    for words in commands:
        assert "orchestrator" == words[0], (
            f"{block.name}: cannot run {words[0]!r}; mark the block <!-- no-run: reason -->"
        )
        done = subprocess.run(
            [sys.executable, "-m", "orchestrator", *words[1:]],
            cwd=cwd,
            env=environment(cwd),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
        assert 0 == done.returncode, (
            f"{block.name}: {' '.join(words)}: exit {done.returncode}\n{done.stderr[-3000:]}"
        )


def check_plan_block(block: Block, cwd: Path) -> None:
    from actors.tools import check_definition
    from plans import check_plan_file

    path = cwd / f"plan.{block.language}"
    path.write_text(block.text, encoding="utf-8")
    report = check_plan_file(path, check_tool=check_definition)
    assert [] == [str(issue) for issue in report.errors], block.name


def check_script_block(block: Block) -> None:
    import msgspec
    import yaml

    from orchestrator.core.server import LocalServer, ServerConfig

    data = (
        yaml.safe_load(block.text) if block.language == "yaml" else msgspec.json.decode(block.text)
    )
    LocalServer.from_config(ServerConfig(model="scripted", script=data))


def check_faults_block(block: Block) -> None:
    import msgspec

    from orchestrator.core.server import Fault

    faults = msgspec.json.decode(block.text.encode(), type=list[Fault])
    assert faults, block.name


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_every_code_block_of_the_docs_runs(block: Block, scratch: Path):
    """The block runs (or loads and validates) as the documentation says, offline."""
    if block.mark is not None and block.mark[0] == "no-run":
        assert block.mark[1], f"{block.name}: say why the block cannot run"
        pytest.skip(f"no-run: {block.mark[1]}")
    snippet = block.mark[1] if block.mark is not None else None
    if block.language == "python":
        run_python(block, scratch)
    elif block.language in ("sh", "shell", "bash", "console"):
        run_shell(block, scratch)
    elif snippet == "script":
        check_script_block(block)
    elif snippet == "faults":
        check_faults_block(block)
    elif block.language in ("toml", "yaml", "json") and snippet is None:
        check_plan_block(block, scratch)
    else:
        pytest.fail(
            f"{block.name}: a {block.language or 'plain'} block (snippet {snippet!r}) cannot be "
            "run; mark it <!-- no-run: reason --> or give it a language"
        )


def test_the_docs_have_blocks_to_check():
    """The parser sees the blocks (a broken parser would make the test above vacuous)."""
    readme = [block for block in BLOCKS if block.document.name == "README.md"]
    assert len(readme) >= 10
    assert {"python", "sh", "toml"} <= {block.language for block in readme}
    indented = [b for b in BLOCKS if "ApprovalDecision" in b.text and b.language == "python"]
    assert indented, "the block indented in a list item is found"
    assert indented[0].text.startswith("import trio\n"), "and dedented"
