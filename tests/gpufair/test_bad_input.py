"""Bad input to a command is refused at the door: one line on stderr naming the file or flag and
what is wrong, exit status 2, never a traceback; and a value out of range is refused, never
replaced by a default or a setting (gpufair/cli.py, gpufair/inputs.py)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from allocator.cluster.snapshot import MAX_CURVE_POINTS
from gpufair.cli import COMMANDS
from gpufair.commands import allocate as allocate_command
from gpufair.commands import executor as executor_command
from gpufair.commands import gateway as gateway_command
from gpufair.commands import profile as profile_command
from gpufair.commands import serve as serve_command
from gpufair.commands.bench import BENCHMARKS
from gpufair.settings import MAX_FRONTS, ExecutorSettings

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "examples" / "cluster.toml"
NOT_UTF8 = b"\xff\xfe{}"
# A plan the parser accepts: one GPU device, no seat taken.
PLAN = {"format": 1, "node": "n1", "version": 1, "allocation_id": 0,
        "devices": [{"device": "cuda:0", "kind": "gpu", "streams": 1,
                     "shared_pool_streams": 0, "seats": []}]}  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpufair.cli", *args], cwd=ROOT,
                          env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=180)  # fmt: skip


def assert_refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit status 2, nothing on stdout, one line on stderr holding every fragment."""
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert done.stdout == "" and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), done.stderr


def assert_flag_refused(exit_: pytest.ExceptionInfo[SystemExit], err: str, flag: str) -> None:
    """argparse's refusal: status 2, its last line names the flag."""
    assert exit_.value.code == 2
    assert f"argument {flag}:" in err.strip().splitlines()[-1], err


@pytest.fixture
def not_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "binary.json"
    path.write_bytes(NOT_UTF8)
    return path


@pytest.mark.parametrize(
    "command",
    [
        ["divide", "{}"],
        ["allocate", "{}"],
        ["allocate", str(CLUSTER), "--previous", "{}"],
        ["executor", "--plan", "{}"],
        ["demo", "--scenario", "{}"],
    ],
    ids=["divide", "allocate", "allocate-previous", "executor-plan", "demo-scenario"],
)
def test_a_file_that_is_not_utf8_text_is_refused_naming_it(
    not_utf8: Path, command: list[str]
) -> None:
    done = run(*(arg.format(not_utf8) for arg in command))
    assert_refused(done, f"gpufair {command[0]}: ", f"{not_utf8}: not UTF-8 text")


@pytest.mark.parametrize(
    "command", [["divide", "examples/divide_design.json"], ["serve"], ["demo"]]
)
def test_a_config_file_that_is_not_utf8_text_stops_the_command(
    not_utf8: Path, command: list[str]
) -> None:
    done = run(*command, env={"GPUFAIR_CONFIG": str(not_utf8)})
    assert_refused(done, f"gpufair {command[0]}: {not_utf8}: not UTF-8 text")


def test_a_config_file_that_is_a_directory_stops_the_command(tmp_path: Path) -> None:
    done = run("divide", "examples/divide_design.json", env={"GPUFAIR_CONFIG": str(tmp_path)})
    assert_refused(done, f"config file {tmp_path} is a directory")


def test_allocate_refuses_previous_plans_that_are_no_object_of_node_to_plan(
    tmp_path: Path,
) -> None:
    previous = tmp_path / "previous.json"
    previous.write_text("[]")
    assert_refused(run("allocate", str(CLUSTER), "--previous", str(previous)),
                   f"{previous}: expected an object of node -> plan")  # fmt: skip
    previous.write_text('{"node-a": 5}')
    assert_refused(run("allocate", str(CLUSTER), "--previous", str(previous)),
                   f"{previous}: node 'node-a': plan: expected an object")  # fmt: skip


def test_allocate_names_the_file_that_is_not_json_cluster_or_previous(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    assert_refused(run("allocate", str(bad)), f"gpufair allocate: {bad}: invalid JSON")
    assert_refused(run("allocate", str(CLUSTER), "--previous", str(bad)),
                   f"gpufair allocate: {bad}: invalid JSON")  # fmt: skip


def test_allocate_refuses_a_device_kind_no_plan_can_hold(tmp_path: Path) -> None:
    """What allocate accepts, a daemon serves: a kind other than the plan's gpu or cpu is
    refused before the solve, not after it by every executor."""
    doc = {"tenants": [{"name": "a"}],
           "gpus": [{"node": "n", "device": "tpu:0", "kind": "tpu", "memory_mb": 1000,
                     "seats": 1, "streams": 1}],
           "models": [{"model_id": "m", "tenant": "a", "artifact": "zoo:rmc1", "memory_mb": 10,
                       "replicas_wanted": 1, "sla_p99_ms": 50, "demand_qps": 10,
                       "estimate": {"qps": [10]}}]}  # fmt: skip
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(doc))
    assert_refused(run("allocate", str(path)), "cluster.gpus[0].kind: Input should be 'gpu' or "
                   "'cpu'")  # fmt: skip


