"""The docs show the commands as they are: only commands that exist, and output the command
prints."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpufair.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def test_the_docs_name_only_commands_that_exist() -> None:
    named = {
        (path.name, name)
        for path in DOCS
        for name in re.findall(r"`(?:\.venv/bin/)?gpufair ([a-z][a-z-]*)", path.read_text())
    }
    assert named, "the pattern found no command at all"
    assert {(doc, name) for doc, name in named if name not in COMMANDS} == set()


def _fenced_json_after(text: str, marker: str) -> Any:
    block = re.search(re.escape(marker) + r".*?```json\n(.*?)```", text, re.DOTALL)
    assert block is not None, marker
    return json.loads(block.group(1))


def _assert_shown_as_printed(shown: Any, printed: Any, where: str) -> None:
    """Every value the docs show is the printed one (numbers as rounded in the docs); "..."
    stands for what the docs leave out."""
    if isinstance(shown, dict):
        assert isinstance(printed, dict), where
        for key, value in shown.items():
            if key != "...":
                assert key in printed, f"{where}.{key}: not printed"
                _assert_shown_as_printed(value, printed[key], f"{where}.{key}")
    elif isinstance(shown, float) and not isinstance(printed, bool):
        assert printed == pytest.approx(shown, abs=0.006), where
    else:
        assert shown == printed, where


def test_architecture_md_shows_what_gpufair_divide_prints_for_its_example() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("### 3.1 `gpufair divide") :]
    example = ROOT / "examples" / "divide_design.json"
    assert _fenced_json_after(section, "Input") == json.loads(example.read_text())
    done = subprocess.run([sys.executable, "-m", "gpufair.cli", "divide", str(example)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    shown = _fenced_json_after(section, "Output on stdout")
    shown["certificate"].pop("time_s")  # the one figure that differs from run to run
    _assert_shown_as_printed(shown, json.loads(done.stdout), "divide")
