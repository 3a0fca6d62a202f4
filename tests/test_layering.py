"""The layers of the project: settings at the bottom, the parts beside it, composition on top.

``allocator``, ``executor`` and ``api`` take their configuration as arguments and never import
``gpufair`` (the CLI, the settings and :mod:`gpufair.compose`, which builds each part's
configuration from the settings). ``gpufair/settings.py`` imports nothing of the project, so
that any part's configuration can be checked against it without a cycle. Imports are read from
the source with ``ast``, so one inside a function counts as much as one at the top.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.imports import ROOT, find_cycle, import_graph, imported_modules, modules_of

PARTS = ("allocator", "executor", "api")
PROJECT = ("allocator", "executor", "api", "gpufair", "migrations", "bench")


def imports_of(path: Path) -> set[str]:
    package = ".".join(path.relative_to(ROOT).parent.parts)
    return imported_modules(path.read_text(), package)


def _top(module: str) -> str:
    return module.split(".")[0]


@pytest.mark.parametrize("part", PARTS)
def test_no_part_imports_gpufair(part: str) -> None:
    modules = sorted((ROOT / part).rglob("*.py"))
    assert modules, f"no modules under {part}/"
    offenders = {
        str(path.relative_to(ROOT)): found
        for path in modules
        if (found := sorted(m for m in imports_of(path) if _top(m) == "gpufair"))
    }
    assert not offenders, f"{part}/ must take its configuration as arguments: {offenders}"


def test_settings_import_nothing_of_the_project() -> None:
    found = imports_of(ROOT / "gpufair" / "settings.py")
    assert not sorted(m for m in found if _top(m) in PROJECT)


def test_the_reader_sees_nested_and_relative_imports() -> None:
    """The checks above are only as good as this reader."""
    source = (
        "import os.path\n"
        "def late():\n"
        "    from gpufair.settings import Settings\n"
        "from . import deps\n"
        "from ..allocator import SolveOptions\n"
    )
    assert imported_modules(source, "api.routes") == {
        "os.path", "gpufair.settings", "api.routes", "api.allocator"
    }


def test_no_import_cycle_anywhere_in_the_project() -> None:
    """Each part reads top-down: the executor's threads over its pure rules, the API's routes
    over its services, the CLI over everything, with no module waiting on one that waits on it."""
    graph = import_graph(modules_of("allocator", "executor", "api", "gpufair"))
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
