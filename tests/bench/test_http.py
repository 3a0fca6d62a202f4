"""The HTTP benchmark: its load client, its accounting of misses, and a quick run end to end.

The load client runs against the echo peer (a real server in a process of its own); the quick
run starts the real daemon and the naive FastAPI peer and drives them over loopback.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

from bench import http as bench_http
from bench.http import ray_unavailable_because, summarize
from bench.loadclient import (
    DISTINCT_QUERIES,
    IDLE_REUSE_S,
    LoadClient,
    Stream,
    TrialSpec,
    _Pool,
    _run_trial,
    encode_query,
    run_trial,
    schedule,
)
from bench.peers.common import parse_request
from executor.fake import FAKE_SCHEMA
from executor.wire import oip
from gpufair.loadgen import QUERY_SIZES
from gpufair.servers import ChildServer

ROOT = Path(__file__).resolve().parents[2]


def test_a_refused_or_failed_query_is_a_miss() -> None:
    latencies = [0.010] * 97 + [math.nan, math.inf, 0.020]
    trial = summarize(50.0, latencies, sla_s=0.05, client_cpu=0.1)
    assert (trial.queries, trial.answered, trial.refused, trial.failed) == (100, 98, 1, 1)
    assert trial.attainment == pytest.approx(0.98)
    assert not trial.ok and math.isinf(trial.p99_ms)  # two misses in 100: p99 is a miss
    assert summarize(50.0, [0.010] * 99 + [math.nan], 0.05, 0.0).ok  # one in 100 is not


def test_the_wire_body_is_the_daemons_and_every_peer_parses_it_with_the_daemons_codec() -> None:
    query = FAKE_SCHEMA.random_query(np.random.default_rng(3), 17)
    headers, body = encode_query(query)
    assert headers["Content-Type"] == oip.BINARY_CONTENT_TYPE
    parsed, asked = parse_request(FAKE_SCHEMA, body, {k.lower(): v for k, v in headers.items()})
    assert asked.binary_output  # and the reply comes back binary
    np.testing.assert_array_equal(parsed.candidate_dense, query.candidate_dense)
    for feature, ids in query.candidate_sparse.items():
        np.testing.assert_array_equal(parsed.candidate_sparse[feature], ids)


def _echo(tmp_path: Path) -> ChildServer:
    """The echo peer (no model), not yet started."""
    return ChildServer(
        "echo",
        [],
        log_path=tmp_path / "echo.log",
        command=[sys.executable, "-m", "bench.peers.echo"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
    )


def test_two_client_processes_send_one_open_loop_schedule_between_them(tmp_path: Path) -> None:
    echo = _echo(tmp_path)
    with echo, LoadClient(FAKE_SCHEMA, seed=1, processes=2) as client:
        echo.wait_healthy(30)
        url = f"{echo.url}/v2/models/m/infer"
        spec = TrialSpec((Stream(url, 60.0, 0), Stream(url, 20.0, 1)), 1.0, 5, timeout_s=5.0)
        result = client.run(spec)
    planned = [len(schedule(s.rate, spec.seconds, spec.seed, s.salt)) for s in spec.streams]
    assert [len(lat) for lat in result.latencies] == planned == [60, 20]
    # Every arrival was sent by exactly one of the processes, and answered.
    assert [sorted(s) for s in result.sent] == [list(range(n)) for n in planned]
    assert result.statuses == {200: 80}
    assert all(0 < x < 5.0 for lat in result.latencies for x in lat)
    assert result.client_cpu_s > 0 and result.wall_s >= 0.9


def test_by_stream_a_client_process_sends_its_tenants_arrivals_only(tmp_path: Path) -> None:
    """The isolation runs' split: each tenant's arrivals come from a client process of its own,
    so that a flooder's writes never delay another tenant's requests inside one client."""
    echo = _echo(tmp_path)
    rng = np.random.default_rng(0)
    bodies = {
        (k, v): encode_query(FAKE_SCHEMA.random_query(rng, k))
        for k in set(QUERY_SIZES)
        for v in range(DISTINCT_QUERIES)
    }
    with echo:
        echo.wait_healthy(30)
        url = f"{echo.url}/v2/models/m/infer"
        streams = (Stream(url, 40.0, 0), Stream(url, 10.0, 1))
        spec = TrialSpec(streams, 1.0, 5, 5.0, part=1, parts=2, by_stream=True)
        result = asyncio.run(_run_trial(spec, bodies))
    planned = len(schedule(10.0, 1.0, 5, 1))
    assert result.sent == [[], list(range(planned))]  # the second tenant's, all of them
    assert result.statuses == {200: planned}


def test_a_trial_runs_with_the_cyclic_collector_off_and_is_collected_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A collector pass in the client would pause its sending and be charged to the server: no
    pass runs during a trial, the collector is back on after it (also when it raises), and the
    cycles it left are collected."""
    seen: list[bool] = []
    left: list[weakref.ref[object]] = []

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    async def trial(spec: TrialSpec, bodies: object) -> str:
        seen.append(gc.isenabled())
        left.append(weakref.ref(Cycle()))
        if spec.seed:
            raise RuntimeError("a failed trial")
        return "result"

    monkeypatch.setattr("bench.loadclient._run_trial", trial)
    spec = TrialSpec((), 1.0, 0, timeout_s=1.0)
    assert gc.isenabled()
    assert run_trial(spec, {}) == "result"  # type: ignore[comparison-overlap]
    assert left[0]() is None
    with pytest.raises(RuntimeError):
        run_trial(TrialSpec((), 1.0, 1, timeout_s=1.0), {})
    assert seen == [False, False] and gc.isenabled()


