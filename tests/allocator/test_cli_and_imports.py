"""``gpufair divide`` / ``gpufair allocate`` as a user runs them, and the allocator's purity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GPUFAIR = [sys.executable, "-m", "gpufair.cli"]
# A generous solve limit: on a loaded CI machine the default 8 s can pass before a tiny MILP
# ends, and the tests here are about the CLI's contract, not about speed.
ENV = {**os.environ, "GPUFAIR_ALLOCATOR_TIME_LIMIT_S": "60"}

ARCHITECTURE_EXAMPLE = {
    "agents": [{"name": "ads", "criterion": "prop_alpha", "weight": 1.0}, {"name": "feed"}],
    "indivisible": ["seat-0", "seat-1"],
    "divisible": ["pool-0"],
    "values": {"ads": {"seat-0": 3, "seat-1": 1, "pool-0": 6},
               "feed": {"seat-0": 2, "seat-1": 2, "pool-0": 2}},
    "objective": "utilitarian",
}


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPUFAIR, *args], capture_output=True, text=True, cwd=cwd,
                          env=ENV, timeout=180)


def test_import_allocator_loads_no_heavy_stack() -> None:
    code = ("import sys, allocator; from allocator import divide, allocate_cluster; "
            "bad = [m for m in ('torch', 'fastapi', 'sqlalchemy', 'starlette', 'uvicorn') "
            "if m in sys.modules]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_divide_design_example(tmp_path: Path) -> None:
    path = tmp_path / "i.json"
    path.write_text(json.dumps(ARCHITECTURE_EXAMPLE))
    out = run("divide", str(path))
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert set(doc["indivisible"]) == {"seat-0", "seat-1"}
    assert sum(doc["divisible"]["pool-0"].values()) == pytest.approx(1.0)
    cert = doc["certificate"]
    assert cert["fair"] and cert["objective"] == "utilitarian" and cert["status"] == "optimal"
    assert cert["agents"]["ads"]["alpha"] == pytest.approx(0.4)
    assert {"alpha", "criterion", "holds", "lambda", "value", "slack", "envy"} <= set(
        cert["agents"]["ads"])


def test_divide_reports_an_unfair_result_and_exits_zero(tmp_path: Path) -> None:
    # EFM is unweighted: "a" needs half of the pool, "b" (weight 3, PROP) three quarters.
    doc = {"agents": [{"name": "a", "criterion": "efm"},
                      {"name": "b", "criterion": "prop", "weight": 3}],
           "indivisible": [], "divisible": ["pool"],
           "values": {"a": {"pool": 1}, "b": {"pool": 1}}}
    path = tmp_path / "unfair.json"
    path.write_text(json.dumps(doc))
    out = run("divide", str(path))
    assert out.returncode == 0, out.stderr
    cert = json.loads(out.stdout)["certificate"]
    assert cert["fair"] is False and cert["violations"] == 1
    assert [name for name, row in cert["agents"].items() if row["lambda"] is None] in (["a"], ["b"])
    assert 0.0 <= cert["lambda"] <= 1.0
    assert any("proved" in note for note in cert["notes"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["values"].update({"ghost": {"seat-0": 1}}), "unknown agent 'ghost'"),
        (lambda d: d["values"]["ads"].update({"seat-0": -1}), "negative value"),
        (lambda d: d["agents"][1].update({"criterion": "maxmin"}), "unknown criterion"),
        (lambda d: d["agents"].append({"name": "ads"}), "duplicate agent name 'ads'"),
        (lambda d: d["divisible"].append("seat-0"), "duplicate good name 'seat-0'"),
        (lambda d: d.update({"objective": "fun"}), "objective"),
        (
            lambda d: d["values"]["feed"].update({"seat-0": 1e308, "seat-1": 1e308}),
            "values['feed']: the values add up to more than",
        ),
    ],
)
def test_divide_bad_input_is_one_line(tmp_path: Path, change, message: str) -> None:  # noqa: ANN001
    doc = json.loads(json.dumps(ARCHITECTURE_EXAMPLE))
    change(doc)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    out = run("divide", str(path))
    assert out.returncode != 0
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr


def test_divide_bad_json_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    for target in (str(path), str(tmp_path / "missing.json")):
        out = run("divide", target)
        assert out.returncode != 0
        assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_divide_help_and_flags(tmp_path: Path) -> None:
    assert "--time-limit" in run("divide", "--help").stdout
    path = tmp_path / "i.json"
    path.write_text(json.dumps(ARCHITECTURE_EXAMPLE))
    out = run("divide", str(path), "--objective", "egalitarian", "--solver", "cbc")
    assert out.returncode == 0, out.stderr
    cert = json.loads(out.stdout)["certificate"]
    assert cert["objective"] == "egalitarian" and cert["solver"] == "cbc" and cert["fair"]


def test_allocate_example_table_and_json() -> None:
    table = run("allocate", "examples/cluster.toml")
    assert table.returncode == 0, table.stderr
    assert "objective utilitarian" in table.stdout
    out = run("allocate", "examples/cluster.toml", "--json")
    doc = json.loads(out.stdout)
    assert doc["certificate"]["fair"]
    assert set(doc["plans"]) == {"node-a", "node-b"}


def test_allocate_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[[tenants]]\nname = 'a'\n")
    out = run("allocate", str(path))
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["divide", "examples/divide_design.json"],
                                     ["allocate", "examples/cluster.toml", "--json"]])
@pytest.mark.parametrize(("flag", "value", "refusal"), [
    ("--time-limit", "0", "time_limit_s: must be positive"),
    ("--gap", "2", "gap: must lie in [0, 1]"),
])
def test_a_solve_flag_out_of_range_is_refused_never_replaced_by_the_setting(
    command: list[str], flag: str, value: str, refusal: str
) -> None:
    out = run(*command, flag, value)
    assert out.returncode == 2 and out.stdout == ""
    assert refusal in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_both_commands_take_the_gap_and_report_the_solver_they_were_given() -> None:
    for command in (["divide", "examples/divide_design.json"],
                    ["allocate", "examples/cluster.toml", "--json"]):
        out = run(*command, "--gap", "0.5", "--solver", "cbc")
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["certificate"]["solver"] == "cbc"


def test_solver_and_objective_choices_are_the_allocators_everywhere() -> None:
    import typing

    from allocator.objectives import OBJECTIVES
    from allocator.options import SOLVERS
    from gpufair.settings import AllocatorSettings

    fields = AllocatorSettings.model_fields
    assert typing.get_args(fields["solver"].annotation) == SOLVERS
    assert typing.get_args(fields["objective"].annotation) == OBJECTIVES
    for command in ("divide", "allocate"):
        usage = run(command, "--help").stdout
        assert "{" + ",".join(SOLVERS) + "}" in usage
        assert "{" + ",".join(OBJECTIVES) + "}" in usage


@pytest.mark.parametrize(("field", "refusal"), [
    ("memory_mb = 16000", "memory_mb must be positive, got -16000"),
    ("sla_p99_ms = 50", "memory_mb and sla_p99_ms must be positive"),
])
def test_allocate_refuses_what_the_api_refuses_in_one_line(
    tmp_path: Path, field: str, refusal: str
) -> None:
    text = (ROOT / "examples" / "cluster.toml").read_text()
    assert field in text
    name, value = field.split(" = ")
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(field, f"{name} = -{value}", 1))
    out = run("allocate", str(path))
    assert out.returncode == 2 and out.stdout == ""
    assert refusal in out.stderr and len(out.stderr.strip().splitlines()) == 1
