"""The project's own documentation holds together: links between its pages resolve, the tests
it names exist, and ``tools/rewrite_refs.py`` maps the old reference documents' sections to
headings that exist, rewriting each reference once and for all."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@cache
def anchors(page: Path) -> frozenset[str]:
    """Every anchor of a Markdown page (a repeated heading gets ``-1``, ``-2``...)."""
    found: list[str] = []
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        match = None if fenced else re.match(r"#{1,6} (.+)", line)
        if match:
            anchor = slug(match[1])
            count = found.count(anchor) + sum(a.startswith(anchor + "-") for a in found)
            found.append(f"{anchor}-{count}" if anchor in found else anchor)
    return frozenset(found)


@cache
def rewriter() -> ModuleType:
    """tools/rewrite_refs.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("rewrite_refs", ROOT / "tools/rewrite_refs.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rewrite_refs"] = module
    spec.loader.exec_module(module)
    return module


def test_slugs_are_githubs():
    """The anchor rule the checks below rely on, on headings of these pages."""
    assert "the-embedded-server-orchestrator-serve" == slug(
        "The embedded server: `orchestrator serve`"
    )
    assert "frames-sizes-and-keepalive" == slug("Frames, sizes and keepalive")
    assert "warm-ups" == slug("Warm-ups")
    assert {"in-one-page", "event-order-rules"} <= anchors(DOCS / "protocol.md")


def test_links_between_the_pages_resolve():
    """Every relative Markdown link of the docs and the README names a file that exists and,
    when it has one, an anchor of that file."""
    broken = []
    for page in [*PAGES, ROOT / "README.md"]:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert [] == broken


def test_the_tests_the_docs_name_exist():
    """Each ``tests/...py::name`` a page cites is a test function or class (or a test case
    bound to a name) of that file, so a guarantee never points at a test that was renamed or
    removed."""
    missing = []
    for page in PAGES:
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", page.read_text("utf-8")):
            file = ROOT / path
            if not file.exists():
                missing.append(f"{page.name}: {path}")
                continue
            names = set()
            for node in ast.parse(file.read_text("utf-8")).body:
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.Assign):  # TestMachine = Machine.TestCase
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            if name not in names:
                missing.append(f"{page.name}: {path}::{name}")
    assert [] == missing


def _mapped_links() -> list[str]:
    module = rewriter()
    links = [
        module.link(page, anchor)
        for table in (module.SPEC, module.MUST, module.RELIABILITY, module.RANGES, module.DESIGN)
        for page, anchor in table.values()
    ]
    for _scope, _pattern, replacement in module.PHRASES:
        links += re.findall(r"docs/[\w.-]+\.md(?:#[\w-]+)?", replacement)
    return links


@pytest.mark.parametrize("target", sorted(set(_mapped_links())))
def test_every_mapping_target_is_a_heading(target):
    """Each page and anchor the rewrite can produce exists in docs/."""
    path, _, anchor = target.partition("#")
    page = ROOT / path
    assert page.exists()
    assert not anchor or anchor in anchors(page)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("(spec 5.5)", "(docs/protocol.md#event-order-rules)"),
        ("(spec 5.5 item 7)", "(docs/protocol.md#event-order-rules, rule 7)"),
        ("(spec 5.5.6)", "(docs/protocol.md#event-order-rules, rule 6)"),
        ("Spec 3.1 [LOCAL]:", "docs/protocol.md#connection-age (the embedded server's choice):"),
        (
            "(spec 5.3 to 5.6, 6.1)",
            "(docs/protocol.md#server-events, docs/protocol.md#the-error-event)",
        ),
        ("(spec 2, 3, 5, 6, 7, 10)", "(docs/protocol.md)"),
        ("(spec 2.4, 10.9)", "(docs/protocol.md#frames-sizes-and-keepalive)"),
        ("(spec 2, section 10 MUST 1)", "(docs/protocol.md#handshake)"),
        ("(RELIABILITY T1-T14)", "(docs/recovery.md#the-matrix)"),
        ("(RELIABILITY P1, G2)", "(docs/faults.md#crash-points)"),
        ("(RELIABILITY 3.4 rows 3, 7, 8)", "(docs/faults.md#clients-of-the-embedded-server)"),
        ("(RELIABILITY 3.2, last row)", "(docs/faults.md#approvals)"),
        ("T1: a TCP abort", "docs/recovery.md#lost-sockets: a TCP abort"),
        ("(DESIGN 6)", "(docs/architecture.md#delegation-and-steps)"),
        ("MUST 10: with a seed", "docs/protocol.md#determinism-and-latency: with a seed"),
        ("ordinary text: T-shirts, P.S., G 1, 1.5 MiB, the specs", None),
    ],
)
def test_references_are_rewritten_to_their_page_and_anchor(old, new):
    """Each form of reference becomes the link that says it now (each link once); text that
    only resembles a reference is left alone (``None``: unchanged)."""
    expected = old if new is None else new
    assert expected == rewriter().rewrite_text(old, "orchestrator/x.py")


def test_a_docstring_that_opens_with_a_section_number_is_rewritten():
    """A docstring starting with a bare section number of the wire contract gets its link."""
    old = '"""7.2 row 4 / MUST 5: stored responses outlive their socket."""'
    assert (
        '"""docs/protocol.md#continuing-a-chain, row 4 / '
        'docs/protocol.md#the-connection-local-cache: stored responses outlive their socket."""'
    ) == rewriter().rewrite_text(old, "tests/x.py", docstring=True)


def test_rewriting_wraps_long_lines_and_is_idempotent():
    """A comment and a docstring that grow past 100 characters are wrapped inside their own
    block, nothing else changes, and a second rewrite changes nothing."""
    source = (
        "def f():\n"
        '    """Recovery after loss, by replays of the whole transcript (RELIABILITY T1, T6).\n'
        "\n"
        "    More.\n"
        '    """\n'
        "    x = 1  # the connection-scoped errors carry no stream_id at all here (spec 6.1, 5.1)\n"
        "    return x\n"
    )
    module = rewriter()
    new, changes = module.rewrite_python(source, "orchestrator/x.py")
    assert 2 == len(changes)
    assert all(len(line) <= module.LIMIT for line in new.splitlines())
    assert [] == module.leftovers(new, Path("x.py"))
    compile(new, "x.py", "exec")
    assert new.splitlines()[-1] == "    return x"
    assert (new, []) == module.rewrite_python(new, "orchestrator/x.py")


def test_code_and_tests_cite_docs_not_the_old_reference_documents():
    """No comment or string of the code, the tests or the benchmarks cites the old reference
    documents (spec sections, the reliability catalogue, the design notes): what they said
    lives in docs/ now, and ``python tools/rewrite_refs.py`` rewrites any a merge brings back."""
    module = rewriter()
    left = {}
    for path in module.files():
        found = module.leftovers(path.read_text("utf-8"), path)
        if found:
            left[path.relative_to(ROOT).as_posix()] = found
    assert {} == left


def test_links_from_code_and_tests_to_docs_resolve():
    """Every ``docs/PAGE.md#anchor`` the code, the tests or the benchmarks name is a page of
    docs/ and a heading of that page."""
    module = rewriter()
    broken = []
    for path in module.files():
        if path.suffix != ".py":
            continue
        for page, anchor in re.findall(
            r"docs/([\w.-]+\.md)(?:#([\w-]+))?", path.read_text("utf-8")
        ):
            target = DOCS / page
            if not target.exists() or (anchor and anchor not in anchors(target)):
                broken.append(f"{path.relative_to(ROOT)}: docs/{page}#{anchor}")
    assert [] == broken
