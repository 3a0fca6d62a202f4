"""The profiler: latency-bounded QPS against sessions, and the ``gpufair profile`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from allocator.cluster.snapshot import ThroughputCurve
from executor.profiler import (
    QUERY_SIZE_QUANTILES,
    ProfileSettings,
    compare_forwards,
    latency_bounded_qps,
    profile_model,
    query_pool,
)
from executor.profiles import read_profiles
from executor.runtime import load_model
from gpufair.commands import profile as profile_command

TINY = "zoo:rmc1?scale=0.0005"


def fast(sla_p99_ms: float, max_sessions: int) -> ProfileSettings:
    """Settings short enough for a test: brief runs and no bisection."""
    return ProfileSettings(sla_p99_ms, max_sessions, closed_s=0.2, window_s=0.3, refine=False)


@pytest.fixture(scope="module")
def tiny():
    return load_model(TINY, "cpu")


def test_query_pool_follows_the_design_workload(tiny) -> None:
    pool = query_pool(tiny, 200, seed=1)
    sizes = [len(b.candidate_user) for b in pool]
    assert set(sizes) <= set(QUERY_SIZE_QUANTILES)
    assert abs(np.mean(sizes) - 270) < 40
    assert sizes == [len(b.candidate_user) for b in query_pool(tiny, 200, seed=1)]


def test_an_impossible_sla_gives_zero_and_a_loose_one_gives_throughput(tiny) -> None:
    pool = query_pool(tiny, 16, seed=0)
    sessions = [tiny.session()]
    assert latency_bounded_qps(sessions, pool, fast(1e-3, 1)) == 0.0
    assert latency_bounded_qps(sessions, pool, fast(500.0, 1)) > 10


def test_profile_is_a_non_decreasing_measured_curve(tiny) -> None:
    curve = profile_model(tiny, fast(200.0, 2))
    qps = curve["qps"]
    assert len(qps) == 2 and qps[0] > 0
    assert all(b >= a for a, b in zip(qps, qps[1:], strict=False))
    assert ThroughputCurve(qps=tuple(qps), measured=curve["measured"]).measured
    assert curve["device"].startswith("cpu") and curve["kind"] == "cpu"


def test_structured_forward_beats_naive_on_a_user_heavy_model() -> None:
    model = load_model("zoo:rmc2?scale=0.002&user_tables=28", "cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two intra-op threads on a busy 2-core machine time mostly noise
    try:
        result = compare_forwards(model, candidates=270, reps=9)
    finally:
        torch.set_num_threads(threads)
    assert result["speedup"] > 1.5, result


def test_profile_command_writes_throughput_curves(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    threads = torch.get_num_threads()
    try:
        code = profile_command.main(
            [
                "--quick",
                "--models",
                "rmc1,din",
                "--sessions",
                "1",
                "--sla-ms",
                "500",
                "--out",
                str(out),
            ]
        )
    finally:
        torch.set_num_threads(threads)  # the command sets one intra-op thread for its sessions
    assert code == 0
    curves = json.loads(out.read_text())
    assert set(curves) == {"rmc1", "din"}
    for doc in curves.values():
        curve = ThroughputCurve(qps=tuple(doc["qps"]), measured=doc["measured"])
        assert len(curve.qps) == 1 and curve.qps[0] > 0 and curve.measured
    # What the command writes is what the daemon's --profiles reads.
    read = read_profiles(out)
    assert set(read) == {"rmc1", "din"}
    assert all(c.kind == "cpu" and c.sla_p99_ms == 500.0 for c in read.values())


def test_profile_command_refuses_an_unknown_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert profile_command.main(["--models", "rmc9"]) == 2
    assert "unknown model 'rmc9'" in capsys.readouterr().err
