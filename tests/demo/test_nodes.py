"""End to end: `gpufair demo --nodes 3` runs three daemons as three nodes behind the gateway,
kills one serving the replicated model, and reports what happened to every query."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from gpufair.commands import demo
from gpufair.demo.claims import failover_claims
from gpufair.demo.nodes import NodesDemoError, _victim
from gpufair.loadgen import PhaseCounts
from gpufair.localcluster import LocalCluster
from gpufair.servers import ChildServer

ROOT = Path(__file__).resolve().parents[2]


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "demo", "--plain", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _claim(out: str, statement: str) -> str:
    """The verdict (HOLDS or FAILS) and figure of the claim whose statement is given."""
    lines = out.split("claims", 1)[1].splitlines()
    at = next(k for k, line in enumerate(lines) if statement in line)
    return lines[at].split()[0] + " " + lines[at + 1].strip()


@pytest.mark.slow
def test_demo_on_three_nodes_fails_over_without_losing_a_query() -> None:
    done = _demo("--nodes", "3", "--duration", "8")
    out = done.stdout
    assert done.returncode in (0, demo.CLAIM_FAILED), done.stderr[-2000:]
    # Three daemons on loopback ports, and the gateway.
    assert len(re.findall(r"executor of node node-\d http://127\.0\.0\.1:\d+", out)) == 3, out
    assert re.search(r"gateway http://127\.0\.0\.1:\d+", out)
    # The replicated model sits on two nodes, one of which is killed.
    ha_row = next(line for line in out.splitlines() if line.strip("│ ").startswith("ha "))
    assert len(re.findall(r"node-\d", ha_row)) == 2 and "killed" in ha_row, ha_row
    # The summary states when the gateway saw the death, and that no query was lost.
    assert re.search(r"node-\d killed \(SIGKILL\)", out)
    seen = _claim(out, "the gateway saw the daemon's death")
    assert re.fullmatch(r"HOLDS \d+ ms after the SIGKILL", seen), seen
    lost = _claim(out, "no query of ha-m was lost")
    assert re.fullmatch(r"HOLDS \d+ sent: \d+ answered, \d+ refused with an HTTP error, 0 lost",
                        lost), lost  # fmt: skip
    assert _claim(out, "ha-m was answered once the death was seen").startswith("HOLDS")
    for tenant in ("calm", "steady"):
        assert f"{tenant} kept its SLA through the failure" in out
    # The exit status is the claims' verdict.
    assert done.returncode == (0 if "every claim held" in out else demo.CLAIM_FAILED), out


def test_a_failed_failover_claim_exits_non_zero(tmp_path: Path) -> None:
    # One query of the model lost: its claim fails, the summary says so, the status is 3.
    claims = failover_claims("ha-m", PhaseCounts(received=10, answered=9, lost=1),
                             PhaseCounts(received=5, answered=5), 0.1, 0.99)  # fmt: skip
    console = Console(file=(tmp_path / "out.txt").open("w"), width=80)
    assert demo._verdict(claims, console, tmp_path) == demo.CLAIM_FAILED
    console.file.close()
    assert "1 claim(s) failed" in (tmp_path / "out.txt").read_text()


def test_a_replicated_model_on_one_node_is_refused_clearly(tmp_path: Path) -> None:
    # The allocation is read, not assumed: ha on a single node leaves nothing to fail over to.
    cluster = LocalCluster.__new__(LocalCluster)
    cluster.models = {"ha": "1", "calm": "2"}
    cluster.serving = {"1": ["node-0"], "2": ["node-1"]}
    cluster.daemons = {n: ChildServer(n, [], log_path=tmp_path / n) for n in ("node-0", "node-1")}
    with pytest.raises(NodesDemoError, match="on 1 node"):
        _victim(cluster)
    # On two nodes, the one that seats no other model's only replica is the victim.
    cluster.serving = {"1": ["node-0", "node-1"], "2": ["node-0"]}
    assert _victim(cluster) is cluster.daemons["node-1"]


def test_nodes_below_two_or_with_a_scenario_are_refused_with_one_line() -> None:
    one = _demo("--nodes", "1")
    assert one.returncode == 2 and "at least 2" in one.stderr, one.stderr
    both = _demo("--nodes", "2", "--scenario", "examples/other.toml")
    assert both.returncode == 2, both.stderr
    assert both.stderr.strip() == ("gpufair demo: --scenario does not apply with --nodes "
                                   "(its cluster is built in)")  # fmt: skip