def test_a_connection_idle_past_the_servers_keep_alive_is_not_reused() -> None:
    """A request is never written to a connection its server may have closed for idleness (a
    miss through no fault of the server): the pool reuses the most recent idle connection, and
    closes, rather than reuses, one idle over IDLE_REUSE_S."""

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        now = [0.0]
        pool = _Pool("127.0.0.1", port, clock=lambda: now[0])
        older, newer = await pool.take(), await pool.take()
        assert older is not None and newer is not None and pool.open == 2
        pool.give(older)
        now[0] = 1.0
        pool.give(newer)
        now[0] = 1.0 + IDLE_REUSE_S / 2
        assert await pool.take() is newer
        pool.give(newer)
        now[0] = 2.0 + 1.5 * IDLE_REUSE_S
        fresh = await pool.take()  # both idle too long: both closed, a new one opened
        assert fresh is not None and fresh not in (older, newer)
        assert older[1].is_closing() and newer[1].is_closing() and pool.open == 1
        pool.drop(fresh)
        server.close()

    asyncio.run(scenario())


def _bench_http(*args: str) -> subprocess.CompletedProcess[str]:
    """``gpufair bench serve --http ARGS`` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "bench", "serve", "--http", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


def test_bad_flags_are_one_line() -> None:
    done = _bench_http("--systems", "triton")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "gpufair bench serve --http: --systems: unknown triton; choose of gpufair, "
        "gpufair-inprocess, naive, ray"
    ]


def _status_and_last_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``gpufair bench serve --http ARGV``'s exit status and last line on stderr, in-process."""
    try:
        status = bench_http.main(argv)
    except SystemExit as exc:  # argparse's refusal of a flag
        status = int(exc.code or 0)
    return status, capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--flood-factor", "0"], "--flood-factor"),  # a flooder that sends nothing
        (["--calm-fraction", "nan"], "--calm-fraction"),
        (["--sla-ms", "nan"], "--sla-ms"),
        (["--repeats", "0"], "--repeats"),  # once replaced by 3 without a word
        (["--repeats", "-2"], "--repeats"),
        (["--isolation-s", "0"], "--isolation-s"),  # once replaced by 15
        (["--share-qps", "-5"], "--share-qps"),
        (["--user-tables", "-1"], "--user-tables"),
        # Found missing minutes into a run, when Ray's turn came, it left Ray out.
        (["--systems", "ray", "--ray-python", "/nonexistent/python"], "--ray-python"),
    ],
)
def test_a_flag_out_of_range_is_refused_before_anything_starts(
    flags: list[str], named: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    def started(*args: object) -> None:
        raise AssertionError("the benchmark started")

    monkeypatch.setattr(bench_http, "this_machine", started)
    status, last = _status_and_last_line([*flags, "--out", str(tmp_path)], capsys)
    assert status == 2
    assert last.startswith("gpufair bench serve --http") and named in last


def test_the_in_process_ceiling_is_refused_on_cuda() -> None:
    done = _bench_http("--device", "cuda", "--systems", "gpufair,gpufair-inprocess")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "gpufair bench serve --http: --systems: gpufair-inprocess runs on the CPU only"
    )


@pytest.mark.slow
def test_a_quick_run_measures_the_daemon_and_the_naive_server_over_http(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpufair.cli", "bench", "serve", "--http", "--quick",
         "--systems", "gpufair,naive", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads((tmp_path / "serve-http-quick.json").read_text())
    tput = data["throughput"]
    assert set(tput["throughput_qps"]) == {"gpufair", "naive"}
    for name, searches in tput["searches"].items():
        assert len(searches) == 1 and searches[0]["trials"], name
        assert all(t["client_cpu"] >= 0 for t in searches[0]["trials"])
    iso = data["isolation"]["runs"]["gpufair"][0]
    assert iso["calm"]["queries"] > 0 and iso["flood"]["queries"] > iso["calm"]["queries"]
    assert data["client_check"]["queries"] > 0
    markdown = (tmp_path / "serve-http-quick.md").read_text()
    assert "| gpufair |" in markdown and "| naive |" in markdown and "Client check" in markdown
    assert (tmp_path / "serve-http-quick.png").stat().st_size > 0


@pytest.mark.slow
def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    """bench/gpu/run.sh with --device cpu: the same steps as on a GPU machine, only the device
    differs (and --quick keeps it short)."""
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu" / "run.sh"), "--device", "cpu", "--quick",
         "--streams", "2", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=500,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    report = (tmp_path / "serve-gpu.md").read_text()
    assert "| gpufair-1 |" in report and "| gpufair-2 |" in report and "| naive |" in report
    assert "## The GPU check" in report and "Device: CPU" in report
    assert "pytest -m gpu" in report and "skipped" in report  # no CUDA here


def test_a_python_that_cannot_serve_ray_says_what_it_lacks(tmp_path: Path) -> None:
    """Ray Serve is left out of a run, with a reason that names what is missing: this
    project's own interpreter has no Ray (it is not in the lock), and a path with no
    interpreter is named as such."""
    missing_ray = ray_unavailable_because(sys.executable)
    assert missing_ray is not None and "No module named 'ray'" in missing_ray
    absent = tmp_path / "python"
    missing_python = ray_unavailable_because(str(absent))
    assert missing_python is not None and str(absent) in missing_python
