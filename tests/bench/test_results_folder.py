"""Every benchmark's ``--out``: a folder its results cannot go to is refused as the command
starts (status 2, one line naming the flag), not found by the write at the end of a run of
many minutes; a folder that does not exist yet is made."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

import pytest

from gpufair.commands.bench import BENCHMARKS

# Every benchmark's module, and `gpufair bench serve --http`'s, which has a parser of its own.
MODULES = sorted({module for module, _ in BENCHMARKS.values()} | {"bench.http"})


def _parser(module: str) -> Callable[[], argparse.ArgumentParser]:
    parser: Callable[[], argparse.ArgumentParser] = importlib.import_module(module)._parser
    return parser


@pytest.mark.parametrize("module", MODULES)
def test_an_out_that_is_a_file_is_refused_and_a_new_folder_made(
    module: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "results.md"
    a_file.write_text("")
    with pytest.raises(SystemExit) as exit_:
        _parser(module)().parse_args(["--out", str(a_file)])
    assert exit_.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument --out: {a_file}: not a folder" in last, last
    fresh = tmp_path / "new" / "results"
    assert _parser(module)().parse_args(["--out", str(fresh)]).out == fresh
    assert fresh.is_dir()
