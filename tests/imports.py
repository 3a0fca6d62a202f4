"""The project's modules and what each imports, read from source with ``ast`` (nothing is
imported): the one reader behind the layering and layout tests.

Every import counts wherever it stands, inside a function or under ``TYPE_CHECKING`` as much as
at the top, so a cycle closed by a lazy import is still a cycle. ``from package import name``
counts as an import of the submodule ``package.name`` where that is a project module, else of
``package`` itself; importing a submodule also runs its parents' ``__init__``, an implicit step
that is no edge here (every package has it).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules_of(*packages: str) -> dict[str, Path]:
    """Dotted name -> source file of every module under the given top-level packages."""
    return {module_name(path): path
            for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


def imported_modules(source: str, package: str, known: set[str] | frozenset[str] = frozenset()
                     ) -> set[str]:
    """Every module that a module of ``package`` with this source imports, as absolute names;
    ``known`` are the module names ``from package import name`` may resolve to."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is the package itself, 2 its parent, ...
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1],
                                 *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    return found


def imports_of(name: str, modules: dict[str, Path]) -> set[str]:
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imported_modules(path.read_text(encoding="utf-8"), package, set(modules))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules among ``modules`` it imports."""
    return {name: {m for m in imports_of(name, modules) if m in modules and m != name}
            for name in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
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
