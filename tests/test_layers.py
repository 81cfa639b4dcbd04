"""Layers run one way (docs/architecture.md): no module imports a layer above its own.

Layers, bottom up: the leaves anyone may import (``orchestrator.errors``,
``orchestrator.core.redaction``, ``orchestrator.core.rules``: they import nothing of ours);
``plans`` (the plan model: the leaves only); the runtime core ``orchestrator.core``;
``actors`` (on the core); the top of ``orchestrator`` (``runner``, ``cli``, ``jobs``,
``display``, ``trace``, ``testing``, ``lowlevel``, ``examples``, the package itself), on
everything below. Imports are read from the source (``ast``), type-checking-only ones
included: a signature that names a higher layer's type is a dependency too.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEAVES = ("orchestrator.errors", "orchestrator.core.redaction", "orchestrator.core.rules")


def layer(module: str) -> int:
    if module in LEAVES or module.startswith(tuple(f"{leaf}." for leaf in LEAVES)):
        return 0
    if module == "plans" or module.startswith("plans."):
        return 1
    if module == "orchestrator.core" or module.startswith("orchestrator.core."):
        return 2
    if module == "actors" or module.startswith("actors."):
        return 3
    return 4  # orchestrator and its top modules


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
    return {name for name in found if name.split(".")[0] in ("orchestrator", "actors", "plans")}


def test_no_module_imports_a_higher_layer():
    """Every import of every module of orchestrator, actors and plans points down or level."""
    offences = []
    for package in ("orchestrator", "actors", "plans"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = module_name(path)
            if module.startswith("orchestrator.examples"):
                continue  # the examples are programs on top of everything
            for target in sorted(imports(path, module)):
                if layer(target) > layer(module) and target != "orchestrator":
                    offences.append(f"{module} (layer {layer(module)}) imports {target}")
    assert [] == offences


def test_the_check_finds_an_import_running_up(tmp_path):
    """The check itself: a core module that imports actors (even for typing only, even
    relatively) is reported; one that imports the leaves is not."""
    source = tmp_path / "fake.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from orchestrator.errors import PlanError\n"
        "from ..redaction import redact\n"
        "if TYPE_CHECKING:\n"
        "    from actors.tools import ToolSpec\n"
    )
    module = "orchestrator.core.server.fake"
    found = imports(source, module)
    assert {"orchestrator.errors", "orchestrator.core.redaction", "actors.tools"} == found
    assert ["actors.tools"] == [t for t in sorted(found) if layer(t) > layer(module)]
