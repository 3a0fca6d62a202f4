"""`gpufair bench allocator --quick` end to end on a tiny grid, and the `gpufair bench` front."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import allocator as bench_allocator
from bench.baselines import BASELINES
from gpufair.commands import bench as bench_command


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("results")
    rc = bench_allocator.main([
        "--quick", "--tenants", "3,5", "--gpus", "2,3", "--seeds", "2", "--time-limit", "5",
        "--cli-runs", "1", "--cli-size", "3x2", "--equal-weights", "--out", str(out),
    ])
    return out, rc


def test_quick_run_writes_json_markdown_and_plot(quick_run: tuple[Path, int]) -> None:
    out, rc = quick_run
    assert rc == 0
    result = json.loads((out / "allocator-quick.json").read_text())
    assert result["machine"]["cores"] >= 1 and result["machine"]["cpu"]
    assert result["config"]["command"].startswith("gpufair bench allocator --quick")
    assert {(c["tenants"], c["gpus"]) for c in result["cells"]} == {
        (3, 2), (3, 3), (5, 2), (5, 3)
    }
    assert len(result["runs"]) == 8
    markdown = (out / "allocator-quick.md").read_text()
    assert "guaranteed failing (of)" in markdown and "previous welfare" in markdown
    assert result["config"]["command"] in markdown
    assert result["machine"]["cpu"] in markdown
    assert "machine is shared" in markdown
    assert (out / "allocator-quick.png").read_bytes().startswith(b"\x89PNG")


def test_gpufair_is_fair_and_baselines_are_certified(quick_run: tuple[Path, int]) -> None:
    out, _ = quick_run
    result = json.loads((out / "allocator-quick.json").read_text())
    for run in result["runs"]:
        where = f"{run['tenants']}×{run['gpus']} seed {run['seed']}"
        assert run["outcome"] == "complete", (where, run["error"])
        assert run["baselines_outcome"] == "complete", (where, run["baselines_error"])
        solve = run["gpufair"]
        # Tiny instances: every agent's criterion holds (at most relaxed), and every
        # guaranteed one exactly.
        assert solve["agents"] == run["tenants"]
        assert solve["failing_at_one"] == 0, where
        assert solve["guaranteed_failing"] == 0, where
        assert solve["violations"] <= solve["agents"] - solve["guaranteed"], where
        assert 0 < solve["welfare_ratio"] <= 1 + 1e-9, where
        assert set(run["baselines"]) == set(BASELINES)
        for name, baseline in run["baselines"].items():
            assert baseline["agents"] == run["tenants"], (where, name)
            assert 0 <= baseline["violations"] <= run["tenants"]
            # A violation is exactly a slack below the checker's tolerance (1e-6 of T_i).
            assert (baseline["violations"] > 0) == (baseline["worst_slack"] < -1e-6), (where, name)


def test_cli_divide_is_timed(quick_run: tuple[Path, int]) -> None:
    out, _ = quick_run
    (cli,) = json.loads((out / "allocator-quick.json").read_text())["cli"]
    assert cli["rc"] == 0 and cli["outcome"] == "complete", cli
    assert cli["wall_s"] > 0 and cli["guaranteed_failing"] == 0


def test_bad_arguments_are_one_line_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_allocator.main(["--tenants", "eight"]) == 2
    assert "expected comma-separated integers, got 'eight'" in capsys.readouterr().err


def test_bench_front_dispatches_and_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_command.main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("allocator", "serve", "api"))
    assert bench_command.main(["nosuch"]) == 2
    assert "unknown benchmark 'nosuch'" in capsys.readouterr().err
    assert bench_command.main(["allocator", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out
