"""End to end: `gpufair demo` runs the API, an executor daemon and traffic, and reports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_demo_serves_every_tenant_and_prints_the_summary(tmp_path: Path) -> None:
    # A short run through the real processes: tenants registered over REST, an allocation
    # solved and certified, the plan pulled by the daemon, and queries answered for everyone.
    done = subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "demo", "--duration", "8", "--plain"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "allocation v1 solved" in out
    assert "SLA attainment over the whole run" in out
    summary = out.split("SLA attainment over the whole run", 1)[1]
    for tenant in ("ads", "feed", "search"):
        row = next(line for line in summary.splitlines() if line.startswith(f"│ {tenant} "))
        steady = row.split("│")[2].strip()
        # Every tenant was served: a non-empty steady phase with a measured attainment.
        assert steady.endswith(tuple("0123456789")) and "% of " in steady, row


def test_demo_refuses_a_missing_scenario_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "demo", "--scenario", str(tmp_path / "no.toml")],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("gpufair demo:")
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
