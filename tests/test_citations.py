"""Design citations point into the repository: every ``docs/architecture.md §N`` names a
section that exists, and nothing cites a design document the repository does not hold."""

from __future__ import annotations

import re

from tests.imports import ROOT

CITATION = re.compile(r"docs/architecture\.md (§[0-9]+(?:\.[0-9]+)?)")
SOURCES = ("allocator", "executor", "api", "gpufair", "bench", "tests", "docs", "examples")


def _texts() -> dict[str, str]:
    files = [ROOT / "README.md"] + [
        path for top in SOURCES for path in (ROOT / top).rglob("*")
        if path.suffix in (".py", ".md", ".toml", ".html") and path.is_file()
    ]
    return {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in files}


def test_every_citation_names_a_section_of_the_architecture_document() -> None:
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    sections = {f"§{number}" for number in re.findall(r"^#{2,3} ([0-9]+(?:\.[0-9]+)?)[. ]",
                                                     architecture, re.MULTILINE)}
    cited = {(name, section) for name, text in _texts().items()
             for section in CITATION.findall(text)}
    assert cited, "nothing cites the architecture document"
    missing = sorted((name, section) for name, section in cited if section not in sections)
    assert not missing, f"citations of sections that do not exist: {missing}"


def test_nothing_cites_a_design_document_outside_the_repository() -> None:
    this_file = "tests/test_citations.py"
    stale = sorted(name for name, text in _texts().items()
                   if name != this_file and re.search(r"\bDESIGN §|\.\./shared", text))
    assert not stale, stale