# (where in the example cluster, key, bad value, what the one line must say)
BAD_CLUSTER_FIELDS = [
    (("gpus", 0), "memory_mb", 1e309, "cluster.gpus[0].memory_mb: Input should be a valid integer"),
    (("gpus", 0), "memory_mb", 16000.7, "cluster.gpus[0].memory_mb: Input should be a valid "
     "integer"),
    (("gpus", 0), "streams", "8", "cluster.gpus[0].streams: Input should be a valid integer"),
    (("gpus", 0), "seats", 10**9, "cluster.gpus[0].seats: Input should be less than or equal "
     "to 64"),
    (("tenants", 0), "wieght", 3, "cluster.tenants[0].wieght: Extra inputs are not permitted"),
    (("tenants", 0), "weight", True, "cluster.tenants[0].weight: Input should be a valid number"),
    (("tenants", 0), "name", 5, "cluster.tenants[0].name: Input should be a valid string"),
    (("models", 0), "replicas_wanted", 2.5, "cluster.models[0].replicas_wanted: Input should be "
     "a valid integer"),
    (("models", 0), "demand_qps", float("inf"), "cluster.models[0].demand_qps: Input should be "
     "a finite number"),
    (("models", 0), "sla_p99_ms", float("inf"), "cluster.models[0].sla_p99_ms: Input should be "
     "a finite number"),
    ((), "tenantz", [], "cluster.tenantz: Extra inputs are not permitted"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("where", "key", "value", "message"),
    BAD_CLUSTER_FIELDS,
    ids=[f"{key}={value!r}" for _, key, value, _ in BAD_CLUSTER_FIELDS],
)
def test_allocate_refuses_a_cluster_field_it_would_misread(
    tmp_path: Path, where: tuple[str | int, ...], key: str, value: object, message: str
) -> None:
    """Each field is read as written or refused naming it, as the API refuses it: a misspelt
    key was ignored (its default used), 16000.7 MB read as 16000, "8" and true as numbers, an
    infinite demand valued every seat at 0, an infinite memory_mb ended in a traceback and 10⁹
    seats in a solve that never ended."""
    doc = tomllib.loads(CLUSTER.read_text())
    table: Any = doc
    for part in where:
        table = table[part]
    table[key] = value
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(doc))
    assert_refused(run("allocate", str(path)), f"gpufair allocate: {path}: {message}")


