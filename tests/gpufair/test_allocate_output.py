"""``gpufair allocate``'s table answers "does each tenant get what it needs", in 80 columns."""

from __future__ import annotations

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
