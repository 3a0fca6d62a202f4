"""`gpufair bench allocator --quick` end to end on a tiny grid, and the `gpufair bench` front."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import allocator as bench_allocator
from bench.baselines import BASELINES
from gpufair.commands import bench as bench_command

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--budget", "0"], "argument --budget: '0'"),  # once replaced by the default budget
        (["--hard-limit", "-1"], "argument --hard-limit: '-1'"),  # once cut every seed at once
        (["--time-limit", "nan"], "argument --time-limit: 'nan'"),
        (["--seeds", "0"], "argument --seeds: '0'"),
        (["--cli-runs", "-1"], "argument --cli-runs: '-1'"),
        (["--out", "{file}"], "{file}: not a folder"),  # once a traceback after the whole run
        (["--out", "{file}/results"], "{file}/results: cannot make the results folder"),
    ],
)
def test_a_flag_out_of_range_is_refused_before_anything_runs(
    flags: list[str], said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def started(config: bench_allocator.BenchConfig) -> None:
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench_allocator, "run", started)
    a_file = tmp_path / "results.md"
    a_file.write_text("")
    argv = [flag.format(file=a_file) for flag in flags]
    assert bench_allocator.main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("gpufair bench allocator: error:")
    assert said.format(file=a_file) in last


def test_bench_front_dispatches_and_lists(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_command.main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("allocator", "serve", "api"))
    assert bench_command.main(["nosuch"]) == 2
    assert "unknown benchmark 'nosuch'" in capsys.readouterr().err
    assert bench_command.main(["allocator", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out


# A benchmark that starts a server (a sleeping child) and stops it however it ends, as every
# benchmark's `with` blocks do; it prints the server's pid, then runs until it is stopped.
SERVER_BENCHMARK = """
import subprocess, sys, time, types
from gpufair.commands import bench

def main(argv):
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        print(server.pid, flush=True)
        time.sleep(60)
        return 0
    finally:
        server.terminate()
        server.wait()

module = types.ModuleType("server_benchmark")
module.main = main
sys.modules["server_benchmark"] = module
bench.BENCHMARKS["server"] = ("server_benchmark", "starts a server, runs until stopped")
sys.exit(bench.main(["server"]))
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_stops_a_benchmark_and_the_servers_it_started() -> None:
    """`kill` (or a CI timeout) of `gpufair bench NAME` unwinds the benchmark as Ctrl-C does:
    its servers are stopped, none outlives it, and the status is a shell's 143."""
    bench_process = subprocess.Popen(
        [sys.executable, "-c", SERVER_BENCHMARK], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert bench_process.stdout is not None
    server_pid = int(bench_process.stdout.readline())
    try:
        bench_process.send_signal(signal.SIGTERM)
        assert bench_process.wait(timeout=30) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while _alive(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server_pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server_pid, signal.SIGKILL)
        bench_process.kill()
        bench_process.wait()