@pytest.mark.parametrize(("parser", "argv"), [
    (executor_command._parser, ["--plan", "plan.json"]),
    (serve_command._parser, []),
    (gateway_command._parser, ["--api", "http://127.0.0.1:1", "--token", "t"]),
], ids=["executor", "serve", "gateway"])  # fmt: skip
@pytest.mark.parametrize("port", ["0", "-5", "70000", "http"])
def test_a_port_outside_1_to_65535_is_refused_not_replaced(
    parser: Callable[[], argparse.ArgumentParser], argv: list[str], port: str,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The port a server says it listens on is the one it listens on: 70000 once printed
    http://127.0.0.1:70000/ and listened on 4464, and 0 meant the configured port."""
    with pytest.raises(SystemExit) as exit_:
        parser().parse_args([*argv, "--port", port])
    assert_flag_refused(exit_, capsys.readouterr().err, "--port")


def test_fronts_are_bounded_as_the_setting_is(capsys: pytest.CaptureFixture[str]) -> None:
    parser = executor_command._parser()
    assert parser.parse_args(["--plan", "p", "--fronts", str(MAX_FRONTS)]).fronts == MAX_FRONTS
    assert ExecutorSettings(fronts=MAX_FRONTS).fronts == MAX_FRONTS
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--plan", "p", "--fronts", str(MAX_FRONTS + 1)])
    assert_flag_refused(exit_, capsys.readouterr().err, "--fronts")
    with pytest.raises(ValueError):
        ExecutorSettings(fronts=MAX_FRONTS + 1)


@pytest.mark.parametrize("from_flag", [True, False], ids=["flag", "setting"])
def test_executor_refuses_cuda_on_a_node_without_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    from_flag: bool,
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)  # no config.toml: the defaults, and the environment below
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(PLAN))
    argv = ["--plan", str(plan)]
    if from_flag:
        argv += ["--device", "cuda"]
    else:
        monkeypatch.setenv("GPUFAIR_EXECUTOR_DEVICE", "cuda")
    assert executor_command.main(argv) == 2
    err = capsys.readouterr().err.strip()
    where = "--device" if from_flag else "settings executor.device"
    assert err == (f"gpufair executor: {where}: device 'cuda': CUDA is not available on this "
                   "node")  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), [
    ("--sessions", "-1"), ("--sessions", "0"), ("--sessions", str(MAX_CURVE_POINTS + 1)),
    ("--sla-ms", "-5"), ("--sla-ms", "0"), ("--sla-ms", "nan"),
])  # fmt: skip
def test_profile_refuses_a_flag_out_of_range_before_measuring(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """0 is a value, not "unset": `--sessions 0 --sla-ms 0` ran the defaults once. A curve has
    one point per session and at most MAX_CURVE_POINTS: `--sessions 1025` measured for as long
    as it took and wrote a curve every reader of the file refuses."""
    with pytest.raises(SystemExit) as exit_:
        profile_command.main(["--models", "rmc1", "--quick", flag, value])
    assert_flag_refused(exit_, capsys.readouterr().err, flag)


@pytest.mark.parametrize("models", ["", ",", ",,"])
def test_profile_refuses_an_empty_list_of_models_before_measuring(
    models: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--models "$ARCHS"` with the variable unset wrote a profile of no curves, exit 0."""
    out = tmp_path / "profile.json"
    assert profile_command.main(["--models", models, "--quick", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"gpufair profile: --models {models!r}: name at least one of"), err
    assert not out.exists()


def test_profile_refuses_an_out_that_is_a_directory_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert profile_command.main(["--models", "rmc1", "--quick", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gpufair profile: --out {tmp_path}: is a directory; name a file"
    )


def test_profile_refuses_an_out_it_cannot_create_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "profile.json"  # its folder would be a file
    assert profile_command.main(["--models", "rmc1", "--quick", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"gpufair profile: --out {out}: cannot create {blocker}: File exists"
    )


def test_demo_refuses_a_duration_that_is_not_positive(capsys: pytest.CaptureFixture[str]) -> None:
    from gpufair.commands import demo

    for value in ("0", "-5"):
        with pytest.raises(SystemExit) as exit_:
            demo._parser().parse_args(["--duration", value])
        assert_flag_refused(exit_, capsys.readouterr().err, "--duration")


def test_a_bad_scenario_is_bad_input_as_formats_md_says(tmp_path: Path) -> None:
    scenario = tmp_path / "bad.toml"
    scenario.write_text("seed = [")
    assert_refused(run("demo", "--scenario", str(scenario)), f"{scenario}: invalid TOML")
    formats = (ROOT / "docs" / "formats.md").read_text()
    assert "(exit status 2)" in formats


def test_db_help_is_not_buried_under_alembic_log_lines() -> None:
    done = run("db", "--help")
    assert done.returncode == 0 and "upgrade" in done.stdout
    assert done.stderr == ""


@pytest.mark.parametrize("name", [name for name in COMMANDS if name != "bench"])
def test_each_commands_help_is_plain_text(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--help shows no reST markup from a module docstring."""
    import importlib

    module = importlib.import_module(f"gpufair.commands.{COMMANDS[name][0]}")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gpufair {name}") and "``" not in out, out


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_each_benchmarks_help_is_plain_text(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--help of a benchmark shows no reST markup from its module's docstring either."""
    from gpufair.commands import bench

    try:  # argparse exits; a benchmark may turn that into its return value
        code: object = bench.main([name, "--help"])
    except SystemExit as exit_:
        code = exit_.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: gpufair bench {name}") and "``" not in out, out


def test_gpufair_help_names_every_benchmark(capsys: pytest.CaptureFixture[str]) -> None:
    from gpufair.cli import main

    assert main(["--help"]) == 0
    bench = next(line for line in capsys.readouterr().out.splitlines()
                 if line.split()[:1] == ["bench"])  # fmt: skip
    assert all(name in bench for name in BENCHMARKS), bench


def test_a_churn_limit_without_previous_plans_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--churn-limit bounds seat moves from the plans of --previous; without them it was
    ignored without a word, and a negative one was taken."""
    for argv in ([str(CLUSTER), "--churn-limit", "2"],
                 [str(CLUSTER), "--churn-limit", "-1", "--previous", "plans.json"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            allocate_command.main(argv)
        assert_flag_refused(exit_, capsys.readouterr().err, "--churn-limit")
