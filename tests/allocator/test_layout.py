"""The allocator's layout: no import cycle between its modules, nothing of the rest of gpufair
or of its heavy stack, and PuLP behind one module.

Every module under allocator/ is read with ast, nothing is imported, and every import counts,
wherever it stands: inside a function or under ``TYPE_CHECKING`` as much as at the top. A
cycle closed by a lazy import is still a cycle (the allocator once had one: six modules, closed
by a function-level import in the checker).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "allocator"
# Top-level packages no allocator module may import: the web, database and torch stacks, and
# the parts of gpufair built on the allocator.
FORBIDDEN = ("torch", "fastapi", "starlette", "uvicorn", "sqlalchemy", "gpufair", "api",
             "executor")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The modules ``name`` imports, anywhere in its body, as absolute dotted names.

    ``from package import name`` counts as an import of the submodule ``package.name`` where
    that is an allocator module, else of ``package`` itself. Importing a submodule also runs its
    parents' ``__init__``; that implicit step is no edge here (every package has it)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1],
                                 *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in MODULES else base)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports) as a path, or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        path.append(module)
        for other in sorted(graph[module]):
            found = visit(other)
            if found is not None:
                return found
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        found = visit(module)
        if found is not None:
            return found
    return None


def test_the_walk_sees_every_module_and_every_kind_of_import() -> None:
    assert {"allocator", "allocator.division", "allocator.exact.milp",
            "allocator.scalable.path", "allocator.cluster.allocate"} <= set(MODULES)
    # a top-level import, and one inside a function (PuLP loads on the first exact solve)
    assert "allocator.certificate" in imports_of("allocator.division")
    assert "allocator.exact.milp" in imports_of("allocator.exact.lambda_search")
    # ``from allocator import constructive`` is an import of the submodule, not the package
    assert "allocator.constructive" in imports_of("allocator.scalable.path")


def test_no_import_cycle_between_allocator_modules() -> None:
    graph = {name: {m for m in imports_of(name) if m in MODULES and m != name}
             for name in MODULES}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_allocator_module_imports_the_rest_of_gpufair_or_its_heavy_stack(name: str) -> None:
    bad = sorted(m for m in imports_of(name) if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"{name} imports {bad}"


def test_pulp_is_imported_by_exactly_one_module() -> None:
    importers = sorted(name for name in MODULES
                       if any(m.split(".")[0] == "pulp" for m in imports_of(name)))
    assert importers == ["allocator.exact.milp"]
