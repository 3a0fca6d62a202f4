"""The allocator's layout: no import cycle between its modules, nothing of the rest of gpufair
or of its heavy stack, and PuLP behind one module.

Every module under allocator/ is read with ast, nothing is imported, and every import counts,
wherever it stands: inside a function or under ``TYPE_CHECKING`` as much as at the top. A
cycle closed by a lazy import is still a cycle (the allocator once had one: six modules, closed
by a function-level import in the checker).
"""

from __future__ import annotations

import pytest

from tests.imports import find_cycle, import_graph, imports_of, modules_of

# Top-level packages no allocator module may import: the web, database and torch stacks, and
# the parts of gpufair built on the allocator.
FORBIDDEN = ("torch", "fastapi", "starlette", "uvicorn", "sqlalchemy", "gpufair", "api",
             "executor")


MODULES = modules_of("allocator")


def test_the_walk_sees_every_module_and_every_kind_of_import() -> None:
    assert {"allocator", "allocator.division", "allocator.exact.milp",
            "allocator.scalable.path", "allocator.cluster.allocate"} <= set(MODULES)
    # a top-level import, and one inside a function (PuLP loads on the first exact solve)
    assert "allocator.certificate" in imports_of("allocator.division", MODULES)
    assert "allocator.exact.milp" in imports_of("allocator.exact.lambda_search", MODULES)
    # ``from allocator import constructive`` is an import of the submodule, not the package
    assert "allocator.constructive" in imports_of("allocator.scalable.path", MODULES)


def test_no_import_cycle_between_allocator_modules() -> None:
    cycle = find_cycle(import_graph(MODULES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_allocator_module_imports_the_rest_of_gpufair_or_its_heavy_stack(name: str) -> None:
    bad = sorted(m for m in imports_of(name, MODULES) if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"{name} imports {bad}"


def test_pulp_is_imported_by_exactly_one_module() -> None:
    importers = sorted(name for name in MODULES
                       if any(m.split(".")[0] == "pulp" for m in imports_of(name, MODULES)))
    assert importers == ["allocator.exact.milp"]
