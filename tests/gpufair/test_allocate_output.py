"""``gpufair allocate``'s table answers "does each tenant get what it needs", in 80 columns."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

from gpufair.commands.allocate import _interpolated

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "examples" / "cluster.toml"


def _allocate(path: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "gpufair.cli", "allocate", str(path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=180)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_per_tenant_totals_come_first_with_a_legend_and_fit_80_columns() -> None:
    out = _allocate(CLUSTER)
    assert all(len(line) <= 80 for line in out.splitlines()), max(out.splitlines(), key=len)
    assert "True" not in out and "False" not in out  # people read yes/no, holds/FAILS
    header, *rest = out.splitlines()
    assert header.split() == ["tenant", "criterion", "weight", "demand", "expect", "SLA", "ms",
                              "share", "entitl", "verdict"]
    doc = tomllib.loads(CLUSTER.read_text())
    rows = {line.split()[0]: line.split() for line in rest[: len(doc["tenants"])]}
    total_weight = sum(t.get("weight", 1.0) for t in doc["tenants"])
    for tenant in doc["tenants"]:
        row = rows[tenant["name"]]
        models = [m for m in doc["models"] if m["tenant"] == tenant["name"]]
        assert float(row[3]) == sum(m["demand_qps"] for m in models)
        assert 0 <= float(row[4]) <= float(row[3])  # expected QPS never above the demand
        assert float(row[5]) == models[0]["sla_p99_ms"]
        assert float(row[7]) == round(tenant.get("weight", 1.0) / total_weight, 2)
        assert row[8] in ("holds", "relaxed", "FAILS")
    assert sum(float(r[6]) for r in rows.values()) <= 1.0 + 0.01  # shares of one cluster
    assert "demand: QPS the tenant declared" in out  # the legend under the table
    assert out.index("verdict") < out.index("node ") < out.index("alpha:")


def test_expected_qps_reads_curves_as_the_allocator_does() -> None:
    curve = (10.0, 18.0, 24.0)
    assert _interpolated(curve, 1) == 10.0
    assert _interpolated(curve, 1.5) == 14.0  # between whole streams, linearly
    assert _interpolated(curve, 0.5) == 5.0  # q(0) = 0
    assert _interpolated(curve, 7) == 24.0  # flat beyond the curve


def test_each_models_part_of_its_tenants_bundle_follows_the_tenants() -> None:
    """The per-model table: one row per model of the cluster file, with its weight; a tenant's
    models' shares of its value add up to 1 (or all 0) and their seats to the seats the seat
    table gives the tenant."""
    out = _allocate(CLUSTER)
    doc = tomllib.loads(CLUSTER.read_text())
    lines = out.splitlines()
    start = next(k for k, line in enumerate(lines) if line.split()[:3] == ["tenant", "model",
                                                                          "weight"])
    rows = [line.split() for line in lines[start + 1: start + 1 + len(doc["models"])]]
    assert {(r[0], r[1]) for r in rows} == {(m["tenant"], m["model_id"]) for m in doc["models"]}
    seated: dict[str, int] = {}
    for line in lines[lines.index(next(x for x in lines if x.startswith("node "))) + 1:]:
        cells = line.split()
        if len(cells) == 7 and cells[2].isdigit() and cells[3] != "-":
            seated[cells[3]] = seated.get(cells[3], 0) + 1
    for tenant in doc["tenants"]:
        mine = [r for r in rows if r[0] == tenant["name"]]
        shares = sum(float(r[6]) for r in mine)
        assert abs(shares - 1.0) <= 0.02 or shares == 0
        assert sum(int(r[4]) for r in mine) == seated.get(tenant["name"], 0)
        for r in mine:
            model = next(m for m in doc["models"] if m["model_id"] == r[1])
            assert float(r[2]) == model.get("weight", 1.0)


def test_a_cluster_without_devices_prints_every_tenant_with_no_share(tmp_path: Path) -> None:
    """Nothing to divide is an answer, as ``--json`` gives it (no plans): every tenant's row
    with a share of 0, not the header alone followed by a ZeroDivisionError traceback."""
    doc = tomllib.loads(CLUSTER.read_text())
    doc["gpus"] = []
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(doc))
    rows = _allocate(path).splitlines()[1 : 1 + len(doc["tenants"])]
    assert [row.split()[0] for row in rows] == [t["name"] for t in doc["tenants"]]
    assert all(float(row.split()[6]) == 0.0 for row in rows), rows
